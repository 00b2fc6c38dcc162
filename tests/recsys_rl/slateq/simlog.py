"""Real log directories for the SlateQ tests: the simulator played with uniformly random slates, logged with
``logging_schema.writer.LogWriter`` exactly as the service would (decisions with exact propensities, click
and dwell outcomes, and ``return_visit`` on the last decision of every finished session, the sim host's
convention). Simulated days are laid out on the log's clock: day d starts at BASE + d·86400 s and page views
are 20 s apart, so session gaps, return horizons and attribution windows behave as in production.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from logging_schema.writer import LogQueueFull, LogWriter
from recsys_rl.logging.v1.events_pb2 import DecisionEvent, LogRecord, OutcomeEvent
from recsys_rl.ranking.v1.ranking_service_pb2 import SERVING_MODE_LEARNED
from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.host import to_rank_request

BASE_S = 1_700_000_000
DAY_S = 86_400
STEP_S = 20


def _submit(writer: LogWriter, record: LogRecord) -> None:
    """Submit, waiting for the writer when the generator outruns it (the service sheds load instead)."""
    try:
        writer.submit(record)
    except LogQueueFull:
        writer.flush()
        writer.submit(record)


def _stamp(timestamp: object, seconds: float) -> None:
    timestamp.seconds = int(seconds)  # type: ignore[attr-defined]
    timestamp.nanos = int(round((seconds - int(seconds)) * 1e9))  # type: ignore[attr-defined]


def write_sim_log(log_dir: Path, *, decisions: int, seed: int = 0, config: SimConfig | None = None) -> int:
    """Plays ``decisions`` page views into ``log_dir``; returns the number of decisions written."""
    world = World(config or SimConfig(n_users=60, n_items=80), seed=seed)
    rng = np.random.default_rng(seed + 1)
    last_event: dict[str, str] = {}  # user -> last decision of the session that just ended
    written, clock = 0, float(BASE_S)
    with LogWriter(log_dir) as writer:
        while written < decisions:
            page_view = world.next_page_view()
            if page_view is None:
                report = world.next_day()
                clock = BASE_S + report.day * DAY_S
                for user_id, returned in report.returned.items():
                    event_id = last_event.pop(user_id, None)
                    if event_id is not None:
                        _outcome(writer, event_id, "", "return_visit", 1.0 if returned else 0.0, clock)
                continue
            clock += STEP_S
            request = to_rank_request(page_view, f"r{written}", "default", catalog=world.catalog)
            n, k = len(request.candidates), request.slate_size
            picks = rng.choice(n, size=k, replace=False)
            event = DecisionEvent(event_id=f"e{written}", request_id=request.request_id, surface="default",
                                  user_id=request.user_id, context=request.context, slate_size=k,
                                  policy_version="random", serving_mode=SERVING_MODE_LEARNED,
                                  attribution_window_seconds=5.0)
            event.candidates.extend(request.candidates)
            _stamp(event.served_at, clock)
            propensity = 1.0
            for position, j in enumerate(picks.tolist()):
                p = 1.0 / (n - position)  # uniform without replacement: exact per-slot propensity
                propensity *= p
                event.slate.add(item_id=request.candidates[j].item_id, position=position, propensity=p,
                                candidate_index=j, exploration_mass=1.0)
            event.slate_propensity = propensity
            _submit(writer, LogRecord(decision=event))
            response = world.respond(page_view, [s.item_id for s in event.slate])
            if response.clicked_item_id is not None:
                _outcome(writer, event.event_id, response.clicked_item_id, "click", 1.0, clock + 2)
                _outcome(writer, event.event_id, response.clicked_item_id, "dwell_seconds", response.dwell_seconds,
                         clock + 3)
            if response.session_ended:
                last_event[request.user_id] = event.event_id
            written += 1
    return written


def _outcome(writer: LogWriter, event_id: str, item_id: str, name: str, value: float, at_s: float) -> None:
    outcome = OutcomeEvent(event_id=event_id, item_id=item_id, outcome=name, value=value, surface="default")
    _stamp(outcome.occurred_at, at_s)
    _stamp(outcome.received_at, at_s)
    _submit(writer, LogRecord(outcome=outcome))
