"""Run-time shield changes: what a change costs with a 1M-id blocked list, against a small change in the same run,
and what it does to the decision path of the same process while it is applied (the work holds the GIL).

In process (``ShieldStore.set`` with a ``ShieldEdit``, the code SetShield runs; ``load_rules``, what a start, another
worker's refresh and replay run). Medians of ``REPS`` repetitions, each on a fresh data dir.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.shield_bench import make_request
from recsys_rl.config import ExplorationConfig
from recsys_rl.serving.decision import ConstantScorer, DecisionPolicy, decide
from recsys_rl.serving.exploration import make_explorer
from recsys_rl.shield import NO_SHIELD, parse_shield
from recsys_rl.shield.edits import ShieldEdit
from recsys_rl.shield.store import ShieldStore, load_rules

REPS = 3
N_IDS = 1_000_000


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def _decide_times(policy: DecisionPolicy, stop: threading.Event, out: list[float]) -> None:
    baseline = np.arange(100.0)[::-1].copy()
    r = 0
    while not stop.is_set():
        request = make_request(r)
        t = time.perf_counter_ns()
        decide(policy, request, baseline, draw_key=r)
        out.append((time.perf_counter_ns() - t) / 1e3)
        r += 1


def main() -> None:
    rows: dict[str, list[float]] = {"small": [], "from_file": [], "load": [], "block_on_top": []}
    exploration = ExplorationConfig(algorithm="epsilon_greedy")
    policy = DecisionPolicy(surface="default", policy_version="v", scorer=ConstantScorer(),
                            explorer=make_explorer(exploration, 0.1), exploration=exploration, cap=0.1,
                            shield=parse_shield({"max_per_value": {"creator": 2}}))
    idle: list[float] = []
    during: list[float] = []
    for rep in range(REPS):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            ids = data / "ids.txt"
            ids.write_text("".join(f"blocked-{i:07d}\n" for i in range(N_IDS)))
            store = ShieldStore(data)
            store.apply_config({"s": NO_SHIELD, "small": parse_shield({"blocked_items": [f"x{i}" for i in range(1000)]})})
            rows["small"].append(_timed(lambda: store.set("small", ShieldEdit(block=["y1", "y2"]).apply, actor="b")))
            # The decision path on another thread: idle first, then while the 1M-id change is applied.
            stop = threading.Event()
            thread = threading.Thread(target=_decide_times, args=(policy, stop, idle))
            thread.start()
            time.sleep(0.5)
            stop.set()
            thread.join()
            stop = threading.Event()
            thread = threading.Thread(target=_decide_times, args=(policy, stop, during))
            thread.start()
            version = ""

            def from_file() -> None:
                nonlocal version
                version = store.set("s", ShieldEdit(blocked_items_file=str(ids)).apply, actor="b")[1].version

            rows["from_file"].append(_timed(from_file))
            stop.set()
            thread.join()
            rows["load"].append(_timed(lambda: load_rules(data, version)))
            rows["block_on_top"].append(_timed(lambda: store.set("s", ShieldEdit(block=[f"z{rep}"]).apply,
                                                                 actor="b")))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"python {sys.version.split()[0]}; {N_IDS:,} blocked ids (15 bytes each), medians of {REPS} runs")
    print(f"in-run baseline: block 2 ids on a 1k-id list {med['small'] * 1e3:.1f} ms")
    print(f"set the rules from a {N_IDS:,}-id file {med['from_file']:.2f} s ({med['from_file'] / med['small']:.0f}x); "
          f"load that version {med['load']:.2f} s; block 1 more id on top of it {med['block_on_top']:.2f} s")
    print(f"decide (100 candidates, diversity rule) on another thread of the same process: p50 idle "
          f"{statistics.median(idle):.0f} µs, while the 1M-id change is applied {statistics.median(during):.0f} µs "
          f"(p99 {np.percentile(idle, 99):.0f} vs {np.percentile(during, 99):.0f} µs; {len(during)} decisions "
          f"during {sum(rows['from_file']):.1f} s)")


if __name__ == "__main__":
    main()
