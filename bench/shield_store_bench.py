"""Run-time shield changes: what a change costs with a 1M-id blocked list, against a small change in the same run,
and what it does to the decision path of the same process while it is applied (the work holds the GIL).

In process (``ShieldStore.set`` with a ``ShieldEdit``, the code SetShield runs; ``load_rules``, what a start, another
worker's refresh and replay run). Medians of ``REPS`` repetitions, each on a fresh data dir. The decision latencies
on the other thread are pooled over the repetitions per phase; "before" is the old one-call-per-step build of the
same version, measured in the same run as the in-run reference.
"""

from __future__ import annotations

import gc
import hashlib
import random
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


class _Decisions:
    """decide() in a loop on another thread of this process (a Rank thread), its latencies kept per phase."""

    def __init__(self, policy: DecisionPolicy) -> None:
        self.policy = policy
        self.phases: dict[str, list[float]] = {}
        rng = np.random.default_rng(0)  # fixed requests, built once: only decide() runs in the timed loop
        self.requests = [make_request(rng, i) for i in range(256)]

    def during(self, phase: str, work: object) -> float:
        """Runs ``work()`` on this thread while decisions run on another; returns work's seconds."""
        out = self.phases.setdefault(phase, [])
        gc.collect()  # each phase starts without the bench's own garbage; what the work allocates counts
        stop = threading.Event()
        thread = threading.Thread(target=self._loop, args=(stop, out))
        thread.start()
        try:
            return _timed(work)
        finally:
            stop.set()
            thread.join()

    def _loop(self, stop: threading.Event, out: list[float]) -> None:
        baseline = np.arange(100.0)[::-1].copy()
        r = 0
        while not stop.is_set():
            request = self.requests[r % len(self.requests)]
            t = time.perf_counter_ns()
            decide(self.policy, request, baseline, draw_key=r)
            out.append((time.perf_counter_ns() - t) / 1e3)
            r += 1


def _one_call_version(ids: list[str]) -> str:
    """Reference "before": the version of 1M ids built the way rules_from_dict did before issue 10's fix, each step
    one C call over all the ids (frozenset, sorted, join, encode, hash)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(("\n".join(sorted(frozenset(ids))) + "\n").encode())
    return h.hexdigest()


def main() -> None:
    rows: dict[str, list[float]] = {"small": [], "before": [], "from_file": [], "load": [], "block_on_top": []}
    exploration = ExplorationConfig(algorithm="epsilon_greedy")
    policy = DecisionPolicy(surface="default", policy_version="v", scorer=ConstantScorer(),
                            explorer=make_explorer(exploration, 0.1), exploration=exploration, cap=0.1,
                            shield=parse_shield({"max_per_value": {"creator": 2}}))
    decisions = _Decisions(policy)
    rng = random.Random(7)
    for rep in range(REPS):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            ids = data / "ids.txt"
            id_list = [f"blocked-{i:07d}" for i in range(N_IDS)]
            rng.shuffle(id_list)  # unsorted: the change has to sort them
            ids.write_text("".join(f"{item}\n" for item in id_list))
            store = ShieldStore(data)
            store.apply_config({"s": NO_SHIELD, "small": parse_shield({"blocked_items": [f"x{i}" for i in range(1000)]})})
            rows["small"].append(_timed(lambda: store.set("small", ShieldEdit(block=["y1", "y2"]).apply, actor="b")))
            decisions.during("idle", lambda: time.sleep(1.0))
            rows["before"].append(decisions.during("before", lambda: _one_call_version(id_list)))
            version = ""

            def from_file() -> None:
                nonlocal version
                version = store.set("s", ShieldEdit(blocked_items_file=str(ids)).apply, actor="b")[1].version

            rows["from_file"].append(decisions.during("from_file", from_file))
            rows["load"].append(decisions.during("load", lambda: load_rules(data, version)))
            rows["block_on_top"].append(decisions.during("block_on_top", lambda: store.set(
                "s", ShieldEdit(block=[f"z{rep}"]).apply, actor="b")))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"python {sys.version.split()[0]}; {N_IDS:,} blocked ids (15 bytes each, file in random order), "
          f"medians of {REPS} runs")
    print(f"in-run baseline: block 2 ids on a 1k-id list {med['small'] * 1e3:.1f} ms")
    print(f"set the rules from a {N_IDS:,}-id file {med['from_file']:.2f} s ({med['from_file'] / med['small']:.0f}x); "
          f"load that version (start, another worker's refresh, replay) {med['load']:.2f} s; block 1 more id on "
          f"top of it {med['block_on_top']:.2f} s; reference: the version built with one C call per step (the code "
          f"before the chunking) {med['before']:.2f} s")
    print()
    print("decide (100 candidates, diversity rule) on another thread of the same process, all runs pooled:")
    print()
    print("| while this thread runs | decisions | p50 µs | p99 µs | p99 / idle p99 | max µs |")
    print("|---|---|---|---|---|---|")
    idle_p99 = float(np.percentile(decisions.phases["idle"], 99))
    names = {"idle": "nothing (idle, 1 s)", "before": "1M-id version, one C call per step (before)",
             "from_file": "set from the 1M-id file (ShieldStore.set)", "load": "load_rules of that version",
             "block_on_top": "block 1 id on top of 1M"}
    for phase, label in names.items():
        lat = decisions.phases[phase]
        p99 = float(np.percentile(lat, 99))
        print(f"| {label} | {len(lat)} | {statistics.median(lat):.0f} | {p99:.0f} | {p99 / idle_p99:.1f}x | "
              f"{max(lat):.0f} |")


if __name__ == "__main__":
    main()
