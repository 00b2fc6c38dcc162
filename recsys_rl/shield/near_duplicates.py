"""The near-duplicate rule of one request: ``near_duplicates = { max_cosine = θ }`` (docs/shield.md).

No two items of a slate may have embeddings whose cosine similarity is >= θ. :class:`RequestShield` applies it like
``max_per_value``: once an item is placed, every candidate too similar to it is out of the feasible set of the later
slots, before sampling, so the logged propensities stay exact.

Definitions (what serving, replay and the tests share):

* A candidate's embedding is its ``Candidate.embedding`` as served: sent by the host or filled from the catalog
  (the decision log records the merged candidates, so replay reads the same floats).
* A candidate without an embedding, with an all-zero one or with a non-finite value (which the scorer refuses
  anyway) has no direction: it is never removed by the rule and removes nothing.
* Two embeddings of different lengths are never near-duplicates of each other (their cosine is undefined).
* "Too similar" is ``cos >= θ - 1e-12``, cosine computed in float64 from the float32 values: the tolerance lets
  θ = 1 remove exact duplicates (and parallel vectors), whose computed cosine may round to just below 1.

Deterministic: each row's dot products are numpy's elementwise product and row sum (a fixed order of additions),
not a BLAS call (``U @ u``, ~6x faster) nor ``einsum`` (~2x faster), whose summation order may depend on the
machine's vector width or threads, so replay decides bit for bit as serving did, on any machine.

Cost at 100 candidates x 64 dimensions, slate 10 (in-process, 2-core machine shared with other jobs): ~70 µs per
request to read and normalise the embeddings (half of it the one C call that slices them out of the candidates'
bytes) and ~9 µs per placed item, memoised (``explain`` reuses the rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from logging_schema.views import varint
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

TOLERANCE = 1e-12  # see the module docstring: θ = 1 must catch exact duplicates despite rounding


def _embedding_view() -> type[Message]:
    """A message of candidates with only ``embedding`` declared, typed as bytes (the wire type of a packed repeated
    float: length-delimited), in a private pool: one C call then hands every candidate's packed little-endian
    float32 values out as bytes (~40 µs for 100 candidates against ~240 µs through the repeated float field).

    Exact for the bytes the shield reads: a ``CandidateView``'s candidates are sliced from this process's own
    serialization of the request, and replay's from the log of those, so the field is always packed and written
    once (a singular bytes field keeps the last occurrence). The field number comes from the real descriptor."""
    number = pb.Candidate.DESCRIPTOR.fields_by_name["embedding"].number
    file = descriptor_pb2.FileDescriptorProto(name="recsys_rl_shield_embeddings.proto",
                                              package="recsys_rl_shield_embeddings", syntax="proto3")
    field_type = descriptor_pb2.FieldDescriptorProto
    file.message_type.add(name="Embedding").field.add(name="embedding", number=number,
                                                      label=field_type.LABEL_OPTIONAL, type=field_type.TYPE_BYTES)
    file.message_type.add(name="Embeddings").field.add(
        name="candidates", number=1, label=field_type.LABEL_REPEATED, type=field_type.TYPE_MESSAGE,
        type_name=".recsys_rl_shield_embeddings.Embedding")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("recsys_rl_shield_embeddings.Embeddings"))


_Embeddings = _embedding_view()



_PREFIX = [b"\x0a" + varint(n) for n in range(1 << 14)]  # field 1, length-delimited, lengths below 16 KiB


def embedding_bytes(raw: Sequence[bytes]) -> list[bytes]:
    """Each candidate's embedding as packed little-endian float32 bytes (b"": none), from its serialization."""
    if not raw:
        return []
    lengths = list(map(len, raw))
    if max(lengths) < len(_PREFIX):
        prefixes = list(map(_PREFIX.__getitem__, lengths))
    else:
        prefixes = [b"\x0a" + varint(n) for n in lengths]
    wire = _Embeddings.FromString(b"".join(map(bytes.__add__, prefixes, raw)))
    return [c.embedding for c in wire.candidates]


class NearDuplicates:
    """One request's unit embeddings and, per placed candidate, the candidates it removes (:meth:`removed_by`)."""

    __slots__ = ("threshold", "has", "_units", "_dims", "_removed")

    def __init__(self, raw: Sequence[bytes], max_cosine: float) -> None:
        packed = embedding_bytes(raw)
        n = len(packed)
        dims = np.fromiter(map(len, packed), dtype=np.int64, count=n) // 4
        width = int(dims.max()) if n else 0
        if n and (dims == width).all():  # the usual case (one catalog, one dimension): one buffer, no loop
            units = np.frombuffer(b"".join(packed), dtype="<f4").reshape(n, width).astype(np.float64)
        else:
            units = np.zeros((n, width), dtype=np.float64)
            for i, data in enumerate(packed):
                units[i, : dims[i]] = np.frombuffer(data, dtype="<f4", count=int(dims[i]))
        with np.errstate(invalid="ignore", over="ignore"):
            norms = np.sqrt((units * units).sum(axis=1))
        has = (dims > 0) & np.isfinite(norms) & (norms > 0)
        if has.all():
            units /= norms[:, None]
        else:
            units[~has] = 0.0
            units[has] /= norms[has, None]
        self.threshold = max_cosine - TOLERANCE
        self.has = has
        self._units = units
        self._dims = dims
        self._removed: dict[int, np.ndarray] = {}

    def removed_by(self, j: int) -> np.ndarray:
        """Boolean per candidate: too similar to candidate ``j`` (``j`` itself included when it has a direction)."""
        found = self._removed.get(j)
        if found is None:
            if not self.has[j]:
                found = np.zeros(self.has.size, dtype=bool)
            else:
                cosine = (self._units * self._units[j]).sum(axis=1)
                found = (cosine >= self.threshold) & self.has & (self._dims == self._dims[j])
            self._removed[j] = found
        return found


def check_max_cosine(value: object, key: str) -> float:
    """θ of ``near_duplicates.max_cosine``: a number in (0, 1]; ValueError naming ``key`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: must be a number in (0, 1], got {value!r}")
    theta = float(value)
    if not 0.0 < theta <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"{key}: must be in (0, 1], got {value!r}")
    return theta


__all__ = ["TOLERANCE", "NearDuplicates", "check_max_cosine", "embedding_bytes"]
