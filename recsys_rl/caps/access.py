"""Who may call PolicyAdminService: bearer tokens, the authorization file that maps them to identities and roles,
and the client side of the admin listener (a TLS channel carrying a token).

The admin listener (``recsys-rl serve --admin-port``) speaks TLS only. A caller proves who it is with a bearer
token (``authorization: Bearer TOKEN`` metadata, sent by ``grpc.access_token_call_credentials`` over that TLS
channel); the server keeps only each token's SHA-256 in the authorization file::

    [identities.alice]
    role = "operator"                 # viewer: Get* methods; operator: every method
    token_sha256 = ["9f86d0…"]        # one or more (rotate: add the new hash, then remove the old)

Why tokens rather than client certificates: grpcio's server credentials either require a verified client
certificate at the handshake or do not ask for one, so with mutual TLS a caller without a (trusted) certificate
never reaches the server and sees UNAVAILABLE, indistinguishable from a network fault. Over a token the server
answers UNAUTHENTICATED (no or unknown token) and PERMISSION_DENIED (a role without the method), and the TLS
layer still authenticates the server to the client, so a token never goes to an impostor.

No gRPC import at module level: the server side (``ranker.admin_auth``) reads the authorization file with this
module, and ``recsys-rl serve`` validates it before anything binds.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_rl.errors import InvalidInput

__all__ = ["OPERATOR", "ROLES", "VIEWER", "Grant", "admin_channel", "load_authz", "may_call", "read_pem",
           "read_token_file", "token_sha256", "write_token"]

VIEWER = "viewer"
OPERATOR = "operator"
ROLES = (VIEWER, OPERATOR)
MAX_IDENTITY_CHARS = 200  # as an audit actor (ranker.admin.MAX_ACTOR_CHARS)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Grant:
    """A verified caller: the identity recorded in the audit trails and the role that decides what it may call."""

    identity: str
    role: str


def may_call(role: str, method: str) -> bool:
    """``method`` is the RPC's name (``SetExplorationCap``). Viewers read (Get*); operators also change. A method
    added later that reads differently is an operator's until named here: deny by default."""
    return role == OPERATOR or (role == VIEWER and method.startswith("Get"))


def token_sha256(token: str) -> str:
    """The hash the authorization file lists. Tokens are random 256-bit strings (``write_token``), so a fast hash
    is enough: there is nothing to brute-force."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_authz(path: Path) -> dict[str, Grant]:
    """The authorization file as token hash -> Grant. InvalidInput (field ``--admin-authz``) names the key at fault."""
    def bad(reason: str) -> InvalidInput:
        return InvalidInput("--admin-authz", f"{path}: {reason}")

    try:
        table = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise bad(f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise bad(f"not TOML: {exc}") from None
    unknown = set(table) - {"identities"}
    if unknown:
        raise bad(f"unknown key {sorted(unknown)[0]!r} (expected [identities.NAME] tables)")
    identities = table.get("identities", {})
    if not isinstance(identities, dict):
        raise bad("identities: must be a table of [identities.NAME]")
    grants: dict[str, Grant] = {}
    for identity, entry in identities.items():
        where = f"identities.{identity}"
        if not identity.strip() or len(identity) > MAX_IDENTITY_CHARS:
            raise bad(f"{where}: an identity must be 1 to {MAX_IDENTITY_CHARS} characters")
        if not isinstance(entry, dict):
            raise bad(f"{where}: must be a table with role and token_sha256")
        extra = set(entry) - {"role", "token_sha256"}
        if extra:
            raise bad(f"{where}.{sorted(extra)[0]}: unknown key (expected role, token_sha256)")
        role = entry.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role: must be one of {', '.join(ROLES)}, got {role!r}")
        hashes = entry.get("token_sha256")
        if not isinstance(hashes, list) or not hashes:
            raise bad(f"{where}.token_sha256: must be a non-empty list of SHA-256 hex digests")
        for digest in hashes:
            if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
                raise bad(f"{where}.token_sha256: {digest!r} is not a lower-case SHA-256 hex digest")
            if digest in grants:  # one token, two identities: the audit trail could not say who it was
                raise bad(f"{where}.token_sha256: {digest[:12]}… is also {grants[digest].identity}'s")
            grants[digest] = Grant(identity, role)
    return grants


def write_token(path: Path) -> str:
    """Writes a new random token to ``path`` (mode 0600, not overwriting) and returns its SHA-256 for the
    authorization file."""
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token_sha256(token)


def read_token_file(path: str) -> str:
    """A token file's token (surrounding whitespace dropped). InvalidInput names ``--token-file``."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput("--token-file", f"cannot read {path}: {exc}") from None
    if not token or any(c.isspace() for c in token):
        raise InvalidInput("--token-file", f"{path} must hold one token (no spaces), as written by write_token")
    return token


def read_pem(path: str, flag: str, kind: str) -> bytes:
    """A PEM file's bytes; ``kind`` is ``CERTIFICATE`` or ``PRIVATE KEY``. InvalidInput names ``flag``: gRPC itself
    would only fail at the first handshake, far from the flag that was wrong."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(flag, f"cannot read {path}: {exc.strerror or exc}") from None
    if f"{kind}-----".encode() not in data or b"-----BEGIN " not in data:
        raise InvalidInput(flag, f"{path} is not a PEM {kind.lower()}")
    return data


def admin_channel(server: str, *, ca: str | None, token_file: str | None) -> Any:
    """A TLS channel to an admin listener. ``ca``: the PEM bundle that signed the server's certificate (None:
    the system's roots); ``token_file``: the caller's bearer token (None: no credential, the server answers
    UNAUTHENTICATED). Bad flags raise InvalidInput naming them."""
    import grpc

    if not server or ":" not in server:
        raise InvalidInput("--server", f"expected HOST:PORT, got {server!r}")
    roots = read_pem(ca, "--ca", "CERTIFICATE") if ca else None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    if token_file:
        token = read_token_file(token_file)
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(server, credentials)
