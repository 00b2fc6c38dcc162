"""``recsys-rl catalog show``: a version's manifest, feature coverage and items, through the real CLI entry point on
real catalog files; bad arguments exit 2 with one line naming the argument and print nothing on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from recsys_rl.catalog.store import CatalogStore
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

REPO = Path(__file__).resolve().parents[3]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "recsys_rl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=REPO)


def _item(item_id: str, price: float | None, genre: str | None, embedding: list[float]) -> catalog_pb.CatalogItem:
    features = pb.Features(numeric={} if price is None else {"price": price},
                           categorical={} if genre is None else {"genre": genre}, tags=["t1"] if genre else [])
    return catalog_pb.CatalogItem(item_id=item_id, features=features, embedding=embedding)


def test_show_prints_the_version_in_force_an_older_one_and_items_as_json(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path)
    first, _ = store.upsert([[_item("a", 1.5, "x", [1.0, 2.0]), _item("b", None, "y", [0.5, 0.25])]], actor="t1")
    second, _ = store.upsert([[_item("a", 9.0, None, [3.0, 4.0]), _item("c", 2.0, None, [0.0, 1.0])]], actor="t2")

    now = _cli("catalog", "show", "--data-dir", str(tmp_path), "c", "a")
    assert now.returncode == 0 and now.stderr == ""
    lines = now.stdout.splitlines()
    assert lines[0].startswith(f"catalog version {second.version} (in force): 3 items, dimension 2, created ")
    assert lines[0].endswith(f"by t2, parent {first.version}")
    assert lines[1] == f"versions on disk (2): {first.version}, {second.version}"
    assert lines[2] == "numeric features (items that have each): price (2)"  # a: 9.0, c: 2.0; b has none
    assert lines[3] == "categorical features (items that have each): genre (1)"  # b only: a's upsert dropped it
    assert [json.loads(line) for line in lines[4:]] == [
        {"item_id": "c", "numeric": {"price": 2.0}, "categorical": {}, "tags": [], "embedding": [0.0, 1.0]},
        {"item_id": "a", "numeric": {"price": 9.0}, "categorical": {}, "tags": [], "embedding": [3.0, 4.0]}]

    old = _cli("catalog", "show", "--data-dir", str(tmp_path), "--version", first.version, "a")
    assert old.returncode == 0 and old.stderr == ""
    assert old.stdout.splitlines()[0].startswith(
        f"catalog version {first.version} (in force: {second.version}): 2 items")
    assert json.loads(old.stdout.splitlines()[-1]) == {"item_id": "a", "numeric": {"price": 1.5},
                                                       "categorical": {"genre": "x"}, "tags": ["t1"],
                                                       "embedding": [1.0, 2.0]}


def test_show_refuses_bad_arguments_with_one_line(tmp_path: Path) -> None:
    empty = _cli("catalog", "show", "--data-dir", str(tmp_path))
    assert (empty.returncode, empty.stdout) == (2, "")
    assert empty.stderr.splitlines() == [f"--data-dir: no catalog under {tmp_path / 'catalog'}"]
    version, _ = CatalogStore(tmp_path).upsert([[_item("a", 1.0, "x", [1.0])]], actor="t")
    unknown = _cli("catalog", "show", "--data-dir", str(tmp_path), "a", "zz", "yy")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr.splitlines() == [f"ITEM_ID: not in catalog version {version.version}: 'zz', 'yy'"]
    gone = _cli("catalog", "show", "--data-dir", str(tmp_path), "--version", "000009-deadbeef0000")
    assert (gone.returncode, gone.stdout) == (2, "")
    assert gone.stderr.splitlines() == [f"--version: '000009-deadbeef0000' is not on disk (versions: {version.version})"]
