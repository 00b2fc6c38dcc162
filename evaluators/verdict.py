"""A verdict on every estimate: ``ok``, or ``unreliable`` with the reasons, from its diagnostics and interval.

An off-policy estimate can be precise-looking and wrong: with an effective sample size of 7 a normal interval
is computed on 7 "events" and can exclude the truth by a factor of 40. The verdict says when the logs cannot
answer the question, with thresholds that are documented parameters (:class:`VerdictPolicy`) and reasons
that are machine-stable codes plus a short human text::

    ess: 7 < 100
    max_weight_share: 0.17 > 0.1
    clipped_share: 0.4 > 0.2
    support_violations: 3
    interval: normal needs ESS >= 1000 (CLT regime), got 120

Every rule is "fails strictly beyond the threshold": ``ess == min_ess`` and ``max_weight_share ==
max_weight_share`` are ``ok``. ``estimate()`` attaches a verdict to each row, the reports show it, and the
cap gate (``recsys_rl.caps.gate``) takes its ``ess`` and ``support`` checks from the same function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from evaluators.intervals import Interval

OK = "ok"
UNRELIABLE = "unreliable"
VERDICTS = (OK, UNRELIABLE)
REASON_SEPARATOR = "; "

# Interval methods whose coverage holds at any sample size for bounded rewards (no CLT regime rule applies,
# only ``min_ess``). The interval helper adds ``betting`` to ``evaluators.intervals``; an ``auto`` interval
# reports the method it resolved to, so it is judged as that method.
FINITE_SAMPLE_METHODS: frozenset[str] = frozenset({"betting"})
# Methods that hold only asymptotically (or, for ``bernstein``, given the OBSERVED range of the per-event
# terms, which misses heavy weights the sample has not seen). Any method not in FINITE_SAMPLE_METHODS is
# treated like these: an unknown method is not trusted outside the CLT regime.
ASYMPTOTIC_METHODS: frozenset[str] = frozenset({"normal", "bootstrap", "bernstein"})

# The codes a reason can carry (the text before ": ").
REASON_CODES = ("ess", "max_weight_share", "clipped_share", "support_violations", "interval")


@dataclass(frozen=True, kw_only=True)
class VerdictPolicy:
    """Thresholds under which an estimate is ``ok``; every option is keyword-only and checked on creation.

    ``min_ess`` (default 100, >= 1): smallest effective sample size (Σw)²/Σw². Guards against an estimate
    resting on a handful of events: below ~100 effective events even the sign of a few-point difference
    in click rate is noise, whatever interval is drawn around it.

    ``max_weight_share`` (default 0.1, in (0, 1]): largest share of Σw one row may carry. Guards against a
    single lucky (or unlucky) event moving the estimate by a tenth of its value; ESS alone can miss a lone
    huge weight among many small ones.

    ``max_clipped_share`` (default 0.2, in (0, 1]): largest share of rows whose weight the estimator clipped
    or switched off (clipped IPS, switch DR). Beyond a fifth of the rows the estimate mostly reflects the
    clipping bias (or the reward model), not the logs.

    ``allow_support_violations`` (default False): rows where the target can act but the logging policy
    could not get weight 0, biasing the estimate by an unknown amount; any such row makes it unreliable
    unless this is True.

    ``min_ess_clt`` (default 1000, >= 1) and ``max_weight_share_clt`` (default 0.01, in (0, 1]): the regime
    in which ``normal``, percentile ``bootstrap`` and observed-range ``bernstein`` intervals are trusted. They
    rely on the sample showing the weight tail (CLT, resampling, observed range); with heavy importance
    weights they undercover badly at a few hundred effective events (the demo's ESS-7 interval excluded the
    truth by 40x). ESS >= 1000 already caps the largest share at sqrt(1/1000) ≈ 3%; 1% additionally refuses a
    lone dominant weight over many uniform ones. Methods in :data:`FINITE_SAMPLE_METHODS` skip this rule.
    """

    min_ess: float = 100.0
    max_weight_share: float = 0.1
    max_clipped_share: float = 0.2
    allow_support_violations: bool = False
    min_ess_clt: float = 1000.0
    max_weight_share_clt: float = 0.01

    def __post_init__(self) -> None:
        for option in fields(self):
            value = getattr(self, option.name)
            if option.name == "allow_support_violations":
                if not isinstance(value, bool):
                    raise ValueError(f"parameter '{option.name}' must be True or False, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"parameter '{option.name}' must be a finite number, got {value!r}")
            if option.name.startswith("min_ess") and value < 1:
                raise ValueError(f"parameter '{option.name}' must be >= 1, got {value:g}")
            if option.name.startswith("max_") and not 0 < value <= 1:
                raise ValueError(f"parameter '{option.name}' must be in (0, 1], got {value:g}")


DEFAULT_POLICY = VerdictPolicy()


@dataclass(frozen=True)
class Reason:
    """Why an estimate is unreliable: a stable ``code`` (one of :data:`REASON_CODES`) and a short ``text``."""

    code: str
    text: str

    def __str__(self) -> str:
        return self.text


class Verdict(NamedTuple):
    """``(verdict, reasons)``: ``ok`` with no reasons, or ``unreliable`` with at least one."""

    verdict: str
    reasons: tuple[Reason, ...]

    @property
    def ok(self) -> bool:
        return self.verdict == OK

    def reasons_text(self) -> str:
        """The reasons joined by "; " ("" when ok): the ``reasons`` column of ``estimate()``."""
        return REASON_SEPARATOR.join(r.text for r in self.reasons)


def _num(value: object) -> float | None:
    """A finite or infinite float, or None for missing/NaN/non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _show(value: float, bound: float) -> str:
    """Four significant digits, more when rounding would make the value print as its threshold."""
    text = f"{value:.4g}"
    return f"{value:.10g}" if value != bound and float(text) == bound else text


def interval_of(row: Mapping[str, Any]) -> Interval | None:
    """The interval of a result row (``ci_low``, ``ci_high``, ``ci_method``, ``ci_note``), None without a method.

    A missing bound (JSON null, as the gate report writes ±inf) becomes NaN: no finite interval.
    """
    method = row.get("ci_method")
    if not method:
        return None
    low, high = _num(row.get("ci_low")), _num(row.get("ci_high"))
    return Interval(math.nan if low is None else low, math.nan if high is None else high, str(method),
                    str(row.get("ci_note") or ""))


def verdict(diagnostics: Mapping[str, Any], interval: Interval | None = None,
            policy: VerdictPolicy | None = None) -> Verdict:
    """The verdict on one estimate from its ``diagnostics`` (a result row of ``estimate()`` or
    ``Diagnostics.as_dict()``) and its ``interval`` (None: no interval, only the diagnostic rules apply).

    Keys read: ``ess`` and ``support_violations`` (missing or NaN: unreliable, the logs' support is unknown),
    ``max_weight_share`` and ``clipped_share`` (missing or None: the rule does not apply, e.g. an estimator
    that does not clip).
    """
    policy = policy or DEFAULT_POLICY
    reasons: list[Reason] = []
    ess = _num(diagnostics.get("ess"))
    if ess is None:
        reasons.append(Reason("ess", "ess: undefined (no row has positive weight)"))
    elif ess < policy.min_ess:
        reasons.append(Reason("ess", f"ess: {_show(ess, policy.min_ess)} < {policy.min_ess:g}"))
    share = _num(diagnostics.get("max_weight_share"))
    if share is not None and share > policy.max_weight_share:
        reasons.append(Reason("max_weight_share",
                              f"max_weight_share: {_show(share, policy.max_weight_share)} > {policy.max_weight_share:g}"))
    violations = diagnostics.get("support_violations")
    if not isinstance(violations, int) or isinstance(violations, bool):
        reasons.append(Reason("support_violations", "support_violations: unknown"))
    elif violations > 0 and not policy.allow_support_violations:
        reasons.append(Reason("support_violations", f"support_violations: {violations}"))
    clipped = _num(diagnostics.get("clipped_share"))
    if clipped is not None and clipped > policy.max_clipped_share:
        reasons.append(Reason("clipped_share",
                              f"clipped_share: {_show(clipped, policy.max_clipped_share)} > {policy.max_clipped_share:g}"))
    if interval is not None:
        reasons.extend(_interval_reasons(interval, ess, share, policy))
    return Verdict(UNRELIABLE if reasons else OK, tuple(reasons))


def _interval_reasons(interval: Interval, ess: float | None, share: float | None,
                      policy: VerdictPolicy) -> list[Reason]:
    method = interval.method
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        why = f" ({interval.note})" if interval.note else ""
        return [Reason("interval", f"interval: {method} gave no finite interval{why}".replace(";", ","))]
    if method in FINITE_SAMPLE_METHODS:
        return []
    out = []
    if ess is not None and ess < policy.min_ess_clt:
        out.append(Reason("interval", f"interval: {method} needs ESS >= {policy.min_ess_clt:g} (CLT regime), "
                                      f"got {_show(ess, policy.min_ess_clt)}"))
    if share is not None and share > policy.max_weight_share_clt:
        out.append(Reason("interval", f"interval: {method} needs max_weight_share <= {policy.max_weight_share_clt:g}"
                                      f" (CLT regime), got {_show(share, policy.max_weight_share_clt)}"))
    return out


def split_reasons(text: str | None) -> list[str]:
    """The ``reasons`` column back into a list ("" or None: no reasons)."""
    return [part for part in (text or "").split(REASON_SEPARATOR) if part]
