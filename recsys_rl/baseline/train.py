"""``recsys-rl train baseline``: a LightGBM LambdaRank baseline learned from the logged decisions.

Data. A pass over ``<data-dir>/logs`` keeps, per decision of the surface with a non-empty slate, one feature row
per *served* item (``model.FeatureSpec``: baseline_score, context and candidate features; names and vocabularies
fixed from the first ``spec_sample`` decisions kept). Segments are read by one worker process per core, their rows
concatenated in log order (the same rows whatever the number of workers). A log of several streams (``serve
--workers N``) is read in the reader's one-log order (``logging_schema.reader``: each stream's order, streams merged
by time), so training on it gives the same rows, in the same order, as on the same records written by one process. With more than ``max_decisions``
(default 200k) eligible decisions, a first pass reads every decision's sampling key and training keeps the
``max_decisions`` with the smallest blake2b-64(event_id): a uniform sample, deterministic, recorded in the
manifest's data_range["sample"]. The cap is what bounds training time on a large log (docs/baseline.md: time and
held-out NDCG against the sample size). Rewards are the surface's reward definition
joined by ``logging_schema.tables.join_rewards``; an item's relevance label is 1 when its per-slot reward is > 0
(a click for the default definition), else 0. A query is one decision.

Bias correction (logging policy's selection and position). Each served row gets the LightGBM sample weight

    w = min(1 / p_k, clip) / mean_train(min(1 / p_k, clip))

with p_k the logged per-slot propensity of that item at its position k (the exact conditional probability the
explorer drew it with). LambdaRank multiplies each row's gradient by its weight, so an item the logging policy
rarely put in a slot (a rare exploration draw) counts as much as the many times it would have been shown
uniformly; items served greedily (p = 1) get weight 1 before normalising. ``clip`` (default 20) bounds the
variance of rare draws. Baseline-served decisions (p = 1 everywhere) carry no exploration and are still used.

Report. A held-out split by decision (``holdout`` share, seeded): NDCG@k of the served items ordered by the model,
by the host's baseline_score and as logged; the logged click rate per decision; and top-1 hit rate (the clicked
item ranked first among the served items) for model vs baseline_score.

Bad data (no decisions, too few, no rewards, one class) raises InvalidInput naming the problem before anything is
published.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from google.protobuf.message import DecodeError
from tqdm import tqdm

from logging_schema.reader import record_time_us
from logging_schema.segments import (
    FRAME_HEADER,
    FRAME_HEADER_BYTES,
    HEADER_BYTES,
    list_segments,
    list_streams,
    scan_segment,
)
from logging_schema.tables import decisions_frame, join_rewards, outcomes_frame
from recsys_rl.baseline import baseline_surface
from recsys_rl.baseline.model import FeatureSpec, ItemRowCache, serialize
from recsys_rl.config import SurfaceConfig
from recsys_rl.errors import InvalidInput
from logging_schema.views import TableRecord
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.registry import Checkpoint, ModelRegistry

__all__ = ["BaselineData", "TrainConfig", "TrainResult", "load_data", "sample_key", "train", "train_from_data_dir"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters (all recorded in the manifest)."""

    num_rounds: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 20
    clip: float = 20.0  # max inverse-propensity weight
    holdout: float = 0.2  # share of decisions held out for the report
    ndcg_k: int = 5
    min_decisions: int = 100
    spec_sample: int = 1000  # decisions whose feature names and vocabularies fix the layout
    seed: int = 0
    # LightGBM threads. 1, not the OpenMP default: on the 2-core bench machine, with other processes running,
    # OpenMP's spinning threads made 2 threads 3x slower than 1 and the default 8x (docs/benchmarks.md).
    threads: int = 1
    # A uniform sample of at most this many decisions (by event-id hash, ``load_data``); 0 = every decision.
    # Held-out NDCG is flat well below the default (docs/baseline.md), and boosting time grows linearly past it.
    max_decisions: int = 200_000
    read_workers: int = 0  # processes reading segments (0 = one per core)

    def __post_init__(self) -> None:
        for name in ("num_rounds", "num_leaves", "min_data_in_leaf", "ndcg_k", "min_decisions", "spec_sample"):
            if getattr(self, name) < 1:
                raise InvalidInput(name, f"must be >= 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate <= 1:
            raise InvalidInput("learning_rate", f"must be in (0, 1], got {self.learning_rate}")
        if self.max_decisions < 0 or self.read_workers < 0 or self.threads < 0:
            raise InvalidInput("max_decisions/read_workers/threads", "must be >= 0")
        if not self.clip >= 1:
            raise InvalidInput("clip", f"must be >= 1, got {self.clip}")
        if not 0 < self.holdout < 1:
            raise InvalidInput("holdout", f"must be in (0, 1), got {self.holdout}")


@dataclass
class BaselineData:
    """Row-aligned served items: x [R, d], label [R] int, propensity [R], baseline [R]; group [N] rows per decision."""

    spec: FeatureSpec
    x: np.ndarray
    label: np.ndarray
    propensity: np.ndarray
    baseline: np.ndarray
    group: np.ndarray
    data_range: dict[str, Any]


def sample_key(event_id: str) -> int:
    """A decision's sampling key: the first 8 bytes of blake2b(event_id), uniform and independent of log order."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


def _eligible(event: Any, surface: str, since: float | None) -> bool:
    if event.surface != surface or not event.slate:
        return False
    return since is None or event.served_at.seconds + event.served_at.nanos * 1e-9 >= since


def _records(path: Path, wanted: dict[int, int] | None = None) -> Iterator[tuple[int, int, Any]]:
    """(byte offset, payload length, record) of one segment's intact records through the table view, as ``iter_records`` parses
    them. ``wanted`` (offset -> payload length, from a first pass that checked every frame): read only those
    frames, each re-checked against its CRC, instead of the whole segment - a capped read's second pass skips the
    decisions left out without reading them."""
    parse = TableRecord.FromString
    if wanted is None:
        offset = HEADER_BYTES
        for payload in scan_segment(path):
            offset += FRAME_HEADER_BYTES
            start, offset = offset, offset + len(payload)
            yield from _parsed(start, payload, parse)
        return
    with open(path, "rb") as file:
        for start in sorted(wanted):
            file.seek(start - FRAME_HEADER_BYTES)
            frame = file.read(FRAME_HEADER_BYTES + wanted[start])
            length, checksum = FRAME_HEADER.unpack_from(frame)
            payload = memoryview(frame)[FRAME_HEADER_BYTES:]
            if length != wanted[start] or len(payload) != length or zlib.crc32(payload) != checksum:
                raise InvalidInput("data", f"{path} changed while training read it (frame at byte {start})")
            yield from _parsed(start, payload, parse)


def _parsed(start: int, payload: Any, parse: Any) -> Iterator[tuple[int, int, Any]]:
    try:
        record = parse(payload)
    except DecodeError:
        return  # counted by the log's readers; training just skips it
    if record.WhichOneof("event") is not None:
        yield start, len(payload), record


@dataclass
class _Keys:
    """Pass 1 over one segment: (sampling key, event id, offset, length) of the decisions training may use, offset ->
    length of the surface's outcomes, and each record's stream clock as of this segment (``clocks``: offset -> the
    latest record time from the segment's start up to it, ``last_clock``: over the whole segment; see reader)."""

    decisions: list[tuple[int, str, int, int]]
    outcomes: dict[int, int]
    clocks: dict[int, int]
    last_clock: int


def _segment_keys(path: Path, surface: str, since: float | None) -> _Keys:
    """Pass 1 (one segment, in a worker): what a capped or multi-stream read needs to choose and order decisions."""
    keys, outcomes, clocks, clock = [], {}, {}, -1
    for start, length, record in _records(path):
        at = record_time_us(record)
        clock = max(clock, at) if at is not None else clock
        kind = record.WhichOneof("event")
        if kind == "decision" and _eligible(record.decision, surface, since):
            keys.append((sample_key(record.decision.event_id), record.decision.event_id, start, length))
            clocks[start] = clock
        elif kind == "outcome" and record.outcome.surface in (surface, ""):
            outcomes[start] = length
            clocks[start] = clock
    return _Keys(keys, outcomes, clocks, clock)


def _log_order(found: list[_Keys], stream_of: list[int]) -> list[dict[int, tuple[int, int, int]]]:
    """Per segment, offset -> its record's place in the one-log order, (clock, segment index, offset): the reader's
    (clock, stream, position) merge key, with a clock carried over from the stream's earlier segments."""
    order, carry = [], {}
    for index, (keys, stream) in enumerate(zip(found, stream_of)):
        before = carry.get(stream, -1)
        order.append({offset: (max(clock, before), index, offset) for offset, clock in keys.clocks.items()})
        carry[stream] = max(before, keys.last_clock)
    return order


def _sampled(path: Path, surface: str, since: float | None, wanted: dict[int, int] | None) -> Iterator[Any]:
    """(offset, record) of the records of one segment training reads: the surface's outcomes, and its eligible
    decisions (those of the sample: ``wanted`` frames, when capped), the latter as (view event, context, served
    candidates) with only the served candidates parsed."""
    parse_features, parse_candidate = pb.Features.FromString, pb.Candidate.FromString
    for start, _, record in _records(path, wanted):
        kind = record.WhichOneof("event")
        if kind == "outcome":
            if record.outcome.surface in (surface, ""):
                yield start, record.outcome
        elif kind == "decision":
            event = record.decision
            if not _eligible(event, surface, since):
                continue
            candidates = event.candidates
            served = [parse_candidate(candidates[slot.candidate_index]) for slot in event.slate]
            context = parse_features(event.context)
            del event.candidates[:]  # the frame needs the slate only
            yield start, (event, context, served)


def _first_decisions(found: list[_Keys], wanted: list[dict[int, int] | None],
                     order: list[dict[int, tuple[int, int, int]]], count: int) -> list[dict[int, int]]:
    """Per segment, the frames (offset -> length) of the first ``count`` decisions kept, in the one-log order."""
    kept = sorted((order[i][offset], i, offset, length) for i, keys in enumerate(found)
                  for _, _, offset, length in keys.decisions if wanted[i] is None or offset in wanted[i])  # type: ignore[operator]
    frames: list[dict[int, int]] = [{} for _ in found]
    for _, i, offset, length in kept[:count]:
        frames[i][offset] = length
    return frames


@dataclass
class _Part:
    """What one segment contributes, in its log order: feature rows, decisions frame, outcomes frame, and the byte
    offsets of its decisions and outcomes (to merge streams by)."""

    rows: np.ndarray
    decisions: pl.DataFrame
    outcomes: pl.DataFrame
    n_outcomes: int
    decision_offsets: list[int]
    outcome_offsets: list[int]
    slots: list[int]  # rows (served slots) of each decision


def _segment_part(path: Path, surface: str, since: float | None, wanted: dict[int, int] | None,
                  spec: FeatureSpec) -> _Part:
    """Pass 2 (one segment, in a worker): the rows of its sampled decisions under the fitted spec."""
    cache = ItemRowCache(spec)
    events, outcomes, rows, decision_offsets, outcome_offsets, slots = [], [], [], [], [], []
    for offset, item in _sampled(path, surface, since, wanted):
        if isinstance(item, tuple):
            event, context, served = item
            rows.append(spec.matrix(context, served, cache))
            events.append(event)
            decision_offsets.append(offset)
            slots.append(len(event.slate))
        else:
            outcomes.append(item)
            outcome_offsets.append(offset)
    width = len(spec.names)
    return _Part(np.concatenate(rows) if rows else np.empty((0, width)), decisions_frame(events),
                 outcomes_frame(outcomes), len(outcomes), decision_offsets, outcome_offsets, slots)


def _merged(parts: list[_Part], order: list[dict[int, tuple[int, int, int]]]) -> tuple[np.ndarray, pl.DataFrame,
                                                                                        pl.DataFrame]:
    """Rows, decisions and outcomes of every part in the one-log order (streams merged by time)."""
    decision_keys = [order[i][o] for i, part in enumerate(parts) for o in part.decision_offsets]
    outcome_keys = [order[i][o] for i, part in enumerate(parts) for o in part.outcome_offsets]
    decisions = pl.concat([p.decisions for p in parts], rechunk=True)
    slots = np.array([n for p in parts for n in p.slots], dtype=np.int64)
    by_decision = sorted(range(len(decision_keys)), key=decision_keys.__getitem__)
    # A decision's rows (one per served slot) move together: expand the decision order into row indices.
    first_row = np.concatenate([[0], np.cumsum(slots)[:-1]]).astype(np.int64)
    counts = slots[by_decision]
    rows = np.repeat(first_row[by_decision] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(
        int(counts.sum()))
    outcomes = pl.concat([p.outcomes for p in parts], rechunk=True)
    by_outcome = sorted(range(len(outcome_keys)), key=outcome_keys.__getitem__)
    x = np.concatenate([p.rows for p in parts])
    return x[rows], decisions[rows], outcomes[by_outcome]


def load_data(log_dir: Path, surface: SurfaceConfig, *, since: float | None = None, spec_sample: int = 1000,
              max_decisions: int | None = None, workers: int = 1, progress: bool = False) -> BaselineData:
    """The surface's served items as training rows, in log order.

    Records are parsed through the table view (``logging_schema.views``: context and candidates stay bytes), and
    only the served candidates are parsed. Segments are read by ``workers`` processes (one segment per task) and
    their parts concatenated in segment order, so rows do not depend on ``workers``. A log of several streams is read
    in the one-log order (``logging_schema.reader``): a first pass reads every record's stream clock, and the parts'
    decisions and outcomes are merged by it, as ``iter_records`` would yield them. Workers are spawned (not forked: the
    caller may run gRPC or OpenMP threads), so a script calling this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard; ``recsys-rl`` and pytest have it.

    ``max_decisions``: when the log has more eligible decisions, a first pass reads every decision's sampling key
    (``sample_key``) and training keeps the ``max_decisions`` decisions with the smallest (key, event_id): a
    uniform sample, the same for a log however it is segmented or read. The feature layout is fitted from the first
    ``spec_sample`` decisions kept, in log order."""
    log_dir = Path(log_dir)
    streams = [[log_dir]] if log_dir.is_file() else [list_segments(stream) for stream in list_streams(log_dir)]
    paths = [path for segments in streams for path in segments]
    stream_of = [rank for rank, segments in enumerate(streams) for _ in segments]
    # Several streams are merged by time, which needs every record's clock: pass 1 reads them.
    merge = sum(1 for segments in streams if segments) > 1
    name = surface.name
    pool = (ProcessPoolExecutor(min(workers, len(paths)), mp_context=multiprocessing.get_context("spawn"))
            if workers > 1 and len(paths) > 1 else None)
    mapper = pool.map if pool is not None else map
    try:
        wanted: list[dict[int, int] | None] = [None] * len(paths)
        capped, eligible, order = False, None, None
        if max_decisions is not None or merge:
            found = list(mapper(_segment_keys, paths, repeat(name), repeat(since)))
            eligible = sum(len(keys.decisions) for keys in found)
            if max_decisions is not None and eligible > max_decisions:
                # keep the max_decisions smallest (key, event_id), and every outcome
                capped = True
                cutoff = sorted(key[:2] for keys in found for key in keys.decisions)[max_decisions - 1]
                wanted = [{**keys.outcomes, **{o: n for k, e, o, n in keys.decisions if (k, e) <= cutoff}}
                          for keys in found]
            if merge:
                order = _log_order(found, stream_of)
                spec_frames = _first_decisions(found, wanted, order, spec_sample)
            del found
        contexts, served = [], []  # the spec's sample: the first spec_sample decisions kept, in log order
        for index, (path, want) in enumerate(zip(paths, wanted)):
            for _, item in _sampled(path, name, since, spec_frames[index] if order is not None else want):
                if isinstance(item, tuple):
                    contexts.append(item[1])
                    served.extend(item[2])
                    if order is None and len(contexts) >= spec_sample:
                        break
            if order is None and len(contexts) >= spec_sample:
                break
        if not contexts:
            raise InvalidInput("data", f"no decisions of surface {name!r} with a served slate in {log_dir}")
        spec = FeatureSpec.fit(contexts, served)  # a set of decisions: their order does not matter
        del contexts, served
        parts = list(tqdm(mapper(_segment_part, paths, repeat(name), repeat(since), wanted, repeat(spec)),
                          total=len(paths), unit=" segments", desc="train baseline: read", disable=not progress,
                          mininterval=0.5))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if order is not None:
        x, decisions, outcomes = _merged(parts, order)
    else:
        x = np.concatenate([p.rows for p in parts])
        decisions = pl.concat([p.decisions for p in parts], rechunk=True)
        outcomes = pl.concat([p.outcomes for p in parts], rechunk=True)
    if capped:  # outcomes of decisions left out would only be orphans of the join
        outcomes = outcomes.filter(pl.col("event_id").is_in(decisions.get_column("event_id").unique().implode()))
    joined = join_rewards(decisions, outcomes, {name: surface.reward})
    served_at = joined.get_column("served_at")
    group = joined.group_by("event_id", maintain_order=True).len().get_column("len").to_numpy()
    data_range: dict[str, Any] = {"from": str(served_at.min()), "to": str(served_at.max()),
                                  "decisions": int(group.size), "rows": int(joined.height),
                                  "outcomes": sum(p.n_outcomes for p in parts)}
    if max_decisions is not None:
        data_range["sample"] = {"max_decisions": max_decisions, "eligible_decisions": eligible,
                                "kept": int(group.size), "rule": "smallest blake2b-64(event_id)"}
    return BaselineData(
        spec=spec, x=x, label=(joined.get_column("reward").fill_null(0.0).to_numpy() > 0).astype(np.int32),
        propensity=joined.get_column("propensity").to_numpy(), baseline=x[:, 0].copy(), group=group,
        data_range=data_range,
    )


@dataclass
class TrainResult:
    model: bytes
    report: dict[str, Any]
    train_seconds: float
    load_seconds: float = 0.0


def _check(data: BaselineData, config: TrainConfig) -> None:
    if data.group.size < config.min_decisions:
        raise InvalidInput("data", f"too few decisions: {data.group.size} < {config.min_decisions}")
    if data.data_range.get("outcomes", 1) == 0 or not data.label.any():
        raise InvalidInput("data", f"no rewards: none of {data.group.size} decisions has a positive reward")
    if data.label.all():
        raise InvalidInput("data", "one class: every served item has a positive reward (nothing to rank)")


def _ndcg_and_hits(scores: np.ndarray, label: np.ndarray, group: np.ndarray, k: int) -> tuple[float, float]:
    """Mean NDCG@k over decisions with a positive label, and the share of them whose top-scored item is positive."""
    ndcgs, hits, start = [], [], 0
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for size in group.tolist():
        y, s = label[start:start + size], scores[start:start + size]
        start += size
        if not y.any():
            continue
        order = np.lexsort((np.arange(size), -s))  # ties by logged position, as baseline_order breaks them
        m = min(k, size)
        dcg = float(((2.0 ** y[order[:m]] - 1) * discount[:m]).sum())
        ideal = float(((2.0 ** np.sort(y)[::-1][:m] - 1) * discount[:m]).sum())
        ndcgs.append(dcg / ideal)
        hits.append(bool(y[order[0]]))
    return (float(np.mean(ndcgs)) if ndcgs else float("nan"), float(np.mean(hits)) if hits else float("nan"))


def train(data: BaselineData, config: TrainConfig, *, progress: bool = False) -> TrainResult:
    import lightgbm as lgb  # noqa: PLC0415

    _check(data, config)
    n = data.group.size
    held = np.zeros(n, bool)
    held[np.random.default_rng(config.seed).permutation(n)[: max(1, int(round(config.holdout * n)))]] = True
    row_held = np.repeat(held, data.group)
    weight = np.minimum(1.0 / np.maximum(data.propensity, 1e-12), config.clip)
    weight = weight / weight[~row_held].mean()
    train_set = lgb.Dataset(data.x[~row_held], label=data.label[~row_held], group=data.group[~held],
                            weight=weight[~row_held], feature_name=data.spec.names,
                            categorical_feature=data.spec.categorical_columns, free_raw_data=True)
    params = {
        "objective": "lambdarank", "learning_rate": config.learning_rate, "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf, "lambdarank_truncation_level": max(config.ndcg_k, 10),
        "seed": config.seed, "deterministic": True, "num_threads": config.threads, "verbosity": -1,
    }
    bar = tqdm(total=config.num_rounds, desc="train baseline: boost", disable=not progress, mininterval=0.5)
    started = time.perf_counter()
    with bar:
        booster = lgb.train(params, train_set, num_boost_round=config.num_rounds,
                            callbacks=[lambda env: bar.update()])
    train_seconds = time.perf_counter() - started
    rows = np.flatnonzero(row_held)
    model_scores = booster.predict(data.x[rows], num_threads=config.threads)
    held_group = data.group[held]
    label, baseline = data.label[rows], data.baseline[rows]
    k = config.ndcg_k
    ndcg_model, hit_model = _ndcg_and_hits(model_scores, label, held_group, k)
    ndcg_base, hit_base = _ndcg_and_hits(baseline, label, held_group, k)
    ndcg_logged, _ = _ndcg_and_hits(-np.concatenate([np.arange(g) for g in held_group]).astype(float),
                                    label, held_group, k)
    held_starts = np.concatenate([[0], np.cumsum(held_group)[:-1]]).astype(np.int64)
    clicked = np.add.reduceat(label, held_starts) > 0
    report = {
        "decisions": int(n), "train_decisions": int((~held).sum()), "heldout_decisions": int(held.sum()),
        f"ndcg@{k}": {"model": ndcg_model, "baseline_score": ndcg_base, "logged_order": ndcg_logged},
        "top1_hit_rate": {"model": hit_model, "baseline_score": hit_base},
        "heldout_click_rate": float(clicked.mean()) if clicked.size else float("nan"),
        "weights": {"max": float(weight.max()), "clipped_rows": int((1.0 / data.propensity > config.clip).sum())},
    }
    return TrainResult(serialize(data.spec, booster.model_to_string()), report, train_seconds)


def train_from_data_dir(data_dir: Path, surface: SurfaceConfig, config: TrainConfig, *, since: float | None = None,
                        progress: bool = False) -> tuple[TrainResult, Checkpoint]:
    """Load, train, publish to ``<data-dir>/models/<surface>.baseline``; nothing is published on an error."""
    log_dir = Path(data_dir) / "logs"
    if not log_dir.is_dir():
        raise InvalidInput("--data-dir", f"{log_dir} does not exist (has the server written any log?)")
    started = time.perf_counter()
    data = load_data(log_dir, surface, since=since, spec_sample=config.spec_sample,
                     max_decisions=config.max_decisions or None, workers=config.read_workers or os.cpu_count() or 1,
                     progress=progress)
    load_seconds = time.perf_counter() - started
    result = train(data, config, progress=progress)
    result.load_seconds = load_seconds
    registry = ModelRegistry(Path(data_dir) / "models")
    name = baseline_surface(surface.name)
    checkpoint = registry.publish(
        name, result.model, parent=registry.latest_version(name), data_range=data.data_range,
        parameters={**asdict(config), "format": "lambdarank-v1", "report": result.report,
                    "features": data.spec.names},
    )
    return result, checkpoint
