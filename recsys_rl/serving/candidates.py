"""One request's candidates as plain Python values, read from the protobuf once per request.

Reading protobuf fields from Python costs ~0.2 µs a field and ~0.1 µs a candidate wrapper, and Rank used to read
each candidate three times: validation (``baseline_score``), the VW item cache (its serialized bytes) and the shield
(``item_id`` and the rules' categorical features), ~1.9 µs a candidate at 100 candidates. :class:`CandidateView`
reads each candidate once: its serialized bytes and ``baseline_score``, which make its cache key
(:func:`item_key`). A candidate's ``item_id`` and categorical features are then looked up by that key in a
process-wide cache (:class:`CandidateInfoCache`): equal keys mean equal bytes, so equal ids and features, and a hit
reads no other protobuf field. Validation, the VW item cache (``ItemExampleCache.entries``), the shield and the
decision's slots all take their values from the view.

Scorers keep their one-argument ``score(request)`` (wrappers and test doubles forward it): while the decision path
scores a request it makes the request's view current (:func:`reading`), and a scorer that can use it asks
:func:`current_view` (the VW bandit does). The view is returned only for that very request object.

Checked here, for every candidate (each error names the field):

* ``candidates[i].baseline_score``: finite (the baseline must always be able to serve);
* ``candidates[i].item_id``: not empty, not repeated (:func:`check_item_ids`).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from operator import itemgetter
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from recsys_rl.catalog.items import CatalogVersion
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

if TYPE_CHECKING:
    from recsys_rl.retrieval.request import RetrievalResult

_BASELINE = struct.Struct("<d")
_BASELINE_SUFFIX = _BASELINE.pack
# baseline_score's wire tag: its field number (from the generated descriptor) with wire type 1 (fixed64); one byte.
_BASELINE_TAG = bytes([pb.Candidate.DESCRIPTOR.fields_by_name["baseline_score"].number << 3 | 1])


def item_key(candidate: pb.Candidate) -> bytes:
    """Cache key: the candidate's serialization without its baseline_score.

    baseline_score changes per request and does not enter the example, so it must not split the
    cache. Serialization writes known fields in field-number order, so a non-zero baseline (field 4,
    the last field) is the trailing 9 bytes ``0x21`` + little-endian double; we strip them only when
    they are exactly that record. Every remaining byte (item_id, features, embedding, and any unknown
    fields) stays in the key, so equal keys mean equal example content. Measured at about 1 µs, it is
    cheaper than keying on (item_id, features bytes, embedding bytes) (about 2-3 µs).
    """
    # Not deterministic=True (20 µs more per 100 candidates): equal bytes still mean equal content; a host that
    # orders map entries differently only costs a second cache entry, never a wrong example.
    return _strip_baseline(candidate.SerializeToString(), candidate.baseline_score)


def logged_item_keys(raw: Sequence[bytes], baselines: Sequence[float]) -> list[bytes]:
    """:func:`item_key` of each candidate of a decision log record, from its logged bytes and baseline score.

    The log records each candidate as the serving side serialized it (``CandidateView.raw``), the very bytes
    ``item_key`` strips: so these keys equal the serving side's, and no candidate is parsed to get them.
    """
    tag, suffix = _BASELINE_TAG, _BASELINE_SUFFIX  # _strip_baseline's rule, inlined (it runs per logged candidate)
    return [candidate[:-9] if baseline != 0.0 and candidate.endswith(tag + suffix(baseline)) else candidate
            for candidate, baseline in zip(raw, baselines, strict=True)]


def _strip_baseline(raw: bytes, baseline: float) -> bytes:
    if baseline != 0.0 and raw[-9:] == _BASELINE_TAG + _BASELINE_SUFFIX(baseline):
        return raw[:-9]
    return raw


def check_item_ids(item_ids: Sequence[str], field: str = "candidates") -> None:
    """Item ids must be non-empty and distinct within one request (a slate never repeats an item)."""
    distinct = set(item_ids)
    if len(distinct) == len(item_ids) and "" not in distinct:  # "" looked up in the set, not searched in the list
        return
    seen: set[str] = set()
    for index, item_id in enumerate(item_ids):
        if not item_id:
            raise InvalidInput(f"{field}[{index}].item_id", "must not be empty")
        if item_id in seen:
            raise InvalidInput(f"{field}[{index}].item_id", f"duplicate item_id {item_id!r}")
        seen.add(item_id)


# What the cache keeps per candidate: its item_id, its categorical features (all of them, as a dict: the names a
# shield rule reads differ per surface and change at run time), its key, and the baseline_score of the key's bytes
# read as a whole Candidate (what a view takes when the key is a candidate's whole serialization, see CandidateView).
# The view hands on the cached key object rather than the one it just built: equal bytes, but a dict probe that finds
# the very same object skips comparing ~150 bytes that are usually not in the CPU cache - the VW item cache, keyed by
# these objects, then finds its entries by identity.
CandidateInfo = tuple[str, dict[str, str], bytes, float]


class CandidateInfoCache:
    """Bounded map of :func:`item_key` → (item_id, categorical features, key, baseline). Thread-safe (Rank threads
    share it).

    Oldest-inserted entries go first when full (no recency bookkeeping on the hit path: a miss costs one protobuf
    parse of the candidate, ~1.5 µs, so an exact LRU is not worth ~0.1 µs on every hit). Keys are whole serialized
    candidates (less a trailing baseline_score), so a host whose candidates carry large embeddings should size it
    with that in mind. Every key is a complete Candidate serialization (it parses): :class:`CandidateView` relies on
    that to read a baseline from the wire.
    """

    def __init__(self, max_items: int = 100_000) -> None:
        if max_items <= 0:
            raise ValueError(f"max_items: must be positive, got {max_items}")
        self.max_items = max_items
        self._entries: dict[bytes, CandidateInfo] = {}
        self._lock = threading.Lock()
        # ``get`` without a Python frame: CandidateView maps it over every candidate of every request.
        self.lookup: Callable[[bytes], CandidateInfo | None] = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> CandidateInfo | None:
        return self._entries.get(key)  # dict reads are atomic under the GIL: no lock on the hit path

    def insert(self, key: bytes) -> CandidateInfo:
        """Caches the info of ``key``, a complete Candidate serialization (less the request's trailing baseline).

        The baseline cached is the one ``key`` itself carries (usually 0: the request's was stripped), never the
        request's: a later candidate serialized as exactly ``key`` has that baseline, and reads it from here."""
        candidate = pb.Candidate.FromString(key)  # a miss only (~1.5 µs)
        info = (candidate.item_id, dict(candidate.features.categorical), key, candidate.baseline_score)
        with self._lock:
            entries = self._entries
            entries[key] = info
            while len(entries) > self.max_items:
                del entries[next(iter(entries))]
        return info


CANDIDATE_INFO = CandidateInfoCache()


def _request_view() -> type[Message]:
    """RankRequest with ``candidates`` typed as opaque bytes (wire-compatible: an embedded message is length-delimited
    either way), in a private pool; the other fields are not declared (kept as unknown fields, never read). upb then
    slices each candidate's serialization out of the request's in C: ~5 µs for 100, against ~1 µs a candidate to
    serialize each one from Python. The field number comes from the real descriptor, so it cannot drift."""
    field = pb.RankRequest.DESCRIPTOR.fields_by_name["candidates"]
    file = descriptor_pb2.FileDescriptorProto(name="recsys_rl_candidateview.proto", package="recsys_rl_candidateview",
                                              syntax="proto3")
    file.message_type.add(name="RankRequestCandidates").field.add(
        name="candidates", number=field.number, label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("recsys_rl_candidateview.RankRequestCandidates"))


_RequestCandidates = _request_view()
_BASELINE_TAG_BYTE = _BASELINE_TAG[:1]
# A candidate's serialization cut at its (presumed) trailing baseline record: head, the record's tag byte, its double.
_HEAD, _TAG, _TAIL = itemgetter(slice(None, -9)), itemgetter(slice(-9, -8)), itemgetter(slice(-8, None))
_END = itemgetter(slice(-9, None))  # the presumed baseline record: tag byte and double
_ITEM_ID, _KEY = itemgetter(0), itemgetter(2)  # fields of a CandidateInfo


class CandidateView:
    """The candidates of one RankRequest, read once (see the module docstring); raises InvalidInput for a bad one.

    ``keys[i]``: :func:`item_key` of candidate i; ``raw[i]``: its whole serialization (baseline included: what the
    decision log records, ``policy.decision_record``); ``baseline``: the host's baseline scores (float64);
    ``item_ids[i]``: its id; ``sent``: the request as the host sent it; ``request``: the same with its candidates
    completed from the catalog (built on first use, see below). Immutable by convention: built per request, shared
    by everything deciding it.

    How it reads them: the request is serialized once and the candidates' bytes sliced out of it in C
    (``_RequestCandidates``; the same bytes as serializing each candidate). A candidate with a non-zero baseline ends
    in that field's 9-byte record (serialization writes fields in number order and baseline_score is the last), so its
    key is the bytes before it, and when that key is cached the baseline is read from those 9 bytes, with no protobuf
    read at all. Exact, not a guess: a cached key is a complete Candidate serialization (checked by parsing it when
    inserted), and a record that follows a complete serialization is a record of its own - the last one, so the
    baseline in force - never the tail of another field's value. Anything else (baseline 0, which is not serialized;
    a key not cached yet; unknown fields after the baseline) takes the per-candidate path, :meth:`_read_slow`.

    On a surface with a catalog (``catalog``: its version in force) a candidate's key is its completed bytes less the
    baseline record, which the version hands back as one cached object per distinct candidate
    (``CatalogVersion.complete``): the item's stored bytes for a candidate sent by id only. Its info is then found in
    the cache by identity, and the VW item cache, the shield and the log take those bytes as they are; no completed
    Candidate message exists. ``request`` (a RankRequest with the completed candidates) is built only when a consumer
    that needs protobuf candidates asks for it (a learned baseline, slate-RL, a scorer that does not read the view):
    one rebuild of the request in C from bytes, ~50 µs at 100 candidates.
    """

    __slots__ = ("sent", "keys", "baseline", "item_ids", "catalog_version", "retrieval", "_infos", "_wire", "_heads",
                 "_tails", "_raw", "_request")

    def __init__(self, request: pb.RankRequest, *, cache: CandidateInfoCache = CANDIDATE_INFO,
                 catalog: CatalogVersion | None = None, data: bytes | None = None) -> None:
        """``catalog``: the surface's catalog version, which completes candidates sent by id (``complete``).
        ``data``: the bytes ``request`` was parsed from (the gRPC server's, ``ranker.servicer.WireRankRequest``): the
        candidates are sliced out of those, as the host encoded them, rather than out of a new serialization. Both
        parse to the same candidates; the keys and logged bytes are the host's encoding (a protobuf library's
        canonical one, as the request's own serialization is, for every host library we know)."""
        wire = _RequestCandidates.FromString(request.SerializeToString() if data is None else data)
        raw = list(wire.candidates)
        self.sent = request
        # How the candidates were retrieved, set by the service on a retrieval request (recsys_rl.retrieval.request:
        # a RetrievalResult, with the outside-exploration plan the decision draws with); None otherwise.
        self.retrieval: RetrievalResult | None = None
        self.catalog_version = ""
        self._wire = wire
        self._request: pb.RankRequest | None = request
        self._raw: list[bytes] | None = raw
        n = len(raw)
        records: list[bytes] | None = None
        if catalog is None:  # slices in C (operator.itemgetter over map): ~1.2 µs less per 100 than a comprehension
            heads = list(map(_HEAD, raw))
            ends = b"".join(map(_END, raw))  # each candidate's presumed baseline record (9 bytes), back to back
        else:
            self.catalog_version = catalog.version
            heads, records, changed = catalog.complete(raw)  # exact heads and records: no guess to check
            if changed:  # raw and request are built from the heads and records when asked for
                self._heads, self._tails, self._raw, self._request = heads, records, None, None
            ends = b"".join(records)
        infos = list(map(cache.lookup, heads))
        if n and len(ends) == 9 * n:  # every candidate has a 9-byte end (catalog: every one has a baseline record)
            # The doubles after each presumed tag byte, read in place (stride 9) and copied aligned: the same bits as
            # unpacking each record. A candidate off the usual path gets its own baseline below.
            baselines = np.ndarray((n,), dtype="<f8", buffer=ends, offset=1, strides=(9,)).astype(np.float64)
            tags = ends[::9]
            # all(): a cached info is a non-empty tuple, a miss None (`None in infos` compares each with None).
            if not (all(infos) and tags == _BASELINE_TAG_BYTE * n):
                tag = _BASELINE_TAG_BYTE[0]
                for i, info in enumerate(infos):
                    if info is None or tags[i] != tag:
                        infos[i], baselines[i] = self._read_one(i, raw, heads, records, info, cache)
        else:  # a candidate shorter than a baseline record (or none at all): each one's record on its own
            if records is None:
                tags, tails = list(map(_TAG, raw)), list(map(_TAIL, raw))
            else:
                tags, tails = [t[:1] for t in records], [t[1:] for t in records]
            for i, info in enumerate(infos):
                if info is None or tags[i] != _BASELINE_TAG_BYTE:
                    infos[i], baseline = self._read_one(i, raw, heads, records, info, cache)
                    tails[i] = _BASELINE.pack(baseline)
            # Every candidate's baseline as 8 little-endian bytes, from its record or from _read_slow: one array.
            baselines = np.frombuffer(b"".join(tails), dtype="<f8").astype(np.float64)
        self.baseline = baselines
        if not np.isfinite(baselines).all():
            i = int(np.flatnonzero(~np.isfinite(baselines))[0])
            raise InvalidInput(f"candidates[{i}].baseline_score", f"must be finite, got {baselines[i]}")
        self._infos = infos
        self.keys: list[bytes] = list(map(_KEY, infos))  # the cached key objects (see CandidateInfo)
        self.item_ids: list[str] = list(map(_ITEM_ID, infos))
        check_item_ids(self.item_ids)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def raw(self) -> list[bytes]:
        """Each candidate's whole serialization, completed from the catalog (the log writer's thread reads it)."""
        raw = self._raw
        if raw is None:  # two threads may both build it: equal lists, either one kept
            raw = self._raw = list(map(bytes.__add__, self._heads, self._tails))
        return raw

    @property
    def request(self) -> pb.RankRequest:
        """The request with its candidates completed from the catalog (``sent`` itself when none was completed)."""
        request = self._request
        if request is None:  # one new request, built in C from bytes: no Candidate copied in Python
            wire = _RequestCandidates()
            wire.CopyFrom(self._wire)
            wire.ClearField("candidates")
            wire.candidates.extend(self.raw)
            request = self._request = pb.RankRequest.FromString(wire.SerializeToString())
        return request

    def categorical(self, name: str) -> list[str | None]:
        """Each candidate's value of categorical feature ``name`` (None: the candidate lacks it)."""
        return [info[1].get(name) for info in self._infos]

    @classmethod
    def _read_one(cls, i: int, raw: list[bytes], heads: list[bytes], records: list[bytes] | None,
                  info: CandidateInfo | None, cache: CandidateInfoCache) -> tuple[CandidateInfo, float]:
        """(info, baseline) of candidate ``i`` off the usual path (not cached, or no trailing baseline record)."""
        if records is None:
            return cls._read_slow(raw[i], info, cache)
        return cls._read_completed(heads[i], records[i], info, cache)

    @classmethod
    def _read_completed(cls, head: bytes, record: bytes, info: CandidateInfo | None,
                        cache: CandidateInfoCache) -> tuple[CandidateInfo, float]:
        """(info, baseline) of a candidate completed from the catalog as ``head`` (its bytes less the baseline record:
        the cache key, kept as the very object the catalog returned) and ``record`` (the baseline record or b"")."""
        if info is None and _complete(head):
            info = cache.insert(head)
        if info is None:  # not a complete serialization (a host's odd field order): read the whole as without
            return cls._read_slow(head + record, None, cache)
        return info, _BASELINE.unpack_from(record, 1)[0] if record else info[3]

    @staticmethod
    def _read_slow(whole: bytes, info: CandidateInfo | None, cache: CandidateInfoCache) -> tuple[CandidateInfo, float]:
        """(info, baseline) of a candidate serialized as ``whole``; ``info``: the cached info of ``whole[:-9]``."""
        if whole[-9:-8] == _BASELINE_TAG_BYTE:
            head = whole[:-9]
            if info is None and _complete(head):
                info = cache.insert(head)
            if info is not None:  # the head is a complete serialization: the last 9 bytes are the baseline
                return info, _BASELINE.unpack_from(whole, len(whole) - 8)[0]
        # No trailing baseline record: the whole serialization is the key, and its baseline is the cached one.
        info = cache.get(whole) or cache.insert(whole)
        return info, info[3]


def _complete(head: bytes) -> bool:
    """Whether ``head`` parses as a Candidate: a prefix of a serialization does exactly when it ends on a field
    boundary (any field cut short is a decode error)."""
    try:
        pb.Candidate.FromString(head)
    except DecodeError:
        return False
    return True


_CURRENT: ContextVar[CandidateView | None] = ContextVar("recsys_rl_current_candidates", default=None)
R = TypeVar("R")


def reading(view: CandidateView, call: Callable[[pb.RankRequest], R], *, completed: bool = True) -> R:
    """``call(view.request)`` with ``view`` current (:func:`current_view`) for its duration, on this thread.

    ``completed`` False: ``call(view.sent)``, for a callee that reads the candidates only through the view (no
    completed request is built for it)."""
    token = _CURRENT.set(view)
    try:
        return call(view.request if completed else view.sent)
    finally:
        _CURRENT.reset(token)


def current_view(request: pb.RankRequest) -> CandidateView | None:
    """The view the decision path read ``request``'s candidates into, while it scores or checks that request."""
    view = _CURRENT.get()
    return view if view is not None and (view.sent is request or view._request is request) else None


__all__ = ["CANDIDATE_INFO", "CandidateInfoCache", "CandidateView", "check_item_ids", "current_view", "item_key",
           "logged_item_keys", "reading"]
