"""Open Bandit Dataset (OBD) importer: ZOZOTOWN logs → bandit-feedback table.

OBD (Saito et al., NeurIPS Datasets & Benchmarks 2021) logs a 3-slot fashion carousel under two logging
policies running side by side: uniform random and a context-free Bernoulli Thompson Sampling (BTS). Each CSV
row is one impression, i.e. one (round, position) pair; the public *sample* keeps a random subset of rows, so
rows of the same round cannot be regrouped and the joint-slate columns of the feedback table are not produced.

Layout read here (as published): ``<root>/<policy>/<campaign>/<campaign>.csv`` and
``<root>/<policy>/<campaign>/item_context.csv``; ``position`` is 1-based in the file and 0-based in our tables.

Target policies are given as OBP-style action distributions ``π(item | row, position)`` of shape
``[n_rows, n_items, n_positions]`` (or ``[n_items, n_positions]`` for context-free policies). For BTS, the
distribution comes from the Beta posteriors ZOZO published as the production prior (``bts_action_dist``):
with ``θ_i ~ Beta(α_i, β_i)`` drawn independently per item and items ranked by ``θ`` descending,
``π(i, k) = P(item i has rank k)``, estimated by Monte Carlo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from recsys_rl.errors import InvalidInput

LoggingPolicy = Literal["random", "bts"]
Campaign = Literal["all", "men", "women"]

OBD_N_POSITIONS = 3
_REQUIRED_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")


@dataclass(frozen=True)
class ObdLog:
    """One OBD log file, validated.

    ``rows`` has one row per impression with columns ``event_id`` (str, ``"<policy>/<campaign>/<row>"``),
    ``row`` (int, the file's own row index), ``timestamp`` (UTC datetime), ``item_id`` (0..n_items-1),
    ``position`` (0-based), ``click`` (0/1), ``propensity_score`` (logging probability of this item at this
    position), then the user features and user–item affinities exactly as in the file.
    """

    policy: str
    campaign: str
    rows: pl.DataFrame
    item_context: pl.DataFrame
    n_items: int
    n_positions: int = OBD_N_POSITIONS

    @property
    def n_rows(self) -> int:
        return self.rows.height

    def on_policy_value(self) -> float:
        """Mean click per impression: the logging policy's own value (the OPE ground truth for BTS)."""
        return float(self.rows["click"].mean())  # type: ignore[arg-type]


def load_obd(path: str | Path, policy: LoggingPolicy, *, campaign: Campaign = "all") -> ObdLog:
    """Read and validate ``<path>/<policy>/<campaign>/`` (the OBD folder layout).

    Raises ``FileNotFoundError`` naming the missing file and ``InvalidInput`` naming ``file:column`` for
    missing columns or out-of-range values (position outside 1..3, unknown item, click not 0/1,
    propensity outside (0, 1]).
    """
    if policy not in ("random", "bts"):
        raise InvalidInput("policy", f"must be 'random' or 'bts', got {policy!r}")
    if campaign not in ("all", "men", "women"):
        raise InvalidInput("campaign", f"must be 'all', 'men' or 'women', got {campaign!r}")
    folder = Path(path) / policy / campaign
    log_csv, items_csv = folder / f"{campaign}.csv", folder / "item_context.csv"
    for f in (log_csv, items_csv):
        if not f.is_file():
            raise FileNotFoundError(f"OBD file not found: {f}")

    item_context = pl.read_csv(items_csv).drop("", strict=False)
    if "item_id" not in item_context.columns:
        raise InvalidInput(f"{items_csv}:item_id", "column missing")
    n_items = item_context.height

    raw = pl.read_csv(log_csv, infer_schema_length=1000)
    for column in _REQUIRED_COLUMNS:
        if column not in raw.columns:
            raise InvalidInput(f"{log_csv}:{column}", "column missing")
    # The first, unnamed column is the row index of the original full log.
    raw = raw.rename({"": "row"}) if "" in raw.columns else raw.with_row_index("row")
    _check_range(raw, log_csv, "position", 1, OBD_N_POSITIONS)
    _check_range(raw, log_csv, "item_id", 0, n_items - 1)
    _check_range(raw, log_csv, "click", 0, 1)
    bad_p = raw.filter(~pl.col("propensity_score").is_between(0.0, 1.0, closed="right"))
    if bad_p.height:
        raise InvalidInput(
            f"{log_csv}:propensity_score",
            f"{bad_p.height} values outside (0, 1], first at row {bad_p['row'][0]}",
        )

    rows = raw.with_columns(
        event_id=pl.format("{}/{}/{}", pl.lit(policy), pl.lit(campaign), pl.col("row")),
        timestamp=pl.col("timestamp").str.to_datetime(time_zone="UTC"),
        position=pl.col("position").cast(pl.Int64) - 1,
        item_id=pl.col("item_id").cast(pl.Int64),
        click=pl.col("click").cast(pl.Int64),
        propensity_score=pl.col("propensity_score").cast(pl.Float64),
    )
    front = ["event_id", "row", "timestamp", "item_id", "position", "click", "propensity_score"]
    rows = rows.select(front + [c for c in rows.columns if c not in front])
    return ObdLog(policy=policy, campaign=campaign, rows=rows, item_context=item_context, n_items=n_items)


def _check_range(frame: pl.DataFrame, source: Path, column: str, low: int, high: int) -> None:
    bad = frame.filter(~pl.col(column).is_between(low, high) | pl.col(column).is_null())
    if bad.height:
        raise InvalidInput(
            f"{source}:{column}",
            f"{bad.height} values outside {low}..{high}, first {bad[column][0]} at row {bad['row'][0]}",
        )


def obd_feedback_table(
    logged: ObdLog,
    target_action_probs: np.ndarray,
    *,
    reward_model: np.ndarray | None = None,
    sum_tolerance: float = 1e-6,
) -> pl.DataFrame:
    """Build the bandit-feedback table for a target policy on an OBD log.

    ``target_action_probs`` is ``π(item | row, position)``, shape ``[n_rows, n_items, n_positions]`` or,
    for a context-free policy, ``[n_items, n_positions]``; for every (row, position) it must sum to 1 over
    items (within ``sum_tolerance``). Per row r with logged item a_r at position k_r:

    * ``pscore = propensity_score`` (as logged), ``target_pscore = π(a_r | r, k_r)``, ``reward = click``;
    * with ``reward_model`` (q̂, same shapes as the target): ``q_hat = q̂(r, a_r, k_r)`` and
      ``q_hat_target = Σ_i π(i | r, k_r) · q̂(r, i, k_r)``.
    """
    probs = _as_row_item_position(target_action_probs, logged, "target_action_probs")
    if not np.all((probs >= 0.0) & (probs <= 1.0)):
        raise InvalidInput("target_action_probs", "probabilities must lie in [0, 1] (and not be NaN)")
    sums = probs.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=sum_tolerance, rtol=0.0):
        worst = float(np.abs(sums - 1.0).max())
        raise InvalidInput(
            "target_action_probs",
            f"must sum to 1 over items for each (row, position); largest deviation {worst:.3g}",
        )

    rows = logged.rows
    item = rows["item_id"].to_numpy()
    pos = rows["position"].to_numpy()
    # A context-free policy has a single leading row that applies to every logged row.
    row_idx = np.arange(rows.height) if probs.shape[0] > 1 else np.zeros(rows.height, dtype=np.int64)
    columns: dict[str, object] = {
        "event_id": rows["event_id"],
        "position": rows["position"],
        "action": rows["item_id"],
        "reward": rows["click"].cast(pl.Float64),
        "pscore": rows["propensity_score"],
        "target_pscore": pl.Series("target_pscore", probs[row_idx, item, pos], dtype=pl.Float64),
    }
    if reward_model is not None:
        q = _as_row_item_position(reward_model, logged, "reward_model")
        if not np.all(np.isfinite(q)):
            raise InvalidInput("reward_model", "estimates must be finite")
        q_row = row_idx if q.shape[0] > 1 else np.zeros(rows.height, dtype=np.int64)
        columns["q_hat"] = pl.Series("q_hat", q[q_row, item, pos], dtype=pl.Float64)
        # Σ_i π(i|r,k) q̂(r,i,k): both arrays indexed at the row's own position.
        expected = np.einsum("ri,ri->r", probs[row_idx, :, pos], q[q_row, :, pos])
        columns["q_hat_target"] = pl.Series("q_hat_target", expected, dtype=pl.Float64)
    return pl.DataFrame(columns)


def _as_row_item_position(array: np.ndarray, logged: ObdLog, name: str) -> np.ndarray:
    values = np.asarray(array, dtype=np.float64)
    if values.ndim == 2:
        values = values[np.newaxis]
    expected = (logged.n_items, logged.n_positions)
    if values.ndim != 3 or values.shape[1:] != expected or values.shape[0] not in (1, logged.n_rows):
        raise InvalidInput(
            name,
            f"shape {np.shape(array)} does not match [n_rows={logged.n_rows}, n_items={expected[0]}, "
            f"n_positions={expected[1]}] or [n_items, n_positions]",
        )
    return values


def uniform_action_dist(n_items: int, n_positions: int = OBD_N_POSITIONS) -> np.ndarray:
    """The uniform-random policy: every item equally likely in every slot, ``π(i, k) = 1 / n_items``."""
    if n_items < n_positions:
        raise InvalidInput("n_items", f"must be at least n_positions={n_positions}, got {n_items}")
    return np.full((n_items, n_positions), 1.0 / n_items)


def bts_prior(campaign: Campaign = "all") -> tuple[np.ndarray, np.ndarray]:
    """The per-item Beta(α, β) parameters of ZOZOTOWN's production BTS, as published with OBP.

    Source: ``obp/policy/conf/prior_bts.yaml`` in st-tech/zr-obp (Apache-2.0), which OBP loads for
    ``BernoulliTS(is_zozotown_prior=True, campaign=...)``. Index i is OBD ``item_id`` i.
    """
    if campaign not in _BTS_PRIOR:
        raise InvalidInput("campaign", f"must be one of {sorted(_BTS_PRIOR)}, got {campaign!r}")
    alpha, beta = _BTS_PRIOR[campaign]
    return np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)


def bts_action_dist(
    campaign: Campaign = "all",
    *,
    n_positions: int = OBD_N_POSITIONS,
    n_sim: int = 100_000,
    seed: int = 0,
    chunk_size: int = 20_000,
) -> np.ndarray:
    """Monte Carlo estimate of BTS's action distribution ``π(i, k)``, shape ``[n_items, n_positions]``.

    Each simulated round draws ``θ_i ~ Beta(α_i, β_i)`` for all items, ranks items by ``θ`` descending and
    counts the item placed at each of the first ``n_positions`` ranks; ``π(i, k) = count(i, k) / n_sim``.
    The standard error of each entry is ``sqrt(π(1-π) / n_sim)`` (≤ 0.0016 at the default ``n_sim``).
    """
    if n_sim < 1:
        raise InvalidInput("n_sim", f"must be positive, got {n_sim}")
    if chunk_size < 1:
        raise InvalidInput("chunk_size", f"must be positive, got {chunk_size}")
    alpha, beta = bts_prior(campaign)
    n_items = alpha.size
    if not 1 <= n_positions <= n_items:
        raise InvalidInput("n_positions", f"must be in 1..{n_items}, got {n_positions}")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_items, n_positions), dtype=np.int64)
    done = 0
    while done < n_sim:
        size = min(chunk_size, n_sim - done)
        theta = rng.beta(alpha, beta, size=(size, n_items))
        # Top-k by argpartition, then order those k by θ descending to get ranks.
        top = np.argpartition(-theta, n_positions - 1, axis=1)[:, :n_positions]
        order = np.argsort(-np.take_along_axis(theta, top, axis=1), axis=1)
        ranked = np.take_along_axis(top, order, axis=1)
        for k in range(n_positions):
            counts[:, k] += np.bincount(ranked[:, k], minlength=n_items)
        done += size
    return counts / n_sim


def empirical_action_dist(logged: ObdLog, *, pseudo_count: float = 0.0) -> np.ndarray:
    """Per-position item frequencies of a log, shape ``[n_items, n_positions]``.

    ``π̂(i, k) = (n(i, k) + c) / (n(k) + c · n_items)`` with pseudo-count ``c``. Applied to the BTS log
    this is the fallback estimate of BTS's (time-averaged) action distribution when the prior is not
    wanted; it is noisy (≈3,300 rows per slot for 80 items) and ignores BTS's drift over the week.
    """
    if pseudo_count < 0:
        raise InvalidInput("pseudo_count", f"must be non-negative, got {pseudo_count}")
    counts = np.zeros((logged.n_items, logged.n_positions), dtype=np.float64)
    np.add.at(counts, (logged.rows["item_id"].to_numpy(), logged.rows["position"].to_numpy()), 1.0)
    counts += pseudo_count
    totals = counts.sum(axis=0, keepdims=True)
    if np.any(totals == 0):
        raise InvalidInput("logged", "some position has no rows; its distribution is undefined")
    return counts / totals


# (α, β) per item, indexed by item_id; facts from OBP's prior_bts.yaml (see ``bts_prior``).
_BTS_PRIOR: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "all": (
        (
            47, 8, 62, 142, 3, 14, 7, 857, 12, 15, 6, 100, 48, 23, 71, 61, 13, 16, 518, 30, 7, 4, 23, 8, 10, 11,
            11, 18, 121, 11, 11, 10, 14, 9, 204, 58, 3, 19, 42, 1013, 2, 328, 15, 31, 14, 138, 45, 55, 23, 38,
            10, 401, 52, 6, 3, 6, 5, 32, 35, 133, 52, 820, 43, 195, 8, 42, 40, 4, 32, 30, 9, 22, 6, 23, 5, 54,
            8, 22, 65, 246
        ),
        (
            12198, 3566, 15993, 35522, 2367, 4609, 3171, 181745, 4372, 4951, 3100, 24665, 13210, 7061, 18061,
            17449, 5644, 6787, 111326, 8776, 3334, 2271, 7389, 2659, 3665, 4724, 3561, 5085, 27407, 4601, 4756,
            4120, 4736, 3788, 45292, 14719, 2189, 5589, 11995, 222255, 2308, 70034, 4801, 8274, 5421, 31912,
            12213, 13576, 6230, 10382, 4141, 85731, 12811, 2707, 2250, 2668, 2886, 9581, 9465, 28336, 12062,
            162793, 12107, 41240, 3162, 11604, 10818, 2923, 8897, 8654, 4000, 6580, 3174, 6766, 2602, 14506,
            3968, 7523, 16532, 51964
        ),
    ),
    "men": (
        (
            47, 8, 62, 142, 3, 6, 100, 48, 23, 71, 61, 13, 16, 518, 30, 7, 4, 23, 8, 10, 11, 11, 18, 121, 11, 4,
            32, 30, 9, 22, 6, 23, 5, 54
        ),
        (
            12198, 3566, 15993, 35522, 2367, 3100, 24665, 13210, 7061, 18061, 17449, 5644, 6787, 111326, 8776,
            3334, 2271, 7389, 2659, 3665, 4724, 3561, 5085, 27407, 4601, 2923, 8897, 8654, 4000, 6580, 3174,
            6766, 2602, 14506
        ),
    ),
    "women": (
        (
            12, 7, 984, 13, 15, 15, 11, 14, 9, 200, 72, 3, 14, 49, 1278, 3, 325, 14, 27, 14, 169, 48, 47, 18,
            40, 12, 447, 46, 5, 3, 5, 7, 35, 34, 99, 30, 880, 51, 182, 6, 45, 39, 10, 24, 72, 229
        ),
        (
            3612, 3173, 204484, 4517, 4765, 5331, 4131, 4728, 4028, 44280, 17918, 2309, 4339, 12922, 270771,
            2480, 68475, 5129, 7367, 5819, 38026, 13047, 11604, 5394, 10912, 4439, 94485, 10700, 2679, 2319,
            2578, 3288, 9566, 9775, 20120, 7317, 172026, 13673, 37329, 3365, 10911, 10734, 4278, 7574, 16826,
            47462
        ),
    ),
}
