"""One served log written twice with real LogWriters: as one stream, and split into ``worker-K`` streams.

``served_log`` serves simulated page views through the real DecisionService (real scores, candidates, features,
propensities and click outcomes). ``split_log`` re-times its records (1 ms apart, in log order, so every record
time is distinct and a single process would have written them in this order), adds answers of one outcome id given
twice with different values, and writes the records:

* ``single/logs``: all of them, in order, one stream (the reference);
* ``multi/logs/worker-0..2``: each decision in the stream of the worker that "served" it, its outcomes in the
  same stream after it, except the first of each repeated answer, which lands on another worker's stream (as after
  a change of the number of workers) - only a merge by time puts it first, where "the first answer wins" needs it;
  ``worker-2`` ends in a torn record, as after a crash mid-write.

Every reader must see the same log in both: readers' results on ``single`` are the expectation for ``multi``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from logging_schema.reader import iter_records
from logging_schema.segments import frame, list_segments, stream_dir
from logging_schema.writer import LogWriter
from recsys_rl.config import ExplorationConfig, ServiceConfig, SurfaceConfig
from recsys_rl.logging.v1.events_pb2 import LogRecord, OutcomeEvent
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from tests.logging_schema.builders import BASE_US, set_micros

WORKERS = 3
TORN_WORKER = 2
# No decision budget to speak of: a Rank slowed past 25 ms (a garbage collection on a loaded machine) would be served
# by the baseline, and the tests that replay these logs from logged scores expect every decision learned.
CONFIG = ServiceConfig(surfaces={
    "default": SurfaceConfig(exploration_cap=0.2, exploration=ExplorationConfig(epsilon=1.0), decision_budget_ms=1e6),
})


def served_log(data_dir: Path, n: int, *, seed: int = 0) -> None:
    """``n`` simulated page views served on surface "default" in-process, clicks reported; log in ``data_dir/logs``."""
    from recsys_rl.serving.service import DecisionService
    from recsys_rl.sim import SimConfig, World
    from recsys_rl.sim.host import to_rank_request

    service = DecisionService(CONFIG, data_dir, learner="off", watch_models=False)
    world = World(SimConfig(n_candidates=10, slate_size=2), seed=seed)
    served = 0
    try:
        while served < n:
            page_view = world.next_page_view()
            if page_view is None:
                world.next_day()
                continue
            request = to_rank_request(page_view, f"r{served}", "default", catalog=world.catalog)
            decision, event_id = service.rank(request)
            response = world.respond(page_view, [slot.item_id for slot in decision.slots])
            if response.clicked_item_id is not None:
                service.report_outcome(pb.ReportOutcomeRequest(
                    event_id=event_id, item_id=response.clicked_item_id, outcome="click", value=1.0))
            served += 1
    finally:
        service.close()


@dataclass
class SplitLog:
    single: Path  # data dir whose logs are one stream
    multi: Path  # data dir whose logs are WORKERS streams
    records: list[LogRecord]  # in log order
    times_us: list[int]  # each record's time


def _answer(event_id: str, item_id: str, value: float, outcome_id: str) -> LogRecord:
    return LogRecord(outcome=OutcomeEvent(event_id=event_id, item_id=item_id, outcome="click", value=value,
                                          surface="default", attributed=True, outcome_id=outcome_id))


def split_log(source: Path, root: Path, *, repeated_answers: int = 5, rotate_bytes: int = 64 << 10) -> SplitLog:
    """See the module docstring. ``source`` is a data dir from ``served_log``."""
    records: list[LogRecord] = []
    owner: dict[str, int] = {}
    worker_of: list[int] = []
    decisions = 0
    for record in iter_records(source / "logs"):
        records.append(record)
        if record.WhichOneof("event") == "decision":
            owner[record.decision.event_id] = decisions % WORKERS
            decisions += 1
            worker_of.append(owner[record.decision.event_id])
            if decisions % 7 == 0 and repeated_answers > 0:  # one outcome id answered twice, first with 0, then 1
                repeated_answers -= 1
                event = record.decision
                item = event.slate[0].item_id
                first = _answer(event.event_id, item, 0.0, f"again-{event.event_id}")
                records.append(first)
                worker_of.append((owner[event.event_id] + 1) % WORKERS)  # another worker's stream
                records.append(_answer(event.event_id, item, 1.0, f"again-{event.event_id}"))
                worker_of.append(owner[event.event_id])
        else:
            worker_of.append(owner[record.outcome.event_id] if record.WhichOneof("event") == "outcome" else 0)
    times = [BASE_US + 1_000 * i for i in range(len(records))]
    for record, at in zip(records, times):
        if record.WhichOneof("event") == "decision":
            set_micros(record.decision.served_at, at)
        elif record.WhichOneof("event") == "outcome":
            set_micros(record.outcome.received_at, at)
            set_micros(record.outcome.occurred_at, at)

    single, multi = root / "single", root / "multi"
    for data_dir in (single, multi):  # the models and admin state the records were served with
        shutil.copytree(source, data_dir, ignore=lambda directory, _: ["logs"] if Path(directory) == source else [])
    with LogWriter(single / "logs", rotate_bytes=rotate_bytes) as writer:
        for record in records:
            writer.submit(_copy(record))
    for worker in range(WORKERS):
        with LogWriter(stream_dir(multi / "logs", worker), rotate_bytes=rotate_bytes) as writer:
            for record, w in zip(records, worker_of):
                if w == worker:
                    writer.submit(_copy(record))
    last = list_segments(stream_dir(multi / "logs", TORN_WORKER))[-1]
    with open(last, "ab") as fh:  # a crash mid-write: a frame cut short
        fh.write(frame(records[0].SerializeToString())[:40])
    return SplitLog(single, multi, records, times)


def _copy(record: LogRecord) -> LogRecord:
    """The writer owns what it is given; the test keeps its own."""
    copy = LogRecord()
    copy.CopyFrom(record)
    return copy
