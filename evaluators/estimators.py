"""Off-policy estimators on the bandit-feedback table, as sums of per-row terms.

Notation (one row i per logged decision and position, n rows): w_i = target_pscore_i / pscore_i,
r_i = reward_i, q̂_i = q_hat_i (model estimate for the logged item), q̂π_i = q_hat_target_i
(Σ_a π(a|x_i) q̂(x_i, a) for the row's slot).

Every estimator reduces the table to :class:`Statistics`: named per-row columns and a value of the form

    V = Σ_p (Σ_i num_p,i) / (Σ_i den_p,i)

e.g. IPS = Σ w r / Σ 1, SNIPS = Σ w r / Σ w, SNDR = Σ q̂π / Σ 1 + Σ w (r − q̂) / Σ w. Because V is a
smooth function of column sums, statistics of disjoint parts of a table merge by adding their sums,
the normal interval follows by the delta method and the Poisson bootstrap only needs the resampled
sums (see ``intervals.py``).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import polars as pl

from evaluators.betting import BettingTerms
from evaluators.table import PROPENSITY_PAIRS, RANGE_COLUMNS, TableError

ONE = "one"  # the column of ones: its sum is the number of rows


@dataclass(frozen=True)
class Statistics:
    """Per-row columns (each of shape (n,)) and the ratio parts that turn their sums into the value."""

    columns: Mapping[str, np.ndarray]
    parts: tuple[tuple[str, str], ...]

    def value(self, sums: Mapping[str, np.ndarray | float] | None = None) -> np.ndarray | float:
        """V = Σ_p sums[num_p] / sums[den_p]; ``sums`` may hold arrays (e.g. one entry per resample)."""
        if sums is None:
            sums = {k: float(np.sum(v)) for k, v in self.columns.items()}
        return value_from_sums(self.parts, sums)


def value_from_sums(
    parts: Sequence[tuple[str, str]], sums: Mapping[str, np.ndarray | float]
) -> np.ndarray | float:
    """Evaluate Σ_p sums[num_p] / sums[den_p]; a zero denominator gives NaN rather than an exception."""
    total: np.ndarray | float = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        for num, den in parts:
            total = total + np.divide(sums[num], sums[den])
    return total


class FeedbackData:
    """Numpy views of a validated table with memoised derived columns, shared by all estimators.

    Rows whose logging propensity is 0 or missing (support violations, allowed only on request) get
    weight 0: they drop out of the weighted terms, which biases the estimate; the count is reported.
    """

    def __init__(self, df: pl.DataFrame) -> None:
        self.df = df
        self.n = df.height
        self._cache: dict[str, np.ndarray] = {}

    def cached(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def column(self, name: str) -> np.ndarray:
        """The column as float64 (nulls → NaN); zero-copy when it already is a null-free float64."""
        return self.cached(f"col:{name}", lambda: self.df.get_column(name).cast(pl.Float64).to_numpy())

    def ones(self) -> np.ndarray:
        return self.cached(ONE, lambda: np.ones(self.n))

    def weight(self, logging_column: str = "pscore") -> np.ndarray:
        """target / logging propensity, 0 on support-violation rows."""

        def make() -> np.ndarray:
            p = self.column(logging_column)
            t = self.column(PROPENSITY_PAIRS[logging_column])
            return np.divide(t, p, out=np.zeros(self.n), where=p > 0)

        return self.cached(f"w:{logging_column}", make)

    def support_violations(self, logging_column: str = "pscore") -> int:
        def make() -> np.ndarray:
            p = self.column(logging_column)
            t = self.column(PROPENSITY_PAIRS[logging_column])
            return np.array([np.count_nonzero((t > 0) & ~(p > 0))])

        return int(self.cached(f"violations:{logging_column}", make)[0])

    def first_in_event(self) -> np.ndarray:
        """1.0 on the first row of each event: its sum is the number of slates."""
        return self.cached(
            "slates", lambda: self.df.get_column("event_id").is_first_distinct().cast(pl.Float64).to_numpy()
        )

    def over_event(self, key: str, expr: pl.Expr) -> np.ndarray:
        """Evaluate a per-event window expression (e.g. a sum over the slate's positions)."""
        return self.cached(key, lambda: self.df.select(expr.cast(pl.Float64)).to_series().to_numpy())


class Estimator(ABC):
    """An off-policy estimator: hyper-parameters are dataclass fields validated in ``__post_init__``."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    logging_column: ClassVar[str] = "pscore"

    @property
    def label(self) -> str:
        """The name with parameters, as ``parse_estimators`` accepts it: ``clipped_ips(max_weight=10)``."""
        params = [f"{_PARAM_ALIASES.get(f.name, f.name)}={getattr(self, f.name):g}" for f in fields(self)]  # type: ignore[arg-type]
        return f"{self.name}({', '.join(params)})" if params else self.name

    @abstractmethod
    def statistics(self, data: FeedbackData) -> Statistics:
        """Per-row columns and ratio parts of this estimator on ``data``."""

    def diagnostic_weights(self, data: FeedbackData) -> np.ndarray:
        """The importance weights this estimator applies (raw w unless it clips or shrinks them)."""
        return data.weight(self.logging_column)

    def clipped_share(self, data: FeedbackData) -> float | None:
        """Share of rows whose weight the estimator clipped or switched off (None if it never does)."""
        return None

    def betting_terms(self, data: FeedbackData) -> BettingTerms | None:
        """Non-negative terms for the betting interval (``evaluators.betting``), or None when the estimator
        has no such construction (its terms are not w·r with mean-one weights, e.g. DR-type corrections)."""
        return None


def _positive(owner: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"estimator '{owner}': parameter '{_PARAM_ALIASES.get(name, name)}' must be {bound}, got {value!r}")


def reward_range(data: FeedbackData) -> tuple[float, float]:
    """The declared reward range (``reward_min``/``reward_max``, validated against the rewards), else [0, 1].

    Raises TableError naming ``reward`` when rewards leave [0, 1] and no range is declared: the bounded-reward
    intervals cannot guess a range.
    """
    if all(c in data.df.columns for c in RANGE_COLUMNS):
        low, high = float(np.min(data.column(RANGE_COLUMNS[0]))), float(np.max(data.column(RANGE_COLUMNS[1])))
    else:
        low, high = 0.0, 1.0
        reward = data.column("reward")
        if reward.size and (reward.min() < low or reward.max() > high):
            raise TableError("reward", f"values outside [0, 1] (within [{reward.min():g}, {reward.max():g}]) and "
                                       "no reward_min/reward_max columns: the betting interval needs the range")
    if not high > low:
        raise TableError(RANGE_COLUMNS[1], f"the declared reward range [{low:g}, {high:g}] is empty")
    return low, high


def slot_betting_terms(
    data: FeedbackData, weights: np.ndarray, *, per_row: bool, joint: bool = False, estimand: str = ""
) -> BettingTerms | None:
    """Betting terms for V = E[Σ_k w_k r_k] over an event's rows k (``per_row``: that divided by the K rows).

    Each w_k (or the one ``joint`` weight shared by the rows of a slate) must have mean ≤ 1 under the
    logging policy given what precedes it; clipped weights qualify (the bound then covers the unclipped V).
    With r̃ = (r − a)/(b − a) and K_max the largest event, X = Σ_k w_k r̃_k / K_max and
    Y = (Σ_k w_k (1 − r̃_k) + K_max − K) / K_max (joint: Y = w (K_max − Σ_k r̃_k) / K_max), so that
    E X ≤ θ, E Y ≤ 1 − θ and V = a·K_max + (b − a)·K_max·θ (per row: a + (b − a)·θ). Events of different
    sizes are supported only when that offset does not need E K: slates with a = 0.
    """
    low, high = reward_range(data)
    def event_sizes() -> np.ndarray:
        # A window over 1M string ids peaks at ~230 MB; the usual single-row events need no window at all.
        if data.df.get_column("event_id").n_unique() == data.n:
            return np.ones(data.n)
        return data.df.select(pl.len().over("event_id").cast(pl.Float64)).to_series().to_numpy()

    size = data.cached("event_size", event_sizes)
    k_max = float(size.max())
    if size.min() != k_max and (per_row or low != 0):
        return None
    r01 = (data.column("reward") - low) / (high - low)
    gain = weights * r01 / k_max
    complement = weights * (k_max / size - r01) / k_max if joint else (weights * (1 - r01) + (k_max - size) / size) / k_max
    what = "per-row mean of" if per_row else "per-slate"
    scale = (high - low) * (1.0 if per_row else k_max)
    offset = low * (1.0 if per_row else k_max)
    assumption = (f"{what} Σ w·r with rewards in [{low:g}, {high:g}] and mean-one weights (exact propensities), "
                  "i.i.d. events" + (f"; bounds {estimand}" if estimand else ""))
    return BettingTerms(gain, complement, offset, scale, assumption)


def _wr(data: FeedbackData) -> np.ndarray:
    return data.cached("w*r", lambda: data.weight() * data.column("reward"))


def _residual(data: FeedbackData) -> np.ndarray:
    return data.cached("r-q_hat", lambda: data.column("reward") - data.column("q_hat"))


@dataclass(frozen=True)
class IPS(Estimator):
    """Inverse propensity scoring: V = (1/n) Σ_i w_i r_i. Unbiased when pscore > 0 wherever π > 0."""

    name: ClassVar[str] = "ips"

    def statistics(self, data: FeedbackData) -> Statistics:
        return Statistics({"w*r": _wr(data), ONE: data.ones()}, (("w*r", ONE),))

    def betting_terms(self, data: FeedbackData) -> BettingTerms | None:
        return slot_betting_terms(data, data.weight(), per_row=True)


@dataclass(frozen=True)
class ClippedIPS(Estimator):
    """Clipped IPS: V = (1/n) Σ_i min(w_i, M) r_i with M = ``max_weight`` > 0 (biased down for r ≥ 0)."""

    max_weight: float
    name: ClassVar[str] = "clipped_ips"

    def __post_init__(self) -> None:
        _positive(self.name, "max_weight", self.max_weight)

    def diagnostic_weights(self, data: FeedbackData) -> np.ndarray:
        return data.cached(f"min(w,{self.max_weight!r})", lambda: np.minimum(data.weight(), self.max_weight))

    def statistics(self, data: FeedbackData) -> Statistics:
        key = f"min(w,{self.max_weight!r})*r"
        terms = data.cached(key, lambda: self.diagnostic_weights(data) * data.column("reward"))
        return Statistics({key: terms, ONE: data.ones()}, ((key, ONE),))

    def clipped_share(self, data: FeedbackData) -> float | None:
        return float(np.count_nonzero(data.weight() > self.max_weight)) / data.n

    def betting_terms(self, data: FeedbackData) -> BettingTerms | None:
        """min(w, M) ≤ w keeps E X ≤ θ and E Y ≤ 1 − θ: the interval covers the unclipped value V
        (the clipped point estimate, biased down, may sit near or below its lower end)."""
        terms = slot_betting_terms(data, self.diagnostic_weights(data), per_row=True)
        if terms is None:
            return None
        return BettingTerms(terms.gain, terms.complement, terms.offset, terms.scale,
                            f"{terms.assumption}; weights clipped at {self.max_weight:g}, bounds the unclipped value")


@dataclass(frozen=True)
class SNIPS(Estimator):
    """Self-normalised IPS: V = Σ_i w_i r_i / Σ_i w_i (consistent, bounded by the reward range)."""

    name: ClassVar[str] = "snips"

    def statistics(self, data: FeedbackData) -> Statistics:
        return Statistics({"w*r": _wr(data), "w": data.weight()}, (("w*r", "w"),))

    def betting_terms(self, data: FeedbackData) -> BettingTerms | None:
        """SNIPS estimates the same V as IPS, so the IPS betting interval on V applies (it does not use the
        self-normalisation; the SNIPS point estimate may fall outside it)."""
        terms = slot_betting_terms(data, data.weight(), per_row=True)
        if terms is None:
            return None
        return BettingTerms(terms.gain, terms.complement, terms.offset, terms.scale,
                            f"{terms.assumption}; interval on V from the IPS terms")


@dataclass(frozen=True)
class DM(Estimator):
    """Direct method: V = (1/n) Σ_i q̂π_i. No weights; biased by the reward model's error.

    Its diagnostics still describe the raw weights w (the overlap between the policies).
    """

    name: ClassVar[str] = "dm"
    needs: ClassVar[frozenset[str]] = frozenset({"q_hat_target"})

    def statistics(self, data: FeedbackData) -> Statistics:
        return Statistics({"q_hat_target": data.column("q_hat_target"), ONE: data.ones()}, (("q_hat_target", ONE),))


@dataclass(frozen=True)
class DR(Estimator):
    """Doubly robust: V = (1/n) Σ_i [q̂π_i + w_i (r_i − q̂_i)]; unbiased if either w or q̂ is right."""

    name: ClassVar[str] = "dr"
    needs: ClassVar[frozenset[str]] = frozenset({"q_hat", "q_hat_target"})

    def statistics(self, data: FeedbackData) -> Statistics:
        terms = data.cached("dr", lambda: data.column("q_hat_target") + data.weight() * _residual(data))
        return Statistics({"dr": terms, ONE: data.ones()}, (("dr", ONE),))


@dataclass(frozen=True)
class SNDR(Estimator):
    """Self-normalised DR: V = (1/n) Σ_i q̂π_i + Σ_i w_i (r_i − q̂_i) / Σ_i w_i."""

    name: ClassVar[str] = "sndr"
    needs: ClassVar[frozenset[str]] = frozenset({"q_hat", "q_hat_target"})

    def statistics(self, data: FeedbackData) -> Statistics:
        correction = data.cached("w*(r-q_hat)", lambda: data.weight() * _residual(data))
        return Statistics(
            {"q_hat_target": data.column("q_hat_target"), ONE: data.ones(), "w*(r-q_hat)": correction,
             "w": data.weight()},
            (("q_hat_target", ONE), ("w*(r-q_hat)", "w")),
        )


@dataclass(frozen=True)
class SwitchDR(Estimator):
    """Switch DR (Wang et al. 2017): V = (1/n) Σ_i [q̂π_i + 1{w_i ≤ τ} w_i (r_i − q̂_i)], τ = ``tau`` > 0.

    Rows with w > τ fall back to the model alone; τ = inf is DR.
    """

    tau: float
    name: ClassVar[str] = "switch_dr"
    needs: ClassVar[frozenset[str]] = frozenset({"q_hat", "q_hat_target"})

    def __post_init__(self) -> None:
        _positive(self.name, "tau", self.tau)

    def diagnostic_weights(self, data: FeedbackData) -> np.ndarray:
        return data.cached(f"switch(w,{self.tau!r})", lambda: np.where(data.weight() <= self.tau, data.weight(), 0.0))

    def statistics(self, data: FeedbackData) -> Statistics:
        key = f"switch_dr({self.tau!r})"
        terms = data.cached(
            key, lambda: data.column("q_hat_target") + self.diagnostic_weights(data) * _residual(data)
        )
        return Statistics({key: terms, ONE: data.ones()}, ((key, ONE),))

    def clipped_share(self, data: FeedbackData) -> float | None:
        return float(np.count_nonzero(data.weight() > self.tau)) / data.n


@dataclass(frozen=True)
class DROS(Estimator):
    """DR with optimistic shrinkage (Su et al. 2020): V = (1/n) Σ_i [q̂π_i + ŵ_i (r_i − q̂_i)],
    ŵ_i = λ w_i / (w_i² + λ), λ = ``lambda_`` ≥ 0 (λ = 0 is DM, λ → inf is DR)."""

    lambda_: float
    name: ClassVar[str] = "dr_os"
    needs: ClassVar[frozenset[str]] = frozenset({"q_hat", "q_hat_target"})

    def __post_init__(self) -> None:
        _positive(self.name, "lambda_", self.lambda_, allow_zero=True)

    def diagnostic_weights(self, data: FeedbackData) -> np.ndarray:
        def make() -> np.ndarray:
            w = data.weight()
            if math.isinf(self.lambda_):
                return w
            with np.errstate(invalid="ignore"):
                shrunk = self.lambda_ * w / (w * w + self.lambda_)
            return np.nan_to_num(shrunk, nan=0.0)  # λ = 0 and w = 0 gives 0/0: no correction

        return data.cached(f"os(w,{self.lambda_!r})", make)

    def statistics(self, data: FeedbackData) -> Statistics:
        key = f"dr_os({self.lambda_!r})"
        terms = data.cached(
            key, lambda: data.column("q_hat_target") + self.diagnostic_weights(data) * _residual(data)
        )
        return Statistics({key: terms, ONE: data.ones()}, ((key, ONE),))


# The user-facing spelling of a field when it differs from the Python name (lambda is a keyword).
_PARAM_ALIASES: dict[str, str] = {"lambda_": "lambda"}


def registry() -> dict[str, type[Estimator]]:
    """Every estimator by name: standard, slate and embedding (MIPS)."""
    from evaluators import embeddings, slate  # both import this module, so import them lazily

    classes: list[type[Estimator]] = [IPS, ClippedIPS, SNIPS, DM, DR, SNDR, SwitchDR, DROS, *slate.SLATE_ESTIMATORS,
                                      *embeddings.EMBEDDING_ESTIMATORS]
    return {cls.name: cls for cls in classes}


_SPEC = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def _split_top_level(spec: str) -> list[str]:
    """Split on commas outside parentheses: ``ips,switch_dr(tau=5)`` → two items."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(spec):  # a loop over the characters of a short spec string, not over rows
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            items.append(spec[start:i])
            start = i + 1
    items.append(spec[start:])
    return [item.strip() for item in items if item.strip()]


def parse_estimator(spec: str) -> Estimator:
    """Parse one ``name`` or ``name(param=value, ...)``; ValueError names the estimator or parameter."""
    match = _SPEC.match(spec)
    if not match:
        raise ValueError(f"cannot parse estimator spec '{spec}' (expected name or name(param=value))")
    name, arg_text = match.group(1), match.group(2)
    known = registry()
    if name not in known:
        raise ValueError(f"unknown estimator '{name}' (known: {', '.join(sorted(known))})")
    cls = known[name]
    by_public = {_PARAM_ALIASES.get(f.name, f.name): f.name for f in fields(cls)}  # type: ignore[arg-type]
    by_public.update({f.name: f.name for f in fields(cls)})  # type: ignore[arg-type]
    kwargs: dict[str, float] = {}
    for item in _split_top_level(arg_text or ""):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ValueError(f"estimator '{name}': expected param=value, got '{item}'")
        if key not in by_public:
            expected = ", ".join(_PARAM_ALIASES.get(f.name, f.name) for f in fields(cls)) or "none"  # type: ignore[arg-type]
            raise ValueError(f"estimator '{name}': unknown parameter '{key}' (expected: {expected})")
        try:
            kwargs[by_public[key]] = float(raw)
        except ValueError:
            raise ValueError(f"estimator '{name}': parameter '{key}' must be a number, got '{raw}'") from None
    missing = [_PARAM_ALIASES.get(f.name, f.name) for f in fields(cls) if f.name not in kwargs]  # type: ignore[arg-type]
    if missing:
        raise ValueError(f"estimator '{name}': missing parameter '{missing[0]}'")
    return cls(**kwargs)


def parse_estimators(spec: str | Sequence[str | Estimator]) -> list[Estimator]:
    """Parse ``"ips,snips,clipped_ips(max_weight=10),switch_dr(tau=5),dr_os(lambda=10)"`` (or a list)."""
    items: Sequence[str | Estimator] = _split_top_level(spec) if isinstance(spec, str) else spec
    estimators = [item if isinstance(item, Estimator) else parse_estimator(item) for item in items]
    if not estimators:
        raise ValueError("no estimators given")
    return estimators


def check_weights_finite(data: FeedbackData, estimator: Estimator) -> None:
    """Guard against inf/NaN weights (only possible on tables that skipped validation)."""
    if not np.isfinite(estimator.diagnostic_weights(data)).all():
        raise TableError(estimator.logging_column, f"non-finite importance weights for '{estimator.label}'")
