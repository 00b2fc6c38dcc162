"""Rank time per stage inside one server, beside Rank and grpc.health Check p50/p99 over gRPC (issue 11).

Reads top to bottom (CleanRL style). One server runs as its own process, the way ``recsys-rl serve --workers 1``
runs it (``ranker.server.serve_forever``'s path: a DecisionService with its learner process and model watcher, a
RankingServer with the default handler pool), started as ``python -m bench.stages_bench --serve DATA_DIR``; this
process is the client. Calls alternate Rank / Check on one channel (``bench.rank_bench.time_alternating``), 100
candidates, slate 10, bench.rank_bench's requests.

The run alternates two kinds of phase on that one server: *plain* (nothing timed inside the server: the Rank / Check
ratio) and *staged* (timers around the functions that make up a Rank, see below: the breakdown). The timers are
bench-only wrappers installed into the server process for a staged phase and removed after it, so production code
carries no instrumentation at all; what stays installed between phases is one flag check per RPC in four wrappers
(the Rank and Check handlers, Rank's request deserializer and response serializer), ~0.1 µs each.

Each timer records its call's *own* time: its wall time minus that of the timed calls inside it (per thread). So the
stages of one Rank sum exactly to the handler's wall time; each row is a mean (the means add up) and a median.
Around the handler: *before the handler* is the time from gRPC's hand-off of the call to the handler pool
(``ranker.admission``'s stamp) to the handler's start, less deserialization (which gRPC runs on its polling thread in
between); *encode* is the response serializer, run on the handler's thread after it returns. The log writer's thread
is timed per record (building the DecisionEvent, serializing and framing it) and per batch (write, fsync), with its
CPU time (``time.thread_time_ns``), and its busy intervals are compared with the Rank and Check handlers' intervals:
whatever it does while a handler runs, that handler waits for (one GIL).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    warmup: int = 500  # untimed calls of each kind at the start (fills the feature caches, as a warm server has)
    calls: int = 2_000  # timed calls of each kind per phase
    rounds: int = 3  # plain, staged, plain, staged, ...: each phase kind this many times


# ------------------------------------------------------------------------------------------------- server side
# Stage names, in the order a Rank goes through them (the table's order). "own" rows: the code of that function not
# inside any timed call it makes.
BEFORE = "before the handler: hand-off to the pool, message receipt"
DECODE = "gRPC decode: RankRequest.FromString (polling thread)"
ENCODE = "gRPC encode: RankResponse.SerializeToString"
HANDLER_OWN = "servicer: deadline, response build (own)"
STAGES: tuple[tuple[str, str, str], ...] = (
    # (module, attribute path, stage name) of each function timed in a staged phase.
    ("ranker.servicer", "RankingServicer._admit", "servicer: admission check"),
    ("recsys_rl.serving.service", "DecisionService.rank", "service.rank: clocks, deadline, closure (own)"),
    ("recsys_rl.serving.service", "validate_rank_request", "validate + candidate view"),
    ("recsys_rl.serving.service", "DecisionService.rollout_state", "rollout state"),
    ("recsys_rl.serving.policy", "SurfacePolicy.rank", "policy.rank: draw key, stage (own)"),
    ("recsys_rl.serving.policy", "decide", "decide: shield set-up, slots (own)"),
    ("recsys_rl.serving.decision", "score", "score: shape/finite/deadline checks (own)"),
    ("recsys_rl.serving.bandit", "VWBandit.score", "VW scorer: lock, example list (own)"),
    ("recsys_rl.serving.bandit", "context_line", "features: context line"),
    ("recsys_rl.serving.features", "ItemExampleCache.entries", "features: item examples from the cache"),
    ("vowpalwabbit.pyvw", "Example.__init__", "features: VW parses the shared example"),
    ("vowpalwabbit.pyvw", "Workspace.predict", "VW predict"),
    ("recsys_rl.serving.decision", "sample_slate", "explore: sample the slate"),
    ("recsys_rl.serving.decision", "_decision", "decision record (shield explain)"),
    ("uuid", "uuid4", "event id (uuid4, os.urandom)"),  # uuid4 before task P2; os.urandom(16).hex() since
    ("recsys_rl.serving.service", "os.urandom", "event id (uuid4, os.urandom)"),  # task P2 .. before task R
    ("recsys_rl.serving.service", "random_hex", "event id (uuid4, os.urandom)"),  # batched os.urandom since
    ("logging_schema.writer", "LogWriter.submit", "log submit"),
    ("recsys_rl.rollout.monitor", "RolloutMonitor.decided", "rollout monitor"),
    ("recsys_rl.serving.outcomes", "OutcomeTracker.track", "outcome tracker"),
    # The log writer's thread (roots of their own: see WRITER_ROOTS).
    ("recsys_rl.serving.service", "decision_record", "writer: build the DecisionEvent"),
    ("recsys_rl.serving.service", "decision_to_event", "writer: build the DecisionEvent"),  # before WireRecord
)
LONG_TERM = "long-term value"  # λ = 0 on the default surface: not computed (a row of zeros, for the record)
WRITER_ROOTS: tuple[tuple[str, str, str], ...] = (
    ("logging_schema.writer", "LogWriter._frame", "writer: LogRecord, serialize, frame (own)"),
    ("logging_schema.writer", "LogWriter._drain", "writer: write(2) a batch"),
    ("logging_schema.writer", "LogWriter._housekeeping", "writer: fsync, rotation"),
)


def _resolve(module: str, path: str) -> tuple[Any, str] | None:
    """(owner, attribute) of a timed function; None when the server's code has no such function (another
    checkout's, STAGES_BENCH_CODE): its row is then 0 and the report lists it."""
    import importlib

    owner: Any = importlib.import_module(module)
    *parents, attr = path.split(".")
    for name in parents:
        owner = getattr(owner, name, None)
    return (owner, attr) if owner is not None and hasattr(owner, attr) else None


class StageClock:
    """Own-time timers (see the module docstring). ``records``: one dict per root call (a Rank, a Check, a writer
    record or batch), appended by the thread that ran it; read them between phases."""

    def __init__(self) -> None:
        self.on = False
        self.records: list[dict[str, Any]] = []
        self._local = threading.local()
        self._installed: list[tuple[Any, str, Any]] = []
        self.decoded: tuple[int, int] = (0, 0)  # (end ns, wall ns) of the last Rank request deserialized
        self.absent: list[str] = []  # module:function of STAGES that the server's code does not have

    def inner(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        local = self._local

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            frames = getattr(local, "frames", None)
            if not frames:  # not inside a timed root on this thread
                return fn(*args, **kwargs)
            frame = [0]
            frames.append(frame)
            started = time.perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                wall = time.perf_counter_ns() - started
                frames.pop()
                frames[-1][0] += wall
                local.stages[name] = local.stages.get(name, 0) + wall - frame[0]

        return timed

    def root(self, kind: str, own: str, fn: Callable[..., Any],
             at_start: Callable[[dict[str, Any]], None] | None = None) -> Callable[..., Any]:
        local, records = self._local, self.records

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on or getattr(local, "frames", None):
                return fn(*args, **kwargs)
            record: dict[str, Any] = {"kind": kind}
            local.frames, local.stages = [[0]], {}
            cpu = time.thread_time_ns()
            started = time.perf_counter_ns()
            if at_start is not None:
                at_start(record)
            try:
                return fn(*args, **kwargs)
            finally:
                ended = time.perf_counter_ns()
                record["cpu"] = time.thread_time_ns() - cpu
                stages = local.stages
                stages[own] = ended - started - local.frames[0][0]
                record.update(start=started, end=ended, stages=stages)
                local.frames = None
                records.append(record)

        return timed

    def install(self) -> None:
        """Wraps every function of STAGES and WRITER_ROOTS (a staged phase)."""
        self.absent = []
        for module, path, name in STAGES + WRITER_ROOTS:
            found = _resolve(module, path)
            if found is None:
                self.absent.append(f"{module}:{path}")
                continue
            owner, attr = found
            original = getattr(owner, attr)
            wrapper = (self.inner(name, original) if (module, path, name) in STAGES
                       else self.root(path.rsplit(".", 1)[-1], name, original))
            self._patch(owner, attr, wrapper)

    def uninstall(self) -> None:
        while self._installed:
            owner, attr, original = self._installed.pop()
            if original is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)

    def _patch(self, owner: Any, attr: str, wrapper: Any) -> None:
        # A class attribute inherited from a base (protobuf's FromString) is restored by deleting the override.
        inherited = isinstance(owner, type) and attr not in owner.__dict__
        self._installed.append((owner, attr, None if inherited else
                                owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)))
        setattr(owner, attr, wrapper)

    # Rank's own gRPC wrappers: installed for the server's life (captured when the servicer is registered).
    def rank_started(self, record: dict[str, Any]) -> None:
        from ranker.admission import queued_since

        now = time.perf_counter_ns()
        stamp = queued_since()
        decoded_end, decoded_ns = self.decoded
        if stamp is not None:
            before = now - int(stamp * 1e9)
            record["stamped"] = True
            record["decode"] = decoded_ns if decoded_end <= now else 0
            record["before"] = before - record["decode"]

    @staticmethod
    def check_started(record: dict[str, Any]) -> None:
        """Check's hand-off (its request decodes in well under a µs), to tell Rank's own share of that wait."""
        from ranker.admission import queued_since

        now = time.perf_counter_ns()
        stamp = queued_since()
        if stamp is not None:
            record["before"] = now - int(stamp * 1e9)

    def timed_decode(self, fn: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def decode(data: bytes) -> Any:
            if not self.on:
                return fn(data)
            started = time.perf_counter_ns()
            message = fn(data)
            ended = time.perf_counter_ns()
            self.decoded = (ended, ended - started)
            return message

        return decode

    def timed_encode(self, fn: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
        records = self.records

        def encode(message: Any) -> bytes:
            if not self.on:
                return fn(message)
            started = time.perf_counter_ns()
            data = fn(message)
            wall = time.perf_counter_ns() - started
            # The handler of this very response returned just before, on this thread (one Rank in flight).
            for record in reversed(records):
                if record["kind"] == "rank":
                    record["encode"] = wall
                    break
            return data

        return encode


def serve(data_dir: Path) -> None:
    """The server process: RankingServer + DecisionService as ``serve --workers 1`` builds them, with StageClock's
    always-on wrappers; reads commands from stdin ("on", "off", "dump") and answers each with one JSON line."""
    from grpc_health.v1 import health

    from ranker.server import DEFAULT_MAX_QUEUE_WAIT_MS, DEFAULT_MAX_WORKERS, RankingServer
    from ranker.servicer import RankingServicer
    from recsys_rl.config import default_config
    from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
    from recsys_rl.serving.service import DecisionService

    clock = StageClock()
    clock._patch(RankingServicer, "Rank", clock.root("rank", HANDLER_OWN, RankingServicer.Rank, clock.rank_started))
    clock._patch(health.HealthServicer, "Check", clock.root("check", "Check handler", health.HealthServicer.Check,
                                                                  clock.check_started))
    clock._patch(pb.RankRequest, "FromString", clock.timed_decode(pb.RankRequest.FromString))
    clock._patch(pb.RankResponse, "SerializeToString", clock.timed_encode(pb.RankResponse.SerializeToString))
    service = DecisionService(default_config(), data_dir)
    server = RankingServer(service, max_workers=DEFAULT_MAX_WORKERS, max_queue_wait_ms=DEFAULT_MAX_QUEUE_WAIT_MS)
    # Registered: the handlers hold the wrappers; everything else in this process gets the originals back.
    clock.uninstall()
    server.start()
    print(f"serving on {server.address}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "on":
            service.writer.flush(timeout=10)  # the plain phase's records are not timed as this one's
            clock.install()
            clock.on = True
            print(json.dumps({"ok": True}), flush=True)
        elif command == "off":
            service.writer.flush(timeout=10)  # the phase's records built and written while still timed
            clock.on = False
            clock.uninstall()
            print(json.dumps({"ok": True}), flush=True)
        elif command == "dump":
            records, clock.records[:] = list(clock.records), []
            print(json.dumps({"records": records, "absent": clock.absent}), flush=True)
    server.stop(grace_s=1.0)


# ------------------------------------------------------------------------------------------------- client side
def _command(server: subprocess.Popen[str], command: str) -> dict[str, Any]:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(command + "\n")
    server.stdin.flush()
    return json.loads(server.stdout.readline())


def _overlap_ns(intervals: list[tuple[int, int]], others: list[tuple[int, int]]) -> int:
    """Total length of ``intervals`` that lies inside any of ``others`` (each list sorted, ``others`` disjoint)."""
    total, j = 0, 0
    for start, end in intervals:
        while j < len(others) and others[j][1] <= start:
            j += 1
        k = j
        while k < len(others) and others[k][0] < end:
            total += min(end, others[k][1]) - max(start, others[k][0])
            k += 1
    return total


def _mean_median(values_ns: list[int]) -> tuple[float, float]:
    """(mean, median) in µs; (0, 0) for none."""
    return (float(np.mean(values_ns)) / 1e3, float(np.median(values_ns)) / 1e3) if values_ns else (0.0, 0.0)


def breakdown(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-stage mean and median µs of the Rank records; the writer's per-record cost and its overlap."""
    ranks = [r for r in records if r["kind"] == "rank" and r.get("stamped")]
    checks = [r for r in records if r["kind"] == "check"]
    names = [BEFORE, DECODE] + [HANDLER_OWN] + [name for _, _, name in STAGES if not name.startswith("writer")]
    names.insert(names.index("explore: sample the slate"), LONG_TERM)
    names.append(ENCODE)
    rows = {}
    for name in names:
        if name == BEFORE:
            values = [r["before"] for r in ranks]
        elif name == DECODE:
            values = [r["decode"] for r in ranks]
        elif name == ENCODE:
            values = [r.get("encode", 0) for r in ranks]
        else:
            values = [r["stages"].get(name, 0) for r in ranks]
        rows[name] = (float(np.mean(values)) / 1e3, float(np.median(values)) / 1e3)
    handler = [r["end"] - r["start"] for r in ranks]
    cpu = [r["cpu"] for r in ranks]
    stage_sum = [sum(r["stages"].values()) for r in ranks]
    frames = [r for r in records if r["kind"] == "_frame"]
    batches = [r for r in records if r["kind"] in ("_drain", "_housekeeping")]
    busy = sorted((r["start"], r["end"]) for r in frames + batches)
    rank_spans = sorted((r["start"], r["end"]) for r in ranks)
    check_spans = sorted((r["start"], r["end"]) for r in checks)
    busy_ns = sum(end - start for start, end in busy)
    writer = {
        "records": len(frames),
        "build_us": float(np.mean([r["stages"].get("writer: build the DecisionEvent", 0) for r in frames])) / 1e3,
        "serialize_us": float(np.mean([r["stages"].get("writer: LogRecord, serialize, frame (own)", 0)
                                       for r in frames])) / 1e3,
        "wall_per_record_us": busy_ns / max(1, len(frames)) / 1e3,
        "cpu_per_record_us": sum(r["cpu"] for r in frames + batches) / max(1, len(frames)) / 1e3,
        "in_rank": _overlap_ns(busy, rank_spans) / max(1, busy_ns),
        "in_check": _overlap_ns(busy, check_spans) / max(1, busy_ns),
    }
    return {
        "rows": rows,
        "n": len(ranks),
        "handler_mean_us": float(np.mean(handler)) / 1e3,
        "handler_p50_us": float(np.median(handler)) / 1e3,
        "handler_cpu_mean_us": float(np.mean(cpu)) / 1e3,
        "stage_sum_mean_us": float(np.mean(stage_sum)) / 1e3,
        "check_handler_p50_us": float(np.median([r["end"] - r["start"] for r in checks])) / 1e3 if checks else 0.0,
        "check_before_us": _mean_median([r["before"] for r in checks if "before" in r]),
        "writer": writer,
    }


def run(args: Args = Args()) -> dict[str, Any]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from bench.rank_bench import Args as RankArgs
    from bench.rank_bench import make_request, time_alternating
    from logging_schema.reader import read_log
    from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc

    code = os.environ.get("STAGES_BENCH_CODE", str(REPO))
    rng = np.random.default_rng(0)
    per_phase = args.calls
    absent: list[str] = []
    requests = [make_request(rng, RankArgs(), i) for i in range(args.warmup + 2 * args.rounds * per_phase)]
    phases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as data_dir:
        # This file runs the server; the code it serves with is this checkout's, or STAGES_BENCH_CODE's.
        server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", data_dir], cwd=code,
                                  env=dict(os.environ, PYTHONPATH=code), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert server.stdout is not None
            address = server.stdout.readline().split()[-1]
            channel = grpc.insecure_channel(address)
            rank = pb_grpc.RankingServiceStub(channel).Rank
            check_stub = health_pb2_grpc.HealthStub(channel).Check
            check_request = health_pb2.HealthCheckRequest(service="")
            calls = {"rank": rank, "check": lambda _request, timeout: check_stub(check_request, timeout=timeout)}
            time_alternating(calls, requests[: args.warmup], args.warmup)  # warm-up only
            offset = args.warmup
            for round_ in range(args.rounds):
                for kind in ("plain", "staged"):
                    print(f"round {round_ + 1}/{args.rounds}: {kind} ...", file=sys.stderr, flush=True)
                    if kind == "staged":
                        _command(server, "on")
                    times = time_alternating(calls, requests[offset: offset + per_phase], 0)
                    offset += per_phase
                    records = []
                    if kind == "staged":
                        _command(server, "off")
                        dump = _command(server, "dump")
                        records, absent = dump["records"], dump["absent"]
                    phases.append({"kind": kind, "rank_ms": times["rank"], "check_ms": times["check"],
                                   "records": records})
            channel.close()
        finally:
            if server.stdin is not None:
                server.stdin.close()  # the server stops at the end of its commands
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        logged = [e.latency_micros for e in read_log(Path(data_dir) / "logs").decisions]
    return {"phases": phases, "logged_latency_p50_us": float(np.median(logged)), "logged": len(logged),
            "code": code, "absent": absent}


def _pooled(phases: list[dict[str, Any]], kind: str, key: str) -> list[float]:
    return [t for p in phases if p["kind"] == kind for t in p[key]]


def markdown(result: dict[str, Any], args: Args = Args()) -> str:
    phases = result["phases"]
    code = Path(result["code"]).resolve()
    lines = [
        *([] if code == REPO else [f"**Server code: `{code.name}`** (STAGES_BENCH_CODE; the client and this bench "
                                   "are this checkout's).", ""]),
        f"One server (RankingServer + DecisionService in their own process, as `recsys-rl serve --workers 1` builds "
        f"them: learner process and model watcher running, default surface, {2} handler threads), one client process, "
        f"one channel. Rank: 100 candidates (catalog of 2000), slate 10; calls alternate Rank / Check; "
        f"{args.warmup} warm-up calls of each, then {args.rounds} rounds of a *plain* phase (nothing timed in the "
        f"server) and a *staged* phase (the per-stage timers installed), {args.calls} calls of each kind per phase.",
        "",
        "| round | phase | Rank p50 ms | Rank p99 ms | Check p50 ms | Check p99 ms | Rank p50 / Check p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(phases):
        r50, c50 = statistics.median(p["rank_ms"]), statistics.median(p["check_ms"])
        lines.append(f"| {i // 2 + 1} | {p['kind']} | {r50:.3f} | {np.percentile(p['rank_ms'], 99):.3f} | "
                     f"{c50:.3f} | {np.percentile(p['check_ms'], 99):.3f} | {r50 / c50:.2f}× |")
    summary = {}
    for kind in ("plain", "staged"):
        rank_ms, check_ms = _pooled(phases, kind, "rank_ms"), _pooled(phases, kind, "check_ms")
        summary[kind] = (statistics.median(rank_ms), float(np.percentile(rank_ms, 99)), statistics.median(check_ms),
                         float(np.percentile(check_ms, 99)))
    plain = summary["plain"]
    ratio = plain[0] / plain[2]
    lines += [
        f"| all | plain | **{plain[0]:.3f}** | {plain[1]:.3f} | **{plain[2]:.3f}** | {plain[3]:.3f} | "
        f"**{ratio:.2f}×** |",
        f"| all | staged | {summary['staged'][0]:.3f} | {summary['staged'][1]:.3f} | {summary['staged'][2]:.3f} | "
        f"{summary['staged'][3]:.3f} | {summary['staged'][0] / summary['staged'][2]:.2f}× |",
        "",
        f"**Rank p50 / grpc.health Check p50 = {ratio:.2f}×** (plain phases pooled; goal ≤ 2.0×, aim 1.5×).",
        "",
    ]
    records = [r for p in phases for r in p["records"]]
    b = breakdown(records)
    rows = b["rows"]
    lines += [
        f"Where a Rank's time goes inside the server (staged phases, {b['n']} Ranks; µs; *own* = that function's code "
        "outside the timed calls it makes, so the handler's rows add up to the handler's wall time):",
        "",
        "| stage | mean µs | p50 µs |",
        "|---|---|---|",
    ]
    handler_rows = [name for name in rows if name not in (BEFORE, DECODE, ENCODE)]
    for name in (BEFORE, DECODE):
        lines.append(f"| {name} | {rows[name][0]:.1f} | {rows[name][1]:.1f} |")
    for name in handler_rows:
        lines.append(f"| {name} | {rows[name][0]:.1f} | {rows[name][1]:.1f} |")
    lines.append(f"| **handler (sum of the rows above from *servicer*)** | **{b['stage_sum_mean_us']:.1f}** | "
                 f"{b['handler_p50_us']:.1f} (handler wall) |")
    lines.append(f"| {ENCODE} | {rows[ENCODE][0]:.1f} | {rows[ENCODE][1]:.1f} |")
    w = b["writer"]
    staged = summary["staged"]
    outside = staged[0] * 1e3 - b["handler_p50_us"] - rows[BEFORE][1] - rows[DECODE][1] - rows[ENCODE][1]
    lines += [
        "",
        f"Reconciliation: handler wall time mean {b['handler_mean_us']:.1f} µs = the rows' sum "
        f"{b['stage_sum_mean_us']:.1f} µs (own times, by construction); of it the handler thread ran on a CPU "
        f"{b['handler_cpu_mean_us']:.1f} µs (`thread_time`), the rest it waited (the GIL held by another thread, or "
        f"descheduled on this shared machine). The server's own log agrees: median `DecisionEvent.latency_micros` "
        f"(validation to decision, all phases) {result['logged_latency_p50_us']:.0f} µs. Check's handler takes "
        f"{b['check_handler_p50_us']:.1f} µs (p50), and its hand-off to the pool {b['check_before_us'][1]:.1f} µs p50 / "
        f"{b['check_before_us'][0]:.1f} µs mean (Rank's: {rows[BEFORE][1]:.1f} / {rows[BEFORE][0]:.1f}, less its "
        f"decode). Staged Rank p50 {staged[0]:.3f} ms − handler p50 "
        f"{b['handler_p50_us'] / 1e3:.3f} − before/decode/encode p50s ≈ {outside / 1e3:.3f} ms is outside the "
        f"server's Python (gRPC core, loopback, the client) - about Check's own p50 ({staged[2]:.3f} ms).",
        "",
        f"The log writer's thread, per record ({w['records']} records): building the DecisionEvent "
        f"{w['build_us']:.1f} µs, LogRecord + serialize + frame {w['serialize_us']:.1f} µs; busy "
        f"{w['wall_per_record_us']:.1f} µs wall and {w['cpu_per_record_us']:.1f} µs CPU per record including its "
        f"writes and fsyncs. Of its busy time {w['in_rank']:.0%} fell inside a Rank handler and {w['in_check']:.0%} "
        f"inside a Check handler (the rest between calls).",
        "",
        _where_it_goes(rows, plain),
        "",
        f"Timers: staged Rank p50 / plain Rank p50 = {staged[0] / plain[0]:.3f} (what ~20 wrappers cost, with this "
        f"machine's noise).",
        *([] if not result["absent"] else ["", "Not in the server's code (rows of 0): " + ", ".join(
            f"`{a}`" for a in result["absent"]) + "."]),
    ]
    return "\n".join(lines)


GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gRPC around the handler (hand-off, decode, encode)", (BEFORE, DECODE, ENCODE)),
    ("reading and checking the candidates", ("validate + candidate view",)),
    ("VW: features and predict", ("VW scorer: lock, example list (own)", "features: context line",
                                  "features: item examples from the cache", "features: VW parses the shared example",
                                  "VW predict")),
    ("exploration: sampling the slate", ("explore: sample the slate",)),
)


def _where_it_goes(rows: dict[str, tuple[float, float]], plain: tuple[float, float, float, float]) -> str:
    """One sentence: the server's part of a Rank by group (means, which add up), and what the goal asks of it."""
    total = sum(mean for mean, _ in rows.values())
    grouped = {name: sum(rows[r][0] for r in members) for name, members in GROUPS}
    grouped["the rest: servicer, service, policy, decide and score bookkeeping, event id, log submit, tracker"] = (
        total - sum(grouped.values()))
    parts = "; ".join(f"{name} {us:.0f} µs ({us / total:.0%})" for name, us in grouped.items())
    rank_ms, check_ms = plain[0], plain[2]
    return (f"Where the server's part of a Rank goes (means, staged phases; {total:.0f} µs in all): {parts}. "
            f"Rank p50 ≈ Check p50 + the server's extra work, so Rank / Check ≤ 2.0× needs that extra to fit in "
            f"one Check p50 ({check_ms * 1e3:.0f} µs here); the plain phases' Rank − Check p50 is "
            f"{(rank_ms - check_ms) * 1e3:.0f} µs.")


WHAT_CHANGED = (
    "What changed (issue 11, task H: the server's own bookkeeping per Rank), each checked against the breakdown "
    "above: (1) *decide*, *explore*: DecisionSlot and SlotDraw are NamedTuples, not frozen dataclasses (~0.3 µs to "
    "build against ~1 µs through `object.__setattr__` per field; 20 per Rank), and the slots take their scores from "
    "the one `tolist()` the log needs; (2) *explore*: each slot's (q, pg) comes from a cache per (candidates, slate "
    "size, epsilon, cap), and a draw that lands past the greedy (~1 slot in 10 at cap 0.1) walks the CDF on from the "
    "greedy with cumsum's own additions instead of rebuilding it with numpy (test: the same slot as bisecting the "
    "cumsum, at the CDF's edges); (3) *candidate view*: each candidate's head, tag and baseline bytes are sliced by "
    "`operator.itemgetter` in C, and ids are checked against one set; (4) *item cache*, *VW scorer*: the LRU touch "
    "and the example list run as maps in C; (5) *draw key*: blake2b of the request id onto a cached (seed, surface) "
    "state (test: equal to hashing all three parts afresh). Decisions, propensities, scores and logged records are "
    "unchanged (tests/recsys_rl/serving, tests/ranker, tests/recsys_rl/shield, tests/evaluators/replay; 2,400 Ranks "
    "at four caps compared field by field with the code before)."
)


def comparison(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Rows of the headline figures of two runs of this bench (another checkout's server code, then this one's)."""
    def figures(result: dict[str, Any]) -> list[str]:
        rank_ms = _pooled(result["phases"], "plain", "rank_ms")
        check_ms = _pooled(result["phases"], "plain", "check_ms")
        b = breakdown([r for p in result["phases"] for r in p["records"]])
        w = b["writer"]
        return [f"{statistics.median(rank_ms):.3f}", f"{np.percentile(rank_ms, 99):.3f}",
                f"{statistics.median(check_ms):.3f}", f"**{statistics.median(rank_ms) / statistics.median(check_ms):.2f}×**",
                f"{b['handler_p50_us']:.0f}", f"{b['handler_cpu_mean_us']:.0f}", f"{w['cpu_per_record_us']:.0f}",
                f"{w['in_rank']:.0%}"]

    header = ["Rank p50 ms", "Rank p99 ms", "Check p50 ms", "Rank / Check p50", "handler p50 µs",
              "handler CPU mean µs", "writer CPU µs / record", "writer busy inside a Rank"]
    def rank_p50(result: dict[str, Any]) -> float:
        return statistics.median(_pooled(result["phases"], "plain", "rank_ms"))

    return "\n".join([
        "| server code | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(header),
        f"| `{Path(before['code']).name}` (before) | " + " | ".join(figures(before)) + " |",
        "| this checkout | " + " | ".join(figures(after)) + " |",
        "",
        f"Rank p50 this checkout / before = {rank_p50(after) / rank_p50(before):.3f} (two servers one after the "
        "other on a shared machine: differences of a few % are noise; so are Check's).",
    ])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(Path(sys.argv[2]))
    else:
        # STAGES_BENCH_BEFORE=DIR (a checkout named after its commit, e.g. `git archive REV | tar -x -C
        # /tmp/before-REV`): the whole bench first with that code serving, then with this checkout's, one table each
        # and the headline figures side by side.
        bench_args = Args()
        before_dir = os.environ.pop("STAGES_BENCH_BEFORE", "")
        before_result = None
        if before_dir:
            os.environ["STAGES_BENCH_CODE"] = before_dir
            before_result = run(bench_args)
            del os.environ["STAGES_BENCH_CODE"]
        after_result = run(bench_args)
        print(markdown(after_result, bench_args))
        print()
        print(WHAT_CHANGED)
        if before_result is not None:
            print()
            print(f"The same bench, run just before in this invocation with the server code of "
                  f"`{Path(before_dir).name}` (plain phases; handler and writer from its staged phases):")
            print()
            print(comparison(before_result, after_result))
