"""CapStore: durable caps, the audit log as write-ahead record, torn lines, and a configuration applied at start only
when it changed (lower: audited once; higher: not applied)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from recsys_rl.caps.store import AUDIT_FILE, CAPS_FILE, CONFIG_ACTOR, CONFIG_RAISE_REFUSED, CapStore, check_cap
from recsys_rl.config import default_config
from recsys_rl.serving.service import DecisionService


def _record(store: CapStore, new_cap: float, *, outcome: str = "accepted", surface: str = "default",
            old_cap: float = 0.1) -> None:
    store.record(surface=surface, actor="alice", old_cap=old_cap, new_cap=new_cap, reason="why",
                 evidence_digest="ab" * 32 if outcome == "refused" else "", outcome=outcome,  # type: ignore[arg-type]
                 failed_checks=["ess: too small"] if outcome == "refused" else None)


def test_accepted_caps_persist_and_refusals_are_audited(tmp_path: Path) -> None:
    store = CapStore(tmp_path)
    _record(store, 0.05)
    _record(store, 0.3, outcome="refused", old_cap=0.05)
    _record(store, 0.02, surface="other")
    assert store.caps() == {"default": 0.05, "other": 0.02}

    reopened = CapStore(tmp_path)  # a restart
    assert reopened.caps() == {"default": 0.05, "other": 0.02}
    history = reopened.history("default")
    assert [(e.sequence, e.outcome, e.old_cap, e.new_cap) for e in history] == [
        (1, "accepted", 0.1, 0.05), (2, "refused", 0.05, 0.3)]
    assert history[1].failed_checks == ["ess: too small"] and history[1].evidence_digest == "ab" * 32
    assert history[0].actor == "alice" and history[0].reason == "why" and history[0].time_unix > 0
    assert [e.sequence for e in reopened.history()] == [1, 2, 3]
    assert [e.sequence for e in reopened.history("default", limit=1)] == [2]
    snapshot = json.loads((tmp_path / "admin" / CAPS_FILE).read_text())
    assert snapshot == {"audit_sequence": 3, "caps": {"default": 0.05, "other": 0.02}}
    _record(reopened, 0.01)
    assert reopened.history()[-1].sequence == 4  # the sequence continues after a restart


def test_audit_log_rolls_a_stale_snapshot_forward(tmp_path: Path) -> None:
    store = CapStore(tmp_path)
    _record(store, 0.05)
    snapshot = (tmp_path / "admin" / CAPS_FILE).read_text()
    _record(store, 0.01, old_cap=0.05)
    # A crash after the audit append but before the snapshot rename: the old snapshot is on disk.
    (tmp_path / "admin" / CAPS_FILE).write_text(snapshot)
    assert CapStore(tmp_path).caps() == {"default": 0.01}
    # An unreadable snapshot is rebuilt from the audit log alone.
    (tmp_path / "admin" / CAPS_FILE).write_text("{not json")
    assert CapStore(tmp_path).caps() == {"default": 0.01}


def test_a_torn_audit_line_is_skipped_and_the_next_entry_starts_a_new_line(tmp_path: Path) -> None:
    store = CapStore(tmp_path)
    _record(store, 0.05)
    audit = tmp_path / "admin" / AUDIT_FILE
    with open(audit, "a") as handle:
        handle.write('{"sequence": 2, "surf')  # a crash mid-append
    reopened = CapStore(tmp_path)
    assert reopened.caps() == {"default": 0.05}
    assert reopened.torn_audit_lines == 1
    _record(reopened, 0.04, old_cap=0.05)
    again = CapStore(tmp_path)
    assert again.caps() == {"default": 0.04}
    assert [e.new_cap for e in again.history()] == [0.05, 0.04]
    assert again.torn_audit_lines == 1


def test_files_are_private(tmp_path: Path) -> None:
    store = CapStore(tmp_path)
    _record(store, 0.05)
    assert (tmp_path / "admin" / AUDIT_FILE).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan"), float("inf")])
def test_bad_caps_are_refused_naming_the_field(bad: float, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cap: must be a number in \\[0, 1\\]"):
        check_cap(bad)
    store = CapStore(tmp_path)
    with pytest.raises(ValueError, match="new_cap"):
        _record(store, bad)
    assert store.history() == [] and store.caps() == {}


def test_stored_caps_apply_over_configured_ones_at_start(tmp_path: Path) -> None:
    store = CapStore(tmp_path)
    _record(store, 0.03)
    _record(store, 0.2, surface="gone")  # a surface the configuration no longer has: ignored, kept on disk
    service = DecisionService(default_config(exploration_cap=0.1), tmp_path, learner="off", watch_models=False)
    try:
        from tests.helpers import make_request

        assert service.cap("default") == pytest.approx(0.03)
        assert CapStore(tmp_path).caps() == {"default": 0.03, "gone": 0.2}
        decision, _ = service.rank(make_request())
        assert decision.cap == pytest.approx(0.03)
    finally:
        service.close()


def test_refresh_puts_another_stores_changes_in_force_in_order_and_is_a_stat_otherwise(tmp_path: Path) -> None:
    put: list[tuple[str, float]] = []
    serving = CapStore(tmp_path, on_change=lambda surface, cap: put.append((surface, cap)))
    other = CapStore(tmp_path)  # another worker on the data dir
    assert serving.refresh() == {}
    _record(other, 0.05)
    _record(other, 0.3, outcome="refused", old_cap=0.05)  # audited, never in force
    _record(other, 0.02, old_cap=0.05)
    assert put == [] and serving.caps() == {}  # its own view until it looks
    assert serving.refresh() == {"default": 0.02}
    assert put == [("default", 0.05), ("default", 0.02)] and serving.caps() == {"default": 0.02}
    assert serving.refresh() == {} and len(put) == 2


def test_a_change_is_judged_against_the_cap_another_store_put_in_force(tmp_path: Path) -> None:
    in_force = {"default": 0.1}
    serving = CapStore(tmp_path, on_change=in_force.__setitem__)
    _record(CapStore(tmp_path), 0.04)  # another worker lowered the cap; this one has not looked yet
    judged: list[float] = []

    def judge(old: float) -> list[str]:
        judged.append(old)
        return [] if 0.08 <= old else ["evidence: a raise"]

    entry = serving.change("default", 0.08, in_force=in_force.__getitem__, judge=judge, actor="bob", reason="",
                           evidence_digest="")
    assert judged == [0.04] and (entry.old_cap, entry.outcome, entry.sequence) == (0.04, "refused", 2)
    assert in_force == {"default": 0.04} and serving.caps() == {"default": 0.04}
    with pytest.raises(ValueError, match="new_cap"):
        serving.change("default", 2.0, in_force=in_force.__getitem__, judge=judge, actor="bob", reason="",
                       evidence_digest="")


def test_workers_starting_together_record_the_initial_cap_once(tmp_path: Path) -> None:
    stores = [CapStore(tmp_path) for _ in range(3)]  # all loaded before any of them applied its configuration
    assert [s.apply_config({"default": 0.1}) for s in stores] == [{"default": 0.1}] * 3
    assert [e.reason for e in CapStore(tmp_path).history()] == ["initial configuration"]
    assert CapStore(tmp_path).apply_config({"default": 0.2}) == {"default": 0.1}  # config cannot raise it


def _raise_by_gate(data_dir: Path, cap: float) -> None:
    """What a worker's SetExplorationCap does once the gate report passed (the judge here: no failed check)."""
    in_force: dict[str, float] = {}
    store = CapStore(data_dir, on_change=in_force.__setitem__)
    in_force.update(store.caps())
    store.change("default", cap, in_force=in_force.__getitem__, judge=lambda old: [], actor="alice",
                 reason="gate passed", evidence_digest="cd" * 32)


def test_a_gate_approved_raise_above_the_configured_cap_survives_restarts(tmp_path: Path) -> None:
    CapStore(tmp_path).apply_config({"default": 0.1})
    _raise_by_gate(tmp_path, 0.3)
    for _ in range(2):  # restarted workers, with the configuration they started with
        assert CapStore(tmp_path).apply_config({"default": 0.1}) == {"default": 0.3}
    assert [e.kind for e in CapStore(tmp_path).history()] == ["initial", "set"]


def test_a_changed_config_lowers_the_cap_audited_once_and_never_raises_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    CapStore(tmp_path).apply_config({"default": 0.1})
    _raise_by_gate(tmp_path, 0.3)
    running = CapStore(tmp_path, on_change=lambda surface, cap: None)  # another worker, serving 0.3
    with caplog.at_level(logging.WARNING, logger="recsys_rl.caps.store"):
        assert CapStore(tmp_path).apply_config({"default": 0.5}) == {"default": 0.3}  # a raise: not applied
        assert CapStore(tmp_path).apply_config({"default": 0.5}) == {"default": 0.3}  # unchanged since: no entry
    [warning] = [r.getMessage() for r in caplog.records]
    assert "surfaces.default.exploration_cap 0.5 is above the cap in force 0.3" in warning
    assert "serving 0.3" in warning
    refused = CapStore(tmp_path).history()[-1]
    assert (refused.kind, refused.actor, refused.outcome, refused.old_cap, refused.new_cap) == (
        "config", CONFIG_ACTOR, "refused", 0.3, 0.5)
    assert refused.failed_checks == [CONFIG_RAISE_REFUSED]

    assert CapStore(tmp_path).apply_config({"default": 0.2}) == {"default": 0.2}  # lower than in force: applied
    lowered = CapStore(tmp_path).history()[-1]
    assert (lowered.kind, lowered.actor, lowered.outcome, lowered.old_cap, lowered.new_cap) == (
        "config", CONFIG_ACTOR, "accepted", 0.3, 0.2)
    assert "surfaces.default.exploration_cap changed to 0.2 (was 0.5)" in lowered.reason
    assert running.refresh() == {"default": 0.2}  # in force on the running worker too
    assert CapStore(tmp_path).apply_config({"default": 0.2}) == {"default": 0.2}
    assert [(e.kind, e.outcome) for e in CapStore(tmp_path).history()] == [
        ("initial", "accepted"), ("set", "accepted"), ("config", "refused"), ("config", "accepted")]


def test_a_trail_written_before_entries_had_a_kind_reads_its_first_start(tmp_path: Path) -> None:
    old_lines = [{"sequence": 1, "time_unix": 1.0, "surface": "default", "actor": "recsys-rl serve", "old_cap": 0.1,
                  "new_cap": 0.1, "reason": "initial configuration", "evidence_digest": "", "outcome": "accepted",
                  "failed_checks": []},
                 {"sequence": 2, "time_unix": 2.0, "surface": "default", "actor": "alice", "old_cap": 0.1,
                  "new_cap": 0.25, "reason": "gate passed", "evidence_digest": "cd" * 32, "outcome": "accepted",
                  "failed_checks": []}]
    (tmp_path / "admin").mkdir()
    (tmp_path / "admin" / AUDIT_FILE).write_text("".join(json.dumps(line) + "\n" for line in old_lines))
    assert [e.kind for e in CapStore(tmp_path).history()] == ["initial", "set"]
    assert CapStore(tmp_path).apply_config({"default": 0.1}) == {"default": 0.25}  # unchanged: the raise stands
    assert len(CapStore(tmp_path).history()) == 2
