"""Offline SlateQ training from logged sessions: n-step SARSA targets, a Polyak target network, a choice
model fitted on logged clicks, and a conservative (CQL-style) penalty for items the logs rarely showed.

Per minibatch of decisions (state s_t, logged slate A_t, chosen item c_t ∈ A_t ∪ {⊥}):

    choice loss   L_c = − log P(c_t | s_t, A_t)                          (cross-entropy incl. no-click)
    TD target     y_t = G_t^(n) + γ^n · V̄(s_{t+n}, A_{t+n})            (0 bootstrap at session end)
                  V̄ = Σ_i P̄(i | s, A) Q̄(s, i) + P̄(⊥) Q̄(s, ⊥)        (target network, logged next slate: SARSA)
    TD loss       L_q = Huber(Q(s_t, c_t) − y_t)                         (Q(s, ⊥) when nothing was clicked)
    conservative  L_cql = logsumexp_{i ∈ A_t ∪ C_t} Q(s_t, i) − mean_{i ∈ A_t} Q(s_t, i)
                  with C_t a few candidates sampled from the logged candidate set: Q of items the logging
                  policy rarely showed is pushed below Q of what it did show (Kumar et al., 2020).
    total         L = L_q + choice_weight · L_c + cql_alpha · L_cql;   θ̄ ← (1 − τ) θ̄ + τ θ after each step.

Only SlateQ's item-wise decomposition makes this tractable: Q is learned per item, the slate value is
assembled from the choice model, so no combinatorial slate action space is ever enumerated.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from logging_schema.retention import RetentionConfig, RetentionStats
from recsys_rl.errors import InvalidInput
from recsys_rl.serving.registry import Checkpoint, ModelRegistry
from recsys_rl.slateq import SURFACE
from recsys_rl.slateq.data import SlateQDataset, load_dataset
from recsys_rl.slateq.model import Featurizer, FeatureSpec, NetSpec, SlateQNet

__all__ = ["TrainConfig", "TrainResult", "serialize", "train", "train_from_data_dir"]
log = logging.getLogger(__name__)
FORMAT = "slateq-v1"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of offline training (all recorded in the manifest)."""

    gamma: float = 0.9  # per-decision discount
    n_step: int = 3  # steps summed before bootstrapping from the target network
    steps: int | None = None  # gradient steps; None = one pass over the data (ceil(N / batch_size))
    batch_size: int = 512
    lr: float = 3e-3
    tau: float = 0.01  # Polyak rate of the target network
    cql_alpha: float = 0.1  # weight of the conservative penalty
    cql_candidates: int = 16  # logged candidates sampled per decision for the penalty
    choice_weight: float = 1.0  # weight of the choice cross-entropy
    click_weight: float = 1.0  # immediate reward per click
    dwell_weight: float = 0.01  # immediate reward per second of dwell
    return_visit_weight: float = 1.0  # terminal reward per return visit
    session_gap_seconds: float = 1800.0
    return_horizon_seconds: float = 3 * 86_400.0
    max_slate: int = 10  # slate positions used for training (deeper positions are ignored)
    seed: int = 0
    threads: int | None = 1  # torch intra-op threads: the nets are small, so one thread avoids oversubscription
    # (measured 7x faster than 2 threads on a busy 2-core box); None = torch's default
    return_visit_on: str = "last_decision"  # host convention for return_visit outcomes (see retention)

    def __post_init__(self) -> None:
        positive = {"batch_size": self.batch_size, "cql_candidates": self.cql_candidates, "max_slate": self.max_slate}
        for name, value in positive.items():
            if value < 1:
                raise InvalidInput(name, f"must be >= 1, got {value}")
        if self.steps is not None and self.steps < 1:
            raise InvalidInput("steps", f"must be >= 1, got {self.steps}")
        for name in ("lr", "tau"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= 1):
                raise InvalidInput(name, f"must be in (0, 1], got {value}")
        for name in ("cql_alpha", "choice_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInput(name, f"must be >= 0, got {value}")

    def retention(self) -> RetentionConfig:
        try:
            return RetentionConfig(
                gamma=self.gamma, n_step=self.n_step,
                weights={"click": self.click_weight, "dwell_seconds": self.dwell_weight},
                session_gap_seconds=self.session_gap_seconds, return_visit_weight=self.return_visit_weight,
                return_horizon_seconds=self.return_horizon_seconds, return_visit_on=self.return_visit_on,
            )  # fmt: skip
        except ValueError as exc:
            field, _, reason = str(exc).partition(": ")
            raise InvalidInput(field, reason) from exc


@dataclass
class TrainResult:
    net: SlateQNet
    dataset: SlateQDataset
    losses: dict[str, float]  # mean of the last 10% of steps
    steps: int
    load_seconds: float
    train_seconds: float
    batch_size: int

    @property
    def decisions_per_second(self) -> float:
        """Training throughput: decisions consumed by gradient steps per second of training (loading excluded)."""
        return self.steps * min(len(self.dataset), self.batch_size) / max(self.train_seconds, 1e-9)


class _Tensors:
    """The dataset as torch tensors, plus the gathers one minibatch needs."""

    def __init__(self, data: SlateQDataset) -> None:
        self.context = torch.from_numpy(data.context)
        self.slate = torch.from_numpy(data.slate)
        self.clicked = torch.from_numpy(data.clicked)
        self.candidates = torch.from_numpy(data.candidates)
        self.history = torch.from_numpy(data.history)
        self.n_step_return = torch.from_numpy(data.n_step_return)
        self.bootstrap_row = torch.from_numpy(data.bootstrap_row)
        self.bootstrap_discount = torch.from_numpy(data.bootstrap_discount)
        self.item_x = torch.from_numpy(data.item_x)
        self.item_ids = torch.from_numpy(data.item_ids)
        self.positions = torch.arange(data.slate.shape[1])


def _encode(net: SlateQNet, t: _Tensors, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(state [B, S], slate embeddings [B, M, D], slate mask [B, M]) of the decisions at ``rows``."""
    hist_items = t.history[rows]
    history = net.items(t.item_x[hist_items], t.item_ids[hist_items])
    history = history * (hist_items > 0).unsqueeze(-1)  # padding stays an exact zero input, as at serving
    s = net.state(t.context[rows], history)
    slate_items = t.slate[rows]
    return s, net.items(t.item_x[slate_items], t.item_ids[slate_items]), slate_items > 0


def _step_losses(net: SlateQNet, target: SlateQNet, t: _Tensors, rows: torch.Tensor,
                 config: TrainConfig) -> dict[str, torch.Tensor]:
    s, e, mask = _encode(net, t, rows)
    positions = t.positions.expand_as(mask)
    v, v0 = net.choice_logits(s, e, positions)
    logits = torch.cat([v0.unsqueeze(-1), v.masked_fill(~mask, float("-inf"))], dim=-1)
    clicked = t.clicked[rows]
    choice_loss = F.cross_entropy(logits, clicked + 1)

    with torch.no_grad():
        boot = t.bootstrap_row[rows]
        has_boot = boot >= 0
        bootstrap_value = torch.zeros(len(rows))
        if bool(has_boot.any()):
            s2, e2, mask2 = _encode(target, t, boot[has_boot])
            bootstrap_value[has_boot] = target.slate_value(s2, e2, positions[: len(s2)], mask2)
        y = t.n_step_return[rows] + t.bootstrap_discount[rows] * bootstrap_value

    q_items = net.item_values(s, e)
    q_null = net.null_value(s)
    q_chosen = torch.where(clicked >= 0, q_items.gather(1, clicked.clamp(min=0).unsqueeze(1)).squeeze(1), q_null)
    td_loss = F.smooth_l1_loss(q_chosen, y)

    cand_items = t.candidates[rows]
    q_cand = net.item_values(s, net.items(t.item_x[cand_items], t.item_ids[cand_items]))
    q_shown = q_items.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(torch.cat([q_shown, q_cand], dim=1), dim=1)
    shown_mean = (q_items * mask).sum(1) / mask.sum(1).clamp(min=1)
    cql = (lse - shown_mean).mean()
    total = td_loss + config.choice_weight * choice_loss + config.cql_alpha * cql
    return {"loss": total, "td": td_loss, "choice": choice_loss, "cql": cql}


def train(data: SlateQDataset, config: TrainConfig, *, feature_spec: FeatureSpec, net_spec: NetSpec,
          init: SlateQNet | None = None, progress: bool = True) -> tuple[SlateQNet, dict[str, float], int, float]:
    """Trains on ``data``; returns (net, mean losses over the last 10% of steps, steps, seconds)."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    net = init if init is not None else SlateQNet(feature_spec, net_spec)
    target = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    tensors = _Tensors(data)
    n = len(data)
    batch = min(config.batch_size, n)
    steps = config.steps or math.ceil(n / batch)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n, generator=generator)
    cursor = 0
    tail = max(1, steps // 10)
    sums: dict[str, float] = {}
    started = time.perf_counter()
    bar = tqdm(range(steps), desc="train slateq", unit="step", disable=not progress, mininterval=0.5)
    for step in bar:
        if cursor + batch > n:  # reshuffle per epoch, sampling without replacement inside one
            order, cursor = torch.randperm(n, generator=generator), 0
        rows = order[cursor : cursor + batch]
        cursor += batch
        losses = _step_losses(net, target, tensors, rows, config)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        values = {name: float(value.detach()) for name, value in losses.items()}
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        optimizer.step()
        with torch.no_grad():
            for p_target, p in zip(target.parameters(), net.parameters(), strict=True):
                p_target.lerp_(p, config.tau)
        if step >= steps - tail:
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
        if step % 20 == 0:
            bar.set_postfix(loss=f"{values['loss']:.4f}", td=f"{values['td']:.4f}")
    seconds = time.perf_counter() - started
    return net, {k: v / tail for k, v in sums.items()}, steps, seconds


def serialize(net: SlateQNet) -> bytes:
    """Checkpoint bytes (loadable with ``torch.load(weights_only=True)``: tensors and plain values only)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "feature_spec": asdict(net.feature_spec), "net_spec": net.net_spec.to_dict(),
                "state_dict": net.state_dict()}, buffer)  # fmt: skip
    return buffer.getvalue()


def deserialize(blob: bytes) -> SlateQNet:
    """The network stored by ``serialize``; raises ValueError with the reason when it is not one."""
    try:
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for garbage (pickle, zip, runtime)
        raise ValueError(f"model: not a readable slateq checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"model: expected format {FORMAT!r}, got {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}")
    try:
        net = SlateQNet(FeatureSpec(**payload["feature_spec"]), NetSpec(**payload["net_spec"]))
        net.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ValueError(f"model: checkpoint does not match the SlateQ network ({exc})") from exc
    return net.eval()


def train_from_data_dir(data_dir: Path, config: TrainConfig, *, net_spec: NetSpec | None = None,
                        feature_spec: FeatureSpec | None = None, progress: bool = True,
                        publish: bool = True) -> tuple[TrainResult, Checkpoint | None]:
    """Loads ``data_dir/logs``, trains, and publishes ``data_dir/models/slateq/<version>/`` with a manifest.

    The parent is the latest published slateq version (training starts from scratch; ``parent`` records
    lineage). Returns the result and the published checkpoint (None when ``publish`` is false).
    """
    data_dir = Path(data_dir)
    log_dir = data_dir / "logs"
    if not log_dir.is_dir():
        raise InvalidInput("data_dir", f"no logs under {log_dir}")
    net_spec = net_spec or NetSpec()
    feature_spec = feature_spec or FeatureSpec()
    stats = RetentionStats()
    started = time.perf_counter()
    data = load_dataset(log_dir, Featurizer(feature_spec), config.retention(), history=net_spec.history,
                        max_slate=config.max_slate, cql_candidates=config.cql_candidates, seed=config.seed,
                        retention_stats=stats)  # fmt: skip
    load_seconds = time.perf_counter() - started
    log.info("slateq: loaded %d decisions (%d items) in %.1fs", len(data), len(data.item_x) - 1, load_seconds)
    net, losses, steps, seconds = train(data, config, feature_spec=feature_spec, net_spec=net_spec, progress=progress)
    result = TrainResult(net, data, losses, steps, load_seconds, seconds, config.batch_size)
    if not publish:
        return result, None
    registry = ModelRegistry(data_dir / "models")
    parent = registry.latest(SURFACE)
    parameters: dict[str, Any] = {"train": asdict(config), "net": net_spec.to_dict(), "features": asdict(feature_spec),
                                  "final_losses": losses, "steps": steps,
                                  "retention_stats": asdict(stats)}  # fmt: skip
    checkpoint = registry.publish(SURFACE, serialize(net), parent=parent.version if parent else None,
                                  data_range=data.data_range, parameters=parameters)
    return result, checkpoint
