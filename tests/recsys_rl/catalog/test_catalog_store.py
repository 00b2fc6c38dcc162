"""CatalogStore and CatalogVersion.complete on real files: versions, adoption by another store (another process's
view of the data dir), all-or-nothing writes, and the completion rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_rl.catalog.store import CatalogStore, CatalogStoreError
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb


def _item(item_id: str, price: float = 1.0, embedding: tuple[float, ...] = (1.0, 0.0)) -> catalog_pb.CatalogItem:
    item = catalog_pb.CatalogItem(item_id=item_id, embedding=embedding)
    item.features.numeric["price"] = price
    item.features.categorical["topic"] = "news"
    item.features.tags.append("fresh")
    return item


def _raw(*candidates: pb.Candidate) -> list[bytes]:
    return [c.SerializeToString() for c in candidates]


def test_versions_are_sequenced_adopted_by_other_stores_and_never_lose_a_concurrent_write(tmp_path: Path) -> None:
    first, second = CatalogStore(tmp_path), CatalogStore(tmp_path)  # two processes on one data dir
    assert first.current is None
    v1, written = first.upsert([[_item("a"), _item("b")]], actor="test")
    assert written == 2 and v1.version.startswith("000001-")
    v2, _ = second.upsert([[_item("c")]], actor="test")  # starts from the version on disk, not its empty memory
    assert v2.version.startswith("000002-") and sorted(v2.items) == ["a", "b", "c"]
    assert first.refresh() and first.current is not None and first.current.version == v2.version
    assert not first.refresh()  # nothing new: one stat
    assert CatalogStore(tmp_path).current.version == v2.version  # type: ignore[union-attr] - a restart reads it


def test_a_bad_write_applies_nothing(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path)
    good, _ = store.upsert([[_item("a")]], actor="test")
    with pytest.raises(InvalidInput, match=r"^requests\[1\]\.items\[0\]\.embedding: item 'z' has 3 values"):
        store.upsert([[_item("y")], [_item("z", embedding=(1.0, 2.0, 3.0))]], actor="test")
    assert CatalogStore(tmp_path).current.version == good.version  # type: ignore[union-attr]
    assert sorted(p.name for p in (tmp_path / "catalog" / "versions").iterdir()) == [
        f"{good.version}.json", f"{good.version}.parquet"]


def test_a_damaged_version_is_refused_and_the_one_in_force_keeps_serving(tmp_path: Path) -> None:
    store, writer = CatalogStore(tmp_path), CatalogStore(tmp_path)
    good, _ = store.upsert([[_item("a")]], actor="test")
    bad, _ = writer.upsert([[_item("b")]], actor="test")
    (tmp_path / "catalog" / "versions" / f"{bad.version}.parquet").write_bytes(b"not parquet")
    with pytest.raises(CatalogStoreError, match=bad.version):
        store.refresh()
    assert store.current is not None and store.current.version == good.version


def test_completion_fills_ids_only_candidates_overrides_per_field_and_leaves_the_rest_as_sent(tmp_path: Path) -> None:
    version, _ = CatalogStore(tmp_path).upsert([[_item("a", 2.0), _item("b", 3.0)]], actor="test")
    as_sent = pb.Candidate(item_id="other", baseline_score=1.0)
    as_sent.features.numeric["price"] = 5.0
    for _ in range(2):  # nothing held: used as it is (the second time from the per-version cache)
        heads, tails, changed = version.complete(_raw(as_sent))
        assert not changed and [h + t for h, t in zip(heads, tails, strict=True)] == _raw(as_sent)

    override = pb.Candidate(item_id="b", baseline_score=0.25)
    override.features.numeric["price"] = 9.0
    override.features.numeric["stock"] = 4.0
    ids_only = pb.Candidate(item_id="a", baseline_score=0.5)
    zero_baseline = pb.Candidate(item_id="a")
    stored: list[bytes] = []
    for _ in range(2):  # the second time from the per-version cache
        heads, tails, changed = version.complete(_raw(ids_only, override, zero_baseline, as_sent))
        done = [pb.Candidate.FromString(head + tail) for head, tail in zip(heads, tails, strict=True)]
        assert changed and tails[2] == b"" and len(tails[0]) == 9  # the request's own baseline records
        # The very stored item for a candidate sent by id only (the serving caches find it by identity), each time.
        assert heads[0] is heads[2] is version.items["a"] and heads[3] == _raw(as_sent)[0][:-9]
        stored.append(heads[1])
        assert (done[0].features.numeric["price"], list(done[0].embedding), done[0].baseline_score) == (2.0, [1, 0],
                                                                                                         0.5)
        assert dict(done[1].features.numeric) == {"price": 9.0, "stock": 4.0}
        assert (done[1].features.categorical["topic"], list(done[1].features.tags)) == ("news", ["fresh"])
        assert done[1].baseline_score == 0.25 and done[2].features.numeric["price"] == 2.0
        assert done[3] == as_sent
    assert stored[0] is stored[1]  # a merge too: one object per distinct candidate

    with pytest.raises(InvalidInput, match=r"^candidates\[1\]\.item_id: item 'nope' is not in the catalog"):
        version.complete(_raw(ids_only, pb.Candidate(item_id="nope", baseline_score=1.0)))
    wrong = pb.Candidate(item_id="a", embedding=[1.0, 2.0, 3.0])
    with pytest.raises(InvalidInput, match=r"^candidates\[0\]\.embedding: has 3 values"):
        version.complete(_raw(wrong))


def test_an_empty_id_is_left_to_the_request_rules(tmp_path: Path) -> None:
    from recsys_rl.serving.requests import validate_rank_request

    version, _ = CatalogStore(tmp_path).upsert([[_item("a")]], actor="test")
    request = pb.RankRequest(surface="default", slate_size=1)
    request.candidates.add(item_id="a", baseline_score=1.0)
    request.candidates.add(item_id="", baseline_score=1.0)
    with pytest.raises(InvalidInput, match=r"^candidates\[1\]\.item_id: must not be empty"):
        validate_rank_request(request, max_candidates=10, catalog=version)
