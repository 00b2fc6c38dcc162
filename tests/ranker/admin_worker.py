"""A second process on a data dir, standing in for another worker's admin side: ``python -m tests.ranker.admin_worker D``.

It holds the three governance stores on ``D`` and changes them through the same store calls a worker's
PolicyAdminService makes (``CapStore.change``, ``RolloutStore.set/revert``, ``ShieldStore.set``); ``start`` applies a
configuration as a (re)starting worker's DecisionService does, and ``show`` reports what this process serves after
adopting the others' changes (what its watcher tick does). Commands are
JSON lines on stdin, one JSON reply per line on stdout; ``acked_unix`` is ``time.time()`` right after the change is
durable (the moment a worker would acknowledge the RPC). Bursts of changes run in a loop so that two of these
processes contend for the admin lock.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from recsys_rl.caps.store import CapStore
from recsys_rl.config import SurfaceConfig
from recsys_rl.errors import Aborted
from recsys_rl.rollout.config import RolloutConfig, Stage
from recsys_rl.rollout.store import GuardrailEvidence, RolloutStore
from recsys_rl.shield.edits import ShieldEdit
from recsys_rl.shield.store import ShieldStore

PASSING = GuardrailEvidence([("stand_in", True, "this test's second process vouches for the move")])


class Worker:
    def __init__(self, data_dir: Path, actor: str) -> None:
        self.actor = actor
        self.in_force: dict[str, float] = {}  # a worker's policies: what on_change puts in force
        self.caps = CapStore(data_dir, on_change=self.in_force.__setitem__)
        self.in_force.update(self.caps.caps())
        self.rollout = RolloutStore(data_dir)
        self.shields = ShieldStore(data_dir)

    def cap(self, surface: str, cap: float) -> dict[str, Any]:
        def judge(old: float) -> list[str]:  # no gate here: these tests are about the lock, not the evidence
            return []

        entry = self.caps.change(surface, cap, in_force=self.in_force.__getitem__, judge=judge, actor=self.actor,
                                 reason="shared-state test", evidence_digest="")
        return {"sequence": entry.sequence, "accepted": entry.accepted, "old_cap": entry.old_cap}

    def stage(self, surface: str, stage: str, share: float | None = None) -> dict[str, Any]:
        entry = self.rollout.set(surface, Stage(stage), share, actor=self.actor, reason="shared-state test",
                                 evidence=lambda: PASSING)
        return {"sequence": entry.sequence}

    def start(self, surface: str, cap: float, stage: str, share: float) -> dict[str, Any]:
        """A (re)start with this configuration: the store calls DecisionService makes at start; then ``show``."""
        rollout = RolloutConfig(stage=stage, canary_share=share)
        self.in_force.update(self.caps.apply_config({surface: cap}))
        self.rollout.apply_config({surface: SurfaceConfig(name=surface, exploration_cap=cap, rollout=rollout)})
        return self.show(surface)

    def show(self, surface: str) -> dict[str, Any]:
        """What this process serves once it has adopted other processes' changes."""
        self.caps.refresh()
        self.rollout.refresh()
        state = self.rollout.state(surface)
        return {"cap": self.in_force[surface], "stage": state.stage.value, "share": state.canary_share}

    def revert(self, surface: str) -> dict[str, Any]:
        entry = self.rollout.revert(surface, reason=f"{self.actor}: canary worse")
        return {"sequence": None if entry is None else entry.sequence}

    def block(self, surface: str, items: list[str], expected_version: str = "") -> dict[str, Any]:
        entry, _ = self.shields.set(surface, ShieldEdit(block=items).apply, actor=self.actor,
                                    reason="shared-state test", expected_version=expected_version)
        return {"sequence": entry.sequence, "version": entry.new_version}

    def burst(self, kind: str, surface: str, count: int, base_cap: float = 0.4) -> dict[str, Any]:
        """``count`` read-modify-writes of one kind, as fast as the lock allows; shield ones check their version."""
        aborted = 0
        for i in range(count):
            if kind == "cap":
                self.cap(surface, round(base_cap - 0.001 * i, 6))
            elif kind == "stage":
                self.stage(surface, "shadow" if i % 2 else "baseline")
            else:
                while True:  # read the version, edit it, retry when another process came first (ABORTED)
                    self.shields.refresh()
                    try:
                        self.block(surface, [f"{self.actor}-{i}"], expected_version=self.shields.version(surface))
                        break
                    except Aborted:
                        aborted += 1
        return {"aborted": aborted}


def main() -> None:
    worker = Worker(Path(sys.argv[1]), sys.argv[2])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        reply = getattr(worker, op)(**command)
        print(json.dumps({**reply, "acked_unix": time.time()}), flush=True)


if __name__ == "__main__":
    main()
