"""``recsys-rl shield gc --data-dir D --keep N``: delete stored shield rules versions nothing needs any more.

What is kept (the rules: :meth:`recsys_rl.shield.store.ShieldStore.collect_garbage`): per surface the newest N
versions the audit trail put in force, every version in force, every version replaced less than ten minutes ago, and
every version a decision in ``D/logs`` names — replay decides each logged decision under the rules it logged
(``DecisionEvent.shield_version``, ``evaluators/replay/shield.py``), so deleting one of those would make replay of
that log refuse. The log is read first with a view that parses only each decision's surface and shield version.
Offline and safe while servers run: the store's admin lock serialises it with rule changes, and servers hold the
rules in force in memory.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from recsys_rl.caps.durable import add_gc_arguments
from recsys_rl.errors import InvalidInput


def referenced_versions(log_dir: Path) -> dict[str, str]:
    """Every shield version a decision in the log at ``log_dir`` names -> where ("D/logs: 1,234 decisions")."""
    from logging_schema.reader import iter_records
    from logging_schema.views import VersionsRecord

    if not Path(log_dir).is_dir():
        return {}
    counts: Counter[str] = Counter()
    for record in iter_records(Path(log_dir), record_type=VersionsRecord):
        if record.WhichOneof("event") == "decision" and record.decision.shield_version:
            counts[record.decision.shield_version] += 1
    return {version: f"{log_dir}: {n:,} decisions" for version, n in counts.items()}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds ``shield gc`` under ``recsys-rl shield``."""
    gc = sub.add_parser("gc", help="delete stored rule versions beyond the newest N per surface (never one in force "
                                   "or one the log's decisions name); offline, audited")
    add_gc_arguments(gc, keep_help="versions kept per surface, the one in force included")
    gc.set_defaults(run=run_shield_gc)


def run_shield_gc(args: argparse.Namespace) -> int:
    from recsys_rl.catalog.cli import gc_actor
    from recsys_rl.shield.store import ADMIN_DIR, VERSIONS_DIR, ShieldStore

    if args.keep < 1:
        raise InvalidInput("--keep", f"must be at least 1 (the versions in force are always kept), got {args.keep}")
    data_dir = Path(args.data_dir)
    if not (data_dir / ADMIN_DIR / VERSIONS_DIR).is_dir():
        raise InvalidInput("--data-dir", f"no shield rules under {data_dir / ADMIN_DIR / VERSIONS_DIR}")
    actor = gc_actor(args, "recsys-rl shield gc")
    referenced = referenced_versions(data_dir / "logs")  # before the lock: a long read must not block rule changes
    deleted, kept = ShieldStore(data_dir).collect_garbage(args.keep, referenced, actor=actor, reason=args.reason,
                                                          dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"shield gc: {verb} {len(deleted)} versions{': ' + ', '.join(deleted) if deleted else ''}; kept "
          f"{len(kept)}")
    for version, why in kept.items():
        print(f"  kept {version}: {why}")
    return 0


__all__ = ["referenced_versions", "register", "run_shield_gc"]
