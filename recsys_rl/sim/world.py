"""A seeded recommender world with context-dependent preferences, sessions and return visits.

The model (RecSim interest-evolution style; every constant is a ``SimConfig`` field):

Catalog. Each item i has one topic, a click appeal a_i, a quality q_i in [0, 1] and a length L_i. A share
of items is *clickbait*: appeal raised by ``clickbait_appeal``, quality ~ Beta(1.2, 6) instead of
Beta(4, 2). The host sees ``item_id``, categorical ``topic``, numeric ``appeal_signal`` (a_i + noise),
``length_s``, ``rating`` (a noisy 1-5 proxy of q_i), tags and a small topic embedding; its
``baseline_score`` is a weak, noisy popularity signal. Clickbait is not flagged.

Users and context. User u belongs to an observable segment whose prototype sets the latent topic
interests θ_u (plus individual noise). Each session has a device and a time of day. The utility of item i
in page view (u, context) is

    v_ui = w_int · θ_u[topic_i] + a_i + w_tod · A[time_of_day, topic_i] + w_dev · s_device · z(log L_i)

so the best item depends on the context (segment/history → θ_u, time of day, device). The host sees
``segment``, ``device``, ``time_of_day``, the decayed click-history shares ``hist_<topic>``,
``session_step``, ``past_visits`` and ``days_since_last_visit``; it never sees θ_u.

Choice. A conditional logit over the slate plus a no-click option with position-discounted
attractiveness: with d = ``position_decay`` and v_0 = ``no_click_utility``,

    P(click item at position k) = exp(v_k) d^k / (exp(v_0) + Σ_j exp(v_j) d^j),

at most one click per slate. The optimal myopic slate is the top-k by v in decreasing order (the click
probability increases in Σ_j exp(v_j) d^j, which that arrangement maximises).

Sessions. A session starts with a time budget B ~ ``session_budget_s`` · LogNormal(0, 0.2). A page view
without a click costs ``browse_cost_s``. A click on i yields dwell D = L_i (m + (1 − m) q_i) · LogNormal(0, 0.2)
with m = ``min_watch_fraction`` and costs ``click_cost_s`` + D (1 − ``budget_refill`` · q_i): good content
replenishes, clickbait drains. The clicked topic's interest drifts up towards ``interest_cap``. The session ends
when B ≤ 0 or after ``max_steps_per_session`` page views.

Returns. A session's quality is (Σ q of clicked items + ``no_click_quality``) / (clicks + 1); a user's
satisfaction is an exponential average of it, and each day a user visits with probability
sigmoid(``return_bias`` + ``return_quality_weight`` · (satisfaction − ``satisfaction_ref``)).
Clickbait is therefore a trap: it wins clicks now and loses dwell, session length and returns.

Determinism. All randomness comes from the seed; a run is reproducible when the calls happen in the
same order (one thread, or a host that serialises world calls in a fixed order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from recsys_rl.errors import InvalidInput
from recsys_rl.sim.config import SimConfig
from recsys_rl.sim.population import (
    DEVICES,
    TIMES_OF_DAY,
    Candidate,
    Catalog,
    Features,
    Population,
    make_catalog,
    make_population,
    static_utility,
    topic_names,
)


@dataclass(frozen=True, eq=False)
class PageViewTruth:
    """Simulator-only ground truth of a page view. A host or policy under test must not read it."""

    user_index: int
    candidate_index: np.ndarray  # (n_candidates,) catalog indices, aligned with PageView.candidates
    utility: np.ndarray  # (n_candidates,) v_ui at the time of the page view


@dataclass(frozen=True, eq=False)
class PageView:
    """One page view the host must fill with a slate."""

    request_index: int  # global counter, unique per world
    user_id: str
    context: Features
    candidates: tuple[Candidate, ...]
    slate_size: int
    day: int
    session_step: int  # 0-based page view index within the session
    truth: PageViewTruth = field(repr=False)

    @property
    def candidate_ids(self) -> list[str]:
        return [c.item_id for c in self.candidates]


@dataclass(frozen=True)
class Response:
    """What the user did with a served slate."""

    clicked_item_id: str | None
    clicked_position: int | None  # 0-based position in the served slate
    dwell_seconds: float  # 0 without a click
    session_ended: bool
    clicked_quality: float | None  # simulator-only truth, for analysis


@dataclass(frozen=True)
class DayReport:
    """The start of a new day: who visits, and whether yesterday's users came back."""

    day: int
    visitors: tuple[str, ...]  # users with a session today
    returned: dict[str, bool]  # for every user with a session yesterday: did they visit today


def slot_click_weights(utility: np.ndarray, position_decay: float) -> np.ndarray:
    """Position-discounted attractiveness exp(v_k) d^k of a slate's items, (..., slate length)."""
    return np.exp(utility) * position_decay ** np.arange(utility.shape[-1])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class World:
    """The simulator. ``next_page_view`` / ``respond`` play a day's sessions; ``next_day`` starts the next."""

    def __init__(self, config: SimConfig, seed: int) -> None:
        if not isinstance(config, SimConfig):
            raise InvalidInput("config", f"must be a SimConfig, got {type(config).__name__}")
        self.config = config
        self.seed = seed
        catalog_ss, users_ss, dynamics_ss, policy_ss, eval_ss = np.random.SeedSequence(seed).spawn(5)
        self.catalog: Catalog = make_catalog(config, np.random.default_rng(catalog_ss))
        self.population: Population = make_population(config, np.random.default_rng(users_ss))
        # Separate streams: oracle/random-slate evaluation and random policies must not shift the world's draws.
        self._rng = np.random.default_rng(dynamics_ss)
        self.policy_rng = np.random.default_rng(policy_ss)
        self._eval_rng = np.random.default_rng(eval_ss)
        self._static = static_utility(config, self.catalog, self.population)
        self._topics = topic_names(config.n_topics)
        self._hist_keys = tuple(f"hist_{t}" for t in self._topics)
        self._segment_names = tuple(f"seg{s}" for s in range(config.n_segments))
        self._exp_no_click = math.exp(config.no_click_utility)

        n_users, n_topics = config.n_users, config.n_topics
        self.interest = self.population.initial_interest.copy()
        self._hist = np.zeros((n_users, n_topics))
        self.satisfaction = np.full(n_users, config.satisfaction_ref)
        self.visits = np.zeros(n_users, dtype=np.int64)
        self._last_visit_day = np.full(n_users, -1, dtype=np.int64)  # day of the current/latest session
        self._prev_visit_day = np.full(n_users, -1, dtype=np.int64)  # day of the session before that
        self._budget = np.zeros(n_users)
        self._step = np.zeros(n_users, dtype=np.int64)
        self._clicks = np.zeros(n_users, dtype=np.int64)
        self._quality_sum = np.zeros(n_users)
        self._device = self.population.primary_device.copy()
        self._time_of_day = np.zeros(n_users, dtype=np.int64)
        self._open: list[int] = []  # users with an open session and no page view awaiting a response
        self._pending: dict[int, PageView] = {}
        self._ended_today: list[int] = []
        self._request_index = 0
        self.day = -1
        self.next_day()

    # ----------------------------------------------------------------------------------------- sessions
    @property
    def open_sessions(self) -> int:
        """Sessions still running today (including those awaiting a response)."""
        return len(self._open) + len(self._pending)

    @property
    def pending(self) -> int:
        """Page views handed out and not yet answered with ``respond``."""
        return len(self._pending)

    def next_page_view(self, user_id: str | None = None) -> PageView | None:
        """The next page view of today's open sessions (a uniformly drawn user unless ``user_id`` is given).

        Returns None when every open session is awaiting a response or today's sessions are over.
        """
        if user_id is None:
            if not self._open:
                return None
            j = int(self._rng.integers(len(self._open)))
            self._open[j], self._open[-1] = self._open[-1], self._open[j]
            u = self._open.pop()
        else:
            u = self._user_index(user_id)
            if u not in self._open:
                raise InvalidInput("user_id", f"{user_id!r} has no open session awaiting a page view")
            self._open.remove(u)
        cfg = self.config
        cand = self._rng.choice(cfg.n_items, size=cfg.n_candidates, replace=False)
        utility = (self._static[self._time_of_day[u], self._device[u], cand]
                   + cfg.interest_weight * self.interest[u, self.catalog.topic[cand]])
        hist = self._hist[u]
        total = float(hist.sum())
        numeric = dict(zip(self._hist_keys, (hist / total if total > 0 else hist).tolist()))
        numeric["session_step"] = float(self._step[u])
        numeric["past_visits"] = float(self.visits[u] - 1)
        last = self._prev_visit_day[u]
        numeric["days_since_last_visit"] = float(self.day - last) if last >= 0 else -1.0
        context = Features(
            numeric=numeric,
            categorical={"segment": self._segment_names[self.population.segment[u]],
                         "device": DEVICES[self._device[u]], "time_of_day": TIMES_OF_DAY[self._time_of_day[u]]},
        )
        all_candidates = self.catalog.candidates
        page_view = PageView(
            request_index=self._request_index,
            user_id=self.population.user_ids[u],
            context=context,
            candidates=tuple([all_candidates[i] for i in cand.tolist()]),
            slate_size=cfg.slate_size,
            day=self.day,
            session_step=int(self._step[u]),
            truth=PageViewTruth(user_index=u, candidate_index=cand, utility=utility),
        )
        self._request_index += 1
        self._pending[u] = page_view
        return page_view

    def respond(self, page_view: PageView, slate_item_ids: list[str] | tuple[str, ...]) -> Response:
        """The user's reaction to the served slate (ordered by position); advances the user's state."""
        u = page_view.truth.user_index
        if self._pending.get(u) is not page_view:
            raise InvalidInput("page_view", f"request {page_view.request_index} is not awaiting a response")
        positions = self._slate_positions(page_view, slate_item_ids)
        del self._pending[u]
        cfg = self.config
        cumulative = np.cumsum(slot_click_weights(page_view.truth.utility[positions], cfg.position_decay))
        draw = float(self._rng.random()) * (self._exp_no_click + float(cumulative[-1]))
        clicked_position: int | None = None
        dwell = 0.0
        quality: float | None = None
        if draw < cumulative[-1]:
            clicked_position = int(np.searchsorted(cumulative, draw, side="right"))
            item = int(page_view.truth.candidate_index[positions[clicked_position]])
            quality = float(self.catalog.quality[item])
            watch = cfg.min_watch_fraction + (1.0 - cfg.min_watch_fraction) * quality
            dwell = float(self.catalog.length_s[item]) * watch * math.exp(0.2 * float(self._rng.standard_normal()))
            self._budget[u] -= cfg.click_cost_s + dwell * (1.0 - cfg.budget_refill * quality)
            topic = self.catalog.topic[item]
            # Upwards only: an interest already above the cap (noise at day 0) stays where it is.
            self.interest[u, topic] += cfg.interest_drift * max(cfg.interest_cap - self.interest[u, topic], 0.0)
            self._hist[u] *= cfg.history_decay
            self._hist[u, topic] += 1.0
            self._clicks[u] += 1
            self._quality_sum[u] += quality
        else:
            self._budget[u] -= cfg.browse_cost_s
        self._step[u] += 1
        ended = bool(self._budget[u] <= 0 or self._step[u] >= cfg.max_steps_per_session)
        if ended:
            self._end_session(u)
        else:
            self._open.append(u)
        return Response(
            clicked_item_id=None if clicked_position is None else slate_item_ids[clicked_position],
            clicked_position=clicked_position,
            dwell_seconds=dwell,
            session_ended=ended,
            clicked_quality=quality,
        )

    def _end_session(self, u: int) -> None:
        cfg = self.config
        session_quality = (self._quality_sum[u] + cfg.no_click_quality) / (self._clicks[u] + 1)
        m = cfg.satisfaction_memory
        self.satisfaction[u] = m * self.satisfaction[u] + (1.0 - m) * session_quality
        self._ended_today.append(u)

    # --------------------------------------------------------------------------------------------- days
    def return_probability(self) -> np.ndarray:
        """Each user's probability of visiting on the next day, (n_users,)."""
        cfg = self.config
        return _sigmoid(cfg.return_bias + cfg.return_quality_weight * (self.satisfaction - cfg.satisfaction_ref))

    def next_day(self) -> DayReport:
        """Close today's sessions, draw who visits tomorrow and open their sessions."""
        if self._pending:
            raise InvalidInput("next_day", f"{len(self._pending)} page views still await respond()")
        for u in self._open:
            self._end_session(u)
        self._open = []
        yesterday = self._ended_today
        self._ended_today = []
        self.day += 1
        visiting = self._rng.random(self.config.n_users) < self.return_probability()
        visitors = np.flatnonzero(visiting)
        n = len(visitors)
        cfg = self.config
        self._budget[visitors] = cfg.session_budget_s * np.exp(0.2 * self._rng.standard_normal(n))
        self._step[visitors] = 0
        self._clicks[visitors] = 0
        self._quality_sum[visitors] = 0.0
        self._time_of_day[visitors] = self._rng.integers(0, len(TIMES_OF_DAY), size=n)
        primary = self._rng.random(n) < cfg.primary_device_prob
        other = self._rng.integers(0, len(DEVICES), size=n)
        self._device[visitors] = np.where(primary, self.population.primary_device[visitors], other)
        self.visits[visitors] += 1
        self._prev_visit_day[visitors] = self._last_visit_day[visitors]
        self._last_visit_day[visitors] = self.day
        self._open = visitors.tolist()
        ids = self.population.user_ids
        return DayReport(day=self.day, visitors=tuple(ids[u] for u in self._open),
                         returned={ids[u]: bool(visiting[u]) for u in yesterday})

    # --------------------------------------------------------------------------------------- oracles
    def expected_click_probs(self, page_view: PageView) -> np.ndarray:
        """Myopic oracle score per candidate (aligned with ``page_view.candidates``): the probability of
        a click if the item were shown alone at the top, exp(v_i) / (exp(v_0) + exp(v_i))."""
        w = np.exp(page_view.truth.utility)
        return w / (self._exp_no_click + w)

    def slate_click_prob(self, page_view: PageView, slate_item_ids: list[str] | tuple[str, ...]) -> float:
        """Exact probability that the served slate (ordered) gets a click."""
        positions = self._slate_positions(page_view, slate_item_ids)
        total = float(slot_click_weights(page_view.truth.utility[positions], self.config.position_decay).sum())
        return total / (self._exp_no_click + total)

    def oracle_slate(self, page_view: PageView, slate_size: int | None = None) -> list[str]:
        """The slate with the highest click probability: the top-k candidates by utility, best first."""
        k = self._slate_size(page_view, slate_size)
        order = np.argsort(-page_view.truth.utility, kind="stable")[:k]
        return [page_view.candidates[j].item_id for j in order.tolist()]

    def random_slate(self, page_view: PageView, slate_size: int | None = None,
                     rng: np.random.Generator | None = None) -> list[str]:
        """A uniformly random ordered slate (from ``rng``, default the world's policy stream)."""
        k = self._slate_size(page_view, slate_size)
        picks = (rng or self.policy_rng).choice(len(page_view.candidates), size=k, replace=False)
        return [page_view.candidates[j].item_id for j in picks.tolist()]

    def random_slate_click_prob(self, page_view: PageView, slate_size: int | None = None,
                                n_samples: int = 64) -> float:
        """Expected click probability of a uniformly random slate, by Monte Carlo over ``n_samples`` slates
        drawn from a dedicated stream (so calling it never changes the world's future)."""
        k = self._slate_size(page_view, slate_size)
        n = len(page_view.candidates)
        picks = np.argsort(self._eval_rng.random((n_samples, n)), axis=1)[:, :k]
        totals = slot_click_weights(page_view.truth.utility[picks], self.config.position_decay).sum(axis=1)
        return float((totals / (self._exp_no_click + totals)).mean())

    def item_quality(self, item_ids: list[str] | tuple[str, ...]) -> np.ndarray:
        """Hidden quality of items, for oracle policies and analysis."""
        return self.catalog.quality[[self._item_index(i) for i in item_ids]]

    # ----------------------------------------------------------------------------------------- helpers
    def _slate_size(self, page_view: PageView, slate_size: int | None) -> int:
        k = page_view.slate_size if slate_size is None else slate_size
        if not 1 <= k <= len(page_view.candidates):
            raise InvalidInput("slate_size", f"must be in [1, {len(page_view.candidates)}], got {k}")
        return k

    def _slate_positions(self, page_view: PageView, slate_item_ids: list[str] | tuple[str, ...]) -> np.ndarray:
        if not 1 <= len(slate_item_ids) <= page_view.slate_size:
            raise InvalidInput("slate_item_ids",
                               f"must hold 1 to {page_view.slate_size} items, got {len(slate_item_ids)}")
        index = {c.item_id: j for j, c in enumerate(page_view.candidates)}
        positions = []
        for k, item_id in enumerate(slate_item_ids):
            j = index.pop(item_id, None)  # pop: a repeated item is no longer found
            if j is None:
                reason = "is repeated" if item_id in slate_item_ids[:k] else "is not a candidate of this page view"
                raise InvalidInput(f"slate_item_ids[{k}]", f"{item_id!r} {reason}")
            positions.append(j)
        return np.asarray(positions)

    def _user_index(self, user_id: str) -> int:
        try:
            index = int(user_id.removeprefix("user_"))
        except ValueError:
            index = -1
        if not 0 <= index < self.config.n_users or self.population.user_ids[index] != user_id:
            raise InvalidInput("user_id", f"unknown user {user_id!r}")
        return index

    def _item_index(self, item_id: str) -> int:
        try:
            index = int(item_id.removeprefix("item_"))
        except ValueError:
            index = -1
        if not 0 <= index < self.config.n_items or self.catalog.item_ids[index] != item_id:
            raise InvalidInput("item_ids", f"unknown item {item_id!r}")
        return index
