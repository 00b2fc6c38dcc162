"""Throwaway admin credentials for the demo and the tests: a CA, a server certificate for the loopback names, an
authorization file and one bearer token per identity, all in one directory.

Real certificates from the ``openssl`` command line (present wherever Python's ssl module is; no Python
dependency for a demo-only need). Not for production: the CA key sits beside the certificates and lives 2 days;
docs/operations.md ("Admin access") says how to issue real ones.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from recsys_rl.caps.access import write_token

__all__ = ["AdminCredentials", "throwaway_admin_credentials"]

LOOPBACK = ("localhost", "127.0.0.1")
_DAYS = "2"


@dataclass(frozen=True)
class AdminCredentials:
    """Paths by the flag that takes them."""

    ca: Path  # clients' --ca: the CA that signed the server's certificate
    server_cert: Path  # serve --admin-tls-cert
    server_key: Path  # serve --admin-tls-key
    authz: Path  # serve --admin-authz
    tokens: dict[str, Path]  # identity -> its --token-file

    def serve_args(self) -> list[str]:
        """The ``recsys-rl serve`` flags, --admin-port aside."""
        return ["--admin-tls-cert", str(self.server_cert), "--admin-tls-key", str(self.server_key),
                "--admin-authz", str(self.authz)]

    def client_args(self, identity: str) -> list[str]:
        """The ``recsys-rl caps|rollout|shield`` flags that call as ``identity``, --server aside."""
        return ["--ca", str(self.ca), "--token-file", str(self.tokens[identity])]


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make throwaway admin certificates")
    subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)


def _new_key_and_csr(key: Path, csr: Path, common_name: str) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={common_name}")
    os.chmod(key, 0o600)


def throwaway_admin_credentials(directory: Path, identities: Mapping[str, str], *,
                                hosts: Sequence[str] = LOOPBACK, name: str = "recsys-rl throwaway") -> AdminCredentials:
    """Makes ``directory`` (must not exist) with a CA, a server certificate for ``hosts`` and a token per identity
    (``identities``: identity -> role), listed in the authorization file."""
    directory.mkdir(parents=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca), "-days", _DAYS, "-subj", f"/CN={name} CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(ca_key, 0o600)
    server_key, server_csr, server_cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    _new_key_and_csr(server_key, server_csr, hosts[0])
    names = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    extensions = directory / "server.ext"
    extensions.write_text(f"subjectAltName={names}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(server_csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-set_serial", str(secrets.randbits(63)), "-days", _DAYS, "-extfile", str(extensions),
             "-out", str(server_cert))
    tokens: dict[str, Path] = {}
    lines = [f"# made by recsys_rl.caps.devcerts for {name}: throwaway, not for production", ""]
    for identity, role in identities.items():
        tokens[identity] = directory / f"{identity}.token"
        digest = write_token(tokens[identity])
        lines += [f'[identities."{identity}"]', f'role = "{role}"', f'token_sha256 = ["{digest}"]', ""]
    authz = directory / "authz.toml"
    authz.write_text("\n".join(lines))
    return AdminCredentials(ca=ca, server_cert=server_cert, server_key=server_key, authz=authz, tokens=tokens)
