"""``recsys-rl catalog load --data-dir D FILE.parquet``: items, features and embeddings into the catalog, offline;
``recsys-rl catalog gc --data-dir D --keep N``: delete all but the newest N versions (never the one in force);
``recsys-rl catalog show --data-dir D [--version V] [ITEM_ID ...]``: what a version holds (the one in force unless
``--version``; a decision's logged ``catalog_version`` names the one it was served from): its manifest, the versions on
disk, how many items carry each feature, and the named items as JSON lines (features and embedding).

Columns: ``item_id`` (string, required); ``embedding`` (list of floats, optional; every row the same length); every
other string column a categorical feature and every other numeric column a numeric feature of that name; a list of
strings column named ``tags`` the item's tags. A null value means "no such feature" for that item. The whole file is
one new catalog version (``recsys_rl.catalog.store``), written under the data dir's catalog lock, so a server running
on the data dir adopts it on its next watcher tick (within a second). A bad file exits 2 with one line naming the
column, or the row and the column.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import polars as pl

from recsys_rl.caps.durable import add_gc_arguments
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.errors import InvalidInput

ACTOR = "recsys-rl catalog load"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    catalog = subparsers.add_parser("catalog", help="the item catalog (ids-only requests)")
    sub = catalog.add_subparsers(dest="catalog_command", required=True, parser_class=type(catalog))
    load = sub.add_parser("load", help="items from a parquet file into the catalog, as one new version")
    load.add_argument("--data-dir", required=True)
    load.add_argument("file", metavar="FILE.parquet")
    load.set_defaults(run=run_load)
    gc = sub.add_parser("gc", help="delete catalog versions beyond the newest N (never the one in force); audited")
    add_gc_arguments(gc, keep_help="versions kept, the one in force included (>= 1)")
    gc.set_defaults(run=run_gc)
    show = sub.add_parser("show", help="a catalog version's manifest and feature coverage, and items by id (JSON)")
    show.add_argument("--data-dir", required=True)
    show.add_argument("--version", default="", help="a version on disk (default: the one in force)")
    show.add_argument("item_ids", nargs="*", metavar="ITEM_ID", help="items to print as JSON lines")
    show.set_defaults(run=run_show)


def read_items(path: Path) -> list[catalog_pb.CatalogItem]:
    """The file's rows as catalog items; InvalidInput names the column (or row and column) at fault."""
    try:
        table = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InvalidInput(str(path), f"not a readable parquet file: {str(exc).splitlines()[0]}") from None
    schema = table.schema
    if "item_id" not in schema:
        raise InvalidInput("item_id", f"{path}: the column is missing (columns: {', '.join(schema) or 'none'})")
    if schema["item_id"] != pl.Utf8:
        raise InvalidInput("item_id", f"{path}: must be a string column, got {schema['item_id']}")
    numeric, categorical = [], []
    for name, dtype in schema.items():
        if name in ("item_id", "embedding"):
            continue
        if name == "tags" and dtype == pl.List(pl.Utf8):
            continue
        if dtype == pl.Utf8:
            categorical.append(name)
        elif dtype.is_numeric():
            numeric.append(name)
        else:
            raise InvalidInput(name, f"{path}: column type {dtype} is neither string nor numeric")
    if "embedding" in schema and not (isinstance(schema["embedding"], (pl.List, pl.Array))
                                      and schema["embedding"].inner.is_numeric()):  # type: ignore[union-attr]
        raise InvalidInput("embedding", f"{path}: must be a list of floats, got {schema['embedding']}")
    items = []
    for row, values in enumerate(table.iter_rows(named=True)):
        item_id = values["item_id"]
        if not item_id:
            raise InvalidInput(f"row {row}: item_id", "must not be empty or null")
        item = catalog_pb.CatalogItem(item_id=item_id)
        for name in numeric:
            value = values[name]
            if value is not None:
                if not math.isfinite(value):
                    raise InvalidInput(f"row {row}: {name}", f"item {item_id!r}: must be finite, got {value}")
                item.features.numeric[name] = float(value)
        for name in categorical:
            if values[name] is not None:
                item.features.categorical[name] = values[name]
        if values.get("tags"):
            item.features.tags.extend(values["tags"])
        embedding = values.get("embedding")
        if embedding is not None:
            if any(v is None for v in embedding):
                raise InvalidInput(f"row {row}: embedding", f"item {item_id!r}: has a null value")
            item.embedding.extend(embedding)
        items.append(item)
    return items


def run_load(args: argparse.Namespace) -> int:
    from recsys_rl.catalog.store import CatalogStore

    path = Path(args.file)
    items = read_items(path)
    try:
        version, written = CatalogStore(Path(args.data_dir)).upsert([items], actor=ACTOR)
    except InvalidInput as exc:  # the store names the item's index in the call: the file's row
        found = re.fullmatch(r"requests\[0\]\.items\[(\d+)\]\.(.+)", exc.field)
        raise InvalidInput(f"row {found[1]}: {found[2]}" if found else exc.field, exc.reason) from None
    print(f"catalog version {version.version}: {written:,} items loaded from {path} ({len(version):,} in the "
          f"catalog, dimension {version.dimension})")
    return 0


def gc_actor(args: argparse.Namespace, command: str) -> str:
    """``--actor``, else the OS user, with the command: what the gc audit line records as who deleted."""
    import getpass

    if args.actor and not args.actor.strip():
        raise InvalidInput("--actor", "must not be empty when given")
    return f"{args.actor or getpass.getuser()} ({command})"


def run_gc(args: argparse.Namespace) -> int:
    from recsys_rl.catalog.store import CATALOG_DIR, CURRENT_FILE, CatalogStore

    if args.keep < 1:
        raise InvalidInput("--keep", f"must be at least 1 (the version in force is always kept), got {args.keep}")
    if not (Path(args.data_dir) / CATALOG_DIR / CURRENT_FILE).exists():
        raise InvalidInput("--data-dir", f"no catalog under {Path(args.data_dir) / CATALOG_DIR}")
    deleted, kept = CatalogStore(Path(args.data_dir)).collect_garbage(
        args.keep, actor=gc_actor(args, "recsys-rl catalog gc"), reason=args.reason, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"catalog gc: {verb} {len(deleted)} versions{': ' + ', '.join(deleted) if deleted else ''}; "
          f"kept {len(kept)}: {', '.join(kept)}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Prints the version's summary (text) and then one JSON line per requested item, in the order asked."""
    import datetime
    import json
    from collections import Counter

    import logging

    from recsys_rl.catalog.store import CATALOG_DIR, CURRENT_FILE, CatalogStore, CatalogStoreError

    if not (Path(args.data_dir) / CATALOG_DIR / CURRENT_FILE).exists():
        raise InvalidInput("--data-dir", f"no catalog under {Path(args.data_dir) / CATALOG_DIR}")
    # Reading is not news: the store's "version in force" line would be the only thing on stderr besides an error.
    logging.getLogger("recsys_rl.catalog.store").setLevel(logging.WARNING)
    store = CatalogStore(Path(args.data_dir))
    versions = store.versions()
    in_force = store.current.version if store.current is not None else ""
    name = args.version or in_force
    if name not in versions:
        raise InvalidInput("--version", f"{name!r} is not on disk (versions: {', '.join(versions) or 'none'})")
    try:
        version = store.current if store.current is not None and name == in_force else store.load(name)
        manifest = store.manifest(name)
    except CatalogStoreError as exc:
        raise InvalidInput("--version", str(exc)) from None
    missing = [item_id for item_id in args.item_ids if item_id not in version.items]
    if missing:  # checked before printing anything: the output is whole or absent
        raise InvalidInput("ITEM_ID", f"not in catalog version {name}: {', '.join(map(repr, missing))}")
    items = [catalog_pb.CatalogItem.FromString(blob) for blob in version.items.values()]
    numeric: Counter[str] = Counter(key for item in items for key in item.features.numeric)
    categorical: Counter[str] = Counter(key for item in items for key in item.features.categorical)
    created = datetime.datetime.fromtimestamp(float(manifest["created_at"]), datetime.UTC)  # type: ignore[arg-type]
    print(f"catalog version {name}{' (in force)' if name == in_force else f' (in force: {in_force})'}: "
          f"{len(version):,} items, dimension {version.dimension}, created {created:%Y-%m-%d %H:%M:%S} UTC by "
          f"{manifest.get('actor', '?')}, parent {manifest.get('parent') or 'none'}")
    print(f"versions on disk ({len(versions)}): {', '.join(versions)}")
    for kind, counts in (("numeric", numeric), ("categorical", categorical)):
        listed = ", ".join(f"{key} ({count:,})" for key, count in sorted(counts.items())) or "none"
        print(f"{kind} features (items that have each): {listed}")
    for item_id in args.item_ids:
        item = catalog_pb.CatalogItem.FromString(version.items[item_id])
        print(json.dumps({"item_id": item.item_id, "numeric": dict(sorted(item.features.numeric.items())),
                          "categorical": dict(sorted(item.features.categorical.items())),
                          "tags": list(item.features.tags), "embedding": list(item.embedding)}))
    return 0


__all__ = ["gc_actor", "read_items", "register", "run_gc", "run_load", "run_show"]
