"""Each replayed row's place in the merged log, for replays that produce rows stream by stream or segment by segment.

``reader.merge_streams`` orders a log of several streams by (clock, stream rank, position in the stream), the clock
being the latest record time its stream has reached (``reader.record_time_us``; a record without a time keeps it).
A replay that does not read the merged log - the columnar replay of a multi-stream log (one stream at a time, whole
segments at once) and the Spark replay (one segment per task) - notes where each decision and each kept outcome
stands, as (clock, rank, segment, pos): ``segment`` the segment's index in its stream, ``pos`` the record's place in
that segment. Within a stream the clock never goes back and (segment, pos) grows, so sorting rows by
``MERGE_KEY`` (stably: a decision's rows stay in slot order) gives the merged reader's order, and ``join_rewards``
then sees outcomes in log order ("the first answer wins"). The clock runs across a stream's segments: ``Places``
keeps it from one segment to the next; a reader of one segment alone starts at -1 and raises the clocks to its
stream's earlier segments' largest time afterwards (evaluators.spark.replay).

A decision's place is looked up by its event_id (its first record's), as the decision rows carry nothing else that
names their record; should two decisions share an event_id, both rows take the first one's place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import polars as pl

from logging_schema.reader import record_time_us

MERGE_KEY = ("clock", "rank", "segment", "pos")
_KEY_SCHEMA = {"clock": pl.Int64, "segment": pl.Int32, "pos": pl.Int64}


def wanted_outcome(outcome: Any, surface: str) -> bool:
    """An outcome the table of ``surface`` joins (other surfaces' outcomes would only be orphans)."""
    return outcome.surface in (surface, "")


class Places:
    """Where each record of one stream (or one segment of it) stands, noted as the replay reads it."""

    def __init__(self, surface: str) -> None:
        self.surface = surface
        self.clock = -1
        self.decisions: dict[str, tuple[int, int, int]] = {}  # event_id -> (clock, segment, pos) of its first record
        self.outcomes: list[tuple[int, int, int]] = []  # per outcome the pass keeps, in order

    def watch(self, records: Iterable[tuple[Any, Any]], segment: int) -> Iterator[tuple[Any, Any]]:
        """``records`` (one segment's, (record, located) pairs as the replay pass takes them) passed through."""
        for pos, item in enumerate(records):
            record = item[0]
            at = record_time_us(record)
            if at is not None and at > self.clock:
                self.clock = at
            kind = record.WhichOneof("event")
            if kind == "decision":
                self.decisions.setdefault(record.decision.event_id, (self.clock, segment, pos))
            elif kind == "outcome" and wanted_outcome(record.outcome, self.surface):
                self.outcomes.append((self.clock, segment, pos))
            yield item

    def note_segment(self, segment: int, times: np.ndarray, decision_ids: list[str], decision_records: np.ndarray,
                     outcome_records: np.ndarray) -> None:
        """A segment replayed at once: ``times`` per record in segment order (-1: no time of its own), its decisions'
        event_ids and record indices, its kept outcomes' record indices (in order)."""
        clocks = np.maximum.accumulate(np.maximum(times.astype(np.int64), self.clock)) if times.size else times
        at = clocks[decision_records].tolist()
        setdefault = self.decisions.setdefault
        for event_id, clock, pos in zip(decision_ids, at, decision_records.tolist()):
            setdefault(event_id, (clock, segment, pos))
        self.outcomes += [(clock, segment, pos) for clock, pos in zip(clocks[outcome_records].tolist(),
                                                                      outcome_records.tolist())]
        if times.size:
            self.clock = int(clocks[-1])

    def decision_keys(self, decisions: pl.DataFrame) -> pl.DataFrame:
        """``decisions`` (rows with event_id) with clock, segment and pos."""
        ids, keys = list(self.decisions), list(self.decisions.values())
        at = pl.DataFrame({"event_id": ids, "clock": [k[0] for k in keys], "segment": [k[1] for k in keys],
                           "pos": [k[2] for k in keys]}, schema={"event_id": pl.String, **_KEY_SCHEMA})
        return decisions.join(at, on="event_id", how="left", maintain_order="left")

    def outcome_keys(self, outcomes: pl.DataFrame) -> pl.DataFrame:
        """``outcomes`` (the kept outcomes' rows, in the order noted) with clock, segment and pos."""
        return outcomes.with_columns(pl.Series(name, [k[i] for k in self.outcomes], dtype)
                                     for i, (name, dtype) in enumerate(_KEY_SCHEMA.items()))


__all__ = ["MERGE_KEY", "Places", "wanted_outcome"]
