"""PolicyAdminService on a real server (127.0.0.1:0) over a data dir with simulated logs.

The server is the production RankingServer (RankingService + health + reflection on the Rank port) with its admin
listener (PolicyAdminService over TLS, callers verified by bearer token: ``conftest.admin_credentials``); the
tests call admin as the session's operator, whose identity every audit entry records.
The first start of a data dir records each surface's configured cap as an "initial configuration" audit entry;
``_changes`` leaves those out so the tests read the changes they make.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from ranker.server import RankingServer
from recsys_rl.errors import InvalidInput
from recsys_rl.caps.gate import FAILED_CHECKS_METADATA, load_key, run_gate, sign
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb
from recsys_rl.ranking.v1 import policy_admin_service_pb2_grpc as admin_grpc
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.serving.service import DecisionService
from recsys_rl.caps.devcerts import AdminCredentials
from tests.helpers import OPERATOR, admin_channel, admin_settings, make_request
from tests.recsys_rl.caps.test_gate import CONFIG, GATE, simulate_logs


@dataclass
class AdminServer:
    server: RankingServer
    service: DecisionService
    channel: grpc.Channel  # the Rank port
    admin_channel: grpc.Channel  # the admin listener, as OPERATOR
    admin: admin_grpc.PolicyAdminServiceStub
    ranking: pb_grpc.RankingServiceStub
    address: str  # the admin listener's

    def stop(self) -> None:
        self.channel.close()
        self.admin_channel.close()
        self.server.stop(grace_s=5)


@dataclass(frozen=True)
class Evidence:
    passing: str  # raise 0.1 → 0.15 under GATE
    worse: str  # raise 0.1 → 1.0: fails lower_bound and ess


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Evidence]:
    """Logs, a gate key and two reports; copies of this dir share the key and the log bytes."""
    data_dir = tmp_path_factory.mktemp("admin") / "data"
    simulate_logs(data_dir)
    passing = run_gate(data_dir, "default", 0.15, config=CONFIG, gate=GATE)
    worse = run_gate(data_dir, "default", 1.0, config=CONFIG, gate=GATE)
    assert passing["passed"] and not worse["passed"]
    return data_dir, Evidence(json.dumps(passing, indent=2), json.dumps(worse, indent=2))


@pytest.fixture
def evidence(base: tuple[Path, Evidence]) -> Evidence:
    return base[1]


@pytest.fixture
def start(base: tuple[Path, Evidence], tmp_path: Path,
          admin_credentials: AdminCredentials) -> Iterator[Callable[..., AdminServer]]:
    data_dir = tmp_path / "data"
    shutil.copytree(base[0], data_dir)
    started: list[AdminServer] = []

    def start_server() -> AdminServer:
        config = replace(CONFIG, surfaces={n: replace(s, gate=GATE) for n, s in CONFIG.surfaces.items()})
        service = DecisionService(config, data_dir, learner="off", watch_models=False)
        server = RankingServer(service, admin=admin_settings(admin_credentials)).start()
        assert server.port != 0 and server.admin_address is not None
        channel = grpc.insecure_channel(server.address)
        admin = admin_channel(server.admin_address, admin_credentials)
        running = AdminServer(server, service, channel, admin, admin_grpc.PolicyAdminServiceStub(admin),
                              pb_grpc.RankingServiceStub(channel), server.admin_address)
        started.append(running)
        return running

    yield start_server
    for running in started:
        running.stop()


def _set(running: AdminServer, cap: float, evidence: str = "", *, surface: str = "default",
         actor: str = "alice", reason: str = "test") -> admin_pb.SetExplorationCapResponse:
    request = admin_pb.SetExplorationCapRequest(surface=surface, cap=cap, evidence=evidence, actor=actor,
                                                reason=reason)
    return running.admin.SetExplorationCap(request, timeout=30)


def _refusal(running: AdminServer, cap: float, evidence: str = "", **kwargs: str) -> tuple[grpc.RpcError, set[str]]:
    with pytest.raises(grpc.RpcError) as error:
        _set(running, cap, evidence, **kwargs)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    metadata = dict(error.value.trailing_metadata())
    checks = {line.split(":")[0] for line in json.loads(metadata[FAILED_CHECKS_METADATA])}
    return error.value, checks


def _rank_cap(running: AdminServer, surface: str = "default") -> float:
    return running.ranking.Rank(make_request(surface=surface), timeout=10).exploration_cap


def _state(running: AdminServer, surface: str = "default") -> admin_pb.GetSurfaceResponse:
    return running.admin.GetSurface(admin_pb.GetSurfaceRequest(surface=surface), timeout=10)


def _changes(history) -> list:  # noqa: ANN001 - repeated CapChange
    return [h for h in history if h.reason != "initial configuration"]


def test_lowering_is_accepted_at_once_and_audited(start) -> None:
    running = start()
    assert _rank_cap(running) == pytest.approx(0.1)
    reply = _set(running, 0.05, reason="incident 42")
    assert (reply.old_cap, reply.exploration_cap) == (pytest.approx(0.1), pytest.approx(0.05))
    assert reply.change.outcome == admin_pb.CAP_CHANGE_OUTCOME_ACCEPTED
    assert _rank_cap(running) == pytest.approx(0.05)  # the very next Rank
    state = _state(running)
    assert state.exploration_cap == pytest.approx(0.05) and state.configured_cap == pytest.approx(0.1)
    assert state.policy_version == running.service.policy_version("default")
    [entry] = _changes(state.history)
    assert entry.sequence == reply.change.sequence
    # The verified caller is the actor; the typed "alice" is kept as a note.
    assert (entry.actor, entry.reason, entry.old_cap, entry.new_cap) == (
        OPERATOR, "on behalf of alice: incident 42", 0.1, 0.05)
    assert entry.evidence_digest == "" and entry.changed_at.seconds > 0
    assert _set(running, 0.0).exploration_cap == 0.0  # down to no exploration at all, still no evidence
    assert _rank_cap(running) == 0.0


def test_raising_without_evidence_is_refused_and_audited(start, evidence: Evidence) -> None:
    running = start()
    error, checks = _refusal(running, 0.15)
    assert checks == {"evidence"}
    assert "refused by the gate" in error.details() and "evidence:" in error.details()
    error, checks = _refusal(running, 1.0, evidence.worse)
    assert checks == {"lower_bound", "ess"}
    assert _rank_cap(running) == pytest.approx(0.1)
    history = _changes(_state(running).history)
    assert [h.outcome for h in history] == [admin_pb.CAP_CHANGE_OUTCOME_REFUSED] * 2
    assert history[1].evidence_digest == hashlib.sha256(evidence.worse.encode()).hexdigest()
    assert {line.split(":")[0] for line in history[1].failed_checks} == {"lower_bound", "ess"}


def test_raising_with_a_passing_report_is_accepted(start, evidence: Evidence) -> None:
    running = start()
    reply = _set(running, 0.15, evidence.passing, reason="gate passed")
    assert reply.exploration_cap == pytest.approx(0.15)
    assert reply.change.evidence_digest == hashlib.sha256(evidence.passing.encode()).hexdigest()
    assert _rank_cap(running) == pytest.approx(0.15)


def test_edited_foreign_surface_and_wrong_cap_reports_are_refused(start, evidence: Evidence) -> None:
    running = start()
    edited = json.loads(evidence.passing)
    edited["estimates"]["target"]["ci_low"] = 0.9
    assert _refusal(running, 0.15, json.dumps(edited))[1] == {"signature"}
    assert _refusal(running, 0.2, evidence.passing)[1] == {"cap"}
    assert _refusal(running, 0.15, evidence.passing, surface="other")[1] == {"surface"}
    stale = json.loads(evidence.passing)
    stale["created_unix"] -= 25 * 3600
    stale["signature"] = sign(stale, load_key(running.service.data_dir))  # type: ignore[arg-type]
    assert _refusal(running, 0.15, json.dumps(stale))[1] == {"recency"}
    assert _rank_cap(running) == pytest.approx(0.1) and _rank_cap(running, "other") == pytest.approx(0.1)
    assert len(_changes(_state(running).history)) == 3 and len(_changes(_state(running, "other").history)) == 1


@pytest.mark.parametrize(("cap", "surface", "actor", "field"), [
    (math.nan, "default", "alice", "cap"), (1.5, "default", "alice", "cap"), (-0.1, "default", "alice", "cap"),
    (None, "default", "alice", "cap"), (0.05, "nope", "alice", "surface"), (0.05, "", "alice", "surface"),
    (0.05, "default", "x" * 201, "actor"),
])
def test_bad_requests_are_invalid_argument_naming_the_field(start, cap: float | None, surface: str, actor: str,
                                                           field: str) -> None:
    running = start()
    request = admin_pb.SetExplorationCapRequest(surface=surface, actor=actor)
    if cap is not None:
        request.cap = cap
    with pytest.raises(grpc.RpcError) as error:
        running.admin.SetExplorationCap(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}: ")
    assert len(_changes(_state(running).history)) == 0  # malformed requests change and audit nothing


def test_a_report_against_another_cap_in_force_is_refused(start, evidence: Evidence) -> None:
    running = start()
    _set(running, 0.05)  # lowered after the report was made: it compared 0.15 with 0.1, not with 0.05
    assert _refusal(running, 0.15, evidence.passing)[1] == {"current_cap"}
    assert _rank_cap(running) == pytest.approx(0.05)


def test_a_report_against_a_cap_another_worker_changed_is_refused(start, evidence: Evidence) -> None:
    """Another process on the data dir lowers the cap; this server (no watcher tick) judges the raise against the
    disk under the admin lock, not against the 0.1 it last saw, and audits the old cap that was really in force."""
    from tests.ranker.test_shared_state import stand_ins

    running = start()
    with stand_ins(running.service.data_dir, "bob") as (bob,):
        bob.call("cap", surface="default", cap=0.05)
    assert _refusal(running, 0.15, evidence.passing)[1] == {"current_cap"}
    refused = _changes(_state(running).history)[-1]
    assert (refused.old_cap, refused.outcome) == (pytest.approx(0.05), admin_pb.CAP_CHANGE_OUTCOME_REFUSED)
    assert _rank_cap(running) == pytest.approx(0.05)


def test_cap_and_audit_survive_a_restart(start, evidence: Evidence) -> None:
    running = start()
    _set(running, 0.15, evidence.passing)
    _set(running, 0.07)
    _refusal(running, 0.5)
    running.stop()
    restarted = start()
    state = _state(restarted)
    assert state.exploration_cap == pytest.approx(0.07)
    changes = _changes(state.history)
    assert [(h.new_cap, h.outcome) for h in changes] == [
        (0.15, admin_pb.CAP_CHANGE_OUTCOME_ACCEPTED), (0.07, admin_pb.CAP_CHANGE_OUTCOME_ACCEPTED),
        (0.5, admin_pb.CAP_CHANGE_OUTCOME_REFUSED)]
    assert [h.sequence for h in changes] == sorted(h.sequence for h in changes)
    assert _rank_cap(restarted) == pytest.approx(0.07)
    limited = restarted.admin.GetSurface(admin_pb.GetSurfaceRequest(surface="default", history_limit=1), timeout=10)
    assert [h.sequence for h in limited.history] == [changes[-1].sequence]


def _cli(argv: list[str]) -> int:
    from recsys_rl.caps.cli import register

    parser = argparse.ArgumentParser(prog="recsys-rl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


def test_caps_cli_set_and_show(start, evidence: Evidence, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              admin_credentials: AdminCredentials) -> None:
    running = start()
    server = ["--server", running.address, "--surface", "default", *admin_credentials.client_args(OPERATOR)]
    assert _cli(["caps", "set", *server, "--cap", "0.3", "--actor", "bob"]) == 3
    err = capsys.readouterr().err
    assert "refused" in err and "failed check evidence:" in err
    report = tmp_path / "report.json"
    report.write_text(evidence.passing)
    assert _cli(["caps", "set", *server, "--cap", "0.15", "--evidence", str(report), "--actor", "bob",
                 "--reason", "gate passed"]) == 0
    assert "0.1 -> 0.15" in capsys.readouterr().out
    assert _cli(["caps", "set", *server, "--cap", "0.05", "--actor", "carol"]) == 0
    assert _rank_cap(running) == pytest.approx(0.05)

    assert _cli(["caps", "show", *server]) == 0
    out = capsys.readouterr().out
    assert "exploration cap 0.05 in force" in out and "refused" in out
    assert f"by {OPERATOR}: on behalf of bob" in out and f"by {OPERATOR}: on behalf of carol" in out
    assert _cli(["caps", "show", *server, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["exploration_cap"] == pytest.approx(0.05)
    changes = [h for h in shown["history"] if h["reason"] != "initial configuration"]
    assert [h["outcome"] for h in changes] == ["refused", "accepted", "accepted"]

    with pytest.raises(InvalidInput, match="--evidence"):
        _cli(["caps", "set", *server, "--cap", "0.2", "--evidence", str(tmp_path / "missing.json"), "--actor", "x"])
    with pytest.raises(InvalidInput, match="surface"):
        _cli(["caps", "show", *server, "--surface", "nope"])
    with pytest.raises(InvalidInput, match="--server"):
        _cli(["caps", "show", "--server", "nohostport"])
    with pytest.raises(SystemExit):  # argparse: a cap outside [0, 1] is bad usage
        _cli(["caps", "set", *server, "--cap", "1.5"])
