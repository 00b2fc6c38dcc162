"""What the serving code calls, and the do-nothing default: metrics off cost one no-op method call.

No ``prometheus_client`` here: the core imports this module whether or not metrics are on.
"""

from __future__ import annotations

from typing import Protocol

from recsys_rl.serving.decision import Decision
from recsys_rl.serving.outcomes import OutcomeAck


class ServingHooks(Protocol):
    """Called on the request path; each call must stay in the microseconds (a few counter increments)."""

    def ranked(self, decision: Decision, seconds: float) -> None:
        """A Rank answered with ``decision`` after ``seconds`` (decode to encode)."""

    def rank_failed(self, surface: str, code: str, seconds: float) -> None:
        """A Rank answered with gRPC status ``code`` (e.g. "RESOURCE_EXHAUSTED") instead of a slate."""

    def outcome_reported(self, code: str, seconds: float) -> None:
        """A ReportOutcome answered with status ``code`` ("OK" when acknowledged) after ``seconds``."""

    def outcome_attributed(self, surface: str, ack: OutcomeAck) -> None:
        """An acknowledged outcome of ``surface``: attributed, not attributed, or a duplicate."""


class NoMetrics:
    """Null object: metrics off."""

    def ranked(self, decision: Decision, seconds: float) -> None:
        pass

    def rank_failed(self, surface: str, code: str, seconds: float) -> None:
        pass

    def outcome_reported(self, code: str, seconds: float) -> None:
        pass

    def outcome_attributed(self, surface: str, ack: OutcomeAck) -> None:
        pass


NO_METRICS: ServingHooks = NoMetrics()
