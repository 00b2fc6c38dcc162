"""One log, many streams: ``worker-K`` streams read as one log by the reader, the tables, ``logs export`` and the
tailer, with the same results as the same records written to one stream (``tests.log_streams``)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from logging_schema.reader import ReadStats, iter_records, read_log
from logging_schema.segments import file_header, frame, list_streams, log_segments, segment_name, stream_dir
from logging_schema.tables import JoinStats, join_rewards, read_tables
from logging_schema.tail import LogTailer
from logging_schema.writer import LogWriter
from recsys_rl.logging.v1.events_pb2 import LogRecord
from tests.log_streams import CONFIG, TORN_WORKER, SplitLog, served_log, split_log
from tests.logging_schema.builders import BASE_US, decision_record, outcome_record

REWARDS = {name: surface.reward for name, surface in CONFIG.surfaces.items()}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> SplitLog:
    root = tmp_path_factory.mktemp("streams")
    served_log(root / "served", 600)
    return split_log(root / "served", root)


def _write(log_dir: Path, records: list[LogRecord]) -> None:
    with LogWriter(log_dir) as writer:
        for record in records:
            writer.submit(record)


def test_streams_are_the_root_then_workers_by_number(tmp_path: Path) -> None:
    for name in ("worker-10", "worker-2", "backup", "worker-x"):
        _write(tmp_path / name, [decision_record(name)])
    (tmp_path / "worker-3").mkdir()  # a worker that has not written yet
    assert list_streams(tmp_path) == [tmp_path / "worker-2", tmp_path / "worker-3", tmp_path / "worker-10"]
    _write(tmp_path, [decision_record("root")])
    assert list_streams(tmp_path)[0] == tmp_path
    assert [p.relative_to(tmp_path).as_posix() for p in log_segments(tmp_path)] == [
        segment_name(0), f"worker-2/{segment_name(0)}", f"worker-10/{segment_name(0)}"]
    # Other subdirectories (a copy kept beside the log) are not streams: reading them would count records twice.
    assert sorted(r.decision.event_id for r in iter_records(tmp_path)) == ["root", "worker-10", "worker-2"]
    assert stream_dir(tmp_path, 7) == tmp_path / "worker-7"


def test_streams_read_as_the_one_stream_log_in_the_same_order(split: SplitLog) -> None:
    single, multi = read_log(split.single / "logs"), read_log(split.multi / "logs")
    assert len(log_segments(split.multi / "logs")) > 2 * 3  # several segments per stream: clocks carry over
    assert [d.event_id for d in multi.decisions] == [d.event_id for d in single.decisions]
    assert list(multi.decisions) == list(single.decisions) and list(multi.outcomes) == list(single.outcomes)
    assert list(iter_records(split.multi / "logs")) == split.records
    # Damage sums over streams and names the stream it was in.
    assert (single.stats.torn_tail_records, multi.stats.torn_tail_records) == (0, 1)
    assert multi.stats.damaged_streams == {f"worker-{TORN_WORKER}": 1}
    assert multi.stats.describe_damage() == f"1 (worker-{TORN_WORKER}: 1)"
    assert single.stats.describe_damage() == "0"
    assert multi.stats.records == single.stats.records == len(split.records)


def test_tables_and_reward_join_equal_the_one_stream_log(split: SplitLog) -> None:
    single, multi = read_tables(split.single / "logs"), read_tables(split.multi / "logs")
    by_slot = ["event_id", "position"]
    assert multi.decisions.sort(by_slot).equals(single.decisions.sort(by_slot))
    assert multi.decisions.equals(single.decisions)  # and in the same order
    assert multi.outcomes.equals(single.outcomes)
    stats = {}
    joined = {}
    for name, tables in (("single", single), ("multi", multi)):
        stats[name] = JoinStats()
        joined[name] = join_rewards(tables.decisions, tables.outcomes, REWARDS, stats=stats[name])
    assert joined["multi"].equals(joined["single"])
    assert stats["multi"] == stats["single"] and stats["multi"].duplicate_outcomes == 5
    # The first answer (value 0, on another worker's stream, received first) wins, as in the one-stream log.
    again = multi.outcomes.filter(pl.col("outcome_id").str.starts_with("again-"))
    first = again.group_by("event_id", maintain_order=True).first()
    assert first.get_column("value").to_list() == [0.0] * 5


def test_logs_export_reads_every_stream_and_names_the_damaged_one(split: SplitLog,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from recsys_rl.cli import main

    frames = {}
    for name, data_dir in (("single", split.single), ("multi", split.multi)):
        out = data_dir / "export.parquet"
        assert main(["logs", "export", "--data-dir", str(data_dir), "--out", str(out)]) == 0
        frames[name] = pl.read_parquet(out)
        line = capsys.readouterr().out.splitlines()[0]
        assert line.endswith(f"damaged records skipped: 1 (worker-{TORN_WORKER}: 1)" if name == "multi"
                             else "damaged records skipped: 0"), line
    assert frames["multi"].height > 600
    assert frames["multi"].equals(frames["single"])


# --- the tailer ------------------------------------------------------------------------------------------------


def _ids(records: list[LogRecord]) -> list[str]:
    return [r.decision.event_id if r.WhichOneof("event") == "decision" else f"o:{r.outcome.event_id}"
            for r in records]


def test_tailer_follows_every_stream_and_streams_that_appear_later(tmp_path: Path) -> None:
    w0, w1 = LogWriter(stream_dir(tmp_path, 0)), LogWriter(stream_dir(tmp_path, 1))
    try:
        w0.submit(decision_record("old0", served_at_us=BASE_US))
        w1.submit(decision_record("old1", served_at_us=BASE_US + 1))
        w0.flush(), w1.flush()
        tailer = LogTailer(tmp_path, from_end=True)  # what was there is not new, in every stream
        assert tailer.poll() == []
        # Interleaved in time across streams: a poll returns them merged by time, each stream's order kept.
        w1.submit(decision_record("b", served_at_us=BASE_US + 20))
        # Logged in another worker's stream, received at BASE_US + 30 (the builder receives 1 ms after it occurred).
        w1.submit(outcome_record("a", "a", "click", occurred_at_us=BASE_US + 30 - 1_000))
        w0.submit(decision_record("a", served_at_us=BASE_US + 10))
        w0.submit(decision_record("c", served_at_us=BASE_US + 40))
        w0.flush(), w1.flush()
        assert _ids(tailer.poll()) == ["a", "b", "o:a", "c"]
        # A worker started after the tailer: its stream is new, read from its start.
        with LogWriter(stream_dir(tmp_path, 2)) as w2:
            w2.submit(decision_record("late", served_at_us=BASE_US + 50))
        assert _ids(tailer.poll()) == ["late"]
        assert tailer.stats.streams == 3 and tailer.poll() == []
    finally:
        w0.close(), w1.close()


def test_tailer_from_end_and_resume_are_per_stream_and_torn_tails_are_counted(tmp_path: Path) -> None:
    _write(stream_dir(tmp_path, 0), [decision_record("w0-old")])
    _write(stream_dir(tmp_path, 1), [decision_record("w1-old")])
    # A resumed reader skips old segments of each stream but never a stream's newest (its writer may append).
    resumed = LogTailer(tmp_path, skip_written_before=2**40)
    assert sorted(_ids(resumed.poll())) == ["w0-old", "w1-old"]
    _write(stream_dir(tmp_path, 0), [decision_record("w0-new")])  # a restarted worker: a new segment, same stream
    torn = stream_dir(tmp_path, 1) / segment_name(1)
    torn.write_bytes(file_header() + frame(decision_record("cut").SerializeToString())[:20])  # a crash mid-write
    _write(stream_dir(tmp_path, 1), [decision_record("w1-new")])  # after the torn segment: it is done for good
    assert sorted(_ids(resumed.poll())) == ["w0-new", "w1-new"]
    assert resumed.stats.torn_tail_records == 1
    fresh = LogTailer(tmp_path, skip_written_before=2**40)
    assert sorted(_ids(fresh.poll())) == ["w0-new", "w1-new"]  # only each stream's newest segment


def test_one_stream_reads_exactly_as_before(tmp_path: Path) -> None:
    records = [decision_record("b", served_at_us=BASE_US + 5), decision_record("a", served_at_us=BASE_US)]
    _write(tmp_path, records)
    stats = ReadStats()
    assert list(iter_records(tmp_path, stats=stats)) == records  # write order, not time order
    assert stats.damaged_streams == {} and list_streams(tmp_path) == [tmp_path]
