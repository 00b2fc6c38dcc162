"""Rank latency at rollout stage shadow vs live (issue 9): what deciding the learned policy beside the served
baseline adds to Rank.

Reads top to bottom (CleanRL style). Three servers run side by side as their own processes from this checkout, each
with a ``--config`` TOML that differs only in ``[surfaces.default.rollout] stage``: live (the learned policy serves),
shadow (the baseline serves, the learned policy decides beside it and is logged), and baseline (the baseline serves,
the model is not scored). The client sends the same 100-candidate Rank request to each in turn, rotating who goes
first, so all see the same machine noise; we report p50/p99 per stage and the ratio shadow/live of the p50s (goal ≤
1.3×), plus the shadow's own added time as logged in ``DecisionEvent.shadow.latency_micros``.
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
STAGES = ("live", "shadow", "baseline")


@dataclass
class Args:
    warmup: int = 300  # untimed calls to each server first
    calls: int = 3_000  # timed calls to each server
    rounds: int = 3  # the whole comparison is repeated; the median ratio is reported


def _serve(config: Path, data_dir: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir", data_dir,
                             "--config", str(config)],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def _shadow_added_ms(data_dir: str) -> float:
    from logging_schema.reader import read_log

    events = read_log(Path(data_dir) / "logs").decisions
    return statistics.median(e.shadow.latency_micros for e in events if e.HasField("shadow")) / 1e3


def one_round(work: Path, args: Args, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    requests = [make_request(rng, RankArgs(), i) for i in range(args.warmup + args.calls)]
    data_dirs = {stage: tempfile.mkdtemp(dir=work) for stage in STAGES}
    servers = {}
    for stage in STAGES:
        config = work / f"{stage}.toml"
        config.write_text(f'[surfaces.default]\n\n[surfaces.default.rollout]\nstage = "{stage}"\n')
        servers[stage] = _serve(config, data_dirs[stage])
    try:
        channels = {stage: grpc.insecure_channel(s.stdout.readline().split()[-1]) for stage, s in servers.items()}
        ranks = {stage: pb_grpc.RankingServiceStub(channel).Rank for stage, channel in channels.items()}
        times = time_alternating(ranks, requests, args.warmup)
        for channel in channels.values():
            channel.close()
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(timeout=60)
    result = {f"{stage}_p50_ms": statistics.median(times[stage]) for stage in STAGES}
    result.update({f"{stage}_p99_ms": percentile(times[stage], 99) for stage in STAGES})
    result["shadow_ratio"] = result["shadow_p50_ms"] / result["live_p50_ms"]
    result["baseline_ratio"] = result["baseline_p50_ms"] / result["live_p50_ms"]
    result["shadow_added_p50_ms"] = _shadow_added_ms(data_dirs["shadow"])
    return result


def run(args: Args = Args()) -> list[dict[str, float]]:
    results = []
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
            results.append(one_round(Path(work), args, seed=r))
    return results


def markdown(results: list[dict[str, float]], args: Args = Args()) -> str:
    rows = [f"| {i + 1} | {r['live_p50_ms']:.3f} | {r['shadow_p50_ms']:.3f} | {r['baseline_p50_ms']:.3f} | "
            f"{r['shadow_ratio']:.3f} | {r['baseline_ratio']:.3f} | {r['shadow_added_p50_ms']:.3f} | "
            f"{r['live_p99_ms']:.3f} | {r['shadow_p99_ms']:.3f} |" for i, r in enumerate(results)]
    ratio = statistics.median(r["shadow_ratio"] for r in results)
    return "\n".join([
        "Rank with 100 candidates, slate 10 (bench.rank_bench's requests); three servers from this checkout whose "
        f"`--config` differ only in the rollout stage, side by side, {args.calls} timed calls each per round, "
        "rotating. *shadow added* is the median `DecisionEvent.shadow.latency_micros` (the shadow's own decision, "
        "measured inside the server).",
        "",
        "| round | live p50 ms | shadow p50 ms | baseline p50 ms | shadow/live p50 | baseline/live p50 | "
        "shadow added p50 ms | live p99 ms | shadow p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Median shadow/live p50 ratio = **{ratio:.3f}×** (goal ≤ 1.3×).",
        "",
        "Shadow costs about what live costs: live already runs the learned decision, shadow runs the same one and "
        "serves the baseline order instead (a sort). Stage baseline (and a canary's control users) skips the model: "
        "the request's features are still checked through the item cache, but nothing is predicted.",
    ])


if __name__ == "__main__":
    outcome = run()
    print(platform.platform(), file=sys.stderr)
    print(markdown(outcome))
