"""What-ifs from logged scores (issue 11 item 4): replaying the model version that served a decision at another cap
takes its scores from the log instead of re-scoring through VW, with the very same table as re-scoring.

Real logs from a real DecisionService with exploration (a trained model, so scores are not all ties), a served
shield (max_per_value) and a what-if shield; λ > 0 is checked in tests/ranker/test_long_term_serving.py.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from evaluators.replay.run import ReplayStats, replay
from recsys_rl.errors import InvalidInput
from logging_schema.columnar import columnar_path
from logging_schema.reader import iter_records, read_log
from logging_schema.writer import LogWriter
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.config import ExplorationConfig, ServiceConfig, SurfaceConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.serving.registry import ModelRegistry
from recsys_rl.shield.rules import rules_from_dict
from recsys_rl.sim import SimConfig, World
from tests.evaluators.replay.test_replay import publish, serve, surface_config, train_on_logs

SHIELD = rules_from_dict({"max_per_value": {"topic": 2}})


@dataclass
class ScoredLog:
    data_dir: Path
    config: ServiceConfig
    first: str  # the fresh model's version
    second: str  # the trained model's (LATEST)


@pytest.fixture(scope="module")
def scored_log(tmp_path_factory: pytest.TempPathFactory) -> ScoredLog:
    """200 decisions of a fresh model, then 200 of a model trained on them, under a served shield, ε = 0.3."""
    data_dir = tmp_path_factory.mktemp("scored")
    surface = SurfaceConfig(exploration_cap=0.3, exploration=ExplorationConfig(epsilon=0.3),
                            decision_budget_ms=1e6, shield=SHIELD)
    config = ServiceConfig(surfaces={"default": surface})
    world = World(SimConfig(), seed=11)
    serve(data_dir, world, 200, config=config, prefix="a")
    first = ModelRegistry(data_dir / "models").latest_version("default")
    second = publish(data_dir, train_on_logs(data_dir, surface_config()))
    serve(data_dir, world, 200, config=config, prefix="b")
    assert first is not None
    return ScoredLog(data_dir, config, first, second)


def _both(log: ScoredLog, spec: str, data_dir: Path | None = None,
          **kwargs: object) -> tuple[pl.DataFrame, ReplayStats, pl.DataFrame, ReplayStats]:
    fast, slow = ReplayStats(), ReplayStats()
    where = data_dir or log.data_dir
    a = replay(where, spec, config=log.config, progress=False, stats=fast, **kwargs)  # type: ignore[arg-type]
    b = replay(where, spec, config=log.config, progress=False, stats=slow, logged_scores=False,
               **kwargs)  # type: ignore[arg-type]
    return a, fast, b, slow


def test_learned_decisions_log_the_scores_they_drew_from(scored_log: ScoredLog) -> None:
    events = read_log(scored_log.data_dir / "logs").decisions
    assert len(events) == 400
    for event in events:
        assert event.serving_mode == pb.SERVING_MODE_LEARNED
        assert len(event.candidate_scores) == len(event.candidates)
        for slot in event.slate:  # the score a slot logs is the one it was drawn with
            assert slot.score == event.candidate_scores[slot.candidate_index]
    assert len({tuple(e.candidate_scores) for e in events[200:]}) > 1  # the trained model's scores are not ties


@pytest.mark.parametrize("spec", ["logged", "logged@cap=0.2", "logged@cap=0", "logged@epsilon=0.6@cap=0.5"])
def test_logged_what_ifs_equal_rescoring_bit_for_bit(scored_log: ScoredLog, spec: str) -> None:
    fast, fast_stats, slow, slow_stats = _both(scored_log, spec)
    assert fast.equals(slow)  # every column, target propensities bit for bit (NaN-free: equals is exact)
    assert (fast_stats.from_logged_scores, fast_stats.rescored) == (400, 0)
    assert (slow_stats.from_logged_scores, slow_stats.rescored) == (0, 400)
    if spec == "logged":
        assert (fast["target_pscore"] == fast["pscore"]).all()
    if spec == "logged@cap=0.2":
        assert (fast["target_pscore"] != fast["pscore"]).any()


@pytest.mark.parametrize("spec", ["logged@cap=0.2", "logged@cap=0", "current@cap=0.5@epsilon=0.5"])
def test_unshielded_what_ifs_batched_from_logged_scores_equal_rescoring(scored_log: ScoredLog, spec: str) -> None:
    """Without a shield, capped ε-greedy from logged scores is computed a chunk at a time (``batched``, the
    ``logged@cap=X`` path the what-if benchmark measures); it is re-scoring's table bit for bit."""
    fast, fast_stats, slow, slow_stats = _both(scored_log, spec, shield="none")
    assert fast.equals(slow)
    assert fast_stats.rescored == (200 if spec.startswith("current") else 0)  # the first version's decisions
    assert (slow_stats.from_logged_scores, slow_stats.rescored) == (0, 400)


def test_softmax_what_if_from_logged_scores(scored_log: ScoredLog) -> None:
    """Softmax reads score differences, not just the order: re-scoring a trained VW model can differ from the scores
    serving drew from in the last float32 bits (~1e-7, varying between runs of the same model; seen here), so the
    logged scores are the exact ones and re-scoring agrees to that precision."""
    fast, fast_stats, slow, _ = _both(scored_log, "logged@algorithm=softmax@temperature=0.5")
    assert fast_stats.rescored == 0
    assert fast.drop("target_pscore", "cascade_target_pscore", "slate_target_pscore").equals(
        slow.drop("target_pscore", "cascade_target_pscore", "slate_target_pscore"))
    np.testing.assert_allclose(fast["target_pscore"].to_numpy(), slow["target_pscore"].to_numpy(), rtol=1e-5, atol=0)
    again = replay(scored_log.data_dir, "logged@algorithm=softmax@temperature=0.5", config=scored_log.config,
                   progress=False)
    assert again.equals(fast)  # from the log: the same table every run


def test_current_uses_logged_scores_only_for_its_own_version(scored_log: ScoredLog) -> None:
    fast, fast_stats, slow, _ = _both(scored_log, "current@cap=0.2")
    assert fast.equals(slow)
    assert (fast_stats.from_logged_scores, fast_stats.rescored) == (200, 200)  # the first version is re-scored
    assert (fast.filter(pl.col("policy_version") == scored_log.second)["event_id"].n_unique() == 200)


def test_what_if_shield_from_logged_scores_equals_rescoring(scored_log: ScoredLog) -> None:
    what_if = rules_from_dict({"blocked_items": [f"item_{i:04d}" for i in range(0, 200, 3)],
                               "max_per_value": {"topic": 1}})
    fast, fast_stats, slow, _ = _both(scored_log, "logged@cap=0.2", shield=what_if)
    assert fast.equals(slow) and fast_stats.rescored == 0
    assert (fast["target_pscore"] == 0).any()  # the what-if forbids some logged slots


def test_no_vw_prediction_for_rows_with_logged_scores(scored_log: ScoredLog, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = VWBandit.score

    def counting(self: VWBandit, request: pb.RankRequest):  # noqa: ANN202
        calls.append(request.request_id)
        return real(self, request)

    monkeypatch.setattr(VWBandit, "score", counting)
    stats = ReplayStats()
    replay(scored_log.data_dir, "logged@cap=0.2", config=scored_log.config, progress=False, stats=stats)
    assert calls == [] and stats.from_logged_scores == 400
    replay(scored_log.data_dir, "logged@cap=0.2", config=scored_log.config, progress=False, logged_scores=False)
    assert len(calls) == 400  # the seam sees re-scoring when it happens


def test_rows_without_logged_scores_are_rescored(scored_log: ScoredLog, tmp_path: Path) -> None:
    """An older log (no scores on every other decision) replays to the same table, re-scoring only those rows."""
    data_dir = tmp_path / "mixed"
    shutil.copytree(scored_log.data_dir / "models", data_dir / "models")
    if (scored_log.data_dir / "shield").exists():
        shutil.copytree(scored_log.data_dir / "shield", data_dir / "shield")
    n = 0
    with LogWriter(data_dir / "logs") as writer:
        for record in iter_records(scored_log.data_dir / "logs"):
            if record.WhichOneof("event") == "decision":
                n += 1
                if n % 2:
                    record.decision.ClearField("candidate_scores")
            writer.submit(record)
    fast, fast_stats, slow, _ = _both(scored_log, "logged@cap=0.2", data_dir=data_dir)
    assert fast.equals(slow)
    assert (fast_stats.from_logged_scores, fast_stats.rescored) == (200, 200)
    reference = replay(scored_log.data_dir, "logged@cap=0.2", config=scored_log.config, progress=False)
    assert fast.equals(reference)


def test_the_gate_replays_from_logged_scores(scored_log: ScoredLog) -> None:
    """``recsys-rl gate`` replays ``logged@cap=X`` and ``logged``: both take the logged scores, none re-scores."""
    from recsys_rl.caps.gate import run_gate

    seen: list[tuple[str, ReplayStats]] = []

    def counting_replay(data_dir: Path, spec: str, **kwargs: object) -> pl.DataFrame:
        stats = ReplayStats()
        seen.append((spec, stats))
        return replay(data_dir, spec, stats=stats, **kwargs)  # type: ignore[arg-type]

    report = run_gate(scored_log.data_dir, surface="default", cap=0.2, config=scored_log.config,
                      replay_fn=counting_replay, progress=False)
    assert [spec for spec, _ in seen] == ["logged@cap=0.2", "logged"]
    assert all((s.from_logged_scores, s.rescored) == (400, 0) for _, s in seen)
    assert report["estimates"]["target"]["policy"] == "logged@cap=0.2"


def _rewritten(log: ScoredLog, data_dir: Path, edit: Callable[[int, events_pb2.DecisionEvent], None]) -> Path:
    """A copy of the log (models and shield store too) with ``edit(n, decision)`` applied to the n-th decision."""
    shutil.copytree(log.data_dir / "models", data_dir / "models")
    if (log.data_dir / "shield").exists():
        shutil.copytree(log.data_dir / "shield", data_dir / "shield")
    n = 0
    with LogWriter(data_dir / "logs") as writer:
        for record in iter_records(log.data_dir / "logs"):
            if record.WhichOneof("event") == "decision":
                edit(n, record.decision)
                n += 1
            writer.submit(record)
    return data_dir


def test_scores_that_are_not_finite_are_rescored(scored_log: ScoredLog, tmp_path: Path) -> None:
    """The batch checks the logged scores' finiteness for a whole chunk; a decision whose scores are not all finite
    (a damaged record) is re-scored, in its place in the table, as re-scoring replay does."""
    def damage(n: int, decision: events_pb2.DecisionEvent) -> None:
        if n % 3 == 0:
            decision.candidate_scores[n % len(decision.candidate_scores)] = float("nan" if n % 2 else "inf")

    data_dir = _rewritten(scored_log, tmp_path / "damaged", damage)
    # Unshielded: the batch's own check (the served shield's decisions take the per-decision path, checked there).
    for spec, shield in (("logged@cap=0.2", "none"), ("logged@cap=0.2", None),
                         ("logged@algorithm=softmax@temperature=0.5", None)):
        fast, fast_stats, slow, _ = _both(scored_log, spec, data_dir=data_dir, shield=shield)
        assert (fast_stats.from_logged_scores, fast_stats.rescored) == (266, 134)
        if spec == "logged@cap=0.2":
            assert fast.equals(slow)
            assert fast.equals(replay(scored_log.data_dir, spec, config=scored_log.config, progress=False,
                                      shield=shield))


@pytest.mark.parametrize("logged_scores", [True, False])
def test_a_slot_that_points_at_another_candidate_is_refused(scored_log: ScoredLog, tmp_path: Path,
                                                            logged_scores: bool) -> None:
    def misdirect(n: int, decision: events_pb2.DecisionEvent) -> None:
        if n == 250:
            slot = decision.slate[1]
            slot.candidate_index = (slot.candidate_index + 1) % len(decision.candidates)

    data_dir = _rewritten(scored_log, tmp_path / "misdirected", misdirect)
    event_id = [e.event_id for e in read_log(data_dir / "logs").decisions][250]
    with pytest.raises(InvalidInput, match=rf"event {event_id}: slate\[1\]\.candidate_index"):
        replay(data_dir, "logged@cap=0.2", config=scored_log.config, progress=False, logged_scores=logged_scores)


def _segmented_copy(log: ScoredLog, data_dir: Path, rotate_bytes: int) -> Path:
    """A copy of the log (models and shield store too) in segments of ``rotate_bytes``, each sealed with its what-if
    companion by the real writer."""
    shutil.copytree(log.data_dir / "models", data_dir / "models")
    if (log.data_dir / "shield").exists():
        shutil.copytree(log.data_dir / "shield", data_dir / "shield")
    with LogWriter(data_dir / "logs", rotate_bytes=rotate_bytes) as writer:
        for record in iter_records(log.data_dir / "logs"):
            writer.submit(record)
    return data_dir


@pytest.mark.parametrize("shield", ["none", None])
def test_companions_give_the_full_records_table_and_rescorings(scored_log: ScoredLog, tmp_path: Path,
                                                                shield: str | None) -> None:
    """logged@cap=X from the segments' what-if companions == from the full records == re-scoring, on the same logs;
    with a damaged, missing or stale companion the segment is read whole and the table is the same again. Unshielded
    the decisions come from the companions alone; under the served shield each one's full record is read."""
    total = sum(p.stat().st_size for p in (scored_log.data_dir / "logs").glob("events-*.seg"))
    data_dir = _segmented_copy(scored_log, tmp_path / "segmented", total // 12)
    segments = sorted((data_dir / "logs").glob("events-*.seg"))
    assert len(segments) >= 10

    def three(where: Path) -> tuple[pl.DataFrame, ReplayStats]:
        stats, full_stats = ReplayStats(), ReplayStats()
        fast = replay(where, "logged@cap=0.2", config=scored_log.config, progress=False, stats=stats, shield=shield)
        full = replay(where, "logged@cap=0.2", config=scored_log.config, progress=False, stats=full_stats,
                      shield=shield, companions=False)
        slow = replay(where, "logged@cap=0.2", config=scored_log.config, progress=False, shield=shield,
                      logged_scores=False)
        assert fast.equals(full) and fast.equals(slow)
        assert (stats.from_logged_scores, stats.rescored) == (400, 0) and full_stats.read.companions == 0
        return fast, stats

    reference = replay(scored_log.data_dir, "logged@cap=0.2", config=scored_log.config, progress=False, shield=shield)
    table, stats = three(data_dir)
    assert table.equals(reference) and stats.read.companions == stats.read.segments == len(segments)
    # Unshielded, every segment is replayed at once from its columnar companion; under the served shield, none is.
    assert stats.columnar_segments == (len(segments) if shield == "none" else 0)

    from tests.logging_schema.test_companions import _damage_cases

    # Unusable columnar companions: those segments are read from their row companions (the grown one: whole).
    damaged = _damage_cases(segments, columnar_path)
    table, stats = three(data_dir)
    assert table.equals(reference)
    assert stats.read.companions == len(segments) - 1
    assert stats.columnar_segments == (len(segments) - len(damaged) if shield == "none" else 0)
    # And the row companions of the same segments: read whole.
    _damage_cases(segments, grow=False)
    table, stats = three(data_dir)
    assert table.equals(reference)
    assert stats.read.companions == len(segments) - len(damaged)
    assert stats.columnar_segments == (len(segments) - len(damaged) if shield == "none" else 0)


def _two_streams(log: ScoredLog, data_dir: Path, answer_twice: bool = False) -> tuple[Path, list[object]]:
    """A copy of the log as two workers' streams, its records dealt alternately. ``answer_twice``: every third
    outcome gets an outcome_id and, in the other stream right after it, a second answer (same id, value 0) received
    1 ms later or (every other time) 1 ms earlier."""
    shutil.copytree(log.data_dir / "models", data_dir / "models")
    records = list(iter_records(log.data_dir / "logs"))
    streams: list[list[events_pb2.LogRecord]] = [[], []]
    for n, record in enumerate(records):
        streams[n % 2].append(record)
        if answer_twice and record.WhichOneof("event") == "outcome" and n % 3 == 0:
            record.outcome.outcome_id = f"answer-{n}"
            again = events_pb2.LogRecord()
            again.CopyFrom(record)
            again.outcome.value = 0.0
            shift = 1_000_000 if n % 2 else -1_000_000
            again.outcome.received_at.FromNanoseconds(record.outcome.received_at.ToNanoseconds() + shift)
            streams[1 - n % 2].append(again)
    for k, stream in enumerate(streams, 1):
        with LogWriter(data_dir / "logs" / f"worker-{k}", rotate_bytes=64 << 10) as writer:
            for record in stream:
                writer.submit(record)
    return data_dir, records


def test_a_log_of_several_streams_replays_its_columns_in_the_merged_order(scored_log: ScoredLog,
                                                                          tmp_path: Path) -> None:
    """Two workers' streams, records dealt alternately (so an outcome is often in the other stream than its decision):
    every segment is replayed at once from its columns, stream by stream, and the rows put back in the merged log's
    order - the table and the stats are those of the full records read merged and of re-scoring. A damaged columnar
    companion in one stream: that segment takes the per-record path, the table is the same again."""
    data_dir, records = _two_streams(scored_log, tmp_path / "streams")
    segments = sorted((data_dir / "logs").glob("worker-*/events-*.seg"))
    assert len(list((data_dir / "logs").glob("worker-*/*.whatcol"))) == len(segments) > 2

    def three() -> tuple[pl.DataFrame, ReplayStats]:
        fast, stats, slow, _ = _both(scored_log, "logged@cap=0.2", data_dir, shield="none")
        full_stats = ReplayStats()
        full = replay(data_dir, "logged@cap=0.2", config=scored_log.config, progress=False, stats=full_stats,
                      shield="none", companions=False)
        assert fast.equals(full) and fast.equals(slow)
        assert (stats.decisions, stats.rows, stats.join) == (full_stats.decisions, full_stats.rows, full_stats.join)
        assert stats.read.records == full_stats.read.records and stats.read.segments == full_stats.read.segments
        return fast, stats

    table, stats = three()
    assert stats.columnar_segments == len(segments) and stats.from_logged_scores == 400
    # The merged order is neither stream's first: worker-1's decisions are interleaved with worker-2's.
    first_stream = {r.decision.event_id for r in records[0::2] if r.WhichOneof("event") == "decision"}
    in_first = [e in first_stream for e in table.unique("event_id", maintain_order=True)["event_id"].to_list()]
    assert any(in_first) and not all(in_first[:len(first_stream)])
    assert table.equals(replay(scored_log.data_dir, "logged@cap=0.2", config=scored_log.config, progress=False,
                               shield="none"))

    damaged = sorted((data_dir / "logs" / "worker-2").glob("events-*.seg"))[1]
    columnar_path(damaged).write_bytes(columnar_path(damaged).read_bytes()[:-5])  # cut: unusable, read per record
    again, stats = three()
    assert again.equals(table) and stats.columnar_segments == len(segments) - 1


def test_repeated_answers_across_streams_keep_the_merged_logs_first(scored_log: ScoredLog, tmp_path: Path) -> None:
    """join_rewards keeps the first of an (event_id, outcome_id) in log order: with the two answers in different
    streams, the merged log (by time, not by stream) decides which is first; the columnar replay sorts its outcomes
    into that order, so it keeps the same answers as the merged reader (with the outcomes left in stream order, this
    fails)."""
    data_dir, _ = _two_streams(scored_log, tmp_path / "twice", answer_twice=True)
    fast, stats, slow, _ = _both(scored_log, "logged@cap=0.2", data_dir, shield="none")
    full_stats = ReplayStats()
    full = replay(data_dir, "logged@cap=0.2", config=scored_log.config, progress=False, stats=full_stats,
                  shield="none", companions=False)
    assert stats.columnar_segments == stats.read.segments and stats.join.duplicate_outcomes > 0
    assert fast.equals(full) and fast.equals(slow) and stats.join == full_stats.join


def test_columns_keep_since_and_count_what_they_skip(scored_log: ScoredLog, tmp_path: Path) -> None:
    """``since`` on segments replayed from their columns: the same decisions kept and skipped as re-scoring."""
    total = sum(p.stat().st_size for p in (scored_log.data_dir / "logs").glob("events-*.seg"))
    data_dir = _segmented_copy(scored_log, tmp_path / "since", total // 6)
    served = sorted(e.served_at.ToMicroseconds() for e in read_log(data_dir / "logs").decisions)
    since = served[150] / 1e6
    fast, stats, slow, slow_stats = _both(scored_log, "logged@cap=0.2", data_dir, shield="none", since=since)
    assert fast.equals(slow) and stats.columnar_segments == stats.read.segments
    assert stats.before_since == slow_stats.before_since > 0 and stats.decisions == slow_stats.decisions
