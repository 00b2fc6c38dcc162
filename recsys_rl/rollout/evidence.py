"""The evidence a forward rollout move is judged on: named checks (passed or not, with a readable detail) and the
estimates behind them. The guardrail (``recsys_rl.rollout.guardrail``) produces it; the store (``set``) accepts a
forward move only when every check passed, and audits the failed ones by name.

NOTE for the merge: the same dataclass as ``recsys_rl.rollout.store.GuardrailEvidence`` (the store helper's):
keep theirs and import it in ``guardrail`` instead of this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GuardrailEvidence:
    """``checks``: (name, passed, detail) per check; ``estimates``: the numbers they were decided on."""

    checks: list[tuple[str, bool, str]]
    estimates: dict[str, object] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def failed_checks(self) -> list[str]:
        return [f"{name}: {detail}" for name, ok, detail in self.checks if not ok]


__all__ = ["GuardrailEvidence"]
