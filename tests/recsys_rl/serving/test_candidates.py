"""CandidateView: one read of a request's candidates, the same values as reading the protobuf, shared by the cache."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from recsys_rl.config import ModelConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.serving.candidates import CandidateInfoCache, CandidateView, current_view, item_key, reading
from tests.helpers import make_request
from recsys_rl.serving.features import ItemExampleCache
from tests.recsys_rl.serving.test_bandit import event_for


def _request(n: int = 6, *, offset: int = 0) -> pb.RankRequest:
    request = pb.RankRequest(surface="s", slate_size=2)
    for i in range(n):
        c = request.candidates.add(item_id=f"item-{i + offset}", baseline_score=[0.0, 1.5, -2.0][i % 3])
        if i % 2:
            c.features.categorical["creator"] = f"c{i % 4}"
        c.features.numeric["price"] = float(i)
        if i % 3 == 2:
            c.embedding.extend([0.25, -1.0])
    return request


def test_view_reads_the_same_values_as_the_protobuf() -> None:
    request = _request(9)
    view = CandidateView(request, cache=CandidateInfoCache())
    assert view.keys == [item_key(c) for c in request.candidates]  # also with baseline 0 (not serialized) and < 0
    assert view.baseline.tobytes() == np.array([c.baseline_score for c in request.candidates]).tobytes()
    assert view.item_ids == [c.item_id for c in request.candidates]
    assert view.categorical("creator") == [c.features.categorical.get("creator") for c in request.candidates]
    assert view.categorical("missing") == [None] * 9 and len(view) == 9


def test_view_bytes_are_each_candidates_serialization_and_baselines_come_from_the_wire_only_when_exact() -> None:
    # A float whose last byte is baseline_score's tag (0x21): an embedding ending in it, then two more floats, puts
    # 0x21 + 8 bytes at the end of a candidate whose baseline is 0 (not serialized): a trailing "record" that is not one.
    trap = struct.unpack("<f", b"\0\0\0\x21")[0]
    request = _request(4)
    request.candidates[0].baseline_score = 0.0
    request.candidates[0].embedding[:] = [1.0, trap, 2.0, 3.0]
    request.candidates[1].embedding[:] = [1.0, trap, 2.0, 5.0]
    request.candidates[1].baseline_score = 0.0
    # Unknown fields (a newer host's schema) are serialized after the baseline: its record is not last.
    request.candidates[2].MergeFromString(b"\x28\x07")
    raw = [c.SerializeToString() for c in request.candidates]
    assert raw[0][-9] == raw[1][-9] == 0x21 and raw[2][-2:] == b"\x28\x07"
    cache = CandidateInfoCache()
    for _ in range(2):  # cold, then every candidate cached
        view = CandidateView(request, cache=cache)
        assert view.raw == raw  # what the decision log records: unchanged bytes
        assert view.baseline.tolist() == [c.baseline_score for c in request.candidates] == [0.0, 0.0, -2.0, 0.0]
        assert view.keys == [item_key(c) for c in request.candidates] and view.keys[0] != view.keys[1]
    assert len(cache) == 4
    other = _request(4)  # the same candidates with other baselines: found by their keys, baselines from the wire
    for i, baseline in enumerate([4.0, -0.5, 7.25, 1e-300]):
        other.candidates[i].baseline_score = baseline
    first = view
    view = CandidateView(other, cache=cache)
    assert view.baseline.tolist() == [4.0, -0.5, 7.25, 1e-300]
    # 0-2 are other content (no trap embedding, no unknown field); 3 is request's candidate 3 plus a baseline: its key
    # is the one cached for that candidate's whole bytes, and its baseline is read from its own last 9 bytes.
    assert view.keys[3] is first.keys[3] and len(cache) == 7


def test_cached_info_is_per_candidate_content_not_per_id() -> None:
    cache = CandidateInfoCache(max_items=3)
    first = CandidateView(_request(2), cache=cache)
    again = CandidateView(_request(2), cache=cache)  # equal bytes, new objects: found in the cache
    assert all(a is b for a, b in zip(first.keys, again.keys))  # the cached key objects are handed on
    changed = _request(2)
    changed.candidates[1].features.categorical["creator"] = "other"  # same id, other features: other content
    view = CandidateView(changed, cache=cache)
    assert view.categorical("creator") == [None, "other"] and first.categorical("creator") == [None, "c1"]
    assert len(cache) == 3
    CandidateView(_request(3, offset=10), cache=cache)
    assert len(cache) == 3  # bounded: the oldest entries went
    assert CandidateView(_request(2), cache=cache).keys[0] is not first.keys[0]  # evicted, so read again


@pytest.mark.parametrize(("mutate", "field", "reason"), [
    (lambda r: setattr(r.candidates[2], "baseline_score", math.nan), "candidates[2].baseline_score", "finite"),
    (lambda r: setattr(r.candidates[1], "item_id", ""), "candidates[1].item_id", "must not be empty"),
    (lambda r: setattr(r.candidates[3], "item_id", "item-0"), "candidates[3].item_id", "duplicate item_id 'item-0'"),
])
def test_bad_candidates_name_the_field(mutate, field: str, reason: str) -> None:
    request = _request()
    mutate(request)
    with pytest.raises(InvalidInput) as err:
        CandidateView(request, cache=CandidateInfoCache())
    assert err.value.field == field and reason in err.value.reason


def test_item_cache_entries_from_the_view_match_items() -> None:
    request = _request(5)
    view = CandidateView(request, cache=CandidateInfoCache())
    by_items: ItemExampleCache[str] = ItemExampleCache(prepare=str.upper)
    by_view: ItemExampleCache[str] = ItemExampleCache(prepare=str.upper)
    expected = [(e.item_id, e.line, e.example) for e in by_items.items(request.candidates)]
    assert [(e.item_id, e.line, e.example) for e in by_view.entries(view)] == expected
    assert [(e.item_id, e.line) for e in by_view.entries(view)] == [e[:2] for e in expected]  # now all hits
    assert (by_view.hits, by_view.misses) == (5, 5)
    # A cache smaller than the request: inserting this request's misses evicts its own earlier keys.
    small: ItemExampleCache[str] = ItemExampleCache(max_items=2)
    assert [e.item_id for e in small.entries(view)] == view.item_ids and len(small) == 2
    bad = _request(2)
    bad.candidates[1].features.numeric["price"] = math.inf
    with pytest.raises(InvalidInput, match=r'candidates\[1\]\.features\.numeric\["price"\]'):
        ItemExampleCache().entries(CandidateView(bad, cache=CandidateInfoCache()))


def test_current_view_only_inside_reading_and_only_for_its_request() -> None:
    request, other = _request(), _request()
    view = CandidateView(request, cache=CandidateInfoCache())
    assert current_view(request) is None
    assert reading(view, current_view) is view
    assert reading(view, lambda _r: current_view(other)) is None  # an equal request, not the same object
    assert current_view(request) is None


def test_vw_scores_from_the_view_are_the_scores_from_the_request() -> None:
    bandit = VWBandit(ModelConfig().vw_args)
    request = _request(8)
    request.context.categorical["device"] = "ios"
    bandit.learn(event_for(request, [3, 1], [0.5, 0.25]), [1.0, 0.0])  # scores that differ per candidate
    plain = bandit.score(request)
    assert len(set(plain.tolist())) > 1
    view = CandidateView(request, cache=CandidateInfoCache())
    assert reading(view, bandit.score).tobytes() == plain.tobytes()
    hits = bandit.cache.hits
    reading(view, bandit.validate)
    assert bandit.cache.hits == hits + 8  # validated through the same item cache entries


def test_a_candidate_without_a_baseline_never_takes_the_baseline_of_the_request_that_cached_its_bytes() -> None:
    """Regression: the cache keyed the bytes without the baseline but kept the first request's baseline with them, so
    the same candidate sent later with baseline 0 (not serialized) read that old baseline - and the baseline order
    of a later request changed with what earlier requests had sent."""
    cache = CandidateInfoCache()
    first = make_request(20, 5, request_id="a")  # baselines 20, 19, ...
    assert CandidateView(first, cache=cache).baseline.tolist() == [c.baseline_score for c in first.candidates]
    later = make_request(20, 5, request_id="b")
    for i, candidate in enumerate(later.candidates):
        candidate.baseline_score = 0.0 if i % 3 == 0 else 0.5 + i
    assert CandidateView(later, cache=cache).baseline.tolist() == [c.baseline_score for c in later.candidates]


def test_view_from_the_wire_bytes_equals_the_view_from_the_message() -> None:
    """The gRPC server hands the view the bytes the request was parsed from (ranker.servicer.WireRankRequest)."""
    request = _request(9)
    data = request.SerializeToString()
    sliced = CandidateView(pb.RankRequest.FromString(data), cache=CandidateInfoCache(), data=data)
    reserialized = CandidateView(request, cache=CandidateInfoCache())
    assert sliced.keys == reserialized.keys and sliced.raw == reserialized.raw
    assert sliced.baseline.tobytes() == reserialized.baseline.tobytes() and sliced.item_ids == reserialized.item_ids


def test_view_from_a_hosts_own_encoding_reads_the_same_candidates() -> None:
    """A host library may order fields differently: the candidates read (ids, baselines, features) are the same;
    the keys and logged bytes are the host's encoding, which parse to the same candidates."""
    request = _request(6)
    # Candidates first, then surface and slate_size, each candidate with baseline_score before item_id.
    data = b"".join(
        _candidate_field(pb.Candidate(baseline_score=c.baseline_score).SerializeToString()
                           + pb.Candidate(item_id=c.item_id, features=c.features,
                                          embedding=c.embedding).SerializeToString())
        for c in request.candidates) + pb.RankRequest(surface="s", slate_size=2).SerializeToString()
    parsed = pb.RankRequest.FromString(data)
    assert parsed == request  # the same message, encoded otherwise
    view = CandidateView(parsed, cache=CandidateInfoCache(), data=data)
    assert view.item_ids == [c.item_id for c in request.candidates]
    assert view.baseline.tolist() == [c.baseline_score for c in request.candidates]
    assert [pb.Candidate.FromString(r) for r in view.raw] == list(request.candidates)


def _candidate_field(candidate: bytes) -> bytes:
    """``candidate`` as RankRequest's candidates field (tag, length, bytes)."""
    number = pb.RankRequest.DESCRIPTOR.fields_by_name["candidates"].number
    length, varint = len(candidate), b""
    while True:
        byte, length = length & 0x7F, length >> 7
        varint += bytes([byte | (0x80 if length else 0)])
        if not length:
            return bytes([number << 3 | 2]) + varint + candidate


def test_mixed_requests_read_every_baseline_from_the_wire_or_the_candidate_alone() -> None:
    """Requests mixing cached candidates, new ones, baseline 0 (no record) and candidates shorter than a baseline
    record (item_id only): every path of the view, against the protobuf's own values, over one shared cache."""
    rng = np.random.default_rng(7)
    cache = CandidateInfoCache()
    for n in [1, 2, 5, 40, 40, 40, 100, 100]:
        request = pb.RankRequest(surface="s", slate_size=1)
        for item in rng.choice(150, size=n, replace=False):
            baseline = 0.0 if item % 5 == 0 else float(rng.normal())
            c = request.candidates.add(item_id=f"i{item}", baseline_score=baseline)
            if item % 7:  # the others stay shorter than a 9-byte baseline record
                c.features.categorical["topic"] = f"t{item % 3}"
        for view in (CandidateView(request, cache=cache), CandidateView(request, cache=cache,
                                                                        data=request.SerializeToString())):
            assert view.baseline.tobytes() == np.array([c.baseline_score for c in request.candidates]).tobytes()
            assert view.keys == [item_key(c) for c in request.candidates]
            assert view.item_ids == [c.item_id for c in request.candidates]
            assert view.categorical("topic") == [c.features.categorical.get("topic") for c in request.candidates]
