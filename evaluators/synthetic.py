"""Synthetic bandit-feedback tables with an exactly known target value, for checking estimators and intervals.

Both problems draw contexts uniformly from a finite set of ``n_contexts`` contexts, so the truth is a finite sum
computed from the generator's own tables (never by simulation):

* :class:`ContextualProblem` — K actions. Reward means q(x, a) = sigmoid(θ_x · φ_a + bias) (Bernoulli rewards).
  The logging policy is softmax(s(x, ·) / logging_temperature) for scores s that agree with q only partly
  (correlation ``score_alignment``); the target is softmax(logit q(x, ·) / target_temperature) (near greedy
  on the true means for a small temperature) or uniform. Truth: V = (1/M) Σ_x Σ_a π(a|x) q(x, a).
* :class:`SlateProblem` — slates of L distinct items out of K drawn by sequential sampling without replacement
  from the logging / target softmaxes. Rewards follow the cascade click model: the user scans from the top
  and clicks item a at the first slot where Bernoulli(attraction(x, a)) fires, then stops. The reward at slot k
  depends on the items in slots 0..k only, so standard IPS and RIPS are both unbiased. Truth: enumerate every
  ordered slate (K!/(K−L)! of them per context): V = (1/M) Σ_x Σ_s π(s|x) (1 − Π_k (1 − attraction(x, s_k))).

The weight regime is set by the temperature gap, K and n: a sharp logging policy that disagrees with a sharp
target puts rare, huge weights in the tail (ESS ~ 10), a soft logging policy close to the target gives ESS ~ n.
``draw(seed)`` returns a polars table in the feedback-table schema (``feedback-table.md``) with the declared
reward range ``reward_min`` = 0, ``reward_max`` = 1. Every draw is vectorised and reproducible from its seed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl


def _softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = scores / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"parameter '{name}' must be a positive finite number, got {value}")


def _sample(policy: np.ndarray, context: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One draw per event from row ``context`` of ``policy`` (M, K) by inverse CDF, for uniforms ``u``.

    Row x's CDF is shifted by x so all rows form one increasing array: a single searchsorted serves every
    event in O(n log(M K)) without materialising an (n, K) array (K can be every ordered slate).
    """
    n_rows, width = policy.shape
    cdf = np.cumsum(policy, axis=1)
    cdf = cdf / cdf[:, -1:]                      # exact 1 at the end of each row despite rounding
    flat = (cdf + np.arange(n_rows)[:, None]).ravel()
    idx = np.searchsorted(flat, context + u, side="right") - context * width
    return np.clip(idx, 0, width - 1)


@dataclass(frozen=True)
class _World:
    """Reward means and the two policies' scores, fixed by the problem's seed (not the draw's)."""

    q: np.ndarray             # (M, K) reward means (contextual) or attractions (slate)
    logging_scores: np.ndarray  # (M, K)
    target_scores: np.ndarray   # (M, K)


def _world(n_contexts: int, n_actions: int, *, alignment: float, mean_reward: float, seed: int) -> _World:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    theta = rng.normal(size=(n_contexts, 4))
    phi = rng.normal(size=(n_actions, 4))
    signal = theta @ phi.T / 2.0
    q = 1.0 / (1.0 + np.exp(-(signal + math.log(mean_reward / (1 - mean_reward)))))
    noise = rng.normal(size=signal.shape)
    # The logger believes a noisy version of the truth: alignment 1 = same ranking as the target, 0 = unrelated.
    logging_scores = alignment * signal / signal.std() + math.sqrt(1 - alignment**2) * noise
    return _World(q, logging_scores, signal / signal.std())


@dataclass(frozen=True)
class ContextualProblem:
    """Single-action decisions with a known target value (see module docstring)."""

    n_events: int
    n_actions: int = 10
    logging_temperature: float = 1.0
    target_temperature: float = 1.0
    target: str = "softmax"          # "softmax" of the true means' logits, or "uniform"
    score_alignment: float = 0.3
    n_contexts: int = 50
    mean_reward: float = 0.2
    problem_seed: int = 0
    _world: _World = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("n_events", "n_actions", "n_contexts"):
            if getattr(self, name) < (2 if name == "n_actions" else 1):
                raise ValueError(f"parameter '{name}' is too small: {getattr(self, name)}")
        _check_positive(logging_temperature=self.logging_temperature, target_temperature=self.target_temperature)
        if self.target not in ("softmax", "uniform"):
            raise ValueError(f"parameter 'target' must be 'softmax' or 'uniform', got '{self.target}'")
        if not 0 <= self.score_alignment <= 1:
            raise ValueError(f"parameter 'score_alignment' must be in [0, 1], got {self.score_alignment}")
        if not 0 < self.mean_reward < 1:
            raise ValueError(f"parameter 'mean_reward' must be in (0, 1), got {self.mean_reward}")
        world = _world(self.n_contexts, self.n_actions, alignment=self.score_alignment,
                       mean_reward=self.mean_reward, seed=self.problem_seed)
        object.__setattr__(self, "_world", world)

    @property
    def logging_policy(self) -> np.ndarray:
        """μ(a|x), shape (n_contexts, n_actions)."""
        return _softmax(self._world.logging_scores, self.logging_temperature)

    @property
    def target_policy(self) -> np.ndarray:
        """π(a|x), shape (n_contexts, n_actions)."""
        if self.target == "uniform":
            return np.full_like(self._world.q, 1.0 / self.n_actions)
        return _softmax(self._world.target_scores, self.target_temperature)

    @property
    def truth(self) -> float:
        """V(π) = (1/M) Σ_x Σ_a π(a|x) q(x, a), exactly."""
        return float((self.target_policy * self._world.q).sum(axis=1).mean())

    def expected_ess_share(self) -> float:
        """ESS / n in expectation: 1 / E_μ[w²] (the second moment of the weights), exactly."""
        mu, pi = self.logging_policy, self.target_policy
        return 1.0 / float((pi * pi / mu).sum(axis=1).mean())

    def draw(self, seed: int) -> pl.DataFrame:
        rng = np.random.default_rng(seed)
        n = self.n_events
        mu, pi = self.logging_policy, self.target_policy
        context = rng.integers(0, self.n_contexts, n)
        action = _sample(mu, context, rng.random(n))
        reward = (rng.random(n) < self._world.q[context, action]).astype(np.float64)
        return pl.DataFrame({
            "event_id": np.arange(n, dtype=np.int64).astype(str),
            "position": np.zeros(n, dtype=np.int64),
            "action": action.astype(np.int64),
            "reward": reward,
            "pscore": mu[context, action],
            "target_pscore": pi[context, action],
            "reward_min": np.zeros(n),
            "reward_max": np.ones(n),
        })


def _slate_probabilities(policy: np.ndarray, slates: np.ndarray) -> np.ndarray:
    """Per-slot conditional probabilities p(s_k | x, s_<k) of every slate under sampling without replacement.

    ``policy`` (M, K), ``slates`` (S, L) → (M, S, L).
    """
    p = policy[:, slates]                                   # (M, S, L)
    used = np.cumsum(p, axis=-1) - p                         # mass already taken by earlier slots
    return p / (1.0 - used)


@dataclass(frozen=True)
class SlateProblem:
    """Slates of ``slate_length`` items out of ``n_items`` with cascade clicks (see module docstring)."""

    n_events: int
    n_items: int = 6
    slate_length: int = 3
    logging_temperature: float = 1.0
    target_temperature: float = 1.0
    score_alignment: float = 0.3
    n_contexts: int = 20
    mean_attraction: float = 0.15
    problem_seed: int = 0
    _world: _World = field(init=False, repr=False, compare=False)
    _slates: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_events < 1 or self.n_contexts < 1:
            raise ValueError("parameters 'n_events' and 'n_contexts' must be >= 1")
        if not 1 <= self.slate_length <= self.n_items:
            raise ValueError(f"parameter 'slate_length' must be in [1, n_items], got {self.slate_length}")
        if math.perm(self.n_items, self.slate_length) > 50_000:
            raise ValueError("parameters 'n_items'/'slate_length': more than 50,000 ordered slates to enumerate")
        _check_positive(logging_temperature=self.logging_temperature, target_temperature=self.target_temperature)
        if not 0 <= self.score_alignment <= 1:
            raise ValueError(f"parameter 'score_alignment' must be in [0, 1], got {self.score_alignment}")
        if not 0 < self.mean_attraction < 1:
            raise ValueError(f"parameter 'mean_attraction' must be in (0, 1), got {self.mean_attraction}")
        world = _world(self.n_contexts, self.n_items, alignment=self.score_alignment,
                       mean_reward=self.mean_attraction, seed=self.problem_seed)
        slates = np.array(list(itertools.permutations(range(self.n_items), self.slate_length)), dtype=np.int64)
        object.__setattr__(self, "_world", world)
        object.__setattr__(self, "_slates", slates)

    @property
    def logging_policy(self) -> np.ndarray:
        return _softmax(self._world.logging_scores, self.logging_temperature)

    @property
    def target_policy(self) -> np.ndarray:
        return _softmax(self._world.target_scores, self.target_temperature)

    def _slate_distribution(self, policy: np.ndarray) -> np.ndarray:
        """P(slate | x) for every enumerated ordered slate, (M, S)."""
        return _slate_probabilities(policy, self._slates).prod(axis=-1)

    @property
    def truth(self) -> float:
        """V(π) = (1/M) Σ_x Σ_s π(s|x) P(a click on s | x), by enumerating every ordered slate."""
        attraction = self._world.q[:, self._slates]                 # (M, S, L)
        click = 1.0 - np.prod(1.0 - attraction, axis=-1)
        return float((self._slate_distribution(self.target_policy) * click).sum(axis=1).mean())

    def expected_ess_share(self) -> float:
        """ESS / n of the joint slate weight in expectation: 1 / E_μ[w²], exactly."""
        mu = self._slate_distribution(self.logging_policy)
        pi = self._slate_distribution(self.target_policy)
        return 1.0 / float((pi * pi / mu).sum(axis=1).mean())

    def draw(self, seed: int) -> pl.DataFrame:
        rng = np.random.default_rng(seed)
        n, length = self.n_events, self.slate_length
        context = rng.integers(0, self.n_contexts, n)
        mu_slates = self._slate_distribution(self.logging_policy)            # (M, S)
        slate = _sample(mu_slates, context, rng.random(n))                  # index of the drawn slate
        items = self._slates[slate]                                          # (n, L)
        mu_slot = _slate_probabilities(self.logging_policy, self._slates)[context, slate]   # (n, L)
        pi_slot = _slate_probabilities(self.target_policy, self._slates)[context, slate]
        attraction = self._world.q[context[:, None], items]
        fires = rng.random((n, length)) < attraction
        # Cascade: the click is at the first slot that fires; later slots are never examined.
        first = np.where(fires.any(axis=1), fires.argmax(axis=1), length)
        reward = (np.arange(length)[None, :] == first[:, None]).astype(np.float64)
        cascade_mu, cascade_pi = np.cumprod(mu_slot, axis=1), np.cumprod(pi_slot, axis=1)
        rows = n * length
        return pl.DataFrame({
            "event_id": np.repeat(np.arange(n, dtype=np.int64), length).astype(str),
            "position": np.tile(np.arange(length, dtype=np.int64), n),
            "action": items.reshape(rows),
            "reward": reward.reshape(rows),
            "pscore": mu_slot.reshape(rows),
            "target_pscore": pi_slot.reshape(rows),
            "slate_pscore": np.repeat(cascade_mu[:, -1], length),
            "slate_target_pscore": np.repeat(cascade_pi[:, -1], length),
            "cascade_pscore": cascade_mu.reshape(rows),
            "cascade_target_pscore": cascade_pi.reshape(rows),
            "reward_min": np.zeros(rows),
            "reward_max": np.ones(rows),
        })
