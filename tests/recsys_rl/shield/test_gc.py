"""``recsys-rl shield gc``: versions in force, recent ones and those a logged decision names are kept (replay loads
them); the rest are deleted, audited, and a reader loading versions meanwhile gets whole rules or NotFound."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from logging_schema.writer import LogWriter
from recsys_rl.cli import main
from recsys_rl.errors import NotFound
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.shield.gc import referenced_versions
from recsys_rl.shield.rules import ShieldRules, rules_from_dict
from recsys_rl.shield.store import GC_GRACE_S, ShieldStore, load_rules


def _rules(n: int) -> ShieldRules:
    return rules_from_dict({"blocked_items": [f"item-{i}" for i in range(n * 1_000, n * 1_000 + 2_000)]})


def _history(data_dir: Path) -> list[str]:
    """Versions v0 (initial) .. v3 (in force) of surface "default"; a decision in the log names v1."""
    store = ShieldStore(data_dir)
    store.apply_config({"default": _rules(0)})
    for n in (1, 2, 3):
        store.set("default", lambda _old, n=n: (_rules(n), f"rules {n}"), actor="test")
    versions = [_rules(n).version for n in range(4)]
    with LogWriter(data_dir / "logs") as writer:
        writer.submit(events_pb2.LogRecord(decision=events_pb2.DecisionEvent(
            event_id="e1", surface="default", shield_version=versions[1])))
    return versions


def test_gc_keeps_in_force_and_logged_versions_and_replay_can_still_load_them(tmp_path: Path) -> None:
    versions = _history(tmp_path)
    referenced = referenced_versions(tmp_path / "logs")
    assert referenced == {versions[1]: f"{tmp_path / 'logs'}: 1 decisions"}
    store = ShieldStore(tmp_path)
    later = time.time() + GC_GRACE_S + 1  # past the grace period of the recent changes
    deleted, kept = store.collect_garbage(1, referenced, actor="ops", now=later)
    assert sorted(deleted) == sorted([versions[0], versions[2]])
    assert kept == {versions[1]: f"named by decisions in {tmp_path / 'logs'}: 1 decisions",
                    versions[3]: "in force on default"}
    assert load_rules(tmp_path, versions[1]) == _rules(1)  # what replay of that decision loads
    with pytest.raises(NotFound):
        load_rules(tmp_path, versions[0])
    audit = json.loads((tmp_path / "admin" / "gc_audit.jsonl").read_text())
    assert audit["store"] == "shield" and sorted(audit["deleted"]) == sorted(deleted) and audit["actor"] == "ops"
    assert ShieldStore(tmp_path).apply_config({"default": _rules(3)})["default"] == _rules(3)  # still serves


def test_the_cli_keeps_versions_replaced_within_the_grace_period(tmp_path: Path, capsys) -> None:
    versions = _history(tmp_path)
    assert main(["shield", "gc", "--data-dir", str(tmp_path), "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert "deleted 0 versions" in out and f"kept {versions[2]}: replaced less than 600 s ago" in out
    assert main(["shield", "gc", "--data-dir", str(tmp_path), "--keep", "0"]) == 2
    assert capsys.readouterr().err.strip() == "--keep: must be at least 1 (the versions in force are always kept), got 0"
    assert main(["shield", "gc", "--data-dir", str(tmp_path / "none"), "--keep", "1"]) == 2
    assert "--data-dir: no shield rules under" in capsys.readouterr().err


def test_a_reader_during_gc_loads_whole_rules_or_not_found(tmp_path: Path) -> None:
    versions = _history(tmp_path)
    stop = threading.Event()
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            for n, version in enumerate(versions):
                try:
                    assert load_rules(tmp_path, version) == _rules(n)
                    outcomes.append("loaded")
                except NotFound:
                    outcomes.append("gone")
                except BaseException as exc:  # ShieldStoreError: a half-deleted version  # noqa: BLE001
                    errors.append(exc)
                    return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        ShieldStore(tmp_path).collect_garbage(1, {}, actor="test", now=time.time() + GC_GRACE_S + 1)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not errors, errors
    assert "loaded" in outcomes
    assert [v for v in versions if (tmp_path / "admin" / "shield" / f"{v}.json").exists()] == [versions[3]]
