"""The item catalog of a data dir: immutable versions under ``D/catalog/``, one in force, adopted without a restart.

* ``catalog/versions/<version>.parquet`` — every item of the version: ``item_id`` (string) and ``item`` (the
  serialized ``CatalogItem``, deterministic bytes). Written once, beside its final name, fsynced, renamed.
* ``catalog/versions/<version>.json`` — its manifest: sequence, parent version, count, dimension, created_at,
  actor, and the sha256 of the items (id order) that the version's name ends with.
* ``catalog/CURRENT`` — the version in force, replaced atomically after both files are durable: a reader sees the
  old version or the new one, never a half-written one.

Versions are ``<sequence>-<sha256[:12]>`` (``000003-1f2e...``): ordered, and equal names mean equal content. Every
write (gRPC upsert/delete, ``recsys-rl catalog load``) runs under the data dir's catalog lock (``flock``, shared by
every process) and starts from the version in force on disk, so concurrent writers never lose each other's items.
A serving process reads ``current`` once per request (one attribute read: a version is never seen half-applied)
and adopts other processes' versions on the model watcher's tick (``refresh``: one ``stat`` when none changed).
Old versions stay on disk until ``recsys-rl catalog gc --keep N`` (:meth:`CatalogStore.collect_garbage`) deletes
all but the newest N; the decision log holds the completed candidates, so replay never needs them.

A version exists while its manifest does: gc deletes the manifest first, then the parquet, and a reader opens the
parquet first, then the manifest, and reads both through the open files (an unlinked file stays readable). A reader
therefore loads a whole version or finds it gone (:class:`CatalogVersionGone`: CURRENT moved on and gc took the one
it had read), never half of one; ``refresh`` then reads CURRENT again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import polars as pl

from recsys_rl.caps.durable import admin_lock, fsync_dir, record_gc, write_json_atomically
from recsys_rl.catalog.items import CatalogVersion, check_items
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.errors import InvalidInput

log = logging.getLogger(__name__)

CATALOG_DIR = "catalog"
VERSIONS_DIR = "versions"
CURRENT_FILE = "CURRENT"


class CatalogStoreError(RuntimeError):
    """The version CURRENT names cannot be read back (missing or damaged files)."""


class CatalogVersionGone(CatalogStoreError):
    """The version was deleted by ``catalog gc`` between reading CURRENT and loading it (a newer one is in force)."""


GC_ACTOR = "recsys-rl catalog gc"


def _digest(items: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for item_id in sorted(items):
        blob = items[item_id]
        digest.update(len(blob).to_bytes(8, "little"))
        digest.update(blob)
    return digest.hexdigest()


class CatalogStore:
    """The catalog of ``data_dir``; thread-safe; writes serialised across processes."""

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir) / CATALOG_DIR
        self.versions_dir = self.root / VERSIONS_DIR
        self.current_path = self.root / CURRENT_FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self.current: CatalogVersion | None = None  # None: no catalog (surfaces behave as without one)
        if self.current_path.exists():
            self.refresh()

    # --- reading -----------------------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Adopts the version another process put in force; True when it changed. One ``stat`` when none did."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        with self._lock:
            self._seen = stamp
            for attempt in range(3):  # gc never deletes the version CURRENT names: a re-read finds a whole one
                name = self._read_current()
                if not name or (self.current is not None and self.current.version == name):
                    return False
                try:
                    self.current = self._load(name)
                    break
                except CatalogVersionGone:
                    if attempt == 2:
                        raise
            log.info("catalog version %s in force (%d items, dimension %d)", name, len(self.current),
                     self.current.dimension)
            return True

    def get(self, item_ids: Sequence[str]) -> tuple[str, list[catalog_pb.CatalogItem], list[str]]:
        """(version, the items found in request order, the ids not found)."""
        current = self.current
        items = {} if current is None else current.items
        found = [catalog_pb.CatalogItem.FromString(items[i]) for i in item_ids if i in items]
        return ("" if current is None else current.version), found, [i for i in item_ids if i not in items]

    # --- changes -----------------------------------------------------------------------------------------------

    def upsert(self, batches: Iterable[Sequence[catalog_pb.CatalogItem]], *, actor: str) -> tuple[CatalogVersion, int]:
        """Validates every item of every batch, then records them as one new version (all or nothing). Returns the
        version in force and the number of items written. Raises InvalidInput naming the item and field."""
        batches = list(batches)
        with admin_lock(self._dir(), self._lock):
            base = self._adopt_locked()
            written, dimension = check_items(batches, dimension=None if base is None or not base.items
                                             else base.dimension)
            if not written:
                raise InvalidInput("requests", "no items to upsert")
            items = dict(base.items) if base is not None else {}
            items.update(written)
            return self._record(items, dimension, base, actor=actor), len(written)

    def delete(self, item_ids: Sequence[str], *, actor: str) -> tuple[CatalogVersion | None, int]:
        """Removes the ids the catalog holds (others are ignored) as one new version; (version, removed count)."""
        with admin_lock(self._dir(), self._lock):
            base = self._adopt_locked()
            if base is None:
                return None, 0
            items = dict(base.items)
            removed = sum(items.pop(item_id, None) is not None for item_id in set(item_ids))
            if not removed:
                return base, 0
            dimension = base.dimension if items else 0
            return self._record(items, dimension, base, actor=actor), removed

    def load(self, version: str) -> CatalogVersion:
        """Version ``version`` as on disk (any version still there, not only the one in force); CatalogStoreError
        (CatalogVersionGone when gc deleted it) when it cannot be read."""
        return self._load(version)

    def manifest(self, version: str) -> dict[str, object]:
        """The manifest of ``version`` (sequence, parent, count, dimension, created_at, actor, sha256)."""
        try:
            return json.loads((self.versions_dir / f"{version}.json").read_bytes())
        except FileNotFoundError:
            raise CatalogVersionGone(f"catalog version {version}: no manifest in {self.versions_dir}") from None
        except (OSError, ValueError) as exc:
            raise CatalogStoreError(f"catalog version {version}: unreadable manifest: {exc}") from exc

    def versions(self) -> list[str]:
        """The versions on disk (those with a manifest), oldest first (names sort by sequence)."""
        return sorted(p.name.removesuffix(".json") for p in self.versions_dir.glob("*.json")
                      if not p.name.startswith("."))

    def collect_garbage(self, keep: int, *, actor: str = GC_ACTOR, reason: str = "",
                        dry_run: bool = False) -> tuple[list[str], list[str]]:
        """Deletes every version but the newest ``keep`` and the one in force; (deleted, kept), oldest first.

        Under the catalog lock (no write runs meanwhile); audited in ``D/admin/gc_audit.jsonl`` before anything is
        deleted; each version's manifest goes first (module docstring). Serving processes hold their version in
        memory and replay reads the log's completed candidates, so no reader needs a deleted version's files.
        """
        if keep < 1:
            raise InvalidInput("--keep", f"must be at least 1 (the version in force is always kept), got {keep}")
        with admin_lock(self._dir(), self._lock):
            current = self._read_current()
            versions = self.versions()
            kept = versions[-keep:] + ([current] if current and current not in versions[-keep:] else [])
            doomed = [v for v in versions if v not in kept]
            # Parquets without a manifest: a crash between a version's two files, or a gc stopped part-way.
            orphans = sorted({p.name.removesuffix(".parquet") for p in self.versions_dir.glob("*.parquet")
                              if not p.name.startswith(".")} - set(versions))
            if dry_run or not (doomed or orphans):
                return doomed + orphans, sorted(kept)
            with admin_lock(_mkdir(self.root.parent / "admin"), threading.Lock()):  # the trail's sequence
                record_gc(self.root.parent, {"store": "catalog", "actor": actor, "reason": reason, "keep": keep,
                                             "in_force": current, "deleted": doomed + orphans, "kept": sorted(kept)})
            for name in doomed:
                (self.versions_dir / f"{name}.json").unlink(missing_ok=True)  # from here on the version is gone
                (self.versions_dir / f"{name}.parquet").unlink(missing_ok=True)
            for name in orphans:
                (self.versions_dir / f"{name}.parquet").unlink(missing_ok=True)
            fsync_dir(self.versions_dir)
            log.info("catalog gc by %s: %d versions deleted, %d kept (%s in force)", actor, len(doomed) + len(orphans),
                     len(kept), current or "none")
            return doomed + orphans, sorted(kept)

    # --- internals ---------------------------------------------------------------------------------------------

    def _dir(self) -> Path:
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        return self.root

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.current_path)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read_current(self) -> str:
        try:
            return self.current_path.read_text().strip()
        except FileNotFoundError:
            return ""

    def _adopt_locked(self) -> CatalogVersion | None:
        """Under the locks: the version in force on disk (another process may have written one since ours)."""
        name = self._read_current()
        self._seen = self._stamp()
        if name and (self.current is None or self.current.version != name):
            self.current = self._load(name)
        return self.current

    def _load(self, name: str) -> CatalogVersion:
        manifest_path = self.versions_dir / f"{name}.json"
        try:
            # The parquet first, then the manifest (module docstring): gc deletes them in the other order.
            with open(self.versions_dir / f"{name}.parquet", "rb") as parquet, open(manifest_path, "rb") as raw:
                manifest = json.loads(raw.read())
                table = pl.read_parquet(parquet)
            items = dict(zip(table["item_id"].to_list(), table["item"].to_list(), strict=True))
        except FileNotFoundError as exc:
            if not manifest_path.exists() and self._read_current() != name:
                raise CatalogVersionGone(f"catalog version {name} was deleted by gc ({exc})") from exc
            raise CatalogStoreError(f"catalog version {name} in {self.versions_dir} is unreadable: {exc}") from exc
        except (OSError, ValueError, KeyError, pl.exceptions.PolarsError) as exc:
            raise CatalogStoreError(f"catalog version {name} in {self.versions_dir} is unreadable: {exc}") from exc
        if len(items) != int(manifest["count"]):
            raise CatalogStoreError(f"catalog version {name}: {len(items)} items, its manifest says "
                                    f"{manifest['count']} (damaged)")
        return CatalogVersion(name, int(manifest["dimension"]), float(manifest["created_at"]), items)

    def _record(self, items: dict[str, bytes], dimension: int, base: CatalogVersion | None, *,
                actor: str) -> CatalogVersion:
        """Writes the version's files (fsynced), then CURRENT; then puts it in force here. Under the locks."""
        sequence = int(base.version.split("-")[0]) + 1 if base is not None else 1
        digest = _digest(items)
        name = f"{sequence:06d}-{digest[:12]}"
        created_at = time.time()
        ids = list(items)
        parquet = self.versions_dir / f"{name}.parquet"
        tmp = parquet.with_name(f".{parquet.name}.tmp-{os.getpid()}")
        pl.DataFrame({"item_id": ids, "item": [items[i] for i in ids]},
                     schema={"item_id": pl.Utf8, "item": pl.Binary}).write_parquet(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, parquet)
        write_json_atomically(self.versions_dir / f"{name}.json", {
            "version": name, "sequence": sequence, "parent": base.version if base is not None else "",
            "count": len(items), "dimension": dimension, "created_at": created_at, "actor": actor,
            "sha256": digest})
        fsync_dir(self.versions_dir)
        tmp_current = self.current_path.with_name(f".{CURRENT_FILE}.tmp-{os.getpid()}")
        with open(tmp_current, "w") as out:
            out.write(name + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_current, self.current_path)
        fsync_dir(self.root)
        self._seen = self._stamp()
        self.current = CatalogVersion(name, dimension, created_at, items)
        log.info("catalog version %s recorded by %s (%d items)", name, actor, len(items))
        return self.current


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = ["CATALOG_DIR", "CURRENT_FILE", "CatalogStore", "CatalogStoreError", "CatalogVersionGone"]
