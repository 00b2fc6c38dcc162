"""VW lines from protobuf features: escaping, validation with field paths, the item cache."""

from __future__ import annotations

import math

import pytest

from recsys_rl.errors import InvalidInput
from recsys_rl.serving.features import ItemExampleCache, context_line, escape, item_key, item_line
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb


def candidate(item_id: str = "a", **numeric: float) -> pb.Candidate:
    c = pb.Candidate(item_id=item_id, baseline_score=0.25)
    c.features.numeric.update(numeric)
    c.features.categorical["genre"] = "sci fi"
    c.features.tags.extend(["x|y", "z"])
    c.embedding.extend([0.5, -1.25])
    return c


def test_layout_and_escaping() -> None:
    c = pb.Candidate(item_id="id with space:1|x")
    c.features.numeric["pri ce"] = 2.5
    c.features.categorical["a=b"] = "c:d"
    c.features.tags.append("100%")
    c.embedding.extend([0.5, 2.0])
    line = item_line(c, "candidates[0]")
    assert line == "|I id=id%20with%20space%3A1%7Cx |F pri%20ce:2.5 a%3Db=c%3Ad |G 100%25 |E e0:0.5 e1:2"
    ctx = pb.Features(numeric={"age": 31.0}, categorical={"device": "ios"}, tags=["evening"])
    assert context_line(ctx) == "shared |C age:31.0 device=ios |T evening"
    assert context_line(pb.Features()) == "shared |C"  # a bare "shared" is not read as shared by VW
    # Escaping is injective: "a=b"="c" and "a"="b=c" stay different.
    assert escape("a=b") + "=" + escape("c") != escape("a") + "=" + escape("b=c")
    assert escape("%20") != escape(" ")


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda r: r.candidates[1].features.numeric.update(price=math.nan), 'candidates[1].features.numeric["price"]', "must be finite, got nan"),
        (lambda r: r.candidates[1].features.numeric.update(price=math.inf), 'candidates[1].features.numeric["price"]', "must be finite"),
        (lambda r: r.candidates[1].features.numeric.update(price=1e300), 'candidates[1].features.numeric["price"]', "float32"),
        (lambda r: r.candidates[1].embedding.__setitem__(1, math.nan), "candidates[1].embedding[1]", "must be finite"),
        (lambda r: setattr(r.candidates[1], "item_id", ""), "candidates[1].item_id", "must not be empty"),
        (lambda r: r.candidates[1].features.numeric.update({"": 1.0}), "candidates[1].features.numeric", "names must not be empty"),
    ],
)  # fmt: skip
def test_validation_names_the_field(mutate, field: str, reason: str) -> None:
    request = pb.RankRequest(candidates=[candidate("a"), candidate("b")])
    mutate(request)
    with pytest.raises(InvalidInput) as err:
        ItemExampleCache().items(request.candidates)
    assert err.value.field == field and reason in err.value.reason


def test_context_validation_names_the_field() -> None:
    with pytest.raises(InvalidInput) as err:
        context_line(pb.Features(numeric={"x": math.nan}))
    assert str(err.value) == 'context.numeric["x"]: must be finite, got nan'


def test_cache_hits_ignore_baseline_but_not_features() -> None:
    cache: ItemExampleCache[str] = ItemExampleCache(max_items=2, prepare=lambda line: "parsed:" + line)
    a = candidate("a", price=1.0)
    first = cache.get(a, 0)
    assert first.example == "parsed:" + first.line and (cache.hits, cache.misses) == (0, 1)
    a.baseline_score = 0.75  # changes per request; must not split the cache
    assert cache.get(a, 0) is first and cache.hits == 1
    a.features.numeric["price"] = 2.0
    assert cache.get(a, 0) is not first and cache.misses == 2
    b = candidate("b", price=1.0)
    assert item_key(b) != item_key(a)
    cache.get(b, 1)  # evicts the least recently used entry
    assert len(cache) == 2 and cache.evictions == 1
    assert cache.lines([a, b]) == [item_line(a, "x"), item_line(b, "x")]
    assert cache.stats()["hits"] == 1


def test_key_strips_only_a_real_trailing_baseline() -> None:
    a = candidate("a", price=1.0)
    b = pb.Candidate()
    b.CopyFrom(a)
    b.baseline_score = 0.0
    assert item_key(a) == item_key(b) == b.SerializeToString(deterministic=True)
