"""Business-rule shield: which candidates may fill which slot (docs/shield.md)."""

from recsys_rl.shield.rules import NO_SHIELD, NoShield, RequestShield, ShieldInfeasible, ShieldRules, parse_shield

__all__ = ["NO_SHIELD", "NoShield", "RequestShield", "ShieldInfeasible", "ShieldRules", "parse_shield"]
