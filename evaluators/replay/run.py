"""Counterfactual replay: logged decisions + a target policy → the bandit-feedback table.

For every logged decision of a surface, the RankRequest is rebuilt from the DecisionEvent, the target policy
decides it through the serving decision path (:mod:`evaluators.replay.targets`), and :func:`slate_propensities` gives, for
each logged slot k, the target's probability of the logged item given the logged items of slots < k — the same
conditioning as the logged propensity. No log is written, no model published, the registry's LATEST untouched.

Table columns (``shared/design/feedback-table.md``), one row per (decision, position), in log order:

    event_id, position, action (logged item id), reward (join_rewards with the surface's RewardDefinition),
    reward_min, reward_max (the surface's declared reward range; ``evaluators.table`` checks reward lies in it),
    pscore (logged), target_pscore,
    cascade_pscore = Π_{j ≤ k} pscore_j,   cascade_target_pscore = Π_{j ≤ k} target_pscore_j,
    slate_pscore   = Π_j pscore_j,         slate_target_pscore   = Π_j target_pscore_j,
    diagnostics: user_id, served_at, policy_version (logged), serving_mode (logged), n_candidates,
    target_fallback (the target model failed on this request and the baseline stood in, as in serving).
    With ``reward_model``: q_hat (cross-fitted q̂ of the logged item) and
    q_hat_target = Σ_{a remaining at slot k} π(a | x, logged prefix) · q̂(x, a, k).

Marginal columns (``marginal_pscore``) are omitted on purpose: the probability that item a lands at position
k under sequential sampling without replacement sums over every ordered prefix (exponential in k), and a Monte
Carlo estimate in a weight's denominator would bias every estimator that uses it. Use the cascade columns.

Logged scores: a decision served by the target's own model version (``logged``, or ``current``/a version on the
decisions that version served) logs the scores it was drawn from; they are used as they are (:func:`reusable_scores`),
so a what-if at another cap or exploration setting runs no VW and parses no features (a shield's feasibility still
reads the request), and capped ε-greedy is computed for a chunk of decisions at once (:mod:`evaluators.replay.batched`).
The table is the one re-scoring gives (``logged_scores=False``; tests/evaluators/replay/test_logged_scores.py).
Such a replay reads each closed segment's what-if companion (:mod:`logging_schema.companions`: the records without
the decisions' context and candidates, ~8% of the bytes) when it is complete and consistent, and a decision's full
record, at its offset in the segment, only when it must be re-scored or shielded; the table is the same either way.
A segment whose columnar companion is usable and whose every decision is the common what-if (capped ε-greedy from its
own scores, unshielded) is replayed at once from its columns instead (:mod:`evaluators.replay.columnar`).

Decisions that explored outside the retrieved set (``DecisionEvent.retrieval.outside_share`` > 0) get their
per-slot target propensities from :mod:`evaluators.replay.outside` (outside slots ``q / #left outside``, inside
slots ``(1 − q)·p_inside``, ``q = outside_share · the target's cap``), per decision rather than batched.

Not replayed: the serving deadline (a target that would have run out of budget is still credited with its
intended slate). Slate-RL long-term values (λ ≠ 0) are recomputed from each decision's logged long-term input (the
slate-RL version and the user's click history it was served with), for every target.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from logging_schema.companions import InSegment, iter_located, iter_segment_located
from logging_schema.views import ReplayEntry, ReplayRecord
from logging_schema.reader import ReadStats, gap_of, iter_records, iter_segment, log_streams
from logging_schema.tables import JoinStats, join_rewards, outcomes_frame
from recsys_rl.config import ConfigError, ServiceConfig, SurfaceConfig, default_config, load_config
from recsys_rl.errors import InvalidInput
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.serving.decision import (
    DecisionPolicy, LongTermInput, LongTermValue, NoLongTermValue, TargetScores, target_propensities, target_scores,
)
from recsys_rl.serving.exploration import slate_propensities
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from evaluators.replay.batched import PendingBatch, batchable
from evaluators.replay.columnar import ColumnarReplay, SegmentFrames, located_or_frames, stream_located_or_frames
from evaluators.replay.columns import DecisionColumns
from evaluators.replay.embedding import (
    EmbeddingSpec, PolicyScores, embedding_frame, feature_labeller, iter_decisions, kmeans_labeller,
    parse_embedding_spec, policy_scores,
)
from evaluators.replay.outside import explored_outside, outside_propensities
from evaluators.replay.places import MERGE_KEY, Places, wanted_outcome
from evaluators.replay.q_hat import CandidateRows, fit_and_score
from evaluators.replay.request import rank_request
from evaluators.replay.shield import ReplayShield, what_if_rules
from recsys_rl.shield.rules import ShieldRules
from evaluators.replay.targets import BASELINE_SERVED, PolicySpec, TargetPolicy, parse_policy_spec, resolve_policy

ENGINES = ("local", "polars", "spark")  # polars: another name of local (as ``evaluate --engine``)
CHUNK_DECISIONS = 20_000  # decisions turned into a DataFrame chunk at a time (bounds Python-object memory)


@dataclass
class ReplayStats:
    """What a replay read and did."""

    decisions: int = 0
    rows: int = 0
    other_surfaces: int = 0  # decisions of other surfaces, skipped
    empty_slates: int = 0  # decisions with no slot (no row in the table)
    before_since: int = 0  # decisions served before ``since``, skipped
    target_fallbacks: int = 0  # decisions where the target model failed and the baseline stood in
    # Decisions whose target propensities came from the scores logged with them (same model version and λ: no
    # re-scoring), and those the target scored afresh (another version, baseline/uniform, or no logged scores).
    from_logged_scores: int = 0
    rescored: int = 0
    columnar_segments: int = 0  # segments replayed at once from their columnar companions (evaluators.replay.columnar)
    support_violations: int = 0  # rows with target_pscore > 0 but pscore 0
    # Decisions of this surface the server answered while its log could not take records (LogGap records): they are
    # not in the log, so the table does not cover them; ``gaps`` is how many gap records named the surface.
    unlogged_decisions: int = 0
    gaps: int = 0
    read: ReadStats = field(default_factory=ReadStats)
    join: JoinStats = field(default_factory=JoinStats)



def _surface_config(config: ServiceConfig | None, surface: str) -> SurfaceConfig:
    config = config or default_config()
    found = config.surface(surface)
    if found is None:
        raise InvalidInput("surface", f"unknown surface {surface!r} (configured: {', '.join(sorted(config.surfaces))})")
    return found


def replay_long_term(data_dir: Path, surface_config: SurfaceConfig) -> LongTermValue:
    """The slate-RL values of a λ ≠ 0 surface, recomputed per decision from its logged long-term input."""
    if surface_config.model.long_term_weight == 0:
        return NoLongTermValue()
    from recsys_rl.slateq.serving import LoggedSlateQ

    models = data_dir / "models"
    if not models.is_dir():
        raise InvalidInput("policy", f"the surface blends a long-term value but there is no registry under {models}")
    return LoggedSlateQ(models)


def logged_long_term(event: object) -> LongTermInput | None:
    """The long-term input a logged decision was scored with (the table view keeps it as raw bytes)."""
    raw: bytes = event.long_term  # type: ignore[attr-defined]
    if not raw:
        return None
    state = events_pb2.LongTermState.FromString(raw)
    return LongTermInput(state.model_version, tuple(state.history))


def _reusable_raw(event: object, policy: DecisionPolicy, n_candidates: int) -> object | None:
    """The scores logged with ``event`` (ReplayRecord: packed bytes; DecisionEvent: its repeated field) when
    ``policy`` would compute exactly them (:func:`reusable_scores`), unchecked for finiteness; else None."""
    raw = event.candidate_scores  # type: ignore[attr-defined]
    count = len(raw) // 8 if isinstance(raw, bytes) else len(raw)
    if (not raw or count != n_candidates or (isinstance(raw, bytes) and len(raw) % 8)
            or event.serving_mode in BASELINE_SERVED  # type: ignore[attr-defined]
            or event.policy_version != policy.policy_version):  # type: ignore[attr-defined]
        return None
    long_term: bytes = event.long_term  # type: ignore[attr-defined]
    weight = events_pb2.LongTermState.FromString(long_term).weight if long_term else 0.0
    return raw if weight == policy.long_term_weight else None


def _finite(raw: object) -> np.ndarray | None:
    scores = np.frombuffer(raw, dtype="<f8").astype(np.float64) if isinstance(raw, bytes) else np.array(raw, np.float64)
    return scores if np.isfinite(scores).all() else None  # a damaged record: re-scoring decides what serves


def reusable_scores(event: object, policy: DecisionPolicy) -> np.ndarray | None:
    """The scores logged with ``event`` when ``policy`` would compute exactly them, else None (re-score).

    They are the target's own scores when the target is the model version that served the decision (a model
    target's ``policy_version`` is its registry version; baseline and uniform targets never match one) and blends
    the long-term value with the same λ (the value itself is recomputed from the logged long-term input either
    way, so it is the logged one). Baseline-served decisions log no scores; a malformed count or a score that is not
    finite re-scores. ``event``: a DecisionEvent, or a ReplayRecord's (scores as the packed array's bytes).
    """
    raw = _reusable_raw(event, policy, len(event.candidates))  # type: ignore[attr-defined]
    return None if raw is None else _finite(raw)


def replay(
    data_dir: Path | str,
    spec: str | PolicySpec,
    *,
    surface: str = "default",
    config: ServiceConfig | None = None,
    reward_model: bool = False,
    progress: bool = True,
    stats: ReplayStats | None = None,
    since: float | None = None,
    shield: str | ShieldRules | None = None,
    logged_scores: bool = True,
    embedding: str | None = None,
    companions: bool = True,
) -> pl.DataFrame:
    """The bandit-feedback table of ``spec`` on the logs under ``data_dir/logs`` (columns: module docstring).

    Reads the log once, streaming: every ``CHUNK_DECISIONS`` decisions become a DataFrame chunk, so memory holds
    the output table, the outcomes and one chunk of protobufs. ``since`` (unix seconds) keeps only decisions
    served from then on, e.g. once the logging policy settled. ``shield``: a what-if applied to every decision
(``none``, a rules TOML, a stored version, or ShieldRules); default: each decision's logged rules version
(:mod:`evaluators.replay.shield`). Raises InvalidInput for a bad spec, surface or
    data dir. Pass ``stats`` to get the counts (fallbacks, skipped decisions, damaged records, join counts).
    ``logged_scores``: take the target's scores from the log where they are its own (:func:`reusable_scores`:
    ``logged@cap=X`` needs no model); False re-scores every decision (the reference the fast path is tested against).
    ``embedding``: ``feature:NAME`` or ``kmeans:C`` adds the MIPS columns (:mod:`evaluators.replay.embedding`).
    ``companions``: with ``logged_scores``, read segments' what-if companions where complete
    (:mod:`logging_schema.companions`); False reads every record whole (the reference they are tested against).
    """
    stats = stats if stats is not None else ReplayStats()
    parsed = parse_policy_spec(spec) if isinstance(spec, str) else spec
    embedding_spec = parse_embedding_spec(embedding) if embedding is not None else None
    surface_config = _surface_config(config, surface)
    log_dir = Path(data_dir) / "logs"
    if not log_dir.is_dir():
        raise InvalidInput("data_dir", f"{log_dir} does not exist (has a server written any log there?)")
    what_if = what_if_rules(shield, Path(data_dir)) if isinstance(shield, str) else shield
    shields = ReplayShield(Path(data_dir), surface_config, what_if)
    target = resolve_policy(parsed, Path(data_dir), surface_config, long_term=replay_long_term(Path(data_dir), surface_config))

    with tempfile.TemporaryDirectory(prefix="recsys_rl_replay_") as scratch:
        candidates = CandidateRows(Path(scratch)) if reward_model else None
        located = logged_scores and companions and candidates is None
        columnar = ColumnarReplay(surface, target, shields, since, stats) if located else None
        streams = log_streams(log_dir) if columnar is not None else []
        if len(streams) > 1:
            decisions, outcomes = _replay_streams(streams, surface, target, stats, progress, since, shields, columnar)
        else:
            records = log_records(log_dir, stats, located=located, columnar=columnar)
            decisions, outcomes = _replay_pass(records, surface, target, stats, candidates, progress, since, shields,
                                               logged_scores)
        if not decisions:
            raise InvalidInput("surface", f"no decision of surface {surface!r} with a non-empty slate in {log_dir}")
        joined = join_rewards(pl.concat(decisions, rechunk=True), pl.concat(outcomes, how="vertical"),
                              {surface: surface_config.reward}, stats=stats.join)
        table = _feedback_table(joined)
        if candidates is not None:
            table = fit_and_score(table, candidates)
    if embedding_spec is not None:
        table = _with_embeddings(table, embedding_spec, Path(data_dir), surface, surface_config, target, shields, since)
    stats.rows = table.height
    stats.support_violations = table.filter((pl.col("target_pscore") > 0) & (pl.col("pscore") <= 0)).height
    return table


def _with_embeddings(table: pl.DataFrame, spec: EmbeddingSpec, data_dir: Path, surface: str,
                     surface_config: SurfaceConfig, target: TargetPolicy, shields: ReplayShield,
                     since: float | None) -> pl.DataFrame:
    """``table`` with action_embedding, embedding_pscore and embedding_target_pscore (a second read of the log:
    both policies' full per-slot distributions, which the main pass never materialises)."""
    log_dir = data_dir / "logs"
    long_term = replay_long_term(data_dir, surface_config)
    # The logging policy: each decision's own version, scores, exploration and cap, under the rules it was served
    # with (whatever the what-if shield of the target).
    logging = resolve_policy(parse_policy_spec("logged"), data_dir, surface_config, long_term=long_term)
    logged_shields = ReplayShield(data_dir, surface_config)

    def decide(event: object, request: pb.RankRequest) -> tuple[PolicyScores, PolicyScores]:
        history = logged_long_term(event)
        event_id, version = event.event_id, event.shield_version  # type: ignore[attr-defined]
        mu = logged_shields.policy(logging.policy_for(event), event_id, version)
        pi = shields.policy(target.policy_for(event), event_id, version)
        return (policy_scores(mu, event, request, reusable_scores, history),
                policy_scores(pi, event, request, reusable_scores, history))

    if spec.kind == "feature":
        labeller = feature_labeller(spec.feature)
    else:
        labeller = kmeans_labeller(((e.event_id, rank_request(e))  # type: ignore[attr-defined]
                                    for e in iter_decisions(log_dir, surface, since)), spec.clusters)
    frame = embedding_frame(iter_decisions(log_dir, surface, since), labeller, decide, rank_request)
    keys = ["event_id", "position"]
    return table.join(frame.with_columns(pl.col("position").cast(table.schema["position"])), on=keys, how="left",
                      maintain_order="left")


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """The pass allocates millions of small objects and makes no reference cycles (flat lists; each parsed record is
    dropped once its columns are taken), so reference counting frees everything while the cyclic collector would
    only walk the growing chunk again and again: a third of a logged-score replay's time. Replay runs in its own
    process (the CLI, the gate), never beside serving threads; collection resumes when the pass ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


Located = tuple[object, InSegment | None]


def log_records(log_dir: Path, stats: ReplayStats, *, located: bool,
                columnar: ColumnarReplay | None = None) -> Iterator[Located | tuple[SegmentFrames, None]]:
    """The log's records as ``_replay_pass`` takes them, all streams as one log (``reader.iter_records``' order).

    ``located``: read each segment's what-if companion where it has a complete one (no features:
    logging_schema.companions) and a decision's full record only when it needs it - for a logged-score replay;
    the reward model reads every decision's features, and re-scoring every decision gains nothing from it.
    ``columnar`` (with ``located``): a segment with a columnar companion whose every decision is the common what-if
    comes whole, as SegmentFrames (evaluators.replay.columnar: computed with numpy, the rows the loop would give).
    """
    if located and columnar is not None:
        return located_or_frames(log_dir, stats.read, columnar)
    if located:
        return iter_located(log_dir, stats=stats.read, entry_type=ReplayEntry, record_type=ReplayRecord)
    return ((record, None) for record in iter_records(log_dir, stats=stats.read, record_type=ReplayRecord))


def _replay_streams(
    streams: list[tuple[str, list[Path]]], surface: str, target: TargetPolicy, stats: ReplayStats, progress: bool,
    since_s: float | None, shields: ReplayShield, columnar: ColumnarReplay,
) -> tuple[list[pl.DataFrame], list[pl.DataFrame]]:
    """``_replay_pass`` over a log of several streams, one stream at a time so that a segment with a usable columnar
    companion is replayed at once: each row is placed in the merged log (evaluators.replay.places) as it is made,
    and the decisions and outcomes are then sorted, stably, into ``reader.iter_records``' order - the table and
    ``join_rewards``' "first outcome wins" are the merged reader's."""
    decision_parts, outcome_parts = [], []
    for rank, (name, segments) in enumerate(streams):
        places = Places(surface)
        records = stream_located_or_frames(name, segments, stats.read, columnar, places)
        decisions, outcomes = _replay_pass(records, surface, target, stats, None, progress, since_s, shields)
        ranked = pl.lit(rank, pl.Int32).alias("rank")
        if decisions:
            decision_parts.append(places.decision_keys(pl.concat(decisions, rechunk=True)).with_columns(ranked))
        outcome_parts.append(places.outcome_keys(pl.concat(outcomes, how="vertical")).with_columns(ranked))
    if not decision_parts:
        return [], []
    merged = [pl.concat(parts, how="vertical").sort(MERGE_KEY, maintain_order=True).drop(MERGE_KEY)
              for parts in (decision_parts, outcome_parts)]
    return [merged[0]], [merged[1]]


def segment_records(segment: Path, stream: str, stats: ReplayStats, *, located: bool) -> Iterator[Located]:
    """One segment's records as ``log_records`` gives them (for a distributed replay: evaluators.spark.replay)."""
    if located:
        return iter_segment_located(segment, stream=stream, stats=stats.read, entry_type=ReplayEntry,
                                    record_type=ReplayRecord)
    return ((record, None) for record in iter_segment(segment, stats=stats.read, record_type=ReplayRecord,
                                                      stream=stream))


def _replay_pass(
    records: Iterable[Located | tuple[SegmentFrames, None]], surface: str, target: TargetPolicy, stats: ReplayStats,
    candidates: CandidateRows | None, progress: bool, since_s: float | None, shields: ReplayShield,
    logged_scores: bool = True,
) -> tuple[list[pl.DataFrame], list[pl.DataFrame]]:
    """The decision chunks (DecisionColumns frames with target_pscore) and outcome chunks of ``records``: the
    whole log (``log_records``) or one segment of it (``segment_records``); the same per-decision code either way."""
    decision_chunks: list[pl.DataFrame] = []
    outcome_chunks: list[pl.DataFrame] = [outcomes_frame([])]
    columns = DecisionColumns()
    outcome_events: list[object] = []
    target_p: list[float] = []  # one value per row; zeros where the batch fills them in at flush()
    # Capped ε-greedy decisions from logged scores: their propensities are computed a chunk at a time, and so is the
    # scores' finiteness check (key: what re-scores one whose scores are not all finite).
    pending = PendingBatch()

    def rescore(event: object, policy: DecisionPolicy, request: pb.RankRequest, logged: list[int],
                decision: int) -> tuple[np.ndarray, TargetScores]:
        probabilities, scored = target_propensities(policy, request, logged, long_term_input=logged_long_term(event))
        stats.rescored += 1
        stats.target_fallbacks += scored.fell_back
        columns.fallback[decision] = scored.fell_back
        return probabilities, scored

    def outside_target(event: object, policy: DecisionPolicy, logged: list[int], raw: object | None,
                       decision: int) -> np.ndarray:
        """A decision that explored beyond the retrieved set: the outside formula (evaluators.replay.outside), per
        decision (the batch path knows one cap per slot, this one caps the inside draw at (c − q)/(1 − q))."""
        scores = _finite(raw) if raw is not None else None
        request = rank_request(event) if scores is None or candidates is not None else None
        if scores is not None:
            explorer, fell_back = policy.explorer, False
            stats.from_logged_scores += 1
        else:
            target = target_scores(policy, request, long_term_input=logged_long_term(event))
            scores, explorer, fell_back = target.scores, target.explorer, target.fell_back
            stats.rescored += 1
            stats.target_fallbacks += fell_back
            columns.fallback[decision] = fell_back
        if candidates is not None:  # q̂π over the candidates' distribution, outside items as candidates (approximate)
            candidates.add(event.event_id, request, scores, logged, explorer)
        if fell_back:  # the target's baseline would have served: no outside draw, greedy over every candidate
            return slate_propensities(scores, logged, explorer)
        retrieval = event.retrieval  # type: ignore[attr-defined]
        return outside_propensities(scores, logged, explorer, policy.cap, share=retrieval.outside_share,
                                    pool=retrieval.outside_pool,
                                    n_inside=retrieval.host_candidates + retrieval.retrieved_candidates)

    def flush() -> None:
        nonlocal columns
        if columns.decisions:
            column = np.array(target_p, dtype=np.float64)
            for event, policy, logged, offset, decision, located in pending.fill(column):  # type: ignore[misc]
                # Deferred scores that are not all finite (a damaged record): re-scoring decides, as in serving.
                stats.from_logged_scores -= 1
                if located is not None:  # a companion's decision: re-scoring reads the full record
                    event = full_decision(located)
                    if event is None:
                        raise InvalidInput("data_dir", f"{located.segment}: the record at byte {located.offset} "
                                                       "is damaged and its logged scores are not finite")
                column[offset:offset + len(logged)] = rescore(event, policy, rank_request(event), logged, decision)[0]
            decision_chunks.append(columns.frame(surface, column))
            columns = DecisionColumns()
        if outcome_events:
            outcome_chunks.append(outcomes_frame(outcome_events))  # type: ignore[arg-type]
        for buffer in (outcome_events, target_p):
            buffer.clear()

    def full_decision(located: InSegment) -> object | None:
        """A companion decision's full record (context, candidates) from its segment; None when it is damaged."""
        full = located.load(ReplayRecord)
        return None if full is None or full.WhichOneof("event") != "decision" else full.decision  # type: ignore[attr-defined]

    bar = tqdm(unit=" decisions", desc=f"replay {target.name}", disable=not progress, file=sys.stderr,
               mininterval=0.5)
    with bar, _cyclic_gc_paused():
        for record, located in records:
            if isinstance(record, SegmentFrames):  # already replayed: its rows go after those read before it
                flush()
                decision_chunks += [record.decisions] if record.decisions is not None else []
                outcome_chunks += [record.outcomes] if record.outcomes is not None else []
                bar.update(record.n_decisions)
                continue
            kind = record.WhichOneof("event")
            if kind == "outcome":
                if wanted_outcome(record.outcome, surface):
                    outcome_events.append(record.outcome)
                continue
            if kind == "gap":
                unlogged = gap_of(record).decisions_unlogged_by_surface.get(surface, 0)
                stats.unlogged_decisions += unlogged
                stats.gaps += unlogged > 0
                continue
            event = record.decision
            if event.surface != surface:
                stats.other_surfaces += 1
                continue
            if not event.slate:
                stats.empty_slates += 1
                continue
            if since_s is not None and event.served_at.seconds + event.served_at.nanos * 1e-9 < since_s:
                stats.before_since += 1
                continue
            # The rules the decision was served under (its logged version), or the what-if's.
            policy = shields.policy(target.policy_for(event), event.event_id, event.shield_version)
            if located is None:
                n_candidates = len(event.candidates)
                raw = _reusable_raw(event, policy, n_candidates) if logged_scores else None
            else:
                n_candidates = located.candidate_count
                raw = _reusable_raw(event, policy, n_candidates)
                # What needs the request: re-scoring, a shield's feasibility, and (outside the batch, which checks
                # at flush) scores that are not finite.
                if (raw is None or policy.shield.active or (batchable(policy.explorer) is None
                                                            or explored_outside(event)) and _finite(raw) is None):
                    event = full_decision(located)
                    if event is None:  # the segment's record is damaged: skipped, as reading it whole would
                        stats.read.corrupt_records += 1
                        continue
                    located = None
            offset, decision = columns.rows, columns.decisions
            logged = columns.add(event, n_candidates, check_items=located is None)
            batch = batchable(policy.explorer) if raw is not None and len(set(logged)) == len(logged) else None
            if explored_outside(event) and not policy.shield.active:
                target_p.extend(outside_target(event, policy, logged, raw, decision).tolist())
            elif batch is not None and candidates is None and not policy.shield.active:
                # The common what-if (logged@cap=X): nothing per decision but the bookkeeping; flush() computes it.
                pending.add(offset, raw, logged, *batch, key=(event, policy, logged, offset, decision, located))
                target_p.extend([0.0] * len(logged))
                stats.from_logged_scores += 1
            elif (scores := _finite(raw) if raw is not None else None) is not None:
                # The scores the decision was drawn from: the explorer alone differs (no VW, and the request is
                # rebuilt only when a shield or the reward model reads its features).
                request = rank_request(event) if policy.shield.active or candidates is not None else None
                shield = policy.shield.for_request(request) if request is not None else None
                if batch is not None and shield is None:  # filled in at flush(), vectorised over the chunk
                    pending.add(offset, scores, logged, *batch)
                    target_p.extend([0.0] * len(logged))
                else:
                    target_p.extend(slate_propensities(scores, logged, policy.explorer, feasibility=shield).tolist())
                if candidates is not None:
                    candidates.add(event.event_id, request, scores, logged, policy.explorer)
                stats.from_logged_scores += 1
            else:
                request = rank_request(event)
                probabilities, scored = rescore(event, policy, request, logged, decision)
                target_p.extend(probabilities.tolist())
                if candidates is not None:
                    candidates.add(event.event_id, request, scored.scores, logged, scored.explorer)
            stats.decisions += 1
            bar.update()
            if columns.decisions >= CHUNK_DECISIONS:
                flush()
        flush()
    if candidates is not None:
        candidates.close()
    return decision_chunks, outcome_chunks


def _feedback_table(joined: pl.DataFrame) -> pl.DataFrame:
    by_event = "event_id"
    return joined.select(
        "event_id",
        "position",
        pl.col("item_id").alias("action"),
        "reward",
        "reward_min",
        "reward_max",
        pl.col("propensity").alias("pscore"),
        "target_pscore",
        pl.col("propensity").cum_prod().over(by_event).alias("cascade_pscore"),
        pl.col("target_pscore").cum_prod().over(by_event).alias("cascade_target_pscore"),
        pl.col("propensity").product().over(by_event).alias("slate_pscore"),
        pl.col("target_pscore").product().over(by_event).alias("slate_target_pscore"),
        "user_id",
        "served_at",
        "policy_version",
        "serving_mode",
        "n_candidates",
        "target_fallback",
    )


def write_table(df: pl.DataFrame, out: Path | str) -> Path:
    """Write ``df`` as parquet at ``out``, atomically (written beside it, then renamed)."""
    out = Path(out)
    if out.is_dir():
        raise InvalidInput("out", f"{out} is a directory; expected a file path such as table.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        df.write_parquet(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Add ``replay`` to the ``recsys-rl`` sub-commands; dispatch is ``args.run(args)``."""
    parser = subparsers.add_parser(
        "replay", help="replay a target policy on logged decisions → bandit-feedback table",
        description="Re-run a target policy on each logged context (no side effects) and write the "
                    "bandit-feedback table with logged and target propensities.",
    )
    parser.add_argument("--data-dir", required=True, help="the server's data dir (logs/ and models/)")
    parser.add_argument("--policy", required=True,
                        help="current | logged | baseline | uniform | <version> | <version dir>, optionally with "
                             "@cap=X, @algorithm=NAME, @epsilon=X, @temperature=X, @gamma=X (model policies)")
    parser.add_argument("--out", required=True,
                        help="output parquet file (--engine spark: a directory of parquet files)")
    parser.add_argument("--surface", default="default")
    parser.add_argument("--config", help="TOML surface configuration (default: the embedded default surface)")
    parser.add_argument("--reward-model", action="store_true",
                        help="add q_hat and q_hat_target from a cross-fitted LightGBM reward model")
    parser.add_argument("--since", help="only decisions served at or after this time (ISO 8601, or unix seconds)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--shield", help="what-if: replay every decision under these shield rules (a stored "
                                         "VERSION, none, or a rules FILE.toml); default: each decision's own rules")
    parser.add_argument("--embedding", metavar="SPEC",
                        help="add the MIPS columns (action_embedding, embedding_pscore, embedding_target_pscore): "
                             "feature:NAME (a categorical candidate feature) or kmeans:C (the candidates' embedding "
                             "vectors in C seeded k-means clusters); docs/mips.md")
    parser.add_argument("--engine", default="local",
                        help="local (default: this process, polars) or spark (the log's segments replayed on Spark "
                             "executors, which must read --data-dir at the same path; --out is then a directory; "
                             "docs/scaling.md)")
    parser.add_argument("--master", help="Spark master with --engine spark: local[*] (default), spark://HOST:7077, ...")
    parser.set_defaults(run=run_replay)
    return parser


def _since_seconds(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput("--since", f"expected ISO 8601 or unix seconds, got {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def run_replay(args: argparse.Namespace) -> int:
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            # ConfigError messages already start with the key path ("--config: ...", "surfaces.x.cap: ...").
            key, _, reason = str(exc).partition(": ")
            raise InvalidInput(key, reason) from exc
    else:
        config = default_config()
    if args.engine not in ENGINES:
        raise InvalidInput("--engine", f"must be one of {', '.join(ENGINES)}, got {args.engine!r}")
    if args.master is not None and args.engine != "spark":
        raise InvalidInput("--master", "needs --engine spark")
    stats = ReplayStats()
    options = dict(surface=args.surface, config=config, reward_model=args.reward_model, stats=stats,
                   since=_since_seconds(args.since), shield=args.shield, embedding=args.embedding)
    if args.engine == "spark":
        from evaluators.spark.replay import replay_spark, write_table_dir  # pyspark only for this engine

        spark_table = replay_spark(Path(args.data_dir), args.policy, master=args.master or "local[*]",
                                   **options)  # type: ignore[arg-type]
        try:
            out = write_table_dir(spark_table, args.out)
        finally:
            spark_table.sparkSession.stop()
    else:
        table = replay(Path(args.data_dir), args.policy, progress=not args.no_progress,
                       **options)  # type: ignore[arg-type]
        out = write_table(table, args.out)
    print(f"replay {args.policy}: {stats.rows} rows from {stats.decisions} decisions -> {out} "
          f"(target fallbacks {stats.target_fallbacks}, support violations {stats.support_violations}, "
          f"other surfaces {stats.other_surfaces}, damaged records "
          f"{stats.read.corrupt_records + stats.read.torn_tail_records}, unlogged decisions {stats.unlogged_decisions}"
          f"{f' in {stats.gaps} log gap(s), not replayed' if stats.gaps else ''})")
    return 0


__all__ = ["CHUNK_DECISIONS", "ReplayStats", "logged_long_term", "register", "replay",
           "reusable_scores", "run_replay", "write_table"]
