"""DecisionService without gRPC: caps survive restarts; a configuration changes them only when it changed, and can
lower a cap but never raise it (invariant 2)."""

from __future__ import annotations

from pathlib import Path

from recsys_rl.caps.store import CONFIG_ACTOR, CapStore
from recsys_rl.config import default_config
from recsys_rl.serving.service import DecisionService
from tests.helpers import make_request


def _service(data_dir: Path, cap: float) -> DecisionService:
    return DecisionService(default_config(exploration_cap=cap), data_dir, learner="off", watch_models=False)


def _served_cap(data_dir: Path, cap: float) -> float:
    """A (re)start with configured cap ``cap``: the cap of a decision it serves."""
    service = _service(data_dir, cap)
    try:
        decision, _ = service.rank(make_request())
        assert decision.cap == service.cap("default")
        return decision.cap
    finally:
        service.close()


def test_a_configuration_lowers_a_cap_when_it_changed_and_never_raises_it(tmp_path: Path) -> None:
    assert _served_cap(tmp_path, 0.1) == 0.1
    [initial] = CapStore(tmp_path).history("default")
    assert (initial.new_cap, initial.reason, initial.accepted, initial.kind) == (
        0.1, "initial configuration", True, "initial")

    assert _served_cap(tmp_path, 0.5) == 0.1  # e.g. someone edited the TOML or passed --exploration-cap 0.5
    assert _served_cap(tmp_path, 0.02) == 0.02  # lowering never needs evidence
    assert _served_cap(tmp_path, 0.02) == 0.02
    trail = CapStore(tmp_path).history("default")
    assert [(e.kind, e.actor, e.outcome, e.new_cap) for e in trail] == [
        ("initial", "recsys-rl serve", "accepted", 0.1), ("config", CONFIG_ACTOR, "refused", 0.5),
        ("config", CONFIG_ACTOR, "accepted", 0.02)]  # each configuration once, however many restarts


def test_a_restart_keeps_a_gate_approved_raise_above_the_configured_cap(tmp_path: Path) -> None:
    service = _service(tmp_path, 0.1)
    try:
        # What SetExplorationCap does once the gate report passed (ranker/admin.py; the gate is tested there).
        service.caps.change("default", 0.3, in_force=service.cap, judge=lambda old: [], actor="alice",
                            reason="gate passed", evidence_digest="cd" * 32)
        assert service.cap("default") == 0.3
    finally:
        service.close()
    assert _served_cap(tmp_path, 0.1) == 0.3  # the configuration did not change: the approved raise serves
    assert len(CapStore(tmp_path).history("default")) == 2
