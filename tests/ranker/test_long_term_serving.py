"""Serving the slate-RL long-term value (λ > 0) end to end, on a model trained from a log dir the server wrote.

A real server logs simulated host traffic (clicks, dwell, session ends, return visits); SlateQ trains 200 steps
on those logs; servers with λ = 0 and λ > 0 then serve copies of that data dir (same VW version, no learning).
Checks: the blend is exactly score(λ) = score(0) + λ·Q(s, i) and changes some orderings; logged propensities
stay the truth with λ > 0 (as in test_propensity_truth); a hot reload under load drops no request; a corrupt
checkpoint is refused and the old model keeps serving.
"""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from logging_schema.reader import read_log
from logging_schema.rewards import RewardDefinition
from recsys_rl.config import ExplorationConfig, ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.registry import ModelRegistry
from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.host import run_host
from recsys_rl.slateq import SURFACE as SLATEQ
from recsys_rl.slateq.serving import SlateQValue
from recsys_rl.slateq.train import TrainConfig, train_from_data_dir

LAMBDA = 2.0
REWARD = RewardDefinition(weights={"click": 1.0, "dwell_seconds": 0.0, "session_end": 0.0, "return_visit": 0.0})


def _surface(weight: float, *, cap: float = 0.0, exploration: ExplorationConfig | None = None) -> ServiceConfig:
    surface = SurfaceConfig(exploration_cap=cap, exploration=exploration or ExplorationConfig(), reward=REWARD,
                            model=ModelConfig(learn=False, long_term_weight=weight), decision_budget_ms=60_000)
    return ServiceConfig(surfaces={"default": surface}, seed=5)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose logs come from a real server and whose models hold a SlateQ version trained on them."""
    from ranker.server import RankingServer
    from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
    from recsys_rl.serving.service import DecisionService
    import grpc

    data_dir = tmp_path_factory.mktemp("long_term")
    server = RankingServer(DecisionService(_surface(0.0, cap=0.2), data_dir, learner="off"),
                           host="127.0.0.1", port=0).start()
    channel = grpc.insecure_channel(server.address)
    stats = run_host(pb_grpc.RankingServiceStub(channel), World(SimConfig(n_users=60, n_items=80), seed=3),
                     n_requests=1200, report_dwell=True, report_return_visit=True, report_session_end=True)
    channel.close()
    server.stop(grace_s=5.0)
    assert stats.outcomes_reported["return_visit"] > 0 and stats.outcomes_reported["click"] > 0
    result, checkpoint = train_from_data_dir(data_dir, TrainConfig(steps=200, batch_size=64, seed=1), progress=False)
    assert checkpoint is not None and result.steps == 200 and len(result.dataset) == 1200
    return data_dir


def _copy(trained_dir: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(trained_dir / "models", target / "models")  # models only: each server writes its own logs
    return target


def _requests(trained_dir: Path, n: int, *, candidates: int | None = None, slate: int = 5) -> list[pb.RankRequest]:
    requests = []
    for event in read_log(trained_dir / "logs").decisions[:n]:
        request = pb.RankRequest(request_id=f"r-{event.event_id}", surface="default", user_id=event.user_id,
                                 context=event.context, slate_size=slate)
        request.candidates.extend(event.candidates[:candidates])
        requests.append(request)
    return requests


def _scores(response: pb.RankResponse) -> dict[str, float]:
    return {item.item_id: item.score for item in response.slate}


def test_blend_adds_lambda_times_q_and_changes_some_orderings(trained_dir: Path, tmp_path: Path,
                                                              start_server) -> None:  # noqa: ANN001
    bandit = start_server(_surface(0.0), data_dir=_copy(trained_dir, tmp_path, "bandit"), learner="off")
    blended = start_server(_surface(LAMBDA), data_dir=_copy(trained_dir, tmp_path, "blend"), learner="off")
    checkpoint = ModelRegistry(trained_dir / "models").latest(SLATEQ)
    q_model = SlateQValue.from_checkpoint(checkpoint)
    differ = 0
    requests = _requests(trained_dir, 60, slate=30)  # slate = all candidates: every item's score is visible
    for request in requests:
        plain, mixed = bandit.stub.Rank(request, timeout=10), blended.stub.Rank(request, timeout=10)
        assert mixed.serving_mode == pb.SERVING_MODE_LEARNED
        q = dict(zip([c.item_id for c in request.candidates], q_model.values(request), strict=True))
        plain_scores, mixed_scores = _scores(plain), _scores(mixed)
        for item_id, score in mixed_scores.items():  # cap 0: greedy, so the order is by the blended score
            assert score == pytest.approx(plain_scores[item_id] + LAMBDA * q[item_id], abs=1e-6)
        differ += [i.item_id for i in plain.slate] != [i.item_id for i in mixed.slate]
    assert differ >= len(requests) // 2, differ


def test_propensities_are_the_truth_with_long_term_value(trained_dir: Path, tmp_path: Path,
                                                         start_server) -> None:  # noqa: ANN001
    n_requests, n_candidates, slate = 3000, 8, 3
    config = _surface(LAMBDA, cap=0.5, exploration=ExplorationConfig(algorithm="softmax", temperature=1.0))
    running = start_server(config, data_dir=_copy(trained_dir, tmp_path, "truth"), learner="off")
    template = _requests(trained_dir, 1, candidates=n_candidates, slate=slate)[0]
    inverse = np.zeros((n_requests, slate))
    top_counts: Counter[str] = Counter()
    top_propensity: dict[str, float] = {}
    for i in range(n_requests):
        template.request_id = f"truth-{i}"  # only the request id (hence the draw) differs
        response = running.stub.Rank(template, timeout=10)
        assert response.serving_mode == pb.SERVING_MODE_LEARNED
        inverse[i] = [1.0 / item.propensity for item in response.slate]
        top = response.slate[0]
        top_counts[top.item_id] += 1
        assert top_propensity.setdefault(top.item_id, top.propensity) == pytest.approx(top.propensity, abs=1e-12)
    # E[1/p(drawn)] = items left at slot k; tolerance 5 standard errors of the mean.
    for k in range(slate):
        mean, sem = inverse[:, k].mean(), inverse[:, k].std(ddof=1) / np.sqrt(n_requests)
        assert abs(mean - (n_candidates - k)) <= 5 * sem + 1e-9, (k, mean, sem)
    assert sum(top_propensity.values()) == pytest.approx(1.0, abs=1e-9)
    items = sorted(top_counts)
    observed = np.array([top_counts[i] for i in items], dtype=float)
    expected = np.array([top_propensity[i] for i in items]) * n_requests
    assert stats.chisquare(observed, expected).pvalue > 1e-3  # fixed seed; alpha = 0.001
    # The long-term term matters here: the top slot is not uniform (softmax over blended scores).
    assert max(top_propensity.values()) > 1.5 / n_candidates


def test_hot_reload_under_load_drops_no_request_and_corrupt_checkpoints_are_refused(
        trained_dir: Path, tmp_path: Path, start_server) -> None:  # noqa: ANN001
    data_dir = _copy(trained_dir, tmp_path, "reload")
    # No queue limit: two hammering clients beside in-process training can queue a Rank past 50 ms on a loaded
    # machine, and an admission refusal (RESOURCE_EXHAUSTED, tested in test_overload) is not what this test is about.
    running = start_server(_surface(LAMBDA), data_dir=data_dir, learner="off", max_queue_wait_ms=None)
    service = running.server.service
    registry = ModelRegistry(data_dir / "models")
    old = registry.latest(SLATEQ)
    requests = _requests(trained_dir, 20)
    before = [running.stub.Rank(r, timeout=10) for r in requests]

    # A new version (retrained with another seed) swapped in while two clients keep ranking.
    errors: list[BaseException] = []
    modes: Counter[int] = Counter()
    stop = threading.Event()

    def hammer() -> None:
        i = 0
        while not stop.is_set():
            try:
                modes[running.stub.Rank(requests[i % len(requests)], timeout=10).serving_mode] += 1
            except BaseException as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)
            i += 1

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        shutil.copytree(trained_dir / "logs", data_dir / "train" / "logs")
        _, new = train_from_data_dir(data_dir / "train", TrainConfig(steps=50, batch_size=64, seed=9), progress=False)
        assert new is not None
        fresh = registry.publish(SLATEQ, (data_dir / "train" / "models" / SLATEQ / new.version / "model.bin")
                                 .read_bytes(), parent=old.version, data_range={}, parameters={"seed": 9})
        swapped = service.refresh_models()  # the watcher may have swapped first: then there is nothing to do
        assert swapped in ([f"slateq={fresh.version}"], [])
        assert service.load_long_term() == fresh.version  # the latest, now serving
        during = sum(modes.values())
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == [] and during > 0
    assert set(modes) == {pb.SERVING_MODE_LEARNED}, modes  # no baseline fallback either
    after = [running.stub.Rank(r, timeout=10) for r in requests]
    assert any(_scores(a) != _scores(b) for a, b in zip(after, before, strict=True))  # the new Q serves

    # A corrupt checkpoint: refused, the previous version keeps serving with identical scores.
    registry.publish(SLATEQ, b"\x00 not a checkpoint", parent=fresh.version, data_range={}, parameters={})
    assert [s for s in service.refresh_models() if s.startswith("slateq")] == []
    again = [running.stub.Rank(r, timeout=10) for r in requests]
    for a, b in zip(again, after, strict=True):
        assert a.serving_mode == pb.SERVING_MODE_LEARNED
        assert _scores(a) == pytest.approx(_scores(b))


def test_replay_of_a_blended_surface_repeats_every_logged_propensity(trained_dir: Path, tmp_path: Path,
                                                                    start_server) -> None:  # noqa: ANN001
    """λ > 0 replays exactly: each decision's slate-RL version and the click history its user state was built from
    are logged, so `logged` reproduces the propensities bit for bit, across a slate-RL hot swap and while users'
    histories grow (the old replay used the latest model and an empty history)."""
    from evaluators.replay.run import replay

    config = _surface(LAMBDA, cap=0.5, exploration=ExplorationConfig(algorithm="softmax", temperature=1.0))
    data_dir = _copy(trained_dir, tmp_path, "replay")
    running = start_server(config, data_dir=data_dir, learner="off")
    registry = ModelRegistry(data_dir / "models")
    requests = _requests(trained_dir, 40, candidates=10, slate=3)

    def serve_and_click(round_: int) -> None:
        for i, request in enumerate(requests):
            request.request_id = f"r{round_}-{i}"
            response = running.stub.Rank(request, timeout=10)
            assert response.serving_mode == pb.SERVING_MODE_LEARNED
            running.stub.ReportOutcome(pb.ReportOutcomeRequest(
                event_id=response.event_id, item_id=response.slate[i % 3].item_id, outcome="click", value=1.0))

    serve_and_click(0)
    serve_and_click(1)
    shutil.copytree(trained_dir / "logs", data_dir / "train" / "logs")
    _, new = train_from_data_dir(data_dir / "train", TrainConfig(steps=20, batch_size=64, seed=9), progress=False)
    assert new is not None
    old = registry.latest(SLATEQ)
    registry.publish(SLATEQ, (data_dir / "train" / "models" / SLATEQ / new.version / "model.bin").read_bytes(),
                     parent=old.version, data_range={}, parameters={"seed": 9})
    running.server.service.refresh_models()
    serve_and_click(2)
    running.stop()

    events = read_log(data_dir / "logs").decisions
    assert len({e.long_term.model_version for e in events}) == 2  # both slate-RL versions served
    assert sum(len(e.long_term.history) > 0 for e in events) > len(events) // 2  # histories were used
    assert all(e.long_term.weight == LAMBDA for e in events)
    table = replay(data_dir, "logged", surface="default", config=config, progress=False)
    assert table.height == 3 * len(events)
    assert (table["target_pscore"] == table["pscore"]).all()
    assert not table["target_fallback"].any()
    # A what-if at another cap takes the blended scores from the log (issue 11.4): the same table as re-scoring.
    from evaluators.replay.run import ReplayStats

    what_if = ReplayStats()
    fast = replay(data_dir, "logged@cap=0.1", surface="default", config=config, progress=False, stats=what_if)
    rescored = replay(data_dir, "logged@cap=0.1", surface="default", config=config, progress=False,
                      logged_scores=False)
    assert fast.equals(rescored) and (fast["target_pscore"] != fast["pscore"]).any()
    assert (what_if.from_logged_scores, what_if.rescored) == (len(events), 0)
