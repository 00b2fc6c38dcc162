"""Each estimator against its closed form, computed by hand on the 4-row table of conftest.

w = (2, 0.5, 1, 0), r = (1, 0, 1, 1), q̂ = (.5, .2, .6, .9), q̂π = (.4, .3, .5, .1).
"""

from __future__ import annotations

import polars as pl
import pytest

from evaluators import estimate
from evaluators.estimators import ClippedIPS, DROS, SwitchDR, parse_estimators


def _value(table: pl.DataFrame, spec: str) -> float:
    return estimate(table, spec)["value"][0]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ips", (2 * 1 + 0.5 * 0 + 1 * 1 + 0 * 1) / 4),                              # 0.75
        ("clipped_ips(max_weight=1.5)", (1.5 * 1 + 0 + 1 * 1 + 0) / 4),               # 0.625
        ("snips", (2 + 0 + 1 + 0) / (2 + 0.5 + 1 + 0)),                               # 3/3.5
        ("dm", (0.4 + 0.3 + 0.5 + 0.1) / 4),                                          # 0.325
        # q̂π + w (r − q̂): .4 + 2(.5) = 1.4; .3 + .5(−.2) = .2; .5 + 1(.4) = .9; .1 + 0 = .1
        ("dr", (1.4 + 0.2 + 0.9 + 0.1) / 4),
        # mean q̂π + Σ w (r − q̂) / Σ w = .325 + (1 − .1 + .4 + 0) / 3.5
        ("sndr", 0.325 + 1.3 / 3.5),
        # τ = 1: the row with w = 2 keeps only q̂π
        ("switch_dr(tau=1)", (0.4 + 0.2 + 0.9 + 0.1) / 4),
        # λ = 1: ŵ = w/(w² + 1) = (0.4, 0.4, 0.5, 0): .4+.2, .3−.08, .5+.2, .1
        ("dr_os(lambda=1)", (0.6 + 0.22 + 0.7 + 0.1) / 4),
    ],
)
def test_closed_forms(small_table: pl.DataFrame, spec: str, expected: float) -> None:
    assert _value(small_table, spec) == pytest.approx(expected, rel=1e-12)


def test_dr_os_limits(small_table: pl.DataFrame) -> None:
    """λ = 0 is DM; λ → inf is DR."""
    assert _value(small_table, "dr_os(lambda=0)") == pytest.approx(0.325)
    assert _value(small_table, "dr_os(lambda=inf)") == pytest.approx((1.4 + 0.2 + 0.9 + 0.1) / 4)


def test_diagnostics_by_hand(small_table: pl.DataFrame) -> None:
    out = estimate(small_table, "ips,clipped_ips(max_weight=1.5),switch_dr(tau=1)").rows_by_key("estimator", named=True)
    ips = out["ips"][0]
    assert ips["n"] == 4
    assert ips["ess"] == pytest.approx(3.5**2 / (4 + 0.25 + 1))
    assert ips["max_weight"] == 2.0
    assert ips["max_weight_share"] == pytest.approx(2 / 3.5)
    assert ips["clipped_share"] is None
    clipped = out["clipped_ips(max_weight=1.5)"][0]
    assert clipped["max_weight"] == 1.5 and clipped["clipped_share"] == pytest.approx(0.25)
    assert out["switch_dr(tau=1)"][0]["clipped_share"] == pytest.approx(0.25)


def test_multi_position_rows_average_over_rows() -> None:
    """Standard estimators average over rows (the contract), whatever the slate structure."""
    table = pl.DataFrame({
        "event_id": ["a", "a", "b"], "position": [0, 1, 0], "action": [1, 2, 3],
        "reward": [1.0, 2.0, 3.0], "pscore": [0.5, 0.5, 1.0], "target_pscore": [1.0, 0.5, 0.5],
    })
    assert _value(table, "ips") == pytest.approx((2 * 1 + 1 * 2 + 0.5 * 3) / 3)


def test_parse_estimators_names_and_labels() -> None:
    parsed = parse_estimators("ips,snips,clipped_ips(max_weight=10),switch_dr(tau=5),dr_os(lambda=10)")
    assert [e.label for e in parsed] == [
        "ips", "snips", "clipped_ips(max_weight=10)", "switch_dr(tau=5)", "dr_os(lambda=10)",
    ]
    assert parsed[2] == ClippedIPS(max_weight=10) and parsed[3] == SwitchDR(tau=5) and parsed[4] == DROS(lambda_=10)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ips,foo", "unknown estimator 'foo'"),
        ("clipped_ips(max_w=3)", "unknown parameter 'max_w'"),
        ("clipped_ips", "missing parameter 'max_weight'"),
        ("clipped_ips(max_weight=abc)", "parameter 'max_weight' must be a number"),
        ("clipped_ips(max_weight=0)", "parameter 'max_weight' must be > 0"),
        ("switch_dr(tau=-1)", "parameter 'tau' must be > 0"),
        ("dr_os(lambda=-2)", "parameter 'lambda' must be >= 0"),
        ("ips(tau=1)", "unknown parameter 'tau'"),
        ("", "no estimators"),
    ],
)
def test_bad_estimator_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_estimators(spec)
