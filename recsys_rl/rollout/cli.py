"""``recsys-rl rollout show|set``: a running server's rollout stage, canary share, guardrail and audit trail.

``register(subparsers)`` adds the commands to ``recsys_rl.cli``'s top-level subparsers. Exit codes: 0 success;
3 a forward move refused by the guardrail (the failed checks on stderr); bad usage raises
``recsys_rl.errors.InvalidInput`` (exit 2, one line); an unreachable server or another RPC error exits 1.
Like ``caps``, the client speaks gRPC through the generated stubs only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from recsys_rl.caps.cli import actor_of, add_admin_client_arguments, call_admin
from recsys_rl.errors import InvalidInput
from recsys_rl.rollout.config import STAGES

__all__ = ["register", "run_rollout_set", "run_rollout_show"]

_DEFAULT_TIMEOUT_S = 30.0


def share_argument(text: str) -> float:
    """argparse type for a canary share in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``rollout {show,set}`` to the ``recsys-rl`` subcommands."""
    rollout = subparsers.add_parser("rollout", help="rollout stage of a surface on a running server")
    sub = rollout.add_subparsers(dest="rollout_command", required=True, parser_class=type(rollout))
    show = sub.add_parser("show", help="stage, canary share, guardrail, shadow statistics and the audit trail")
    add_admin_client_arguments(show, changes=False)
    show.add_argument("--surface", default="default")
    show.add_argument("--limit", type=int, default=20, help="most recent audit entries (0 = all)")
    show.add_argument("--format", choices=("table", "json"), default="table")
    show.add_argument("--data-dir", help="the server's data dir: also estimate the learned policy's value from its logs "
                                         "(replay `current`, standard IPS and RIPS, --ci auto, with verdicts)")
    show.add_argument("--config", help="TOML surface configuration of the server (with --data-dir; default: embedded)")
    show.add_argument("--timeout", type=float, default=_DEFAULT_TIMEOUT_S, help="seconds")
    show.set_defaults(run=run_rollout_show)

    set_ = sub.add_parser("set", help="move back at once, or forward when the guardrail's evidence holds")
    add_admin_client_arguments(set_, changes=True)
    set_.add_argument("--surface", default="default")
    set_.add_argument("--stage", choices=STAGES, help="default: keep the current stage")
    set_.add_argument("--canary-share", type=share_argument, help="share of users in the canary (default: keep)")
    set_.add_argument("--reason", default="", help="why, for the audit trail")
    set_.add_argument("--timeout", type=float, default=_DEFAULT_TIMEOUT_S, help="seconds")
    set_.set_defaults(run=run_rollout_set)


def _stage_name(value: int) -> str:
    from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb

    return admin_pb.RolloutStage.Name(value).removeprefix("ROLLOUT_STAGE_").lower()


def _change_dict(change: Any) -> dict[str, Any]:
    from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb

    return {
        "sequence": change.sequence, "changed_at": change.changed_at.ToJsonString(), "actor": change.actor,
        "old_stage": _stage_name(change.old_stage), "new_stage": _stage_name(change.new_stage),
        "old_canary_share": change.old_canary_share, "new_canary_share": change.new_canary_share,
        "reason": change.reason,
        "outcome": admin_pb.CapChangeOutcome.Name(change.outcome).removeprefix("CAP_CHANGE_OUTCOME_").lower(),
        "failed_checks": list(change.failed_checks), "automatic": change.automatic,
        "evidence": json.loads(change.evidence_json) if change.evidence_json else None,
    }


def _message_dict(message: Any) -> dict[str, Any]:
    """Every field of a flat message, defaults included (0 decisions is an answer, not a missing key)."""
    return {f.name: getattr(message, f.name) for f in message.DESCRIPTOR.fields}


def _worker_dict(worker: Any) -> dict[str, Any]:
    return {"worker": worker.worker, "pid": worker.pid, "rollout_sequence": worker.rollout_sequence,
            "status": worker.status,
            "guardrail": _message_dict(worker.guardrail) if worker.HasField("guardrail") else None,
            "shadow": _message_dict(worker.shadow) if worker.HasField("shadow") else None}


def _guardrail_line(title: str, guard: dict[str, Any]) -> str:
    return (f"{title} {guard['status'] or 'off'}: canary {guard['canary_mean_reward']:.4g} over "
            f"{guard['canary_decisions']} decisions, control {guard['control_mean_reward']:.4g} over "
            f"{guard['control_decisions']}; difference in [{guard['difference_low']:.4g}, "
            f"{guard['difference_high']:.4g}] (tolerance {guard['tolerance']:g}, alpha {guard['alpha']:g})")


def _shadow_line(title: str, shadow: dict[str, Any]) -> str:
    return (f"{title}: {shadow['decisions']} decisions, top-1 match {shadow['top1_match']:.3f}, overlap@k "
            f"{shadow['overlap_at_k']:.3f}, added latency p50 {shadow['added_latency_p50_ms']:.3g} ms, fallback rate "
            f"{shadow['fallback_rate']:.3g}")


def run_rollout_show(args: argparse.Namespace) -> int:
    from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb

    if args.limit < 0:
        raise InvalidInput("--limit", f"must be >= 0, got {args.limit}")
    reply = call_admin(args, "GetRollout", admin_pb.GetRolloutRequest(surface=args.surface, history_limit=args.limit))
    if isinstance(reply, int):
        return reply
    shown = {"surface": reply.surface, "stage": _stage_name(reply.stage), "canary_share": reply.canary_share,
             "reverted": reply.reverted, "guardrail": _message_dict(reply.guardrail),
             "shadow": _message_dict(reply.shadow), "history": [_change_dict(c) for c in reply.history],
             "workers": [_worker_dict(w) for w in reply.workers]}
    if args.data_dir:
        shown["counterfactual"] = counterfactual_value(Path(args.data_dir), args.surface, args.config)
    if args.format == "json":
        print(json.dumps(shown, indent=2))
        return 0
    reverted = " (reverted by the guardrail; re-arm with `rollout set`)" if shown["reverted"] else ""
    print(f"surface {shown['surface']}: stage {shown['stage']}, canary share {shown['canary_share']:g}{reverted}")
    fleet = len(shown["workers"]) > 1
    print(_guardrail_line("fleet guardrail" if fleet else "guardrail", shown["guardrail"]))
    print(_shadow_line("fleet shadow" if fleet else "shadow", shown["shadow"]))
    if fleet:  # one line per worker: its own evidence, and why it does not count when it does not
        for worker in shown["workers"]:
            status = "" if worker["status"] == "current" else f" [{worker['status']}]"
            shadow, guard = worker["shadow"] or {}, worker["guardrail"]
            line = (f"  {worker['worker']} (pid {worker['pid']}, rollout #{worker['rollout_sequence']}){status}: "
                    f"shadow {shadow.get('decisions', 0)} decisions "
                    f"(fallback rate {shadow.get('fallback_rate', 0):.3g})")
            if guard:
                line += (f"; guardrail {guard['status']}: canary {guard['canary_mean_reward']:.4g} over "
                         f"{guard['canary_decisions']}, control {guard['control_mean_reward']:.4g} over "
                         f"{guard['control_decisions']}, difference in [{guard['difference_low']:.4g}, "
                         f"{guard['difference_high']:.4g}]")
            print(line)
    for row in shown.get("counterfactual", []):
        verdict = "ok" if row["verdict"] == "ok" else f"UNRELIABLE: {'; '.join(row['reasons'])}"
        print(f"learned policy (replay current) {row['estimator']}: {row['value']:.4g} [{row['ci_low']:.4g}, "
              f"{row['ci_high']:.4g}] {row['ci_method']}, ESS {row['ess']:.0f} - {verdict}")
    if not shown["history"]:
        print("no rollout changes recorded")
    for entry in shown["history"]:
        by = f"{entry['actor']} (automatic)" if entry["automatic"] else entry["actor"]
        print(f"#{entry['sequence']} {entry['changed_at']} {entry['outcome']:8} {entry['old_stage']} "
              f"{entry['old_canary_share']:g} -> {entry['new_stage']} {entry['new_canary_share']:g} by {by}: "
              f"{entry['reason'] or '(no reason given)'}")
        for check in entry["failed_checks"]:
            print(f"    failed {check}")
    return 0


def counterfactual_value(data_dir: Path, surface: str, config_path: str | None) -> list[dict[str, Any]]:
    """The learned policy's (the registry's latest version) value on the surface's logs: replay + estimate with
    ``auto`` intervals and verdicts - at stage shadow the logs are the baseline's, so the verdict says whether they
    can answer. Raises InvalidInput (exit 2) for a bad data dir or config."""
    from evaluators import estimate
    from evaluators.replay.run import replay
    from recsys_rl.config import ConfigError, default_config, load_config

    try:
        config = load_config(config_path) if config_path else default_config()
    except ConfigError as exc:
        key, _, reason = str(exc).partition(": ")
        raise InvalidInput(key, reason) from exc
    table = replay(data_dir, "current", surface=surface, config=config, progress=False)
    result = estimate(table, ["standard_ips", "rips"], ci="auto")
    rows = []
    for row in result.iter_rows(named=True):
        rows.append({key: row[key] for key in ("estimator", "value", "ci_low", "ci_high", "ci_method", "ess",
                                               "verdict")} | {"reasons": [r for r in row["reasons"].split("; ") if r]})
    return rows


def run_rollout_set(args: argparse.Namespace) -> int:
    from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb

    if args.stage is None and args.canary_share is None:
        raise InvalidInput("--stage", "give --stage, --canary-share, or both")
    request = admin_pb.SetRolloutRequest(surface=args.surface, actor=actor_of(args), reason=args.reason)
    if args.stage is not None:
        request.stage = admin_pb.RolloutStage.Value(f"ROLLOUT_STAGE_{args.stage.upper()}")
    if args.canary_share is not None:
        request.canary_share = args.canary_share
    reply = call_admin(args, "SetRollout", request,
                       refused=f"the guardrail did not allow moving surface {args.surface!r} forward")
    if isinstance(reply, int):
        return reply
    change = reply.change
    print(f"surface {args.surface}: {_stage_name(change.old_stage)} {change.old_canary_share:g} -> "
          f"{_stage_name(reply.stage)} {reply.canary_share:g} (audit #{change.sequence})")
    return 0
