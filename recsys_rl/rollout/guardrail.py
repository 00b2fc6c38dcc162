"""The canary's guardrail: an anytime-valid comparison of canary and control rewards, plus the learned path's health.

Reward statistic. Each arm's per-decision rewards, rescaled to x = (r − lo)/(hi − lo) ∈ [0, 1] with the surface's
declared reward range, get a predictable-plug-in empirical-Bernstein confidence sequence (Waudby-Smith & Ramdas
2023, "Estimating means of bounded random variables by betting", JRSS-B, Thm 2; the empirical-Bernstein family of
Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences",
Ann. Stat.). After t observations of an arm, with δ = α/2 per one-sided bound:

    μ̂_i = (1/2 + Σ_{j≤i} x_j) / (i + 1)              σ̂²_i = (1/4 + Σ_{j≤i} (x_j − μ̂_j)²) / (i + 1)
    λ_i = min(1/2, sqrt(2 log(1/δ) / (σ̂²_{i−1} · s_i)))     s_i = max(i, h) · log(1 + max(i, h))   (predictable)
    v_i = 4 (x_i − μ̂_{i−1})²                        ψ_E(λ) = (−log(1 − λ) − λ) / 4
    center_t = Σ λ_i x_i / Σ λ_i                     margin_t = (log(1/δ) + Σ v_i ψ_E(λ_i)) / Σ λ_i
    L_t = max_{s≤t} (center_s − margin_s),  U_t = min_{s≤t} (center_s + margin_s)     (running intersection)

with h = ``min_decisions`` (the bets are tuned to be sharpest near h, WSR's fixed-n tuning held until h, then
their t·log t rate; any predictable λ keeps validity), so that P(∃t: μ > U_t) ≤ δ and P(∃t: μ < L_t) ≤ δ, where μ is the arm's mean (for drifting conditional means,
the λ-weighted average of them). The difference Δ = μ_canary − μ_control is then bounded at every moment by

    Δ ≤ (hi − lo) · (U_canary − L_control)        Δ ≥ (hi − lo) · (L_canary − U_control)

each with probability ≥ 1 − α over the whole stream (union bound over the two one-sided events). Checking after
every decision is therefore free: the guardrail FAILS, and the surface is reverted, when the upper bound on Δ falls
below −tolerance — a false revert (Δ ≥ −tolerance truly) happens with probability ≤ α however long it runs. The
two arms are compared as two samples, so the canary share may change (a ramp) without resetting anything, and a
canary user whose learned path fell back is still a canary decision (intent to treat: fallbacks are the canary's).

Health checks on canary decisions (only once ``min_health_decisions`` canary decisions were seen):
- fallback rate: FAILS when the same confidence sequence's lower bound on the fallback rate exceeds
  ``max_fallback_rate`` (anytime-valid at level α, so a rate near the limit does not trip it by chance);
- learned-path latency: FAILS when the median decision latency exceeds ``max_latency_p50_ms`` (an SLO, not a
  statistical risk; the median comes from a log-spaced histogram, within ±2.5%).

State is O(1): running sums per arm and a fixed histogram. The reward sequences are not mergeable (each bet λ_i
depends on the order); counts, means and the latency histogram are.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

from recsys_rl.rollout.config import RolloutConfig, Stage
from recsys_rl.rollout.store import GuardrailEvidence

# Largest bet: WSR 2023 truncate λ at 1/2 or 3/4; 1/2 keeps ψ_E small while little is known.
_MAX_BET = 0.5


class Arm(str, Enum):
    CANARY = "canary"
    CONTROL = "control"


class Status(str, Enum):
    COLLECTING = "collecting"  # fewer than min_decisions in an arm, nothing failed
    HOLDING = "holding"  # min_decisions in each arm, nothing failed: forward moves may go on
    FAILED = "failed"  # a check failed; sticky until a new guardrail (a person re-arms the canary)


class MeanConfidenceSequence:
    """Two one-sided empirical-Bernstein confidence sequences at level ``delta`` each on the mean of [0, 1] data.

    See the module docstring for the formula. O(1) state: six running sums and the two running bounds.
    """

    def __init__(self, delta: float, *, horizon: int = 1) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta: must be in (0, 1), got {delta}")
        if horizon < 1:
            raise ValueError(f"horizon: must be >= 1, got {horizon}")
        self.horizon = horizon
        self.log_inv_delta = math.log(1.0 / delta)
        self.count = 0
        self.sum_x = 0.0
        self._sum_sq_dev = 0.0  # Σ (x_i − μ̂_i)², for σ̂²
        self._sum_bet = 0.0  # Σ λ_i
        self._sum_bet_x = 0.0  # Σ λ_i x_i
        self._sum_penalty = 0.0  # Σ v_i ψ_E(λ_i)
        self.lower = 0.0
        self.upper = 1.0

    def observe(self, x: float) -> None:
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"observation: must be in [0, 1] (a rescaled reward), got {x}")
        t = self.count + 1
        mean_before = (0.5 + self.sum_x) / t  # μ̂_{t−1}: one pseudo-observation at 1/2
        variance_before = (0.25 + self._sum_sq_dev) / t  # σ̂²_{t−1}: one pseudo-observation of variance 1/4
        bet = min(_MAX_BET, math.sqrt(2.0 * self.log_inv_delta / (variance_before * self._spread(t))))
        self._sum_bet += bet
        self._sum_bet_x += bet * x
        self._sum_penalty += 4.0 * (x - mean_before) ** 2 * (-math.log1p(-bet) - bet) / 4.0
        self.count = t
        self.sum_x += x
        self._sum_sq_dev += (x - (0.5 + self.sum_x) / (t + 1)) ** 2
        center = self._sum_bet_x / self._sum_bet
        margin = (self.log_inv_delta + self._sum_penalty) / self._sum_bet
        self.lower = max(self.lower, center - margin)
        self.upper = min(self.upper, center + margin)

    def _spread(self, t: int) -> float:
        """t·log(1 + t) (WSR's rate), held at the horizon's value before it: bets tuned for ``horizon``."""
        h = self.horizon
        return h * math.log1p(h) if t <= h else t * math.log1p(t)

    @property
    def mean(self) -> float:
        return self.sum_x / self.count if self.count else math.nan


class LatencyHistogram:
    """Log-spaced latency bins (0.01 ms … ~100 s, ratio 1.05): O(1) memory, mergeable, median within ±2.5%."""

    _RATIO = 1.05
    _EDGES = tuple(0.01 * 1.05**k for k in range(331))

    def __init__(self) -> None:
        self.counts = [0] * (len(self._EDGES) + 1)
        self.count = 0

    @classmethod
    def bin_of(cls, latency_ms: float) -> int:
        return bisect.bisect_right(cls._EDGES, max(latency_ms, 0.0))

    def add(self, latency_ms: float) -> None:
        self.add_bin(self.bin_of(latency_ms))

    def add_bin(self, index: int, count: int = 1) -> None:
        self.counts[index] += count
        self.count += count

    def merge(self, other: LatencyHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count

    def sparse(self) -> dict[int, int]:
        """The non-empty bins (bin index -> count): what another process needs to merge this histogram."""
        return {index: n for index, n in enumerate(self.counts) if n}

    @classmethod
    def from_sparse(cls, bins: dict[int, int] | dict[str, int]) -> LatencyHistogram:
        """The inverse of ``sparse`` (JSON keys are strings); an index out of range raises ValueError."""
        histogram = cls()
        for index, n in bins.items():
            if not 0 <= int(index) < len(histogram.counts) or int(n) < 0:
                raise ValueError(f"latency_bins: bin {index!r} with count {n!r} is not a bin of this histogram")
            histogram.add_bin(int(index), int(n))
        return histogram

    def median(self) -> float:
        if not self.count:
            return math.nan
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if 2 * seen >= self.count:
                if index == 0:
                    return self._EDGES[0]
                return self._EDGES[index - 1] * math.sqrt(self._RATIO)  # the bin's geometric middle
        return self._EDGES[-1]


@dataclass(frozen=True)
class GuardrailSnapshot:
    """What the guardrail knows now (GetRollout's GuardrailState, the revert's audit evidence)."""

    status: str
    canary_decisions: int
    control_decisions: int
    canary_mean_reward: float
    control_mean_reward: float
    difference_low: float
    difference_high: float
    tolerance: float
    alpha: float
    canary_fallback_rate: float
    canary_latency_p50_ms: float
    canary_served: int  # canary decisions seen at serving time (fallback/latency checks), rewarded or not yet
    failed_checks: tuple[str, ...] = field(default=())

    @property
    def reason(self) -> str:
        return "guardrail failed: " + "; ".join(self.failed_checks) if self.failed_checks else ""

    def to_dict(self) -> dict[str, object]:
        return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                for key, value in asdict(self).items()} | {"failed_checks": list(self.failed_checks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> GuardrailSnapshot:
        """The inverse of ``to_dict`` (null → NaN); raises KeyError/TypeError/ValueError on a malformed dict."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            value = data[item.name]
            if item.name == "failed_checks":
                value = tuple(str(check) for check in value)  # type: ignore[attr-defined]
            elif item.name == "status":
                value = Status(str(value)).value
            elif item.name in ("canary_decisions", "control_decisions", "canary_served"):
                value = int(value)  # type: ignore[call-overload]
            else:
                value = math.nan if value is None else float(value)  # type: ignore[arg-type]
            values[item.name] = value
        return cls(**values)


Check = tuple[str, bool, str]  # (name, passed, detail), as in GuardrailEvidence


@dataclass(frozen=True)
class GuardrailShare:
    """What one process's guardrail publishes for the fleet view (``recsys_rl.rollout.fleet``): its snapshot and
    forward-move checks, plus what merges across processes - each arm's confidence-sequence bounds (reward units),
    the canary's fallback count and its latency histogram bins."""

    snapshot: GuardrailSnapshot
    checks: tuple[Check, ...]
    canary_bounds: tuple[float, float]
    control_bounds: tuple[float, float]
    canary_fallbacks: int
    latency_bins: Mapping[int, int]

    def to_dict(self) -> dict[str, object]:
        return {"snapshot": self.snapshot.to_dict(), "checks": [list(check) for check in self.checks],
                "canary_bounds": list(self.canary_bounds), "control_bounds": list(self.control_bounds),
                "canary_fallbacks": self.canary_fallbacks,
                "latency_bins": {str(k): v for k, v in sorted(self.latency_bins.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuardrailShare:
        """Raises KeyError/TypeError/ValueError on a malformed dict (the reader skips such a file)."""
        def bounds(value: Any) -> tuple[float, float]:
            low, high = (float(b) for b in value)
            return low, high

        bins = {int(k): int(v) for k, v in dict(data["latency_bins"]).items()}
        LatencyHistogram.from_sparse(bins)  # validates the indices
        return cls(GuardrailSnapshot.from_dict(data["snapshot"]),
                   tuple((str(n), bool(p), str(d)) for n, p, d in data["checks"]),
                   bounds(data["canary_bounds"]), bounds(data["control_bounds"]), int(data["canary_fallbacks"]),
                   bins)


class Guardrail:
    """One surface's canary guardrail (module docstring). Thread-safe: fed from gRPC and monitor threads."""

    def __init__(self, config: RolloutConfig, reward_range: tuple[float, float], *,
                 min_health_decisions: int = 100) -> None:
        low, high = (float(b) for b in reward_range)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"reward.range: the guardrail needs a finite range with low < high, got {reward_range!r}")
        if min_health_decisions < 1:
            raise ValueError(f"min_health_decisions: must be >= 1, got {min_health_decisions}")
        self.config = config
        self.low, self.high = low, high
        self.min_health_decisions = min_health_decisions
        self._lock = threading.Lock()
        delta = config.alpha / 2.0  # two one-sided events per bound on Δ: the union bound gives α
        # Bets tuned for min_decisions per arm: the bounds are tightest where a team reads them (any horizon is
        # valid; measured in docs/rollout.md, 300-1000 detect fastest, 1 (pure t·log t) ~1.5x slower).
        horizon = config.min_decisions
        self._rewards = {Arm.CANARY: MeanConfidenceSequence(delta, horizon=horizon),
                         Arm.CONTROL: MeanConfidenceSequence(delta, horizon=horizon)}
        self._fallbacks = MeanConfidenceSequence(config.alpha, horizon=horizon)  # lower bound only
        self._latency = LatencyHistogram()
        self._failed: tuple[str, ...] = ()

    def observe(self, arm: Arm | str, reward: float) -> None:
        """One decision's reward, after its attribution window closed; clipped to the declared range."""
        x = (min(max(float(reward), self.low), self.high) - self.low) / (self.high - self.low)
        with self._lock:
            self._rewards[Arm(arm)].observe(x)
            self._check()

    def observe_decision(self, arm: Arm | str, fell_back: bool, latency_ms: float) -> None:
        """One served decision: the canary's fallback and latency (control decisions do not use the model)."""
        if Arm(arm) is not Arm.CANARY:
            return
        with self._lock:
            self._fallbacks.observe(1.0 if fell_back else 0.0)
            self._latency.add(latency_ms)
            self._check()

    def _difference(self) -> tuple[float, float]:
        canary, control = self._rewards[Arm.CANARY], self._rewards[Arm.CONTROL]
        scale = self.high - self.low
        return scale * (canary.lower - control.upper), scale * (canary.upper - control.lower)

    def _check(self) -> None:
        if self._failed:
            return
        failed = []
        low, high = self._difference()
        if high < -self.config.tolerance:
            failed.append(f"reward: canary − control ≤ {high:.4f} < −tolerance {self.config.tolerance:g} "
                          f"(confidence {1 - self.config.alpha:g})")
        if self._fallbacks.count >= self.min_health_decisions:
            if self._fallbacks.lower > self.config.max_fallback_rate:
                failed.append(f"fallback_rate: ≥ {self._fallbacks.lower:.4f} > max_fallback_rate "
                              f"{self.config.max_fallback_rate:g} (rate {self._fallbacks.mean:.4f})")
            p50 = self._latency.median()
            if p50 > self.config.max_latency_p50_ms:
                failed.append(f"latency_p50: {p50:.2f} ms > max_latency_p50_ms {self.config.max_latency_p50_ms:g}")
        self._failed = tuple(failed)

    def state(self) -> GuardrailSnapshot:
        with self._lock:
            return self._state()

    def _state(self) -> GuardrailSnapshot:  # under the lock
        canary, control = self._rewards[Arm.CANARY], self._rewards[Arm.CONTROL]
        low, high = self._difference()
        if self._failed:
            status = Status.FAILED
        elif min(canary.count, control.count) >= self.config.min_decisions:
            status = Status.HOLDING
        else:
            status = Status.COLLECTING
        scale, shift = self.high - self.low, self.low
        return GuardrailSnapshot(
            status=status.value,
            canary_decisions=canary.count,
            control_decisions=control.count,
            canary_mean_reward=shift + scale * canary.mean,
            control_mean_reward=shift + scale * control.mean,
            difference_low=low,
            difference_high=high,
            tolerance=self.config.tolerance,
            alpha=self.config.alpha,
            canary_fallback_rate=self._fallbacks.mean,
            canary_latency_p50_ms=self._latency.median(),
            canary_served=self._fallbacks.count,
            failed_checks=self._failed,
        )

    def evidence(self, for_move: Stage | str = Stage.LIVE) -> GuardrailEvidence:
        """The checks a forward move out of (or within) the canary needs: a larger share, or live.

        Each arm has ``min_decisions`` rewarded decisions, and the guardrail has not failed (reward, fallback
        rate, latency). It does not demand proof that the canary is better: that would need far more traffic than
        a ramp step; the ramp's safety is that the guardrail keeps watching at every step.
        """
        Stage(for_move)  # a bad name raises ValueError naming the value
        snapshot = self.state()
        return GuardrailEvidence(checks=list(self._checks(snapshot)), estimates=evidence_estimates(snapshot))

    def _checks(self, snapshot: GuardrailSnapshot) -> tuple[Check, ...]:
        need = self.config.min_decisions
        failed = " ".join(snapshot.failed_checks)
        return (
            ("canary_decisions", snapshot.canary_decisions >= need, f"{snapshot.canary_decisions} of {need}"),
            ("control_decisions", snapshot.control_decisions >= need, f"{snapshot.control_decisions} of {need}"),
            ("reward", "reward:" not in failed,
             f"canary − control in [{snapshot.difference_low:.4f}, {snapshot.difference_high:.4f}], "
             f"tolerance {snapshot.tolerance:g}"),
            ("fallback_rate", "fallback_rate:" not in failed,
             f"{snapshot.canary_fallback_rate:.4f} (max {self.config.max_fallback_rate:g})"),
            ("latency_p50", "latency_p50:" not in failed,
             f"{snapshot.canary_latency_p50_ms:.2f} ms (max {self.config.max_latency_p50_ms:g})"),
        )

    def share(self) -> GuardrailShare:
        """This guardrail's part of the fleet view (``recsys_rl.rollout.fleet``)."""
        with self._lock:
            canary, control = self._rewards[Arm.CANARY], self._rewards[Arm.CONTROL]
            scale, shift = self.high - self.low, self.low
            canary_bounds = (shift + scale * canary.lower, shift + scale * canary.upper)
            control_bounds = (shift + scale * control.lower, shift + scale * control.upper)
            fallbacks = round(self._fallbacks.sum_x)
            bins = self._latency.sparse()
            snapshot = self._state()
        return GuardrailShare(snapshot, self._checks(snapshot), canary_bounds, control_bounds, fallbacks, bins)


def evidence_estimates(snapshot: GuardrailSnapshot) -> dict[str, object]:
    """The snapshot's numbers as a forward move's estimates (lists and unknown values left out)."""
    return {k: v for k, v in snapshot.to_dict().items() if not isinstance(v, list) and v is not None}


__all__ = ["Arm", "Check", "Guardrail", "GuardrailShare", "GuardrailSnapshot", "LatencyHistogram", "MeanConfidenceSequence",
           "Status", "evidence_estimates"]
