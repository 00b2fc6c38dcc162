"""OBD importer on the real Open Bandit Dataset sample in ../shared/data/obd-sample."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import integrate, stats

from evaluators.importers.obd import (
    ObdLog,
    bts_action_dist,
    bts_prior,
    empirical_action_dist,
    load_obd,
    obd_feedback_table,
    uniform_action_dist,
)
from recsys_rl.errors import InvalidInput

OBD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "obd-sample"


@pytest.fixture(scope="module")
def random_log() -> ObdLog:
    assert OBD.is_dir(), f"expected the OBD sample at {OBD.resolve()} (shared/ beside the clone)"
    return load_obd(OBD, "random", campaign="all")


@pytest.fixture(scope="module")
def bts_log() -> ObdLog:
    assert OBD.is_dir(), f"expected the OBD sample at {OBD.resolve()} (shared/ beside the clone)"
    return load_obd(OBD, "bts", campaign="all")


def test_random_log_matches_the_file(random_log: ObdLog) -> None:
    rows = random_log.rows
    assert (random_log.n_rows, random_log.n_items, random_log.n_positions) == (10_000, 80, 3)
    assert rows["event_id"].n_unique() == 10_000
    assert sorted(rows["position"].unique().to_list()) == [0, 1, 2]  # 1..3 in the file
    assert rows["propensity_score"].min() == rows["propensity_score"].max() == pytest.approx(1 / 80)
    assert int(rows["click"].sum()) == 38
    assert rows.schema["timestamp"] == pl.Datetime("us", "UTC")
    first = rows.row(0, named=True)
    assert (first["event_id"], first["item_id"], first["position"], first["click"]) == ("random/all/0", 14, 2, 0)
    assert "user-item_affinity_79" in rows.columns and random_log.item_context.height == 80


def test_bts_log_propensities_and_on_policy_value(bts_log: ObdLog) -> None:
    p = bts_log.rows["propensity_score"]
    assert p.min() == pytest.approx(0.000045) and p.max() == pytest.approx(0.95424)
    assert bts_log.on_policy_value() == pytest.approx(42 / 10_000)


def test_bts_prior_is_the_published_table() -> None:
    alpha, beta = bts_prior("all")
    assert alpha.shape == beta.shape == (80,)
    assert (alpha[7], beta[7], alpha[39], beta[39], alpha[79], beta[79]) == (857, 181745, 1013, 222255, 246, 51964)
    assert bts_prior("men")[0].shape == (34,) and bts_prior("women")[1].shape == (46,)
    with pytest.raises(InvalidInput, match="campaign"):
        bts_prior("kids")  # type: ignore[arg-type]


def test_bts_action_dist_matches_numerical_integration() -> None:
    dist = bts_action_dist("all", n_sim=40_000, seed=7)
    assert dist.shape == (80, 3) and np.all(dist >= 0)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_array_equal(dist, bts_action_dist("all", n_sim=40_000, seed=7, chunk_size=999))
    # P(item i ranked first) = ∫ f_i(x) Π_{j≠i} F_j(x) dx, computed independently of the simulation.
    alpha, beta = bts_prior("all")
    for item in (61, 59, 39):
        others = [stats.beta(a, b) for j, (a, b) in enumerate(zip(alpha, beta)) if j != item]
        density = stats.beta(alpha[item], beta[item])
        exact, _ = integrate.quad(
            lambda x: density.pdf(x) * np.prod([o.cdf(x) for o in others]), 0.0, 0.05, limit=200
        )
        se = np.sqrt(exact * (1 - exact) / 40_000)
        assert abs(dist[item, 0] - exact) < 4 * se, (item, dist[item, 0], exact)


def test_on_policy_table_gives_the_mean_click(random_log: ObdLog) -> None:
    table = obd_feedback_table(random_log, uniform_action_dist(80))
    assert table.columns == ["event_id", "position", "action", "reward", "pscore", "target_pscore"]
    assert table.height == 10_000
    np.testing.assert_allclose(table["target_pscore"], table["pscore"])
    ips = (table["target_pscore"] / table["pscore"] * table["reward"]).mean()
    assert ips == pytest.approx(0.0038, abs=1e-12)


def test_target_pscore_is_the_target_prob_of_the_logged_item(random_log: ObdLog, bts_log: ObdLog) -> None:
    dist = empirical_action_dist(bts_log)
    counts = bts_log.rows.group_by("item_id", "position").len().sort("len", descending=True).row(0)
    assert dist[counts[0], counts[1]] == pytest.approx(counts[2] / (bts_log.rows["position"] == counts[1]).sum())
    table = obd_feedback_table(random_log, dist)
    items, positions = random_log.rows["item_id"].to_numpy(), random_log.rows["position"].to_numpy()
    np.testing.assert_array_equal(table["target_pscore"].to_numpy(), dist[items, positions])
    # A per-row array (OBP's action_dist layout) gives the same table as the context-free one.
    per_row = np.broadcast_to(dist, (random_log.n_rows, 80, 3))
    assert obd_feedback_table(random_log, per_row).equals(table)


def test_reward_model_columns(random_log: ObdLog) -> None:
    q = np.zeros((80, 3))
    q[:, 0], q[5, 1] = 0.01, 0.5
    target = uniform_action_dist(80)
    table = obd_feedback_table(random_log, target, reward_model=q)
    on_pos0 = table.filter(pl.col("position") == 0)
    assert on_pos0["q_hat"].unique().to_list() == [0.01]
    np.testing.assert_allclose(on_pos0["q_hat_target"], 0.01)
    np.testing.assert_allclose(table.filter(pl.col("position") == 1)["q_hat_target"], 0.5 / 80)


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        (np.full((80, 2), 1 / 80), "shape"),
        (np.full((7, 80, 3), 1 / 80), "shape"),
        (np.full((80, 3), 1 / 70), "sum to 1"),
        (np.full((80, 3), np.nan), r"\[0, 1\]"),
    ],
)
def test_bad_target_probs_are_rejected(random_log: ObdLog, probs: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInput, match=rf"target_action_probs: .*{message}"):
        obd_feedback_table(random_log, probs)


def _copy_sample(tmp_path: Path, n_lines: int) -> Path:
    folder = tmp_path / "random" / "all"
    folder.mkdir(parents=True)
    shutil.copy(OBD / "random" / "all" / "item_context.csv", folder)
    lines = (OBD / "random" / "all" / "all.csv").read_text().splitlines()[: n_lines + 1]
    (folder / "all.csv").write_text("\n".join(lines) + "\n")
    return folder / "all.csv"


def test_malformed_csv_names_file_and_column(tmp_path: Path) -> None:
    csv = _copy_sample(tmp_path, 20)
    assert load_obd(tmp_path, "random").n_rows == 20
    header, *body = csv.read_text().splitlines()
    columns = header.split(",")
    cells = body[4].split(",")
    cells[columns.index("position")] = "4"
    csv.write_text("\n".join([header, *body[:4], ",".join(cells), *body[5:]]) + "\n")
    with pytest.raises(InvalidInput, match=r"all\.csv:position: 1 values outside 1\.\.3, first 4 at row 4"):
        load_obd(tmp_path, "random")
    csv.write_text(header.replace("propensity_score", "pscore") + "\n" + "\n".join(body) + "\n")
    with pytest.raises(InvalidInput, match=r"all\.csv:propensity_score: column missing"):
        load_obd(tmp_path, "random")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="policy"):
        load_obd(OBD, "egreedy")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="bts/all/all.csv"):
        load_obd(tmp_path, "bts")


def test_documented_run_end_to_end(tmp_path: Path) -> None:
    """Smoke test of scripts/obd_run.py on a small Monte Carlo budget (the real entry point)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("obd_run", Path(__file__).resolve().parents[2] / "scripts" / "obd_run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["obd_run"] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["obd_run"]
    out = tmp_path / "run.png"
    results = module.main(module.Args(data_dir=OBD, out=out, n_sim=2_000, seed=1))
    assert out.stat().st_size > 10_000
    frequencies = {e.label: e for e in results["bts-log frequencies"]}
    # Deterministic target (no simulation): IPS = mean over the random log of π̂(a, k) / (1/80) · click.
    assert frequencies["ips"].value == pytest.approx(0.005035, abs=1e-6)
    for estimates in results.values():
        for e in estimates:
            assert e.low < 0.0042 < e.high  # every interval covers BTS's on-policy click rate


def test_local_fallback_agrees_with_evaluators_estimate(random_log: ObdLog, bts_log: ObdLog) -> None:
    """The script's fallback helper and the library give the same normal-interval estimates."""
    import importlib.util
    import sys

    from evaluators import estimate, validate_table

    path = Path(__file__).resolve().parents[2] / "scripts" / "obd_run.py"
    spec = importlib.util.spec_from_file_location("obd_run_fallback", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["obd_run_fallback"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["obd_run_fallback"]
    table = obd_feedback_table(
        random_log, empirical_action_dist(bts_log), reward_model=module.position_ctr_model(random_log)
    )
    validate_table(table, need={"q_hat", "q_hat_target"}, allow_support_violations=False)
    library = estimate(table, estimators=["ips", "snips", "dr"], ci="normal", alpha=0.05)
    for local, row in zip(module.local_estimates(table, 0.05), library.iter_rows(named=True)):
        assert local.label == row["estimator"]
        assert local.value == pytest.approx(row["value"], rel=1e-9)
        assert (local.low, local.high) == pytest.approx((row["ci_low"], row["ci_high"]), rel=1e-3)
