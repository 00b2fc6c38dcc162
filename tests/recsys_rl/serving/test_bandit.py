"""The VW bandit on real VW: cached examples predict like full text, it learns from IPS labels, round-trips."""

from __future__ import annotations

import numpy as np
import pytest
from vowpalwabbit import pyvw

from recsys_rl.serving.bandit import VWBandit
from recsys_rl.config import ModelConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.serving.exploration import EpsilonGreedy, sample_slate
from recsys_rl.serving.features import context_line, item_line
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

ARGS = ModelConfig().vw_args


def make_request(rng: np.random.Generator, n: int = 20, device: str = "ios") -> pb.RankRequest:
    request = pb.RankRequest(request_id=str(rng.integers(1 << 30)), surface="default", slate_size=3)
    request.context.categorical["device"] = device
    request.context.numeric["age"] = float(rng.uniform(18, 70))
    for j in range(n):
        c = request.candidates.add(item_id=f"item-{j}", baseline_score=float(rng.uniform()))
        c.features.numeric["price"] = float(j % 5)
        c.features.categorical["kind"] = "video" if j % 2 else "article"
        c.embedding.extend(rng.normal(size=4).astype(np.float32).tolist())
    return request


def event_for(request: pb.RankRequest, slate_indices: list[int], propensities: list[float]) -> events_pb2.DecisionEvent:
    event = events_pb2.DecisionEvent(event_id="e", slate_size=len(slate_indices))
    event.context.CopyFrom(request.context)
    event.candidates.extend(request.candidates)
    for k, (i, p) in enumerate(zip(slate_indices, propensities)):
        event.slate.add(item_id=request.candidates[i].item_id, position=k, propensity=p, candidate_index=i)
    return event


def full_text_scores(bandit: VWBandit, request: pb.RankRequest) -> np.ndarray:
    lines = [context_line(request.context)] + [item_line(c, "c") for c in request.candidates]
    return -np.asarray(bandit._workspace.predict(lines))


def test_cached_examples_predict_exactly_like_full_text_also_while_learning() -> None:
    rng = np.random.default_rng(0)
    bandit = VWBandit(ARGS)
    base = make_request(rng)
    for step in range(60):
        request = pb.RankRequest()
        request.CopyFrom(base)
        request.context.categorical["device"] = ["ios", "android", "web"][step % 3]
        request.context.numeric["age"] = float(rng.uniform(18, 70))
        for c in request.candidates:
            c.baseline_score = float(rng.uniform())  # must not matter for the cache
        np.testing.assert_array_equal(bandit.score(request), full_text_scores(bandit, request))
        slate = rng.choice(len(request.candidates), 3, replace=False).tolist()
        assert bandit.learn(event_for(request, slate, [0.2, 0.3, 0.5]), rng.uniform(size=3).tolist()) == 3
    assert bandit.cache.misses == len(base.candidates) and bandit.cache.hits > 0
    assert np.ptp(bandit.score(base)) > 0  # it did learn something



def test_a_cached_shared_example_predicts_exactly_like_a_fresh_parse_also_while_learning() -> None:
    """Contexts repeat (hour, device): each one's shared example is parsed once and reused; predictions stay the
    ones of the full text, bit for bit, however the contexts interleave and while the model learns."""
    rng = np.random.default_rng(4)
    bandit = VWBandit(ARGS)
    base = make_request(rng, n=30)
    contexts = []
    for device in ("ios", "android", "web"):
        for age in (21.0, 48.5):
            context = pb.Features()
            context.categorical["device"] = device
            context.numeric["age"] = age
            contexts.append(context)
    for step in range(240):
        request = pb.RankRequest()
        request.CopyFrom(base)
        request.context.CopyFrom(contexts[int(rng.integers(len(contexts)))])
        keep = sorted(rng.choice(len(base.candidates), 12, replace=False).tolist())
        del request.candidates[:]
        request.candidates.extend([base.candidates[i] for i in keep])
        np.testing.assert_array_equal(bandit.score(request), full_text_scores(bandit, request))
        if step % 4 == 0:
            slate = rng.choice(len(request.candidates), 3, replace=False).tolist()
            bandit.learn(event_for(request, slate, [0.2, 0.3, 0.5]), rng.uniform(size=3).tolist())
    assert len(bandit._shared) == len(contexts)  # each context parsed once, then reused

def test_repeated_candidate_in_one_request_is_invalid_input() -> None:
    """A repeated item would share one cached example (VW mutates it in place) and make outcomes ambiguous."""
    rng = np.random.default_rng(1)
    bandit = VWBandit(ARGS)
    request = make_request(rng, n=4)
    request.candidates.append(request.candidates[0])
    with pytest.raises(InvalidInput, match=r"^candidates\[4\]\.item_id: duplicate"):
        bandit.score(request)
    del request.candidates[4]
    np.testing.assert_array_equal(bandit.score(request), full_text_scores(bandit, request))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_scoring_on_cached_examples_does_not_leak() -> None:
    rng = np.random.default_rng(2)
    bandit = VWBandit(ARGS)
    request = make_request(rng, n=100)
    for _ in range(200):  # warm-up: cache filled, allocator settled
        bandit.score(request)
    before = _rss_bytes()
    for _ in range(3000):
        bandit.score(request)
    # Unfinished pool examples leaked ~30 kB per shared example (~90 MB here); allow 15 MB of noise.
    assert _rss_bytes() - before < 15 * 2**20


def test_learns_context_dependent_preference_from_logged_ips_labels() -> None:
    """ios users click item-0, android users click item-1; logs come from a uniform-random policy."""
    rng = np.random.default_rng(3)
    bandit = VWBandit(ARGS)
    uniform = EpsilonGreedy(1.0)
    for step in range(600):
        device = "ios" if step % 2 else "android"
        request = make_request(rng, n=6, device=device)
        draw = sample_slate(np.zeros(6), 1, uniform, draw_key=step)
        (slot,) = draw.slots
        liked = 0 if device == "ios" else 1
        reward = 1.0 if slot.index == liked else 0.0
        bandit.learn(event_for(request, [slot.index], [slot.propensity]), [reward])
    for device, liked in (("ios", 0), ("android", 1)):
        scores = bandit.score(make_request(rng, n=6, device=device))
        others = np.delete(scores, liked)
        assert scores.argmax() == liked
        assert scores[liked] - others.max() > 0.2  # clear margin (rewards are 0/1)


def test_save_load_round_trip() -> None:
    rng = np.random.default_rng(4)
    bandit = VWBandit(ARGS)
    request = make_request(rng)
    bandit.learn(event_for(request, [3, 1], [0.5, 0.25]), [1.0, 0.0])
    loaded = VWBandit.from_bytes(ARGS, bandit.to_bytes())
    assert bandit.compare(loaded) == ""
    np.testing.assert_array_equal(bandit.score(request), loaded.score(request))
    loaded.learn(event_for(request, [2], [0.5]), [1.0])
    assert "differ" in bandit.compare(loaded)
    assert "vw_args" in bandit.compare(VWBandit(ARGS + " --l2 0.001"))


@pytest.mark.parametrize(
    ("args", "match"),
    [("--cb -b 18", "--cb_adf"), ("--cb_explore_adf --cb_adf --epsilon 0.1", "exploration"), ("--cb_adf -i m.vw", "bytes")],
)
def test_bad_vw_args_are_rejected(args: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VWBandit(args)


def test_learn_rejects_inconsistent_events() -> None:
    rng = np.random.default_rng(5)
    bandit = VWBandit(ARGS)
    request = make_request(rng, n=4)
    with pytest.raises(ValueError, match="slot_rewards"):
        bandit.learn(event_for(request, [0, 1], [0.5, 0.5]), [1.0])
    with pytest.raises(ValueError, match=r"slate\[1\].candidate_index"):
        bandit.learn(event_for(request, [0, 0], [0.5, 0.5]), [1.0, 1.0])
    with pytest.raises(ValueError, match=r"slate\[0\].propensity"):
        bandit.learn(event_for(request, [0], [0.0]), [1.0])
    assert isinstance(bandit._workspace, pyvw.Workspace)


def test_the_serving_item_cache_is_bounded_by_the_surfaces_item_cache(tmp_path) -> None:  # noqa: ANN001
    """A parsed VW example takes ~32 kB: the serving cache holds at most ``model.item_cache`` of them per model."""
    from recsys_rl.config import ModelConfig, ServiceConfig, SurfaceConfig
    from recsys_rl.serving.service import DecisionService
    from tests.helpers import make_request as request_of

    config = ServiceConfig(surfaces={"default": SurfaceConfig(model=ModelConfig(item_cache=150, learn=False))})
    service = DecisionService(config, tmp_path / "data", learner="off", watch_models=False)
    try:
        for k in range(5):
            request = request_of(100, 5, request_id=f"r{k}")
            for i, candidate in enumerate(request.candidates):
                candidate.item_id = f"item-{k}-{i}"  # 500 distinct items in all
            service.rank(request)
        cache = service._entry("default").policy.bandit.cache  # noqa: SLF001 - the bound under test
        assert len(cache) == 150 and cache.evictions == 350
    finally:
        service.close()
