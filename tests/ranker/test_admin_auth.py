"""The admin listener: TLS, callers verified by bearer token, roles, and the verified identity in every audit trail.

Real servers on 127.0.0.1:0 with real certificates (``conftest.admin_credentials``, made by openssl once per
session); the Rank port beside them no longer serves PolicyAdminService.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ranker.admin_auth import ADMIN_SERVICE
from recsys_rl.caps.devcerts import AdminCredentials
from recsys_rl.cli import main
from recsys_rl.config import default_config
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb
from recsys_rl.ranking.v1 import policy_admin_service_pb2_grpc as admin_grpc
from tests.conftest import REPO, RunningServer
from tests.helpers import OPERATOR, VIEWER, admin_channel, make_request

CONFIG = default_config()


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details() or ""


def _stub(running: RunningServer, credentials: AdminCredentials, identity: str | None
          ) -> tuple[grpc.Channel, admin_grpc.PolicyAdminServiceStub]:
    channel = admin_channel(running.admin_address, credentials, identity)
    return channel, admin_grpc.PolicyAdminServiceStub(channel)


def _set_cap(stub: admin_grpc.PolicyAdminServiceStub, cap: float,
             actor: str = "") -> admin_pb.SetExplorationCapResponse:
    return stub.SetExplorationCap(admin_pb.SetExplorationCapRequest(surface="default", cap=cap, actor=actor,
                                                                    reason="test"), timeout=10)


def test_no_or_unknown_token_is_unauthenticated_and_a_viewer_may_only_read(
        start_server, admin_credentials: AdminCredentials, impostor_credentials: AdminCredentials) -> None:
    running = start_server(CONFIG, learner="off")
    anonymous, anonymous_stub = _stub(running, admin_credentials, None)
    code, details = _code(lambda: anonymous_stub.GetSurface(admin_pb.GetSurfaceRequest(surface="default"), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "no admin credential" in details
    assert _code(lambda: _set_cap(anonymous_stub, 0.05))[0] == grpc.StatusCode.UNAUTHENTICATED
    # A well-formed token this server never issued (the impostor deployment's): unknown, whoever it claims to be.
    forged = admin_channel(running.admin_address, admin_credentials, None)
    forged_stub = admin_grpc.PolicyAdminServiceStub(grpc.intercept_channel(forged, _BearerOf(
        impostor_credentials.tokens[OPERATOR].read_text().strip())))
    code, details = _code(lambda: _set_cap(forged_stub, 0.05))
    assert code == grpc.StatusCode.UNAUTHENTICATED and details == "unknown or revoked admin token"

    viewer, viewer_stub = _stub(running, admin_credentials, VIEWER)
    assert viewer_stub.GetSurface(admin_pb.GetSurfaceRequest(surface="default"), timeout=10).exploration_cap == 0.1
    viewer_stub.GetRollout(admin_pb.GetRolloutRequest(surface="default"), timeout=10)
    viewer_stub.GetShield(admin_pb.GetShieldRequest(surface="default"), timeout=10)
    code, details = _code(lambda: _set_cap(viewer_stub, 0.05))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details.startswith(f"{VIEWER} (role viewer) may not call SetExplorationCap")
    assert _code(lambda: viewer_stub.SetRollout(admin_pb.SetRolloutRequest(
        surface="default", stage=admin_pb.ROLLOUT_STAGE_BASELINE), timeout=10))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: viewer_stub.SetShield(admin_pb.SetShieldRequest(
        surface="default", block_items=["x"]), timeout=10))[0] == grpc.StatusCode.PERMISSION_DENIED
    # Refused calls changed and audited nothing; the operator's call still works.
    assert running.server.service.cap("default") == pytest.approx(0.1)
    history = running.admin.GetSurface(admin_pb.GetSurfaceRequest(surface="default"), timeout=10).history
    assert [h.reason for h in history] == ["initial configuration"]
    for channel in (anonymous, forged, viewer):
        channel.close()


class _BearerOf(grpc.UnaryUnaryClientInterceptor):
    """Sends ``token`` as the bearer token: a caller presenting a token by hand, as any gRPC client could."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201 - gRPC's signature
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.token}")]
        return continuation(details._replace(metadata=metadata), request)


def test_a_client_that_does_not_trust_the_server_certificate_never_sends_its_token(
        start_server, impostor_credentials: AdminCredentials) -> None:
    """TLS authenticates the server: trusting another CA (here: the impostor's) fails the handshake (UNAVAILABLE)
    before any metadata - the token - leaves the client."""
    running = start_server(CONFIG, learner="off")
    channel, stub = _stub(running, impostor_credentials, OPERATOR)
    code, _ = _code(lambda: stub.GetSurface(admin_pb.GetSurfaceRequest(surface="default"), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_every_audit_trail_records_the_verified_identity_not_the_typed_actor(start_server) -> None:
    running = start_server(CONFIG, learner="off")
    admin = running.admin
    cap = _set_cap(admin, 0.05, actor="mallory")  # the typed actor claims someone else
    assert (cap.change.actor, cap.change.reason) == (OPERATOR, "on behalf of mallory: test")
    rollout = admin.SetRollout(admin_pb.SetRolloutRequest(surface="default", stage=admin_pb.ROLLOUT_STAGE_BASELINE,
                                                          actor="mallory", reason="pause"), timeout=10)
    assert (rollout.change.actor, rollout.change.reason) == (OPERATOR, "on behalf of mallory: pause")
    shield = admin.SetShield(admin_pb.SetShieldRequest(surface="default", block_items=["item-1"], reason="takedown"),
                             timeout=10)
    assert (shield.change.actor, shield.change.reason) == (OPERATOR, "takedown")  # no typed actor: no note
    # The same on disk, read back through each Get*.
    [cap_entry] = [h for h in admin.GetSurface(admin_pb.GetSurfaceRequest(surface="default"), timeout=10).history
                   if h.reason != "initial configuration"]
    rollout_history = admin.GetRollout(admin_pb.GetRolloutRequest(surface="default"), timeout=10).history
    shield_history = admin.GetShield(admin_pb.GetShieldRequest(surface="default"), timeout=10).history
    assert cap_entry.actor == rollout_history[-1].actor == shield_history[-1].actor == OPERATOR


def test_the_rank_port_does_not_serve_admin_and_rank_is_unchanged(start_server) -> None:
    running = start_server(CONFIG, learner="off")
    over_rank_port = admin_grpc.PolicyAdminServiceStub(running.channel)
    assert _code(lambda: _set_cap(over_rank_port, 0.0))[0] == grpc.StatusCode.UNIMPLEMENTED
    assert _code(lambda: over_rank_port.GetSurface(admin_pb.GetSurfaceRequest(surface="default"),
                                                   timeout=10))[0] == grpc.StatusCode.UNIMPLEMENTED
    response = running.stub.Rank(make_request(), timeout=10)
    assert len(response.slate) == 5 and response.exploration_cap == pytest.approx(0.1)
    rank_health = health_pb2_grpc.HealthStub(running.channel)
    assert _code(lambda: rank_health.Check(health_pb2.HealthCheckRequest(service=ADMIN_SERVICE),
                                           timeout=10))[0] == grpc.StatusCode.NOT_FOUND
    admin_health = health_pb2_grpc.HealthStub(running.admin_channel)
    assert admin_health.Check(health_pb2.HealthCheckRequest(service=ADMIN_SERVICE),
                              timeout=10).status == health_pb2.HealthCheckResponse.SERVING


def test_the_authorization_file_is_reread_revocation_works_and_a_broken_file_fails_closed(
        start_server, admin_credentials: AdminCredentials, tmp_path: Path) -> None:
    from ranker.admin_auth import AdminSettings, AuthzFile

    authz = tmp_path / "authz.toml"
    shutil.copy(admin_credentials.authz, authz)
    gate = AuthzFile(authz)
    viewer_hash = next(h for h, grant in gate.grants().items() if grant.identity == VIEWER)  # type: ignore[union-attr]
    settings = AdminSettings(port=0, tls_cert=admin_credentials.server_cert, tls_key=admin_credentials.server_key,
                             authz=authz)
    from ranker.server import RankingServer
    from recsys_rl.serving.service import DecisionService

    server = RankingServer(DecisionService(CONFIG, tmp_path / "data", learner="off"), admin=settings).start()
    try:
        channel = admin_channel(server.admin_address, admin_credentials, VIEWER)
        stub = admin_grpc.PolicyAdminServiceStub(channel)
        stub.GetSurface(admin_pb.GetSurfaceRequest(surface="default"), timeout=10)
        # Revoke the viewer: rewrite the file without its hash (replaced atomically, as an editor or config tool does).
        kept = "\n".join(line for line in authz.read_text().splitlines()
                         if viewer_hash not in line and VIEWER not in line and "viewer" not in line)
        (tmp_path / "next.toml").write_text(kept)
        (tmp_path / "next.toml").replace(authz)
        code, details = _code(lambda: stub.GetSurface(admin_pb.GetSurfaceRequest(surface="default"), timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details
        (tmp_path / "next.toml").write_text("[identities.x]\nrole = 'root'\n")
        (tmp_path / "next.toml").replace(authz)
        operator = admin_channel(server.admin_address, admin_credentials, OPERATOR)
        code, details = _code(lambda: admin_grpc.PolicyAdminServiceStub(operator).GetSurface(
            admin_pb.GetSurfaceRequest(surface="default"), timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE and "authorization file is invalid" in details
        for opened in (channel, operator):
            opened.close()
    finally:
        server.stop(grace_s=5)


def _cli(*argv: str) -> int:
    return main(list(argv))


def test_cli_credentials(start_server, admin_credentials: AdminCredentials, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    running = start_server(CONFIG, learner="off")
    server = ["--server", running.admin_address, "--ca", str(admin_credentials.ca)]
    operator = ["--token-file", str(admin_credentials.tokens[OPERATOR])]
    viewer = ["--token-file", str(admin_credentials.tokens[VIEWER])]
    assert _cli("caps", "show", *server) == 1  # no token
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "UNAUTHENTICATED: no admin credential" in err
    assert _cli("rollout", "set", *server, *viewer, "--stage", "baseline") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"PERMISSION_DENIED: {VIEWER} (role viewer) may not call SetRollout" in err
    assert _cli("shield", "show", *server, *viewer) == 0
    assert _cli("caps", "set", *server, *operator, "--cap", "0.05", "--actor", "bob", "--reason", "incident") == 0
    assert _cli("caps", "show", *server, *viewer) == 0
    assert f"by {OPERATOR}: on behalf of bob: incident" in capsys.readouterr().out

    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    for argv, flag in ((["--ca", str(tmp_path / "missing.pem")], "--ca"), (["--ca", str(empty)], "--ca"),
                       (["--token-file", str(tmp_path / "missing")], "--token-file"), (["--token-file", str(empty)],
                                                                                       "--token-file")):
        assert _cli("caps", "show", "--server", running.admin_address, *argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"{flag}: "), err
    assert _cli("caps", "show", "--server", running.server.address, "--ca", str(admin_credentials.ca), *operator) == 1
    err = capsys.readouterr().err.strip()  # the Rank port speaks no TLS: one line, exit 1
    assert len(err.splitlines()) == 1 and "UNAVAILABLE" in err and "is --server the admin listener" in err


def _serve(*argv: str, data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir",
                             str(data_dir), *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_serve_prints_the_admin_address_and_refuses_bad_admin_flags(admin_credentials: AdminCredentials,
                                                                     tmp_path: Path) -> None:
    creds = admin_credentials
    bad_role = tmp_path / "bad.toml"
    bad_role.write_text('[identities.eve]\nrole = "root"\ntoken_sha256 = ["' + "0" * 64 + '"]\n')
    cases = [
        (["--admin-port", "0"], "--admin-tls-cert: required with --admin-port"),
        (["--admin-tls-cert", str(creds.server_cert)], "--admin-tls-cert: only with --admin-port"),
        (["--admin-port", "0", *creds.serve_args()[:4], "--admin-authz", str(bad_role)],
         "identities.eve.role: must be one of viewer, operator"),
        (["--admin-port", "0", "--admin-tls-cert", str(creds.server_cert), "--admin-tls-key", str(creds.ca),
          "--admin-authz", str(creds.authz)], "--admin-tls-key: "),
        (["--admin-port", "0", "--admin-tls-cert", str(creds.server_cert),
          "--admin-tls-key", str(creds.server_cert.parent / "ca.key"), "--admin-authz", str(creds.authz)],
         "--admin-tls-key: "),  # a real key, but not the certificate's
        (["--admin-port", "http", *creds.serve_args()], "--admin-port"),
    ]
    started = [(_serve(*argv, data_dir=tmp_path / f"d{i}"), expected) for i, (argv, expected) in enumerate(cases)]
    for process, expected in started:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 2 and out == "", (expected, err)
        assert len(err.strip().splitlines()) == 1 and expected in err, (expected, err)

    server = _serve("--admin-port", "0", *creds.serve_args(), data_dir=tmp_path / "ok")
    try:
        assert server.stdout is not None
        serving, admin = server.stdout.readline(), server.stdout.readline()
        assert serving.startswith("serving on 127.0.0.1:") and admin.startswith("admin on 127.0.0.1:"), (serving, admin)
        address = admin.split()[-1]
        assert address != serving.split()[-1]
        channel = admin_channel(address, creds)
        reply = admin_grpc.PolicyAdminServiceStub(channel).GetSurface(admin_pb.GetSurfaceRequest(surface="default"),
                                                                      timeout=30)
        assert reply.exploration_cap > 0
        channel.close()
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err


def test_without_admin_port_nothing_serves_admin(tmp_path: Path) -> None:
    server = _serve(data_dir=tmp_path)
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("serving on ")
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0 and "admin on" not in out
    assert "admin (PolicyAdminService) not served" in err


def test_the_servicer_mounted_without_the_interceptor_records_nothing(tmp_path: Path) -> None:
    """Defence in depth: PolicyAdminService added to a server without AdminAuthInterceptor (a wiring mistake) fails
    every change UNAUTHENTICATED instead of auditing an unverified actor."""
    from concurrent.futures import ThreadPoolExecutor

    from ranker.admin import add_admin_servicer
    from recsys_rl.serving.service import DecisionService

    service = DecisionService(CONFIG, tmp_path / "data", learner="off")
    server = grpc.server(ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 0)])
    add_admin_servicer(server, service, service.data_dir)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            code, details = _code(lambda: _set_cap(admin_grpc.PolicyAdminServiceStub(channel), 0.05, actor="mallory"))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "no verified caller" in details
        assert service.cap("default") == pytest.approx(0.1)
        assert [e.reason for e in service.caps.history("default", limit=0)] == ["initial configuration"]
    finally:
        server.stop(0).wait()
        service.close()
