"""The LambdaRank feature matrix with the item-row cache equals the one read from the protobufs, whatever the
per-request baseline_score; the cache stays within its bound."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_rl.baseline.model import FeatureSpec, ItemRowCache
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb


def _candidate(i: int, baseline: float) -> pb.Candidate:
    features = pb.Features(numeric={"rating": i / 10}, categorical={"topic": "abc"[i % 3]})
    return pb.Candidate(item_id=f"i{i}", baseline_score=baseline, features=features)


def test_cached_rows_equal_uncached_and_stay_bounded() -> None:
    context = pb.Features(numeric={"visits": 3.0}, categorical={"device": "phone"})
    spec = FeatureSpec.fit([context], [_candidate(i, 0.0) for i in range(6)])
    cache = ItemRowCache(spec, max_items=4)
    rng = np.random.default_rng(0)
    for _ in range(50):
        candidates = [_candidate(int(i), float(rng.normal())) for i in rng.choice(6, size=5, replace=False)]
        cached = spec.matrix(context, candidates, cache)
        assert np.array_equal(cached, spec.matrix(context, candidates), equal_nan=True)
        assert np.array_equal(cached[:, 0], [c.baseline_score for c in candidates])  # never cached
        assert len(cache) <= 4
    assert cache.hits > 0  # baseline_score is not in the key: a new score does not split an item
    unseen = _candidate(7, 1.0)
    unseen.features.categorical["topic"] = "zzz"  # a value the vocabulary never saw is missing
    assert np.isnan(spec.matrix(context, [unseen], cache)[0, -1])
    with pytest.raises(ValueError, match="max_items"):
        ItemRowCache(spec, max_items=0)
