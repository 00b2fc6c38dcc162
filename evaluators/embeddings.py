"""Estimators for large action spaces that weight by action embeddings (Saito & Joachims, ICML 2022).

Each action a has a discrete embedding e(a) (a category, or a discretised embedding vector; the tuple of several
categorical dimensions counts as one category). Deterministic embeddings give the marginal propensities

    p_μ(e|x) = Σ_{a: e(a)=e} μ(a|x),      p_π(e|x) = Σ_{a: e(a)=e} π(a|x)

and the marginal weight w_e,i = p_π(e_i|x_i) / p_μ(e_i|x_i) for the logged row's embedding e_i = e(a_i). The
feedback table carries them per row as ``embedding_pscore`` (p_μ(e_i|x_i) for the row's slot, the logging policy's
probability of *any* item with the logged item's embedding) and ``embedding_target_pscore`` (p_π(e_i|x_i), same
conditioning). Neither follows from ``pscore``/``target_pscore``, which cover the logged item only: whoever builds
the table (replay, or :func:`add_embedding_propensities` here) sums the full action distributions of both policies
over the items sharing the embedding. The optional ``action_embedding`` column (int or str) names e_i.

MIPS is unbiased when every embedding π can reach has p_μ(e|x) > 0 (weaker than action support) and the action
has no effect on the reward beyond its embedding (E[r | x, a] = q(x, e(a))); its variance depends on how many
embeddings there are, not how many actions. With q̂, q̂π as in ``estimators.py``:

* ``mips``     V = (1/n) Σ_i w_e,i r_i
* ``snmips``   V = Σ_i w_e,i r_i / Σ_i w_e,i
* ``mips_dr``  V = (1/n) Σ_i [q̂π_i + w_e,i (r_i − q̂_i)]; unbiased when q̂ = q, or when there is no direct effect
  and q̂(x, a) depends on a only through e(a) (otherwise the correction averages q̂ over μ(a|x, e) where q̂π
  averages it over π(a|x, e), and the gap is bias).

Diagnostics (ESS, max weight, support violations) describe the marginal weights w_e: a support violation is a row
with ``embedding_target_pscore`` > 0 and ``embedding_pscore`` 0 or missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl

from evaluators.betting import BettingTerms
from evaluators.estimators import ONE, Estimator, FeedbackData, Statistics, slot_betting_terms
from evaluators.table import TableError

EMBEDDING_PSCORE = "embedding_pscore"
EMBEDDING_TARGET_PSCORE = "embedding_target_pscore"
ACTION_EMBEDDING = "action_embedding"


def _w_e(data: FeedbackData) -> np.ndarray:
    return data.weight(EMBEDDING_PSCORE)


def _we_r(data: FeedbackData) -> np.ndarray:
    return data.cached("w_e*r", lambda: _w_e(data) * data.column("reward"))


@dataclass(frozen=True)
class MIPS(Estimator):
    """Marginalised IPS: V = (1/n) Σ_i w_e,i r_i with w_e,i = embedding_target_pscore_i / embedding_pscore_i."""

    name: ClassVar[str] = "mips"
    needs: ClassVar[frozenset[str]] = frozenset({EMBEDDING_PSCORE, EMBEDDING_TARGET_PSCORE})
    logging_column: ClassVar[str] = EMBEDDING_PSCORE

    def statistics(self, data: FeedbackData) -> Statistics:
        return Statistics({"w_e*r": _we_r(data), ONE: data.ones()}, (("w_e*r", ONE),))

    def betting_terms(self, data: FeedbackData) -> BettingTerms | None:
        """E_μ[w_e | x] = Σ_e p_π(e|x) = 1, so the marginal weights are mean-one like w and the IPS construction
        applies; it bounds V under MIPS's no-direct-effect assumption."""
        terms = slot_betting_terms(data, _w_e(data), per_row=True)
        if terms is None:
            return None
        return BettingTerms(terms.gain, terms.complement, terms.offset, terms.scale,
                            f"{terms.assumption}; marginal embedding weights, no direct effect of the action")


@dataclass(frozen=True)
class SNMIPS(Estimator):
    """Self-normalised MIPS: V = Σ_i w_e,i r_i / Σ_i w_e,i (bounded by the reward range)."""

    name: ClassVar[str] = "snmips"
    needs: ClassVar[frozenset[str]] = MIPS.needs
    logging_column: ClassVar[str] = EMBEDDING_PSCORE

    def statistics(self, data: FeedbackData) -> Statistics:
        return Statistics({"w_e*r": _we_r(data), "w_e": _w_e(data)}, (("w_e*r", "w_e"),))

    def betting_terms(self, data: FeedbackData) -> BettingTerms | None:
        """SNMIPS estimates the same V as MIPS: the MIPS betting interval on V applies (as SNIPS uses IPS's)."""
        return MIPS().betting_terms(data)


@dataclass(frozen=True)
class MIPSDR(Estimator):
    """MIPS in doubly-robust form: V = (1/n) Σ_i [q̂π_i + w_e,i (r_i − q̂_i)] (see the module docstring for when
    it is unbiased)."""

    name: ClassVar[str] = "mips_dr"
    needs: ClassVar[frozenset[str]] = MIPS.needs | {"q_hat", "q_hat_target"}
    logging_column: ClassVar[str] = EMBEDDING_PSCORE

    def statistics(self, data: FeedbackData) -> Statistics:
        terms = data.cached("mips_dr", lambda: data.column("q_hat_target")
                            + _w_e(data) * (data.column("reward") - data.column("q_hat")))
        return Statistics({"mips_dr": terms, ONE: data.ones()}, (("mips_dr", ONE),))


EMBEDDING_ESTIMATORS: tuple[type[Estimator], ...] = (MIPS, SNMIPS, MIPSDR)


def marginal_propensities(policy: np.ndarray, embedding_of_action: np.ndarray, n_embeddings: int) -> np.ndarray:
    """p(e|x) = Σ_{a: e(a)=e} policy(a|x) for every context row: ``policy`` (m, K), ``embedding_of_action`` (K,) ints
    in [0, n_embeddings) → (m, n_embeddings)."""
    onehot = np.zeros((embedding_of_action.size, n_embeddings))
    onehot[np.arange(embedding_of_action.size), embedding_of_action] = 1.0
    return policy @ onehot


def add_embedding_propensities(
    table: pl.DataFrame, logging_policy: np.ndarray, target_policy: np.ndarray, embedding_of_action: np.ndarray,
    *, action_index: np.ndarray | None = None,
) -> pl.DataFrame:
    """Add ``action_embedding``, ``embedding_pscore`` and ``embedding_target_pscore`` to a feedback table.

    ``logging_policy`` and ``target_policy`` are each row's full action distributions (n, K) for the row's slot
    (what replay holds per decision); ``embedding_of_action`` (K,) each action's integer embedding id (any ids);
    ``action_index`` (n,) the logged action's column in the distributions (default: the ``action`` column).
    Raises TableError naming the column when the logged action's probability disagrees with ``pscore``.
    """
    n = table.height
    if logging_policy.shape != target_policy.shape or logging_policy.shape[0] != n:
        raise TableError(EMBEDDING_PSCORE, f"distributions of shape {logging_policy.shape} and "
                                           f"{target_policy.shape} do not match the table's {n} rows")
    index = table.get_column("action").to_numpy() if action_index is None else np.asarray(action_index)
    embedding_of_action = np.asarray(embedding_of_action, dtype=np.int64)
    if embedding_of_action.shape != (logging_policy.shape[1],):
        raise TableError(ACTION_EMBEDDING, f"need one integer embedding per action ({logging_policy.shape[1]}), "
                                           f"got shape {embedding_of_action.shape}")
    rows = np.arange(n)
    if not np.allclose(logging_policy[rows, index], table.get_column("pscore").to_numpy(), rtol=1e-9, atol=1e-12):
        raise TableError("pscore", "the logging distribution's probability of the logged action differs from pscore")
    embedding = embedding_of_action[index]
    labels, compact = np.unique(embedding_of_action, return_inverse=True)   # sparse ids → 0..C−1
    n_embeddings = labels.size
    # (n, C) marginals through one matrix product: no (n, K) mask for large catalogs.
    logging_e = marginal_propensities(logging_policy, compact, n_embeddings)[rows, compact[index]]
    target_e = marginal_propensities(target_policy, compact, n_embeddings)[rows, compact[index]]
    return table.with_columns(
        pl.Series(ACTION_EMBEDDING, embedding),
        pl.Series(EMBEDDING_PSCORE, logging_e),
        pl.Series(EMBEDDING_TARGET_PSCORE, target_e),
    )
