"""The ``recsys-rl`` command line. Exit codes: 0 success, 2 bad usage or input (one line on stderr), 1 otherwise.

Subcommands import their heavy modules lazily so ``recsys-rl --help`` stays fast. This module is the composition
root: ``serve`` imports the gRPC layer (``ranker``) inside the function, the one place ours may, so the core itself
stays usable without gRPC.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_rl.caps.cli import cap_argument
from recsys_rl.config import ConfigError
from recsys_rl.errors import InvalidInput

if TYPE_CHECKING:
    from logging_schema.rewards import RewardDefinition


class UsageError(Exception):
    """Bad usage or bad input: exit 2 with one line on stderr."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _load_config(args: argparse.Namespace):  # noqa: ANN202 - ServiceConfig, imported lazily
    from recsys_rl.config import ConfigError, default_config, load_config

    try:
        config = load_config(args.config, seed=args.seed) if args.config else default_config(seed=args.seed)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    if getattr(args, "learner_nice", None) is not None:  # serve only
        config = replace(config, learner_nice=args.learner_nice)
    return config.with_cap(args.exploration_cap) if args.exploration_cap is not None else config


def int_argument(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``; anything else is one line naming the range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {value}")
        return value
    return parse


# A TCP port, 0 (pick a free one) to 65535: gRPC would silently bind another port for anything else.
port_argument = int_argument(0, 65535)
# The learner's niceness above the server's: 0 (as the server) to 19.
learner_nice_argument = int_argument(0, 19)


def _serve(args: argparse.Namespace) -> int:
    from ranker.workers import default_workers
    from recsys_rl.serving.dirlock import DataDirInUse, DataDirLock

    config = _load_config(args)
    admin = _admin_settings(args)
    workers = args.workers if args.workers is not None else default_workers()
    if args.worker_index is not None:
        return _serve_worker(args, config, workers, admin)
    if workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise UsageError(f"--workers: {workers} workers share one port through SO_REUSEPORT, which this system "
                         "lacks; use --workers 1 (one server per port behind a balancer: docs/operations.md)")
    try:
        # Before anything binds the port or opens the log: a second server on this dir stops here, in one line.
        lock = DataDirLock(Path(args.data_dir))
    except DataDirInUse as exc:
        raise UsageError(str(exc)) from None
    port_file = Path(args.port_file) if args.port_file else None
    with lock:
        if workers > 1:
            from ranker.workers.supervisor import serve_workers

            return serve_workers(args.argv, config, Path(args.data_dir), workers=workers, host=args.host,
                                 port=args.port, port_file=port_file, metrics_port=args.metrics_port,
                                 admin=admin, lock_fd=lock.fileno())
        from ranker.server import serve_forever

        return serve_forever(
            config, Path(args.data_dir), host=args.host, port=args.port, port_file=port_file,
            metrics_port=args.metrics_port, max_workers=args.max_workers,
            max_queue_wait_ms=args.max_queue_wait_ms or None, admin=admin,
        )


_ADMIN_FILES = (("--admin-tls-cert", "admin_tls_cert"), ("--admin-tls-key", "admin_tls_key"),
                ("--admin-authz", "admin_authz"))


def _admin_settings(args: argparse.Namespace):  # noqa: ANN202 - ranker.admin_auth.AdminSettings, imported lazily
    """``--admin-*`` as AdminSettings (files read and checked now: exit 2 naming the flag), or None: no admin
    listener, and nothing serves PolicyAdminService. Admin is TLS with verified callers or not at all."""
    from ranker.admin_auth import AdminSettings

    given = [flag for flag, name in _ADMIN_FILES if getattr(args, name)]
    if args.admin_port is None:
        if given or args.admin_host:
            raise UsageError(f"{(given or ['--admin-host'])[0]}: only with --admin-port")
        return None
    for flag, name in _ADMIN_FILES:
        if not getattr(args, name):
            raise UsageError(f"{flag}: required with --admin-port (the admin listener serves TLS to verified "
                             f"callers only)")
    settings = AdminSettings(port=args.admin_port, tls_cert=Path(args.admin_tls_cert),
                             tls_key=Path(args.admin_tls_key), authz=Path(args.admin_authz),
                             host=args.admin_host or None)
    settings.check()
    return settings


def _serve_worker(args: argparse.Namespace, config, workers: int, admin) -> int:  # noqa: ANN001
    """``--worker-index K``: one worker of a ``serve --workers N`` parent, which holds the data dir's lock."""
    from ranker.workers.worker import serve_worker
    from recsys_rl.serving.dirlock import holder_pid

    if not 0 <= args.worker_index < workers:
        raise UsageError(f"--worker-index: must be from 0 to {workers - 1}, got {args.worker_index}")
    parent = os.getppid()
    if holder_pid(Path(args.data_dir)) != parent:  # also catches a parent that died before we got here
        raise UsageError("--worker-index: internal to `recsys-rl serve --workers N`; this process's parent does "
                         f"not hold {Path(args.data_dir) / '.serve.lock'}")
    for handler in logging.getLogger().handlers:  # which worker said it, in the log the workers share
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s worker-{args.worker_index} %(name)s: %(message)s"))
    return serve_worker(config, Path(args.data_dir), index=args.worker_index, workers=workers, parent_pid=parent,
                        host=args.host, port=args.port, metrics_port=args.metrics_port,
                        max_workers=args.max_workers, max_queue_wait_ms=args.max_queue_wait_ms or None, admin=admin)


def positive_int_argument(text: str) -> int:
    """An integer of at least 1 (``--workers``, ``--batch-rows``); argparse names the flag in the error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def lateness_argument(text: str) -> float:
    """Seconds an outcome may take to reach the log: a finite number >= 0."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return seconds


def _demo(args: argparse.Namespace) -> int:
    from recsys_rl.demo import DemoArgs, run_demo

    return run_demo(DemoArgs(requests=args.requests, seed=args.seed, data_dir=args.data_dir,
                             exploration_cap=args.exploration_cap))


def _logs_export(args: argparse.Namespace) -> int:
    from logging_schema.tables import describe_gaps, export_parquet
    from recsys_rl.config import default_config

    config = _load_config(args) if args.config else default_config()
    logs = Path(args.data_dir) / "logs"
    if not logs.is_dir():
        raise UsageError(f"--data-dir: no logs under {logs}")
    rewards = {name: surface.reward for name, surface in config.surfaces.items()}
    if args.partitioned:
        return _logs_export_partitioned(args, rewards)
    for flag, given in (("--overwrite", args.overwrite), ("--batch-rows", args.batch_rows is not None),
                        ("--lateness-seconds", args.lateness_seconds is not None)):
        if given:
            raise UsageError(f"{flag}: only with --partitioned")
    stats = export_parquet(Path(args.data_dir), Path(args.out), rewards)
    print(f"exported {stats.rows:,} rows ({stats.decisions:,} decisions, {stats.outcomes:,} outcomes) to {stats.out}"
          f"; damaged records skipped: {stats.read.describe_damage()}")
    if stats.gaps:  # decisions the server answered while its log could not take records are not in the export
        print(describe_gaps(stats.gaps))
    return 0


def _logs_export_partitioned(args: argparse.Namespace, rewards: dict[str, RewardDefinition]) -> int:
    from logging_schema.lake import DEFAULT_BATCH_ROWS, DEFAULT_LATENESS_SECONDS, OutputNotEmptyError, export_partitioned
    from logging_schema.tables import describe_gaps

    try:
        stats = export_partitioned(
            Path(args.data_dir), Path(args.out), rewards, overwrite=args.overwrite,
            batch_rows=args.batch_rows if args.batch_rows is not None else DEFAULT_BATCH_ROWS,
            lateness_seconds=args.lateness_seconds if args.lateness_seconds is not None else DEFAULT_LATENESS_SECONDS,
        )
    except OutputNotEmptyError as exc:
        raise UsageError(str(exc)) from None
    print(f"exported {stats.rows:,} rows ({stats.decisions:,} decisions, {stats.outcomes:,} outcomes) to {stats.out} "
          f"in {stats.files:,} part files (surface=/date=); damaged records skipped: {stats.read.describe_damage()}")
    if stats.late_outcomes:  # the single-file export would be exact; say so rather than differ silently
        print(f"late outcomes: {stats.late_outcomes:,} outcomes were logged after their decision's window plus "
              f"--lateness-seconds and may be missing from rewards; re-run with a larger --lateness-seconds")
    if stats.gaps:
        print(describe_gaps(stats.gaps))
    return 0


# Subcommands whose parsers import nothing heavy; the others (evaluate: scipy, train: torch) are registered
# only when asked for or for --help, so `recsys-rl serve` starts without paying for them.
_LIGHT_COMMANDS = ("serve", "demo", "logs")


def build_parser(*, full: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(prog="recsys-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the gRPC ranking server")
    serve.add_argument("--port", type=port_argument, default=50051, help="0 picks a free port")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--data-dir", required=True, help="logs and models go here")
    serve.add_argument("--config", help="TOML surface configuration (default: the embedded default surface)")
    serve.add_argument("--exploration-cap", type=cap_argument, help="override every surface's exploration cap")
    serve.add_argument("--seed", type=int, default=0, help="server seed of the random draws")
    serve.add_argument("--port-file", help="write the bound port here once serving")
    serve.add_argument("--metrics-port", type=port_argument, default=None,
                       help="serve Prometheus metrics on this port (0 picks a free one; default: metrics off)")
    serve.add_argument("--admin-port", type=port_argument, default=None,
                       help="serve PolicyAdminService (caps, rollout, shield) on this TLS port, callers verified by "
                            "bearer token (0 picks a free one; default: admin not served)")
    serve.add_argument("--admin-host", help="the admin listener's address (default: --host)")
    serve.add_argument("--admin-tls-cert", metavar="PEM", help="the admin listener's certificate chain")
    serve.add_argument("--admin-tls-key", metavar="PEM", help="its private key")
    serve.add_argument("--admin-authz", metavar="TOML",
                       help="identities, roles (viewer, operator) and token hashes; re-read when it changes")
    serve.add_argument("--max-workers", type=int, default=2,
                       help="RPC handler threads (VW holds the GIL: more threads only interleave decisions)")
    serve.add_argument("--max-queue-wait-ms", type=float, default=50.0,
                       help="refuse a Rank (RESOURCE_EXHAUSTED) that queued longer than this; 0 = no limit")
    serve.add_argument("--workers", type=positive_int_argument, default=None,
                       help="serving processes on the one port (SO_REUSEPORT); default: one per usable core; "
                            "1: a single process, as before")
    serve.add_argument("--learner-nice", type=learner_nice_argument, default=None, metavar="N",
                       help="run the online learner N niceness steps below the serving processes (0-19, default "
                            "10; 0: the same priority): at peak load serving gets the CPU and learning lags")
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)  # set by the parent
    serve.set_defaults(run=_serve)

    demo = sub.add_parser("demo", help="simulated host traffic through the real server, learning, report")
    demo.add_argument("--requests", type=int, default=20_000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--data-dir", help="default: a new temporary directory")
    demo.add_argument("--exploration-cap", type=cap_argument, default=0.1)
    demo.set_defaults(run=_demo)

    logs = sub.add_parser("logs", help="decision and outcome logs")
    logs_sub = logs.add_subparsers(dest="logs_command", required=True, parser_class=_Parser)
    export = logs_sub.add_parser("export", help="decisions joined with outcomes, one row per slate position")
    export.add_argument("--data-dir", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--config", help="TOML with the surfaces' reward definitions (default: embedded)")
    export.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    export.add_argument("--exploration-cap", type=cap_argument, default=None, help=argparse.SUPPRESS)
    export.add_argument("--partitioned", action="store_true",
                        help="write --out as a directory of Hive-partitioned parquet (surface=/date=), streaming")
    export.add_argument("--overwrite", action="store_true", help="with --partitioned: replace a non-empty --out")
    export.add_argument("--batch-rows", type=positive_int_argument, default=None,
                        help="with --partitioned: rows per part file at most, and per join (default: 50000)")
    export.add_argument("--lateness-seconds", type=lateness_argument, default=None,
                        help="with --partitioned: how long after it occurred an outcome may reach the log "
                             "(default: 300)")
    export.set_defaults(run=_logs_export)

    if full:
        from evaluators.cli import add_evaluate_parser, run_evaluate

        add_evaluate_parser(sub).set_defaults(run=run_evaluate)
        for module in ("evaluators.replay.run", "recsys_rl.slateq.cli", "recsys_rl.baseline.cli", "recsys_rl.caps.cli",
                       "recsys_rl.sim.compare", "recsys_rl.rollout.cli", "recsys_rl.shield.cli", "recsys_rl.catalog.cli"):
            importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        light = bool(argv) and argv[0] in _LIGHT_COMMANDS
        args = build_parser(full=not light).parse_args(argv)
        args.argv = argv  # `serve --workers N` starts its workers with the same command line
        return int(args.run(args))
    except (UsageError, InvalidInput, ConfigError) as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as exc:
        # Bad paths and bad values that got past argparse: still one line, naming what was wrong.
        print(f"recsys-rl: {exc}".splitlines()[0], file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
