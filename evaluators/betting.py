"""Betting lower bounds for the mean of a non-negative variable (Waudby-Smith & Ramdas 2023, JRSS-B).

Off-policy use (Waudby-Smith, Wu, Ramdas, Karampatziakis & Mineiro 2022): with rewards rescaled to
r̃ in [0, 1] and importance weights w ≥ 0 whose mean under the logging policy is at most 1 (exactly 1
without support violations), X = w·r̃ ≥ 0 has mean at most θ (the rescaled value) and Y = w·(1 − r̃) ≥ 0
has mean at most 1 − θ. No a-priori bound on w is needed: a lower bound on E[X] is a lower bound on θ,
and one minus a lower bound on E[Y] is an upper bound on θ.

The lower bound on E[X] tests each candidate m in (0, 1] with the capital process

    K_t(m) = Π_{i ≤ t} (1 + λ_i(m) (X_i − m)),    λ_i(m) = min(λ_i, c / m),  c = TRUNCATION,

a non-negative supermartingale whenever E[X] ≤ m (each factor has conditional mean 1 + λ(E X − m) ≤ 1 and
is ≥ 1 − c > 0 because X ≥ 0). By Ville's inequality P(sup_t K_t(E X) ≥ 1/α) ≤ α, so every m whose running
maximum of K reaches 1/α can be rejected and the bound is the largest rejected m. Each factor decreases in
m, hence so does sup_t K_t(m): the rejected set is an interval [0, L), found by a few vectorised passes of
GRID_POINTS candidates that each narrow the bracket around L; the bound returned is the largest candidate
actually rejected, so the grid only ever makes it more conservative.

λ_i is WSR's predictable plug-in tuned for a fixed sample size n ("PrPl-EB" with t log(1 + t) replaced by
n): λ_i = sqrt(2 log(1/α) / (n σ̂²_{i−1})), with σ̂²_{i−1} = (1/4 + Σ_{j<i} (X_j − μ̂_j)²) / i and
μ̂_j = (1/2 + Σ_{k ≤ j} X_k) / (j + 1): it uses only earlier units, which is all validity needs.

The units must be i.i.d. in the order the process sees them, so they are visited in a seeded random
permutation (a table sorted by reward or weight would otherwise break the supermartingale). The bound
depends on that order, so unlike the moment-based intervals it is not mergeable: partitions cannot be
combined by adding statistics; the whole column of units is needed (8 bytes per unit per side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TRUNCATION = 0.5      # c: bets at most c/m, so one unit can lose at most half of the capital
GRID_POINTS = 32      # candidates per pass; each pass narrows the bracket around the bound 33-fold
REFINEMENTS = 4       # passes: final resolution 33^-4 ≈ 1e-6 of the rescaled range
CHUNK_UNITS = 16384   # units per block: 16384 x 32 float64 = 4 MB per temporary


@dataclass(frozen=True)
class BettingTerms:
    """Per-row terms whose per-event sums X = Σ gain ≥ 0 and Y = Σ complement ≥ 0 satisfy E X ≤ θ, E Y ≤ 1 − θ.

    The estimand is V = offset + scale · θ; ``assumption`` says in a few words what this relies on.
    """

    gain: np.ndarray
    complement: np.ndarray
    offset: float
    scale: float
    assumption: str


def predictable_bets(x: np.ndarray, alpha: float) -> np.ndarray:
    """λ_i before truncation, from units 1..i−1 only (see module docstring)."""
    n = x.size
    t = np.arange(1, n + 1, dtype=np.float64)
    mu_hat = (0.5 + np.cumsum(x)) / (t + 1)
    sigma2 = (0.25 + np.cumsum((x - mu_hat) ** 2)) / (t + 1)
    sigma2_before = np.concatenate(([0.25], sigma2[:-1]))
    return np.sqrt(2 * math.log(1 / alpha) / (n * sigma2_before))


def _rejected(x: np.ndarray, bets: np.ndarray, candidates: np.ndarray, threshold: float) -> np.ndarray:
    """For each candidate m: does the running maximum of log K_t(m) reach ``threshold`` = log(1/α)?"""
    cap = TRUNCATION / candidates
    log_capital = np.zeros(candidates.size)
    best = np.full(candidates.size, -np.inf)
    for start in range(0, x.size, CHUNK_UNITS):  # a loop over blocks of units, vectorised inside
        xs, bs = x[start:start + CHUNK_UNITS, None], bets[start:start + CHUNK_UNITS, None]
        steps = np.log1p(np.minimum(bs, cap) * (xs - candidates))
        path = np.cumsum(steps, axis=0)
        path += log_capital
        np.maximum(best, path.max(axis=0), out=best)
        log_capital = path[-1]
        if (best >= threshold).all():
            break  # every candidate already rejected: later units cannot undo a crossing
    return best >= threshold


def lower_bound(x: np.ndarray, alpha: float) -> float:
    """A lower confidence bound, at level 1 − α, on E[X] for i.i.d. X ≥ 0 (in the given order), in [0, 1].

    Returns 1 when even m = 1 is rejected (E X > 1 with confidence: the caller's assumptions fail).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return 0.0
    bets = predictable_bets(x, alpha)
    threshold = math.log(1 / alpha)
    low, high = 0.0, 1.0
    for _ in range(REFINEMENTS):
        candidates = np.linspace(low, high, GRID_POINTS + 2)[1:-1] if low > 0 or high < 1 else \
            np.linspace(0.0, 1.0, GRID_POINTS + 1)[1:]
        rejected = _rejected(x, bets, candidates, threshold)
        if rejected.all():
            if candidates[-1] >= 1.0:
                return 1.0
            low = float(candidates[-1])
        elif rejected.any():
            last = int(np.flatnonzero(rejected)[-1])  # rejected set is [0, L): a prefix of the candidates
            low, high = float(candidates[last]), float(candidates[last + 1])
        else:
            high = float(candidates[0])
    return low


def betting_bounds(gain: np.ndarray, complement: np.ndarray, *, alpha: float, seed: int) -> tuple[float, float]:
    """(low, high) on θ at level 1 − α: α/2 for each side, units visited in a permutation seeded by ``seed``."""
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xBE7,))).permutation(gain.size)
    low = lower_bound(np.asarray(gain, dtype=np.float64)[order], alpha / 2)
    high = 1.0 - lower_bound(np.asarray(complement, dtype=np.float64)[order], alpha / 2)
    return low, high
