"""Canary assignment: which users a surface at stage canary serves with the learned policy.

A user's position is a uniform number in [0, 1) from a keyed hash of (surface, user_id)::

    u(surface, user) = (int.from_bytes(blake2b("recsys-rl/canary" ‖ surface ‖ user_id)[:8], "little") >> 11) / 2**53
    canary  ⇔  u < canary_share

(each part length-prefixed, so ("ab", "c") and ("a", "bc") differ). blake2b, not Python's ``hash``: the builtin is
salted per process (PYTHONHASHSEED), and the assignment must be the same across requests, restarts, worker
processes and machines. Hashing the surface in makes one user's arms on different surfaces independent, so one
unlucky user is not in every canary at once.

Sticky under a ramp: u does not depend on the share, so a user in the canary at 1 % stays in it at 5 %, 25 % and
100 % (only new users join), and a smaller share only removes users. The realised share over n users is
Binomial(n, canary_share) / n (tests/recsys_rl/rollout/test_assignment.py).

An empty user_id is control: it names no one, so hashing it would put every anonymous request in the same arm
(all canary or all control, whatever the share) and a page view could not be attributed to a user consistently;
control is the arm that sends no exploration to users we cannot follow.
"""

from __future__ import annotations

import hashlib

_DOMAIN = b"recsys-rl/canary"
_SCALE = 2.0**-53  # 53 bits: exactly representable, so u < 1 always (64 bits could round up to 1.0)


def canary_position(surface: str, user_id: str) -> float:
    """The user's stable uniform position u in [0, 1) on ``surface`` (module docstring)."""
    h = hashlib.blake2b(digest_size=8)
    for part in (_DOMAIN, surface.encode(), user_id.encode()):
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    return (int.from_bytes(h.digest(), "little") >> 11) * _SCALE


def in_canary(surface: str, user_id: str, canary_share: float) -> bool:
    """True when ``user_id`` is in the canary of ``surface`` at ``canary_share``; an empty user_id never is."""
    if not user_id or canary_share <= 0.0:
        return False
    return canary_position(surface, user_id) < canary_share


__all__ = ["canary_position", "in_canary"]
