"""Damaged model versions are refused at start and at hot reload, the previous version keeps serving; a learner
whose publish fails keeps learning and publishes once it can. Real VW, real files, real DecisionService."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import pytest

from logging_schema.reader import read_log
from recsys_rl.config import ModelConfig, ServiceConfig, SurfaceConfig, default_config
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.serving.learner import OnlineLearner
from recsys_rl.serving.registry import ModelRegistry, _write_synced
from recsys_rl.serving.service import DecisionService
from tests.helpers import make_request

VW_ARGS = default_config().surfaces["default"].model.vw_args


def _service(data_dir: Path) -> DecisionService:
    return DecisionService(default_config(), data_dir, learner="off", watch_models=False)


def _damage(version_dir: Path, how: str) -> None:
    model = version_dir / "model.bin"
    if how == "truncated":
        model.write_bytes(model.read_bytes()[:50])
    elif how == "manifest unreadable":
        (version_dir / "manifest.json").write_text("{not json")
    else:  # "vw refuses": the checksum matches, but the bytes are no VW model
        garbage = b"\x00this is not a vowpal wabbit model" * 8
        model.write_bytes(garbage)
        manifest = json.loads((version_dir / "manifest.json").read_text())
        manifest["sha256"] = hashlib.sha256(garbage).hexdigest()
        (version_dir / "manifest.json").write_text(json.dumps(manifest))


def _publish_learned(registry: ModelRegistry, parent: str) -> str:
    """A version that differs from the fresh one (so its bytes, and its name, are new)."""
    bandit = VWBandit(VW_ARGS)
    bandit._workspace.learn("shared |C a:1\n0:1:0.5 |I x:1\n|I y:1")  # one update: different weights
    return registry.publish("default", bandit.to_bytes(), parent=parent, data_range={}, parameters={}).version


@pytest.mark.parametrize("how", ["truncated", "manifest unreadable", "vw refuses"])
def test_a_damaged_latest_is_refused_at_start_and_the_newest_that_loads_serves(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    service = _service(tmp_path)
    good = service.policy_version("default")
    service.close()
    registry = ModelRegistry(tmp_path / "models")
    bad = _publish_learned(registry, good)
    _damage(tmp_path / "models" / "default" / bad, how)
    with caplog.at_level(logging.ERROR):
        restarted = _service(tmp_path)
    try:
        assert restarted.policy_version("default") == good
        assert registry.latest_version("default") == good  # LATEST names a version that loads again
        assert restarted.rank(make_request())[0].slots
        assert any(r.levelno == logging.ERROR and bad in r.getMessage() for r in caplog.records), caplog.text
    finally:
        restarted.close()


def test_when_no_version_loads_a_fresh_model_serves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    service = _service(tmp_path)
    only = service.policy_version("default")
    service.close()
    _damage(tmp_path / "models" / "default" / only, "truncated")
    with caplog.at_level(logging.ERROR):
        restarted = _service(tmp_path)
    try:
        fresh = restarted.policy_version("default")
        assert fresh != only and fresh.startswith("v000002-")
        assert ModelRegistry(tmp_path / "models").latest_version("default") == fresh
        assert "no published version loads" in caplog.text and only in caplog.text
    finally:
        restarted.close()


@pytest.mark.parametrize("how", ["truncated", "manifest unreadable", "vw refuses"])
def test_a_damaged_version_is_refused_at_hot_reload_once(tmp_path: Path, how: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    service = _service(tmp_path)
    try:
        good = service.policy_version("default")
        registry = ModelRegistry(tmp_path / "models")
        bad = _publish_learned(registry, good)
        _damage(tmp_path / "models" / "default" / bad, how)
        with caplog.at_level(logging.ERROR):
            for _ in range(5):  # the watcher asks every 250 ms: refused and logged once, not every time
                assert service.refresh_models() == []
        assert service.policy_version("default") == good
        assert sum(bad in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR) == 1
        decision, _ = service.rank(make_request())
        assert decision.policy_version == good
        newer = _publish_learned(registry, bad)  # the learner's next version is picked up as usual
        assert service.refresh_models() == [f"default={newer}"]
    finally:
        service.close()


def test_the_learner_survives_a_failed_publish_and_publishes_later(tmp_path: Path) -> None:
    surface = SurfaceConfig(model=ModelConfig(publish_every=1))
    service = DecisionService(ServiceConfig({"default": surface}), tmp_path, learner="off", watch_models=False)
    parent = service.policy_version("default")
    for i in range(3):
        service.rank(make_request(request_id=f"r{i}"))
    service.close()
    disk_full = True

    def write(path: Path, data: bytes) -> None:
        if disk_full:
            raise OSError(28, "No space left on device")
        _write_synced(path, data)

    registry = ModelRegistry(tmp_path / "models", write_file=write)
    learner = OnlineLearner(surface, VWBandit(VW_ARGS), registry, parent_version=parent)
    decisions = read_log(tmp_path / "logs").decisions
    from recsys_rl.logging.v1 import events_pb2

    for event in decisions[:2]:
        learner.consume(events_pb2.LogRecord(decision=event))
    assert learner.step(time.time() + 3600) == 2  # learned both; each publish attempt failed or backed off
    assert learner.stats.publish_errors == 1 and learner.stats.published == 0
    assert registry.latest_version("default") == parent
    disk_full = False
    learner.consume(events_pb2.LogRecord(decision=decisions[2]))
    assert learner.step(time.time() + 3600) == 1  # inside the backoff: no retry yet
    assert learner.stats.published == 0
    published = learner.publish(force=True)  # what the stop path does; after the backoff, step does the same
    assert published is not None and registry.latest_version("default") == published.version
    assert published.manifest["data_range"]["decisions"] == 3
