"""Shield rules of one surface (TOML ``[surfaces.NAME.shield]``) and their per-request feasibility.

Rules, each keyed by a candidate's ``features.categorical`` name where a feature is involved:

* ``blocked_items = ["id", ...]`` and ``blocked_items_file = "path"`` (one id per line): never served.
* ``blocked_values = { category = ["adult"] }``: a candidate whose feature has a listed value is never served.
* ``max_per_value = { creator = 1 }``: at most N items with the same value of that feature per slate; a candidate
  without the feature is not limited.
* ``pinned = { "item-id" = 0 }``: the item takes that slot (propensity 1, not drawn) when it is a candidate and
  feasible there; it is never drawn at another slot of the slate.
* ``near_duplicates = { max_cosine = 0.95 }``: no two items of a slate whose embeddings (``Candidate.embedding``,
  from the request or the catalog) have cosine similarity >= max_cosine, in (0, 1]; a candidate without an
  embedding (or with an all-zero one) is never removed by it and removes nothing (:mod:`recsys_rl.shield.near_duplicates`).
* ``min_feasible = N`` (default 1): fewer candidates than N left after the static rules → the request is refused
  (:class:`ShieldInfeasible`, gRPC FAILED_PRECONDITION).

``version`` is a content hash of the rules (the blocked file by its ids, not its path), logged in
``DecisionEvent.shield_version``; replay checks it. Blocked ids live in a Python frozenset: a membership test per
candidate costs ~50 ns whatever the set's size (bench/shield_bench.py measures Rank with 1M ids).
"""

from __future__ import annotations

import hashlib
import json
import operator
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recsys_rl.errors import PreconditionFailed
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.shield import bulk
from recsys_rl.shield.near_duplicates import NearDuplicates, check_max_cosine

_KEYS = ("blocked_items", "blocked_items_file", "blocked_values", "max_per_value", "pinned", "min_feasible",
         "near_duplicates")
_NEAR_DUPLICATE_KEYS = ("max_cosine",)


class ShieldInfeasible(PreconditionFailed):
    """Too few candidates survive the shield for this request (FAILED_PRECONDITION)."""


class ShieldConfigError(ValueError):
    """An invalid shield key; the message names it (relative to the shield section)."""


@dataclass(frozen=True)
class ShieldRules:
    blocked_items: frozenset[str] = frozenset()
    blocked_values: tuple[tuple[str, frozenset[str]], ...] = ()
    max_per_value: tuple[tuple[str, int], ...] = ()
    pinned: tuple[tuple[str, int], ...] = ()
    min_feasible: int = 1
    version: str = ""
    near_duplicates_max_cosine: float | None = None  # near_duplicates.max_cosine; None: no near-duplicate rule

    @property
    def active(self) -> bool:
        return bool(self.version)

    def for_request(self, candidates: pb.RankRequest | ShieldCandidates) -> RequestShield | None:
        """The request's feasibility (None when the surface has no shield: the unshielded fast path).

        ``candidates``: the request's candidates as Rank read them (``recsys_rl.serving.candidates.CandidateView``),
        or the request itself (replay), whose fields are then read here. Raises ShieldInfeasible when fewer than
        ``min_feasible`` (at least 1) candidates pass the static rules.
        """
        if not self.active:
            return None
        return RequestShield(self, candidates)


def NoShield() -> ShieldRules:  # noqa: N802 - the null object's name, as the other null objects read
    """A surface without a shield: no rules, version ""."""
    return NO_SHIELD


NO_SHIELD = ShieldRules()


class ShieldCandidates(Protocol):
    """What the shield reads of a request's candidates: their ids, per feature name their categorical values
    (None where a candidate lacks the feature), and each one's whole serialization (``raw``: the near-duplicate
    rule reads the embeddings from it, only when the surface has that rule). ``recsys_rl.serving.candidates.
    CandidateView`` is one."""

    item_ids: list[str]
    raw: list[bytes]

    def categorical(self, name: str) -> list[str | None]: ...


class _ProtobufCandidates:
    """ShieldCandidates read from the protobuf (a request replay rebuilt; Rank passes its CandidateView)."""

    def __init__(self, request: pb.RankRequest) -> None:
        pairs = list(map(_id_and_categorical, request.candidates))  # one pass: each candidate's wrappers once
        self.item_ids = [item for item, _ in pairs]
        self._maps = [categorical for _, categorical in pairs]
        self._request = request
        self._raw: list[bytes] | None = None

    @property
    def raw(self) -> list[bytes]:
        if self._raw is None:  # only the near-duplicate rule reads it
            self._raw = [c.SerializeToString() for c in self._request.candidates]
        return self._raw

    def categorical(self, name: str) -> list[str | None]:
        return list(map(operator.methodcaller("get", name), self._maps))


_id_and_categorical = operator.attrgetter("item_id", "features.categorical")


class RequestShield:
    """Per-request feasibility, used slot by slot by ``exploration.sample_slate``/``slate_propensities``.

    Static rules (blocked items/values) are one boolean per candidate; ``max_per_value`` depends on the items
    already placed, so :meth:`mask` takes them. Rank pays for this on every request (100 candidates, slate 10), so:
    ids and feature values come from the request's :class:`ShieldCandidates` (read from the protobuf once per
    request, shared with validation and the item cache); the ``max_per_value`` counts are kept incrementally as
    slots are placed (:meth:`_advance`) instead of recounting the prefix at every slot; and what a cap removes - the
    candidates sharing the value that reached it - is looked up only when a cap is reached (:class:`_Cap`). The
    feasible set of the next slot is one boolean array, updated in place. The cap state makes an instance
    stateful: one request's decision (or replay) at a time, as the decision path uses it (``ShieldRules.for_request``
    per call).
    """

    def __init__(self, rules: ShieldRules, candidates: pb.RankRequest | ShieldCandidates) -> None:
        if isinstance(candidates, pb.RankRequest):
            candidates = _ProtobufCandidates(candidates)
        ids = self.item_ids = candidates.item_ids
        n = len(ids)
        ok = np.ones(n, dtype=bool)
        self.fired: list[str] = []
        removed = 0
        blocked = rules.blocked_items
        if blocked and not blocked.isdisjoint(ids):  # O(1) look-ups in C, whatever the set's size
            hits = list(compress(range(n), map(blocked.__contains__, ids)))
            ok[hits] = False
            removed += len(hits)
            self.fired += [f"blocked_items:{ids[i]}" for i in hits]
        values: dict[str, list[str | None]] = {}
        for key, blocked_set in rules.blocked_values:
            values[key] = key_values = candidates.categorical(key)
            if blocked_set.isdisjoint(key_values):
                continue
            for i, v in enumerate(key_values):
                if v in blocked_set and ok[i]:
                    ok[i] = False
                    removed += 1
                    self.fired.append(f"blocked_values[{key}]:{ids[i]}")
        need = max(1, rules.min_feasible)
        if n - removed < need:
            raise ShieldInfeasible(f"shield: no feasible candidates (min_feasible {need}, {n - removed} of {n} "
                                   f"candidates pass the rules)")
        self.ok = ok
        self._caps = [_Cap(key, values[key] if key in values else candidates.categorical(key), cap, ok)
                      for key, cap in rules.max_per_value]
        theta = rules.near_duplicates_max_cosine
        self._near = None if theta is None else NearDuplicates(candidates.raw, theta)
        self._near_out = np.zeros(n, dtype=bool)  # too similar to an item of the placed prefix
        # Pins: slot -> candidate index (first candidate with the id); pinned items are drawn nowhere else.
        self.pins: dict[int, int] = {}
        for item, slot in rules.pinned:
            try:
                i = ids.index(item)  # the first candidate with the id
            except ValueError:
                continue  # not a candidate of this request
            if ok[i]:
                self.pins[slot] = i
        self._drawable = ok  # static rules and pins; the caps are applied on top, per placed prefix
        if self.pins:
            self._drawable = ok.copy()
            self._drawable[list(self.pins.values())] = False
        self._reset()

    def _reset(self) -> None:
        """Forget the placed prefix: no item placed, no cap reached."""
        self._placed: list[int] = []
        for cap in self._caps:
            cap.used.clear()
        self._near_out[:] = False
        self._open_now = self._drawable.copy()  # static rules, pins, caps, and not placed yet: feasible()

    def _advance(self, placed: Sequence[int]) -> None:
        """Bring the cap state to ``placed``: add the new items when the state holds a prefix of it (sampling and
        replay place one item per slot), else recount from scratch. Same counts as recounting every time."""
        done = len(self._placed)
        if done:
            prefix = placed[:done]
            if len(placed) < done or (prefix if type(prefix) is list else list(prefix)) != self._placed:
                self._reset()
                done = 0
        for j in placed[done:]:
            j = int(j)
            self._placed.append(j)
            self._open_now[j] = False
            for cap in self._caps:
                v = cap.values[j]
                if v is not None:
                    cap.used[v] = count = cap.used.get(v, 0) + 1
                    if count == cap.cap:  # this value just reached its cap: its other candidates are out
                        self._open_now[cap.members(v)[1]] = False
            if self._near is not None:
                out = self._near.removed_by(j)
                self._near_out |= out
                self._open_now[out] = False

    def _cap_free(self, i: int) -> bool:
        """No cap is reached (for the placed prefix) for any of candidate i's values."""
        for cap in self._caps:
            v = cap.values[i]
            if v is not None and cap.used.get(v, 0) >= cap.cap:
                return False
        return True

    def pinned_at(self, slot: int, placed: Sequence[int]) -> int | None:
        """The candidate pinned to ``slot`` when it is feasible there given ``placed``, else None."""
        i = self.pins.get(slot)
        if i is None or i in placed:
            return None
        self._advance(placed)
        return i if self._cap_free(i) and not self._near_out[i] else None

    def mask(self, remaining: np.ndarray, placed: Sequence[int]) -> np.ndarray:
        """Which of ``remaining`` may be drawn at the next slot given the items ``placed`` before it."""
        self._advance(placed)
        drawable = self._drawable.copy()
        for cap in self._caps:
            for v, count in cap.used.items():
                if count >= cap.cap:
                    drawable[cap.members(v)[1]] = False
        if self._near is not None:
            drawable[self._near_out] = False
        return drawable[remaining]

    def feasible(self, placed: Sequence[int]) -> np.ndarray:
        """The candidates (ascending indices) that may be drawn at the next slot given ``placed``: the same array as
        ``remaining[mask(remaining, placed)]`` over the unplaced candidates, in one numpy call (sampling's fast path).
        """
        self._advance(placed)
        return self._open_now.nonzero()[0]

    def explain(self, slate: Sequence[int]) -> list[str]:
        """shield_rules_fired for a decided slate: static removals, then the items a cap removed, each once.

        A candidate counts as removed by a cap at slot k when it passed the static rules, has a value for the key,
        is not among slots < k, and that value already has ``cap`` items in slots < k. Counts only grow along a
        slate, so a candidate removed at slot k stays removed at every later slot: it is listed once, at the first
        such k (per key, by slot, by index) - the full per-slot list says nothing more and cost ~70 entries per
        decision on a skewed slate. That first k is the slot after the one whose item brought its value to the cap,
        so only the values reaching their cap are looked at (:meth:`_Cap.members`), each once.

        The near-duplicate rule the same way, after the caps: ``near_duplicates:ID@slotK`` for a candidate that
        passed the static rules, is not among slots < K, and is too similar to an item of slots < K, at the first
        such K (by slot, by index).
        """
        fired = list(self.fired)
        if not self._caps and self._near is None:
            return fired
        slate = [int(i) for i in slate]
        ids = self.item_ids
        for cap in self._caps:
            used: dict[str, int] = {}
            for k, j in enumerate(slate[:-1]):  # the last slot's item removes nothing from this slate
                v = cap.values[j]
                if v is None:
                    continue
                used[v] = count = used.get(v, 0) + 1
                if count == cap.cap:  # out from slot k + 1 on: the value's other eligible candidates not yet placed
                    placed = set(slate[: k + 1])
                    prefix, suffix = f"max_per_value[{cap.key}]:", f"@slot{k + 1}"
                    fired += [prefix + ids[i] + suffix for i in cap.members(v)[0] if i not in placed]
        if self._near is not None:
            listed = ~self.ok  # the static rules' removals are listed above, never here
            for k, j in enumerate(slate[:-1]):
                listed[j] = True  # placed: never listed from here on
                new = self._near.removed_by(j) & ~listed
                if new.any():
                    listed |= new
                    fired += [f"near_duplicates:{ids[i]}@slot{k + 1}" for i in new.nonzero()[0]]
        return fired


class _Cap:
    """One ``max_per_value`` rule on one request: the candidates' values for its key, the counts of the placed
    prefix, and per value the candidates it removes when it reaches the cap - looked up only when it does (most
    values never do within one slate), in Python: numpy's per-call cost (~1 µs) is more than the work at n = 100."""

    __slots__ = ("key", "values", "cap", "used", "_ok", "_members")

    def __init__(self, key: str, values: list[str | None], cap: int, ok: np.ndarray) -> None:
        self.key, self.values, self.cap = key, values, cap
        self.used: dict[str, int] = {}  # value -> items placed with it
        self._ok = ok
        self._members: dict[str, tuple[list[int], np.ndarray]] = {}

    def members(self, value: str) -> tuple[list[int], np.ndarray]:
        """The candidates (ascending) that pass the static rules and have ``value``: as a list and as an index
        array. Candidates the static rules removed are left out: they are infeasible and never reported."""
        found = self._members.get(value)
        if found is None:
            ok = self._ok
            members = [i for i in compress(range(len(self.values)), map(operator.eq, self.values, repeat(value)))
                       if ok[i]]
            found = self._members[value] = (members, np.array(members, dtype=np.intp))
        return found


def _read_blocked_file(path: str) -> list[str]:
    try:
        return bulk.read_text_lines(path)  # in pieces: one splitlines() of a million lines holds the GIL ~0.1 s
    except OSError as exc:
        raise ShieldConfigError(f"shield.blocked_items_file: cannot read {path}: {exc.strerror}") from exc


def _str_list(value: Any, key: str) -> list[str]:
    # A chunk per C call (a generator over a million ids is ~0.5 s of Python on a busy machine).
    if not isinstance(value, list) or not all(all(map(isinstance, part, repeat(str))) for part in bulk.chunks(value)):
        raise ShieldConfigError(f"shield.{key}: must be a list of strings")
    return value


def _int(value: Any, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ShieldConfigError(f"shield.{key}: must be an integer >= {low}, got {value!r}")
    return value


def rules_from_dict(table: dict[str, Any], *, base_dir: Path | None = None, owned: bool = False) -> ShieldRules:
    """ShieldRules and their version from a rules dict (the TOML table's keys); errors name the key (``shield.KEY``).

    The one builder: TOML parsing (:func:`parse_shield`), the admin API and the shield store all go through it, so
    a rule set has one version whichever way it arrived. ``blocked_items_file`` is read here (relative paths from
    ``base_dir``); the version hashes the blocked ids, not the file's path. ``owned``: the caller hands its
    ``blocked_items`` list over (never changes it again), so a sorted one is kept with the rules without a copy.
    """
    for key in table:
        if key not in _KEYS:
            raise ShieldConfigError(f"shield.{key}: unknown key")
    # Not copied (a copy of a million ids is one more container for the garbage collector to walk); only read.
    blocked = _str_list(table.get("blocked_items", []), "blocked_items")
    if "blocked_items_file" in table:
        path = table["blocked_items_file"]
        if not isinstance(path, str) or not path:
            raise ShieldConfigError("shield.blocked_items_file: must be a path")
        if base_dir is not None and not Path(path).is_absolute():
            path = str(base_dir / path)
        blocked = blocked + _read_blocked_file(path)
    # The store keeps blocked ids one per line: an id must be one non-empty line to round-trip. Checked on the
    # joined ids of a chunk (a scan in C, not a Python loop; per chunk so Rank threads get the GIL in between).
    for part in bulk.chunks(blocked):
        joined = "\n".join(part)
        if "\r" in joined or joined.count("\n") != len(part) - 1 or "" in part:
            bad = next(item for item in part if not item or "\n" in item or "\r" in item)
            raise ShieldConfigError(f"shield.blocked_items: {bad!r} is not an item id (empty or a line break)")

    def _table(key: str) -> dict[str, Any]:
        value = table.get(key, {})
        if not isinstance(value, dict):
            raise ShieldConfigError(f"shield.{key}: must be a table")
        return value

    blocked_values = tuple(sorted((k, frozenset(_str_list(v, f"blocked_values.{k}")))
                                  for k, v in _table("blocked_values").items()))
    max_per_value = tuple(sorted((k, _int(v, f"max_per_value.{k}", 1)) for k, v in _table("max_per_value").items()))
    pinned = tuple(sorted((k, _int(v, f"pinned.{k}", 0)) for k, v in _table("pinned").items()))
    slots = [s for _, s in pinned]
    if len(set(slots)) != len(slots):
        raise ShieldConfigError("shield.pinned: two items pinned to the same slot")
    min_feasible = _int(table.get("min_feasible", 1), "min_feasible", 1)
    max_cosine = _near_duplicates(_table("near_duplicates")) if "near_duplicates" in table else None
    hashed: dict[str, Any] = {"blocked_values": [(k, sorted(v)) for k, v in blocked_values],
                              "max_per_value": max_per_value, "pinned": pinned, "min_feasible": min_feasible}
    if max_cosine is not None:  # only when set: every version stored before the rule existed keeps its hash
        hashed["near_duplicates"] = {"max_cosine": max_cosine}
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps(hashed, sort_keys=True).encode())
    # Already sorted without duplicates (a stored version, an edit of one): no sort, only a chunked check.
    ordered = blocked if bulk.is_strictly_sorted(blocked) else bulk.sorted_unique(blocked)
    if not owned and ordered is table.get("blocked_items"):
        ordered = ordered.copy()  # kept with the rules (_remember_sorted): not the caller's list, which may change
    unique = bulk.to_frozenset(ordered)
    # "id\n" per sorted id, a chunk per update: the digest of the whole file's bytes (blocked_file_bytes).
    for data in bulk.line_chunks(ordered):
        h.update(data)
    _remember_sorted(unique, ordered)
    return ShieldRules(unique, blocked_values, max_per_value, pinned, min_feasible, "shield-" + h.hexdigest(),
                       max_cosine)


def _near_duplicates(table: dict[str, Any]) -> float:
    """θ of ``near_duplicates = { max_cosine = θ }`` (required in the table)."""
    for key in table:
        if key not in _NEAR_DUPLICATE_KEYS:
            raise ShieldConfigError(f"shield.near_duplicates.{key}: unknown key (expected max_cosine)")
    if "max_cosine" not in table:
        raise ShieldConfigError("shield.near_duplicates.max_cosine: required (a number in (0, 1])")
    try:
        return check_max_cosine(table["max_cosine"], "shield.near_duplicates.max_cosine")
    except ValueError as exc:
        raise ShieldConfigError(str(exc)) from None


# The sorted ids of a rules object's frozenset, kept while the frozenset lives: writing the version file, the admin
# API's listing and the next edit then need no re-sort (~1 s of GIL for a million ids). Keyed by id() and checked
# by identity; the weakref's callback drops the entry with the set.
_SORTED: dict[int, tuple[weakref.ref[frozenset[str]], list[str]]] = {}


def _remember_sorted(blocked: frozenset[str], ordered: list[str]) -> None:
    if not blocked:
        return
    key = id(blocked)
    _SORTED[key] = (weakref.ref(blocked, lambda _ref: _SORTED.pop(key, None)), ordered)


def sorted_blocked(blocked: frozenset[str] | set[str]) -> list[str]:
    """The ids sorted (Python's order); do not mutate the list: it may be the one kept for the rules."""
    found = _SORTED.get(id(blocked))
    if found is not None and found[0]() is blocked:
        return found[1]
    ordered = bulk.sorted_unique(bulk.to_list(blocked))
    if isinstance(blocked, frozenset):
        _remember_sorted(blocked, ordered)
    return ordered


def blocked_file_bytes(blocked: frozenset[str] | set[str]) -> bytes:
    """The blocked ids sorted, one per line (each line ends in a newline): what the version hashes and the store
    keeps."""
    return b"".join(bulk.line_chunks(sorted_blocked(blocked))) if blocked else b""


def read_blocked_file(path: str) -> list[str]:
    """The ids of a blocked-items file (one per line, blank lines skipped); ShieldConfigError naming the key."""
    return _read_blocked_file(path)


def parse_shield(table: dict[str, Any], *, base_dir: Path | None = None) -> ShieldRules:
    """ShieldRules from a ``[surfaces.NAME.shield]`` table; errors name the key (``shield.KEY``)."""
    return rules_from_dict(table, base_dir=base_dir)


def rules_to_dict(rules: ShieldRules, *, blocked_items: bool = True) -> dict[str, Any]:
    """The rules as a JSON-able dict with the TOML names; ``rules_from_dict`` of it gives the same version.

    ``blocked_items=False`` leaves the (possibly millions of) ids out; the store keeps them in a file of their own.
    """
    data: dict[str, Any] = {
        "blocked_values": {k: sorted(v) for k, v in rules.blocked_values},
        "max_per_value": dict(rules.max_per_value),
        "pinned": dict(rules.pinned),
        "min_feasible": rules.min_feasible,
    }
    if rules.near_duplicates_max_cosine is not None:  # absent otherwise: older stored versions read the same
        data["near_duplicates"] = {"max_cosine": rules.near_duplicates_max_cosine}
    if blocked_items:
        data["blocked_items"] = list(sorted_blocked(rules.blocked_items))
    return data
