"""MIPS end to end from served logs (issue 12 item 4): ``replay --embedding`` fills the embedding columns.

A real DecisionService serves simulator page views under ε-greedy with a served shield (max one item per topic,
so feasibility changes slot by slot); each candidate also carries ``sku`` = its item id, an embedding unique per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from evaluators import estimate
from evaluators.replay.embedding import embedding_mass, kmeans, assign_clusters, parse_embedding_spec
from evaluators.replay.run import replay
from recsys_rl.cli import main
from recsys_rl.config import ExplorationConfig, ServiceConfig, SurfaceConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.exploration import CappedExplorer, EpsilonGreedy, slate_propensities
from recsys_rl.serving.service import DecisionService
from recsys_rl.shield.rules import rules_from_dict
from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.host import to_rank_request

N = 1500


@dataclass
class ServedLog:
    data_dir: Path
    config: ServiceConfig
    click_probs: list[float]  # exact P(click) of each served slate: the logging policy's on-policy value


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedLog:
    data_dir = tmp_path_factory.mktemp("mips_log")
    surface = SurfaceConfig(exploration_cap=0.4, exploration=ExplorationConfig(epsilon=0.4), decision_budget_ms=1e6,
                            shield=rules_from_dict({"max_per_value": {"topic": 1}}))
    config = ServiceConfig(surfaces={"default": surface})
    world = World(SimConfig(n_candidates=8, slate_size=2), seed=3)
    service = DecisionService(config, data_dir, learner="off", watch_models=False)
    probs: list[float] = []
    try:
        for i in range(N):
            page_view = world.next_page_view()
            while page_view is None:
                world.next_day()
                page_view = world.next_page_view()
            request = to_rank_request(page_view, f"m-{i}", "default", catalog=world.catalog)
            for candidate in request.candidates:
                candidate.features.categorical["sku"] = candidate.item_id
            decision, event_id = service.rank(request)
            slate = [slot.item_id for slot in decision.slots]
            probs.append(world.slate_click_prob(page_view, slate))
            response = world.respond(page_view, slate)
            if response.clicked_item_id is not None:
                service.report_outcome(pb.ReportOutcomeRequest(event_id=event_id, item_id=response.clicked_item_id,
                                                               outcome="click", value=1.0))
    finally:
        service.close()
    return ServedLog(data_dir, config, probs)


def _replay(log: ServedLog, spec: str, embedding: str) -> pl.DataFrame:
    return replay(log.data_dir, spec, config=log.config, progress=False, embedding=embedding)


@pytest.mark.parametrize("spec", ["logged", "logged@cap=0.1", "uniform"])
def test_an_embedding_unique_per_item_gives_the_item_propensities_bit_for_bit(served: ServedLog, spec: str) -> None:
    table = _replay(served, spec, "feature:sku")
    assert table.height == 2 * N
    assert (table["action_embedding"] == table["action"]).all()
    assert np.array_equal(table["embedding_pscore"].to_numpy(), table["pscore"].to_numpy())
    assert np.array_equal(table["embedding_target_pscore"].to_numpy(), table["target_pscore"].to_numpy())


def test_mips_on_a_served_log_estimates_the_logging_policys_own_value(served: ServedLog) -> None:
    table = _replay(served, "logged", "feature:topic")
    mu, mu_e = table["pscore"].to_numpy(), table["embedding_pscore"].to_numpy()
    assert (mu_e >= mu).all() and (mu_e <= 1.0).all()
    assert (mu_e > mu).mean() > 0.3  # topics are shared: the marginal is a real sum over several items
    # The logging policy computed as the target (``logged``) and as the logging policy: the same sums.
    assert np.array_equal(table["embedding_target_pscore"].to_numpy(), mu_e)
    truth = float(np.mean(served.click_probs))  # P(a click on the served slate), exact per decision
    for name in ("mips", "snmips"):
        row = estimate(table, name, ci="normal").row(0, named=True)
        # A row's reward is a click on its slot: two slots a decision, so the slate's value is twice the row mean.
        se = (row["ci_high"] - row["ci_low"]) / (2 * 1.96)
        assert abs(2 * row["value"] - truth) <= 2 * 3 * se, (name, row, truth)
        assert se < 0.02  # not vacuous


def test_what_if_target_embedding_propensities_sum_the_targets_distribution(served: ServedLog) -> None:
    table = _replay(served, "logged@cap=0.05", "feature:topic")
    pi, pi_e = table["target_pscore"].to_numpy(), table["embedding_target_pscore"].to_numpy()
    assert (pi_e >= pi).all() and (pi_e <= 1.0).all()
    assert not np.array_equal(pi_e, table["embedding_pscore"].to_numpy())
    assert estimate(table, "mips,snmips").height == 2


def test_embedding_mass_sums_to_one_over_embeddings_and_matches_slate_propensities() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=12)
    labels = np.array(list("aabbbcccdddd"), dtype=object)
    explorer = CappedExplorer(EpsilonGreedy(0.7), 0.3)
    slate = [5, 0, 11]
    mass = embedding_mass(scores, slate, explorer, labels)
    unique = np.arange(12).astype(object)
    assert np.array_equal(embedding_mass(scores, slate, explorer, unique), slate_propensities(scores, slate, explorer))
    for k in range(len(slate)):  # Σ_e p(e) = 1 at every slot, whichever item of each embedding is logged
        remaining = [i for i in range(12) if i not in slate[:k]]
        firsts = {labels[i]: i for i in reversed(remaining)}
        total = sum(embedding_mass(scores, slate[:k] + [i], explorer, labels)[k] for i in firsts.values())
        assert total == pytest.approx(1.0, abs=1e-12)
    assert mass[0] > slate_propensities(scores, slate, explorer)[0]


def test_kmeans_embeddings_are_seeded_clusters_of_the_candidates_vectors(served: ServedLog) -> None:
    first = _replay(served, "logged@cap=0.1", "kmeans:4")
    again = _replay(served, "logged@cap=0.1", "kmeans:4")
    assert first.equals(again)
    assert set(first["action_embedding"].unique().to_list()) <= {0, 1, 2, 3}
    assert first["action_embedding"].n_unique() > 1
    assert (first["embedding_pscore"] >= first["pscore"]).all()
    # Well separated blobs: k-means finds them.
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(c, 0.01, size=(20, 2)) for c in ((0, 0), (5, 5), (-5, 5))])
    labels = assign_clusters(points, kmeans(points, 3))
    assert [len(set(labels[i:i + 20])) for i in (0, 20, 40)] == [1, 1, 1] and len(set(labels)) == 3


@pytest.mark.parametrize(("spec", "message"), [
    ("topic", "expected feature:NAME or kmeans:C"), ("feature:", "expected feature:NAME"),
    ("kmeans:x", "integer number of clusters"), ("kmeans:0", "at least 1 cluster"),
])
def test_bad_specs_name_the_flag(spec: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        parse_embedding_spec(spec)
    assert caught.value.field == "--embedding"


def test_missing_feature_or_too_many_clusters_are_clear_errors(served: ServedLog, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidInput, match="has no categorical feature 'genre'"):
        _replay(served, "logged", "feature:genre")
    with pytest.raises(InvalidInput, match="distinct items"):
        _replay(served, "logged", "kmeans:100000")
    out = tmp_path / "t.parquet"
    assert main(["replay", "--data-dir", str(served.data_dir), "--policy", "logged", "--out", str(out),
                 "--no-progress", "--embedding", "feature:genre"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--embedding" in err[0], err
    assert not out.exists()


def test_cli_replay_then_evaluate_mips(served: ServedLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from evaluators.cli import main as evaluate_main

    out = tmp_path / "table.parquet"
    config = tmp_path / "surface.toml"
    config.write_text("[surfaces.default]\nexploration_cap = 0.4\n[surfaces.default.exploration]\nepsilon = 0.4\n"
                      "[surfaces.default.shield]\nmax_per_value = { topic = 1 }\n")
    code = main(["replay", "--data-dir", str(served.data_dir), "--policy", "logged@cap=0.1", "--out", str(out),
                 "--no-progress", "--config", str(config), "--embedding", "feature:topic", "--reward-model"])
    assert code == 0, capsys.readouterr().err
    assert {"action_embedding", "embedding_pscore", "embedding_target_pscore"} <= set(pl.read_parquet(out).columns)
    capsys.readouterr()
    assert evaluate_main(["evaluate", str(out), "--estimators", "mips,snmips,mips_dr", "--format", "json"]) == 0
    assert "mips_dr" in capsys.readouterr().out
