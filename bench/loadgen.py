"""An asyncio load generator for RankingService: Rank, with ReportOutcome on a share of the decisions.

Kept cheap so the cores go to the server: Rank requests are serialized once up front and sent through a raw
``channel.unary_unary`` with identity serializers; the only per-call protobuf work is parsing the response (upb)
and, for an outcome, building one small request. Several connections, because ``SO_REUSEPORT`` spreads
*connections* (not calls) over the workers.

Outcomes: a click on one served item of ``outcome_share`` of the decisions, sent as its own task (the caller does
not wait for it) on a *different* connection than its Rank, as a host whose outcome path is another service would;
with two workers about half of them land on a worker that did not serve the decision and are forwarded. Which
worker a connection reaches is read from the event ids its Ranks return (``wK.…``: a connection stays on one
worker), so an outcome counts as forwarded when its event id names another worker than its connection's.

Two ways to drive: ``closed_loop`` (N callers, each one call in flight, back to back: finds the maximum) and
``open_loop`` (Ranks sent at a fixed rate whatever the answers, latency counted from the scheduled send, so a slow
server is not hidden by a client that waits for it).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

RANK = "/recsys_rl.ranking.v1.RankingService/Rank"
REPORT_OUTCOME = "/recsys_rl.ranking.v1.RankingService/ReportOutcome"


def _identity(payload: bytes) -> bytes:
    return payload


@dataclass
class PhaseResult:
    """What one timed phase measured from the client (latencies in ms; ``span_s`` of wall time)."""

    span_s: float
    rank_ms: list[float] = field(default_factory=list)
    rank_results: Counter[str] = field(default_factory=Counter)  # serving mode (lower case) or gRPC status code
    outcome_ms: dict[str, list[float]] = field(default_factory=lambda: {"local": [], "forwarded": []})
    outcome_results: Counter[str] = field(default_factory=Counter)  # attributed / unattributed / status code

    @property
    def ranks_ok(self) -> int:
        return sum(n for result, n in self.rank_results.items() if result not in _ERRORS)

    @property
    def rank_rate(self) -> float:
        return self.ranks_ok / self.span_s

    @property
    def outcomes(self) -> int:
        return sum(len(v) for v in self.outcome_ms.values())

    def rank_percentile(self, q: float) -> float:
        return float(np.percentile(self.rank_ms, q)) if self.rank_ms else float("nan")


_ERRORS = {code.name.lower() for code in grpc.StatusCode if code is not grpc.StatusCode.OK}


class LoadClient:
    """``connections`` channels to ``address``; use inside one ``asyncio.run`` and ``await close()``."""

    def __init__(self, address: str, payloads: Sequence[bytes], *, connections: int, outcome_share: float,
                 deadline_s: float, seed: int = 0) -> None:
        # A local subchannel pool per channel: otherwise channels to one address share one TCP connection.
        self._channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                          for _ in range(connections)]
        self._rank = [c.unary_unary(RANK, request_serializer=_identity, response_deserializer=_identity)
                      for c in self._channels]
        self._report = [c.unary_unary(REPORT_OUTCOME, request_serializer=_identity, response_deserializer=_identity)
                        for c in self._channels]
        self._payloads = payloads
        self._outcome_share = outcome_share
        self._deadline_s = deadline_s
        self._random = random.Random(seed)
        self._next_payload = 0
        self._next_outcome = 0
        self._pending: set[asyncio.Task[None]] = set()
        # The worker each connection reaches ("" until one of its Ranks answered; "-" for a single process).
        self.connection_worker: list[str] = [""] * connections
        self._by_worker: list[list[int]] = [list(range(connections))]

    async def connect(self, timeout_s: float = 30.0) -> None:
        """Untimed Ranks on every connection until each has answered once (a cold server may refuse the first
        burst): connects them and learns which worker each reaches. Raises TimeoutError past ``timeout_s``."""
        give_up_at = time.perf_counter() + timeout_s
        while unknown := [k for k, worker in enumerate(self.connection_worker) if not worker]:
            if time.perf_counter() > give_up_at:
                raise TimeoutError(f"connections {unknown} never answered Rank")
            await asyncio.gather(*(self._one_rank(k, time.perf_counter(), None) for k in unknown))
        await self._outcomes_answered()
        groups: dict[str, list[int]] = {}
        for k, worker in enumerate(self.connection_worker):
            groups.setdefault(worker, []).append(k)
        self._by_worker = [groups[worker] for worker in sorted(groups)]

    def connection(self, i: int) -> int:
        """The connection for the i-th caller or call: workers take turns, whatever share of the connections the
        kernel gave each (a fleet of hosts holds so many connections that each worker gets its share of calls;
        16 connections alone could split 11:5)."""
        group = self._by_worker[i % len(self._by_worker)]
        return group[(i // len(self._by_worker)) % len(group)]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def closed_loop(self, callers: int, seconds: float, *, warmup_s: float = 0.0) -> PhaseResult:
        """``callers`` tasks, caller k on ``connection(k)``, each sending Rank back to back."""
        started = time.perf_counter()
        timed_from = started + warmup_s
        stop_at = timed_from + seconds
        result = PhaseResult(span_s=seconds)

        async def caller(k: int) -> None:
            connection = self.connection(k)
            while (sent := time.perf_counter()) < stop_at:
                await self._one_rank(connection, sent, result if sent >= timed_from else None)

        await asyncio.gather(*(caller(k) for k in range(callers)))
        await self._outcomes_answered()
        return result

    async def open_loop(self, rate: float, seconds: float, *, warmup_s: float = 0.0) -> PhaseResult:
        """Rank sent every ``1/rate`` s, the i-th on ``connection(i)``, whatever the answers."""
        started = time.perf_counter()
        timed_from = started + warmup_s
        calls = int((warmup_s + seconds) * rate)
        result = PhaseResult(span_s=seconds)

        async def dispatch() -> None:
            in_flight: set[asyncio.Task[None]] = set()
            for i in range(calls):
                due = started + i / rate
                if (delay := due - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._one_rank(self.connection(i), due,
                                                          result if due >= timed_from else None))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.gather(*in_flight)

        await dispatch()
        await self._outcomes_answered()
        return result

    async def _outcomes_answered(self) -> None:
        """Waits for the outcomes still in flight (each bounded by the deadline)."""
        while self._pending:
            await asyncio.gather(*list(self._pending))

    async def _one_rank(self, connection: int, sent: float, result: PhaseResult | None) -> None:
        payload = self._payloads[self._next_payload % len(self._payloads)]
        self._next_payload += 1
        try:
            answer = await self._rank[connection](payload, timeout=self._deadline_s)
        except grpc.aio.AioRpcError as exc:
            if result is not None:
                result.rank_ms.append((time.perf_counter() - sent) * 1e3)
                result.rank_results[exc.code().name.lower()] += 1
            return
        elapsed_ms = (time.perf_counter() - sent) * 1e3
        response = pb.RankResponse.FromString(answer)
        owner = response.event_id.split(".", 1)[0] if "." in response.event_id else "-"
        self.connection_worker[connection] = owner
        if result is not None:
            result.rank_ms.append(elapsed_ms)
            result.rank_results[pb.ServingMode.Name(response.serving_mode).removeprefix("SERVING_MODE_").lower()] += 1
        if response.slate and self._random.random() < self._outcome_share:
            task = asyncio.create_task(self._one_outcome(connection, owner, response, result))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _one_outcome(self, rank_connection: int, owner: str, response: pb.RankResponse,
                           result: PhaseResult | None) -> None:
        others = len(self._channels) - 1
        connection = (rank_connection + 1 + self._random.randrange(others)) % len(self._channels) if others else 0
        self._next_outcome += 1
        request = pb.ReportOutcomeRequest(event_id=response.event_id, outcome="click", value=1.0,
                                          item_id=self._random.choice(response.slate).item_id,
                                          outcome_id=f"load-{self._next_outcome}").SerializeToString()
        sent = time.perf_counter()
        try:
            answer = await self._report[connection](request, timeout=self._deadline_s)
            outcome = "attributed" if pb.ReportOutcomeResponse.FromString(answer).attributed else "unattributed"
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name.lower()
        if result is None:
            return
        # The connection's worker answered; it forwarded when the event id names another one.
        path = "local" if self.connection_worker[connection] in (owner, "-") else "forwarded"
        result.outcome_ms[path].append((time.perf_counter() - sent) * 1e3)
        result.outcome_results[outcome] += 1
