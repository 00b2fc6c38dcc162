"""Target propensities of decisions that explored outside the retrieved set (``recsys_rl.retrieval.outside``).

Such a decision's candidates are the host-sent and retrieved ones (``[0, n_inside)``), then the items its outside
plan drew (``[n_inside, n)``). Serving gave slot k an outside item with probability ``q_k / #outside remaining`` and
an inside one with ``(1 − q_k)·p_in``, p_in from the surface's explorer re-capped at ``(c − q)/(1 − q)`` over the
inside candidates not yet placed, where ``q = outside_share·c`` and ``q_k = q`` while any catalog item is left
outside (0 after). Everything the formula needs is in the log: the share, the pool (catalog items outside the
candidates before the first slot) and the counts in ``DecisionEvent.retrieval``; the logged slots say which slots
went outside. A target replays it with its own cap ``c`` (``logged@cap=X``) and explorer, the logged share and pool:
the same arithmetic as :func:`recsys_rl.retrieval.outside.sample_with_outside`, so ``logged`` is bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recsys_rl.retrieval.outside import inside_cap
from recsys_rl.serving.exploration import CappedExplorer, Explorer, slate_propensities


def explored_outside(event: object) -> bool:
    """Whether the decision drew with an outside plan (share > 0 logged only when it did)."""
    return event.HasField("retrieval") and event.retrieval.outside_share > 0.0  # type: ignore[attr-defined]


def outside_propensities(scores: np.ndarray, logged: Sequence[int], explorer: Explorer, cap: float, *,
                         share: float, pool: int, n_inside: int) -> np.ndarray:
    """P(logged[k] at slot k | logged[:k]) under ``explorer`` capped at ``cap`` with outside exploration
    (module docstring); ``scores`` are the target's over all the logged candidates (outside ones are not used)."""
    q = share * cap
    inner = explorer.inner if isinstance(explorer, CappedExplorer) else explorer
    inside = [i for i in logged if i < n_inside]
    p_in = iter(slate_propensities(scores[:n_inside], inside, CappedExplorer(inner, inside_cap(cap, q))).tolist()
                if inside else ())
    remaining = pool
    out = np.empty(len(logged))
    for k, index in enumerate(logged):
        q_k = q if remaining > 0 else 0.0
        if index >= n_inside:
            out[k] = q_k / remaining if remaining > 0 else 0.0
            remaining -= 1
        else:
            out[k] = (1.0 - q_k) * next(p_in)
    return out


__all__ = ["explored_outside", "outside_propensities"]
