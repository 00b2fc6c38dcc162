"""A simulated host backend: plays the world's page views against the ranking service over gRPC.

For each page view: ``Rank`` → the served slate goes to ``world.respond`` → a click is reported with
``ReportOutcome(event_id, item_id, "click", 1.0)`` (optionally its dwell too). With
``report_return_visit`` the last decision of every session gets a whole-slate (``item_id=""``) outcome
``return_visit`` with value 1 or 0 once the next day shows whether the user came back; sessions still
running when the run stops get none. With ``report_session_end`` that decision also gets a whole-slate
``session_end`` outcome (value 1) as soon as the session ends: simulated days pass in milliseconds of wall
time, so log readers cannot find session boundaries from time gaps. The surface's reward definition must
accept every outcome name the host reports (the server rejects unknown names).

For each request the record keeps the served slate's exact click probability and what the myopic oracle's
and a uniform-random slate's would have been on the same page view, so learned-vs-random-vs-oracle curves
need no extra traffic.

World calls are serialised under one lock (the world is not thread-safe); only the RPCs overlap when
``concurrency`` > 1. A run is reproducible (given a deterministic server) only with ``concurrency=1``:
with more threads, the order in which responses reach the world varies.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.sim.population import Candidate, Catalog
from recsys_rl.sim.world import PageView, World

# Catalog items never change, so each item's Candidate message is built once and copied into requests:
# filling protobuf maps field by field costs microseconds per candidate.
_CANDIDATE_PROTOS: weakref.WeakKeyDictionary[Catalog, dict[str, pb.Candidate]] = weakref.WeakKeyDictionary()
_MAX_EMPTY_DAYS = 1000


def _candidate_protos(catalog: Catalog) -> dict[str, pb.Candidate]:
    protos = _CANDIDATE_PROTOS.get(catalog)
    if protos is None:
        protos = {c.item_id: _candidate_proto(c) for c in catalog.candidates}
        _CANDIDATE_PROTOS[catalog] = protos
    return protos


def _candidate_proto(candidate: Candidate) -> pb.Candidate:
    message = pb.Candidate(item_id=candidate.item_id, baseline_score=candidate.baseline_score,
                           embedding=candidate.embedding or ())
    message.features.numeric.update(candidate.features.numeric)
    message.features.categorical.update(candidate.features.categorical)
    message.features.tags.extend(candidate.features.tags)
    return message


def to_rank_request(page_view: PageView, request_id: str, surface: str, *,
                    catalog: Catalog | None = None) -> pb.RankRequest:
    """The ``RankRequest`` a host would send for this page view.

    Pass the world's ``catalog`` to copy cached per-item messages instead of rebuilding them (faster).
    """
    request = pb.RankRequest(request_id=request_id, surface=surface, user_id=page_view.user_id,
                             slate_size=page_view.slate_size)
    request.context.numeric.update(page_view.context.numeric)
    request.context.categorical.update(page_view.context.categorical)
    request.context.tags.extend(page_view.context.tags)
    if catalog is None:
        request.candidates.extend([_candidate_proto(c) for c in page_view.candidates])
    else:
        protos = _candidate_protos(catalog)
        request.candidates.extend([protos[c.item_id] for c in page_view.candidates])
    return request


@dataclass(frozen=True)
class RequestRecord:
    """One served page view and what came of it."""

    request_index: int
    request_id: str
    event_id: str
    user_id: str
    day: int
    session_step: int
    served: tuple[str, ...]
    propensities: tuple[float, ...]  # per slot, as the server reported them
    explored: tuple[bool, ...]
    slate_propensity: float
    serving_mode: str  # ServingMode name, e.g. "SERVING_MODE_LEARNED"
    policy_version: str
    clicked_item_id: str | None
    clicked_position: int | None
    dwell_seconds: float
    session_ended: bool
    served_click_prob: float  # exact P(click) of the served slate: a noise-free view of the realised click
    oracle_click_prob: float  # P(click) of the myopic oracle's slate on the same page view
    random_click_prob: float  # expected P(click) of a uniformly random slate on the same page view
    rank_latency_ms: float
    # The page view itself (with its simulator-only truth), kept only with run_host(keep_page_views=True): what a
    # counterfactual's truth is computed on (recsys_rl.sim.truth).
    page_view: PageView | None = field(default=None, repr=False, compare=False)

    @property
    def clicked(self) -> bool:
        return self.clicked_item_id is not None


@dataclass(frozen=True)
class WindowStats:
    """Averages over requests [start, end)."""

    start: int
    end: int
    click_rate: float  # realised clicks per request
    expected_click_rate: float  # mean served_click_prob
    oracle_click_rate: float
    random_click_rate: float
    explored_share: float  # share of requests with at least one explored slot
    learned_share: float  # share served by the learned policy
    mean_latency_ms: float


@dataclass
class HostStats:
    """Per-request records (ordered by request index) and outcome-report counters."""

    records: list[RequestRecord] = field(default_factory=list)
    outcomes_reported: Counter[str] = field(default_factory=Counter)
    outcomes_unattributed: Counter[str] = field(default_factory=Counter)  # the server said attributed=False
    days_started: int = 0

    @property
    def n_requests(self) -> int:
        return len(self.records)

    @property
    def click_rate(self) -> float:
        return sum(r.clicked for r in self.records) / max(len(self.records), 1)

    def serving_modes(self) -> Counter[str]:
        return Counter(r.serving_mode for r in self.records)

    def windows(self, size: int) -> list[WindowStats]:
        """Statistics per consecutive window of ``size`` requests (the last one may be shorter)."""
        if size < 1:
            raise InvalidInput("size", f"must be >= 1, got {size}")
        out = []
        for start in range(0, len(self.records), size):
            chunk = self.records[start:start + size]
            n = len(chunk)
            out.append(WindowStats(
                start=start,
                end=start + n,
                click_rate=sum(r.clicked for r in chunk) / n,
                expected_click_rate=sum(r.served_click_prob for r in chunk) / n,
                oracle_click_rate=sum(r.oracle_click_prob for r in chunk) / n,
                random_click_rate=sum(r.random_click_prob for r in chunk) / n,
                explored_share=sum(any(r.explored) for r in chunk) / n,
                learned_share=sum(r.serving_mode == "SERVING_MODE_LEARNED" for r in chunk) / n,
                mean_latency_ms=sum(r.rank_latency_ms for r in chunk) / n,
            ))
        return out

    def format_windows(self, size: int) -> str:
        """A plain-text table of ``windows(size)``: learned (realised and expected) vs random vs oracle."""
        header = ("requests", "clicks", "served", "random", "oracle", "explored", "ms")
        lines = ["{:>15}  {:>6}  {:>6}  {:>6}  {:>6}  {:>8}  {:>5}".format(*header)]
        for w in self.windows(size):
            lines.append(f"{w.start:>7}-{w.end:<7}  {w.click_rate:6.3f}  {w.expected_click_rate:6.3f}  "
                         f"{w.random_click_rate:6.3f}  {w.oracle_click_rate:6.3f}  {w.explored_share:8.2f}  "
                         f"{w.mean_latency_ms:5.1f}")
        return "\n".join(lines)


def run_host(
    stub: pb_grpc.RankingServiceStub,
    world: World,
    *,
    n_requests: int,
    surface: str = "default",
    outcome_name: str = "click",
    progress: Callable[[int, int], None] | None = None,
    concurrency: int = 1,
    report_dwell: bool = False,
    dwell_outcome_name: str = "dwell_seconds",
    report_return_visit: bool = False,
    return_outcome_name: str = "return_visit",
    report_session_end: bool = False,
    session_end_outcome_name: str = "session_end",
    request_id_prefix: str = "sim",
    timeout_s: float = 10.0,
    keep_page_views: bool = False,
) -> HostStats:
    """Serve ``n_requests`` page views through ``stub``; days advance when today's sessions are over.

    ``progress(done, n_requests)`` is called after each completed request. RPC errors propagate (with the
    request id in the exception notes) after in-flight requests finish.
    """
    if n_requests < 0:
        raise InvalidInput("n_requests", f"must be >= 0, got {n_requests}")
    if concurrency < 1:
        raise InvalidInput("concurrency", f"must be >= 1, got {concurrency}")
    if world.pending:
        raise InvalidInput("world", f"{world.pending} page views still await respond()")
    stats = HostStats()
    lock = threading.Lock()
    last_event_of_session: dict[str, str] = {}  # user id -> event id of the last decision of a finished session

    def report(event_id: str, item_id: str, outcome: str, value: float) -> None:
        response = stub.ReportOutcome(pb.ReportOutcomeRequest(event_id=event_id, item_id=item_id, outcome=outcome,
                                                              value=value), timeout=timeout_s)
        with lock:
            stats.outcomes_reported[outcome] += 1
            if not response.attributed:
                stats.outcomes_unattributed[outcome] += 1

    def serve(page_view: PageView, request: pb.RankRequest, oracle: float, random: float) -> RequestRecord:
        try:
            started = time.perf_counter()
            ranked = stub.Rank(request, timeout=timeout_s)
            latency_ms = (time.perf_counter() - started) * 1e3
            served = tuple(item.item_id for item in ranked.slate)
            with lock:
                served_prob = world.slate_click_prob(page_view, served)
                response = world.respond(page_view, served)
                if response.session_ended and report_return_visit:
                    last_event_of_session[page_view.user_id] = ranked.event_id
            if response.clicked_item_id is not None:
                report(ranked.event_id, response.clicked_item_id, outcome_name, 1.0)
                if report_dwell:
                    report(ranked.event_id, response.clicked_item_id, dwell_outcome_name, response.dwell_seconds)
            if response.session_ended and report_session_end:
                report(ranked.event_id, "", session_end_outcome_name, 1.0)
        except Exception as exc:
            exc.add_note(f"while serving request {request.request_id} (user {page_view.user_id})")
            raise
        return RequestRecord(
            request_index=page_view.request_index, request_id=request.request_id, event_id=ranked.event_id,
            user_id=page_view.user_id, day=page_view.day, session_step=page_view.session_step, served=served,
            propensities=tuple(item.propensity for item in ranked.slate),
            explored=tuple(item.explored for item in ranked.slate), slate_propensity=ranked.slate_propensity,
            serving_mode=pb.ServingMode.Name(ranked.serving_mode), policy_version=ranked.policy_version,
            clicked_item_id=response.clicked_item_id, clicked_position=response.clicked_position,
            dwell_seconds=response.dwell_seconds, session_ended=response.session_ended,
            served_click_prob=served_prob, oracle_click_prob=oracle, random_click_prob=random,
            rank_latency_ms=latency_ms, page_view=page_view if keep_page_views else None,
        )

    def start_next_day() -> None:
        with lock:
            day = world.next_day()
        stats.days_started += 1
        if report_return_visit:
            for user_id, returned in day.returned.items():
                event_id = last_event_of_session.pop(user_id, None)
                if event_id is not None:
                    report(event_id, "", return_outcome_name, 1.0 if returned else 0.0)

    def complete(record: RequestRecord) -> None:
        stats.records.append(record)
        if progress is not None:
            progress(len(stats.records), n_requests)

    executor = ThreadPoolExecutor(concurrency, thread_name_prefix="sim-host") if concurrency > 1 else None
    in_flight: set[Future[RequestRecord]] = set()
    issued = 0
    empty_days = 0
    try:
        while issued < n_requests or in_flight:
            if issued < n_requests and len(in_flight) < concurrency:
                with lock:
                    page_view = world.next_page_view()
                    if page_view is not None:
                        # Measured before serving, in issue order: deterministic and on the same user state.
                        oracle = world.slate_click_prob(page_view, world.oracle_slate(page_view))
                        random = world.random_slate_click_prob(page_view)
                if page_view is not None:
                    empty_days = 0
                    request = to_rank_request(page_view, f"{request_id_prefix}-{page_view.request_index}", surface,
                                              catalog=world.catalog)
                    issued += 1
                    if executor is None:
                        complete(serve(page_view, request, oracle, random))
                    else:
                        in_flight.add(executor.submit(serve, page_view, request, oracle, random))
                    continue
                if not in_flight:
                    empty_days += 1
                    if empty_days > _MAX_EMPTY_DAYS:
                        raise RuntimeError(f"no user visited for {_MAX_EMPTY_DAYS} simulated days in a row")
                    start_next_day()
                    continue
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                complete(future.result())
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
    stats.records.sort(key=lambda r: r.request_index)
    return stats
