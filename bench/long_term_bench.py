"""What the slate-RL long-term value costs inside Rank: p50/p99 with λ = 0 vs λ > 0, 100 candidates, one run.

    .venv/bin/python -m bench.long_term_bench [--calls 3000]

Reads top to bottom (CleanRL style). Two ``recsys-rl serve`` processes on the same machine: one with the embedded
default surface (VW alone), one whose surface blends λ · Q(s, i) from a SlateQ checkpoint in its registry. The
checkpoint is an untrained network of the default shape: inference cost does not depend on the weights' values.
This process is the client; calls alternate between the servers so both see the same machine noise. Every
fifth request gets a click reported (untimed), so the λ > 0 server also keeps user histories and serves users
with a non-empty GRU state, as in production.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.rank_bench import Args as RankArgs
from bench.rank_bench import make_request
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
LONG_TERM_TOML = """
[surfaces.default]
exploration_cap = 0.1

[surfaces.default.model]
long_term_weight = {weight}
"""


@dataclass
class Args:
    n_candidates: int = 100  # candidates per Rank request
    slate_size: int = 10  # slate positions per Rank request
    warmup: int = 300  # untimed calls per server first
    calls: int = 3_000  # timed calls per server
    long_term_weight: float = 0.5  # λ of the second server
    click_every: int = 5  # report a click on every n-th request (untimed)


def publish_untrained_slateq(data_dir: Path) -> str:
    from recsys_rl.serving.registry import ModelRegistry
    from recsys_rl.slateq import SURFACE
    from recsys_rl.slateq.model import FeatureSpec, NetSpec, SlateQNet
    from recsys_rl.slateq.train import serialize

    net = SlateQNet(FeatureSpec(), NetSpec())
    checkpoint = ModelRegistry(data_dir / "models").publish(
        SURFACE, serialize(net), parent=None, data_range={}, parameters={"note": "untrained, for latency only"})
    return checkpoint.version


def start(data_dir: Path, config: Path | None) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir", str(data_dir)]
    server = subprocess.Popen(command + (["--config", str(config)] if config else []), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline() if server.stdout else ""
    if not line.startswith("serving on "):
        server.kill()
        raise RuntimeError("a server did not start")
    return server, line.split()[-1]


def run(args: Args = Args()) -> dict[str, float]:
    rng = np.random.default_rng(0)
    shape = RankArgs(n_candidates=args.n_candidates, slate_size=args.slate_size)
    requests = [make_request(rng, shape, i) for i in range(args.warmup + args.calls)]
    timings: dict[str, list[float]] = {"bandit": [], "blend": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        publish_untrained_slateq(root / "blend")
        config = root / "blend.toml"
        config.write_text(LONG_TERM_TOML.format(weight=args.long_term_weight))
        servers = {"bandit": start(root / "bandit", None), "blend": start(root / "blend", config)}
        try:
            channels = {name: grpc.insecure_channel(address) for name, (_, address) in servers.items()}
            stubs = {name: pb_grpc.RankingServiceStub(channel) for name, channel in channels.items()}
            for i, request in enumerate(requests):
                for name, stub in stubs.items():
                    t0 = time.perf_counter()
                    response = stub.Rank(request, timeout=10)
                    elapsed = (time.perf_counter() - t0) * 1e3
                    if i >= args.warmup:
                        timings[name].append(elapsed)
                    if i % args.click_every == 0:
                        stub.ReportOutcome(pb.ReportOutcomeRequest(event_id=response.event_id, outcome="click",
                                                                   item_id=response.slate[0].item_id, value=1.0),
                                           timeout=10)
            for channel in channels.values():
                channel.close()
        finally:
            for server, _ in servers.values():
                server.terminate()
                server.wait(timeout=60)
    result = {}
    for name, values in timings.items():
        result[f"{name}_p50_ms"] = statistics.median(values)
        result[f"{name}_p99_ms"] = float(np.percentile(values, 99))
    result["p50_added_ms"] = result["blend_p50_ms"] - result["bandit_p50_ms"]
    return result


def markdown(result: dict[str, float], args: Args = Args()) -> str:
    return "\n".join([
        f"Rank with {args.n_candidates} candidates, slate {args.slate_size}; {args.calls} timed calls per server, "
        f"alternating, after {args.warmup} warm-up calls; a click reported on every {args.click_every}th request.",
        "",
        "| server | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| VW alone (λ = 0) | {result['bandit_p50_ms']:.3f} | {result['bandit_p99_ms']:.3f} |",
        f"| VW + λ·SlateQ (λ = {args.long_term_weight}) | {result['blend_p50_ms']:.3f} | "
        f"{result['blend_p99_ms']:.3f} |",
        "",
        f"SlateQ adds **{result['p50_added_ms']:.3f} ms** to Rank p50 (target ≤ 0.5 ms).",
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=Args.calls)
    parser.add_argument("--warmup", type=int, default=Args.warmup)
    ns = parser.parse_args()
    bench_args = Args(calls=ns.calls, warmup=ns.warmup)
    outcome = run(bench_args)
    print(platform.platform())
    print(markdown(outcome, bench_args))
