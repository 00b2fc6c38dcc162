"""Replay a whole segment at once from its columnar what-if companion (:mod:`logging_schema.columnar`).

The common what-if - ``logged@cap=X`` (and the gate, which replays it): each decision's own model version and λ,
capped ε-greedy, no shield active, no outside-retrieval exploration, all scores finite, no slate item twice - needs
nothing per decision but arithmetic on its logged scores. For a segment whose every decision of the surface is such
a one, its frames (the decision rows with their target propensities, the outcomes) are computed with numpy and
polars over the companion's columns, with the arithmetic of :func:`evaluators.replay.batched.epsilon_greedy_propensities`
(the serving explorer's, operation for operation), so the rows are bit for bit those of the per-record path
(tests/evaluators/replay/test_logged_scores.py). Any other segment - a decision to re-score or shield, a damaged
score, a gap record, an older log without columns - goes through the per-record path whole (``None`` here).

A log of several streams (``--workers N``) interleaves its streams record by record in time order
(``reader.merge_streams``): it is replayed stream by stream (``stream_located_or_frames``), each segment's frames
noting where their rows stand in the merged log (``SegmentFrames.note``, :mod:`evaluators.replay.places`), and the
rows are sorted into that order afterwards (``run._replay_streams``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl

from evaluators.replay.batched import batchable, epsilon_greedy_propensities
from evaluators.replay.shield import ReplayShield
from evaluators.replay.places import Places, wanted_outcome
from evaluators.replay.targets import BASELINE_SERVED, TargetPolicy
from logging_schema.columnar import SegmentColumns, read_columnar
from logging_schema.companions import Located, iter_located, iter_segment_located
from logging_schema.reader import ReadStats, gap_of, record_time_us
from logging_schema.segments import list_segments, list_streams, read_ahead, stream_name
from logging_schema.tables import DECISION_SCHEMA, SERVING_MODE_NAMES, outcomes_frame
from logging_schema.views import ReplayEntry, ReplayRecord

_POLICY_KEY = ("policy_version", "serving_mode", "baseline_version", "shield_version", "algorithm", "epsilon",
               "temperature", "gamma", "cap", "long_term_weight")


@dataclass
class SegmentFrames:
    """A segment replayed at once: its decision rows (the per-record path's chunk columns) and its outcomes."""

    segment: Path
    decisions: pl.DataFrame | None
    outcomes: pl.DataFrame | None
    n_decisions: int
    surface: str
    columns: SegmentColumns  # kept for ``note``: a multi-stream replay places the rows in the merged log
    others: list[ReplayRecord]  # the columns' other records, parsed

    def note(self, places: Places, segment: int) -> None:
        """Note where this segment's decisions and kept outcomes stand in the merged log (``places.Places``): the
        record times ``reader.record_time_us`` reads, from the columns."""
        d = self.columns.decisions
        seconds, nanos = d.get_column("seconds").to_numpy(), d.get_column("nanos").to_numpy()
        times = np.full(self.columns.records, -1, dtype=np.int64)
        records = d.get_column("record").to_numpy().astype(np.int64)
        times[records] = np.where((seconds != 0) | (nanos != 0), seconds * 1_000_000 + nanos // 1_000, -1)
        other_records = self.columns.others.get_column("record").to_numpy().astype(np.int64)
        at = [record_time_us(r) for r in self.others]
        times[other_records] = [-1 if t is None else t for t in at]
        kept = [r.WhichOneof("event") == "outcome" and wanted_outcome(r.outcome, self.surface) for r in self.others]
        places.note_segment(segment, times, d.get_column("event_id").to_list(), records,
                            other_records[np.array(kept, dtype=bool)] if kept else other_records[:0])


class ColumnarReplay:
    """What one replay needs to replay segments from their columns (the target, the surface, the filters)."""

    def __init__(self, surface: str, target: TargetPolicy, shields: ReplayShield, since_s: float | None,
                 stats: object) -> None:
        self.surface = surface
        self.target = target
        self.shields = shields
        self.since_s = since_s
        self.stats = stats  # run.ReplayStats (not imported: run imports this module)

    def _group_parameters(self, keys: pl.DataFrame, event_ids: list[str]) -> list[tuple[float, float]] | None:
        """(ε, cap) of each distinct logged policy key when every one is the common what-if, else None."""
        out = []
        for key, event_id in zip(keys.iter_rows(named=True), event_ids):
            event = SimpleNamespace(**key, exploration=SimpleNamespace(**{
                k: key[k] for k in ("algorithm", "epsilon", "temperature", "gamma", "cap")}))
            policy = self.shields.policy(self.target.policy_for(event), event_id, key["shield_version"])
            params = batchable(policy.explorer)
            if (params is None or policy.shield.active or key["serving_mode"] in BASELINE_SERVED
                    or key["policy_version"] != policy.policy_version
                    or key["long_term_weight"] != policy.long_term_weight):
                return None
            out.append(params)
        return out

    def frames(self, columns: SegmentColumns) -> SegmentFrames | None:
        """The segment replayed at once, its counts added to the replay's stats; None (nothing counted) when one of
        its decisions needs the per-record path."""
        try:
            return self._frames(columns)
        except Exception:  # noqa: BLE001 - whatever the columns cannot do, the per-record path does (or reports)
            return None

    def _frames(self, columns: SegmentColumns) -> SegmentFrames | None:
        others = [ReplayRecord.FromString(p) for p in columns.others.get_column("payload").to_list()]
        if any(r.WhichOneof("event") not in ("outcome", "gap") for r in others):
            return None
        d = columns.decisions
        n_slots = d.get_column("n_slots").to_numpy()
        ours = (d.get_column("surface") == self.surface).to_numpy()
        has_slate = ours & (n_slots > 0)
        keep = has_slate.copy()
        if self.since_s is not None:
            at = d.get_column("seconds").to_numpy().astype(np.float64) + d.get_column("nanos").to_numpy() * 1e-9
            keep &= ~(at < self.since_s)
        kept = d.filter(pl.Series(keep))
        where = np.flatnonzero(keep)
        if kept.height:
            floats = kept.select("epsilon", "temperature", "gamma", "cap", "long_term_weight", "outside_share")
            if floats.select(pl.any_horizontal(pl.all().is_nan()).any()).item():
                return None
            if (kept.get_column("outside_share") > 0).any() or (kept.get_column("n_scores") == 0).any() or (
                    kept.get_column("n_scores") != kept.get_column("n_candidates")).any():
                return None
            keyed = kept.select(*_POLICY_KEY, "event_id").with_row_index("row")
            groups = keyed.group_by(_POLICY_KEY, maintain_order=True).agg(pl.col("row"), pl.col("event_id").first())
            parameters = self._group_parameters(groups.select(_POLICY_KEY), groups.get_column("event_id").to_list())
            if parameters is None:
                return None
            epsilon, cap = np.empty(kept.height), np.empty(kept.height)
            for rows, (eps, c) in zip(groups.get_column("row").to_list(), parameters):
                epsilon[rows], cap[rows] = eps, c
            target = self._propensities(columns, where, epsilon, cap)
            if target is None:
                return None
        gaps = [gap_of(r) for r in others if r.WhichOneof("event") == "gap"]
        unlogged = [g.decisions_unlogged_by_surface.get(self.surface, 0) for g in gaps]
        outcomes = [r.outcome for r in others
                    if r.WhichOneof("event") == "outcome" and r.outcome.surface in (self.surface, "")]
        decisions = self._decision_frame(columns, kept, keep, target) if kept.height else None

        stats = self.stats
        read: ReadStats = stats.read  # type: ignore[attr-defined]
        read.segments += 1
        read.companions += 1
        read.records += columns.records
        read.bytes += columns.bytes
        read.gaps += len(gaps)
        read.decisions_unlogged += sum(g.decisions_unlogged for g in gaps)
        read.outcomes_refused += sum(g.outcomes_refused for g in gaps)
        stats.unlogged_decisions += sum(unlogged)  # type: ignore[attr-defined]
        stats.gaps += sum(u > 0 for u in unlogged)  # type: ignore[attr-defined]
        stats.other_surfaces += int((~ours).sum())  # type: ignore[attr-defined]
        stats.empty_slates += int((ours & ~has_slate).sum())  # type: ignore[attr-defined]
        stats.before_since += int((has_slate & ~keep).sum())  # type: ignore[attr-defined]
        stats.decisions += kept.height  # type: ignore[attr-defined]
        stats.from_logged_scores += kept.height  # type: ignore[attr-defined]
        stats.columnar_segments += 1  # type: ignore[attr-defined]
        return SegmentFrames(columns.segment, decisions, outcomes_frame(outcomes) if outcomes else None, kept.height,
                             self.surface, columns, others)

    @staticmethod
    def _propensities(columns: SegmentColumns, where: np.ndarray, epsilon: np.ndarray,
                      cap: np.ndarray) -> np.ndarray | None:
        """Target propensities of the kept decisions' slots (in slot order), or None when one decision's scores are
        not all finite or its slate names an item twice or a candidate that is not there."""
        d = columns.decisions
        n_scores = d.get_column("n_scores").to_numpy().astype(np.int64)
        n_slots = d.get_column("n_slots").to_numpy().astype(np.int64)
        score_start = np.concatenate(([0], np.cumsum(n_scores)[:-1]))
        slot_start = np.concatenate(([0], np.cumsum(n_slots)[:-1]))
        index = columns.slots.get_column("candidate_index").to_numpy().astype(np.int64)
        kept_slots = int(n_slots[where].sum())
        out = np.empty(kept_slots)
        out_start = np.concatenate(([0], np.cumsum(n_slots[where])[:-1]))
        shape = np.stack((n_scores[where], n_slots[where]), axis=1)
        for n, k in np.unique(shape, axis=0):
            members = np.flatnonzero((shape[:, 0] == n) & (shape[:, 1] == k))
            decisions = where[members]
            scores = columns.scores[score_start[decisions][:, None] + np.arange(n)]
            logged = index[slot_start[decisions][:, None] + np.arange(k)]
            ordered = np.sort(logged, axis=1)
            if (not np.isfinite(scores).all() or (logged < 0).any() or (logged >= n).any()
                    or (ordered[:, 1:] == ordered[:, :-1]).any()):
                return None
            p = epsilon_greedy_propensities(scores, logged, epsilon[members], cap[members])
            out[out_start[members][:, None] + np.arange(k)] = p
        return out

    def _decision_frame(self, columns: SegmentColumns, kept: pl.DataFrame, keep: np.ndarray,
                        target: np.ndarray) -> pl.DataFrame:
        """The kept decisions' rows, as ``columns.DecisionColumns.frame`` builds them."""
        n_slots = kept.get_column("n_slots")
        modes = kept.get_column("serving_mode")
        names = {m: SERVING_MODE_NAMES.get(m, f"unknown_{m}") for m in modes.unique().to_list()}
        micros = pl.when(pl.col("has_served_at")).then(pl.col("seconds") * 1_000_000 + pl.col("nanos") // 1_000)
        per_decision = kept.select(
            "event_id", "user_id", micros.cast(DECISION_SCHEMA["served_at"]).alias("served_at"), "policy_version",
            pl.col("serving_mode").replace_strict(names, return_dtype=pl.String()),
            pl.col("n_candidates").cast(DECISION_SCHEMA["n_candidates"]),
        )
        owners = pl.Series(np.repeat(np.arange(kept.height, dtype=np.uint32), n_slots.to_numpy()))
        slot_keep = np.repeat(keep, columns.decisions.get_column("n_slots").to_numpy())
        slots = columns.slots.filter(pl.Series(slot_keep))
        return pl.concat([per_decision.select(pl.all().gather(owners)), slots.select("position", "item_id",
                                                                                      "propensity")],
                         how="horizontal").select(
            "event_id", "position", "item_id", "propensity", "user_id", "served_at", "policy_version",
            "serving_mode", "n_candidates", pl.lit(self.surface, dtype=pl.String).alias("surface"),
            pl.Series("target_pscore", target, dtype=pl.Float64),
            pl.lit(False, dtype=pl.Boolean).alias("target_fallback"),
        )


def located_or_frames(log_dir: Path, stats: ReadStats, replayer: ColumnarReplay) -> Iterator[Located | tuple[
        SegmentFrames, None]]:
    """``companions.iter_located``'s records, except that a segment the columns replay at once comes as one
    ``(SegmentFrames, None)`` in its place: a one-stream log (a log of several streams is replayed stream by stream,
    its rows placed in the merged log: ``stream_located_or_frames``)."""
    streams = [log_dir] if Path(log_dir).is_file() else list_streams(log_dir)
    if len(streams) != 1 or Path(log_dir).is_file():
        yield from iter_located(log_dir, stats=stats, entry_type=ReplayEntry, record_type=ReplayRecord)
        return
    yield from stream_located_or_frames(stream_name(log_dir, streams[0]), list_segments(streams[0]), stats, replayer)


def stream_located_or_frames(name: str, segments: list[Path], stats: ReadStats, replayer: ColumnarReplay,
                             places: Places | None = None,
                             first: int = 0) -> Iterator[Located | tuple[SegmentFrames, None]]:
    """One stream's records (``companions.iter_segment_located``'s, segment by segment), a segment the columns
    replay at once as one ``(SegmentFrames, None)``. ``places``: every record and frame noted in it as it passes,
    ``segments[0]`` being the stream's segment number ``first`` (a distributed replay hands out one segment)."""
    # The next segment's columns are read (file, CRC32, Arrow decoding: all without the GIL) while this one is replayed.
    for i, path, columns in read_ahead(segments, read_columnar, "whatif-columns"):
        frames = replayer.frames(columns) if columns is not None else None
        if frames is not None:
            if places is not None:
                frames.note(places, first + i)
            yield frames, None
        else:
            records = iter_segment_located(path, stream=name, stats=stats, entry_type=ReplayEntry,
                                           record_type=ReplayRecord)
            yield from records if places is None else places.watch(records, first + i)


__all__ = ["ColumnarReplay", "SegmentFrames", "located_or_frames", "stream_located_or_frames"]
