"""MIPS, SNMIPS and MIPS-DR against closed forms on a hand-made table, their diagnostics, intervals and bad input.

Four rows: w_e = embedding_target_pscore / embedding_pscore = (1.5, 0.5, 1, 0), r = (1, 0, 1, 1),
q̂ = (.5, .2, .6, .9), q̂π = (.4, .3, .5, .1) (the conftest table plus the embedding columns).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from evaluators import TableError, add_embedding_propensities, estimate


@pytest.fixture
def embedding_table(small_table: pl.DataFrame) -> pl.DataFrame:
    # pscore = (.25, .5, .5, .2), target_pscore = (.5, .25, .5, 0): each marginal is at least the item's own.
    return small_table.with_columns(
        pl.Series("embedding_pscore", [0.4, 0.6, 0.5, 0.5]),
        pl.Series("embedding_target_pscore", [0.6, 0.3, 0.5, 0.0]),
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("mips", (1.5 * 1 + 0.5 * 0 + 1 * 1 + 0 * 1) / 4),                       # 0.625
        ("snmips", (1.5 + 0 + 1 + 0) / (1.5 + 0.5 + 1 + 0)),                     # 2.5 / 3
        # q̂π + w_e (r − q̂): .4 + 1.5(.5) = 1.15; .3 + .5(−.2) = .2; .5 + 1(.4) = .9; .1 + 0 = .1
        ("mips_dr", (1.15 + 0.2 + 0.9 + 0.1) / 4),
    ],
)
def test_closed_forms(embedding_table: pl.DataFrame, spec: str, expected: float) -> None:
    assert estimate(embedding_table, spec)["value"][0] == pytest.approx(expected, rel=1e-12)


def test_diagnostics_describe_the_marginal_weights(embedding_table: pl.DataFrame) -> None:
    out = estimate(embedding_table, "ips,mips,snmips").rows_by_key("estimator", named=True)
    mips = out["mips"][0]
    assert mips["n"] == 4
    assert mips["ess"] == pytest.approx(3.0**2 / (2.25 + 0.25 + 1))
    assert mips["max_weight"] == pytest.approx(1.5) and mips["max_weight_share"] == pytest.approx(0.5)
    assert out["snmips"][0]["ess"] == mips["ess"]
    assert out["ips"][0]["max_weight"] == 2.0  # the action weights are untouched


@pytest.mark.parametrize("ci", ["normal", "bootstrap", "bernstein", "betting"])
def test_intervals_cover_the_estimate(embedding_table: pl.DataFrame, ci: str) -> None:
    table = pl.concat([embedding_table] * 25).with_columns(pl.int_range(pl.len()).cast(pl.String).alias("event_id"))
    row = estimate(table, "mips", ci=ci, n_bootstrap=200).row(0, named=True)
    assert row["ci_method"] == ci
    assert row["ci_low"] <= row["value"] <= row["ci_high"]


def test_embedding_support_violations_are_an_error_unless_allowed(embedding_table: pl.DataFrame) -> None:
    table = embedding_table.with_columns(
        pl.Series("embedding_pscore", [0.4, 0.6, 0.5, None], dtype=pl.Float64),
        pl.Series("embedding_target_pscore", [0.6, 0.3, 0.5, 0.2]),
    )
    with pytest.raises(TableError, match="column 'embedding_pscore': 1 support violation"):
        estimate(table, "mips")
    row = estimate(table, "mips", allow_support_violations=True).row(0, named=True)
    assert row["support_violations"] == 1 and row["value"] == pytest.approx(2.5 / 4)


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("embedding_pscore", [0.4, 0.6, 0.5, 1.5], "column 'embedding_pscore': 1 value\\(s\\) > 1"),
        ("embedding_pscore", [0.2, 0.6, 0.5, 0.5], "column 'embedding_pscore': 1 value\\(s\\) below pscore"),
        ("embedding_target_pscore", [0.4, 0.3, 0.5, 0.0], "column 'embedding_target_pscore': 1 value\\(s\\) below"),
        ("embedding_target_pscore", [0.6, 0.3, float("nan"), 0.0], "column 'embedding_target_pscore': 1 null"),
    ],
)
def test_bad_embedding_columns_name_the_column(
    embedding_table: pl.DataFrame, column: str, values: list[float], message: str
) -> None:
    with pytest.raises(TableError, match=message):
        estimate(embedding_table.with_columns(pl.Series(column, values)), "mips")


def test_missing_embedding_column_is_named(small_table: pl.DataFrame) -> None:
    with pytest.raises(TableError, match="column 'embedding_pscore': missing column"):
        estimate(small_table, "snmips")


def test_add_embedding_propensities_sums_siblings() -> None:
    # Actions 0, 2 share embedding 0; actions 1, 3 share embedding 1.
    mu = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    pi = np.array([[0.7, 0.1, 0.1, 0.1], [0.0, 0.5, 0.0, 0.5]])
    table = pl.DataFrame({"event_id": ["a", "b"], "position": [0, 0], "action": [2, 3], "reward": [1.0, 0.0],
                          "pscore": [0.3, 0.25], "target_pscore": [0.1, 0.5]})
    out = add_embedding_propensities(table, mu, pi, np.array([7, 40, 7, 40]))  # sparse ids
    assert out["action_embedding"].to_list() == [7, 40]
    assert out["embedding_pscore"].to_list() == pytest.approx([0.4, 0.5])
    assert out["embedding_target_pscore"].to_list() == pytest.approx([0.8, 1.0])
    with pytest.raises(TableError, match="column 'pscore'"):
        add_embedding_propensities(table.with_columns(pl.Series("pscore", [0.2, 0.25])), mu, pi, np.array([0, 1, 0, 1]))
    with pytest.raises(TableError, match="column 'action_embedding': need one integer embedding per action \\(4\\)"):
        add_embedding_propensities(table, mu, pi, np.array([0, 1, 0]))
