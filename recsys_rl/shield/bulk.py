"""GIL-friendly bulk work on millions of item ids (shield changes, loads and versions).

Why: a shield change runs in the serving process, and a single C call over a million ids (``sorted``,
``frozenset(list)``, ``"\\n".join``, ``str.split``) holds the GIL for 0.05–1 s, during which Rank on every other
thread of the process waits. Here every O(n) step is one C call per ``CHUNK`` ids (a few ms) so the interpreter can
hand the GIL to a serving thread between chunks, or runs in numpy code that releases the GIL (``argsort`` of a
fixed-width string array). Results are the same as the one-call versions (tests/recsys_rl/shield/test_store_bulk.py).
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import islice
from operator import lt

import numpy as np

CHUNK = 2_500  # ids per C call: well under 1 ms, the longest a Rank thread waits for a chunk to end
PAUSE_S = 0.0002  # slept before each chunk, see _breathe
_MAX_NUMPY_WIDTH = 64  # longer ids would make the fixed-width array too big: sorted chunks + a k-way merge instead


def _breathe() -> None:
    # A sleep releases the GIL: a Rank thread waiting for it runs at once instead of after the 5 ms switch interval,
    # and keeps it while it needs it (the bulk work then waits for the interval). Chunking alone still had decisions
    # on other threads at p99 3-6x idle (bench/shield_store_bench.py); the pauses cost ~50 ms per million ids.
    time.sleep(PAUSE_S)


def chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    """Slices of ``items``, with a pause (GIL released) before each."""
    for start in range(0, len(items), size):
        _breathe()
        yield items[start:start + size]


def _islices(items: Iterable[str]) -> Iterator[list[str]]:
    """Lists of ``CHUNK`` items of any iterable (e.g. a frozenset), with a pause before each."""
    it = iter(items)
    while True:
        _breathe()
        part = list(islice(it, CHUNK))
        if not part:
            return
        yield part


def _each(items: Iterable[str]) -> Iterator[str]:
    # A Python generator: a C consumer (frozenset(), list()) resumes it per item, and the loop's backward jump is a
    # point where the interpreter may switch threads, so the consumer no longer holds the GIL for the whole input.
    # Not ``yield from``: CPython 3.11 does not check for a pending switch when it resumes a delegating generator.
    for part in _islices(items):
        for item in part:  # noqa: UP028 - see above
            yield item


def to_frozenset(items: Iterable[str]) -> frozenset[str]:
    """``frozenset(items)`` without holding the GIL for the whole input (~80 ns more per id)."""
    return frozenset(_each(items))


def to_list(items: Iterable[str]) -> list[str]:
    """``list(items)`` (e.g. of a frozenset), a chunk per C call."""
    out: list[str] = []
    for part in _islices(items):
        out += part
    return out


def is_strictly_sorted(ids: Sequence[str]) -> bool:
    """Sorted (Python's code-point order) and without duplicates, checked a chunk per C call."""
    for start in range(0, len(ids) - 1, CHUNK):
        _breathe()
        part = ids[start:start + CHUNK + 1]  # overlaps the next chunk by one id: the boundary pair is compared too
        if not all(map(lt, part, islice(part, 1, None))):
            return False
    return True


def sorted_unique(ids: Sequence[str]) -> list[str]:
    """``sorted(set(ids))``, without building the set (every big temporary container is one more pass of the
    garbage collector over a million ids, under the GIL).

    The ids go into a fixed-width numpy unicode array a chunk at a time and ``argsort`` (which releases the GIL)
    orders them: numpy compares UCS4 code points, Python's str order. numpy pads with NULs and ignores trailing
    ones, so ids containing a NUL, or long ones (array too big), take sorted chunks and a k-way merge instead.
    Duplicates end up side by side and are dropped on the way out.
    """
    n = len(ids)
    if n <= CHUNK:
        return sorted(set(ids))
    width = 0
    has_nul = False
    for part in chunks(ids):
        width = max(width, max(map(len, part)))
        has_nul = has_nul or "\0" in "".join(part)
    if has_nul or width > _MAX_NUMPY_WIDTH:
        # heapq.merge is Python code: the interpreter can switch threads between the ids it yields.
        return _drop_repeats(heapq.merge(*(sorted(part) for part in chunks(ids))))
    array = np.empty(n, dtype=f"U{width}")
    for start in range(0, n, CHUNK):
        _breathe()
        array[start:start + CHUNK] = ids[start:start + CHUNK]
    order = np.argsort(array, kind="stable")
    del array
    return _drop_repeats(_in_order(ids, order))


def _in_order(ids: Sequence[str], order: np.ndarray) -> Iterator[str]:
    for start in range(0, len(order), CHUNK):
        _breathe()
        for i in order[start:start + CHUNK].tolist():
            yield ids[i]


def _drop_repeats(ordered: Iterable[str]) -> list[str]:
    """The sorted ids without adjacent repeats; a Python loop, so other threads run in between."""
    out: list[str] = []
    append = out.append
    last: str | None = None
    for item in ordered:
        if item != last:
            append(item)
            last = item
    return out


def edit_sorted(ordered: list[str], add: Iterable[str], remove: Iterable[str]) -> list[str]:
    """A copy of the sorted, duplicate-free ``ordered`` with ids added/removed by bisection: a few ids on top of a
    million cost a memmove each instead of a re-sort."""
    out = ordered.copy()  # one C call, but a pointer copy: ~2 ms for a million
    for item in add:
        i = bisect.bisect_left(out, item)
        if i == len(out) or out[i] != item:
            out.insert(i, item)
    for item in remove:  # after the additions: an id both added and removed ends up removed, as set algebra does
        i = bisect.bisect_left(out, item)
        if i < len(out) and out[i] == item:
            del out[i]
    return out


def line_chunks(ordered: Sequence[str]) -> Iterator[bytes]:
    """The ids one per line (each line ends in a newline), UTF-8, a chunk per C call; joined, they are
    ``("\\n".join(ordered) + "\\n").encode()``."""
    for part in chunks(ordered):
        yield ("\n".join(part) + "\n").encode()


def count_missing(items: Collection[str], within: frozenset[str]) -> int:
    """``len(set(items) - within)`` for duplicate-free ``items``, a chunk per C call."""
    if not within:
        return len(items)
    missing = 0
    for part in _islices(items):
        missing += len(part) - sum(map(within.__contains__, part))
    return missing


def split_lines(data: bytes) -> list[str]:
    """``data.decode().split("\\n")[:-1]`` (the text before the last newline, as lines), ~0.5 MB per C call."""
    out: list[str] = []
    step = 32 * CHUNK
    start = 0
    end = data.rfind(b"\n") + 1
    data[end:].decode()  # the dropped tail still has to be UTF-8, as when the whole text was decoded
    while start < end:
        _breathe()
        cut = data.find(b"\n", min(start + step, end - 1)) + 1
        out += data[start:cut - 1].decode().split("\n")
        start = cut
    return out


def read_text_lines(path: str) -> list[str]:
    """``[line.strip() for line in open(path).read().splitlines() if line.strip()]``, read 0.5 MB at a time.

    Text mode as ``Path.read_text`` (same decoding and newline translation). The text is cut only after a "\\n",
    which always ends a line, so the pieces' ``splitlines`` are the whole text's.
    """
    out: list[str] = []
    carry = ""
    with open(path) as f:  # noqa: PTH123 - the text-mode defaults of Path.read_text, read in pieces
        while block := f.read(1 << 19):
            _breathe()
            text = carry + block
            cut = text.rfind("\n") + 1
            carry = text[cut:]
            out += [s for line in text[:cut].splitlines() if (s := line.strip())]
    out += [s for line in carry.splitlines() if (s := line.strip())]
    return out


__all__ = ["CHUNK", "chunks", "count_missing", "edit_sorted", "is_strictly_sorted", "line_chunks", "read_text_lines",
           "sorted_unique", "split_lines", "to_frozenset", "to_list"]
