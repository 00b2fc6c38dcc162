"""Admin access on the server: the admin listener's TLS settings and the one interceptor that decides who may
call PolicyAdminService.

Every admin RPC passes ``AdminAuthInterceptor`` first: no or unknown bearer token -> UNAUTHENTICATED, a known
identity whose role lacks the method -> PERMISSION_DENIED, otherwise the handler runs with the verified caller
in a context variable (``verified_caller``), which the servicer records as the audit actor. The token format and
the authorization file are ``recsys_rl.caps.access``'s.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from recsys_rl.caps.access import Grant, load_authz, may_call, read_pem, token_sha256
from recsys_rl.errors import InvalidInput, Unauthenticated
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb

log = logging.getLogger(__name__)

ADMIN_SERVICE = admin_pb.DESCRIPTOR.services_by_name["PolicyAdminService"].full_name
# Every service behind the interceptor: the item catalog's writes change what is served, like a policy change.
GUARDED_SERVICES = frozenset({ADMIN_SERVICE, catalog_pb.DESCRIPTOR.services_by_name["CatalogService"].full_name})
_CALLER: ContextVar[Grant | None] = ContextVar("admin_caller", default=None)


@dataclass(frozen=True)
class AdminSettings:
    """``recsys-rl serve --admin-port P --admin-tls-cert C --admin-tls-key K --admin-authz A [--admin-host H]``."""

    port: int  # 0: a free port
    tls_cert: Path  # the server's certificate chain (PEM)
    tls_key: Path  # its private key (PEM)
    authz: Path  # identities, roles and token hashes (TOML, recsys_rl.caps.access)
    host: str | None = None  # None: the Rank listener's host

    def check(self) -> None:
        """Reads every file as the listener will; InvalidInput names the flag at fault (exit 2 at start, before
        anything binds, rather than a handshake failure at the first call)."""
        read_pem(str(self.tls_cert), "--admin-tls-cert", "CERTIFICATE")
        read_pem(str(self.tls_key), "--admin-tls-key", "PRIVATE KEY")
        try:  # gRPC only says "failed to bind" for a key that does not match the certificate
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.tls_cert, self.tls_key)
        except ssl.SSLError as exc:
            raise InvalidInput("--admin-tls-key", f"{self.tls_key} does not go with --admin-tls-cert "
                                                  f"{self.tls_cert}: {exc.reason or exc}") from None
        load_authz(self.authz)

    def server_credentials(self) -> grpc.ServerCredentials:
        self.check()
        key = read_pem(str(self.tls_key), "--admin-tls-key", "PRIVATE KEY")
        chain = read_pem(str(self.tls_cert), "--admin-tls-cert", "CERTIFICATE")
        return grpc.ssl_server_credentials([(key, chain)])


class AuthzFile:
    """The authorization file, re-read when it changes (revoking a token needs no restart, and every worker on
    the data dir sees the same file). A file that no longer parses fails closed: every admin call is refused
    UNAVAILABLE until it is fixed, so a botched revocation never leaves the revoked token working."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._grants = load_authz(path)  # a bad file at start is the operator's exit 2, not a refusal per call
        self._stamp = self._stat()
        self._error = ""

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def grants(self) -> dict[str, Grant] | None:
        """Token hash -> Grant; None while the file is broken (logged once per change)."""
        stamp = self._stat()
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._grants, self._error = load_authz(self.path), ""
                    log.info("admin authorization reloaded from %s: %d tokens", self.path, len(self._grants))
                except InvalidInput as exc:
                    self._grants, self._error = {}, str(exc)
                    log.error("admin authorization file is invalid; refusing every admin call until fixed: %s", exc)
            return None if self._error else self._grants


class AdminAuthInterceptor(grpc.ServerInterceptor):
    """Authenticates and authorizes every PolicyAdminService and CatalogService call (unary, or client-streaming:
    CatalogService.UpsertItems); other services (health, reflection) pass."""

    def __init__(self, authz: AuthzFile) -> None:
        self.authz = authz

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        service, _, method = details.method.lstrip("/").partition("/")
        if service not in GUARDED_SERVICES:
            return continuation(details)  # health and reflection: open, over the same TLS
        grant = self._authorize(method, details.invocation_metadata)
        handler = continuation(details)  # only looked up: nothing of the request is read before the check
        streaming = handler is not None and handler.stream_unary is not None
        if not isinstance(grant, Grant):
            return _refusal(*grant, method, streaming=streaming)
        if streaming:
            return handler._replace(stream_unary=_as_caller(grant, handler.stream_unary))
        if handler is None or handler.unary_unary is None:
            return handler  # unknown method: gRPC answers UNIMPLEMENTED
        return handler._replace(unary_unary=_as_caller(grant, handler.unary_unary))

    def _authorize(self, method: str, metadata: Sequence[tuple[str, Any]] | None
                   ) -> Grant | tuple[grpc.StatusCode, str]:
        grants = self.authz.grants()
        if grants is None:
            return grpc.StatusCode.UNAVAILABLE, "the server's admin authorization file is invalid (see its log)"
        values = [value for key, value in metadata or () if key == "authorization"]
        if not values:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    "no admin credential: send a bearer token (recsys-rl caps|rollout|shield --token-file FILE)")
        scheme, _, token = str(values[0]).partition(" ")
        if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
            return grpc.StatusCode.UNAUTHENTICATED, "authorization: expected one 'Bearer TOKEN'"
        grant = grants.get(token_sha256(token.strip()))
        if grant is None:
            return grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked admin token"
        if not may_call(grant.role, method):
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"{grant.identity} (role {grant.role}) may not call {method}: viewers may call Get* only")
        return grant


def _refusal(code: grpc.StatusCode, message: str, method: str, *, streaming: bool = False) -> grpc.RpcMethodHandler:
    def refuse(request: object, context: grpc.ServicerContext) -> None:
        log.warning("admin %s from %s refused: %s: %s", method, context.peer(), code.name, message)
        context.abort(code, message)

    # The request stays undecoded (no deserializer): nothing of it is trusted, a stream is never read.
    if streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _as_caller(grant: Grant, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        token = _CALLER.set(grant)
        try:
            return behavior(request, context)
        finally:
            _CALLER.reset(token)

    return call


def verified_caller() -> str:
    """The identity the interceptor verified for the admin call in progress. Without one (the servicer mounted
    where the interceptor is not) the call fails UNAUTHENTICATED rather than record an unverified actor."""
    grant = _CALLER.get()
    if grant is None:
        raise Unauthenticated("no verified caller: PolicyAdminService is served only on the admin listener")
    return grant.identity
