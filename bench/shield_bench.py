"""Decision-path latency with the shield on (1M blocked ids from a file, max_per_value creator = 2, a pin) vs off,
same process, same 100-candidate requests, interleaved so both see the same machine noise.

In process (``decision.decide`` with a constant scorer), not over gRPC: it isolates what the shield adds to Rank;
Rank's own p50 adds the same server overhead to both.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from recsys_rl.config import ExplorationConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.decision import ConstantScorer, DecisionPolicy, decide
from recsys_rl.serving.exploration import make_explorer
from recsys_rl.shield import parse_shield


def make_request(r: int, n: int = 100, slate: int = 10) -> pb.RankRequest:
    request = pb.RankRequest(request_id=f"r{r}", slate_size=slate)
    for i in range(n):
        c = request.candidates.add(item_id=f"item-{(r * 7 + i) % 5000}", baseline_score=float(n - i))
        c.features.categorical["creator"] = f"c{i % 20}"
    return request


def main(calls: int = 3_000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blocked.txt"
        path.write_text("".join(f"blocked-{i}\n" for i in range(1_000_000)) + "item-3\nitem-40\n")
        t = time.perf_counter()
        rules = parse_shield({"blocked_items_file": str(path), "max_per_value": {"creator": 2},
                              "pinned": {"item-50": 0}})
        load_s = time.perf_counter() - t
    exploration = ExplorationConfig(algorithm="epsilon_greedy")
    off = DecisionPolicy(surface="default", policy_version="v", scorer=ConstantScorer(),
                         explorer=make_explorer(exploration, 0.1), exploration=exploration, cap=0.1)
    on = DecisionPolicy(**{**off.__dict__, "shield": rules})
    requests = [make_request(r) for r in range(calls)]
    baseline = np.arange(100.0)[::-1].copy()
    times: dict[str, list[float]] = {"off": [], "on": []}
    for r, request in enumerate(requests):
        for name, policy in ((("off", off), ("on", on)) if r % 2 else (("on", on), ("off", off))):
            t = time.perf_counter_ns()
            decide(policy, request, baseline, draw_key=r)
            times[name].append((time.perf_counter_ns() - t) / 1e3)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    p99 = {k: float(np.percentile(v, 99)) for k, v in times.items()}
    print(f"python {sys.version.split()[0]}; 100 candidates, slate 10, {calls} calls each; 1M-id file loaded in "
          f"{load_s:.2f} s")
    print(f"decide p50 off {p50['off']:.1f} µs, on {p50['on']:.1f} µs ({p50['on'] / p50['off']:.2f}x); "
          f"p99 off {p99['off']:.1f} µs, on {p99['on']:.1f} µs")


if __name__ == "__main__":
    main()
