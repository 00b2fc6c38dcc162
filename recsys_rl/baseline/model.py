"""Scoring with a LambdaRank baseline: request → feature matrix → LightGBM booster → one score per candidate.

Features are what the bandit sees, flattened as replay's ``CandidateRows`` does: the host's ``baseline_score``,
context numeric (``ctx_num_*``) and categorical (``ctx_cat_*``) features, candidate numeric (``item_num_*``) and
categorical (``item_cat_*``) features; tags and embeddings are not used. Categorical values are coded by a
vocabulary fixed at training (an unseen value is missing, as is an absent feature), so a model scores any request.

``model.bin`` is JSON: ``{"format": "lambdarank-v1", "features": {...}, "booster": <LightGBM model text>}``.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.features import item_key

FORMAT = "lambdarank-v1"
_NAN = math.nan


@dataclass
class FeatureSpec:
    """Column layout: [baseline_score, ctx numeric, ctx categorical, item numeric, item categorical]."""

    ctx_numeric: list[str] = field(default_factory=list)
    ctx_categorical: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> value -> code
    item_numeric: list[str] = field(default_factory=list)
    item_categorical: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return (["baseline_score"] + [f"ctx_num_{n}" for n in self.ctx_numeric]
                + [f"ctx_cat_{n}" for n in self.ctx_categorical] + [f"item_num_{n}" for n in self.item_numeric]
                + [f"item_cat_{n}" for n in self.item_categorical])

    @property
    def categorical_columns(self) -> list[int]:
        start = 1 + len(self.ctx_numeric)
        ctx = list(range(start, start + len(self.ctx_categorical)))
        start += len(self.ctx_categorical) + len(self.item_numeric)
        return ctx + list(range(start, start + len(self.item_categorical)))

    @classmethod
    def fit(cls, contexts: list[pb.Features], candidates: list[pb.Candidate]) -> FeatureSpec:
        """Names and vocabularies seen in a sample of the logs (training fixes them; see train.py)."""
        spec = cls()
        ctx_num: set[str] = set()
        item_num: set[str] = set()
        ctx_cat: dict[str, set[str]] = {}
        item_cat: dict[str, set[str]] = {}
        for context in contexts:
            ctx_num.update(context.numeric)
            for name, value in context.categorical.items():
                ctx_cat.setdefault(name, set()).add(value)
        for candidate in candidates:
            item_num.update(candidate.features.numeric)
            for name, value in candidate.features.categorical.items():
                item_cat.setdefault(name, set()).add(value)
        spec.ctx_numeric, spec.item_numeric = sorted(ctx_num), sorted(item_num)
        spec.ctx_categorical = {n: {v: i for i, v in enumerate(sorted(vs))} for n, vs in sorted(ctx_cat.items())}
        spec.item_categorical = {n: {v: i for i, v in enumerate(sorted(vs))} for n, vs in sorted(item_cat.items())}
        return spec

    def context_row(self, context: pb.Features) -> list[float]:
        numeric, categorical = context.numeric, context.categorical
        row = [numeric.get(n, _NAN) for n in self.ctx_numeric]
        row += [vocab.get(categorical.get(n, ""), _NAN) for n, vocab in self.ctx_categorical.items()]
        return row

    def candidate_row(self, candidate: pb.Candidate) -> list[float]:
        features = candidate.features
        numeric, categorical = features.numeric, features.categorical
        row = [numeric.get(n, _NAN) for n in self.item_numeric]
        row += [vocab.get(categorical.get(n, ""), _NAN) for n, vocab in self.item_categorical.items()]
        return row

    def matrix(self, context: pb.Features, candidates: Any, cache: ItemRowCache | None = None) -> np.ndarray:
        """[n, d] float64 for ``candidates`` (a sequence of pb.Candidate) under ``context``.

        ``cache``: the candidates' item parts from an :class:`ItemRowCache` of this spec (read from the protobuf
        maps only on a miss)."""
        n = len(candidates)
        ctx = self.context_row(context)
        item_start = 1 + len(ctx)
        x = np.empty((n, item_start + len(self.item_numeric) + len(self.item_categorical)), np.float64)
        x[:, 0] = np.fromiter((c.baseline_score for c in candidates), np.float64, n)
        x[:, 1:item_start] = ctx  # the context part once, broadcast over the candidates
        if n and x.shape[1] > item_start:
            x[:, item_start:] = cache.rows(candidates) if cache is not None else [
                self.candidate_row(c) for c in candidates]
        return x

    def to_json(self) -> dict[str, Any]:
        return {"ctx_numeric": self.ctx_numeric, "ctx_categorical": self.ctx_categorical,
                "item_numeric": self.item_numeric, "item_categorical": self.item_categorical}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(list(data["ctx_numeric"]), dict(data["ctx_categorical"]), list(data["item_numeric"]),
                   dict(data["item_categorical"]))


class ItemRowCache:
    """Bounded LRU of candidates' item parts (``FeatureSpec.candidate_row``), keyed like the VW bandit's item cache
    (``serving.features.item_key``: the candidate's bytes without its per-request baseline_score), so a hit reads
    no protobuf map. Thread-safe (Rank runs on a thread pool); ~1 µs of key per candidate."""

    def __init__(self, spec: FeatureSpec, max_items: int = 100_000) -> None:
        if max_items <= 0:
            raise ValueError(f"max_items: must be positive, got {max_items}")
        self.spec = spec
        self.max_items = max_items
        self._rows: OrderedDict[bytes, list[float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, candidates: Any) -> list[list[float]]:
        keys = [item_key(c) for c in candidates]
        out: list[list[float]] = []
        with self._lock:
            get, move_to_end = self._rows.get, self._rows.move_to_end
            for key, candidate in zip(keys, candidates):
                row = get(key)
                if row is None:
                    self.misses += 1
                    row = self._rows[key] = self.spec.candidate_row(candidate)
                    if len(self._rows) > self.max_items:
                        self._rows.popitem(last=False)
                else:
                    self.hits += 1
                    move_to_end(key)
                out.append(row)
        return out


def serialize(spec: FeatureSpec, booster_text: str) -> bytes:
    return json.dumps({"format": FORMAT, "features": spec.to_json(), "booster": booster_text}).encode()


class LambdaRankBaseline:
    """The decision path's Scorer for a published LambdaRank baseline (higher = rank first)."""

    def __init__(self, model: bytes, *, version: str = "", cache_items: int = 100_000) -> None:
        import lightgbm as lgb  # noqa: PLC0415 - only surfaces/replays that use a learned baseline pay for it

        data = json.loads(model)
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model (format {data.get('format')!r})")
        self.version = version
        self.features = FeatureSpec.from_json(data["features"])
        self.booster = lgb.Booster(model_str=data["booster"])
        self.cache = ItemRowCache(self.features, cache_items)

    def score(self, request: pb.RankRequest) -> np.ndarray:
        x = self.features.matrix(request.context, request.candidates, self.cache)
        # One thread: a request is ~100 rows, where OpenMP start-up would cost more than the trees.
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)


__all__ = ["FORMAT", "FeatureSpec", "ItemRowCache", "LambdaRankBaseline", "serialize"]
