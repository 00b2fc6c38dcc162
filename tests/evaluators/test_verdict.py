"""Verdicts: each threshold flips exactly where documented; bad thresholds name the option; the demo's low-ESS
case (a target far from the logging policy) is flagged with its ESS reason."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import pytest

from evaluators import estimate
from evaluators.evaluate import RESULT_SCHEMA
from evaluators.intervals import Interval
from evaluators.verdict import (
    FINITE_SAMPLE_METHODS,
    REASON_CODES,
    VerdictPolicy,
    interval_of,
    split_reasons,
    verdict,
)

# Diagnostics that pass every default rule, with and without an interval.
CLEAN: dict[str, Any] = {"n": 50_000, "ess": 20_000.0, "max_weight": 3.0, "max_weight_share": 0.001,
                         "clipped_share": None, "support_violations": 0}


def _with(**changes: Any) -> dict[str, Any]:
    return {**CLEAN, **changes}


def _normal(low: float = 0.1, high: float = 0.2) -> Interval:
    return Interval(low, high, "normal", "CLT on per-event terms")


def test_clean_estimate_is_ok_with_and_without_interval() -> None:
    for interval in (None, _normal()):
        judged = verdict(CLEAN, interval)
        assert judged == ("ok", ())
        assert judged.ok and judged.reasons_text() == ""


# (diagnostics key, policy field, threshold, direction): "min" rules fail strictly below, "max" strictly above.
THRESHOLDS = [
    ("ess", "min_ess", 100.0, "min", None),
    ("max_weight_share", "max_weight_share", 0.1, "max", None),
    ("clipped_share", "max_clipped_share", 0.2, "max", None),
    ("ess", "min_ess_clt", 1000.0, "min", _normal()),
    ("max_weight_share", "max_weight_share_clt", 0.01, "max", _normal()),
]


@pytest.mark.parametrize(("key", "field", "threshold", "direction", "interval"), THRESHOLDS,
                         ids=[t[1] for t in THRESHOLDS])
def test_verdict_flips_exactly_at_each_threshold(key: str, field: str, threshold: float, direction: str,
                                                 interval: Interval | None) -> None:
    # Loosen the other rules so that only the one under test can fire.
    loose = {"min_ess": 1.0, "max_weight_share": 1.0, "max_clipped_share": 1.0, "min_ess_clt": 1.0,
             "max_weight_share_clt": 1.0}
    policy = VerdictPolicy(**{**loose, field: threshold})
    step = threshold * 1e-6
    below, at, above = threshold - step, threshold, threshold + step
    failing, passing = ((below,), (at, above)) if direction == "min" else ((above,), (below, at))
    for value in passing:
        assert verdict(_with(**{key: value}), interval, policy).verdict == "ok", (field, value)
    for value in failing:
        judged = verdict(_with(**{key: value}), interval, policy)
        assert judged.verdict == "unreliable", (field, value)
        assert len(judged.reasons) == 1
        assert judged.reasons[0].code == ("interval" if field.endswith("_clt") else key)


def test_reason_texts_are_short_and_stable() -> None:
    judged = verdict(_with(ess=7.0, max_weight_share=0.17, clipped_share=0.4, support_violations=3))
    assert judged.reasons_text() == ("ess: 7 < 100; max_weight_share: 0.17 > 0.1; support_violations: 3; "
                                     "clipped_share: 0.4 > 0.2")
    judged = verdict(_with(ess=120.0), _normal())
    assert [r.text for r in judged.reasons] == ["interval: normal needs ESS >= 1000 (CLT regime), got 120"]
    assert {r.code for r in verdict(_with(ess=7.0, max_weight_share=0.5), _normal()).reasons} <= set(REASON_CODES)


def test_rounding_never_prints_the_threshold_as_the_failing_value() -> None:
    (reason,) = verdict(_with(ess=99.99999)).reasons
    assert reason.text.startswith("ess: 99.99999") and reason.text.endswith("< 100")


def test_support_violations_fail_unless_allowed() -> None:
    assert verdict(_with(support_violations=1)).reasons_text() == "support_violations: 1"
    assert verdict(_with(support_violations=1), None, VerdictPolicy(allow_support_violations=True)).ok
    assert verdict(_with(support_violations=None)).reasons_text() == "support_violations: unknown"


@pytest.mark.parametrize("ess", [None, math.nan])
def test_undefined_ess_is_unreliable(ess: float | None) -> None:
    assert [r.code for r in verdict(_with(ess=ess)).reasons] == ["ess"]


def test_missing_optional_diagnostics_skip_their_rule() -> None:
    diagnostics = {"ess": 5000.0, "support_violations": 0}         # e.g. an older gate report
    assert verdict(diagnostics, _normal()).ok


@pytest.mark.parametrize("method", ["normal", "bootstrap", "bernstein", "some_new_method"])
def test_asymptotic_and_unknown_methods_get_the_clt_regime_rule(method: str) -> None:
    judged = verdict(_with(ess=500.0), Interval(0.1, 0.2, method))
    assert judged.reasons_text() == f"interval: {method} needs ESS >= 1000 (CLT regime), got 500"


def test_finite_sample_methods_only_need_min_ess() -> None:
    assert "betting" in FINITE_SAMPLE_METHODS
    betting = Interval(0.1, 0.2, "betting")
    assert verdict(_with(ess=150.0, max_weight_share=0.05), betting).ok
    assert [r.code for r in verdict(_with(ess=50.0), betting).reasons] == ["ess"]


def test_no_interval_gets_only_the_diagnostic_rules() -> None:
    assert verdict(_with(ess=150.0, max_weight_share=0.05)).ok              # below the CLT regime, but no interval


@pytest.mark.parametrize(("low", "high"), [(math.nan, math.nan), (-math.inf, math.inf), (0.1, math.inf)])
def test_a_non_finite_interval_is_unreliable(low: float, high: float) -> None:
    judged = verdict(CLEAN, Interval(low, high, "bernstein", "needs at least 2 events; 1 events"))
    assert judged.reasons_text() == "interval: bernstein gave no finite interval (needs at least 2 events, 1 events)"


def test_interval_of_a_result_row() -> None:
    assert interval_of({"ci_method": None}) is None
    interval = interval_of({"ci_method": "bernstein", "ci_low": None, "ci_high": 0.3, "ci_note": "x"})
    assert interval is not None and math.isnan(interval.low) and interval.high == 0.3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_ess": 0}, "parameter 'min_ess' must be >= 1, got 0"),
    ({"min_ess_clt": 0.5}, "parameter 'min_ess_clt' must be >= 1, got 0.5"),
    ({"max_weight_share": 0}, "parameter 'max_weight_share' must be in (0, 1], got 0"),
    ({"max_weight_share": 1.5}, "parameter 'max_weight_share' must be in (0, 1], got 1.5"),
    ({"max_clipped_share": -0.1}, "parameter 'max_clipped_share' must be in (0, 1], got -0.1"),
    ({"max_weight_share_clt": 2}, "parameter 'max_weight_share_clt' must be in (0, 1], got 2"),
    ({"min_ess": math.inf}, "parameter 'min_ess' must be a finite number, got inf"),
    ({"min_ess": "100"}, "parameter 'min_ess' must be a finite number, got '100'"),
    ({"max_weight_share": True}, "parameter 'max_weight_share' must be a finite number, got True"),
    ({"allow_support_violations": 1}, "parameter 'allow_support_violations' must be True or False, got 1"),
])
def test_bad_thresholds_name_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        VerdictPolicy(**kwargs)
    assert str(info.value) == message


def test_policy_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        VerdictPolicy(100)  # type: ignore[misc]
    assert VerdictPolicy(max_weight_share=1, min_ess=1).max_weight_share == 1   # the inclusive ends are allowed


# --- estimate() --------------------------------------------------------------------------------------------


def far_target_table(n: int = 2000, n_actions: int = 20, p_favourite: float = 0.99, seed: int = 0) -> pl.DataFrame:
    """Like the demo's ``uniform`` row: the logging policy almost always shows one item, the target is uniform.

    Weights: 0.05 / 0.99 on the ~99% favourite rows, 0.05 / (0.01 / 19) = 95 on the ~1% others, so ESS ≈ 22.
    """
    rng = np.random.default_rng(seed)
    other = (1 - p_favourite) / (n_actions - 1)
    action = np.where(rng.random(n) < p_favourite, 0, rng.integers(1, n_actions, n))
    pscore = np.where(action == 0, p_favourite, other)
    reward = (rng.random(n) < np.where(action == 0, 0.05, 0.3)).astype(float)
    return pl.DataFrame({"event_id": [f"e{i}" for i in range(n)], "position": 0, "action": action, "reward": reward,
                         "pscore": pscore, "target_pscore": np.full(n, 1 / n_actions)})


def test_low_ess_target_is_flagged_with_the_ess_reason() -> None:
    result = estimate(far_target_table(), "ips,snips", ci="normal")
    assert list(result.columns) == list(RESULT_SCHEMA) and result.schema["reasons"] == pl.String
    for row in result.iter_rows(named=True):
        assert row["ess"] < 30
        assert row["verdict"] == "unreliable"
        reasons = split_reasons(row["reasons"])
        assert reasons[0] == f"ess: {row['ess']:.4g} < 100"
        assert f"interval: normal needs ESS >= 1000 (CLT regime), got {row['ess']:.4g}" in reasons


def test_on_policy_estimate_is_ok_and_policy_is_configurable() -> None:
    table = far_target_table().with_columns(pl.col("pscore").alias("target_pscore"))   # target = logging: w = 1
    row = estimate(table, "ips", ci="normal").row(0, named=True)
    assert row["ess"] == pytest.approx(2000) and (row["verdict"], row["reasons"]) == ("ok", "")
    strict = estimate(table, "ips", ci="normal", verdict_policy=VerdictPolicy(min_ess=5000)).row(0, named=True)
    assert (strict["verdict"], strict["reasons"]) == ("unreliable", "ess: 2000 < 5000")


def test_clipping_most_rows_is_flagged() -> None:
    row = estimate(far_target_table(), "clipped_ips(max_weight=0.01)").row(0, named=True)
    assert row["clipped_share"] > 0.9 and "clipped_share: 1 > 0.2" in split_reasons(row["reasons"])


def test_estimate_rejects_a_verdict_policy_of_the_wrong_type() -> None:
    with pytest.raises(ValueError, match="parameter 'verdict_policy'"):
        estimate(far_target_table(n=50), "ips", verdict_policy={"min_ess": 10})  # type: ignore[arg-type]
