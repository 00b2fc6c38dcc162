"""Domain errors of the decision core; ranker/errors.py maps them to gRPC status codes."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Bad input from a caller. ``field`` is the request field path, e.g. ``candidates[3].item_id``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(LookupError):
    """A referenced entity (event, surface, model version) does not exist."""


class NotReady(RuntimeError):
    """The service cannot serve yet (no policy loaded) or is shutting down."""


class Unauthenticated(PermissionError):
    """An admin call without a verified caller (no or unknown credential)."""


class Overloaded(RuntimeError):
    """Too much work in flight; the caller should back off."""


class PreconditionFailed(RuntimeError):
    """An operation's precondition (e.g. the cap gate's checks) does not hold."""


class Aborted(RuntimeError):
    """A conditional change lost a race (e.g. SetShield's expected_version is no longer in force); retry after
    reading the current state."""
