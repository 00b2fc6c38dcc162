"""Catalog items: validation of a write (all-or-nothing) and completing a request's candidates from a version.

An item is stored as its serialized ``CatalogItem`` (deterministic bytes), which reads as a ``ranking.v1.Candidate``
(same field numbers): completing a candidate is then a protobuf merge in C, never a Python walk over feature maps.

Completion rule (``CatalogVersion.complete``), per candidate of a RankRequest on a surface with a catalog:

* sent by id only (no features, no embedding): its features and embedding are the catalog's; an id the catalog
  does not hold is ``INVALID_ARGUMENT`` naming ``candidates[i].item_id``;
* sent with features and held by the catalog: the catalog's, then what the request sends over them per field —
  each numeric or categorical feature by name, ``tags`` and ``embedding`` as a whole when sent;
* sent with features and not held: used as sent (as without a catalog).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

# baseline_score's record: tag (field 4, fixed64) + 8 bytes. Serialization writes it last (the highest field number),
# so a candidate whose bytes end in it has them after a complete serialization of everything else (see candidates.py).
_BASELINE_TAG = bytes([pb.Candidate.DESCRIPTOR.fields_by_name["baseline_score"].number << 3 | 1])
MAX_COMPLETIONS = 200_000  # per version: request-candidate bytes -> completed bytes


def check_items(batches: Iterable[Sequence[catalog_pb.CatalogItem]], *, dimension: int | None
                ) -> tuple[dict[str, bytes], int]:
    """Validates one write: every item of every batch. Returns (item_id -> serialized item, dimension).

    ``dimension``: the catalog's embedding dimension (None: empty catalog, the first item sets it). Raises
    InvalidInput naming the batch, the item's index and id, and the field; nothing of the write is returned then.
    """
    out: dict[str, bytes] = {}
    for b, batch in enumerate(batches):
        for i, item in enumerate(batch):
            where = f"requests[{b}].items[{i}]"
            if not item.item_id:
                raise InvalidInput(f"{where}.item_id", "must not be empty")
            named = f"item {item.item_id!r}"
            if item.item_id in out:
                raise InvalidInput(f"{where}.item_id", f"{named} appears twice in this call")
            if dimension is None:
                dimension = len(item.embedding)
            if len(item.embedding) != dimension:
                raise InvalidInput(f"{where}.embedding", f"{named} has {len(item.embedding)} values; the catalog's "
                                                         f"dimension is {dimension}")
            if not all(map(math.isfinite, item.embedding)):
                raise InvalidInput(f"{where}.embedding", f"{named}: values must be finite (no NaN or infinity)")
            for name, value in item.features.numeric.items():
                if not math.isfinite(value):
                    raise InvalidInput(f"{where}.features.numeric[{name!r}]", f"{named}: must be finite, got {value}")
            out[item.item_id] = item.SerializeToString(deterministic=True)
    return out, dimension or 0


@dataclass(eq=False)
class CatalogVersion:
    """One immutable catalog version in memory: item_id -> serialized item. Shared by every Rank thread.

    ``_completed`` caches a request candidate's bytes (less its baseline record) -> its completed bytes (less the
    baseline record): the stored item itself for a candidate sent by id only, a merge for one sent with overrides,
    and the very key object for one used as sent. A repeated candidate then costs one dict probe, and equal
    candidates get the very same bytes object back, which the serving side's caches (keyed by these bytes) find by
    identity. It belongs to this version, so a new version never serves old merges.
    """

    version: str
    dimension: int
    created_at: float
    items: dict[str, bytes]
    _completed: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.items)

    def complete(self, raw: Sequence[bytes]) -> tuple[list[bytes], list[bytes], bool]:
        """The candidates ``raw`` (each a whole serialization, baseline included) completed from this version by the
        module's rule: (heads, tails, changed). ``heads[i] + tails[i]`` is candidate i completed; ``heads[i]``: its
        bytes less the baseline record (a complete Candidate serialization, the version's cached object), ``tails[i]``
        the request's own trailing bytes (the 9-byte baseline record, or b""); ``changed``: whether any candidate
        differs from what was sent. Raises InvalidInput."""
        tag = _BASELINE_TAG
        sent = [whole[:-9] if whole[-9:-8] == tag else whole for whole in raw]
        heads = list(map(self._completed.get, sent))  # only complete serializations are keys (see _complete_one)
        if None in heads:
            for i, head in enumerate(heads):
                if head is None:
                    sent[i], heads[i] = self._complete_one(i, raw[i])
        tails = [whole[len(head):] for whole, head in zip(raw, sent, strict=True)]
        return heads, tails, heads != sent  # type: ignore[return-value]  # list equality: identity, then bytes

    def _complete_one(self, i: int, whole: bytes) -> tuple[bytes, bytes]:
        """(head, completed head) of candidate ``i``; ``head``: its bytes less the baseline record."""
        candidate = pb.Candidate.FromString(whole)
        baseline = candidate.baseline_score
        tail = pb.Candidate(baseline_score=baseline).SerializeToString()  # the record, when not 0
        head = whole[:-9] if baseline != 0.0 and whole.endswith(tail) else whole
        stored = self.items.get(candidate.item_id)
        ids_only = not candidate.embedding and not candidate.features.ByteSize()
        if not candidate.item_id:
            return head, head  # as sent: the request's rules say "must not be empty" (candidates.check_item_ids)
        if stored is None:
            if ids_only:
                raise InvalidInput(f"candidates[{i}].item_id", f"item {candidate.item_id!r} is not in the catalog "
                                                               f"(version {self.version}); send its features")
            done = head  # not in the catalog: used as sent
        else:
            if candidate.embedding and len(candidate.embedding) != self.dimension:
                raise InvalidInput(f"candidates[{i}].embedding", f"has {len(candidate.embedding)} values; the "
                                                                 f"catalog's dimension is {self.dimension}")
            done = stored if ids_only else _merge(stored, candidate) or head
        if head is whole and baseline != 0.0:
            return head, done  # unknown trailing fields after the baseline: not cached (the head is not the key)
        with self._lock:
            if len(self._completed) >= MAX_COMPLETIONS:
                self._completed.clear()  # rare and cheap to refill: one parse per candidate
            done = self._completed.setdefault(head, done)  # a concurrent request's object, if it got there first
        return head, done


def _merge(stored: bytes, sent: pb.Candidate) -> bytes:
    """The catalog's item with what the request sent over it, per field (module docstring); b"" when that is what
    the request sent (a full-feature request for a held item then builds no new request)."""
    merged = pb.Candidate.FromString(stored)
    features = sent.features
    merged.features.numeric.update(features.numeric)
    merged.features.categorical.update(features.categorical)
    if features.tags:
        merged.features.ClearField("tags")
        merged.features.tags.extend(features.tags)
    if sent.embedding:
        merged.ClearField("embedding")
        merged.embedding.extend(sent.embedding)
    merged.baseline_score = sent.baseline_score
    if merged == sent:  # message equality: map order and unknown bytes aside, the same content
        return b""
    merged.ClearField("baseline_score")
    return merged.SerializeToString(deterministic=True)


__all__ = ["CatalogVersion", "check_items"]
