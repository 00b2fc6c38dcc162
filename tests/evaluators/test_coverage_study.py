"""The coverage study's problems are exact, and its fast version shows where the normal interval holds and fails.

Tolerances: a coverage c estimated from R runs has binomial SE sqrt(c (1 − c) / R) (≈ 1.5 points at c = 0.95,
R = 200). "Holds" means coverage ≥ nominal − 2 points − 3 SE; "undercovers clearly" means coverage + 3 SE is
still below nominal − 2 points. Seeds are fixed, so each assertion either always passes or always fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from evaluators import estimate
from evaluators.intervals import CI_METHODS
from evaluators.synthetic import ContextualProblem, SlateProblem
from evaluators.table import validate_table
from tests.evaluators.coverage_study import (
    CELLS,
    EASY_CELL,
    FAST_CELLS,
    FAST_RUNS,
    HARD_CELL,
    NOMINAL,
    TOLERANCE,
    main,
    run_study,
    split_methods,
)

FLOOR = NOMINAL - TOLERANCE


# --- the synthetic problems -----------------------------------------------------------------------------------

def test_contextual_truth_is_the_exact_finite_sum() -> None:
    problem = ContextualProblem(n_events=10, n_actions=4, n_contexts=3)
    pi, q = problem.target_policy, problem._world.q
    manual = sum(pi[x] @ q[x] for x in range(3)) / 3
    assert problem.truth == pytest.approx(manual, rel=1e-12)
    uniform = ContextualProblem(n_events=10, n_actions=4, n_contexts=3, target="uniform")
    assert uniform.truth == pytest.approx(q.mean(), rel=1e-12)


@pytest.mark.parametrize("problem", [
    ContextualProblem(n_events=200_000, n_actions=5),
    ContextualProblem(n_events=200_000, n_actions=10, logging_temperature=0.7, target_temperature=0.4),
], ids=["mild", "sharper"])
def test_ips_on_a_large_contextual_draw_recovers_the_truth(problem: ContextualProblem) -> None:
    """IPS is unbiased, so on one large draw it lands within 4 SE of the truth only if propensities are exact."""
    table = problem.draw(seed=1)
    terms = (table["target_pscore"] / table["pscore"] * table["reward"]).to_numpy()
    assert abs(terms.mean() - problem.truth) < 4 * terms.std() / np.sqrt(terms.size)


def test_slate_truth_matches_the_on_policy_click_rate() -> None:
    """Logging = target (same scores, same temperature): the mean slate reward estimates the enumerated truth."""
    problem = SlateProblem(n_events=200_000, n_items=5, slate_length=3, score_alignment=1.0)
    table = problem.draw(seed=2)
    assert np.allclose(table["pscore"], table["target_pscore"])
    per_slate = table.group_by("event_id").agg(pl.col("reward").sum())["reward"].to_numpy()
    assert per_slate.max() <= 1.0  # cascade: at most one click per slate
    assert abs(per_slate.mean() - problem.truth) < 4 * per_slate.std() / np.sqrt(per_slate.size)


def test_slate_ips_and_rips_recover_the_truth_off_policy() -> None:
    problem = SlateProblem(n_events=200_000, n_items=5, slate_length=2, target_temperature=0.6)
    table = problem.draw(seed=3)
    result = estimate(table, "standard_ips,rips", ci="normal")
    for row in result.iter_rows(named=True):
        half = (row["ci_high"] - row["ci_low"]) / 2           # 1.96 SE; 4 SE ≈ 2 half-widths
        assert abs(row["value"] - problem.truth) < 2.05 * half, row["estimator"]


def test_slate_table_is_a_valid_feedback_table_with_consistent_propensities() -> None:
    table = SlateProblem(n_events=500, n_items=6, slate_length=3).draw(seed=4)
    check = validate_table(table, need={"slate_pscore", "cascade_pscore"}, allow_support_violations=False)
    assert check.n_rows == 1500
    by_slate = table.group_by("event_id").agg(
        pl.col("pscore").product().alias("joint"), pl.col("slate_pscore").first(), pl.col("action").n_unique(),
        pl.col("cascade_pscore").sort_by("position").last().alias("last_prefix"))
    assert np.allclose(by_slate["joint"], by_slate["slate_pscore"])
    assert np.allclose(by_slate["last_prefix"], by_slate["slate_pscore"])
    assert (by_slate["action"] == 3).all()                     # without replacement
    assert set(table["reward_min"].unique()) == {0.0} and set(table["reward_max"].unique()) == {1.0}


def test_draws_are_reproducible_from_the_seed() -> None:
    problem = SlateProblem(n_events=100)
    assert problem.draw(7).equals(problem.draw(7))
    assert not problem.draw(7).equals(problem.draw(8))


@pytest.mark.parametrize(("make", "option"), [
    (lambda: ContextualProblem(n_events=10, logging_temperature=0.0), "logging_temperature"),
    (lambda: ContextualProblem(n_events=10, target="greedy"), "target"),
    (lambda: ContextualProblem(n_events=10, score_alignment=1.5), "score_alignment"),
    (lambda: ContextualProblem(n_events=10, n_actions=1), "n_actions"),
    (lambda: SlateProblem(n_events=10, n_items=3, slate_length=4), "slate_length"),
    (lambda: SlateProblem(n_events=10, target_temperature=float("nan")), "target_temperature"),
    (lambda: SlateProblem(n_events=10, n_items=30, slate_length=5), "n_items"),
])
def test_bad_problem_parameters_name_the_option(make: Callable[[], object], option: str) -> None:
    with pytest.raises(ValueError, match=f"'{option}"):
        make()


def test_cells_span_the_ess_range() -> None:
    """The grid reaches from an expected ESS n / E[w²] below 10 (extreme tail) to above 5,000."""
    shares = {c.name: c.problem.expected_ess_share() * c.problem.n_events for c in CELLS}
    assert max(shares.values()) > 5_000 and min(shares.values()) < 10


# --- the harness ----------------------------------------------------------------------------------------------

def test_methods_not_offered_are_split_off() -> None:
    present, skipped = split_methods(["normal", "no_such_method"])
    assert present == ["normal"] and skipped == ["no_such_method"]
    with pytest.raises(ValueError, match="'methods'"):
        run_study(FAST_CELLS, ["no_such_method"], runs=1, show_progress=False)


@pytest.fixture(scope="module")
def fast_normal() -> pl.DataFrame:
    return run_study(FAST_CELLS, ["normal"], runs=FAST_RUNS, show_progress=False).summary


def _row(summary: pl.DataFrame, cell: str, estimator: str) -> dict[str, object]:
    return summary.filter((pl.col("cell") == cell) & (pl.col("estimator") == estimator)).row(0, named=True)


def test_normal_holds_on_the_easy_cell(fast_normal: pl.DataFrame) -> None:
    for estimator in EASY_CELL.estimators:
        row = _row(fast_normal, EASY_CELL.name, estimator)
        assert row["median_ess"] > 2_000, row
        assert row["coverage"] >= FLOOR - 3 * row["coverage_se"], row


@pytest.mark.parametrize(("cell", "estimator"), [(HARD_CELL.name, "ips"), ("slate-extreme", "standard_ips")])
def test_normal_undercovers_clearly_at_low_ess(fast_normal: pl.DataFrame, cell: str, estimator: str) -> None:
    """The problem the issue is about: at ESS ~10–30 a normal interval misses far more often than 5%."""
    row = _row(fast_normal, cell, estimator)
    assert 5 < row["median_ess"] < 40, row
    assert row["coverage"] + 3 * row["coverage_se"] < FLOOR, row


def _assert_auto_holds_where_ok(summary: pl.DataFrame) -> None:
    auto = summary.filter(pl.col("method") == "auto")
    # Not vacuous: the rule says nothing if the verdict never calls auto ok. Where auto is betting's interval
    # (outside the CLT regime) its verdict must be betting's, so it is ok at least as often (1 run of slack).
    assert auto.filter(pl.col("cell") == EASY_CELL.name)["ok_share"].min() >= 0.9, auto
    betting = summary.filter(pl.col("method") == "betting").select("cell", "estimator", pl.col("ok_share")
                                                                    .alias("betting_ok"), pl.col("runs"))
    less_ok = auto.join(betting, on=["cell", "estimator"]).filter(
        pl.col("ok_share") < pl.col("betting_ok") - 1 / pl.col("runs"))
    assert less_ok.is_empty(), f"auto judged unreliable where betting is ok: {less_ok}"
    failures = [
        f"{r['cell']}/{r['estimator']}: {r['coverage_ok']:.3f} ± {r['coverage_ok_se']:.3f} over {r['n_ok']} ok runs"
        for r in summary.filter(pl.col("n_ok") > 0).iter_rows(named=True)
        if r["coverage_ok"] < FLOOR - 3 * r["coverage_ok_se"]
    ]
    assert not failures, f"auto below {FLOOR:.0%} − 3 SE where it reports ok: " + "; ".join(failures)


def _require_auto() -> None:
    if "auto" not in CI_METHODS:
        pytest.skip(f"interval method 'auto' not offered yet (CI_METHODS = {CI_METHODS}); "
                    "it runs once evaluators/intervals.py has it")


def test_auto_covers_in_the_fast_study() -> None:
    _require_auto()
    methods = ["auto", "betting"]  # betting only for the non-vacuity check (skipped if absent)
    _assert_auto_holds_where_ok(run_study(FAST_CELLS, methods, runs=FAST_RUNS, show_progress=False).summary)


@pytest.mark.slow
def test_auto_holds_where_it_says_ok() -> None:
    """The issue's rule on the full grid, 500 runs per cell: auto ≥ nominal − 2 points wherever it says ok."""
    _require_auto()
    _assert_auto_holds_where_ok(run_study(CELLS, ["auto", "betting"], runs=500).summary)


def test_doc_generator_runs_end_to_end(tmp_path: Path) -> None:
    code = main(["--runs", "4", "--cells", "ctx-moderate,slate-hard", "--methods", "normal,bernstein,no_such_method",
                 "--out", str(tmp_path)])
    assert code == 0
    text = (tmp_path / "intervals.md").read_text()
    assert "no_such_method" in text and "| `slate-hard` | rips |" in text
    assert (tmp_path / "intervals-coverage.png").stat().st_size > 10_000


def test_doc_generator_rejects_an_unknown_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cells", "nope", "--out", str(tmp_path)]) == 2
    assert "'--cells'" in capsys.readouterr().err


def test_draws_follow_the_logging_policy() -> None:
    """Empirical action frequencies per context match μ(a|x) (chi-square-sized tolerance: 5 SE per cell)."""
    problem = ContextualProblem(n_events=400_000, n_actions=6, n_contexts=4, logging_temperature=0.5)
    table = problem.draw(seed=5)
    mu = problem.logging_policy
    counts = table.group_by("action", "pscore").len()
    for action, pscore, count in counts.iter_rows():
        (contexts,) = np.nonzero(np.isclose(mu[:, action], pscore))
        expected = problem.n_events / problem.n_contexts * pscore * contexts.size
        assert abs(count - expected) < 5 * np.sqrt(expected) + 1, (action, pscore, count, expected)
