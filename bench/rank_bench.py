"""Rank latency from a separate client process, beside grpc.health Check on the same server in the same run.

Reads top to bottom (CleanRL style). The server runs as its own process (``recsys-rl serve``); this process is
the client. Calls alternate Rank / Check so both see the same machine noise; we report medians and p99 and the
ratio Rank p50 / Check p50 measured in this one run.
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    n_candidates: int = 100  # candidates per Rank request
    slate_size: int = 10  # slate positions per Rank request
    warmup: int = 300  # untimed calls of each kind first
    calls: int = 3_000  # timed calls of each kind
    catalog: int = 2_000  # distinct items candidates are drawn from (feature cache sees a realistic mix)


def make_request(rng: np.random.Generator, args: Args, i: int) -> pb.RankRequest:
    request = pb.RankRequest(request_id=f"bench-{i}", surface="default", user_id=f"u{i % 500}",
                             slate_size=args.slate_size)
    request.context.numeric["hour"] = float(i % 24)
    request.context.categorical["device"] = ("ios", "android", "web")[i % 3]
    for item in rng.choice(args.catalog, size=args.n_candidates, replace=False):
        candidate = request.candidates.add(item_id=f"item-{item}", baseline_score=float(item % 97))
        candidate.features.numeric["price"] = float(item % 50)
        candidate.features.categorical["topic"] = f"t{item % 10}"
        candidate.features.tags.append(f"g{item % 7}")
    return request


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def time_alternating(ranks: dict[str, Callable[..., object]], requests: Sequence[pb.RankRequest],
                     warmup: int) -> dict[str, list[float]]:
    """Milliseconds per Rank of each server on the same requests, after ``warmup`` untimed ones each.

    Who goes first rotates per request, so no server always follows another's GC or cache effects.
    """
    names = list(ranks)
    for request in requests[:warmup]:
        for rank in ranks.values():
            rank(request, timeout=10)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, request in enumerate(requests[warmup:]):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            ranks[name](request, timeout=10)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def run(args: Args = Args()) -> dict[str, float]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as data_dir:
        server = subprocess.Popen(
            # One server process, as this section always measured (`serve` now defaults to one worker per core).
            [sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir", data_dir, "--workers", "1"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            address = server.stdout.readline().split()[-1]
            channel = grpc.insecure_channel(address)
            rank = pb_grpc.RankingServiceStub(channel).Rank
            check = health_pb2_grpc.HealthStub(channel).Check
            check_request = health_pb2.HealthCheckRequest(service="")
            requests = [make_request(rng, args, i) for i in range(args.warmup + args.calls)]
            for request in requests[: args.warmup]:
                rank(request, timeout=10)
                check(check_request, timeout=10)
            rank_ms: list[float] = []
            check_ms: list[float] = []
            for request in requests[args.warmup:]:
                t0 = time.perf_counter()
                rank(request, timeout=10)
                t1 = time.perf_counter()
                check(check_request, timeout=10)
                t2 = time.perf_counter()
                rank_ms.append((t1 - t0) * 1e3)
                check_ms.append((t2 - t1) * 1e3)
            channel.close()
        finally:
            server.terminate()
            server.wait(timeout=60)
    result = {
        "rank_p50_ms": statistics.median(rank_ms),
        "rank_p99_ms": percentile(rank_ms, 99),
        "check_p50_ms": statistics.median(check_ms),
        "check_p99_ms": percentile(check_ms, 99),
    }
    result["p50_ratio"] = result["rank_p50_ms"] / result["check_p50_ms"]
    return result


def markdown(result: dict[str, float], args: Args = Args()) -> str:
    return "\n".join([
        f"Rank with {args.n_candidates} candidates (catalog of {args.catalog}), slate {args.slate_size}; "
        f"{args.calls} timed calls of each kind, alternating, after {args.warmup} warm-up calls.",
        "",
        "| call | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| Rank | {result['rank_p50_ms']:.3f} | {result['rank_p99_ms']:.3f} |",
        f"| grpc.health Check (baseline, same server, same run) | {result['check_p50_ms']:.3f} | "
        f"{result['check_p99_ms']:.3f} |",
        "",
        f"Rank p50 / Check p50 = **{result['p50_ratio']:.2f}×** (target ≤ 3×); "
        f"Rank p99 = **{result['rank_p99_ms']:.2f} ms** (target ≤ 10 ms).",
        "",
        "The issue 11 goal (≤ 2.0×) and where a Rank's time goes, stage by stage: \"Rank time per stage vs "
        "grpc.health Check (issue 11)\" (`python -m bench.stages_bench`).",
    ])


if __name__ == "__main__":
    outcome = run()
    print(platform.platform())
    print(markdown(outcome))
