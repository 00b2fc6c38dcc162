"""The fleet view of rollout evidence: exact shadow sums, per-worker guardrail rule, the summary's bound, and the
published files (written, read back, stale and dead processes ignored, removed on stop).

Guardrails here are real ``Guardrail`` objects fed Bernoulli rewards; other processes' files are written by real
publishers or, for a dead process, by a real child process that has exited."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys_rl.rollout.config import RolloutConfig
from recsys_rl.rollout.evidence_files import (EvidencePublisher, Member, ProcessEvidence, SurfaceEvidence,
                                              evidence_path, read_members)
from recsys_rl.rollout.fleet import FleetRollout
from recsys_rl.rollout.guardrail import Arm, Guardrail
from recsys_rl.serving.shadow import ShadowSums

CONFIG = RolloutConfig(min_decisions=50, tolerance=0.01, alpha=0.05)


def _guardrail(canary: float, control: float, n: int, *, seed: int) -> Guardrail:
    rng = random.Random(seed)
    guardrail = Guardrail(CONFIG, (0.0, 1.0))
    for _ in range(n):
        guardrail.observe_decision(Arm.CANARY, False, 2.0 + rng.random())
        guardrail.observe(Arm.CANARY, float(rng.random() < canary))
        guardrail.observe(Arm.CONTROL, float(rng.random() < control))
    return guardrail


def _member(label: str, shadow: ShadowSums, guardrail: Guardrail | None, *, sequence: int = 4,
            own: bool = False) -> Member:
    surface = SurfaceEvidence(sequence, shadow, None if guardrail is None else guardrail.share())
    pid = 1000 + len(label)
    return Member(label, pid, ProcessEvidence(pid, time.time(), {"home": surface}), own=own)


def _fleet(*members: Member) -> FleetRollout:
    return FleetRollout("home", 4, CONFIG, members)


def test_shadow_statistics_add_up_exactly() -> None:
    a = ShadowSums(decisions=30, top1_matches=6, overlap_sum=9.0, fallbacks=1, latency_bins={40: 20, 60: 10})
    b = ShadowSums(decisions=20, top1_matches=14, overlap_sum=11.0, fallbacks=0, latency_bins={60: 5, 80: 15})
    fleet = _fleet(_member("worker-0", a, None, own=True), _member("worker-1", b, None))
    stats = fleet.shadow()
    assert (stats.decisions, stats.top1_match, stats.overlap_at_k, stats.fallback_rate) == (50, 0.4, 0.4, 0.02)
    # the median of the pooled latencies: 25 of 50 lie in bins <= 60 (20 + 10 + 5 = 35), so bin 60
    assert stats.added_latency_p50_ms == pytest.approx(0.01 * 1.05**59 * 1.05**0.5)
    evidence = FleetRollout("home", 4, RolloutConfig(min_decisions=40), fleet.members).shadow_evidence()
    assert evidence.passed and evidence.checks[0][2] == "50 of 40 (worker-0 30, worker-1 20)"
    assert ShadowSums.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_one_process_judges_as_before() -> None:
    guardrail = _guardrail(0.3, 0.3, 80, seed=1)
    fleet = _fleet(_member("pid 1", ShadowSums(), guardrail, own=True))
    assert fleet.guardrail() == guardrail.state()
    assert fleet.guardrail_evidence() == guardrail.evidence()


def test_a_forward_move_needs_every_worker_and_names_those_that_have_not_passed() -> None:
    holding = _guardrail(0.3, 0.3, 80, seed=2)
    collecting = _guardrail(0.3, 0.3, 30, seed=3)
    evidence = _fleet(_member("worker-0", ShadowSums(), holding, own=True),
                      _member("worker-1", ShadowSums(), collecting)).guardrail_evidence()
    assert evidence is not None and not evidence.passed
    failed = evidence.failed_checks()
    assert failed == ["canary_decisions: not passed by worker-1: worker-0 80 of 50, worker-1 30 of 50",
                      "control_decisions: not passed by worker-1: worker-0 80 of 50, worker-1 30 of 50"]
    # each worker's own 80 decisions per arm: passes, at each worker's alpha
    both = _fleet(_member("worker-0", ShadowSums(), holding, own=True),
                  _member("worker-1", ShadowSums(), _guardrail(0.3, 0.3, 80, seed=4))).guardrail_evidence()
    assert both is not None and both.passed, both.failed_checks()
    assert set(both.estimates["workers"]) == {"worker-0", "worker-1"}  # type: ignore[arg-type]


def test_a_worker_behind_or_without_evidence_blocks_a_forward_move() -> None:
    holding = _guardrail(0.3, 0.3, 80, seed=5)
    behind = _fleet(_member("worker-0", ShadowSums(), holding, own=True),
                    _member("worker-1", ShadowSums(), _guardrail(0.3, 0.3, 80, seed=6), sequence=3))
    evidence = behind.guardrail_evidence()
    assert evidence is not None
    assert evidence.failed_checks() == ["workers: worker-1: behind: serves rollout #3, not #4 yet"]
    down = _fleet(_member("worker-0", ShadowSums(), holding, own=True), Member("worker-1", None, None, "not serving"))
    assert down.guardrail_evidence().failed_checks() == ["workers: worker-1: not serving"]  # type: ignore[union-attr]
    assert [w.status for w in down.workers()] == ["current", "not serving"]


def test_a_failed_worker_guardrail_fails_the_summary_and_the_move() -> None:
    bad = _guardrail(0.05, 0.5, 200, seed=7)
    assert bad.state().status == "failed"
    fleet = _fleet(_member("worker-0", ShadowSums(), _guardrail(0.3, 0.3, 80, seed=8), own=True),
                   _member("worker-1", ShadowSums(), bad))
    summary = fleet.guardrail()
    assert summary is not None and summary.status == "failed"
    assert summary.failed_checks and all(c.startswith("worker-1: ") for c in summary.failed_checks)
    assert "reward: not passed by worker-1" in " ".join(fleet.guardrail_evidence().failed_checks())  # type: ignore


def test_the_summary_pools_counts_and_means_and_averages_bounds() -> None:
    g0, g1 = _guardrail(0.4, 0.3, 120, seed=9), _guardrail(0.4, 0.3, 40, seed=10)
    summary = _fleet(_member("worker-0", ShadowSums(), g0, own=True), _member("worker-1", ShadowSums(), g1)).guardrail()
    s0, s1 = g0.state(), g1.state()
    assert summary is not None and summary.canary_decisions == 160 and summary.canary_served == 160
    assert summary.canary_mean_reward == pytest.approx((120 * s0.canary_mean_reward + 40 * s1.canary_mean_reward) / 160)
    assert summary.alpha == pytest.approx(0.1)  # a union bound over the two guardrails
    (c0, o0), (c1, o1) = [(g.share().canary_bounds, g.share().control_bounds) for g in (g0, g1)]
    assert summary.difference_high == pytest.approx(0.75 * c0[1] + 0.25 * c1[1] - (0.75 * o0[0] + 0.25 * o1[0]))
    assert summary.difference_low == pytest.approx(0.75 * c0[0] + 0.25 * c1[0] - (0.75 * o0[1] + 0.25 * o1[1]))
    assert summary.difference_low <= 0.1 <= summary.difference_high  # the true difference, here


def _evidence(pid: int, decisions: int) -> ProcessEvidence:
    return ProcessEvidence(pid, time.time(), {"home": SurfaceEvidence(2, ShadowSums(decisions=decisions), None)})


def test_published_files_are_read_by_others_and_removed_on_stop(tmp_path: Path) -> None:
    guardrail = _guardrail(0.3, 0.3, 60, seed=11)

    def build() -> ProcessEvidence:
        surface = SurfaceEvidence(2, ShadowSums(decisions=7), guardrail.share())
        return ProcessEvidence(os.getpid(), time.time(), {"home": surface})

    publisher = EvidencePublisher(tmp_path, build).start()
    try:
        # Another process reads it back as one of the members (the reader is pid 1 here, a stand-in).
        read = ProcessEvidence.from_json(evidence_path(tmp_path, os.getpid()).read_text())
        assert read.surfaces["home"].guardrail == guardrail.share()
        members = read_members(tmp_path, _evidence(1, 3))
        assert [(m.label, m.own) for m in members] == [("pid 1", True), (f"pid {os.getpid()}", False)]
        assert FleetRollout("home", 2, CONFIG, tuple(members)).shadow().decisions == 10
    finally:
        publisher.stop()
    assert not evidence_path(tmp_path, os.getpid()).exists()


def test_files_of_dead_or_stuck_processes_are_ignored(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    directory = evidence_path(tmp_path, dead_pid).parent
    directory.mkdir(parents=True)
    body = _evidence(dead_pid, 5).body()
    evidence_path(tmp_path, dead_pid).write_text(json.dumps(body | {"as_of_unix": time.time()}))
    stuck_pid = os.getppid()  # alive (pytest's parent), but its snapshot is old
    old = _evidence(stuck_pid, 9).body() | {"as_of_unix": time.time() - 60}
    evidence_path(tmp_path, stuck_pid).write_text(json.dumps(old))
    members = read_members(tmp_path, _evidence(1, 3))
    assert [m.label for m in members] == ["pid 1"]
    # With workers.json naming both as workers, the stuck one is a member without evidence, named.
    (tmp_path / "run" / "workers.json").write_text(json.dumps(
        {"workers": 2, "pids": {"0": 1, "1": stuck_pid}, "parent_pid": os.getpid(), "stopping": False}))
    members = read_members(tmp_path, _evidence(1, 3))
    assert [(m.label, m.own, m.problem.split(" ")[0]) for m in members] == [("worker-0", True, ""),
                                                                            ("worker-1", False, "evidence")]
