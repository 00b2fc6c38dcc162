"""A worker's RankingService: says which worker answered, and sends other workers' outcomes to their owners.

Every response carries the initial metadata ``x-recsys-rl-worker: K`` (operators and tests see who answered).
ReportOutcome for an event id ``wJ.…`` that another worker J served is forwarded to J's outcome listener, a second
gRPC server on a Unix socket (``D/run/worker-J.sock``) that serves ReportOutcome only and never forwards: J
attributes it, dedups it by outcome_id and logs it in its own stream, so the learner's join and retry dedup work as
in one process. The forwarded call carries the caller's remaining deadline, and J's answer (status and details)
goes back unchanged; J unreachable (restarting) is UNAVAILABLE, which hosts retry and dedup makes safe.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import NoReturn

import grpc

from ranker.errors import bounded_details
from ranker.servicer import RankingServicer
from ranker.workers.layout import outcome_socket, owner_of
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

WORKER_METADATA = "x-recsys-rl-worker"
# A forwarded outcome whose caller set no deadline still gets one: a hop on the same machine takes milliseconds.
FORWARD_TIMEOUT_S = 5.0
# Reconnect quickly to a restarted worker (gRPC's default backoff grows to 2 minutes).
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000)]


class WorkerServicer(pb_grpc.RankingServiceServicer):
    """Wraps worker ``index``'s own servicer (``local``); ``workers``: how many the parent runs."""

    def __init__(self, local: RankingServicer, *, index: int, workers: int, data_dir: Path) -> None:
        self.local = local
        self._index = index
        self._workers = workers
        self._data_dir = Path(data_dir)
        self._metadata = ((WORKER_METADATA, str(index)),)
        self._stubs: dict[int, pb_grpc.RankingServiceStub] = {}
        self._channels: list[grpc.Channel] = []
        self._lock = threading.Lock()

    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:  # noqa: N802
        context.send_initial_metadata(self._metadata)
        return self.local.Rank(request, context)

    def ReportOutcome(  # noqa: N802
        self, request: pb.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        context.send_initial_metadata(self._metadata)
        started = time.perf_counter()
        try:
            owner = owner_of(request.event_id)
        except InvalidInput as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), started)
        if owner is None or owner == self._index:
            return self.local.ReportOutcome(request, context)
        if owner >= self._workers:
            self._refuse(context, grpc.StatusCode.NOT_FOUND,
                         f"event_id: {request.event_id!r} names worker {owner}, but this server runs workers "
                         f"0-{self._workers - 1}", started)
        return self._forward(owner, request, context)  # the owner counts it in its metrics

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str, started: float) -> NoReturn:
        self.local.metrics.outcome_reported(code.name, time.perf_counter() - started)
        context.abort(code, bounded_details(message))
        raise AssertionError("context.abort returned")  # it raises; this keeps the type checker honest

    def _forward(self, owner: int, request: pb.ReportOutcomeRequest,
                 context: grpc.ServicerContext) -> pb.ReportOutcomeResponse:
        remaining = context.time_remaining()
        timeout = FORWARD_TIMEOUT_S if remaining is None else min(remaining, FORWARD_TIMEOUT_S)
        if timeout <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed before forwarding")
        try:
            return self._stub(owner).ReportOutcome(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            details = exc.details() or ""  # type: ignore[attr-defined]
            if code is grpc.StatusCode.UNAVAILABLE:
                details = (f"event_id: worker {owner}, which served {request.event_id!r}, is not reachable "
                           f"(restarting?); retry (an outcome_id counts once): {details}")
            context.abort(code, bounded_details(details))
            raise

    def _stub(self, owner: int) -> pb_grpc.RankingServiceStub:
        with self._lock:
            stub = self._stubs.get(owner)
            if stub is None:
                channel = grpc.insecure_channel(outcome_socket(self._data_dir, owner)[0], options=_CHANNEL_OPTIONS)
                self._channels.append(channel)
                stub = self._stubs[owner] = pb_grpc.RankingServiceStub(channel)
            return stub

    def close(self) -> None:
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._stubs.clear()


class _OwnOutcomes(pb_grpc.RankingServiceServicer):
    """The outcome listener's servicer: ReportOutcome handled here, never forwarded; Rank is UNIMPLEMENTED."""

    def __init__(self, local: RankingServicer) -> None:
        self._local = local

    def ReportOutcome(  # noqa: N802
        self, request: pb.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        return self._local.ReportOutcome(request, context)


def start_outcome_listener(local: RankingServicer, data_dir: Path, index: int) -> grpc.Server:
    """Serves forwarded outcomes for worker ``index`` on its Unix socket (a stale file of a killed worker is
    replaced)."""
    address, path = outcome_socket(data_dir, index)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
    server = grpc.server(futures.ThreadPoolExecutor(2, thread_name_prefix="forwarded"))
    pb_grpc.add_RankingServiceServicer_to_server(_OwnOutcomes(local), server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"could not listen on {address}")
    server.start()
    return server
