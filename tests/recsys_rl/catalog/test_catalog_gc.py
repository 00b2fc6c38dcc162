"""``recsys-rl catalog gc``: real files, the real CLI entry point (a subprocess), and readers loading versions while
gc deletes the old ones: a reader gets a whole version or the newer one, never half of one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from recsys_rl.catalog.store import CatalogStore, CatalogStoreError
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb

REPO = Path(__file__).resolve().parents[3]


def _item(i: int) -> catalog_pb.CatalogItem:
    return catalog_pb.CatalogItem(item_id=f"i{i:05d}", embedding=[float(i), 1.0])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "recsys_rl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=REPO)


def test_gc_keeps_the_newest_n_and_the_one_in_force_audited_through_the_cli(tmp_path: Path) -> None:
    store = CatalogStore(tmp_path)
    for v in range(5):
        store.upsert([[_item(v)]], actor="test")
    versions = store.versions()
    assert len(versions) == 5 and store.current is not None and store.current.version == versions[-1]

    dry = _cli("catalog", "gc", "--data-dir", str(tmp_path), "--keep", "2", "--dry-run")
    assert dry.returncode == 0 and "would delete 3 versions" in dry.stdout and store.versions() == versions
    done = _cli("catalog", "gc", "--data-dir", str(tmp_path), "--keep", "2", "--actor", "ops", "--reason", "space")
    assert done.returncode == 0, done.stderr
    assert store.versions() == versions[-2:]
    assert sorted(p.name for p in store.versions_dir.iterdir()) == sorted(
        f"{v}.{ext}" for v in versions[-2:] for ext in ("json", "parquet"))
    audit = [json.loads(line) for line in (tmp_path / "admin" / "gc_audit.jsonl").read_text().splitlines()]
    assert len(audit) == 1 and audit[0]["store"] == "catalog" and audit[0]["deleted"] == versions[:3]
    assert audit[0]["actor"] == "ops (recsys-rl catalog gc)" and audit[0]["in_force"] == versions[-1]
    reopened = CatalogStore(tmp_path)  # the version in force still loads, whole
    assert reopened.current is not None and len(reopened.current) == 5

    bad = _cli("catalog", "gc", "--data-dir", str(tmp_path), "--keep", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "--keep: must be at least 1 (the version in force is always kept), got 0"]
    assert store.versions() == versions[-2:]


def test_readers_loading_while_gc_deletes_see_whole_versions(tmp_path: Path) -> None:
    """A writer adds one item per version and runs gc --keep 1 after each; readers open the catalog fresh (read
    CURRENT, load the version) in a loop. Every load is whole (count = sequence) and none fails."""
    CatalogStore(tmp_path).upsert([[_item(0)]], actor="test")
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                current = CatalogStore(tmp_path).current
            except CatalogStoreError as exc:  # what a half-deleted version would raise
                errors.append(exc)
                return
            assert current is not None
            seen.append((int(current.version.split("-")[0]), len(current)))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    writer = CatalogStore(tmp_path)
    try:
        for v in range(1, 16):
            writer.upsert([[_item(v)]], actor="test")
            writer.collect_garbage(1, actor="test")
    finally:
        stop.set()
        for thread in readers:
            thread.join(timeout=30)
    assert not errors, errors
    assert len(seen) > 10 and all(count == sequence for sequence, count in seen)
    assert writer.versions() == [writer.current.version]  # type: ignore[union-attr]
