"""VW text-format examples (for ``--cb_adf``) from the protobuf ``Features`` of a request.

Layout, one shared line for the context and one line per candidate::

    shared |C <numeric name>:<value> <categorical name>=<value> ... |T <tag> ...
    |I id=<item_id> |F <numeric name>:<value> <categorical name>=<value> ... |G <tag> ... |E e0:<v0> e1:<v1> ...

``C`` context features, ``T`` context tags, ``I`` the item id (the candidate's id is itself a
feature), ``F`` item numeric/categorical, ``G`` item tags, ``E`` item embedding. Names and values are
percent-escaped (:func:`escape`) so no space, ``:``, ``|`` or ``=`` inside a token can change the
parse, and two different feature sets never produce the same line.

Reading protobuf maps costs about 6 µs per candidate, more than VW's prediction on pre-parsed
examples, so :class:`ItemExampleCache` keeps each item's validated line (and optionally a pre-parsed
VW example) keyed by the candidate's serialized bytes: a hit reads no map field and parses nothing.
"""

from __future__ import annotations

import functools
import json
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.candidates import CandidateView, check_item_ids, item_key

CONTEXT_NS, CONTEXT_TAGS_NS = "C", "T"
ITEM_ID_NS, ITEM_FEATURES_NS, ITEM_TAGS_NS, EMBEDDING_NS = "I", "F", "G", "E"

# Largest finite float32: VW stores feature values as float32, so a finite double above this would
# become inf inside VW and poison the weights.
_FLOAT32_MAX = 3.4028234663852886e38

_ESCAPES = str.maketrans(
    {"%": "%25", " ": "%20", "\t": "%09", "\n": "%0A", "\r": "%0D", "\v": "%0B", "\f": "%0C",
     ":": "%3A", "|": "%7C", "=": "%3D"}
)  # fmt: skip


def escape(token: str) -> str:
    """Percent-escape the characters that are syntax in VW text (and ``%`` itself, so it is injective)."""
    return token.translate(_ESCAPES)


# Feature names and categorical values repeat across items and requests; memoising the escape is
# cheaper than translating each time.
_escape = functools.lru_cache(maxsize=1 << 16)(escape)


@functools.lru_cache(maxsize=256)
def _embedding_template(n: int) -> str:
    # One %-format for the whole vector is about 4x cheaper than formatting each value separately;
    # 9 significant digits round-trip a float32 exactly.
    return f"|{EMBEDDING_NS} " + " ".join(f"e{i}:%.9g" for i in range(n))


def _quote(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


def _bad_value(value: float) -> str | None:
    """Why ``value`` cannot be a feature value, or None. Called only after a cheap range check fails."""
    if not math.isfinite(value):
        return f"must be finite, got {value}"
    return f"must be within float32 range (|x| <= 3.4e38), got {value}"


def _features_tokens(features: pb.Features, field: str) -> tuple[list[str], list[str]]:
    """(numeric + categorical tokens, tag tokens) of one Features message, validated.

    Field paths are only formatted on error: building them eagerly tripled the cost of a cache miss.
    """
    tokens: list[str] = []
    for name, value in features.numeric.items():
        # One chained comparison rejects NaN (all comparisons false), ±inf and float32 overflow.
        if not (-_FLOAT32_MAX <= value <= _FLOAT32_MAX):
            raise InvalidInput(f"{field}.numeric[{_quote(name)}]", _bad_value(value) or "")
        if not name:
            raise InvalidInput(f"{field}.numeric", "feature names must not be empty")
        tokens.append(f"{_escape(name)}:{value!r}")
    for name, value in features.categorical.items():
        if not name:
            raise InvalidInput(f"{field}.categorical", "feature names must not be empty")
        tokens.append(f"{_escape(name)}={_escape(value)}")
    tags = [_escape(tag) for tag in features.tags if tag]
    return tokens, tags


def context_line(context: pb.Features, field: str = "context") -> str:
    """The shared line. It always carries ``|C`` because a bare ``shared`` line is not read as shared."""
    tokens, tags = _features_tokens(context, field)
    line = "shared |" + CONTEXT_NS
    if tokens:
        line += " " + " ".join(tokens)
    if tags:
        line += f" |{CONTEXT_TAGS_NS} " + " ".join(tags)
    return line


def item_line(candidate: pb.Candidate, field: str) -> str:
    """One candidate's action line; ``field`` is its path in the request, e.g. ``candidates[3]``."""
    if not candidate.item_id:
        raise InvalidInput(f"{field}.item_id", "must not be empty")
    tokens, tags = _features_tokens(candidate.features, f"{field}.features")
    parts = [f"|{ITEM_ID_NS} id={escape(candidate.item_id)}"]
    if tokens:
        parts.append(f"|{ITEM_FEATURES_NS} " + " ".join(tokens))
    if tags:
        parts.append(f"|{ITEM_TAGS_NS} " + " ".join(tags))
    if candidate.embedding:
        values = tuple(candidate.embedding)
        if not all(map(math.isfinite, values)):
            i = next(i for i, v in enumerate(values) if not math.isfinite(v))
            raise InvalidInput(f"{field}.embedding[{i}]", f"must be finite, got {values[i]}")
        parts.append(_embedding_template(len(values)) % values)
    return " ".join(parts)


T = TypeVar("T")
# Runs an iterator to its end, keeping nothing (the itertools recipe's consume): a map's calls without a Python loop.
_consume = functools.partial(deque, maxlen=0)


@dataclass(slots=True)
class ItemExample(Generic[T]):
    """A cached, validated candidate: its VW line and, if a ``prepare`` hook is set, a parsed example."""

    item_id: str
    line: str
    example: T | None


class ItemExampleCache(Generic[T]):
    """Bounded LRU of per-item examples keyed by :func:`item_key`.

    ``prepare(line)`` builds the pre-parsed example stored next to the line (the VW bandit passes a
    function that parses into its own workspace: parsed examples are tied to one workspace). Not
    thread-safe: the owner serialises access (the bandit does, under the policy's lock).
    """

    def __init__(self, max_items: int = 100_000, *, prepare: Callable[[str], T] | None = None) -> None:
        if max_items <= 0:
            raise ValueError(f"max_items: must be positive, got {max_items}")
        self.max_items = max_items
        self._prepare = prepare
        self._entries: OrderedDict[bytes, ItemExample[T]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, candidate: pb.Candidate, index: int, *, field: str = "candidates") -> ItemExample[T]:
        """The entry for ``candidate`` (at ``index`` in the request, for error messages)."""
        key = item_key(candidate)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry
        self.misses += 1
        return self._insert(key, candidate, index, field)

    def _insert(self, key: bytes, candidate: pb.Candidate, index: int, field: str) -> ItemExample[T]:
        """Builds, validates and caches a missing entry (InvalidInput names the candidate's bad field)."""
        line = item_line(candidate, f"{field}[{index}]")
        entry = ItemExample(candidate.item_id, line, self._prepare(line) if self._prepare else None)
        self._entries[key] = entry
        if len(self._entries) > self.max_items:
            self._entries.popitem(last=False)
            self.evictions += 1
        return entry

    def items(self, candidates: Sequence[pb.Candidate], *, field: str = "candidates") -> list[ItemExample[T]]:
        """Entries for every candidate, in order; raises InvalidInput naming the first bad field.

        The hit path is inlined (this loop runs for every candidate of every Rank); item ids are checked here,
        from the cached entries, so nobody reads them from the protobufs again: empty or repeated ids are
        InvalidInput naming the candidate.
        """
        entries_get, move_to_end, key_of = self._entries.get, self._entries.move_to_end, item_key
        out: list[ItemExample[T]] = []
        append = out.append
        misses = 0
        for i, candidate in enumerate(candidates):
            key = key_of(candidate)
            entry = entries_get(key)
            if entry is None:
                misses += 1
                entry = self._insert(key, candidate, i, field)
            else:
                move_to_end(key)
            append(entry)
        self.misses += misses
        self.hits += len(out) - misses
        ids = {entry.item_id for entry in out}
        if len(ids) != len(out) or "" in ids:
            check_item_ids([entry.item_id for entry in out], field)
        return out

    def entries(self, view: CandidateView) -> list[ItemExample[T]]:
        """Entries for every candidate of a request already read into ``view`` (its keys computed, its ids checked):
        :meth:`items` without reading the protobufs again. Raises InvalidInput naming the first bad field."""
        raw = view.raw  # completed from a catalog, if any; parsed only on a miss
        return self._by_keys(view.keys, lambda i: pb.Candidate.FromString(raw[i]))

    def logged(self, keys: Sequence[bytes], raw: Sequence[bytes]) -> list[ItemExample[T]]:
        """Entries for the candidates of a logged decision (``raw[i]``: candidate i's logged bytes, ``keys[i]`` its
        :func:`item_key`): a hit parses nothing; a miss parses that candidate alone. Raises InvalidInput naming the
        first bad field. For the online learner, whose log records keep their candidates as bytes."""
        return self._by_keys(keys, lambda i: pb.Candidate.FromString(raw[i]))

    def _by_keys(self, keys: Sequence[bytes], candidate: Callable[[int], pb.Candidate]) -> list[ItemExample[T]]:
        """The entries of ``keys``; a missing one is built from ``candidate(i)`` (read only on a miss)."""
        entries_get, move_to_end = self._entries.get, self._entries.move_to_end
        out = list(map(entries_get, keys))
        # all(): entries are always true, None is not; `None not in out` would call the dataclass's __eq__ per entry.
        if all(out):  # every candidate cached (the usual case): only their recency to update
            _consume(map(move_to_end, keys))  # the same calls in order, without a Python loop around them
            self.hits += len(out)
            return out  # type: ignore[return-value]
        # Some missing: one candidate at a time (an insert may evict a key of this very request).
        misses = 0
        for i, key in enumerate(keys):
            entry = entries_get(key)
            if entry is None:
                misses += 1
                entry = self._insert(key, candidate(i), i, "candidates")
            else:
                move_to_end(key)
            out[i] = entry
        self.misses += misses
        self.hits += len(out) - misses
        return out  # type: ignore[return-value]

    def lines(self, candidates: Sequence[pb.Candidate], *, field: str = "candidates") -> list[str]:
        """Validated lines for every candidate: cached ones reused, others built but not inserted.

        For learning, where a parsed example is not wanted (learning needs fresh, labelled examples).
        """
        out: list[str] = []
        for i, candidate in enumerate(candidates):
            entry = self._entries.get(item_key(candidate))
            out.append(entry.line if entry is not None else item_line(candidate, f"{field}[{i}]"))
        return out

    def snapshot(self, limit: int) -> list[tuple[bytes, str, str]]:
        """Up to ``limit`` (key, item_id, line) entries, most recently used first: what a new cache should hold."""
        out: list[tuple[bytes, str, str]] = []
        for key, entry in reversed(self._entries.items()):
            if len(out) >= limit:
                break
            out.append((key, entry.item_id, entry.line))
        return out

    def warm(self, entries: Sequence[tuple[bytes, str, str]]) -> None:
        """Fills the cache from another cache's snapshot (validated lines), keeping its recency order.

        A new model version gets a new workspace and so a cold cache; warming it off the request path keeps
        the first requests after a hot swap from paying the parse cost of every item.
        """
        for key, item_id, line in reversed(entries[: self.max_items]):
            if key not in self._entries:
                self._entries[key] = ItemExample(item_id, line, self._prepare(line) if self._prepare else None)
        while len(self._entries) > self.max_items:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def stats(self) -> dict[str, Any]:
        return {"size": len(self._entries), "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
