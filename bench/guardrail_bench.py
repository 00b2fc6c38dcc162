"""The canary guardrail's detection delay and false-revert rate, against the fixed-horizon test (issue 9).

Reads top to bottom (CleanRL style). Bernoulli click rewards, each decision's arm by a coin of ``canary_share``,
the guardrail (recsys_rl.rollout.guardrail) checked after every decision - the anytime-valid use. Reported, all
measured in this run: the decisions from a bad canary's start to its revert (median and p80 over seeds) beside the
sample size a one-sided fixed-horizon two-proportion z-test needs for the same Δ at 50% and 80% power (which may
be looked at only once), and the false-revert rate on A/A streams beside alpha.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from dataclasses import dataclass

from scipy import stats

from recsys_rl.rollout.config import RolloutConfig
from recsys_rl.rollout.guardrail import Guardrail


@dataclass
class Args:
    canary_rate: float = 0.2  # the bad canary's click rate
    control_rate: float = 0.3  # control's (the baseline's) click rate: Δ = −0.1
    tolerance: float = 0.01
    alpha: float = 0.05
    min_decisions: int = 500
    shares: tuple[float, ...] = (0.5, 0.05)  # canary shares measured
    delay_seeds: int = 40  # bad-canary streams per share
    aa_seeds: int = 200  # A/A streams per share
    aa_decisions: int = 3000  # decisions per A/A stream
    max_decisions: int = 60_000  # a bad canary not reverted by then counts as never


def stream(seed: int, canary_rate: float, control_rate: float, share: float, args: Args, decisions: int) -> int | None:
    """The decision count at which the guardrail reverts (None: never within ``decisions``)."""
    rng = random.Random(seed)
    config = RolloutConfig(stage="canary", canary_share=share, tolerance=args.tolerance, alpha=args.alpha,
                           min_decisions=args.min_decisions)
    guardrail = Guardrail(config, (0.0, 1.0))
    for t in range(1, decisions + 1):
        if rng.random() < share:
            guardrail.observe("canary", float(rng.random() < canary_rate))
        else:
            guardrail.observe("control", float(rng.random() < control_rate))
        if t % 50 == 0 and guardrail.state().status == "failed":
            return t
    return t if guardrail.state().status == "failed" else None


def fixed_horizon(args: Args, share: float, power: float) -> int:
    """Decisions a one-sided two-proportion z-test of Δ ≥ −tolerance needs for ``power`` at this Δ and split."""
    z = stats.norm.ppf(1 - args.alpha) + stats.norm.ppf(power)
    effect = (args.control_rate - args.canary_rate) - args.tolerance
    variance = (args.canary_rate * (1 - args.canary_rate) / share
                + args.control_rate * (1 - args.control_rate) / (1 - share))
    return math.ceil(z * z * variance / effect**2)


def run(args: Args = Args()) -> list[dict[str, float]]:
    rows = []
    for share in args.shares:
        print(f"share {share}: bad-canary streams ...", file=sys.stderr, flush=True)
        delays = [stream(1000 + s, args.canary_rate, args.control_rate, share, args, args.max_decisions)
                  for s in range(args.delay_seeds)]
        caught = sorted(d for d in delays if d is not None)
        print(f"share {share}: A/A streams ...", file=sys.stderr, flush=True)
        false = sum(stream(5000 + s, args.control_rate, args.control_rate, share, args, args.aa_decisions) is not None
                    for s in range(args.aa_seeds))
        rows.append({
            "share": share, "median": statistics.median(caught) if caught else math.nan,
            "p80": caught[int(0.8 * (len(caught) - 1))] if caught else math.nan,
            "missed": len(delays) - len(caught), "fixed50": fixed_horizon(args, share, 0.5),
            "fixed80": fixed_horizon(args, share, 0.8), "false": false,
        })
    return rows


def markdown(rows: list[dict[str, float]], args: Args = Args()) -> str:
    lines = [
        f"Bad canary: click rate {args.canary_rate} vs control {args.control_rate} (Δ = "
        f"{args.canary_rate - args.control_rate:+.2f}), tolerance {args.tolerance}, alpha {args.alpha}, "
        f"min_decisions {args.min_decisions}; {args.delay_seeds} seeded streams per share, the guardrail read every "
        f"50 decisions. A/A: {args.aa_seeds} streams of {args.aa_decisions} decisions at equal rates "
        f"({args.control_rate}).",
        "",
        "| canary share | decisions to revert, median | p80 | not reverted | fixed-horizon z-test, 50% power | "
        "80% power | A/A false reverts |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['share']:g} | {r['median']:,.0f} | {r['p80']:,.0f} | {r['missed']} | "
                     f"{r['fixed50']:,} | {r['fixed80']:,} | {r['false']} of {args.aa_seeds} "
                     f"({r['false'] / args.aa_seeds:.1%}; alpha {args.alpha:.0%}) |")
    ratio = statistics.median(r["median"] / r["fixed80"] for r in rows)
    lines += ["", f"Checking after every decision costs **{ratio:.1f}×** the fixed-horizon sample at 80% power "
                  "(median over shares), the price of a test that may be read at any time without inflating alpha."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
