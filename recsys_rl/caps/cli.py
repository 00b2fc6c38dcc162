"""``recsys-rl gate`` and ``recsys-rl caps show|set``: evidence reports and exploration caps from the shell.

``register(subparsers)`` adds the commands to ``recsys_rl.cli``'s top-level subparsers. Exit codes:
0 success (report passed / change accepted); 3 refused by the gate (``gate``: the report was written but
fails; ``caps set``: the server refused the raise), the failed checks on stderr; bad usage raises
``recsys_rl.errors.InvalidInput`` (exit 2, one line); an unreachable server, a missing or refused credential
(UNAUTHENTICATED, PERMISSION_DENIED) or another RPC error exits 1 with one line.

``caps``, ``rollout`` and ``shield`` reach the server's admin listener (``serve --admin-port``) over TLS with a
bearer token: ``--server HOST:ADMIN_PORT --ca CA.pem --token-file FILE`` (``add_admin_client_arguments``). The
audit trail records the identity the server verified for the token; ``--actor`` is only a note ("on behalf of").
The client side speaks gRPC through the generated stubs only (no ``ranker`` import: the core stays usable
without the server layer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from recsys_rl.caps.store import check_cap
from recsys_rl.errors import InvalidInput

__all__ = ["EXIT_REFUSED", "add_admin_client_arguments", "register", "run_caps_set", "run_caps_show",
           "run_gate_command"]

EXIT_REFUSED = 3
_DEFAULT_TIMEOUT_S = 60.0  # verifying evidence re-hashes the log segments it names


def cap_argument(text: str) -> float:
    """argparse type for an exploration cap (shared by `serve`, `demo`, `gate` and `caps set`)."""
    try:
        return check_cap(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None


def add_admin_client_arguments(parser: argparse.ArgumentParser, *, changes: bool) -> None:
    """--server, --ca, --token-file (and --actor for a command that ``changes`` something): how ``caps``,
    ``rollout`` and ``shield`` reach the admin listener and who they say they act for."""
    parser.add_argument("--server", required=True, help="HOST:PORT of the server's admin listener (--admin-port)")
    parser.add_argument("--ca", metavar="PEM", help="CA certificate(s) that signed the admin listener's certificate "
                                                   "(default: the system's roots)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="your admin bearer token (the server maps it to your identity and role)")
    if changes:
        parser.add_argument("--actor", help="on behalf of whom, kept as a note in the audit reason (the actor "
                                            "recorded is the identity of --token-file)")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``gate`` and ``caps {show,set}`` to the ``recsys-rl`` subcommands."""
    gate = subparsers.add_parser(
        "gate", help="evidence report for raising a surface's exploration cap (exit 3 when it fails)")
    gate.add_argument("--data-dir", required=True, help="the server's data dir: logs, models, admin/gate.key")
    gate.add_argument("--surface", default="default")
    gate.add_argument("--cap", type=cap_argument, required=True, help="the cap to raise to")
    gate.add_argument("--out", required=True, help="where to write the report (JSON), passing or not")
    gate.add_argument("--config", help="TOML surface configuration the server runs with (default: embedded)")
    gate.add_argument("--progress", action="store_true", help="progress bars while replaying")
    gate.set_defaults(run=run_gate_command)

    caps = subparsers.add_parser("caps", help="exploration caps of a running server")
    caps_sub = caps.add_subparsers(dest="caps_command", required=True, parser_class=type(caps))
    show = caps_sub.add_parser("show", help="cap in force, policy version and the audit trail")
    add_admin_client_arguments(show, changes=False)
    show.add_argument("--surface", default="default")
    show.add_argument("--limit", type=int, default=0, help="most recent audit entries (0 = all)")
    show.add_argument("--format", choices=("text", "json"), default="text")
    show.add_argument("--timeout", type=float, default=_DEFAULT_TIMEOUT_S, help="seconds")
    show.set_defaults(run=run_caps_show)

    set_ = caps_sub.add_parser("set", help="lower a cap now, or raise it with a passing gate report")
    add_admin_client_arguments(set_, changes=True)
    set_.add_argument("--surface", default="default")
    set_.add_argument("--cap", type=cap_argument, required=True)
    set_.add_argument("--evidence", help="report written by `recsys-rl gate --cap X` (needed to raise)")
    set_.add_argument("--reason", default="", help="why, for the audit log")
    set_.add_argument("--timeout", type=float, default=_DEFAULT_TIMEOUT_S, help="seconds")
    set_.set_defaults(run=run_caps_set)


# --- gate --------------------------------------------------------------------------------------------------


def run_gate_command(args: argparse.Namespace) -> int:
    from recsys_rl.config import ConfigError, default_config, load_config
    from recsys_rl.caps.gate import run_gate, write_report

    try:
        config = load_config(args.config) if args.config else default_config()
    except ConfigError as exc:
        raise InvalidInput("--config", str(exc)) from exc
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InvalidInput("--out", f"directory {out.parent} does not exist")
    report = run_gate(Path(args.data_dir), args.surface, args.cap, config=config, progress=args.progress)
    write_report(report, out)
    verdict = "PASSED" if report["passed"] else "FAILED"
    target, current = report["estimates"]["target"], report["estimates"]["current"]
    print(f"{verdict}: gate report for raising surface {report['surface']!r} from cap {report['current_cap']:g} "
          f"to {report['cap']:g} written to {out}")
    print(f"  {target['estimator']} at cap {report['cap']:g}: {_fmt(target['value'])} "
          f"[{_fmt(target['ci_low'])}, {_fmt(target['ci_high'])}] ({target['ci_method']}), ess {_fmt(target['ess'])}; "
          f"at cap {report['current_cap']:g}: {_fmt(current['value'])}; {report['logs']['events']} decisions")
    for check in report["checks"]:
        print(f"  [{'pass' if check['passed'] else 'FAIL'}] {check['name']}: {check['reason']}")
    if report["passed"]:
        return 0
    for check in report["checks"]:
        if not check["passed"]:
            print(f"failed check {check['name']}: {check['reason']}", file=sys.stderr)
    return EXIT_REFUSED


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


# --- caps show / set ---------------------------------------------------------------------------------------


def _rpc_error(exc: Any, server: str) -> int:
    """INVALID_ARGUMENT → InvalidInput (exit 2); anything else → one line on stderr, exit 1."""
    import grpc

    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, _, reason = details.partition(": ")
        raise InvalidInput(f"--{field}" if reason and " " not in field else "request", reason or details)
    hint = ""
    if code == grpc.StatusCode.UNAVAILABLE and "handshake failed" in details.lower():  # gRPC's text, no code of its own
        hint = " (is --server the admin listener, `serve --admin-port`, and --ca the CA that signed its certificate?)"
    print(f"recsys-rl: {server}: {code.name}: {details.splitlines()[0] if details else ''}{hint}", file=sys.stderr)
    return 1


def call_admin(args: argparse.Namespace, method: str, request: Any, *, refused: str = "") -> Any:
    """``PolicyAdminService.<method>(request)`` on ``args.server`` (with ``args.ca``, ``args.token_file``,
    ``args.timeout``): the reply, or the exit code (an int) once the failure is reported - FAILED_PRECONDITION with
    ``refused`` set: "refused: ..." and each failed check on stderr, exit 3; INVALID_ARGUMENT: InvalidInput naming
    the option (exit 2); anything else (UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE, ...): one line, exit 1.
    Shared by ``caps``, ``rollout`` and ``shield``."""
    import grpc

    from recsys_rl.caps.access import admin_channel
    from recsys_rl.ranking.v1 import policy_admin_service_pb2_grpc as admin_grpc

    channel = admin_channel(args.server, ca=args.ca, token_file=args.token_file)
    try:
        return getattr(admin_grpc.PolicyAdminServiceStub(channel), method)(request, timeout=args.timeout)
    except grpc.RpcError as exc:
        if not refused or exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            return _rpc_error(exc, args.server)
        checks = _failed_checks(exc)
        # A server without the metadata: its message still lists the checks.
        print(f"refused: {refused}" if checks else f"refused: {exc.details()}", file=sys.stderr)
        for check in checks:
            print(f"failed check {check}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        channel.close()


def actor_of(args: argparse.Namespace) -> str:
    """``--actor``: on behalf of whom, a note the server keeps in the audit reason ("" for none). The actor it
    records is the identity it verified for the token, whatever this says."""
    if args.actor is not None and not args.actor.strip():
        raise InvalidInput("--actor", "must not be empty when given")
    return args.actor or ""


def _change_dict(change: Any) -> dict[str, Any]:
    from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb

    return {
        "sequence": change.sequence, "changed_at": change.changed_at.ToJsonString(), "actor": change.actor,
        "old_cap": change.old_cap, "new_cap": change.new_cap, "reason": change.reason,
        "evidence_digest": change.evidence_digest,
        "outcome": admin_pb.CapChangeOutcome.Name(change.outcome).removeprefix("CAP_CHANGE_OUTCOME_").lower(),
        "failed_checks": list(change.failed_checks),
    }


def run_caps_show(args: argparse.Namespace) -> int:
    from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb

    if args.limit < 0:
        raise InvalidInput("--limit", f"must be >= 0, got {args.limit}")
    reply = call_admin(args, "GetSurface", admin_pb.GetSurfaceRequest(surface=args.surface, history_limit=args.limit))
    if isinstance(reply, int):
        return reply
    history = [_change_dict(c) for c in reply.history]
    if args.format == "json":
        print(json.dumps({"surface": reply.surface, "exploration_cap": reply.exploration_cap,
                          "configured_cap": reply.configured_cap, "policy_version": reply.policy_version,
                          "history": history}, indent=2))
        return 0
    print(f"surface {reply.surface}: exploration cap {reply.exploration_cap:g} in force "
          f"(configured {reply.configured_cap:g}), policy {reply.policy_version}")
    if not history:
        print("no cap changes recorded")
    for entry in history:
        evidence = f" evidence {entry['evidence_digest'][:12]}" if entry["evidence_digest"] else ""
        print(f"#{entry['sequence']} {entry['changed_at']} {entry['outcome']:8} {entry['old_cap']:g} -> "
              f"{entry['new_cap']:g} by {entry['actor']}{evidence}: {entry['reason'] or '(no reason given)'}")
        for check in entry["failed_checks"]:
            print(f"    failed {check}")
    return 0


def run_caps_set(args: argparse.Namespace) -> int:
    from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb

    evidence = ""
    if args.evidence:
        try:
            evidence = Path(args.evidence).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput("--evidence", f"cannot read {args.evidence}: {exc}") from None
    request = admin_pb.SetExplorationCapRequest(surface=args.surface, cap=args.cap, evidence=evidence,
                                                actor=actor_of(args), reason=args.reason)
    reply = call_admin(args, "SetExplorationCap", request,
                       refused=f"the gate did not allow raising surface {args.surface!r} to cap {args.cap:g}")
    if isinstance(reply, int):
        return reply
    print(f"surface {args.surface}: exploration cap {reply.old_cap:g} -> {reply.exploration_cap:g} "
          f"(audit #{reply.change.sequence}, policy {reply.policy_version})")
    return 0


def _failed_checks(exc: Any) -> list[str]:
    from recsys_rl.caps.gate import FAILED_CHECKS_METADATA

    for key, value in exc.trailing_metadata() or ():
        if key == FAILED_CHECKS_METADATA:
            try:
                return [str(line) for line in json.loads(value)]
            except ValueError:
                return []
    return []
