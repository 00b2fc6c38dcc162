"""Rank latency before and after the single-decision-path refactor (issue 7), measured in one run.

Reads top to bottom (CleanRL style). Two servers run side by side as their own processes: one from the code at
``Args.before`` (extracted with ``git archive`` into a temporary directory) and one from this checkout. The
client alternates the same 100-candidate Rank request between them, so both see the same machine noise; we report
medians, p99 and the ratio after/before of the p50s (goal ≤ 1.05×).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.rank_bench import Args as RankArgs
from bench.rank_bench import make_request, percentile, time_alternating
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    before: str = "0536bec"  # the last commit before the refactor (two decision paths, flat recsys_rl/)
    warmup: int = 300  # untimed calls to each server first
    calls: int = 3_000  # timed calls to each server
    rounds: int = 3  # the whole comparison is repeated; the median ratio is reported


def _serve(code_dir: Path, data_dir: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=str(code_dir))
    server = subprocess.Popen([sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir", data_dir],
                              cwd=code_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return server, server.stdout.readline().split()[-1]


def one_round(before_dir: Path, args: Args, seed: int) -> dict[str, float]:
    rank_args = RankArgs()
    rng = np.random.default_rng(seed)
    requests = [make_request(rng, rank_args, i) for i in range(args.warmup + args.calls)]
    with tempfile.TemporaryDirectory() as old_data, tempfile.TemporaryDirectory() as new_data:
        old, old_address = _serve(before_dir, old_data)
        new, new_address = _serve(REPO, new_data)
        try:
            old_channel, new_channel = grpc.insecure_channel(old_address), grpc.insecure_channel(new_address)
            old_rank = pb_grpc.RankingServiceStub(old_channel).Rank
            new_rank = pb_grpc.RankingServiceStub(new_channel).Rank
            times = time_alternating({"before": old_rank, "after": new_rank}, requests, args.warmup)
            old_ms, new_ms = times["before"], times["after"]
            old_channel.close()
            new_channel.close()
        finally:
            for server in (old, new):
                server.terminate()
                server.wait(timeout=60)
    return {
        "before_p50_ms": statistics.median(old_ms), "before_p99_ms": percentile(old_ms, 99),
        "after_p50_ms": statistics.median(new_ms), "after_p99_ms": percentile(new_ms, 99),
        "p50_ratio": statistics.median(new_ms) / statistics.median(old_ms),
    }


def run(args: Args = Args()) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as before_dir:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", before_dir], input=archive.stdout, check=True)
        results = []
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
            results.append(one_round(Path(before_dir), args, seed=r))
    return results


def markdown(results: list[dict[str, float]], args: Args = Args()) -> str:
    rows = [f"| {i + 1} | {r['before_p50_ms']:.3f} | {r['after_p50_ms']:.3f} | {r['p50_ratio']:.3f} | "
            f"{r['before_p99_ms']:.3f} | {r['after_p99_ms']:.3f} |" for i, r in enumerate(results)]
    ratio = statistics.median(r["p50_ratio"] for r in results)
    return "\n".join([
        f"Rank with 100 candidates, slate 10 (bench.rank_bench's requests); the server at `{args.before}` (before the "
        f"refactor) and this checkout's, side by side, {args.calls} timed calls each per round, alternating.",
        "",
        "| round | before p50 ms | after p50 ms | after/before p50 | before p99 ms | after p99 ms |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Median after/before p50 ratio = **{ratio:.3f}×** (goal ≤ 1.05×).",
    ])


if __name__ == "__main__":
    outcome = run()
    print(platform.platform(), file=sys.stderr)
    print(markdown(outcome))
