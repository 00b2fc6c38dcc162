"""Rank latency with Prometheus metrics on vs off (issue 11.3), same run, same machine.

Reads top to bottom (CleanRL style). Two `recsys-rl serve` processes over two fresh data dirs, one with
`--metrics-port 0` (multiprocess mode, the production path: hooks write mmap'd files, a sampler thread copies
state once a second), one without. This process is the client and alternates Rank calls between them, so both
see the same machine noise; the metrics server is scraped once a second meanwhile, as Prometheus would.
Reports p50/p99 of each and the p50 ratio on/off (goal ≤ 1.05×).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.rank_bench import Args as RankArgs
from bench.rank_bench import make_request, percentile
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    n_candidates: int = 100  # candidates per Rank request
    slate_size: int = 10  # slate positions per Rank request
    warmup: int = 300  # untimed calls to each server first
    calls: int = 2_000  # timed calls to each server
    scrape_every_s: float = 1.0  # how often the metrics server is scraped during the timed calls


def start(data_dir: str, metrics: bool) -> tuple[subprocess.Popen, str, str | None]:
    command = [sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir", data_dir]
    if metrics:
        command += ["--metrics-port", "0"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = process.stdout.readline().split()[-1]
    metrics_address = process.stdout.readline().split()[-1] if metrics else None
    return process, address, metrics_address


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        return response.read().decode()


def run(args: Args = Args()) -> dict[str, float]:
    rng = np.random.default_rng(0)
    rank_args = RankArgs(n_candidates=args.n_candidates, slate_size=args.slate_size)
    requests = [make_request(rng, rank_args, i) for i in range(args.warmup + args.calls)]
    timings: dict[bool, list[float]] = {False: [], True: []}
    scrapes = 0
    with tempfile.TemporaryDirectory() as off_dir, tempfile.TemporaryDirectory() as on_dir:
        servers = {False: start(off_dir, False), True: start(on_dir, True)}
        try:
            channels = {on: grpc.insecure_channel(address) for on, (_, address, _) in servers.items()}
            ranks = {on: pb_grpc.RankingServiceStub(channel).Rank for on, channel in channels.items()}
            metrics_address = servers[True][2]
            assert metrics_address is not None
            for request in requests[: args.warmup]:
                for on in (False, True):
                    ranks[on](request, timeout=10)
            next_scrape = time.monotonic()
            for i, request in enumerate(requests[args.warmup:]):
                order = (False, True) if i % 2 == 0 else (True, False)  # neither always goes first
                for on in order:
                    t0 = time.perf_counter()
                    ranks[on](request, timeout=10)
                    timings[on].append((time.perf_counter() - t0) * 1e3)
                if time.monotonic() >= next_scrape:
                    scrape(metrics_address)
                    scrapes += 1
                    next_scrape += args.scrape_every_s
            final = scrape(metrics_address)
            counted = sum(float(line.rsplit(" ", 1)[1]) for line in final.splitlines()
                          if line.startswith("recsys_rl_rank_seconds_count{"))
            for channel in channels.values():
                channel.close()
        finally:
            for process, _, _ in servers.values():
                process.terminate()
                process.wait(timeout=60)
    result = {
        "off_p50_ms": statistics.median(timings[False]), "off_p99_ms": percentile(timings[False], 99),
        "on_p50_ms": statistics.median(timings[True]), "on_p99_ms": percentile(timings[True], 99),
        "scrapes": float(scrapes), "counted": counted, "sent": float(args.warmup + args.calls),
    }
    result["p50_ratio"] = result["on_p50_ms"] / result["off_p50_ms"]
    return result


def markdown(result: dict[str, float], args: Args = Args()) -> str:
    return "\n".join([
        f"Rank with {args.n_candidates} candidates, slate {args.slate_size}, from one client process alternating "
        f"calls between two `recsys-rl serve` processes (metrics off / `--metrics-port 0`, multiprocess mode); "
        f"{args.calls} timed calls each after {args.warmup} warm-up calls; the metrics server scraped every "
        f"{args.scrape_every_s:g} s meanwhile ({result['scrapes']:.0f} scrapes).",
        "",
        "| server | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| metrics off (baseline, same run) | {result['off_p50_ms']:.3f} | {result['off_p99_ms']:.3f} |",
        f"| metrics on | {result['on_p50_ms']:.3f} | {result['on_p99_ms']:.3f} |",
        "",
        f"Rank p50 on / off = **{result['p50_ratio']:.3f}×** (goal ≤ 1.05×). The last scrape counted "
        f"{result['counted']:.0f} Ranks of {result['sent']:.0f} sent.",
    ])


if __name__ == "__main__":
    print(markdown(run()))
