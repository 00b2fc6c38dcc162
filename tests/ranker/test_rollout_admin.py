"""GetRollout/SetRollout and ``recsys-rl rollout show|set`` on a real server (127.0.0.1:0).

``DecisionService.rollout_evidence`` judges forward moves (baseline → shadow always; shadow → canary on the shadow's
statistics; out of the canary on the guardrail); tests that need a particular verdict give the service a simple
evidence function.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from ranker.server import RankingServer
from recsys_rl.caps.gate import FAILED_CHECKS_METADATA
from recsys_rl.cli import main
from recsys_rl.config import ServiceConfig, default_config
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb
from recsys_rl.ranking.v1 import policy_admin_service_pb2_grpc as admin_grpc
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.rollout.config import RolloutConfig, Stage
from recsys_rl.rollout.store import GuardrailEvidence
from recsys_rl.serving.service import DecisionService
from tests.conftest import REPO
from recsys_rl.caps.devcerts import AdminCredentials
from tests.helpers import OPERATOR, admin_channel, admin_settings, make_request

CONFIG = ServiceConfig(surfaces={name: replace(s, rollout=RolloutConfig(stage="canary", canary_share=0.05))
                                 for name, s in default_config().surfaces.items()})


@dataclass
class AdminServer:
    server: RankingServer
    service: DecisionService
    channel: grpc.Channel  # the Rank port
    admin_channel: grpc.Channel  # the admin listener, as OPERATOR
    admin: admin_grpc.PolicyAdminServiceStub
    address: str  # the admin listener's
    credentials: list[str]  # the CLI's --ca and --token-file as OPERATOR

    def stop(self) -> None:
        self.channel.close()
        self.admin_channel.close()
        self.server.stop(grace_s=5)


@pytest.fixture
def start(tmp_path: Path, admin_credentials: AdminCredentials) -> Iterator[Callable[..., AdminServer]]:
    started: list[AdminServer] = []

    def start_server(config: ServiceConfig = CONFIG) -> AdminServer:
        service = DecisionService(config, tmp_path / "data", learner="off", watch_models=False)
        server = RankingServer(service, host="127.0.0.1", port=0, admin=admin_settings(admin_credentials)).start()
        assert server.port != 0 and server.admin_address is not None
        channel = grpc.insecure_channel(server.address)
        admin = admin_channel(server.admin_address, admin_credentials)
        running = AdminServer(server, service, channel, admin, admin_grpc.PolicyAdminServiceStub(admin),
                              server.admin_address, admin_credentials.client_args(OPERATOR))
        started.append(running)
        return running

    yield start_server
    for running in started:
        running.stop()


def _get(running: AdminServer, surface: str = "default") -> admin_pb.GetRolloutResponse:
    return running.admin.GetRollout(admin_pb.GetRolloutRequest(surface=surface), timeout=10)


def _set(running: AdminServer, stage: int = 0, share: float | None = None, *, surface: str = "default",
         actor: str = "alice", reason: str = "test") -> admin_pb.SetRolloutResponse:
    request = admin_pb.SetRolloutRequest(surface=surface, stage=stage, actor=actor, reason=reason)  # type: ignore[arg-type]
    if share is not None:
        request.canary_share = share
    return running.admin.SetRollout(request, timeout=10)


def test_get_rollout_reports_the_state_and_the_initial_audit_entry(start) -> None:
    running = start()
    reply = _get(running)
    assert (reply.stage, reply.canary_share, reply.reverted) == (admin_pb.ROLLOUT_STAGE_CANARY, 0.05, False)
    (initial,) = reply.history
    assert initial.reason == "initial configuration" and initial.actor == "recsys-rl serve"
    assert initial.outcome == admin_pb.CAP_CHANGE_OUTCOME_ACCEPTED and initial.changed_at.seconds > 0
    assert reply.guardrail == admin_pb.GuardrailState() and reply.shadow == admin_pb.ShadowStats()  # no hooks yet
    with pytest.raises(grpc.RpcError) as error:
        running.admin.GetRollout(admin_pb.GetRolloutRequest(surface="default", history_limit=-1), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("history_limit: ")


def test_backward_is_accepted_forward_is_refused_without_evidence_and_both_are_audited(start) -> None:
    running = start()
    reply = _set(running, admin_pb.ROLLOUT_STAGE_CANARY, 0.01, reason="smaller canary")
    assert (reply.stage, reply.canary_share) == (admin_pb.ROLLOUT_STAGE_CANARY, 0.01)
    assert reply.change.old_canary_share == 0.05 and reply.change.sequence == 2 and not reply.change.automatic
    assert running.service.rollout_state("default").canary_share == 0.01  # in force at once

    with pytest.raises(grpc.RpcError) as error:
        _set(running, admin_pb.ROLLOUT_STAGE_LIVE)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "refused by the guardrail" in error.value.details()
    checks = json.loads(dict(error.value.trailing_metadata())[FAILED_CHECKS_METADATA])
    assert checks == ["guardrail: no guardrail evidence is available for this surface"]
    assert running.service.rollout_state("default").stage is Stage.CANARY

    history = _get(running).history
    assert [(h.new_stage, h.outcome) for h in history[1:]] == [
        (admin_pb.ROLLOUT_STAGE_CANARY, admin_pb.CAP_CHANGE_OUTCOME_ACCEPTED),
        (admin_pb.ROLLOUT_STAGE_LIVE, admin_pb.CAP_CHANGE_OUTCOME_REFUSED)]
    assert list(history[2].failed_checks) == checks and history[2].actor == OPERATOR
    assert running.admin.GetRollout(admin_pb.GetRolloutRequest(surface="default", history_limit=1),
                                    timeout=10).history[0].sequence == 3
    # Hosts keep getting slates whatever the rollout does.
    assert len(pb_grpc.RankingServiceStub(running.channel).Rank(make_request(), timeout=10).slate) == 5


def test_a_forward_move_with_passing_evidence_is_accepted_with_the_evidence_recorded(start) -> None:
    running = start()
    asked: list[tuple[str, Stage, float]] = []

    def evidence(surface: str, stage: Stage, share: float) -> GuardrailEvidence:
        asked.append((surface, stage, share))
        return GuardrailEvidence([("canary_decisions", True, "800 >= 500")], {"canary_decisions": 800})

    running.service.rollout_evidence = evidence  # type: ignore[method-assign]
    reply = _set(running, share=0.25, reason="ramp")  # stage unspecified: keep canary
    assert (reply.stage, reply.canary_share) == (admin_pb.ROLLOUT_STAGE_CANARY, 0.25)
    assert asked == [("default", Stage.CANARY, 0.25)]
    assert json.loads(reply.change.evidence_json)["estimates"] == {"canary_decisions": 800}


def test_the_stage_survives_a_restart_and_the_config_cannot_move_it_forward(start) -> None:
    first = start()
    _set(first, admin_pb.ROLLOUT_STAGE_SHADOW, reason="pause")
    first.stop()
    second = start()  # the configuration did not change: the paused stage stands
    assert _get(second).stage == admin_pb.ROLLOUT_STAGE_SHADOW and len(_get(second).history) == 2
    second.stop()
    live = ServiceConfig(surfaces={n: replace(s, rollout=RolloutConfig(stage="live")) for n, s in CONFIG.surfaces.items()})
    for _ in range(2):  # a configuration moved forward: refused (audited once), not applied
        restarted = start(live)
        reply = _get(restarted)
        restarted.stop()
        assert reply.stage == admin_pb.ROLLOUT_STAGE_SHADOW and len(reply.history) == 3
    refused = reply.history[-1]
    assert (refused.actor, refused.outcome, refused.new_stage) == (
        "recsys-rl serve (configuration)", admin_pb.CAP_CHANGE_OUTCOME_REFUSED, admin_pb.ROLLOUT_STAGE_LIVE)


@pytest.mark.parametrize(("surface", "stage", "share", "actor", "field"), [
    ("nope", admin_pb.ROLLOUT_STAGE_BASELINE, None, "a", "surface"),
    ("", admin_pb.ROLLOUT_STAGE_BASELINE, None, "a", "surface"),
    ("default", 99, None, "a", "stage"),
    ("default", 0, None, "a", "stage"),
    ("default", admin_pb.ROLLOUT_STAGE_CANARY, 1.5, "a", "canary_share"),
    ("default", admin_pb.ROLLOUT_STAGE_CANARY, math.nan, "a", "canary_share"),
    ("default", admin_pb.ROLLOUT_STAGE_BASELINE, None, "x" * 201, "actor"),
])
def test_bad_set_requests_are_invalid_argument_naming_the_field(start, surface: str, stage: int, share: float | None,
                                                                 actor: str, field: str) -> None:
    running = start()
    with pytest.raises(grpc.RpcError) as error:
        _set(running, stage, share, surface=surface, actor=actor)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}: ")
    assert len(_get(running).history) == 1  # nothing malformed is audited


def test_cli_show_json_shape_set_and_bad_usage(start, capsys: pytest.CaptureFixture[str]) -> None:
    running = start()
    server = ["--server", running.address, "--surface", "default", *running.credentials]
    assert main(["rollout", "set", *server, "--stage", "shadow", "--actor", "bob", "--reason", "pause"]) == 0
    assert "canary 0.05 -> shadow 0.05 (audit #2)" in capsys.readouterr().out
    assert main(["rollout", "show", *server, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {"stage", "canary_share", "reverted", "guardrail", "shadow", "history"} <= set(shown)
    assert (shown["stage"], shown["canary_share"], shown["reverted"]) == ("shadow", 0.05, False)
    assert {"canary_mean_reward", "control_mean_reward", "difference_low", "difference_high", "status"} <= set(
        shown["guardrail"])
    assert {"decisions", "top1_match", "overlap_at_k", "added_latency_p50_ms", "fallback_rate"} <= set(shown["shadow"])
    last = shown["history"][-1]
    assert (last["old_stage"], last["new_stage"], last["actor"], last["outcome"], last["automatic"]) == (
        "canary", "shadow", OPERATOR, "accepted", False)
    assert main(["rollout", "show", *server]) == 0
    out = capsys.readouterr().out
    assert "stage shadow, canary share 0.05" in out and f"by {OPERATOR}: on behalf of bob: pause" in out

    assert main(["rollout", "set", *server]) == 2
    assert capsys.readouterr().err.strip() == "--stage: give --stage, --canary-share, or both"
    assert main(["rollout", "set", *server, "--canary-share", "2", "--actor", "x"]) == 2
    assert "--canary-share" in capsys.readouterr().err
    assert main(["rollout", "set", *server, "--stage", "paused", "--actor", "x"]) == 2
    assert main(["rollout", "show", *server, "--surface", "nope"]) == 2
    assert "surface: unknown surface 'nope'" in capsys.readouterr().err


def test_cli_refused_forward_move_exits_3_with_the_failed_checks(start) -> None:
    running = start()
    done = subprocess.run(
        [sys.executable, "-m", "recsys_rl.cli", "rollout", "set", "--server", running.address, *running.credentials,
         "--surface", "default", "--stage", "live", "--actor", "dave", "--reason", "go live"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "failed check guardrail: no guardrail evidence is available" in done.stderr
    assert _get(running).stage == admin_pb.ROLLOUT_STAGE_CANARY


def test_the_stages_in_order_on_the_services_own_evidence(start) -> None:
    """baseline → canary is refused (no evidence skips the shadow); baseline → shadow is accepted; shadow → canary is
    refused until min_decisions shadow decisions, then accepted; canary → live needs the guardrail's decisions."""
    # A generous decision budget: on a loaded machine a Rank past the default budget serves the baseline without a
    # shadow draw, and this test counts shadow decisions.
    config = ServiceConfig(surfaces={name: replace(s, rollout=RolloutConfig(stage="baseline", min_decisions=20),
                                                   decision_budget_ms=60_000)
                                     for name, s in default_config().surfaces.items()})
    running = start(config)
    with pytest.raises(grpc.RpcError) as refused:
        _set(running, admin_pb.ROLLOUT_STAGE_CANARY, 0.5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _set(running, admin_pb.ROLLOUT_STAGE_SHADOW).stage == admin_pb.ROLLOUT_STAGE_SHADOW
    with pytest.raises(grpc.RpcError) as early:
        _set(running, admin_pb.ROLLOUT_STAGE_CANARY, 0.5)
    assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "shadow_decisions" in early.value.details()
    stub = pb_grpc.RankingServiceStub(running.channel)
    for i in range(20):
        stub.Rank(make_request(request_id=f"s{i}", user_id=f"u{i}"), timeout=10)
    assert _get(running).shadow.decisions == 20
    assert _set(running, admin_pb.ROLLOUT_STAGE_CANARY, 0.5).stage == admin_pb.ROLLOUT_STAGE_CANARY
    with pytest.raises(grpc.RpcError) as no_guardrail_yet:
        _set(running, admin_pb.ROLLOUT_STAGE_LIVE)
    assert no_guardrail_yet.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_cli_show_with_the_data_dir_estimates_the_learned_policy_with_verdicts(
        start, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rollout show --data-dir`: the learned policy's value replayed from the shadow's logs, with auto intervals and
    verdicts (on 60 baseline-served decisions: a wide finite-sample interval)."""
    config = ServiceConfig(surfaces={name: replace(s, rollout=RolloutConfig(stage="shadow"))
                                     for name, s in default_config().surfaces.items()})
    running = start(config)
    stub = pb_grpc.RankingServiceStub(running.channel)
    for i in range(60):
        stub.Rank(make_request(request_id=f"c{i}", user_id=f"u{i}"), timeout=10)
    assert running.service.writer.flush(timeout=10)
    server = ["--server", running.address, "--surface", "default", *running.credentials]
    assert main(["rollout", "show", *server, "--format", "json", "--data-dir", str(tmp_path / "data")]) == 0
    rows = json.loads(capsys.readouterr().out)["counterfactual"]
    assert [r["estimator"] for r in rows] == ["standard_ips", "rips"]
    for row in rows:  # few decisions: auto bounds with the finite-sample betting interval, and a verdict is given
        assert row["ci_method"] == "betting" and row["ci_low"] <= row["value"] <= row["ci_high"]
        assert row["verdict"] in ("ok", "unreliable") and isinstance(row["reasons"], list)
    assert main(["rollout", "show", *server, "--data-dir", str(tmp_path / "data")]) == 0
    assert "learned policy (replay current) standard_ips" in capsys.readouterr().out
    assert main(["rollout", "show", *server, "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "data_dir" in capsys.readouterr().err
