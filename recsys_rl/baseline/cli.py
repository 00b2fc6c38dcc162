"""``recsys-rl train baseline --data-dir D [--surface S] [--since T] [--config FILE]``: a LambdaRank baseline.

Prints one JSON line (version, path, report, timings); bad data raises InvalidInput (one line, exit 2, nothing
published)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recsys_rl.errors import InvalidInput
from recsys_rl.slateq.cli import _train_group

__all__ = ["register", "run_train_baseline"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from recsys_rl.baseline.train import TrainConfig  # noqa: PLC0415 - light (lightgbm is imported when training)

    d = TrainConfig()
    parser = _train_group(subparsers).add_parser(
        "baseline", help="train a LightGBM LambdaRank baseline from the logs under --data-dir")
    parser.add_argument("--data-dir", required=True, help="reads D/logs, writes D/models/<surface>.baseline/<version>/")
    parser.add_argument("--surface", default="default")
    parser.add_argument("--since", help="only decisions served at or after this time (ISO 8601, or unix seconds)")
    parser.add_argument("--config", help="TOML with the surface's reward definition (default: embedded)")
    parser.add_argument("--rounds", type=int, default=d.num_rounds, help="boosting rounds")
    parser.add_argument("--clip", type=float, default=d.clip, help="max inverse-propensity weight")
    parser.add_argument("--min-decisions", type=int, default=d.min_decisions)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--max-decisions", type=int, default=d.max_decisions,
                        help="train on a uniform sample of at most this many decisions, by event-id hash (0 = all)")
    parser.add_argument("--workers", type=int, default=d.read_workers, help="log-reading processes (0 = one per core)")
    parser.add_argument("--threads", type=int, default=d.threads, help="LightGBM threads (0 = OpenMP default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_train_baseline)


def run_train_baseline(args: argparse.Namespace) -> int:
    from evaluators.replay.run import _since_seconds  # noqa: PLC0415 - the same --since syntax as replay
    from recsys_rl.baseline.train import TrainConfig, train_from_data_dir  # noqa: PLC0415
    from recsys_rl.config import ConfigError, default_config, load_config  # noqa: PLC0415

    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise InvalidInput("--data-dir", f"{data_dir} is not a directory")
    try:
        config = load_config(args.config) if args.config else default_config()
    except ConfigError as exc:
        key, _, reason = str(exc).partition(": ")
        raise InvalidInput(key, reason) from exc
    surface = config.surface(args.surface)
    if surface is None:
        raise InvalidInput("--surface", f"unknown surface {args.surface!r}")
    train_config = TrainConfig(num_rounds=args.rounds, clip=args.clip, min_decisions=args.min_decisions,
                               seed=args.seed, max_decisions=args.max_decisions, read_workers=args.workers,
                               threads=args.threads)
    result, checkpoint = train_from_data_dir(data_dir, surface, train_config, since=_since_seconds(args.since),
                                             progress=not args.no_progress)
    print(json.dumps({
        "version": checkpoint.version, "surface": checkpoint.surface,
        "path": str(data_dir / "models" / checkpoint.surface / checkpoint.version), "report": result.report,
        "load_seconds": round(result.load_seconds, 2), "train_seconds": round(result.train_seconds, 2),
    }), file=sys.stdout)
    return 0
