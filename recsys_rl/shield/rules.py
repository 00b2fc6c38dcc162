"""Shield rules of one surface (TOML ``[surfaces.NAME.shield]``) and their per-request feasibility.

Rules, each keyed by a candidate's ``features.categorical`` name where a feature is involved:

* ``blocked_items = ["id", ...]`` and ``blocked_items_file = "path"`` (one id per line): never served.
* ``blocked_values = { category = ["adult"] }``: a candidate whose feature has a listed value is never served.
* ``max_per_value = { creator = 1 }``: at most N items with the same value of that feature per slate; a candidate
  without the feature is not limited.
* ``pinned = { "item-id" = 0 }``: the item takes that slot (propensity 1, not drawn) when it is a candidate and
  feasible there; it is never drawn at another slot of the slate.
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
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from recsys_rl.errors import PreconditionFailed
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.shield import bulk

_KEYS = ("blocked_items", "blocked_items_file", "blocked_values", "max_per_value", "pinned", "min_feasible")


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

    @property
    def active(self) -> bool:
        return bool(self.version)

    def for_request(self, request: pb.RankRequest) -> RequestShield | None:
        """The request's feasibility (None when the surface has no shield: the unshielded fast path).

        Raises ShieldInfeasible when fewer than ``min_feasible`` (at least 1) candidates pass the static rules.
        """
        if not self.active:
            return None
        return RequestShield(self, request)


def NoShield() -> ShieldRules:  # noqa: N802 - the null object's name, as the other null objects read
    """A surface without a shield: no rules, version ""."""
    return NO_SHIELD


NO_SHIELD = ShieldRules()


class RequestShield:
    """Per-request feasibility, used slot by slot by ``exploration.sample_slate``/``slate_propensities``.

    Static rules (blocked items/values) are one boolean per candidate; ``max_per_value`` depends on the items
    already placed, so :meth:`mask` takes them. Rank pays for this on every request, so the work is arranged to
    touch each candidate's protobuf fields once (item id and the rules' categorical values, read in one pass into
    Python lists: a map read costs ~0.6 µs, more than the numpy work of a slot) and to keep the ``max_per_value``
    counts incrementally as slots are placed (:meth:`_advance`) instead of recounting the prefix at every slot.
    The cap state makes an instance stateful: one request's decision (or replay) at a time, as the decision path
    uses it (``ShieldRules.for_request`` per call).
    """

    def __init__(self, rules: ShieldRules, request: pb.RankRequest) -> None:
        candidates = request.candidates
        n = len(candidates)
        # Every categorical value a rule needs, read in the same pass over the candidates as the ids (one pass
        # builds each candidate's wrapper once; None: the candidate lacks the feature).
        keys = sorted({key for key, _ in rules.blocked_values} | {key for key, _ in rules.max_per_value})
        values: dict[str, list[str | None]] = {}
        if keys:
            pairs = list(map(_id_and_categorical, candidates))
            self.item_ids: list[str] = [item for item, _ in pairs]
            maps = [categorical for _, categorical in pairs]
            values = {key: list(map(operator.methodcaller("get", key), maps)) for key in keys}
        else:
            self.item_ids = [c.item_id for c in candidates]
        ok = np.ones(n, dtype=bool)
        self.fired: list[str] = []
        blocked = rules.blocked_items
        if blocked:  # one C-level pass of O(1) look-ups, whatever the set's size
            is_blocked = np.fromiter(map(blocked.__contains__, self.item_ids), dtype=bool, count=n)
            ok &= ~is_blocked
            self.fired += [f"blocked_items:{self.item_ids[i]}" for i in is_blocked.nonzero()[0].tolist()]
        for key, blocked_set in rules.blocked_values:
            if blocked_set.isdisjoint(values[key]):
                continue
            for i, v in enumerate(values[key]):
                if v in blocked_set and ok[i]:
                    ok[i] = False
                    self.fired.append(f"blocked_values[{key}]:{self.item_ids[i]}")
        feasible = int(ok.sum())
        need = max(1, rules.min_feasible)
        if feasible < need:
            raise ShieldInfeasible(f"shield: no feasible candidates (min_feasible {need}, {feasible} of {n} "
                                   f"candidates pass the rules)")
        self.ok = ok
        # max_per_value: per key, the candidates' values as a list (scalar reads of placed items) and an object
        # array (`values == v`: which candidates a value reaching its cap removes; None never matches), and the cap.
        self._caps: list[tuple[str, list[str | None], np.ndarray, int]] = []
        for key, cap in rules.max_per_value:
            as_array = np.empty(n, dtype=object)
            as_array[:] = values[key]
            self._caps.append((key, values[key], as_array, cap))
        # Pins: slot -> candidate index (first candidate with the id); pinned items are drawn nowhere else.
        self.pins: dict[int, int] = {}
        for item, slot in rules.pinned:
            try:
                i = self.item_ids.index(item)  # the first candidate with the id
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
        self._used: list[dict[str, int]] = [{} for _ in self._caps]  # per key: value -> items placed with it
        self._cap_free = np.ones(self.ok.size, dtype=bool)  # False: a cap is reached for one of its values
        self._open_now = self._drawable.copy()  # static rules, pins, caps, and not placed yet: feasible()

    def _advance(self, placed: Sequence[int]) -> None:
        """Bring the cap state to ``placed``: add the new items when the state holds a prefix of it (sampling and
        replay place one item per slot), else recount from scratch. Same counts as recounting every time."""
        done = len(self._placed)
        if len(placed) < done or (done and list(placed[:done]) != self._placed):
            self._reset()
            done = 0
        for j in placed[done:]:
            j = int(j)
            self._placed.append(j)
            self._open_now[j] = False
            for (_key, value_list, value_array, cap), used in zip(self._caps, self._used):
                v = value_list[j]
                if v is not None:
                    used[v] = count = used.get(v, 0) + 1
                    if count == cap:  # this value just reached its cap: its other candidates are out
                        reached = value_array == v
                        self._cap_free[reached] = False
                        self._open_now[reached] = False

    def pinned_at(self, slot: int, placed: Sequence[int]) -> int | None:
        """The candidate pinned to ``slot`` when it is feasible there given ``placed``, else None."""
        i = self.pins.get(slot)
        if i is None or i in placed:
            return None
        self._advance(placed)
        return i if self._cap_free[i] else None

    def mask(self, remaining: np.ndarray, placed: Sequence[int]) -> np.ndarray:
        """Which of ``remaining`` may be drawn at the next slot given the items ``placed`` before it."""
        self._advance(placed)
        return self._drawable[remaining] & self._cap_free[remaining]

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
        decision on a skewed slate.
        """
        fired = list(self.fired)
        slate = [int(i) for i in slate]
        for key, value_list, value_array, cap in self._caps:
            removed = np.zeros(self.ok.size, dtype=bool)  # eligible candidates whose value reached the cap
            placed = np.zeros(self.ok.size, dtype=bool)
            used: dict[str, int] = {}
            # Each removed candidate's "max_per_value[KEY]:ID" is built once, when its value reaches the cap, and
            # "@slotK" is appended at the first slot it is out.
            names: dict[int, str] = {}
            reported = np.zeros(self.ok.size, dtype=bool)
            for k, j in enumerate(slate):
                if names:
                    new = (removed & ~placed & ~reported).nonzero()[0]
                    if new.size:
                        suffix = f"@slot{k}"
                        fired += [names[i] + suffix for i in new.tolist()]
                        reported[new] = True
                placed[j] = True
                v = value_list[j]
                if v is not None:
                    used[v] = count = used.get(v, 0) + 1
                    if count == cap:
                        reached = self.ok & (value_array == v)
                        removed |= reached
                        names.update((i, f"max_per_value[{key}]:{self.item_ids[i]}")
                                     for i in reached.nonzero()[0].tolist())
        return fired


_id_and_categorical = operator.attrgetter("item_id", "features.categorical")


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
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps({"blocked_values": [(k, sorted(v)) for k, v in blocked_values],
                         "max_per_value": max_per_value, "pinned": pinned, "min_feasible": min_feasible},
                        sort_keys=True).encode())
    # Already sorted without duplicates (a stored version, an edit of one): no sort, only a chunked check.
    ordered = blocked if bulk.is_strictly_sorted(blocked) else bulk.sorted_unique(blocked)
    if not owned and ordered is table.get("blocked_items"):
        ordered = ordered.copy()  # kept with the rules (_remember_sorted): not the caller's list, which may change
    unique = bulk.to_frozenset(ordered)
    # "id\n" per sorted id, a chunk per update: the digest of the whole file's bytes (blocked_file_bytes).
    for data in bulk.line_chunks(ordered):
        h.update(data)
    _remember_sorted(unique, ordered)
    return ShieldRules(unique, blocked_values, max_per_value, pinned, min_feasible, "shield-" + h.hexdigest())


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
    if blocked_items:
        data["blocked_items"] = list(sorted_blocked(rules.blocked_items))
    return data
