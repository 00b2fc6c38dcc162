"""``recsys-rl shield show|set``: a running server's shield rules, their version and audit trail; ``shield gc``
(offline, on the data dir: :mod:`recsys_rl.shield.gc`) deletes stored versions nothing needs.

``register(subparsers)`` adds the commands to ``recsys_rl.cli``'s top-level subparsers. Exit codes: 0 success; bad
usage or rules the server refuses raise ``recsys_rl.errors.InvalidInput`` (exit 2, one line naming the field); an
unreachable server, an ABORTED ``--expected-version`` race or another RPC error exits 1. Like ``caps``, the client
speaks gRPC through the generated stubs only.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

from recsys_rl.caps.cli import actor_of, add_admin_client_arguments, call_admin
from recsys_rl.errors import InvalidInput
from recsys_rl.shield.rules import ShieldConfigError, rules_from_dict

__all__ = ["register", "run_shield_set", "run_shield_show"]

_DEFAULT_TIMEOUT_S = 60.0  # a blocked-items file of millions of ids is read and stored on the server
_INT32_MAX = 2**31 - 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``shield {show,set,gc}`` to the ``recsys-rl`` subcommands."""
    shield = subparsers.add_parser("shield", help="shield rules of a surface on a running server")
    sub = shield.add_subparsers(dest="shield_command", required=True, parser_class=type(shield))
    show = sub.add_parser("show", help="the rules in force, their version and the audit trail")
    add_admin_client_arguments(show, changes=False)
    show.add_argument("--surface", default="default")
    show.add_argument("--history", type=int, default=20, help="most recent audit entries (0 = all)")
    show.add_argument("--include-blocked-items", action="store_true", help="list every blocked id (may be many)")
    show.add_argument("--format", choices=("text", "json"), default="text")
    show.add_argument("--timeout", type=float, default=_DEFAULT_TIMEOUT_S, help="seconds")
    show.set_defaults(run=run_shield_show)

    set_ = sub.add_parser("set", help="replace the rules (--rules) and/or block / unblock items; audited")
    add_admin_client_arguments(set_, changes=True)
    set_.add_argument("--surface", default="default")
    set_.add_argument("--rules", help="TOML file with the shield table's keys at top level (replaces the rules; "
                                      "its blocked_items_file is a path on the server)")
    set_.add_argument("--block-item", action="append", default=[], metavar="ID", help="block this id (repeatable)")
    set_.add_argument("--unblock-item", action="append", default=[], metavar="ID", help="unblock this id (repeatable)")
    set_.add_argument("--blocked-items-file", metavar="SERVER_PATH",
                      help="block the ids in this file (one per line), read by the server")
    set_.add_argument("--expected-version", default="", help="refuse unless this version is in force")
    set_.add_argument("--reason", default="", help="why, for the audit trail")
    set_.add_argument("--timeout", type=float, default=_DEFAULT_TIMEOUT_S, help="seconds")
    set_.set_defaults(run=run_shield_set)

    from recsys_rl.shield.gc import register as register_gc

    register_gc(sub)


def _change_dict(change: Any) -> dict[str, Any]:
    return {"sequence": change.sequence, "changed_at": change.changed_at.ToJsonString(), "actor": change.actor,
            "old_version": change.old_version, "new_version": change.new_version, "reason": change.reason,
            "summary": change.summary}


def run_shield_show(args: argparse.Namespace) -> int:
    from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb

    if args.history < 0:
        raise InvalidInput("--history", f"must be >= 0, got {args.history}")
    request = admin_pb.GetShieldRequest(surface=args.surface, history_limit=args.history,
                                        include_blocked_items=args.include_blocked_items)
    reply = call_admin(args, "GetShield", request)
    if isinstance(reply, int):
        return reply
    rules = reply.rules
    shown: dict[str, Any] = {
        "surface": reply.surface, "version": reply.version, "blocked_items_count": rules.blocked_items_count,
        "blocked_values": {k: list(v.values) for k, v in sorted(rules.blocked_values.items())},
        "max_per_value": dict(sorted(rules.max_per_value.items())), "pinned": dict(sorted(rules.pinned.items())),
        "min_feasible": rules.min_feasible, "history": [_change_dict(c) for c in reply.history],
    }
    if rules.HasField("near_duplicates"):
        shown["near_duplicates"] = {"max_cosine": rules.near_duplicates.max_cosine}
    if args.include_blocked_items:
        shown["blocked_items"] = list(rules.blocked_items)
    if args.format == "json":
        print(json.dumps(shown, indent=2))
        return 0
    if not reply.version:
        print(f"surface {reply.surface}: no shield rules")
    else:
        print(f"surface {reply.surface}: shield {reply.version}: {rules.blocked_items_count} blocked items, "
              f"min_feasible {rules.min_feasible}")
        for key in ("blocked_values", "max_per_value", "pinned"):
            for name, value in shown[key].items():
                print(f"  {key}.{name} = {value}")
        if "near_duplicates" in shown:
            print(f"  near_duplicates.max_cosine = {shown['near_duplicates']['max_cosine']}")
        for item in shown.get("blocked_items", []):
            print(f"  blocked {item}")
    for entry in shown["history"]:
        why = f" ({entry['reason']})" if entry["reason"] else ""
        print(f"#{entry['sequence']} {entry['changed_at']} {entry['old_version'] or 'none'} -> "
              f"{entry['new_version'] or 'none'} by {entry['actor']}: {entry['summary']}"
              f"{why}")
    return 0


def read_rules_file(path: str) -> dict[str, Any]:
    """The rules of a ``--rules`` TOML file (the shield table's keys at top level), checked like the server checks
    them (the blocked-items file is the server's, so it is not read here). InvalidInput names the field."""
    try:
        table = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput("--rules", f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput("--rules", f"{path} is not TOML: {exc}") from None
    try:
        rules_from_dict({k: v for k, v in table.items() if k != "blocked_items_file"})
    except ShieldConfigError as exc:
        raise InvalidInput("--rules", f"{path}: {exc}") from None
    if "blocked_items_file" in table and not isinstance(table["blocked_items_file"], str):
        raise InvalidInput("--rules", f"{path}: shield.blocked_items_file: must be a path")
    for key in ("max_per_value", "pinned"):
        for name, value in table.get(key, {}).items():
            if value > _INT32_MAX:
                raise InvalidInput("--rules", f"{path}: shield.{key}.{name}: must be at most {_INT32_MAX}")
    if table.get("min_feasible", 1) > _INT32_MAX:
        raise InvalidInput("--rules", f"{path}: shield.min_feasible: must be at most {_INT32_MAX}")
    return table


def run_shield_set(args: argparse.Namespace) -> int:
    from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb

    if not (args.rules or args.block_item or args.unblock_item or args.blocked_items_file):
        raise InvalidInput("--rules", "give --rules, --block-item, --unblock-item or --blocked-items-file")
    request = admin_pb.SetShieldRequest(surface=args.surface, block_items=args.block_item,
                                        unblock_items=args.unblock_item, expected_version=args.expected_version,
                                        actor=actor_of(args), reason=args.reason)
    if args.rules:
        table = read_rules_file(args.rules)
        request.replace_rules = True
        rules = request.rules
        rules.blocked_items.extend(table.get("blocked_items", []))
        for key, values in table.get("blocked_values", {}).items():
            rules.blocked_values[key].values.extend(values)
        rules.max_per_value.update(table.get("max_per_value", {}))
        rules.pinned.update(table.get("pinned", {}))
        rules.min_feasible = table.get("min_feasible", 1)
        rules.blocked_items_file = table.get("blocked_items_file", "")
        if "near_duplicates" in table:
            rules.near_duplicates.max_cosine = table["near_duplicates"]["max_cosine"]
    if args.blocked_items_file:
        if args.rules:  # the request has one file field; with --rules it belongs to the replacement
            raise InvalidInput("--blocked-items-file", "with --rules, put blocked_items_file in the rules file")
        request.rules.blocked_items_file = args.blocked_items_file
    reply = call_admin(args, "SetShield", request)
    if isinstance(reply, int):
        return reply
    print(f"surface {args.surface}: shield {reply.old_version or 'none'} -> {reply.version or 'none'} "
          f"(audit #{reply.change.sequence}): {reply.change.summary}")
    return 0
