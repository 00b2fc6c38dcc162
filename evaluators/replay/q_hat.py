"""The reward-model columns of a replay table: ``q_hat`` (cross-fitted q̂ of the logged item) and ``q_hat_target``
(Σ_a π(a | x, logged prefix) · q̂(x, a, k) over the candidates still available at slot k).

Replay collects, per decision and slot, every candidate still available with its target probability and its
flattened features (:class:`CandidateRows`, spilled to parquet in a scratch directory), then fits the reward model
on the logged rows and scores every row (:func:`fit_and_score`; lightgbm is loaded only then).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.exploration import Explorer

_NUM, _CAT = "num", "cat"


class CandidateRows:
    """The long frame q̂π needs: one row per (decision, slot k, candidate a still available at slot k).

    Columns: event_id, position, action, target_prob (π(a | x, logged prefix), from the same explorer and scores
    as target_pscore), logged (a is the logged item of slot k), baseline_score, and the flattened features:
    ``ctx_num_*`` / ``ctx_cat_*`` from the context, ``item_num_*`` / ``item_cat_*`` from the candidate (numeric
    as Float64, categorical as String; tags are not used). Chunks go to parquet files in a scratch directory so
    memory stays bounded (≈ n·k rows per decision).
    """

    ROWS_PER_FILE = 500_000

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.files: list[Path] = []
        self.columns: dict[tuple[str, str, str], str] = {}  # (scope, kind, feature name) -> column
        self._taken: set[str] = set()
        self._features: list[dict[str, object]] = []  # one per (decision, candidate)
        self._slots: dict[str, list[object]] = {k: [] for k in ("row", "event_id", "position", "target_prob", "logged")}

    def _column(self, scope: str, kind: str, name: str) -> str:
        key = (scope, kind, name)
        column = self.columns.get(key)
        if column is None:
            # LightGBM rejects JSON-special characters in feature names: keep [A-Za-z0-9_], then de-duplicate.
            base = f"{scope}_{kind}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
            column, i = base, 2
            while column in self._taken:
                column, i = f"{base}_{i}", i + 1
            self._taken.add(column)
            self.columns[key] = column
        return column

    def _flatten(self, features: pb.Features, scope: str, into: dict[str, object]) -> None:
        for name, value in features.numeric.items():
            into[self._column(scope, _NUM, name)] = float(value)
        for name, value in features.categorical.items():
            into[self._column(scope, _CAT, name)] = value

    def add(self, event_id: str, request: pb.RankRequest, scores: np.ndarray, logged: list[int],
            explorer: Explorer) -> None:
        context: dict[str, object] = {}
        self._flatten(request.context, "ctx", context)
        first_row = len(self._features)
        for candidate in request.candidates:
            row = dict(context, action=candidate.item_id, baseline_score=candidate.baseline_score)
            self._flatten(candidate.features, "item", row)
            self._features.append(row)
        remaining = np.arange(len(request.candidates))
        slots = self._slots
        for k, index in enumerate(logged):
            # explorer.distribution is the public face of the code slate_propensities uses for each slot.
            p = explorer.distribution(scores[remaining])
            slots["row"].extend((remaining + first_row).tolist())
            slots["event_id"].extend([event_id] * remaining.size)
            slots["position"].extend([k] * remaining.size)
            slots["target_prob"].extend(p.tolist())
            slots["logged"].extend((remaining == index).tolist())
            remaining = remaining[remaining != index]
        if len(slots["row"]) >= self.ROWS_PER_FILE:
            self.close()

    def close(self) -> None:
        """Write the buffered rows to the next chunk file."""
        if not self._slots["row"]:
            return
        features = pl.from_dicts(self._features, infer_schema_length=None)
        slots = pl.DataFrame(self._slots, schema={"row": pl.UInt32, "event_id": pl.String, "position": pl.Int32,
                                                  "target_prob": pl.Float64, "logged": pl.Boolean})
        gathered = features.select(pl.all().gather(slots.get_column("row")))
        frame = pl.concat([slots.drop("row"), gathered], how="horizontal")
        path = self.scratch / f"candidates-{len(self.files):05d}.parquet"
        frame.write_parquet(path)
        self.files.append(path)
        self._features = []
        self._slots = {k: [] for k in self._slots}

    def schema(self) -> dict[str, pl.DataType]:
        """Feature columns and their types (the same in every chunk, even where a chunk lacks a feature)."""
        out: dict[str, pl.DataType] = {"position": pl.Int32(), "action": pl.String(), "baseline_score": pl.Float64()}
        for (_, kind, _), column in self.columns.items():
            out[column] = pl.Float64() if kind == _NUM else pl.String()
        return out

    def read(self, path: Path) -> pl.DataFrame:
        frame = pl.read_parquet(path)
        schema = self.schema()
        fill = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in schema.items() if name not in frame.columns]
        return frame.with_columns(fill).with_columns([pl.col(n).cast(d) for n, d in schema.items()])


def fit_and_score(table: pl.DataFrame, candidates: CandidateRows, *, seed: int = 0) -> pl.DataFrame:
    """``table`` with q_hat (out-of-fold q̂ of the logged item) and q_hat_target (Σ_a π(a) q̂(x, a, k)).

    The model is evaluators.reward_model's cross-fitted LightGBM (K = 5 folds by event): an event's q̂ and q̂π
    both come from the booster that did not train on it.
    """
    from evaluators.reward_model import fit_reward_model  # lightgbm: only when asked for

    features = list(candidates.schema())
    logged = pl.concat([candidates.read(p).filter(pl.col("logged")) for p in candidates.files], how="vertical")
    rows = logged.join(table.select("event_id", "position", "reward"), on=["event_id", "position"], how="inner")
    try:
        model = fit_reward_model(rows, features, seed=seed)
    except ValueError as exc:
        raise InvalidInput("reward_model", f"cannot fit the reward model: {exc}") from exc
    q_target = pl.concat(
        [model.q_hat_target(candidates.read(p), prob_column="target_prob") for p in candidates.files], how="vertical"
    )
    keys = ["event_id", "position"]
    return (
        table.join(model.q_hat.select(*keys, "q_hat"), on=keys, how="left", maintain_order="left")
        .join(q_target.with_columns(pl.col("position").cast(table.schema["position"])), on=keys, how="left",
              maintain_order="left")
    )


# --- command line ------------------------------------------------------------------------------------


__all__ = ["CandidateRows", "fit_and_score"]
