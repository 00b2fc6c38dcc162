"""A restarted process serves what the running ones serve (issue 11 item 2): the configuration changes the shared
caps and rollout state only when it changed since the last start.

Real processes on one data dir: a real server (RankingServer on 127.0.0.1:0) and second Python processes
(``tests/ranker/admin_worker.py``: the store calls another worker makes, at start and through its admin API). What
the server serves is read from its Rank responses and its service; what the other process serves from its ``show``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from ranker.server import RankingServer
from recsys_rl.caps.store import CONFIG_ACTOR, CapStore
from recsys_rl.config import ServiceConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.rollout.config import RolloutConfig
from recsys_rl.rollout.store import RolloutStore
from recsys_rl.serving.service import DecisionService
from tests.helpers import make_request
from tests.ranker.test_shared_state import CONFIG, N, SLATE, stand_ins

MODES = {"live": pb.SERVING_MODE_LEARNED, "shadow": pb.SERVING_MODE_SHADOW}


def _configured(cap: float, stage: str, share: float) -> ServiceConfig:
    return replace(CONFIG, surfaces={"default": replace(CONFIG.surfaces["default"], exploration_cap=cap,
                                                        rollout=RolloutConfig(stage=stage, canary_share=share))})


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[ServiceConfig], Callable[[], dict[str, Any]]]]:
    """``serve(config)`` (re)starts the server on ``tmp_path/data`` (stopping the previous one) and returns a function
    that reports what it serves: the cap and rollout state of its service, checked against its Rank responses."""
    running: list[tuple[RankingServer, grpc.Channel]] = []

    def stop() -> None:
        while running:
            server, channel = running.pop()
            channel.close()
            server.stop(grace_s=5)

    def start(config: ServiceConfig) -> Callable[[], dict[str, Any]]:
        stop()
        service = DecisionService(config, tmp_path / "data", learner="off", watch_models=False)
        server = RankingServer(service).start()
        channel = grpc.insecure_channel(server.address)
        running.append((server, channel))
        ranking = pb_grpc.RankingServiceStub(channel)

        def serves() -> dict[str, Any]:
            service.refresh_admin_state()  # what the watcher's tick does (off here: the test decides when)
            state = service.rollout.state("default")
            served = [ranking.Rank(make_request(N, SLATE, request_id=f"r{i}"), timeout=10) for i in range(5)]
            assert all(r.exploration_cap == pytest.approx(service.cap("default")) for r in served)
            assert {r.serving_mode for r in served} == {MODES[state.stage.value]}
            return {"cap": pytest.approx(service.cap("default")), "stage": state.stage.value,
                    "share": state.canary_share}

        return serves

    yield start
    stop()


def _shown(reply: dict[str, Any]) -> dict[str, Any]:
    return {key: reply[key] for key in ("cap", "stage", "share")}


def test_a_restarted_process_serves_what_a_running_one_serves(serve, tmp_path: Path) -> None:
    """With the configuration unchanged, a gate-approved raise above the configured cap and an approved forward move
    past the configured stage keep serving after a restart; a configuration lowered between starts is applied once
    and adopted by the running process."""
    configured = _configured(0.5, "canary", 0.1)
    serve(configured)
    with stand_ins(tmp_path / "data", "bob") as (bob,):
        bob.call("cap", surface="default", cap=0.8)  # the gate passed for 0.8 (the stand-in does not judge)
        bob.call("stage", surface="default", stage="live")  # the guardrail held (the stand-in vouches)
        restarted = serve(configured)  # a restarted worker, same configuration
        assert restarted() == _shown(bob.call("show", surface="default")) == {
            "cap": pytest.approx(0.8), "stage": "live", "share": 0.1}

        lowered = serve(_configured(0.3, "shadow", 0.1))()  # the configuration lowered both
        assert lowered == {"cap": pytest.approx(0.3), "stage": "shadow", "share": 0.1}
        assert _shown(bob.call("show", surface="default")) == lowered  # the running process adopted it
    caps = CapStore(tmp_path / "data").history("default")
    assert [(e.actor, e.new_cap) for e in caps] == [("recsys-rl serve", 0.5), ("bob", 0.8), (CONFIG_ACTOR, 0.3)]
    rollout = RolloutStore(tmp_path / "data").history("default")
    assert [(e.actor, e.new_stage.value) for e in rollout] == [
        ("recsys-rl serve", "canary"), ("bob", "live"), (CONFIG_ACTOR, "shadow")]


def test_workers_starting_together_apply_a_changed_configuration_once(tmp_path: Path) -> None:
    """Two real processes start with the same changed configuration at once, round after round: each change is one
    audit entry per trail (the second process finds it under the admin lock), a raise or a forward move is refused
    once and not applied, and both serve the same state."""
    data = tmp_path / "data"
    rounds = [  # (configured cap, stage, share) -> what serves
        ((0.5, "live", 0.05), (0.5, "live", 0.05)), ((0.4, "canary", 0.5), (0.4, "canary", 0.5)),
        ((0.45, "canary", 0.5), (0.4, "canary", 0.5)), ((0.45, "canary", 0.25), (0.4, "canary", 0.25)),
        ((0.45, "live", 0.25), (0.4, "canary", 0.25)), ((0.2, "shadow", 0.25), (0.2, "shadow", 0.25))]
    with stand_ins(data, "ann", "bob") as (ann, bob):
        for (cap, stage, share), (cap_in_force, stage_in_force, share_in_force) in rounds:
            ann.send("start", surface="default", cap=cap, stage=stage, share=share)
            bob.send("start", surface="default", cap=cap, stage=stage, share=share)
            served = [_shown(reply) for reply in (ann.reply(), bob.reply())]
            assert served == [{"cap": pytest.approx(cap_in_force), "stage": stage_in_force,
                               "share": share_in_force}] * 2, (cap, stage, share)
    caps = CapStore(data).history("default")
    assert [(e.kind, e.outcome, e.new_cap) for e in caps] == [
        ("initial", "accepted", 0.5), ("config", "accepted", 0.4), ("config", "refused", 0.45),
        ("config", "accepted", 0.2)]  # rounds 4 and 5 left the cap's configuration as round 3's: no entry
    rollout = RolloutStore(data).history("default")
    assert [(e.kind, e.outcome, e.new_stage.value, e.new_canary_share) for e in rollout] == [
        ("initial", "accepted", "live", 0.05), ("config", "accepted", "canary", 0.5),
        ("config", "accepted", "canary", 0.25), ("config", "refused", "live", 0.25),
        ("config", "accepted", "shadow", 0.25)]  # round 3 left the rollout's configuration as round 2's
