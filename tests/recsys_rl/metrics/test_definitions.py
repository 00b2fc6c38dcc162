"""Metrics without a server process: bounded labels, the off switch, the single-process fallback, the sampler."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from recsys_rl.metrics.definitions import ServingMetrics, reason_label
from recsys_rl.metrics.exporter import ENV, configure_multiprocess, metrics_dir
from recsys_rl.metrics.sampler import StateSampler
from tests.helpers import make_request

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("reason", "label"), [
    ("deadline: passed 0.200 ms before sampling", "deadline"),
    ("model_error: RuntimeError: boom", "model_error"),
    ("model_error: non-finite or misshapen scores", "model_error"),
    ("long_term_error: ValueError: x", "long_term_error"),
    ("log_unavailable", "log_unavailable"),
    ("something new: with a free-text tail", "other"),
])
def test_fallback_reasons_are_a_bounded_label_set(reason: str, label: str) -> None:
    assert reason_label(reason) == label


def test_metrics_off_imports_nothing_and_hooks_are_no_ops(tmp_path: Path) -> None:
    """Without --metrics-port nothing imports prometheus_client and the service holds the null hooks."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import ranker.server, recsys_rl.cli\n"
        "from recsys_rl.config import default_config\n"
        "from recsys_rl.metrics.hooks import NO_METRICS\n"
        "from recsys_rl.serving.service import DecisionService\n"
        f"service = DecisionService(default_config(), Path({str(tmp_path)!r}), learner='off', watch_models=False)\n"
        "assert service.metrics is NO_METRICS\n"
        "service.close()\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert not metrics_dir(tmp_path).exists()


def test_configure_falls_back_to_one_process_when_the_client_is_already_imported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(ENV, raising=False)  # this test process imported prometheus_client without the variable
    with caplog.at_level(logging.WARNING):
        assert configure_multiprocess(tmp_path) is None
    assert ENV not in os.environ
    assert "single-process mode" in caplog.text


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_sampler_counts_unlogged_decisions_and_swaps_model_info(start_server) -> None:
    """The sampler copies the guard's unlogged count as counter increments (once each, however often it samples);
    a hot swap turns the old version's info series to 0 and the new one's to 1; the learner lag is the newest
    logged decision's time minus the published model's last learned one."""
    from recsys_rl.serving.bandit import VWBandit

    registry = CollectorRegistry()
    service = start_server(learner="off").server.service
    metrics = ServingMetrics(list(service.surfaces), registry=registry, clock=lambda: 1_000.0)
    sampler = StateSampler(service, metrics)
    sampler.sample()
    first = service.policy_version("default")
    assert _sample(registry, "recsys_rl_model_info", surface="default", version=first) == 1
    assert _sample(registry, "recsys_rl_decisions_unlogged_total") == 0

    decision, _ = service.rank(make_request())
    for _ in range(3):  # what the guard counts when the log cannot take records (tests/ranker/test_disk_full.py)
        service.log_guard.unlogged(decision)
    sampler.sample()
    sampler.sample()
    assert _sample(registry, "recsys_rl_decisions_unlogged_total") == 3

    checkpoint = service.registry.publish("default", VWBandit(service.surfaces["default"].model.vw_args).to_bytes(),
                                          parent=first, data_range={"last_served_at": 940.0}, parameters={})
    service.load_version("default", checkpoint)
    metrics.ranked(decision, 0.001)  # a logged decision served at (the clock's) 1000 s
    sampler.sample()
    assert _sample(registry, "recsys_rl_learner_lag_seconds", surface="default") == pytest.approx(60.0)
    assert _sample(registry, "recsys_rl_model_info", surface="default", version=first) == 0
    assert _sample(registry, "recsys_rl_model_info", surface="default", version=checkpoint.version) == 1
