"""The evidence a forward rollout move is judged on: named checks (passed or not, with a readable detail) and the
estimates behind them. The guardrail (``recsys_rl.rollout.guardrail``) produces it; the store (``set``) accepts a
forward move only when every check passed, and audits the failed ones by name.

NOTE for the merge: the store helper defines the same dataclass; keep one (this module or ``store``) and import
it from the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GuardrailEvidence:
    """``checks``: (name, passed, detail) per check; ``estimates``: the numbers they were decided on."""

    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    estimates: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    @property
    def failed_checks(self) -> list[str]:
        return [f"{name}: {detail}" for name, ok, detail in self.checks if not ok]


__all__ = ["GuardrailEvidence"]
