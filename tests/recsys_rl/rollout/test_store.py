"""RolloutStore: durable stages, a changed config (applied once, never forward), backward vs forward moves, revert,
advance, audit."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from recsys_rl.config import SurfaceConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.rollout.config import RolloutConfig, RolloutState, Stage
from recsys_rl.rollout.store import (
    AUDIT_FILE, CONFIG_ACTOR, CONFIG_FORWARD_REFUSED, ROLLOUT_FILE, GuardrailEvidence, RolloutRefused, RolloutStore,
)

PASSING = GuardrailEvidence([("canary_decisions", True, "600 >= 500"), ("difference_low", True, "-0.002 >= -0.01")],
                            {"difference_low": -0.002})
FAILING = GuardrailEvidence([("canary_decisions", False, "120 < 500"), ("difference_low", True, "ok")])


def _surfaces(stage: str = "canary", share: float = 0.05, **rollout: object) -> dict[str, SurfaceConfig]:
    return {"home": SurfaceConfig(name="home", rollout=RolloutConfig(stage=stage, canary_share=share, **rollout))}


def _open(data_dir: Path, stage: str = "canary", share: float = 0.05, **rollout: object) -> RolloutStore:
    """A (re)start: the store loads the data dir, then the configuration is applied, as DecisionService does."""
    store = RolloutStore(data_dir)
    store.apply_config(_surfaces(stage, share, **rollout))
    return store


def _never() -> GuardrailEvidence:
    raise AssertionError("a backward move must not ask for evidence")


def _moves(store: RolloutStore) -> list[tuple[str, str, float, str, float, str]]:
    return [(e.kind, e.old_stage.value, e.old_canary_share, e.new_stage.value, e.new_canary_share, e.outcome)
            for e in store.history("home")]


def test_first_start_records_the_configured_state_and_a_restart_keeps_changes(tmp_path: Path) -> None:
    store = _open(tmp_path, "canary", 0.05)
    assert store.state("home") == RolloutState(Stage.CANARY, 0.05, False, 1)
    (initial,) = store.history("home")
    assert (initial.kind, initial.actor, initial.reason, initial.accepted) == (
        "initial", "recsys-rl serve", "initial configuration", True)
    store.set("home", Stage.SHADOW, None, actor="alice", reason="pause the canary")

    restarted = _open(tmp_path, "canary", 0.05)  # same config: the approved shadow stays in force
    assert restarted.state("home") == RolloutState(Stage.SHADOW, 0.05, False, 2)
    assert [e.sequence for e in restarted.history()] == [1, 2]  # no second "initial" entry
    snapshot = json.loads((tmp_path / "admin" / ROLLOUT_FILE).read_text())
    assert snapshot == {"audit_sequence": 2, "surfaces": {"home": {
        "stage": "shadow", "canary_share": 0.05, "reverted": False, "sequence": 2}}}


def test_a_changed_config_moves_a_surface_back_audited_once_but_never_forward(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _open(tmp_path, "canary", 0.25)
    with caplog.at_level(logging.WARNING, logger="recsys_rl.rollout.store"):
        forward = _open(tmp_path, "live")  # forward by config: not applied, recorded as seen
    assert forward.state("home") == RolloutState(Stage.CANARY, 0.25, False, 1)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "surfaces.home.rollout.stage = live is forward" in warning and "serving canary (share 0.25)" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recsys_rl.rollout.store"):
        assert _open(tmp_path, "live").state("home").stage is Stage.CANARY  # unchanged since: no entry, no warning
    assert caplog.records == []
    refused = _open(tmp_path, "live").history("home")[-1]
    assert (refused.kind, refused.actor, refused.outcome, refused.new_stage) == (
        "config", CONFIG_ACTOR, "refused", Stage.LIVE)
    assert refused.failed_checks == [CONFIG_FORWARD_REFUSED] and len(_moves(forward)) == 2

    assert _open(tmp_path, "canary", 0.5).state("home").canary_share == 0.25  # a larger share: not applied either
    smaller = _open(tmp_path, "canary", 0.05)  # a smaller share: an audited change, in force from now on
    assert smaller.state("home") == RolloutState(Stage.CANARY, 0.05, False, 4)
    applied = smaller.history("home")[-1]
    assert (applied.kind, applied.actor, applied.outcome, applied.old_canary_share) == (
        "config", CONFIG_ACTOR, "accepted", 0.25)
    assert applied.reason.endswith(": surfaces.home.rollout.canary_share = 0.05")
    assert _open(tmp_path, "canary", 0.05).state("home").sequence == 4  # unchanged: the recorded state stands
    assert [m[5] for m in _moves(smaller)] == ["accepted", "refused", "refused", "accepted"]


def test_an_approved_forward_move_survives_restarts_with_an_unchanged_config(tmp_path: Path) -> None:
    store = _open(tmp_path, "canary", 0.05)
    store.set("home", Stage.LIVE, None, actor="alice", evidence=lambda: PASSING)
    for _ in range(2):  # a worker restarted (twice) with the configuration it started with
        assert _open(tmp_path, "canary", 0.05).state("home") == RolloutState(Stage.LIVE, 0.05, False, 2)
    assert len(RolloutStore(tmp_path).history()) == 2
    back = _open(tmp_path, "shadow", 0.05)  # the configuration moved back: in force, audited, on every process
    assert back.state("home") == RolloutState(Stage.SHADOW, 0.05, False, 3)
    assert store.refresh() and store.state("home") == back.state("home")


def test_workers_starting_together_with_a_changed_config_record_it_once(tmp_path: Path) -> None:
    _open(tmp_path, "live", 0.05)
    stores = [RolloutStore(tmp_path) for _ in range(3)]  # loaded before any of them applied the configuration
    for store in stores:
        store.apply_config(_surfaces("shadow", 0.05))
    assert {store.state("home") for store in stores} == {RolloutState(Stage.SHADOW, 0.05, False, 2)}
    assert [m[0] for m in _moves(RolloutStore(tmp_path))] == ["initial", "config"]


def test_a_config_does_not_re_arm_a_reverted_surface(tmp_path: Path) -> None:
    _open(tmp_path, "canary", 0.05).revert("home", reason="canary worse")
    assert _open(tmp_path, "canary", 0.1).state("home") == RolloutState(Stage.BASELINE, 0.05, True, 2)  # forward
    assert _open(tmp_path, "baseline", 0.05).state("home") == RolloutState(Stage.BASELINE, 0.05, True, 4)


@pytest.mark.parametrize(("start", "stage", "share"), [
    ("live", Stage.CANARY, 0.9), ("canary", Stage.CANARY, 0.01), ("canary", Stage.SHADOW, None),
    ("canary", Stage.BASELINE, 0.9), ("canary", None, 0.2), ("canary", None, 0.25), ("shadow", Stage.SHADOW, 1.0)])
def test_backward_moves_are_accepted_at_once_without_evidence(tmp_path: Path, start: str, stage: Stage | None,
                                                               share: float | None) -> None:
    """Toward baseline, a smaller canary share, or no move at all (a share outside canary reaches no one)."""
    store = _open(tmp_path, start, 0.25)
    entry = store.set("home", stage, share, actor="alice", reason="back", evidence=_never)
    expected = RolloutState(stage or Stage(start), 0.25 if share is None else share, False, 2)
    assert entry.accepted and store.state("home") == expected and entry.evidence_json == ""
    assert (entry.actor, entry.reason, entry.automatic) == ("alice", "back", False)


def test_forward_moves_need_passing_evidence_and_refusals_are_audited(tmp_path: Path) -> None:
    store = _open(tmp_path, "shadow", 0.05)
    with pytest.raises(RolloutRefused, match="no guardrail evidence") as refused:
        store.set("home", Stage.CANARY, None, actor="bob", reason="go")
    assert refused.value.failed_checks == ["guardrail: no guardrail evidence is available for this surface"]
    with pytest.raises(RolloutRefused, match="canary_decisions: 120 < 500") as refused:
        store.set("home", Stage.CANARY, 0.1, actor="bob", evidence=lambda: FAILING)
    assert refused.value.failed_checks == ["canary_decisions: 120 < 500"]  # passing checks are not listed
    assert store.state("home").stage is Stage.SHADOW
    with pytest.raises(RolloutRefused):  # no checks at all is not a pass
        store.set("home", Stage.CANARY, None, actor="bob", evidence=lambda: GuardrailEvidence([]))

    accepted = store.set("home", Stage.CANARY, 0.1, actor="bob", reason="shadow held", evidence=lambda: PASSING)
    assert store.state("home") == RolloutState(Stage.CANARY, 0.1, False, accepted.sequence)
    assert json.loads(accepted.evidence_json)["estimates"] == {"difference_low": -0.002}
    with pytest.raises(RolloutRefused):  # a larger share at canary is forward too
        store.set("home", None, 0.25, actor="bob", evidence=lambda: FAILING)

    reopened = RolloutStore(tmp_path)
    assert _moves(reopened) == [
        ("initial", "shadow", 0.05, "shadow", 0.05, "accepted"), ("set", "shadow", 0.05, "canary", 0.05, "refused"),
        ("set", "shadow", 0.05, "canary", 0.1, "refused"), ("set", "shadow", 0.05, "canary", 0.05, "refused"),
        ("set", "shadow", 0.05, "canary", 0.1, "accepted"), ("set", "canary", 0.1, "canary", 0.25, "refused")]
    refusal = reopened.history("home")[2]
    assert refusal.actor == "bob" and json.loads(refusal.evidence_json)["checks"][0]["passed"] is False
    assert reopened.approved("home") == RolloutState(Stage.CANARY, 0.1, False, 5)


def test_revert_is_automatic_idempotent_survives_a_restart_and_a_person_re_arms(tmp_path: Path) -> None:
    store = _open(tmp_path, "canary", 0.05)
    evidence = json.dumps({"difference_high": -0.03, "tolerance": 0.01})
    entry = store.revert("home", reason="canary worse than control", evidence_json=evidence)
    assert entry is not None and entry.automatic and entry.reverted and entry.kind == "revert"
    assert entry.actor == "recsys-rl guardrail" and entry.evidence_json == evidence
    assert store.state("home") == RolloutState(Stage.BASELINE, 0.05, True, 2)
    assert store.revert("home", reason="again", evidence_json=evidence) is None  # already at baseline
    assert len(store.history("home")) == 2

    restarted = _open(tmp_path, "canary", 0.05)  # the config cannot re-arm it
    assert restarted.state("home") == RolloutState(Stage.BASELINE, 0.05, True, 2)
    with pytest.raises(RolloutRefused):
        restarted.set("home", Stage.CANARY, None, actor="carol")
    rearmed = restarted.set("home", Stage.CANARY, 0.01, actor="carol", reason="fixed", evidence=lambda: PASSING)
    assert not rearmed.reverted and restarted.state("home").reverted is False


def test_advance_follows_the_ramp_when_auto_advance_is_on_and_the_guardrail_held(tmp_path: Path) -> None:
    off = _open(tmp_path / "off", "canary", 0.01)
    assert off.advance("home", evidence=lambda: PASSING) is None  # auto_advance is off by default

    store = _open(tmp_path / "on", "canary", 0.01, auto_advance=True, ramp=[0.01, 0.05, 0.25, 1.0])
    assert store.advance("home", evidence=lambda: FAILING) is None
    assert len(store.history("home")) == 1  # a failed automatic attempt is not a change
    steps = []
    while (entry := store.advance("home", evidence=lambda: PASSING)) is not None:
        assert entry.automatic and entry.kind == "advance" and entry.evidence_json
        steps.append((entry.new_stage.value, entry.new_canary_share))
    assert steps == [("canary", 0.05), ("canary", 0.25), ("live", 0.25)]  # share 1.0 is live


def test_a_torn_audit_line_is_skipped_and_a_stale_snapshot_rolls_forward(tmp_path: Path) -> None:
    store = _open(tmp_path, "canary", 0.25)
    snapshot = (tmp_path / "admin" / ROLLOUT_FILE).read_text()
    store.set("home", Stage.SHADOW, None, actor="alice")
    (tmp_path / "admin" / ROLLOUT_FILE).write_text(snapshot)  # crash between the audit append and the rename
    assert RolloutStore(tmp_path).approved("home").stage is Stage.SHADOW  # type: ignore[union-attr]

    audit = tmp_path / "admin" / AUDIT_FILE
    with audit.open("a") as out:
        out.write('{"sequence": 3, "surface": "ho')  # crash mid-append
    reopened = _open(tmp_path, "canary", 0.25)
    assert reopened.state("home").stage is Stage.SHADOW and reopened.torn_audit_lines == 1
    reopened.set("home", Stage.BASELINE, None, actor="alice")
    assert [e.sequence for e in RolloutStore(tmp_path).history()] == [1, 2, 3]  # fresh line after the torn one
    (tmp_path / "admin" / ROLLOUT_FILE).write_text("{not json")
    assert RolloutStore(tmp_path).approved("home").stage is Stage.BASELINE  # type: ignore[union-attr]


def test_concurrent_changes_get_consecutive_sequences_and_another_store_sees_them(tmp_path: Path) -> None:
    store = _open(tmp_path, "live", 1.0)
    other = _open(tmp_path, "live", 1.0)  # a second worker process on the same data dir
    threads = [threading.Thread(target=store.set, args=("home", Stage.CANARY, 0.5 - i / 100),
                                kwargs={"actor": f"t{i}"}) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [e.sequence for e in store.history()] == list(range(1, 10))
    other.set("home", Stage.SHADOW, None, actor="other")  # writes adopt the other process's changes first
    assert other.history()[-1].old_stage is Stage.CANARY and store.history()[-1].sequence == 10


def test_bad_input_names_the_field(tmp_path: Path) -> None:
    store = _open(tmp_path)
    with pytest.raises(InvalidInput, match="^canary_share:"):
        store.set("home", None, float("nan"), actor="a")
    with pytest.raises(InvalidInput, match="^canary_share:"):
        store.set("home", None, 1.5, actor="a")
    with pytest.raises(InvalidInput, match="^stage:.*baseline, shadow, canary, live"):
        store.set("home", "paused", None, actor="a")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="^actor:"):
        store.set("home", Stage.BASELINE, None, actor=" ")
    with pytest.raises(InvalidInput, match="^surface:"):
        store.set("nope", Stage.BASELINE, None, actor="a")
    with pytest.raises(InvalidInput, match="^surface:"):
        store.state("nope")
    assert len(store.history()) == 1  # nothing malformed is audited


def test_surfaces_in_the_store_but_not_configured_are_ignored(tmp_path: Path) -> None:
    _open(tmp_path)
    store = RolloutStore(tmp_path)
    store.apply_config({"other": replace(SurfaceConfig(name="other"), rollout=RolloutConfig(stage="shadow"))})
    assert store.state("other").stage is Stage.SHADOW
    with pytest.raises(InvalidInput):
        store.state("home")


def test_refresh_adopts_another_processs_revert(tmp_path: Path) -> None:
    serving = _open(tmp_path, "canary", 0.05)
    guardrail = _open(tmp_path, "canary", 0.05)  # e.g. the worker whose guardrail fired
    assert serving.refresh() is False  # nothing new: one stat, no reload
    guardrail.revert("home", reason="canary worse")
    assert serving.state("home").stage is Stage.CANARY  # its own copy until it looks
    assert serving.refresh() is True
    assert serving.state("home") == RolloutState(Stage.BASELINE, 0.05, True, 2)
    assert serving.refresh() is False


def test_two_workers_advancing_at_once_make_one_ramp_step(tmp_path: Path) -> None:
    first = _open(tmp_path, "canary", 0.01, auto_advance=True, ramp=[0.01, 0.05, 0.25, 1.0])
    second = _open(tmp_path, "canary", 0.01, auto_advance=True, ramp=[0.01, 0.05, 0.25, 1.0])
    judged = second.state("home").sequence  # both guardrails held on the state they serve
    assert first.advance("home", evidence=lambda: PASSING, expected_sequence=judged) is not None
    assert second.advance("home", evidence=lambda: PASSING, expected_sequence=judged) is None  # moved already
    assert second.state("home").canary_share == 0.05  # adopted under the lock
    assert [m[0] for m in _moves(second)] == ["initial", "advance"]
