"""Event keys: the documented formula, reproduced by an independent pure-Python FNV-1a + splitmix64."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from evaluators.keys import event_keys

MASK = 2**64 - 1


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


# Keys written down once from the pure-Python reference above (which the published vectors below anchor).
EXPECTED = {
    "": 0xF52A15E9A9B5E89B,
    "a": 0x02C0BDBF481420F8,
    "event-42": 0x72D77A96053A6698,
    "12345": 0x5820A421F9E0AB69,
    "-7": 0x4BEB90B267C136E1,
    "café-€-😀": 0x3FD8064069F94138,
}


def test_reference_matches_published_vectors() -> None:
    # FNV-1a 64 test vectors (Fowler/Noll/Vo) and the first splitmix64 output from state 0 (Vigna's reference).
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8
    assert mix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    assert {s: mix64(fnv1a64(s.encode())) for s in EXPECTED} == EXPECTED


def test_string_keys_are_the_documented_hash() -> None:
    ids = list(EXPECTED)
    want = [EXPECTED[s] for s in ids]
    assert [int(k) for k in event_keys(pl.Series(ids))] == want
    assert [int(k) for k in event_keys(pa.array(ids))] == want                      # Arrow string (int32 offsets)
    assert [int(k) for k in event_keys(pa.chunked_array([ids[:2], ids[2:]]))] == want
    assert event_keys(pl.Series(ids)).dtype == np.uint64
    assert [int(k) for k in event_keys(pl.Series(ids, dtype=pl.Categorical))] == want
    assert [int(k) for k in event_keys(pa.array(ids).dictionary_encode())] == want


def test_integer_ids_hash_as_their_decimal_strings() -> None:
    want = [EXPECTED["12345"], EXPECTED["-7"], mix64(fnv1a64(b"0"))]
    assert [int(k) for k in event_keys(pl.Series([12345, -7, 0]))] == want
    assert [int(k) for k in event_keys(pl.Series([12345, -7, 0], dtype=pl.Int32))] == want
    assert [int(k) for k in event_keys(pa.array([12345, -7, 0], type=pa.int64()))] == want


def test_many_ids_of_mixed_lengths_and_slices() -> None:
    # Lengths from 0 to 300 bytes across several hashing slices, and an Arrow slice with a non-zero offset.
    rng = np.random.default_rng(0)
    ids = ["x" * int(n) + str(i) for i, n in enumerate(rng.integers(0, 300, 70_000))]
    got = event_keys(pl.Series(ids))
    for i in (0, 1, 65_535, 65_536, 69_999):
        assert int(got[i]) == mix64(fnv1a64(ids[i].encode()))
    sliced = pa.array(ids).slice(65_530, 10)
    assert np.array_equal(event_keys(sliced), got[65_530:65_540])
    assert np.unique(got).size == got.size


@pytest.mark.parametrize("bad, message", [
    (pl.Series(["a", None]), "non-null"),
    (pa.array(["a", None]), "non-null"),
    (pl.Series([1.5, 2.0]), "strings or integers"),
    ([1, 2], "polars Series or a pyarrow array"),
])
def test_bad_ids_are_named(bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        event_keys(bad)  # type: ignore[arg-type]
