"""MIPS columns from served logs: ``recsys-rl replay ... --embedding SPEC`` (docs/mips.md, "From served logs").

SPEC names each candidate's discrete action embedding e(a)::

    feature:NAME   the candidate's categorical feature NAME (as logged: catalog-completed candidates carry the
                   catalog's features), exact, no fitting
    kmeans:C       the candidate's embedding vector, discretised into C clusters by a seeded k-means (k-means++
                   then Lloyd, numpy, seed 0) fitted once per replay over the distinct (item, vector) pairs of the
                   replayed decisions; an item's cluster is its nearest centroid (ties to the lowest cluster)

For every logged slot k of a decision, with F_k the candidates feasible at slot k given the logged items of slots
< k (the shield's feasibility, as sampling saw it) and p(·) a policy's distribution over F_k:

    embedding_pscore_k        = Σ_{a ∈ F_k, e(a) = e(a_k)} μ(a)     (the logging policy: the decision's logged
                                model version, scores, explorer and cap, i.e. replay's ``logged`` target)
    embedding_target_pscore_k = Σ_{a ∈ F_k, e(a) = e(a_k)} π(a)     (the replayed target, same conditioning)

so they condition on the logged prefix exactly as ``pscore``/``target_pscore`` do, and with an embedding unique
per item they are those columns bit for bit. A pinned slot gives mass 1 to the pinned item's embedding.

Not supported (InvalidInput naming ``--embedding``): decisions that explored outside the retrieved set (their
outside draws range over catalog items that were never candidates, whose embeddings the log does not hold).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from evaluators.embeddings import ACTION_EMBEDDING, EMBEDDING_PSCORE, EMBEDDING_TARGET_PSCORE
from logging_schema.reader import iter_records
from logging_schema.views import ReplayRecord
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.decision import DecisionPolicy, LongTermInput, target_scores
from recsys_rl.serving.exploration import Explorer, SlotFeasibility

FLAG = "--embedding"
KMEANS_SEED = 0
KMEANS_ITERATIONS = 50


@dataclass(frozen=True)
class EmbeddingSpec:
    """A parsed ``--embedding`` value."""

    text: str
    kind: Literal["feature", "kmeans"]
    feature: str = ""
    clusters: int = 0


def parse_embedding_spec(text: str) -> EmbeddingSpec:
    """``feature:NAME`` or ``kmeans:C`` (C ≥ 1); InvalidInput naming ``--embedding`` otherwise."""
    kind, sep, value = (text or "").partition(":")
    if kind == "feature" and sep and value.strip():
        return EmbeddingSpec(text, "feature", feature=value.strip())
    if kind == "kmeans" and sep:
        try:
            clusters = int(value)
        except ValueError:
            raise InvalidInput(FLAG, f"kmeans:C needs an integer number of clusters, got {value!r}") from None
        if clusters < 1:
            raise InvalidInput(FLAG, f"kmeans:C needs at least 1 cluster, got {clusters}")
        return EmbeddingSpec(text, "kmeans", clusters=clusters)
    raise InvalidInput(FLAG, f"expected feature:NAME or kmeans:C, got {text!r}")


Labeller = Callable[[str, Sequence[pb.Candidate]], list[object]]


def feature_labeller(name: str) -> Labeller:
    def labels(event_id: str, candidates: Sequence[pb.Candidate]) -> list[object]:
        out: list[object] = []
        for c in candidates:
            value = c.features.categorical.get(name)
            if value is None:
                raise InvalidInput(FLAG, f"event {event_id}: candidate {c.item_id!r} has no categorical feature "
                                         f"{name!r} (feature:{name})")
            out.append(value)
        return out
    return labels


def _vector(event_id: str, candidate: pb.Candidate, dim: int | None) -> np.ndarray:
    vector = np.asarray(candidate.embedding, dtype=np.float64)
    if vector.size == 0:
        raise InvalidInput(FLAG, f"event {event_id}: candidate {candidate.item_id!r} has no embedding (kmeans:C "
                                 "clusters the candidates' embedding vectors)")
    if dim is not None and vector.size != dim:
        raise InvalidInput(FLAG, f"event {event_id}: candidate {candidate.item_id!r} has a {vector.size}-dim "
                                 f"embedding, others {dim}-dim")
    if not np.isfinite(vector).all():
        raise InvalidInput(FLAG, f"event {event_id}: candidate {candidate.item_id!r} has a non-finite embedding")
    return vector


def kmeans(points: np.ndarray, clusters: int, *, seed: int = KMEANS_SEED,
           iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Centroids (clusters, d) of ``points`` (n, d): k-means++ seeding then Lloyd's iterations, deterministic."""
    rng = np.random.default_rng(seed)
    n = points.shape[0]
    centroids = [points[rng.integers(n)]]
    nearest = ((points - centroids[0]) ** 2).sum(axis=1)
    for _ in range(1, clusters):
        total = nearest.sum()
        # All points on the chosen centroids already: any point (duplicates make empty clusters, kept as they are).
        pick = rng.integers(n) if total <= 0 else int(rng.choice(n, p=nearest / total))
        centroids.append(points[pick])
        nearest = np.minimum(nearest, ((points - points[pick]) ** 2).sum(axis=1))
    centers = np.array(centroids)
    for _ in range(iterations):
        assign = assign_clusters(points, centers)
        moved = centers.copy()
        for c in range(clusters):
            members = points[assign == c]
            if members.size:
                moved[c] = members.mean(axis=0)
        if np.array_equal(moved, centers):
            break
        centers = moved
    return centers


def assign_clusters(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Nearest centroid of each point (argmin: ties to the lowest cluster)."""
    distances = (points ** 2).sum(axis=1)[:, None] - 2.0 * points @ centers.T + (centers ** 2).sum(axis=1)[None, :]
    return distances.argmin(axis=1)


def kmeans_labeller(requests: Iterator[tuple[str, pb.RankRequest]], clusters: int) -> Labeller:
    """Fit on the distinct (item id, vector) pairs of ``requests``' candidates; label candidates by cluster."""
    seen: dict[tuple[str, bytes], np.ndarray] = {}
    dim: int | None = None
    for event_id, request in requests:
        for c in request.candidates:
            vector = _vector(event_id, c, dim)
            dim = vector.size
            seen.setdefault((c.item_id, vector.tobytes()), vector)
    if len(seen) < clusters:
        raise InvalidInput(FLAG, f"kmeans:{clusters} needs at least {clusters} distinct items, the replayed "
                                 f"decisions have {len(seen)}")
    centers = kmeans(np.array(list(seen.values())), clusters)
    cluster_of = dict(zip(seen, assign_clusters(np.array(list(seen.values())), centers).tolist()))

    def labels(event_id: str, candidates: Sequence[pb.Candidate]) -> list[object]:
        out: list[object] = []
        for c in candidates:
            vector = _vector(event_id, c, dim)
            found = cluster_of.get((c.item_id, vector.tobytes()))
            out.append(found if found is not None else int(assign_clusters(vector[None, :], centers)[0]))
        return out
    return labels


def embedding_mass(scores: np.ndarray, logged: Sequence[int], explorer: Explorer, labels: np.ndarray,
                   feasibility: SlotFeasibility | None = None) -> np.ndarray:
    """Σ over candidates feasible at slot k sharing the embedding of logged[k] of the slot's probability, per k.

    The slot distribution is ``explorer.distribution`` over the feasible candidates in ascending index order, the
    arrays :func:`recsys_rl.serving.exploration.slate_propensities` reads, so a singleton embedding gives its value.
    """
    n = scores.size
    placed: list[int] = []
    out = np.empty(len(logged))
    for k, index in enumerate(logged):
        pin = feasibility.pinned_at(k, placed) if feasibility is not None else None
        if pin is not None:
            out[k] = 1.0 if labels[pin] == labels[index] else 0.0
        else:
            unplaced = np.ones(n, dtype=bool)
            unplaced[placed] = False
            feasible = unplaced.nonzero()[0]
            if feasibility is not None:
                feasible = feasible[feasibility.mask(feasible, placed)]
            if feasible.size == 0:
                out[k] = 0.0
            else:
                p = explorer.distribution(scores[feasible])
                same = labels[feasible] == labels[index]
                # A one-item sum is that item's probability exactly (0.0 + p = p).
                out[k] = p[same].sum() if same.any() else 0.0
        placed.append(int(index))
    return out


@dataclass
class PolicyScores:
    """How one policy decided a logged decision: scores, explorer and feasibility."""

    scores: np.ndarray
    explorer: Explorer
    feasibility: SlotFeasibility | None


def policy_scores(policy: DecisionPolicy, event: object, request: pb.RankRequest,
                  reusable: Callable[[object, DecisionPolicy], np.ndarray | None],
                  long_term: LongTermInput | None) -> PolicyScores:
    """``policy``'s scores on the logged decision (from the log when they are its own, else re-scored)."""
    scores = reusable(event, policy)
    explorer = policy.explorer
    if scores is None:
        scored = target_scores(policy, request, long_term_input=long_term)
        scores, explorer = scored.scores, scored.explorer
    return PolicyScores(scores, explorer, policy.shield.for_request(request) if policy.shield.active else None)


def iter_decisions(log_dir: Path, surface: str, since_s: float | None) -> Iterator[object]:
    """The decisions replay tables (this surface, non-empty slate, served at or after ``since_s``), in log order."""
    for record in iter_records(log_dir, record_type=ReplayRecord):
        if record.WhichOneof("event") != "decision":
            continue
        event = record.decision
        if event.surface != surface or not event.slate:
            continue
        if since_s is not None and event.served_at.seconds + event.served_at.nanos * 1e-9 < since_s:
            continue
        yield event


def embedding_frame(decisions: Iterator[object], labeller: Labeller,
                    decide: Callable[[object, pb.RankRequest], tuple[PolicyScores, PolicyScores]],
                    request_of: Callable[[object], pb.RankRequest]) -> pl.DataFrame:
    """event_id, position, action_embedding, embedding_pscore, embedding_target_pscore for every logged slot.

    ``decide(event, request)`` gives (logging, target) scores; ``request_of`` rebuilds the RankRequest.
    """
    from evaluators.replay.outside import explored_outside

    event_ids: list[str] = []
    positions: list[int] = []
    embedding: list[object] = []
    logging_mass: list[float] = []
    target_mass: list[float] = []
    for event in decisions:
        event_id: str = event.event_id  # type: ignore[attr-defined]
        if explored_outside(event):
            raise InvalidInput(FLAG, f"event {event_id} explored outside the retrieved set; MIPS columns need "
                                     "every item a slot could draw, and its outside items are not in the log")
        request = request_of(event)
        labels = np.array(labeller(event_id, request.candidates), dtype=object)
        logged = [slot.candidate_index for slot in event.slate]  # type: ignore[attr-defined]
        logging, target = decide(event, request)
        logging_mass.extend(embedding_mass(logging.scores, logged, logging.explorer, labels,
                                           logging.feasibility).tolist())
        target_mass.extend(embedding_mass(target.scores, logged, target.explorer, labels,
                                          target.feasibility).tolist())
        event_ids.extend([event_id] * len(logged))
        positions.extend(slot.position for slot in event.slate)  # type: ignore[attr-defined]
        embedding.extend(labels[logged].tolist())
    kind = pl.Int64() if embedding and isinstance(embedding[0], int) else pl.String()
    return pl.DataFrame({"event_id": event_ids, "position": positions, ACTION_EMBEDDING: embedding,
                         EMBEDDING_PSCORE: logging_mass, EMBEDDING_TARGET_PSCORE: target_mass},
                        schema={"event_id": pl.String(), "position": pl.Int32(), ACTION_EMBEDDING: kind,
                                EMBEDDING_PSCORE: pl.Float64(), EMBEDDING_TARGET_PSCORE: pl.Float64()})


__all__ = ["EmbeddingSpec", "PolicyScores", "assign_clusters", "embedding_frame", "embedding_mass",
           "feature_labeller", "iter_decisions", "kmeans", "kmeans_labeller", "parse_embedding_spec",
           "policy_scores"]
