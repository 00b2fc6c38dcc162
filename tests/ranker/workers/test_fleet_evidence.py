"""A real ``recsys-rl serve --workers 2``: rollout evidence is the fleet's, whichever worker takes the admin call.

Traffic is pinned to each worker (one connection each). GetRollout through several fresh admin connections shows the
same shadow totals, equal to the shadow decisions logged in both workers' streams; shadow → canary is judged on the
fleet's total (accepted once the sum reaches min_decisions although neither worker alone has them); canary → live
needs every worker's own guardrail to pass, and the refusal names the worker that has not.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from logging_schema.reader import read_log
from recsys_rl.caps.devcerts import AdminCredentials
from recsys_rl.caps.gate import FAILED_CHECKS_METADATA
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb
from recsys_rl.cli import main
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from tests.helpers import OPERATOR, make_request
from tests.ranker.workers.conftest import Fleet, admin_stub, poll, start_with_admin, worker_of

MIN_DECISIONS = 20


def _config(stage: str) -> str:
    return f"""
[surfaces.default]
exploration_cap = 0.2
decision_budget_ms = 60000
[surfaces.default.reward]
attribution_window_seconds = 0.2
[surfaces.default.model]
learn = false
[surfaces.default.rollout]
stage = "{stage}"
canary_share = 0.5
min_decisions = {MIN_DECISIONS}
"""


def _get(address: str, credentials: AdminCredentials) -> admin_pb.GetRolloutResponse:
    """GetRollout on a fresh connection (the kernel picks the worker that answers)."""
    return admin_stub(address, credentials).GetRollout(admin_pb.GetRolloutRequest(surface="default"), timeout=10)


def _set(address: str, credentials: AdminCredentials, stage: int) -> admin_pb.SetRolloutResponse:
    return admin_stub(address, credentials).SetRollout(
        admin_pb.SetRolloutRequest(surface="default", stage=stage, reason="fleet evidence test"), timeout=10)


def _refused_checks(call: Callable[[], object]) -> list[str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
    return json.loads(dict(refused.value.trailing_metadata())[FAILED_CHECKS_METADATA])


def _logged_shadow_decisions(fleet: Fleet) -> Counter[str]:
    """Shadow decisions in the log, by stream (worker-K): what both workers served with a shadow."""
    counts: Counter[str] = Counter()
    for index in (0, 1):
        counts[f"worker-{index}"] = sum(e.HasField("shadow") for e in
                                        read_log(fleet.data_dir / "logs" / f"worker-{index}").decisions)
    return counts


def test_shadow_evidence_is_the_fleets_through_any_worker(serve_workers, tmp_path: Path,
                                                          admin_credentials: AdminCredentials) -> None:
    fleet, address = start_with_admin(serve_workers, tmp_path, admin_credentials, _config("baseline"))
    pinned = {k: fleet.stub(v[0]) for k, v in fleet.stubs_by_worker(1).items()}
    _set(address, admin_credentials, admin_pb.ROLLOUT_STAGE_SHADOW)
    shadow: Counter[str] = Counter()  # shadow decisions served, by worker

    def top_up(per_worker: int) -> None:
        for worker, stub in pinned.items():
            while shadow[f"worker-{worker}"] < per_worker:  # the first Ranks may predate the adopted stage
                response, call = stub.Rank.with_call(
                    make_request(request_id=f"s{worker}-{sum(shadow.values())}"), timeout=10)
                assert worker_of(call) == worker
                shadow[f"worker-{worker}"] += response.serving_mode == pb.SERVING_MODE_SHADOW

    def views_agree(total: int) -> bool:
        """Eight GetRollouts on fresh connections (both workers, almost surely) show the same fleet totals."""
        views = set()
        for _ in range(8):
            reply = _get(address, admin_credentials)
            views.add((reply.shadow.decisions, tuple((w.worker, w.shadow.decisions) for w in reply.workers)))
        return views == {(total, tuple(sorted(shadow.items())))}

    top_up(8)  # 16 in all, fewer than MIN_DECISIONS
    poll(lambda: _logged_shadow_decisions(fleet) == shadow, timeout_s=20, what="both streams to log the decisions")
    poll(lambda: views_agree(16), timeout_s=10, what="every worker's GetRollout to show the fleet's 16 decisions")
    checks = _refused_checks(lambda: _set(address, admin_credentials, admin_pb.ROLLOUT_STAGE_CANARY))
    assert checks == [f"shadow_decisions: 16 of {MIN_DECISIONS} (worker-0 8, worker-1 8)"], checks
    # `rollout show`: the fleet's line, then one line per worker.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["rollout", "show", "--surface", "default", "--server", address,
                     *admin_credentials.client_args(OPERATOR)]) == 0
    lines = out.getvalue().splitlines()
    assert any(line.startswith("fleet shadow: 16 decisions") for line in lines), lines
    for worker in (0, 1):
        assert any(line.startswith(f"  worker-{worker} (pid ") and "shadow 8 decisions" in line
                   for line in lines), lines

    top_up(11)  # 22 in all: the fleet has MIN_DECISIONS, neither worker alone does
    poll(lambda: _logged_shadow_decisions(fleet) == shadow, timeout_s=20, what="both streams to log the decisions")
    assert max(shadow.values()) < MIN_DECISIONS <= sum(shadow.values())
    accepted = _set(address, admin_credentials, admin_pb.ROLLOUT_STAGE_CANARY)
    assert accepted.stage == admin_pb.ROLLOUT_STAGE_CANARY
    evidence = json.loads(accepted.change.evidence_json)
    assert evidence["estimates"]["shadow"]["decisions"] == 22
    assert {name: s["decisions"] for name, s in evidence["estimates"]["workers"].items()} == dict(shadow)


def test_a_forward_move_out_of_the_canary_needs_every_workers_guardrail(serve_workers, tmp_path: Path,
                                                                         admin_credentials: AdminCredentials) -> None:
    fleet, address = start_with_admin(serve_workers, tmp_path, admin_credentials, _config("canary"))
    pinned = {k: fleet.stub(v[0]) for k, v in fleet.stubs_by_worker(1).items()}
    sent = Counter[int]()

    def holds(worker: int) -> bool:
        """Sends 20 more decisions (users split by the canary hash) to ``worker``; True once its guardrail holds."""
        for _ in range(20):
            sent[worker] += 1
            pinned[worker].Rank(make_request(request_id=f"c{worker}-{sent[worker]}", user_id=f"u{sent[worker]}"),
                                timeout=10)
        found = {w.worker: w for w in _get(address, admin_credentials).workers}[f"worker-{worker}"]
        return found.status == "current" and found.guardrail.status == "holding"

    poll(lambda: holds(0), timeout_s=60, what="worker-0's guardrail to hold")
    checks = _refused_checks(lambda: _set(address, admin_credentials, admin_pb.ROLLOUT_STAGE_LIVE))
    decisions = [c for c in checks if c.startswith("canary_decisions:")]
    assert decisions and decisions[0].startswith("canary_decisions: not passed by worker-1: "), checks
    assert not any("worker-0:" in c or "by worker-0" in c for c in checks), checks  # worker-0's own checks passed

    poll(lambda: holds(1), timeout_s=60, what="worker-1's guardrail to hold")
    # The fleet line merges the snapshots each worker publishes on its own tick: poll (bounded) until both are in.
    reply = poll(lambda: (r := _get(address, admin_credentials)).guardrail.status == "holding" and r,
                 timeout_s=10, what="the fleet's guardrail line to hold")
    assert reply.guardrail.canary_decisions == sum(w.guardrail.canary_decisions for w in reply.workers)
    assert reply.guardrail.alpha == pytest.approx(2 * 0.05)  # the summary's bound: a union bound over 2 guardrails
    accepted = _set(address, admin_credentials, admin_pb.ROLLOUT_STAGE_LIVE)
    assert accepted.stage == admin_pb.ROLLOUT_STAGE_LIVE
    assert set(json.loads(accepted.change.evidence_json)["estimates"]["workers"]) == {"worker-0", "worker-1"}
