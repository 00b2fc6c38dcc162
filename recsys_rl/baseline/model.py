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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

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

    def matrix(self, context: pb.Features, candidates: Any) -> np.ndarray:
        """[n, d] float64 for ``candidates`` (a sequence of pb.Candidate) under ``context``."""
        n = len(candidates)
        ctx = self.context_row(context)
        x = np.empty((n, 1 + len(ctx) + len(self.item_numeric) + len(self.item_categorical)), np.float64)
        x[:, 1:1 + len(ctx)] = ctx  # the context part once, broadcast over the candidates
        item_start = 1 + len(ctx)
        for i, candidate in enumerate(candidates):
            x[i, 0] = candidate.baseline_score
            x[i, item_start:] = self.candidate_row(candidate)
        return x

    def to_json(self) -> dict[str, Any]:
        return {"ctx_numeric": self.ctx_numeric, "ctx_categorical": self.ctx_categorical,
                "item_numeric": self.item_numeric, "item_categorical": self.item_categorical}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(list(data["ctx_numeric"]), dict(data["ctx_categorical"]), list(data["item_numeric"]),
                   dict(data["item_categorical"]))


def serialize(spec: FeatureSpec, booster_text: str) -> bytes:
    return json.dumps({"format": FORMAT, "features": spec.to_json(), "booster": booster_text}).encode()


class LambdaRankBaseline:
    """The decision path's Scorer for a published LambdaRank baseline (higher = rank first)."""

    def __init__(self, model: bytes, *, version: str = "") -> None:
        import lightgbm as lgb  # noqa: PLC0415 - only surfaces/replays that use a learned baseline pay for it

        data = json.loads(model)
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model (format {data.get('format')!r})")
        self.version = version
        self.features = FeatureSpec.from_json(data["features"])
        self.booster = lgb.Booster(model_str=data["booster"])

    def score(self, request: pb.RankRequest) -> np.ndarray:
        x = self.features.matrix(request.context, request.candidates)
        # One thread: a request is ~100 rows, where OpenMP start-up would cost more than the trees.
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)


__all__ = ["FORMAT", "FeatureSpec", "LambdaRankBaseline", "serialize"]
