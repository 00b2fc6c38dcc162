"""Slate estimators on two hand-made slates (slate B's rows are stored out of position order)."""

from __future__ import annotations

import polars as pl
import pytest

from evaluators import TableError, estimate

SLATES = pl.DataFrame({
    "event_id": ["A", "A", "B", "B"],
    "position": [0, 1, 1, 0],
    "action": [10, 11, 12, 13],
    "reward": [1.0, 0.0, 1.0, 0.0],
    "pscore": [0.5, 0.4, 0.25, 0.5],
    "target_pscore": [0.25, 0.8, 0.75, 0.5],
    "slate_pscore": [0.1, 0.1, 0.2, 0.2],             # joint weight: A 2, B 0.5
    "slate_target_pscore": [0.2, 0.2, 0.1, 0.1],
    "marginal_pscore": [0.5, 0.4, 0.25, 0.5],         # marginal weights: A (0.5, 2), B (pos0 1, pos1 3)
    "marginal_target_pscore": [0.25, 0.8, 0.75, 0.5],
    "cascade_pscore": [0.5, 0.1, 0.1, 0.5],           # cascade weights: A (0.5, 2), B (pos0 1, pos1 0.5)
    "cascade_target_pscore": [0.25, 0.2, 0.05, 0.5],
    "q_hat": [0.3, 0.2, 0.6, 0.1],
    "q_hat_target": [0.4, 0.1, 0.5, 0.2],
})


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("standard_ips", (2 * (1 + 0) + 0.5 * (0 + 1)) / 2),
        ("independent_ips", ((0.5 * 1 + 2 * 0) + (1 * 0 + 3 * 1)) / 2),
        ("rips", ((0.5 * 1 + 2 * 0) + (1 * 0 + 0.5 * 1)) / 2),
        # (Σ_k w_k − (K − 1)) · slate reward: A (0.5 + 2 − 1)·1, B (1 + 3 − 1)·1
        ("pseudo_inverse", (1.5 * 1 + 3 * 1) / 2),
        # A: 0.5(1 − .3) + 1·.4 = .75 and 2(0 − .2) + 0.5·.1 = −.35;  B: 1(0 − .1) + 1·.2 = .1 and 0.5(1 − .6) + 1·.5 = .7
        ("cascade_dr", ((0.75 - 0.35) + (0.1 + 0.7)) / 2),
    ],
)
def test_slate_closed_forms(name: str, expected: float) -> None:
    assert estimate(SLATES, name)["value"][0] == pytest.approx(expected, rel=1e-12)


def test_slate_intervals_treat_slates_as_units() -> None:
    out = estimate(SLATES, "standard_ips", ci="normal").row(0, named=True)
    # Two slates with values 2 and 0.5: se = sd/√2 with sd = |2 − 0.5|/√2.
    se = (1.5 / 2**0.5) / 2**0.5
    assert out["ci_high"] - out["value"] == pytest.approx(1.959963984540054 * se, rel=1e-9)
    assert "2 events" in out["ci_note"]


def test_slate_columns_are_validated() -> None:
    with pytest.raises(TableError, match="column 'cascade_pscore': missing column"):
        estimate(SLATES.drop("cascade_pscore"), "rips")
    with pytest.raises(TableError, match="column 'slate_pscore'.*> 1"):
        estimate(SLATES.with_columns(pl.lit(1.5).alias("slate_pscore")), "standard_ips")
