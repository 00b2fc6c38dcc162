"""The one decision path: a validated request and a surface's decision state → scores → a drawn slate, or the
baseline with a reason. Serving (``SurfacePolicy.rank``), replay's target propensities (``evaluators.replay``) and
shadow scoring all call :func:`score`; serving draws with :func:`decide`, replay asks :func:`target_propensities`
for the probability of a logged slate. "Replayed exactly as served" holds because there is no second copy.

    score(a) = model_score(a) + λ · long_term_value(a)        λ = DecisionPolicy.long_term_weight

The slate is drawn by :func:`recsys_rl.serving.exploration.sample_slate` with the explorer bounded by the cap in
force and the draw key blake2b(server_seed, surface, request_id), so a decision is reproducible from its event
(invariant 5). When the model raises or returns non-finite or misshapen scores, or the deadline passes before
sampling, or the caller says the baseline must serve (e.g. the log cannot take the event), the baseline serves
(invariant 4): candidates by baseline score descending, ties by index, each slot with propensity 1 — exactly the
Greedy explorer over baseline scores, which is how replay scores the baseline. The baseline score is the host's
baseline_score, or a surface's learned LambdaRank baseline (``DecisionPolicy.baseline``, scored only when the
baseline serves; the host's score stands in if it fails — :func:`policy_baseline`). InvalidInput is never a fallback:
it propagates so the server answers INVALID_ARGUMENT naming the field.

Rollout stages (``SurfacePolicy.rank``) use the same functions: a canary user's slate is :func:`decide` with mode
SERVING_MODE_CANARY; a baseline by the rollout's choice (stage baseline, a control user, the served slate at stage
shadow) is :func:`decide_baseline`, which checks the request but does not score; the shadow's own decision is
:func:`decide` with the same draw key live serving would use.

The long-term value is computed from a :class:`LongTermInput` (model version and the user's click history). Serving
passes none and gets back the input it used, which is logged with the decision; replay passes the logged one, so a
λ > 0 surface replays with the model version and history it was served with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from recsys_rl.config import ExplorationConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.retrieval.outside import sample_with_outside
from recsys_rl.retrieval.request import RetrievalResult
from recsys_rl.serving.candidates import CandidateView, reading
from recsys_rl.serving.exploration import Explorer, Greedy, effective_epsilon, sample_slate, slate_propensities
from recsys_rl.shield.rules import NO_SHIELD, RequestShield, ShieldRules


@dataclass(frozen=True)
class LongTermInput:
    """What a long-term value was computed from: the model version ("" = none loaded) and the user's history."""

    model_version: str
    history: tuple[pb.Candidate, ...] = ()


class LongTermValue(Protocol):
    """Long-term value per candidate (e.g. a slate-RL model), shape (n,), in candidate order.

    ``logged`` None: the live state (current model, the user's history as this process knows it); otherwise the
    value recomputed from that input. Returns the values and the input they were computed from.
    """

    def evaluate(self, request: pb.RankRequest,
                 logged: LongTermInput | None = None) -> tuple[np.ndarray, LongTermInput]: ...


class NoLongTermValue:
    """Null object: no long-term term, the bandit alone decides."""

    def evaluate(self, request: pb.RankRequest,
                 logged: LongTermInput | None = None) -> tuple[np.ndarray, LongTermInput]:
        return np.zeros(len(request.candidates)), LongTermInput("")


class Scorer(Protocol):
    """Immediate-reward scores per candidate (higher = better); raises InvalidInput for a bad request field.

    While the decision path scores (or checks) a request, ``recsys_rl.serving.candidates.current_view(request)``
    gives the request's candidates as validation read them, so a scorer need not read the protobuf again (the VW
    bandit keys its item cache by them). A scorer whose class sets ``reads_view = True`` reads candidates only
    through that view: it is handed the request as sent (candidates sent by id only stay so), so no completed
    request is built for it; any other scorer is handed the request with its candidates completed from the catalog.
    """

    def score(self, request: pb.RankRequest) -> np.ndarray: ...


def _score(scorer: Scorer, request: pb.RankRequest, candidates: CandidateView | None) -> np.ndarray:
    if candidates is None:
        return scorer.score(request)
    return reading(candidates, scorer.score, completed=not getattr(scorer, "reads_view", False))


def _completed(request: pb.RankRequest, candidates: CandidateView | None) -> pb.RankRequest:
    """The request with its candidates completed from the catalog, for a consumer that reads their features."""
    return request if candidates is None else candidates.request


def baseline_scores(request: pb.RankRequest) -> np.ndarray:
    return np.fromiter((c.baseline_score for c in request.candidates), np.float64, len(request.candidates))


class BaselineScorer:
    """The host's own scores: with the Greedy explorer this is the baseline policy."""

    def score(self, request: pb.RankRequest) -> np.ndarray:
        return baseline_scores(request)


class ConstantScorer:
    """All candidates equal (uniform targets: the explorer alone decides)."""

    def score(self, request: pb.RankRequest) -> np.ndarray:
        return np.zeros(len(request.candidates))


@dataclass(frozen=True)
class DecisionPolicy:
    """Everything one decision is made with, frozen: a model swap or a cap change makes a new one."""

    surface: str
    policy_version: str
    scorer: Scorer
    explorer: Explorer
    exploration: ExplorationConfig
    cap: float
    server_seed: int = 0
    long_term: LongTermValue = field(default_factory=NoLongTermValue)
    long_term_weight: float = 0.0
    shield: ShieldRules = NO_SHIELD  # the surface's business rules (recsys_rl.shield); every path obeys them
    # What orders the baseline (fallback, stage baseline, shadow's served slate, canary control): the host's score,
    # or a published LambdaRank model (recsys_rl.baseline) named by ``baseline_version`` ("" = the host's).
    baseline: Scorer = field(default_factory=BaselineScorer)
    baseline_version: str = ""

    @property
    def epsilon(self) -> float:
        return effective_epsilon(self.exploration, self.cap)


class DecisionSlot(NamedTuple):
    """One served slot. Immutable, compared by value; a NamedTuple rather than a frozen dataclass because Rank builds
    one per slot and a NamedTuple is ~3x cheaper to build (see ``exploration.SlotDraw``)."""

    candidate_index: int
    item_id: str
    propensity: float
    score: float
    explored: bool
    exploration_mass: float
    draw: float
    outside_probability: float = 0.0  # P(this slot drew from outside the retrieved set), 0 without that


@dataclass
class Decision:
    """A served slate and everything the DecisionEvent needs to reproduce it."""

    slots: list[DecisionSlot]
    slate_propensity: float
    policy_version: str
    serving_mode: int  # ranking_service_pb2.ServingMode value
    fallback_reason: str
    surface: str
    algorithm: str
    epsilon: float
    temperature: float
    gamma: float
    cap: float
    server_seed: int
    draw_key: int
    shield_rules_fired: list[str] = field(default_factory=list)
    shield_version: str = ""
    long_term: LongTermInput | None = None  # set on surfaces that blend a long-term value (λ ≠ 0)
    long_term_weight: float = 0.0
    rollout_stage: str = ""  # the surface's rollout stage when decided ("" outside serving, e.g. replay)
    shadow: Decision | None = None  # stage shadow: the learned policy's own decision on the request (not served)
    shadow_latency_us: int = 0  # what deciding the shadow added to the request
    baseline_version: str = ""  # the learned baseline that ordered this slate ("" = host score, or not the baseline)
    # The scores the slate was drawn from (model + λ·long-term), logged so a what-if at another cap needs no
    # re-scoring (evaluators.replay); None when the baseline served. A list, not the array: decisions compare by value.
    candidate_scores: list[float] | None = None
    retrieval: RetrievalResult | None = None  # how the candidates were retrieved (a retrieval request only)


@dataclass(frozen=True)
class Scored:
    """Scores to draw from, or the reason the baseline must serve instead (``scores`` None)."""

    scores: np.ndarray | None
    fallback_reason: str = ""
    long_term: LongTermInput | None = None


def score(policy: DecisionPolicy, request: pb.RankRequest, *, deadline: float | None = None,
          long_term_input: LongTermInput | None = None, candidates: CandidateView | None = None) -> Scored:
    """The policy's scores for ``request`` (validated by ``requests.validate_rank_request``).

    ``deadline``: a ``time.perf_counter()`` instant; past it the baseline serves. Replay passes none: a target
    that would have run out of time is still credited with its intended slate. ``candidates``: the request's
    candidates as already read (serving), for a scorer that can use them.
    """
    try:
        scores = _score(policy.scorer, request, candidates)
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - any model failure must still serve a slate
        return Scored(None, f"model_error: {type(exc).__name__}: {exc}")
    long_term = None
    if policy.long_term_weight != 0.0:
        try:
            values, long_term = policy.long_term.evaluate(_completed(request, candidates), long_term_input)
            scores = scores + policy.long_term_weight * np.asarray(values, dtype=np.float64)
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001
            return Scored(None, f"long_term_error: {type(exc).__name__}: {exc}", long_term)
    if scores.shape != (len(request.candidates),) or not np.isfinite(scores).all():
        return Scored(None, "model_error: non-finite or misshapen scores", long_term)
    if deadline is not None:
        late = time.perf_counter() - deadline
        if late > 0:
            return Scored(None, f"deadline: passed {late * 1e3:.3f} ms before sampling", long_term)
    return Scored(scores, "", long_term)


def decide(policy: DecisionPolicy, request: pb.RankRequest, baseline: np.ndarray, *, draw_key: int,
           deadline: float | None = None, serve_baseline: str = "", mode: int = pb.SERVING_MODE_LEARNED,
           candidates: CandidateView | None = None) -> Decision:
    """Score and draw a slate; the baseline (with the reason) when scoring fails or ``serve_baseline`` says so.

    ``mode``: the serving mode of a drawn slate (SERVING_MODE_CANARY for a canary user; a fallback is always
    SERVING_MODE_BASELINE_FALLBACK). The learned policy is scored even when ``serve_baseline`` is set: the request
    is validated the same way on every path (a baseline by the rollout's choice is :func:`decide_baseline`).
    ``candidates``: the request's candidates as validation read them (read here when not given).
    """
    if candidates is None:
        candidates = CandidateView(request)
    # ShieldInfeasible (FAILED_PRECONDITION) before anything is scored
    shield = policy.shield.for_request(candidates)
    scored = score(policy, request, deadline=deadline, candidates=candidates)
    reason = serve_baseline or scored.fallback_reason
    if reason or scored.scores is None:
        return _baseline_decision(policy, request, baseline, reason, draw_key, scored.long_term,
                                  pb.SERVING_MODE_BASELINE_FALLBACK, shield, candidates)
    scores = scored.scores
    item_ids = candidates.item_ids
    retrieval = candidates.retrieval
    plan = None if retrieval is None or shield is not None else retrieval.plan
    values = scores.tolist()  # each float(scores[i]), read once for the slots and the log
    if plan is not None:  # exploration beyond the retrieved set (recsys_rl.retrieval.outside): exact propensities
        planned, slate_propensity = sample_with_outside(scores, plan, policy.explorer, slate_size=request.slate_size,
                                                        draw_key=draw_key)
        slots = [DecisionSlot(s.index, item_ids[s.index], s.propensity, values[s.index], s.explored,
                              s.exploration_mass, s.draw, s.outside_probability) for s in planned]
    else:
        draw = sample_slate(scores, request.slate_size, policy.explorer, draw_key=draw_key, feasibility=shield)
        slots = [
            DecisionSlot(s.index, item_ids[s.index], s.propensity, values[s.index], s.explored,
                         s.exploration_mass, s.draw)
            for s in draw.slots
        ]
        slate_propensity = draw.slate_propensity
    decision = _decision(policy, slots, slate_propensity, mode, "", draw_key, scored.long_term, shield)
    decision.candidate_scores = values
    return decision


def check_request(policy: DecisionPolicy, request: pb.RankRequest, candidates: CandidateView | None = None) -> None:
    """Raises InvalidInput for whatever the scorer would reject, without scoring when the scorer can check alone.

    A baseline served by choice must refuse the same requests as the learned path (a host's request must not be
    valid at one rollout stage and invalid at the next), and a bad feature value must never reach the log the
    learner reads. ``VWBandit.validate`` checks features through its item cache without predicting; a scorer
    without ``validate`` is scored and its result dropped.
    """
    validate = getattr(policy.scorer, "validate", None)
    if validate is not None:
        if candidates is None:
            validate(request)
        else:
            reading(candidates, validate, completed=not getattr(policy.scorer, "reads_view", False))
        return
    try:
        _score(policy.scorer, request, candidates)
    except InvalidInput:
        raise
    except Exception:  # noqa: BLE001 - only validation is asked of it here; the baseline serves regardless
        pass


def decide_baseline(policy: DecisionPolicy, request: pb.RankRequest, baseline: np.ndarray, *, draw_key: int,
                    mode: int, check: bool = True, reason: str = "",
                    candidates: CandidateView | None = None) -> Decision:
    """The baseline by the rollout's choice (``mode`` SERVING_MODE_BASELINE or _SHADOW), propensity 1; or, with a
    ``reason`` and SERVING_MODE_BASELINE_FALLBACK, the baseline at once for a request with no time left to score.

    The model is not scored: nothing needs its scores, and a surface reverted for a slow or failing model (or a
    process past its capacity) must not keep paying for it. ``check``: validate the request first
    (:func:`check_request`); False only when the caller runs the learned policy on the same request anyway
    (shadow), which validates it. ``candidates``: the request's candidates as validation read them.
    """
    if candidates is None:
        candidates = CandidateView(request)
    shield = policy.shield.for_request(candidates)
    if check:
        check_request(policy, request, candidates)
    return _baseline_decision(policy, request, baseline, reason, draw_key, None, mode, shield, candidates)


def baseline_order(baseline: np.ndarray, slate_size: int, shield: RequestShield | None = None) -> np.ndarray:
    """Baseline descending, ties by the lower index: the Greedy explorer's order over baseline scores.

    With a shield: the Greedy explorer slot by slot over the feasible candidates (pins in place), so the baseline
    obeys the same rules as the learned policy and replays the same way.
    """
    if shield is not None:
        return np.asarray(sample_slate(baseline, slate_size, _GREEDY, draw_key=0, feasibility=shield).indices,
                          dtype=np.int64)
    # lexsort's last key is primary.
    return np.lexsort((np.arange(baseline.size), -baseline))[: min(slate_size, baseline.size)]


def policy_baseline(policy: DecisionPolicy, request: pb.RankRequest, host: np.ndarray | None = None, *,
                    candidates: CandidateView | None = None) -> tuple[np.ndarray, str, str]:
    """The scores the baseline orders ``request`` by: (scores, baseline_version, error).

    A learned baseline (``policy.baseline_version``) is scored only here, i.e. only when the baseline serves: a
    learned decision never pays for it. If it raises or returns non-finite or misshapen scores, the host's
    baseline_score orders instead: version "" and ``error`` says why (the decision's reason carries it).
    ``host``: the host scores when the caller has them (``validate_rank_request``); ``candidates``: the request's
    candidates as Rank read them (the learned baseline reads the completed request).
    """
    if host is None:
        host = baseline_scores(request)
    if not policy.baseline_version:
        return host, "", ""
    try:
        scores = np.asarray(policy.baseline.score(_completed(request, candidates)), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - the baseline is the last resort: the host's score stands in
        return host, "", f"baseline_error: {policy.baseline_version}: {type(exc).__name__}: {exc}"
    if scores.shape != (len(request.candidates),) or not np.isfinite(scores).all():
        return host, "", f"baseline_error: {policy.baseline_version}: non-finite or misshapen scores"
    return scores, policy.baseline_version, ""


def _baseline_decision(policy: DecisionPolicy, request: pb.RankRequest, baseline: np.ndarray, reason: str,
                       draw_key: int, long_term: LongTermInput | None, mode: int,
                       shield: RequestShield | None, candidates: CandidateView) -> Decision:
    """``baseline``: the host's scores; a surface with a learned baseline is ordered by it (:func:`policy_baseline`)."""
    scores, version, error = policy_baseline(policy, request, baseline, candidates=candidates)
    item_ids = candidates.item_ids
    if error:
        reason = f"{reason}; {error}" if reason else error
    slots = [
        DecisionSlot(int(i), item_ids[int(i)], 1.0, float(scores[i]), False, 0.0, 0.0)
        for i in baseline_order(scores, request.slate_size, shield)
    ]
    decision = _decision(policy, slots, 1.0, mode, reason, draw_key, long_term, shield)
    decision.baseline_version = version
    return decision


def _decision(policy: DecisionPolicy, slots: list[DecisionSlot], slate_propensity: float, mode: int, reason: str,
              draw_key: int, long_term: LongTermInput | None, shield: RequestShield | None = None) -> Decision:
    cfg = policy.exploration
    fired = shield.explain([s.candidate_index for s in slots]) if shield is not None else []
    return Decision(
        slots=slots, slate_propensity=slate_propensity, policy_version=policy.policy_version, serving_mode=mode,
        fallback_reason=reason, surface=policy.surface, algorithm=cfg.algorithm, epsilon=policy.epsilon,
        temperature=cfg.temperature, gamma=cfg.gamma, cap=policy.cap, server_seed=policy.server_seed,
        draw_key=draw_key, long_term=long_term if policy.long_term_weight != 0.0 else None,
        long_term_weight=policy.long_term_weight, shield_rules_fired=fired, shield_version=policy.shield.version,
    )


_GREEDY = Greedy()


@dataclass(frozen=True)
class TargetScores:
    """What a target policy would have done on a logged request: its scores and explorer (replay)."""

    scores: np.ndarray
    explorer: Explorer
    fell_back: bool  # the target's model failed and the baseline stood in, as in serving


def target_scores(policy: DecisionPolicy, request: pb.RankRequest, *,
                  long_term_input: LongTermInput | None = None) -> TargetScores:
    """The scores and explorer ``policy`` draws with on ``request`` (the baseline's when its model fails)."""
    scored = score(policy, request, long_term_input=long_term_input)
    if scored.scores is None:  # the policy's own baseline stands in, as it would serve (policy_baseline)
        return TargetScores(policy_baseline(policy, request)[0], _GREEDY, True)
    return TargetScores(scored.scores, policy.explorer, False)


def target_propensities(policy: DecisionPolicy, request: pb.RankRequest, logged_indices: list[int], *,
                        long_term_input: LongTermInput | None = None) -> tuple[np.ndarray, TargetScores]:
    """P(logged slot k | context, logged slots < k) under ``policy``, for every k, bit for bit as drawn."""
    target = target_scores(policy, request, long_term_input=long_term_input)
    shield = policy.shield.for_request(request)  # the same feasibility serving drew with
    return slate_propensities(target.scores, logged_indices, target.explorer, feasibility=shield), target


__all__ = [
    "BaselineScorer", "ConstantScorer", "Decision", "DecisionPolicy", "DecisionSlot", "LongTermInput",
    "LongTermValue", "NoLongTermValue", "Scored", "Scorer", "TargetScores", "baseline_order", "baseline_scores",
    "check_request", "decide", "decide_baseline", "policy_baseline", "score", "target_propensities", "target_scores",
]
