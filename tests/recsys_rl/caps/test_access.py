"""The admin authorization file and roles (``recsys_rl.caps.access``): every bad file names the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_rl.caps.access import Grant, load_authz, may_call, token_sha256, write_token
from recsys_rl.errors import InvalidInput

DIGEST = "a" * 64


def test_tokens_round_trip_to_their_grant(tmp_path: Path) -> None:
    digest = write_token(tmp_path / "alice.token")
    assert (tmp_path / "alice.token").stat().st_mode & 0o777 == 0o600
    assert digest == token_sha256((tmp_path / "alice.token").read_text().strip())
    authz = tmp_path / "authz.toml"
    authz.write_text(f'[identities.alice]\nrole = "operator"\ntoken_sha256 = ["{digest}", "{DIGEST}"]\n')
    assert load_authz(authz) == {digest: Grant("alice", "operator"), DIGEST: Grant("alice", "operator")}
    with pytest.raises(FileExistsError):  # never overwrites a token someone holds
        write_token(tmp_path / "alice.token")


@pytest.mark.parametrize(("text", "message"), [
    ("[identities.a\n", "not TOML"),
    ("[users.a]\n", "unknown key 'users'"),
    ("identities = 3\n", "identities: must be a table"),
    (f'[identities.a]\nrole = "admin"\ntoken_sha256 = ["{DIGEST}"]\n',
     "identities.a.role: must be one of viewer, operator"),
    ('[identities.a]\nrole = "viewer"\ntoken_sha256 = []\n', "identities.a.token_sha256: must be a non-empty list"),
    ('[identities.a]\nrole = "viewer"\ntoken_sha256 = ["ABC"]\n', "'ABC' is not a lower-case SHA-256"),
    (f'[identities.a]\nrole = "viewer"\ntoken_sha256 = ["{DIGEST}"]\nexpires = 1\n', "identities.a.expires: unknown"),
    (f'[identities.a]\nrole = "viewer"\ntoken_sha256 = ["{DIGEST}"]\n[identities.b]\nrole = "operator"\n'
     f'token_sha256 = ["{DIGEST}"]\n', "identities.b.token_sha256: aaaaaaaaaaaa… is also a's"),
])
def test_a_bad_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    authz = tmp_path / "authz.toml"
    authz.write_text(text)
    with pytest.raises(InvalidInput) as error:
        load_authz(authz)
    assert error.value.field == "--admin-authz" and message in str(error.value)


def test_roles() -> None:
    assert may_call("viewer", "GetShield") and not may_call("viewer", "SetShield")
    assert may_call("operator", "SetExplorationCap") and not may_call("nobody", "GetSurface")
