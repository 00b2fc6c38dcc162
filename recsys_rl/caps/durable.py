"""Durable admin files under ``D/admin/``, shared by the governance stores (caps, rollout): an append-only JSON-lines
audit trail, an atomically replaced JSON snapshot, and one cross-process lock.

The audit line is the write-ahead record: it is appended and fsynced before a change is put in force, and a store
rolls its snapshot forward from the trail on start. A crash in the middle of an append leaves a line without its
newline; the next append starts on a fresh line and readers skip (and count) the torn one.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"  # in the admin dir; every store on one data dir serialises its writes on it
T = TypeVar("T")


@contextmanager
def admin_lock(admin_dir: Path, thread_lock: threading.Lock) -> Iterator[None]:
    """This process's ``thread_lock`` and the admin dir's ``flock``, for one write."""
    with thread_lock:
        fd = os.open(admin_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_line(path: Path, line: str) -> None:
    """Appends ``line`` and a newline, fsynced (file and directory entry)."""
    data = line.encode() + b"\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a torn last line (a crash mid-append): start ours on a fresh line
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def read_lines(path: Path, parse: Callable[[dict[str, Any]], T]) -> tuple[list[T], int]:
    """The parsed JSON lines of ``path`` (none when it does not exist) and the number of torn lines skipped."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return [], 0
    entries: list[T] = []
    torn = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entries.append(parse(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            torn += 1
            log.warning("%s line %d skipped: %s", path, number, exc)
    return entries, torn


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Replaces ``path`` with ``data``: written beside it, fsynced, renamed, directory fsynced."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as out:
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


__all__ = ["GC_AUDIT_FILE", "LOCK_FILE", "admin_lock", "append_line", "fsync_dir", "read_lines", "record_gc",
           "write_json_atomically"]


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime ns) of ``path``, (0, 0) when it does not exist: a one-stat "has it changed" check for the
    append-only trails other processes write (the stores' refresh on the watcher tick)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return stat.st_size, stat.st_mtime_ns


GC_AUDIT_FILE = "gc_audit.jsonl"  # in the admin dir: every deletion of old catalog or shield versions


def record_gc(data_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Appends ``entry`` (store, actor, keep, deleted, kept, ...) with a sequence and time to ``D/admin/
    gc_audit.jsonl``, fsynced, before anything is deleted: the line is the write-ahead record of the deletion (a
    crash part-way leaves versions the next gc run deletes). Called under the lock of the store collected."""
    import time

    admin = Path(data_dir) / "admin"
    admin.mkdir(parents=True, exist_ok=True)
    path = admin / GC_AUDIT_FILE
    previous, _ = read_lines(path, lambda data: int(data["sequence"]))
    line = {"sequence": max(previous, default=0) + 1, "time_unix": time.time(), **entry}
    append_line(path, json.dumps(line, sort_keys=True))
    return line


def add_gc_arguments(parser: argparse.ArgumentParser, *, keep_help: str) -> None:
    """The options every ``... gc`` command shares (catalog, shield): what to keep, and who asks and why for the
    audit line ``record_gc`` writes."""
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--keep", type=int, required=True, help=keep_help)
    parser.add_argument("--actor", default="", help=f"who asks, for D/admin/{GC_AUDIT_FILE} (default: the OS user)")
    parser.add_argument("--reason", default="", help="why, for the audit trail")
    parser.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
