"""Columnar what-if companions (logging_schema.columnar): written by the real LogWriter beside every closed segment,
holding each record's replay values in segment order, and refused whenever they are not complete and consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import logging_schema.writer as writer_module
from logging_schema.columnar import columnar_path, read_columnar
from logging_schema.companions import remove_segment
from logging_schema.reader import iter_records
from logging_schema.segments import list_segments
from logging_schema.views import ReplayRecord
from tests.logging_schema.test_companions import _damage_cases, _records, _write


@pytest.mark.parametrize("deferred", [True, False])
def test_every_closed_segment_gets_columns_equal_to_its_records(tmp_path: Path, deferred: bool) -> None:
    _write(tmp_path, _records(40), deferred=deferred)
    segments = list_segments(tmp_path)
    assert len(segments) > 3
    for segment in segments:
        columns = read_columnar(segment)
        assert columns is not None
        records = list(iter_records(segment, record_type=ReplayRecord))
        decisions = [r.decision for r in records if r.WhichOneof("event") == "decision"]  # type: ignore[attr-defined]
        others = [r.SerializeToString() for r in records if r.WhichOneof("event") != "decision"]
        assert columns.records == len(records)
        assert columns.decisions["event_id"].to_list() == [d.event_id for d in decisions]
        assert columns.decisions["n_candidates"].to_list() == [len(d.candidates) for d in decisions]
        assert columns.decisions["seconds"].to_list() == [d.served_at.seconds for d in decisions]
        assert columns.decisions["cap"].to_list() == [d.exploration.cap for d in decisions]
        assert columns.slots["item_id"].to_list() == [s.item_id for d in decisions for s in d.slate]
        assert columns.slots["candidate_index"].to_list() == [s.candidate_index for d in decisions for s in d.slate]
        expected = b"".join(d.candidate_scores for d in decisions)
        assert columns.scores.tobytes() == np.frombuffer(expected, "<f8").tobytes()
        assert columns.others["payload"].to_list() == others  # outcomes and the gap, whole


def test_unusable_columns_are_refused_and_removed_with_their_segment(tmp_path: Path) -> None:
    _write(tmp_path, _records(60))
    segments = list_segments(tmp_path)
    assert len(segments) >= 8
    for name, segment in _damage_cases(segments, columnar_path).items():
        assert read_columnar(segment) is None, name
    assert read_columnar(segments[6]) is not None
    remove_segment(segments[6])
    assert not columnar_path(segments[6]).exists() and not segments[6].exists()


def test_writer_without_columns_or_companions_writes_none(tmp_path: Path) -> None:
    _write(tmp_path / "rows", _records(10), columnar=False)
    _write(tmp_path / "none", _records(10), companions=False)
    assert not list((tmp_path / "rows").glob("*.whatcol")) and list((tmp_path / "rows").glob("*.whatif"))
    assert not list((tmp_path / "none").glob("*.what*"))


def test_columns_that_cannot_be_made_are_counted_and_the_log_is_whole(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(entries: list[bytes], segment: Path, segment_bytes: int) -> list[bytes]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module, "columnar_frames", fail)
    writer = _write(tmp_path, _records(20))
    segments = list_segments(tmp_path)
    assert writer.stats().companion_errors == len(segments) and writer.stats().unwritten == 0
    assert not list(tmp_path.glob("*.whatcol")) and not list(tmp_path.glob(".tmp-*"))
    assert len(list(iter_records(tmp_path))) == 41  # 20 decisions, 20 outcomes, 1 gap
