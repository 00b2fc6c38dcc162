"""``recsys-rl evaluate``: off-policy estimates of a feedback table from the command line.

``recsys_rl/cli.py`` wires it with ``add_evaluate_parser(subparsers)`` and dispatches to
``run_evaluate(args)``. Exit codes: 0 success; 2 bad usage or bad input, with ONE line on stderr naming
the column, estimator or option; 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import polars as pl

from evaluators.intervals import CI_METHODS
from evaluators.report import FORMATS, render
from evaluators.table import TableError, load_table
from evaluators.verdict import DEFAULT_POLICY, VerdictPolicy

PROG = "recsys-rl evaluate"
ENGINES = ("polars", "spark")


def _one_line_error(message: str) -> NoReturn:
    """argparse's default prints the usage too; the contract is one line naming the problem."""
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    raise SystemExit(2)


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add the ``evaluate`` sub-command to ``subparsers`` and return its parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="off-policy estimates from a bandit-feedback table",
        description="Estimate a target policy's value from a bandit-feedback table (parquet or csv).",
    )
    parser.add_argument("table", metavar="TABLE", help="feedback table (parquet, or .csv)")
    parser.add_argument("--estimators", required=True,
                        help="comma-separated, e.g. 'ips,snips,dr,clipped_ips(max_weight=10),dr_os(lambda=10)'")
    parser.add_argument("--ci", default=None, help=f"interval method: {', '.join(CI_METHODS)} (default: none)")
    parser.add_argument("--alpha", default="0.05", help="1 - confidence level (default 0.05)")
    parser.add_argument("--n-bootstrap", default="1000", help="Poisson-bootstrap resamples (default 1000)")
    parser.add_argument("--seed", default="0", help="bootstrap seed (default 0)")
    parser.add_argument("--format", default="table", help=f"output: {', '.join(FORMATS)} (default table)")
    parser.add_argument("--out", default=None, help="write the output to this file instead of stdout")
    parser.add_argument("--engine", default="polars",
                        help=f"{' or '.join(ENGINES)} (default polars); spark reads TABLE with spark.read.parquet (a file "
                             "or a Hive-partitioned directory, local or s3a://...) and needs the extra recsys-rl[spark]")
    parser.add_argument("--master", default=None,
                        help="Spark master with --engine spark: local[*] (default), spark://HOST:7077, yarn, ...")
    parser.add_argument("--allow-support-violations", action="store_true",
                        help="estimate on rows the logging policy could reach; violating rows get weight 0 "
                             "(the estimate is biased, and its verdict says so)")
    thresholds = parser.add_argument_group(
        "verdict thresholds", "an estimate outside any of these is reported UNRELIABLE with the reason (docs/verdicts.md)")
    for flag, field, what in _THRESHOLD_OPTIONS:
        thresholds.add_argument(f"--{flag}", default=None, metavar="X",
                                help=f"{what} (default {getattr(DEFAULT_POLICY, field):g})")
    parser.error = _one_line_error  # type: ignore[method-assign]
    parser.set_defaults(handler=run_evaluate)
    return parser


# (option, VerdictPolicy field, help): the CLI names its options, the Python API its parameters.
_THRESHOLD_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("min-ess", "min_ess", "smallest effective sample size"),
    ("max-weight-share", "max_weight_share", "largest share of the total weight on one row, in (0, 1]"),
    ("max-clipped-share", "max_clipped_share", "largest share of rows clipped or switched off, in (0, 1]"),
    ("min-ess-clt", "min_ess_clt", "smallest ESS at which normal/bootstrap/bernstein intervals are trusted"),
    ("max-weight-share-clt", "max_weight_share_clt",
     "largest weight share at which normal/bootstrap/bernstein intervals are trusted, in (0, 1]"),
)


def verdict_policy_from_args(args: argparse.Namespace) -> VerdictPolicy:
    """The thresholds given on the command line over the defaults; a bad value names its option."""
    given: dict[str, float] = {}
    for flag, field, _ in _THRESHOLD_OPTIONS:
        raw = getattr(args, field, None)
        if raw is not None:
            given[field] = float(_number(flag, raw, float))
    try:
        return VerdictPolicy(**given)
    except ValueError as exc:
        message = str(exc)
        for flag, field, _ in _THRESHOLD_OPTIONS:
            message = message.replace(f"parameter '{field}'", f"option '--{flag}'")
        raise ValueError(message) from None


def _number(name: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"option '--{name}' must be {'an integer' if kind is int else 'a number'}, got '{raw}'") from None


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; returns the process exit code."""
    from evaluators.evaluate import estimate  # imported here so `recsys-rl --help` stays fast

    try:
        if args.format not in FORMATS:
            raise ValueError(f"option '--format' must be one of {', '.join(FORMATS)}, got '{args.format}'")
        if args.ci is not None and args.ci not in CI_METHODS:
            raise ValueError(f"option '--ci' must be one of {', '.join(CI_METHODS)}, got '{args.ci}'")
        alpha = _number("alpha", args.alpha, float)
        n_bootstrap = int(_number("n-bootstrap", args.n_bootstrap, int))
        seed = int(_number("seed", args.seed, int))
        policy = verdict_policy_from_args(args)
        if args.engine not in ENGINES:
            raise ValueError(f"option '--engine' must be one of {', '.join(ENGINES)}, got '{args.engine}'")
        if args.master is not None and args.engine != "spark":
            raise ValueError("option '--master' needs '--engine spark'")
        if args.engine == "spark":
            result = _estimate_on_spark(args, alpha=alpha, seed=seed, n_bootstrap=n_bootstrap, policy=policy)
            weights: np.ndarray | None = None
        else:
            table = load_table(args.table)
            result = estimate(table, args.estimators, ci=args.ci, alpha=alpha, seed=seed, n_bootstrap=n_bootstrap,
                              allow_support_violations=args.allow_support_violations, verdict_policy=policy)
            if args.format == "html":
                p = table.get_column("pscore").cast(pl.Float64).to_numpy()
                t = table.get_column("target_pscore").cast(pl.Float64).to_numpy()
                weights = np.divide(t, p, out=np.zeros(p.size), where=p > 0)
            else:
                weights = None
        text = render(result, args.format, weights=weights)
    except ValueError as exc:  # TableError is a ValueError: bad input, exit 2 with one line
        sys.stderr.write(f"{PROG}: error: {' '.join(str(exc).split())}\n")
        return 2
    except Exception as exc:  # anything unforeseen: still one line, but exit 1
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())}\n")
        return 1
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as exc:
            sys.stderr.write(f"{PROG}: error: cannot write --out {args.out}: {exc.strerror}\n")
            return 2
    else:
        sys.stdout.write(text)
    return 0


def _estimate_on_spark(
    args: argparse.Namespace, *, alpha: float, seed: int, n_bootstrap: int, policy: VerdictPolicy
) -> pl.DataFrame:
    """``--engine spark``: the table stays on the cluster; only per-partition state reaches this process, so the
    HTML report has no weight histogram (it would need every row's weight here)."""
    from evaluators.evaluate import estimate
    from evaluators.spark.session import spark_session  # raises a ValueError naming --engine without pyspark

    if "://" not in args.table and not Path(args.table).exists():
        raise TableError(None, f"table file not found: {args.table}")
    session = spark_session(args.master or "local[*]")
    try:
        try:
            table = session.read.parquet(args.table)
        except Exception as exc:  # pyspark's AnalysisException and friends: an unreadable table is bad input
            raise TableError(None, f"cannot read table {args.table}: {exc}") from exc
        return estimate(table, args.estimators, ci=args.ci, alpha=alpha, seed=seed, n_bootstrap=n_bootstrap,
                        allow_support_violations=args.allow_support_violations, verdict_policy=policy)
    finally:
        session.stop()


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m evaluators.cli evaluate TABLE ...``) until the lead wires recsys-rl."""
    parser = argparse.ArgumentParser(prog="recsys-rl")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
