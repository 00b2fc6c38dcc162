"""Slate estimators: the value of a slate is the sum of its positions' rewards, averaged over slates.

Notation for slate i with positions k = 0..K_i−1 (rows of the feedback table sharing ``event_id``):
r_ik = reward, and three weights built from the slate columns of the table,

* joint     w_i    = slate_target_pscore / slate_pscore            (the whole ordered slate)
* marginal  w_ik   = marginal_target_pscore / marginal_pscore      (item a_ik in slot k)
* cascade   w_i,≤k = cascade_target_pscore / cascade_pscore        (the prefix a_i0..a_ik)

and N = number of slates. Each estimator is V = (1/N) Σ_i Σ_k term_ik, so it fits the same
sum-of-per-row-terms statistics as the standard estimators (denominator: 1 on each slate's first row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl

from evaluators.betting import BettingTerms
from evaluators.estimators import Estimator, FeedbackData, Statistics, slot_betting_terms

SLATES = "slates"


def _per_slate(data: FeedbackData, key: str, terms: np.ndarray) -> Statistics:
    return Statistics({key: terms, SLATES: data.first_in_event()}, ((key, SLATES),))


@dataclass(frozen=True)
class StandardIPS(Estimator):
    """Standard IPS with the joint slate weight: V = (1/N) Σ_i w_i Σ_k r_ik.

    Unbiased for any reward structure, but the joint weight has huge variance for long slates.
    """

    name: ClassVar[str] = "standard_ips"
    needs: ClassVar[frozenset[str]] = frozenset({"slate_pscore", "slate_target_pscore"})
    logging_column: ClassVar[str] = "slate_pscore"

    def statistics(self, data: FeedbackData) -> Statistics:
        terms = data.cached("standard_ips", lambda: data.weight("slate_pscore") * data.column("reward"))
        return _per_slate(data, "standard_ips", terms)

    def betting_terms(self, data: FeedbackData) -> BettingTerms | None:
        return slot_betting_terms(data, data.weight("slate_pscore"), per_row=False, joint=True)


@dataclass(frozen=True)
class IndependentIPS(Estimator):
    """Independent IPS (Li et al. 2018): V = (1/N) Σ_i Σ_k w_ik r_ik.

    Unbiased when the reward at slot k depends only on the item in slot k (no interactions).
    """

    name: ClassVar[str] = "independent_ips"
    needs: ClassVar[frozenset[str]] = frozenset({"marginal_pscore", "marginal_target_pscore"})
    logging_column: ClassVar[str] = "marginal_pscore"

    def statistics(self, data: FeedbackData) -> Statistics:
        terms = data.cached("independent_ips", lambda: data.weight("marginal_pscore") * data.column("reward"))
        return _per_slate(data, "independent_ips", terms)

    def betting_terms(self, data: FeedbackData) -> BettingTerms | None:
        return slot_betting_terms(data, data.weight("marginal_pscore"), per_row=False,
                                  estimand="independent IPS's estimand (V when slots do not interact)")


@dataclass(frozen=True)
class RIPS(Estimator):
    """Reward-interaction (cascade) IPS (McInerney et al. 2020): V = (1/N) Σ_i Σ_k w_i,≤k r_ik.

    Unbiased when the reward at slot k depends only on the items in slots 0..k (cascade browsing).
    """

    name: ClassVar[str] = "rips"
    needs: ClassVar[frozenset[str]] = frozenset({"cascade_pscore", "cascade_target_pscore"})
    logging_column: ClassVar[str] = "cascade_pscore"

    def statistics(self, data: FeedbackData) -> Statistics:
        terms = data.cached("rips", lambda: data.weight("cascade_pscore") * data.column("reward"))
        return _per_slate(data, "rips", terms)

    def betting_terms(self, data: FeedbackData) -> BettingTerms | None:
        return slot_betting_terms(data, data.weight("cascade_pscore"), per_row=False,
                                  estimand="RIPS's estimand (V under the cascade assumption)")


@dataclass(frozen=True)
class PseudoInverse(Estimator):
    """Pseudo-inverse estimator (Swaminathan et al. 2017) for additive slate rewards:

        V = (1/N) Σ_i (Σ_k w_ik − (K_i − 1)) · Σ_k r_ik.

    This is the closed form of the PI estimator when the logging policy fills slots independently given
    the context (e.g. uniform per slot); with other logging policies it is an approximation. Unlike
    independent IPS it credits the whole slate reward to every slot, so it allows any additive
    per-slot reward, but not interactions. Per row the term is (Σ_j w_ij − (K_i − 1)) · r_ik.
    """

    name: ClassVar[str] = "pseudo_inverse"
    needs: ClassVar[frozenset[str]] = frozenset({"marginal_pscore", "marginal_target_pscore"})
    logging_column: ClassVar[str] = "marginal_pscore"

    def statistics(self, data: FeedbackData) -> Statistics:
        def make() -> np.ndarray:
            frame = pl.DataFrame({"event_id": data.df.get_column("event_id"), "w": data.weight("marginal_pscore")})
            slate_factor = frame.select(
                pl.col("w").sum().over("event_id") - (pl.len().over("event_id").cast(pl.Float64) - 1.0)
            ).to_series().to_numpy()
            return slate_factor * data.column("reward")

        return _per_slate(data, "pseudo_inverse", data.cached("pseudo_inverse", make))


@dataclass(frozen=True)
class CascadeDR(Estimator):
    """Cascade doubly robust (Kiyohara et al. 2022):

        V = (1/N) Σ_i Σ_k [ w_i,≤k (r_ik − q̂_ik) + w_i,≤k−1 q̂π_ik ],   w_i,≤−1 = 1,

    with q̂_ik = ``q_hat`` (model value of the logged prefix at slot k) and q̂π_ik = ``q_hat_target``
    (Σ_a π(a | x_i, a_i0..a_i,k−1) q̂(x_i, a_i0..a_i,k−1, a)). Unbiased under the cascade assumption for any
    q̂; q̂ = expected reward-to-go from slot k minimises the variance. w_i,≤k−1 is the cascade weight of the
    previous row of the slate by ``position``, so slates must be logged from the top without gaps.
    """

    name: ClassVar[str] = "cascade_dr"
    needs: ClassVar[frozenset[str]] = frozenset({"cascade_pscore", "cascade_target_pscore", "q_hat", "q_hat_target"})
    logging_column: ClassVar[str] = "cascade_pscore"

    def statistics(self, data: FeedbackData) -> Statistics:
        def make() -> np.ndarray:
            w = data.weight("cascade_pscore")
            frame = pl.DataFrame({"event_id": data.df.get_column("event_id"),
                                  "position": data.df.get_column("position"), "w": w})
            w_prev = frame.select(
                pl.col("w").shift(1).over("event_id", order_by="position").fill_null(1.0)
            ).to_series().to_numpy()
            return w * (data.column("reward") - data.column("q_hat")) + w_prev * data.column("q_hat_target")

        return _per_slate(data, "cascade_dr", data.cached("cascade_dr", make))


SLATE_ESTIMATORS: tuple[type[Estimator], ...] = (StandardIPS, IndependentIPS, RIPS, PseudoInverse, CascadeDR)
