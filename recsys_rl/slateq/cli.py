"""``recsys-rl train slateq --data-dir D ...``: offline SlateQ training from a data dir's logs.

``register(subparsers)`` adds the command to the top-level subparsers of ``recsys_rl.cli`` (creating the
``train`` group if no other trainer has). Bad input raises ``recsys_rl.errors.InvalidInput`` (exit 2 in the
CLI); the handler prints one JSON line (version, path, throughput) and returns 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recsys_rl.errors import InvalidInput

__all__ = ["register", "run_train_slateq"]


def _train_group(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    train = subparsers.choices.get("train")
    if train is None:
        train = subparsers.add_parser("train", help="offline training of models from logs")
        return train.add_subparsers(dest="train_command", required=True, parser_class=type(train))
    for action in train._actions:  # another trainer registered the group first: reuse its subcommands
        if isinstance(action, argparse._SubParsersAction):
            return action
    return train.add_subparsers(dest="train_command", required=True, parser_class=type(train))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``train slateq`` to ``subparsers`` (the ``recsys-rl`` top-level subcommands)."""
    from recsys_rl.slateq.train import TrainConfig  # noqa: PLC0415 - the defaults shown in --help

    d = TrainConfig()
    parser = _train_group(subparsers).add_parser(
        "slateq", help="train the slate-RL long-term value model from the logs under --data-dir")
    parser.add_argument("--data-dir", required=True, help="reads D/logs, writes D/models/slateq/<version>/")
    parser.add_argument("--gamma", type=float, default=d.gamma, help="per-decision discount")
    parser.add_argument("--n-step", type=int, default=d.n_step, help="steps summed before bootstrapping")
    parser.add_argument("--steps", type=int, default=None, help="gradient steps (default: one pass over the data)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--tau", type=float, default=d.tau, help="Polyak rate of the target network")
    parser.add_argument("--cql-alpha", type=float, default=d.cql_alpha, help="weight of the conservative penalty")
    parser.add_argument("--dwell-weight", type=float, default=d.dwell_weight, help="reward per second of dwell")
    parser.add_argument("--return-visit-weight", type=float, default=d.return_visit_weight)
    parser.add_argument("--session-gap-seconds", type=float, default=d.session_gap_seconds)
    parser.add_argument("--return-visit-on", choices=("last_decision", "next_visit"), default=d.return_visit_on)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_train_slateq)


def run_train_slateq(args: argparse.Namespace) -> int:
    """Handler of ``train slateq``: trains, publishes, prints a JSON summary line. Returns the exit code."""
    from recsys_rl.slateq.train import TrainConfig, train_from_data_dir

    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise InvalidInput("--data-dir", f"{data_dir} is not a directory")
    if args.threads is not None and args.threads < 1:
        raise InvalidInput("--threads", f"must be >= 1, got {args.threads}")
    config = TrainConfig(
        gamma=args.gamma, n_step=args.n_step, steps=args.steps, batch_size=args.batch_size, lr=args.lr, tau=args.tau,
        cql_alpha=args.cql_alpha, dwell_weight=args.dwell_weight, return_visit_weight=args.return_visit_weight,
        session_gap_seconds=args.session_gap_seconds, return_visit_on=args.return_visit_on, seed=args.seed,
        threads=args.threads,
    )  # fmt: skip
    config.retention()  # validates gamma, n_step, ... with InvalidInput before any log is read
    result, checkpoint = train_from_data_dir(data_dir, config, progress=not args.no_progress)
    assert checkpoint is not None
    summary = {
        "version": checkpoint.version, "parent": checkpoint.manifest["parent"],
        "path": str(data_dir / "models" / checkpoint.surface / checkpoint.version),
        "decisions": len(result.dataset), "steps": result.steps, "load_seconds": round(result.load_seconds, 2),
        "train_seconds": round(result.train_seconds, 2),
        "decisions_per_second": round(result.decisions_per_second, 1), "final_losses": result.losses,
    }  # fmt: skip
    print(json.dumps(summary), file=sys.stdout)
    return 0
