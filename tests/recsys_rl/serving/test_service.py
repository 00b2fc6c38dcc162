"""DecisionService without gRPC: caps survive restarts and a configuration cannot raise one (invariant 2)."""

from __future__ import annotations

from pathlib import Path

from recsys_rl.caps.store import CapStore
from recsys_rl.config import default_config
from recsys_rl.serving.service import DecisionService


def _service(data_dir: Path, cap: float) -> DecisionService:
    return DecisionService(default_config(exploration_cap=cap), data_dir, learner="off", watch_models=False)


def test_configuration_can_lower_but_not_raise_the_approved_cap(tmp_path: Path) -> None:
    first = _service(tmp_path, 0.1)
    assert first.cap("default") == 0.1
    first.close()
    [initial] = CapStore(tmp_path).history("default")
    assert (initial.new_cap, initial.reason, initial.accepted) == (0.1, "initial configuration", True)

    raised = _service(tmp_path, 0.5)  # e.g. someone edited the TOML or passed --exploration-cap 0.5
    assert raised.cap("default") == 0.1
    raised.close()

    lowered = _service(tmp_path, 0.02)  # lowering never needs evidence
    assert lowered.cap("default") == 0.02
    lowered.close()
    assert len(CapStore(tmp_path).history("default")) == 1  # only changes through the admin API are audited
