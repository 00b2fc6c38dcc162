"""Rank under overload: 16 concurrent callers against one server process, before vs after queue-aware admission.

Reads top to bottom (CleanRL style). Each configuration runs its own server process (this file with ``--serve``)
and this process is the client: ``callers`` asyncio tasks send Rank back to back (100 candidates, slate 10,
pre-serialized so the client stays cheap) for ``seconds``, each call with the caller deadline a host would set.
"before" is the same server with the queue stamp ignored (``ranker.servicer.queued_since`` returns None): the
decision budget then starts when the handler runs and nothing is shed or refused, which is the previous behaviour.
We report throughput, p50/p99 latency and the share of each outcome (learned, baseline fallback, refused).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.rank_bench import Args as RankArgs
from bench.rank_bench import make_request
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

REPO = Path(__file__).resolve().parents[1]
RANK = "/recsys_rl.ranking.v1.RankingService/Rank"


@dataclass
class Args:
    callers: int = 16  # concurrent callers, each with one call in flight
    seconds: float = 8.0  # timed load per configuration
    warmup_s: float = 1.5  # untimed load first (feature cache, VW)
    caller_deadline_s: float = 0.5  # the timeout every call carries, as a host's would
    requests: int = 2_000  # distinct pre-built requests, cycled


@dataclass(frozen=True)
class Config:
    name: str
    stamp: bool  # the server reads the queue stamp (the change under test)
    max_workers: int
    max_queue_wait_ms: float | None


CONFIGS = [
    Config("before: 8 handler threads, budget from handler start", False, 8, None),
    Config("after: 8 handler threads, queue limit 50 ms", True, 8, 50.0),
    Config("after: 2 handler threads, no queue limit", True, 2, None),
    Config("after (the defaults): 2 handler threads, queue limit 50 ms", True, 2, 50.0),
]


def serve(stamp: bool, max_workers: int, max_queue_wait_ms: float | None, data_dir: str) -> None:
    """The server side of one configuration: prints its address, serves until SIGTERM."""
    import ranker.servicer
    from ranker.server import RankingServer
    from recsys_rl.config import default_config
    from recsys_rl.serving.service import DecisionService

    if not stamp:
        ranker.servicer.queued_since = lambda: None  # the previous behaviour: the wait is invisible
    service = DecisionService(default_config(), Path(data_dir), learner="off")
    server = RankingServer(service, max_workers=max_workers, max_queue_wait_ms=max_queue_wait_ms).start()
    print(f"serving on {server.address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    print(f"overload_baseline={service.overload_baseline} overload_refused={service.overload_refused}", flush=True)
    server.stop(grace_s=2.0)


async def drive(address: str, payloads: list[bytes], args: Args) -> tuple[list[float], Counter[str], float]:
    """``args.callers`` callers back to back; returns timed latencies (ms), outcome counts and the timed span."""
    async with grpc.aio.insecure_channel(address) as channel:
        rank = channel.unary_unary(RANK, request_serializer=None, response_deserializer=pb.RankResponse.FromString)
        latencies: list[float] = []
        outcomes: Counter[str] = Counter()
        start = time.perf_counter()
        timed_from = start + args.warmup_s
        stop_at = timed_from + args.seconds

        async def caller(offset: int) -> None:
            i = offset
            while (t0 := time.perf_counter()) < stop_at:
                payload = payloads[i % len(payloads)]
                i += args.callers
                try:
                    response = await rank(payload, timeout=args.caller_deadline_s)
                    outcome = pb.ServingMode.Name(response.serving_mode).removeprefix("SERVING_MODE_").lower()
                except grpc.aio.AioRpcError as exc:
                    outcome = exc.code().name.lower()
                if t0 >= timed_from:
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    outcomes[outcome] += 1

        await asyncio.gather(*(caller(k) for k in range(args.callers)))
        return latencies, outcomes, args.seconds


def run_config(config: Config, payloads: list[bytes], args: Args) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as data_dir:
        command = [sys.executable, "-m", "bench.overload_bench", "--serve", "--max-workers", str(config.max_workers),
                   "--data-dir", data_dir]
        if config.stamp:
            command.append("--stamp")
        if config.max_queue_wait_ms is not None:
            command += ["--max-queue-wait-ms", str(config.max_queue_wait_ms)]
        server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            address = server.stdout.readline().split()[-1]  # type: ignore[union-attr]
            latencies, outcomes, span = asyncio.run(drive(address, payloads, args))
        finally:
            server.terminate()
            counters = server.stdout.read().strip()  # type: ignore[union-attr]
            server.wait(timeout=60)
    total = sum(outcomes.values())
    return {
        "config": config, "calls": total, "rate": total / span,
        "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
        "shares": {k: v / total for k, v in outcomes.most_common()}, "counters": counters,
    }


def markdown(results: list[dict[str, object]], args: Args) -> str:
    rank = RankArgs()
    lines = [
        f"{args.callers} concurrent callers (one asyncio client process, each call's deadline "
        f"{args.caller_deadline_s * 1e3:g} ms), Rank with {rank.n_candidates} candidates, slate {rank.slate_size}, "
        f"{args.seconds:g} s timed per configuration after {args.warmup_s:g} s warm-up; one server process each "
        "(learner off), surface decision budget 25 ms. Same run, same machine.",
        "",
        "| configuration | Rank/s | p50 ms | p99 ms | served learned | baseline fallback | refused / other |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        shares: dict[str, float] = r["shares"]  # type: ignore[assignment]
        other = {k: v for k, v in shares.items() if k not in ("learned", "baseline_fallback")}
        other_text = ", ".join(f"{k} {v:.1%}" for k, v in other.items()) or "0"
        lines.append(f"| {r['config'].name} | {r['rate']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "  # type: ignore[attr-defined]
                     f"{shares.get('learned', 0):.1%} | {shares.get('baseline_fallback', 0):.1%} | {other_text} |")
    before = results[0]
    lines += ["", "Ratios to the before row (same run): " + "; ".join(
        f"{r['config'].name.split(':')[1].strip()}: Rank/s ×{r['rate'] / before['rate']:.2f}, "  # type: ignore[attr-defined,operator]
        f"p99 ×{r['p99'] / before['p99']:.2f}" for r in results[1:])]  # type: ignore[operator]
    lines += ["", "Server counters at the end of each run: " + "; ".join(
        f"{r['config'].name.split(':')[1].strip()}: {r['counters'] or 'n/a'}" for r in results)]  # type: ignore[attr-defined]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="(internal) run one configuration's server")
    parser.add_argument("--stamp", action="store_true")
    parser.add_argument("--max-workers", type=int, default=8)
    parser.add_argument("--max-queue-wait-ms", type=float)
    parser.add_argument("--data-dir")
    parser.add_argument("--seconds", type=float, default=Args.seconds)
    options = parser.parse_args()
    if options.serve:
        serve(options.stamp, options.max_workers, options.max_queue_wait_ms, options.data_dir)
        return
    args = Args(seconds=options.seconds)
    rng = np.random.default_rng(0)
    payloads = [make_request(rng, RankArgs(), i).SerializeToString() for i in range(args.requests)]
    results = []
    for config in CONFIGS:
        print(f"{config.name} ...", file=sys.stderr, flush=True)
        results.append(run_config(config, payloads, args))
    print(platform.platform(), file=sys.stderr)
    print(markdown(results, args))


if __name__ == "__main__":
    main()
