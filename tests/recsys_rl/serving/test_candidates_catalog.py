"""CandidateView on a surface with a catalog (real CatalogStore files, real VW): candidates sent by id only are read
as the catalog's own bytes, decide exactly as the same candidates sent in full, and no completed request is built
unless a consumer that reads protobuf candidates asks for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys_rl.catalog.items import CatalogVersion
from recsys_rl.catalog.store import CatalogStore
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.config import ExplorationConfig, ModelConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.serving.candidates import CandidateInfoCache, CandidateView
from recsys_rl.serving.decision import ConstantScorer, DecisionPolicy, decide, decide_baseline
from recsys_rl.serving.exploration import make_explorer

N = 8


def _catalog(tmp_path: Path) -> CatalogVersion:
    items = []
    for i in range(N):
        item = catalog_pb.CatalogItem(item_id=f"item-{i}", embedding=[0.1 * i, 1.0 - 0.1 * i])
        item.features.numeric["price"] = float(i)
        item.features.categorical["creator"] = f"c{i % 3}"
        item.features.tags.append(f"g{i % 2}")
        items.append(item)
    version, _ = CatalogStore(tmp_path).upsert([items], actor="test")
    return version


def _requests(version: CatalogVersion, request_id: str) -> tuple[pb.RankRequest, pb.RankRequest]:
    """(ids only, full features) for the same candidates; candidate 0's baseline is 0 (not serialized)."""
    ids, full = (pb.RankRequest(request_id=request_id, surface="default", slate_size=3) for _ in range(2))
    for request in (ids, full):
        request.context.categorical["device"] = "web"
    for i in reversed(range(N)):
        baseline = float(i % 4)
        ids.candidates.add(item_id=f"item-{i}", baseline_score=baseline)
        full_candidate = full.candidates.add()
        full_candidate.MergeFromString(version.items[f"item-{i}"])
        full_candidate.baseline_score = baseline
    return ids, full


def _policy(scorer: object) -> DecisionPolicy:
    exploration = ExplorationConfig(algorithm="epsilon_greedy", epsilon=0.5)
    return DecisionPolicy(surface="default", policy_version="v", scorer=scorer,  # type: ignore[arg-type]
                          explorer=make_explorer(exploration, 0.5), exploration=exploration, cap=0.5)


def _slate(decision: object) -> list[tuple[str, float, float]]:
    return [(s.item_id, s.propensity, s.score) for s in decision.slots]  # type: ignore[attr-defined]


def test_ids_only_candidates_are_the_catalogs_bytes_and_decide_as_the_full_ones_with_no_request_built(
        tmp_path: Path) -> None:
    version = _catalog(tmp_path)
    policy = _policy(VWBandit(ModelConfig().vw_args))
    for r in range(3):  # the first time fills the caches, then every candidate is a hit
        ids, full = _requests(version, f"r{r}")
        cache = CandidateInfoCache()
        by_id = CandidateView(ids, cache=cache, catalog=version)
        in_full = CandidateView(full, cache=cache, catalog=version)
        # An id's key is the version's stored item itself (one object: the caches find it by identity).
        assert all(key is version.items[item_id] for key, item_id in zip(by_id.keys, by_id.item_ids, strict=True))
        assert [pb.Candidate.FromString(raw) for raw in by_id.raw] == list(full.candidates)  # what the log records
        assert by_id.baseline.tobytes() == in_full.baseline.tobytes() and by_id.baseline[-1] == 0.0
        assert by_id.item_ids == in_full.item_ids and by_id.categorical("creator") == in_full.categorical("creator")

        decisions = [decide(policy, view.sent, view.baseline, draw_key=r, candidates=view) for view in (by_id, in_full)]
        assert _slate(decisions[0]) == _slate(decisions[1])
        assert decisions[0].slate_propensity == decisions[1].slate_propensity
        assert by_id._request is None  # VW read the view: no completed RankRequest was built
        assert in_full.request is full  # nothing to complete: the request as sent


class PriceScorer:
    """Reads the candidates' features from the protobuf (as a learned baseline or slate-RL does)."""

    def score(self, request: pb.RankRequest) -> np.ndarray:
        return np.array([c.features.numeric["price"] for c in request.candidates])


def test_a_scorer_that_reads_protobuf_candidates_gets_them_completed_from_the_catalog(tmp_path: Path) -> None:
    version = _catalog(tmp_path)
    ids, full = _requests(version, "r")
    view = CandidateView(ids, cache=CandidateInfoCache(), catalog=version)
    decision = decide(_policy(PriceScorer()), ids, view.baseline, draw_key=1, candidates=view)
    assert decision.candidate_scores == [float(i) for i in reversed(range(N))]  # the catalog's prices
    assert list(view.request.candidates) == list(full.candidates) and view.request.request_id == "r"
    assert view.sent is ids and len(ids.candidates[0].features.numeric) == 0  # the host's request is untouched


class CheapFirst(PriceScorer):
    def score(self, request: pb.RankRequest) -> np.ndarray:
        return -super().score(request)


class PriceLongTerm:
    """A long-term value that reads candidate features from the protobuf (as slate-RL does)."""

    def evaluate(self, request: pb.RankRequest, logged: object = None) -> tuple[np.ndarray, object]:
        return np.array([c.features.numeric["price"] for c in request.candidates]), None


def test_a_learned_baseline_and_a_long_term_value_read_the_completed_candidates(tmp_path: Path) -> None:
    version = _catalog(tmp_path)
    ids, _ = _requests(version, "r")
    prices = [float(i) for i in reversed(range(N))]
    view = CandidateView(ids, cache=CandidateInfoCache(), catalog=version)
    policy = DecisionPolicy(**{**_policy(VWBandit(ModelConfig().vw_args)).__dict__, "baseline": CheapFirst(),
                               "baseline_version": "lambdarank-1"})
    served = decide_baseline(policy, ids, view.baseline, draw_key=1, mode=pb.SERVING_MODE_BASELINE, candidates=view)
    assert served.baseline_version == "lambdarank-1" and not served.fallback_reason  # no baseline_error
    # Cheapest first by the catalog's prices (unread prices would be 0: ties, in candidate order item-7, -6, -5).
    assert [s.item_id for s in served.slots] == ["item-0", "item-1", "item-2"]
    view = CandidateView(ids, cache=CandidateInfoCache(), catalog=version)
    policy = DecisionPolicy(**{**_policy(ConstantScorer()).__dict__, "long_term": PriceLongTerm(),
                               "long_term_weight": 1.0})
    assert decide(policy, ids, view.baseline, draw_key=1, candidates=view).candidate_scores == prices
