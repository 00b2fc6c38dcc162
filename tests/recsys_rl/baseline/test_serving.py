"""A published LambdaRank baseline serving as a surface's baseline, over a real server: it orders forced fallbacks
(a decision budget no model can meet), stage baseline, shadow's served slate and canary control; the events log
its version; ``replay --policy logged`` reproduces the logged propensities bit for bit; GetSurface reports it; a
configured version that does not load stops the start; a learned baseline that raises leaves the host's order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluators.replay.run import replay
from evaluators.replay.targets import parse_policy_spec, resolve_policy
from logging_schema.reader import iter_records
from recsys_rl.baseline import baseline_surface
from recsys_rl.baseline.model import LambdaRankBaseline
from recsys_rl.baseline.train import TrainConfig, train_from_data_dir
from recsys_rl.config import ConfigError, ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.logging.v1.events_pb2 import LogRecord
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.rollout.config import RolloutConfig
from recsys_rl.serving.decision import DecisionPolicy, baseline_order, decide_baseline, target_scores
from recsys_rl.serving.exploration import Greedy
from recsys_rl.serving.registry import ModelRegistry
from recsys_rl.serving.service import DecisionService
from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.host import to_rank_request
from tests.recsys_rl.slateq.simlog import write_sim_log

SIM = SimConfig(n_users=60, n_items=80)
REQUESTS = 120  # per surface
NO_LEARNING = ModelConfig(learn=False)


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A LambdaRank baseline trained on 1,500 simulated decisions (small: the tests check serving, not quality)."""
    data_dir = tmp_path_factory.mktemp("train")
    write_sim_log(data_dir / "logs", decisions=1500, seed=3, config=SIM)
    result, _ = train_from_data_dir(data_dir, SurfaceConfig(), TrainConfig(num_rounds=30))
    return result.model


def _publish(data_dir: Path, surface: str, model: bytes) -> str:
    return ModelRegistry(data_dir / "models").publish(baseline_surface(surface), model, parent=None, data_range={},
                                                      parameters={}).version


def _requests(surface: str, n: int, seed: int = 7) -> list[pb.RankRequest]:
    world = World(SIM, seed=seed)
    out: list[pb.RankRequest] = []
    while len(out) < n:
        page_view = world.next_page_view()
        if page_view is None:
            world.next_day()
            continue
        out.append(to_rank_request(page_view, f"{surface}-{len(out)}", surface, catalog=world.catalog))
        world.respond(page_view, world.random_slate(page_view))
    return out


def _surfaces(version: dict[str, str]) -> dict[str, SurfaceConfig]:
    def surface(name: str, **options: object) -> SurfaceConfig:
        options.setdefault("decision_budget_ms", 60_000.0)  # a loaded test machine must not turn canary into fallback
        return SurfaceConfig(name=name, exploration_cap=0.2,
                             model=ModelConfig(learn=False, baseline=version[name]), **options)  # type: ignore[arg-type]

    return {
        "fallback": surface("fallback", decision_budget_ms=1e-6),  # every learned decision misses its budget
        "base": surface("base", rollout=RolloutConfig(stage="baseline")),
        "shadow": surface("shadow", rollout=RolloutConfig(stage="shadow")),
        "canary": surface("canary", rollout=RolloutConfig(stage="canary", canary_share=0.5)),
    }


def test_learned_baseline_serves_every_baseline_path_and_replays_bit_for_bit(
        start_server, tmp_path: Path, model_bytes: bytes) -> None:  # noqa: ANN001
    data_dir = tmp_path / "served"
    names = ("fallback", "base", "shadow", "canary")
    version = {name: _publish(data_dir, name, model_bytes) for name in names}
    config = ServiceConfig(surfaces=_surfaces(version), seed=5)
    running = start_server(config, data_dir=data_dir, learner="off")
    admin = running.admin  # the admin listener, as the session's operator
    model = LambdaRankBaseline(model_bytes)
    expected_mode = {"fallback": {pb.SERVING_MODE_BASELINE_FALLBACK}, "base": {pb.SERVING_MODE_BASELINE},
                     "shadow": {pb.SERVING_MODE_SHADOW},
                     "canary": {pb.SERVING_MODE_BASELINE, pb.SERVING_MODE_CANARY}}
    ordered_by_learned: dict[str, int] = dict.fromkeys(names, 0)
    baseline_served: dict[str, int] = dict.fromkeys(names, 0)
    for name in names:
        assert admin.GetSurface(admin_pb.GetSurfaceRequest(surface=name)).baseline_version == version[name]
        for request in _requests(name, REQUESTS):
            response = running.stub.Rank(request)
            assert response.serving_mode in expected_mode[name]
            if response.serving_mode == pb.SERVING_MODE_CANARY:
                continue
            learned = model.score(request)
            order = [request.candidates[int(i)].item_id for i in baseline_order(learned, request.slate_size)]
            assert [s.item_id for s in response.slate] == order and response.slate_propensity == 1.0
            baseline_served[name] += 1
            host = np.array([c.baseline_score for c in request.candidates])
            ordered_by_learned[name] += order != [request.candidates[int(i)].item_id
                                                  for i in baseline_order(host, request.slate_size)]
    running.stop()
    # The learned order is not the host's on most requests: the checks above could not pass by accident.
    assert all(ordered_by_learned[n] > baseline_served[n] // 2 > 10 for n in names), ordered_by_learned

    events = [r.decision for r in iter_records(data_dir / "logs", record_type=LogRecord)
              if r.WhichOneof("event") == "decision"]
    assert len(events) == 4 * REQUESTS
    modes = {pb.SERVING_MODE_BASELINE_FALLBACK, pb.SERVING_MODE_BASELINE, pb.SERVING_MODE_SHADOW}
    for event in events:
        baseline_served = event.serving_mode in modes
        assert event.baseline_version == (version[event.surface] if baseline_served else "")
        if event.surface == "fallback":
            # A 1 ns budget: passed in the server's queue ("queued", ranker.admission) or before sampling.
            assert event.fallback_reason.startswith(("deadline", "queued"))
        if event.surface == "shadow":
            assert event.shadow.slate  # the learned policy decided beside the served baseline
    canary_modes = {e.serving_mode for e in events if e.surface == "canary"}
    assert canary_modes == {pb.SERVING_MODE_BASELINE, pb.SERVING_MODE_CANARY}  # both groups at share 0.5

    for name in names:  # the baseline-served slates replay with their baseline's scores: propensity 1 each slot
        table = replay(data_dir, "logged", surface=name, config=config, progress=False)
        assert table.height == REQUESTS * 5
        assert np.array_equal(table.get_column("target_pscore").to_numpy(), table.get_column("pscore").to_numpy())
        assert not table.get_column("target_fallback").any()
        # `--policy baseline` on this surface is the configured LambdaRank version.
        target = resolve_policy(parse_policy_spec("baseline"), data_dir, config.surfaces[name])
        assert target.policy_version == f"baseline@{version[name]}"


def test_a_configured_version_that_does_not_load_stops_the_start(tmp_path: Path, model_bytes: bytes) -> None:
    missing = ServiceConfig(surfaces={"default": SurfaceConfig(model=ModelConfig(baseline="v000009-0123abcd"))})
    with pytest.raises(ConfigError, match=r"surfaces\.default\.model\.baseline: v000009-0123abcd does not load"):
        DecisionService(missing, tmp_path, learner="off", watch_models=False)
    version = _publish(tmp_path, "default", b'{"format": "something-else"}')
    broken = ServiceConfig(surfaces={"default": SurfaceConfig(model=ModelConfig(baseline=version))})
    with pytest.raises(ConfigError, match=f"{version} does not load.*not a lambdarank-v1 model"):
        DecisionService(broken, tmp_path, learner="off", watch_models=False)
    with pytest.raises(ConfigError, match="model.baseline: must be a published LambdaRank version"):
        ModelConfig(baseline="latest")


class _Failing:
    def score(self, request: pb.RankRequest) -> np.ndarray:
        raise MemoryError("no room for the trees")


def test_a_failing_learned_baseline_leaves_the_host_order_and_says_so() -> None:
    surface = SurfaceConfig()
    policy = DecisionPolicy(surface="default", policy_version="v", scorer=_Failing(), explorer=Greedy(),
                            exploration=surface.exploration, cap=0.0, baseline=_Failing(),
                            baseline_version="v000001-00000000")
    request = _requests("default", 1)[0]
    host = np.array([c.baseline_score for c in request.candidates])
    decision = decide_baseline(policy, request, host, draw_key=1, mode=pb.SERVING_MODE_BASELINE, check=False)
    assert [s.candidate_index for s in decision.slots] == list(baseline_order(host, request.slate_size))
    assert decision.baseline_version == ""  # the host's score ordered it: replay uses the host's, as served
    assert decision.fallback_reason == "baseline_error: v000001-00000000: MemoryError: no room for the trees"
    target = target_scores(policy, request)  # replay: the model fails, then the baseline, then the host's score
    assert target.fell_back and np.array_equal(target.scores, host)
