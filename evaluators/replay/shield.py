"""Which shield rules replay decides each logged decision under.

By default a decision is replayed under the rules that were in force when it was served — the version it logged
(``DecisionEvent.shield_version``), read from the surface configuration when it is the config's and otherwise from
the data dir's shield store (``D/admin/shield/``, :func:`recsys_rl.shield.store.load_rules`) — so a target's
propensities are over the same feasible sets serving had, even across run-time rule changes. A what-if
(``--shield VERSION|none|FILE.toml``) applies one rule set to every decision instead: the target's propensities
follow those rules, the logged ones stay as logged.
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

from recsys_rl.config import SurfaceConfig
from recsys_rl.errors import InvalidInput, NotFound
from recsys_rl.serving.decision import DecisionPolicy
from recsys_rl.shield.rules import NO_SHIELD, ShieldConfigError, ShieldRules, rules_from_dict
from recsys_rl.shield.store import ShieldStoreError, load_rules


def what_if_rules(text: str, data_dir: Path) -> ShieldRules:
    """``none``, a TOML file (the shield table's keys at top level; relative paths from its directory), or a
    version in the data dir's shield store. InvalidInput naming ``--shield`` otherwise."""
    if text == "none":
        return NO_SHIELD
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        try:
            return rules_from_dict(tomllib.loads(path.read_text()), base_dir=path.parent)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput("--shield", f"cannot read {text}: {exc}") from None
        except ShieldConfigError as exc:
            raise InvalidInput("--shield", f"{text}: {exc}") from None
    try:
        return load_rules(data_dir, text)
    except (NotFound, ShieldStoreError) as exc:
        raise InvalidInput("--shield", f"{exc} (expected none, a rules .toml file or a stored version)") from None


class ReplayShield:
    """Gives a target's DecisionPolicy for one logged decision the rules it is to be replayed under."""

    def __init__(self, data_dir: Path, surface: SurfaceConfig, what_if: ShieldRules | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.what_if = what_if
        self._rules: dict[str, ShieldRules] = {surface.shield.version: surface.shield, "": NO_SHIELD}
        # (id of a target's policy, rules version) -> (that policy, kept alive so its id is not reused; the copy).
        self._policies: dict[tuple[int, str], tuple[DecisionPolicy, DecisionPolicy]] = {}

    def rules_for(self, event_id: str, version: str) -> ShieldRules:
        if self.what_if is not None:
            return self.what_if
        rules = self._rules.get(version)
        if rules is None:
            try:
                rules = self._rules[version] = load_rules(self.data_dir, version)
            except (NotFound, ShieldStoreError) as exc:
                raise InvalidInput("shield_version", f"event {event_id}: {exc}; replay needs the rules each "
                                   "decision was served under (or a what-if: --shield VERSION|none|FILE.toml)") from None
        return rules

    def policy(self, policy: DecisionPolicy, event_id: str, logged_version: str) -> DecisionPolicy:
        """``policy`` with the rules for this decision (the same object when they already are its rules)."""
        rules = self.rules_for(event_id, logged_version)
        if rules.version == policy.shield.version:
            return policy
        key = (id(policy), rules.version)
        found = self._policies.get(key)
        if found is None:
            found = self._policies[key] = (policy, replace(policy, shield=rules))
        return found[1]


__all__ = ["ReplayShield", "what_if_rules"]
