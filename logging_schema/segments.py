"""On-disk framing of decision/outcome logs: segment files of checksummed records.

Layout of one segment file::

    file header   8 bytes  magic  b"RSRLLOG\\x00"
                  4 bytes  format version, uint32 little-endian (FORMAT_VERSION)
    record*       4 bytes  payload length n, uint32 little-endian
                  4 bytes  zlib.crc32(payload), uint32 little-endian
                  n bytes  payload = serialized recsys_rl.logging.v1.LogRecord

Segments live flat in a *stream* directory and are named ``events-<12-digit sequence>.seg``, so the
lexicographic order of the names is the order in which they were written. A writer never appends to a
segment it did not create (a segment left by a crash may end in a torn record); it starts at the next
sequence number instead.

A log directory (``D/logs``) holds one stream per writer: serving with one process writes its segments in
``D/logs`` itself; serving with N worker processes gives worker K the stream ``D/logs/worker-K/``
(``stream_dir``). ``list_streams`` names them; readers read all of them as one log (``reader``: in what order).
Other subdirectories of a log directory are not streams and are never read (e.g. a copy kept beside the log).

Damage a reader can meet, and what ``scan_segment`` does about it:

* **torn tail** - the file ends inside a record (or inside the file header): the usual result of a
  crash mid-write. The partial record is skipped and counted once; it is not an error.
* **checksum mismatch** - a whole record whose CRC does not match. The record is skipped and counted.
  Its length field is no longer trustworthy either (the flipped bit may be in it), so nothing after it in
  that segment can be located reliably: reading resynchronises at the *next segment*, and the abandoned
  bytes are reported as ``skipped_bytes``.
* **implausible length** - a length above MAX_RECORD_BYTES cannot be a record we wrote; it is treated as
  a checksum mismatch (corrupt, resynchronise at the next segment), not as a torn tail.
* **bad magic / unknown version** - the file is not one of our segments: SegmentFormatError naming it.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

MAGIC = b"RSRLLOG\x00"
FORMAT_VERSION = 1
FILE_HEADER = struct.Struct("<8sI")
FRAME_HEADER = struct.Struct("<II")
HEADER_BYTES = FILE_HEADER.size  # 12
FRAME_HEADER_BYTES = FRAME_HEADER.size  # 8
# Far above any DecisionEvent we produce (10k candidates with features is a few MiB); a larger length
# field is damage, not data.
MAX_RECORD_BYTES = 256 << 20

SEGMENT_PREFIX = "events-"
SEGMENT_SUFFIX = ".seg"
_SEGMENT_NAME = re.compile(r"^events-(\d{12})\.seg$")
WORKER_PREFIX = "worker-"
_WORKER_NAME = re.compile(r"^worker-(\d+)$")


class SegmentFormatError(ValueError):
    """A file in a log directory is not a recsys-rl log segment (bad magic or unsupported version)."""


def file_header() -> bytes:
    """The header every segment starts with."""
    return FILE_HEADER.pack(MAGIC, FORMAT_VERSION)


def frame(payload: bytes) -> bytes:
    """``payload`` with its length and CRC32 in front (see the module docstring)."""
    return FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def write_framed_file(final: Path, tmp: Path, header: bytes, payloads: Iterable[bytes],
                      write: Callable[[int, bytes | memoryview], int], fsync: Callable[[int], None]) -> int:
    """``header`` then every payload framed (length, CRC32), written to ``tmp``, fsynced and renamed to ``final``
    (the what-if companions); returns the size. Raises OSError, leaving neither file half-written. ``write``/
    ``fsync``: the log writer's system calls (tests inject a full disk through them)."""
    parts = [header]
    for payload in payloads:
        parts += (FRAME_HEADER.pack(len(payload), zlib.crc32(payload)), payload)
    data = memoryview(b"".join(parts))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        done = 0
        while done < len(data):
            done += write(fd, data[done:])
        fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, final)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


def read_framed_file(path: Path, header: bytes, max_frame: int) -> list[memoryview] | None:
    """The payloads of a file ``write_framed_file`` wrote with ``header``; None when it is missing or unreadable, has
    another header, or a frame is torn, longer than ``max_frame`` or fails its CRC (a companion is all or nothing)."""
    try:
        data = memoryview(path.read_bytes())
    except OSError:
        return None
    if data[:len(header)] != header:
        return None
    payloads: list[memoryview] = []
    offset, end, unpack_from, crc32 = len(header), len(data), FRAME_HEADER.unpack_from, zlib.crc32
    while offset < end:
        if end - offset < FRAME_HEADER_BYTES:
            return None
        length, checksum = unpack_from(data, offset)
        start = offset + FRAME_HEADER_BYTES
        offset = start + length
        if length > max_frame or offset > end:
            return None
        payload = data[start:offset]
        if crc32(payload) != checksum:
            return None
        payloads.append(payload)
    return payloads


_Loaded = TypeVar("_Loaded")


def read_ahead(paths: list[Path], load: Callable[[Path], _Loaded], thread_name: str) -> Iterator[tuple[int, Path, _Loaded]]:
    """``(i, path, load(path))`` for each path in order, ``load`` of the next path running in a thread meanwhile:
    reading, CRC32 and Arrow decoding release the GIL, so the next segment is read while this one is parsed. An
    exception from ``load`` is raised in its turn; an abandoned iteration cancels what is pending."""
    if not paths:
        return
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
    try:
        ahead = reader.submit(load, paths[0])
        for i, path in enumerate(paths):
            loaded = ahead.result()
            if i + 1 < len(paths):
                ahead = reader.submit(load, paths[i + 1])
            yield i, path, loaded
    finally:
        reader.shutdown(wait=False, cancel_futures=True)


def segment_name(sequence: int) -> str:
    """``events-000000000042.seg`` for sequence 42; zero-padding keeps name order = write order."""
    if not 0 <= sequence < 10**12:
        raise ValueError(f"sequence: must be in [0, 10^12), got {sequence}")
    return f"{SEGMENT_PREFIX}{sequence:012d}{SEGMENT_SUFFIX}"


def segment_sequence(path: Path) -> int | None:
    """The sequence number in a segment's file name, or None when the name is not a segment name."""
    match = _SEGMENT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def list_segments(stream: Path) -> list[Path]:
    """The segments of one stream directory, in write order (files that are not segments are ignored).

    Only the files directly in ``stream``: the segments of a whole log, every stream, are ``log_segments``.
    """
    stream = Path(stream)
    if not stream.is_dir():
        raise FileNotFoundError(f"log_dir: {stream} is not a directory")
    return sorted(p for p in stream.iterdir() if p.is_file() and segment_sequence(p) is not None)


def stream_dir(log_dir: Path, worker: int) -> Path:
    """``log_dir/worker-<worker>``: the stream of serving worker ``worker`` (0, 1, ...)."""
    if worker < 0:
        raise ValueError(f"worker: must be >= 0, got {worker}")
    return Path(log_dir) / f"{WORKER_PREFIX}{worker}"


def stream_name(log_dir: Path, stream: Path) -> str:
    """How reports name a stream: ``worker-3``, or ``.`` for the segments directly in ``log_dir``."""
    return Path(stream).relative_to(log_dir).as_posix()


def list_streams(log_dir: Path) -> list[Path]:
    """The streams of the log at ``log_dir``: ``log_dir`` itself when it holds segments (one serving process),
    then its ``worker-K`` subdirectories by K (2 before 10), with or without segments yet."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"log_dir: {log_dir} is not a directory")
    workers: list[tuple[int, Path]] = []
    own = False
    for path in log_dir.iterdir():
        if path.is_dir():
            match = _WORKER_NAME.match(path.name)
            if match:
                workers.append((int(match.group(1)), path))
        elif not own and segment_sequence(path) is not None and path.is_file():
            own = True
    return [log_dir] * own + [path for _, path in sorted(workers)]


def log_segments(log_dir: Path) -> list[Path]:
    """Every segment of the log at ``log_dir``, stream by stream (``list_streams``), each stream in write order."""
    return [segment for stream in list_streams(log_dir) for segment in list_segments(stream)]


def next_sequence(log_dir: Path) -> int:
    """One past the highest segment sequence directly in ``log_dir`` (0 when there is none)."""
    sequences = [s for p in Path(log_dir).iterdir() if (s := segment_sequence(p)) is not None]
    return max(sequences, default=-1) + 1


@dataclass
class SegmentScan:
    """What scanning one segment found; filled in while ``scan_segment`` iterates."""

    path: Path
    bytes: int = 0
    records: int = 0
    torn_tail_records: int = 0
    corrupt_records: int = 0
    skipped_bytes: int = 0


def check_header(path: Path, data: bytes | memoryview) -> bool:
    """Validate a segment's file header; False when the file ends inside it (torn), raise when foreign."""
    head = bytes(data[:HEADER_BYTES])
    if len(head) < HEADER_BYTES:
        # A crash between creating the file and writing its header leaves a prefix of the header.
        if file_header().startswith(head):
            return False
        raise SegmentFormatError(f"{path}: not a recsys-rl log segment (bad magic {head[:8]!r})")
    magic, version = FILE_HEADER.unpack(head)
    if magic != MAGIC:
        raise SegmentFormatError(f"{path}: not a recsys-rl log segment (bad magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise SegmentFormatError(
            f"{path}: unsupported log segment format version {version} (this reader knows {FORMAT_VERSION})"
        )
    return True


def scan_segment(path: Path, scan: SegmentScan | None = None) -> Iterator[memoryview]:
    """Yield the payload of every intact record of one segment, in order.

    Damage is handled as described in the module docstring and counted in ``scan`` (pass one to read
    the counts). The payloads are views into one read of the whole file: parse them before the next
    segment is read, or copy them.
    """
    scan = scan if scan is not None else SegmentScan(path=path)
    data = memoryview(Path(path).read_bytes())
    size = len(data)
    scan.bytes = size
    if size == 0:
        # Created but nothing written yet (or a crash right after creation): no record was lost.
        return
    if not check_header(path, data):
        scan.torn_tail_records += 1
        return
    offset = HEADER_BYTES
    unpack_from = FRAME_HEADER.unpack_from
    crc32 = zlib.crc32
    while offset < size:
        if size - offset < FRAME_HEADER_BYTES:
            scan.torn_tail_records += 1
            return
        length, checksum = unpack_from(data, offset)
        start = offset + FRAME_HEADER_BYTES
        end = start + length
        if length > MAX_RECORD_BYTES:
            scan.corrupt_records += 1
            scan.skipped_bytes += size - start
            return
        if end > size:
            scan.torn_tail_records += 1
            return
        payload = data[start:end]
        if crc32(payload) != checksum:
            scan.corrupt_records += 1
            scan.skipped_bytes += size - end
            return
        scan.records += 1
        offset = end
        yield payload
