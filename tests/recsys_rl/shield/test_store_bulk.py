"""The chunked bulk helpers give exactly what the one-call versions gave (the version hash must not move), and a
1M-id-sized build does not hold the GIL for its whole duration."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from pathlib import Path

import pytest

from recsys_rl.shield import bulk
from recsys_rl.shield.edits import ShieldEdit
from recsys_rl.shield.rules import blocked_file_bytes, rules_from_dict, rules_to_dict, sorted_blocked
from recsys_rl.shield.store import ShieldStore, load_rules

N = 3 * bulk.CHUNK + 17  # several chunks and a partial one


def _ids(rng: random.Random, n: int = N) -> list[str]:
    alphabet = ["a", "b", "Z", "0", "é", "€", "𝄞", "\u2028x", "-", "ß"]  # multi-byte UTF-8, astral code points
    out = {"".join(rng.choices(alphabet, k=rng.randint(1, 12))) + str(i % 7) for i in range(n)}
    return sorted(out, key=lambda _: rng.random())


def _old_version(table: dict) -> str:
    """The version as rules_from_dict computed it before the chunking (one C call per step)."""
    rules = rules_from_dict({k: v for k, v in table.items() if k != "blocked_items"})
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps({"blocked_values": [], "max_per_value": list(rules.max_per_value), "pinned": [],
                         "min_feasible": rules.min_feasible}, sort_keys=True).encode())
    blocked = frozenset(table["blocked_items"])
    h.update(("\n".join(sorted(blocked)) + "\n").encode() if blocked else b"")
    return "shield-" + h.hexdigest()


@pytest.mark.parametrize("long_or_nul", ["", "x" * 100, "nul\0"])
def test_sorted_unique_is_pythons_order(long_or_nul: str) -> None:
    ids = _ids(random.Random(1)) + ([long_or_nul, long_or_nul[:-1] or "n"] if long_or_nul else [])
    assert bulk.sorted_unique(ids + ids[::7]) == sorted(set(ids))  # numpy path, the merge path (long ids, a NUL)
    ids = list(dict.fromkeys(ids))
    assert bulk.is_strictly_sorted(sorted(ids)) and not bulk.is_strictly_sorted(ids)
    ordered = sorted(ids)
    # A duplicate or an inversion exactly at a chunk boundary is found.
    assert not bulk.is_strictly_sorted(ordered[:bulk.CHUNK] + [ordered[bulk.CHUNK - 1]] + ordered[bulk.CHUNK:])


def test_version_and_file_bytes_are_the_old_ones() -> None:
    ids = _ids(random.Random(2))
    table = {"blocked_items": ids + ids[:50], "max_per_value": {"c": 2}}  # duplicates and random order
    rules = rules_from_dict(table)
    assert rules.version == _old_version(table)
    assert rules.blocked_items == frozenset(ids)
    assert blocked_file_bytes(rules.blocked_items) == ("\n".join(sorted(ids)) + "\n").encode()
    assert blocked_file_bytes(set(ids)) == blocked_file_bytes(rules.blocked_items)  # no cache: sorts
    assert rules_to_dict(rules)["blocked_items"] == sorted(ids)
    assert rules_from_dict({"blocked_items": sorted(ids), "max_per_value": {"c": 2}}) == rules  # sorted fast path
    mine = sorted(ids)
    kept = rules_from_dict({"blocked_items": mine})
    mine[0] = "changed"  # the caller's list is not the one kept with the rules
    assert blocked_file_bytes(kept.blocked_items) == ("\n".join(sorted(ids)) + "\n").encode()
    with pytest.raises(ValueError, match="is not an item id"):
        rules_from_dict({"blocked_items": ids[:bulk.CHUNK + 5] + ["bad\rid"]})


def test_split_and_read_lines_are_the_one_call_results(tmp_path: Path) -> None:
    ids = _ids(random.Random(3), 200_000)
    data = ("\n".join(ids) + "\n").encode()
    assert bulk.split_lines(data) == data.decode().split("\n")[:-1]
    assert bulk.split_lines(data + b"tail") == ids and bulk.split_lines(b"") == [] and bulk.split_lines(b"\n") == [""]
    path = tmp_path / "ids.txt"
    text = "\r\n".join(f"  {i}  " for i in ids) + "\n\n \u2029last"
    path.write_text(text, newline="")
    expected = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    assert bulk.read_text_lines(str(path)) == expected


def test_edits_give_the_same_rules_as_set_algebra(tmp_path: Path) -> None:
    ids = _ids(random.Random(4))
    base = rules_from_dict({"blocked_items": ids})
    for block, unblock in ((["new-1", ids[5]], [ids[7], "absent"]), ([f"n{i}" for i in range(100)], ids[:100])):
        rules, summary = ShieldEdit(block=block, unblock=unblock).apply(base)
        expected = (set(ids) | set(block)) - set(unblock)
        assert rules.blocked_items == expected
        assert rules.version == rules_from_dict({"blocked_items": sorted(expected)}).version
        added, removed = len(expected - set(ids)), len(set(ids) - expected)
        assert summary == f"blocked {added} item{'s' * (added != 1)}; unblocked {removed} item{'s' * (removed != 1)}"
        assert sorted_blocked(rules.blocked_items) == sorted(expected)
    file = tmp_path / "more.txt"
    file.write_text("\n".join([i for i in ids if "\u2028" not in i][:10] + ["f1", "f2"]) + "\n")  # splitlines
    rules, _ = ShieldEdit(blocked_items_file=str(file), unblock=["f2"]).apply(base)
    assert rules.blocked_items == set(ids) | {"f1"}
    store = ShieldStore(tmp_path / "d")
    store.apply_config({"s": rules})
    assert load_rules(tmp_path / "d", rules.version) == rules


def test_a_large_build_lets_another_thread_run() -> None:
    # 300k ids, unsorted: the old build held the GIL for one sorted() (~0.3 s here); now no gap is near that long.
    ids = [f"blocked-{i:07d}" for i in range(300_000)]
    random.Random(5).shuffle(ids)
    t = time.perf_counter()
    sorted(frozenset(ids))
    one_call = time.perf_counter() - t
    gaps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=tick)
    thread.start()
    try:
        rules_from_dict({"blocked_items": ids})
    finally:
        stop.set()
        thread.join()
    # Tolerance: half the one-call sort, and the ticker ran throughout (a GC pass or the OS may add one gap).
    assert len(gaps) > 20
    assert sorted(gaps)[-2] < max(0.5 * one_call, 0.05), (sorted(gaps)[-5:], one_call)
