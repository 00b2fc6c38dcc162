"""Serving while the decision log cannot take records: the baseline, unlogged and counted; a gap record after.

Invariant 4 says a valid request always gets a slate and no learned or explored slate is served without its
event safely queued. So ``DecisionService.rank`` asks ``LogGuard.ready()`` before it lets the policy decide;
when the log writer is in a write-error episode (disk full, EIO: ``LogWriter.available`` is False) or refuses
the record, the request gets the policy's baseline through the decision path (``serve_baseline=log_unavailable``:
propensity 1, SERVING_MODE_BASELINE_FALLBACK) and nothing is logged for it. Outcomes are refused with NotReady (UNAVAILABLE,
retryable): an outcome is acknowledged only once its record is queued.

The guard counts what went unlogged (decisions in total and per surface, first and last time, refused
outcomes, the writer's first error) and, once the writer takes records again, submits one ``LogGap`` record
stating it, before any other record: readers then know which time range has no decisions, and why. Decisions
served unlogged have no event; their event ids are unknown to ReportOutcome (NOT_FOUND).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from logging_schema.writer import LogRecordsLost, LogWriter, LogWriterError
from recsys_rl.errors import NotReady
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.serving.decision import Decision

log = logging.getLogger(__name__)

LOG_UNAVAILABLE = "log_unavailable"
# How long shutdown waits for the writer before it gives up on the records it holds. A healthy writer drains in
# far less (its queue is normally milliseconds of traffic); a failing disk costs this much, and with the gRPC
# drain and the learner's stop SIGTERM still exits within 10 s (ranker.server.serve_forever).
CLOSE_TIMEOUT_S = 3.0


@dataclass
class Gap:
    """What went unlogged during one episode of a log that could not take records."""

    reason: str
    first_unlogged_s: float | None = None
    last_unlogged_s: float | None = None
    decisions: int = 0
    by_surface: dict[str, int] = field(default_factory=dict)
    outcomes_refused: int = 0

    def record(self, now_s: float) -> events_pb2.LogRecord:
        gap = events_pb2.LogGap(decisions_unlogged=self.decisions, outcomes_refused=self.outcomes_refused,
                                reason=self.reason)
        gap.decisions_unlogged_by_surface.update(self.by_surface)
        if self.first_unlogged_s is not None and self.last_unlogged_s is not None:
            gap.first_unlogged_at.FromNanoseconds(int(self.first_unlogged_s * 1e9))
            gap.last_unlogged_at.FromNanoseconds(int(self.last_unlogged_s * 1e9))
        gap.recorded_at.FromNanoseconds(int(now_s * 1e9))
        return events_pb2.LogRecord(gap=gap)

    def describe(self) -> str:
        span = ""
        if self.first_unlogged_s is not None and self.last_unlogged_s is not None:
            span = f" from {_iso(self.first_unlogged_s)} to {_iso(self.last_unlogged_s)}"
        return (f"{self.decisions} decisions served unlogged{span}, {self.outcomes_refused} outcomes refused "
                f"({self.reason})")


@dataclass(frozen=True)
class GuardStats:
    """Totals since start; ``open_gap`` is the episode not yet stated by a gap record (None when there is none)."""

    decisions_unlogged: int
    outcomes_refused: int
    gaps_written: int
    open_gap: Gap | None


class LogGuard:
    """Decides, per call, whether records may be submitted; serves and counts what may not. Thread-safe."""

    def __init__(self, writer: LogWriter) -> None:
        self._writer = writer
        self._lock = threading.Lock()
        self._gap: Gap | None = None
        self._decisions_unlogged = 0
        self._outcomes_refused = 0
        self._gaps_written = 0

    def ready(self) -> bool:
        """True when the log takes records; a pending gap record is submitted first. Cheap when all is well."""
        if self._gap is None:
            return self._writer.available
        return self._write_gap()

    def unlogged(self, decision: Decision) -> tuple[Decision, str]:
        """Counts ``decision`` (the policy's baseline, served because of this guard) in the gap; it gets an event
        id that names nothing in the log."""
        now = time.time()
        with self._lock:
            gap = self._open_gap()
            gap.decisions += 1
            gap.by_surface[decision.surface] = gap.by_surface.get(decision.surface, 0) + 1
            gap.first_unlogged_s = now if gap.first_unlogged_s is None else gap.first_unlogged_s
            gap.last_unlogged_s = now
            self._decisions_unlogged += 1
        return decision, uuid.uuid4().hex

    def refuse_outcome(self) -> NotReady:
        """Counts a refused outcome; returns the error to raise (UNAVAILABLE: the host retries it)."""
        with self._lock:
            gap = self._open_gap()
            gap.outcomes_refused += 1
            self._outcomes_refused += 1
            reason = gap.reason
        return NotReady(f"decision log unavailable ({reason}); the outcome was not recorded: retry with the same "
                        "outcome_id")

    def stats(self) -> GuardStats:
        with self._lock:
            gap = None if self._gap is None else Gap(**{**self._gap.__dict__, "by_surface": dict(self._gap.by_surface)})
            return GuardStats(self._decisions_unlogged, self._outcomes_refused, self._gaps_written, gap)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Writes a pending gap record if it can, then closes the writer within ``timeout_s``.

        What could not be written goes to the log (stderr under ``recsys-rl serve``) in one or two lines.
        """
        gap = self._gap
        written = gap is not None and self._write_gap()
        try:
            self._writer.close(timeout=timeout_s)
        except LogRecordsLost as exc:
            log.error("decision log: %d accepted records could not be written before shutdown (%s)", exc.unwritten,
                      exc.__cause__ or exc)
            if written and gap is not None:
                log.error("decision log: the gap record may be among them: %s", gap.describe())
        if not written and gap is not None:
            log.error("decision log: %s; no gap record could be written", gap.describe())

    # ------------------------------------------------------------------------------------------ internals

    def _open_gap(self) -> Gap:
        """The current episode's gap (created, and the episode announced, on its first unlogged call)."""
        if self._gap is None:
            health = self._writer.health()
            self._gap = Gap(reason=health.error or "the log writer refused the record")
            log.error("decision log cannot take records (%s): serving the baseline unlogged (fallback reason %s) "
                      "and answering ReportOutcome UNAVAILABLE until it recovers", self._gap.reason, LOG_UNAVAILABLE)
        return self._gap

    def _write_gap(self) -> bool:
        with self._lock:
            gap = self._gap
            if gap is None:
                return self._writer.available
            if not self._writer.available:
                return False
            try:
                self._writer.submit(gap.record(time.time()))
            except LogWriterError:
                return False  # still cannot take records: the episode goes on, in the same gap
            self._gap = None
            self._gaps_written += 1
        log.warning("decision log takes records again; gap record written: %s", gap.describe())
        return True


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
