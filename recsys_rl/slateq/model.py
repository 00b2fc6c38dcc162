"""The SlateQ network: featurisation, item tower, user-state GRU, conditional-logit choice head, item-wise Q.

Featurisation (``Featurizer``). A ``Features`` message becomes a fixed ``hash_dim`` vector by signed feature
hashing with a stable hash (CRC32, not Python's salted ``hash``): categorical ``name=value`` → ±1, each tag →
±1/√(#tags), numeric ``name`` → ±sign(x)·log(1+|x|) (the log tames scales such as seconds vs. shares). A
candidate's vector is ``[hash(features) | first embedding_dim entries of Candidate.embedding, zero-padded]``
plus an item-id bucket in 1..id_buckets (0 = padding) for an optional learned id embedding. Candidates are
cached by (item_id, serialized features) in a bounded LRU, so the serving hot path reads no map field for an
item it has seen (see architecture.md on map-field cost).

Network (``SlateQNet``), with e_i = item_tower(x_i, id_i) and the user state
s = relu(W [GRU(e_{h_1..h_K}) ; x_context]) over the user's last K clicked items (left-padded with zeros to K):

    choice logits   v_i = pair_c(s, e_i) + b_pos[k_i],    v_0 = w_0 · s + c_0      (no-click)
    choice model    P(i | s, A) = exp(v_i) / (exp(v_0) + Σ_{j∈A} exp(v_j))          (conditional logit)
    item values     Q(s, i) = pair_q(s, e_i),             Q(s, ⊥) = w_⊥ · s + c_⊥    (no-click value)
    slate value     V(s, A) = Σ_{i∈A} P(i | s, A) Q(s, i) + P(⊥ | s, A) Q(s, ⊥)       (SlateQ decomposition)

``pair(s, e) = w_out · relu(W_s s + W_e e + b) + c`` - factorised so W_s s is computed once per request and
W_e e once per item (cacheable), which keeps 100-candidate inference to a few small matrix products.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

__all__ = ["FeatureSpec", "Featurizer", "NetSpec", "SlateQNet", "slate_value"]


@dataclass(frozen=True)
class FeatureSpec:
    """Shape of the featurisation; stored in the checkpoint so serving featurises exactly like training."""

    hash_dim: int = 64  # buckets of the hashed feature space (context and item features)
    embedding_dim: int = 8  # leading entries of Candidate.embedding kept (zero-padded); 0 = ignore embeddings
    id_buckets: int = 1024  # hashed item-id buckets for a learned id embedding; 0 = no id embedding

    def __post_init__(self) -> None:
        for name in ("hash_dim", "embedding_dim", "id_buckets"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "hash_dim" else 0):
                raise ValueError(f"{name}: must be an integer >= {1 if name == 'hash_dim' else 0}, got {value!r}")

    @property
    def item_dim(self) -> int:
        return self.hash_dim + self.embedding_dim


def _stable_hash(token: str) -> int:
    return zlib.crc32(token.encode())


class Featurizer:
    """Features / Candidate protobufs → fixed-size float32 vectors, with per-token and per-item caches."""

    def __init__(self, spec: FeatureSpec, *, cache_size: int = 100_000) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size: must be >= 1, got {cache_size}")
        self.spec = spec
        self._cache_size = cache_size
        self._tokens: dict[str, tuple[int, float]] = {}  # token -> (bucket, sign); bounded by clearing
        self._items: OrderedDict[tuple[str, bytes, tuple[float, ...]], tuple[np.ndarray, int]] = OrderedDict()

    def _bucket(self, token: str) -> tuple[int, float]:
        hit = self._tokens.get(token)
        if hit is None:
            h = _stable_hash(token)
            hit = (h % self.spec.hash_dim, 1.0 if (h >> 31) & 1 else -1.0)
            if len(self._tokens) >= 4 * self._cache_size:
                self._tokens.clear()  # cheap bound: tokens are re-hashed on the next miss
            self._tokens[token] = hit
        return hit

    def features(self, features: pb.Features, out: np.ndarray | None = None) -> np.ndarray:
        """The hashed ``hash_dim`` vector of one Features message (written into ``out`` when given)."""
        vec = np.zeros(self.spec.hash_dim, dtype=np.float32) if out is None else out
        for name, value in features.categorical.items():
            bucket, sign = self._bucket(f"c:{name}={value}")
            vec[bucket] += sign
        tags = features.tags
        if tags:
            scale = 1.0 / math.sqrt(len(tags))
            for tag in tags:
                bucket, sign = self._bucket(f"t:{tag}")
                vec[bucket] += sign * scale
        for name, value in features.numeric.items():
            if not math.isfinite(value):
                raise ValueError(f"features.numeric[{name!r}]: must be finite, got {value}")
            bucket, sign = self._bucket(f"n:{name}")
            vec[bucket] += sign * math.copysign(math.log1p(abs(value)), value)
        return vec

    def id_bucket(self, item_id: str) -> int:
        return 1 + _stable_hash(item_id) % self.spec.id_buckets if self.spec.id_buckets else 0

    def candidate_uncached(self, candidate: pb.Candidate) -> tuple[np.ndarray, int]:
        vec = np.zeros(self.spec.item_dim, dtype=np.float32)
        self.features(candidate.features, out=vec[: self.spec.hash_dim])
        k = min(self.spec.embedding_dim, len(candidate.embedding))
        if k:
            vec[self.spec.hash_dim : self.spec.hash_dim + k] = candidate.embedding[:k]
        return vec, self.id_bucket(candidate.item_id)

    def candidate(self, candidate: pb.Candidate) -> tuple[np.ndarray, int]:
        """(item vector, id bucket) for one candidate; cached by (item_id, serialized features)."""
        # The embedding is part of the key only up to what the vector uses; baseline_score is not (it may
        # change per request without changing the item).
        embedding = tuple(candidate.embedding[: self.spec.embedding_dim]) if self.spec.embedding_dim else ()
        key = (candidate.item_id, candidate.features.SerializeToString(), embedding)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        hit = self.candidate_uncached(candidate)
        self._items[key] = hit
        if len(self._items) > self._cache_size:
            self._items.popitem(last=False)
        return hit

    def candidates(self, candidates: Sequence[pb.Candidate]) -> tuple[np.ndarray, np.ndarray]:
        """Stacked item vectors [n, item_dim] float32 and id buckets [n] int64."""
        rows = [self.candidate(c) for c in candidates]
        if not rows:
            return np.zeros((0, self.spec.item_dim), np.float32), np.zeros(0, np.int64)
        return np.stack([r[0] for r in rows]), np.fromiter((r[1] for r in rows), np.int64, len(rows))


@dataclass(frozen=True)
class NetSpec:
    """Sizes of the network (stored in the checkpoint)."""

    item_embed: int = 32  # e_i size (item tower output, GRU input)
    id_embed: int = 8  # learned id-embedding size (used when FeatureSpec.id_buckets > 0)
    hidden: int = 64  # hidden width of the item tower and of the pair heads
    state: int = 32  # user state size (GRU hidden and s)
    history: int = 10  # K: clicked items the state encoder sees
    max_positions: int = 32  # positions with their own choice bias; later positions share the last one

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _PairHead(nn.Module):
    """w_out · relu(W_s s + W_e e + b) + c: one scalar per (state, item) pair, factorised for caching."""

    def __init__(self, state: int, item: int, hidden: int) -> None:
        super().__init__()
        self.state_proj = nn.Linear(state, hidden)
        self.item_proj = nn.Linear(item, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)

    def forward(self, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # s [B, S], e [B, M, D] -> [B, M]
        hidden = torch.relu(self.state_proj(s).unsqueeze(1) + self.item_proj(e))
        return self.out(hidden).squeeze(-1)


class SlateQNet(nn.Module):
    """User-state encoder, item tower, choice head (with no-click) and item-wise long-term value head."""

    def __init__(self, features: FeatureSpec, net: NetSpec) -> None:
        super().__init__()
        self.feature_spec, self.net_spec = features, net
        id_dim = net.id_embed if features.id_buckets else 0
        self.id_embedding = nn.Embedding(features.id_buckets + 1, net.id_embed, padding_idx=0) if id_dim else None
        self.item_tower = nn.Sequential(
            nn.Linear(features.item_dim + id_dim, net.hidden), nn.ReLU(), nn.Linear(net.hidden, net.item_embed)
        )
        self.gru = nn.GRU(net.item_embed, net.state, batch_first=True)
        self.state_proj = nn.Linear(net.state + features.hash_dim, net.state)
        self.choice = _PairHead(net.state, net.item_embed, net.hidden)
        self.position_bias = nn.Parameter(torch.zeros(net.max_positions))
        self.no_click_logit = nn.Linear(net.state, 1)
        self.value = _PairHead(net.state, net.item_embed, net.hidden)
        self.no_click_value = nn.Linear(net.state, 1)

    def items(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Item embeddings e [..., item_embed] from vectors x [..., item_dim] and id buckets [...]."""
        if self.id_embedding is not None:
            x = torch.cat([x, self.id_embedding(ids)], dim=-1)
        return self.item_tower(x)

    def state(self, context: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """User state s [B, state] from context vectors [B, hash_dim] and history embeddings [B, K, item_embed]."""
        _, h = self.gru(history)
        return torch.relu(self.state_proj(torch.cat([h[-1], context], dim=-1)))

    def choice_logits(self, s: torch.Tensor, e: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(v [B, M] for the slate items at ``positions`` [B, M], v_0 [B] for no-click)."""
        bias = self.position_bias[positions.clamp(0, self.net_spec.max_positions - 1)]
        return self.choice(s, e) + bias, self.no_click_logit(s).squeeze(-1)

    def choice_probs(self, s: torch.Tensor, e: torch.Tensor, positions: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 1 + M]: column 0 is P(no click), column 1 + j is P(item j | slate). Masked items get 0."""
        v, v0 = self.choice_logits(s, e, positions)
        if mask is not None:
            v = v.masked_fill(~mask, float("-inf"))
        return torch.softmax(torch.cat([v0.unsqueeze(-1), v], dim=-1), dim=-1)

    def item_values(self, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Q(s, i) [B, M]."""
        return self.value(s, e)

    def null_value(self, s: torch.Tensor) -> torch.Tensor:
        """Q(s, ⊥) [B]: the long-term value of a page view without a click."""
        return self.no_click_value(s).squeeze(-1)

    def slate_value(self, s: torch.Tensor, e: torch.Tensor, positions: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """V(s, A) [B] by the SlateQ decomposition (module docstring)."""
        probs = self.choice_probs(s, e, positions, mask)
        return slate_value(probs, self.item_values(s, e), self.null_value(s))


def slate_value(probs: torch.Tensor, item_values: torch.Tensor, null_value: torch.Tensor) -> torch.Tensor:
    """Σ_i P(i) Q(i) + P(⊥) Q(⊥) with probs [B, 1+M] (column 0 = no click), item_values [B, M], null_value [B]."""
    return probs[:, 0] * null_value + (probs[:, 1:] * torch.nan_to_num(item_values)).sum(-1)
