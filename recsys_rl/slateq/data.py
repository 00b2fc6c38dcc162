"""Training arrays for SlateQ from a log directory, in one streaming pass over the segments.

Per decision we keep only what training needs - the context vector, the slate as indices into an item
table, a few sampled non-served candidates (for the conservative penalty), the clicked position - and drop
each protobuf as soon as it is read, so a large log is never held as messages. Rewards, sessions, n-step returns
and bootstrap links come from ``logging_schema.retention`` on the same logs; the user's click history (the
GRU's input) is rebuilt from the logged clicks in time order.

The item table is keyed by ``item_id``: an item's features are taken from the first decision that showed
it (the simulator and most catalogs keep item features fixed; serving keys by id *and* features).
Row 0 of the item table is the padding item (zeros), so index 0 means "no item".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from logging_schema.reader import ReadStats, iter_records
from logging_schema.retention import RetentionConfig, RetentionStats, retention_table, slot_clicks
from recsys_rl.errors import InvalidInput
from recsys_rl.slateq.model import Featurizer

__all__ = ["SlateQDataset", "load_dataset"]


@dataclass
class SlateQDataset:
    """Row-aligned arrays, one row per decision, sorted by (user, time). Shapes with N decisions:

    context [N, hash_dim] f32; slate [N, S] i64 item indices (0 = empty slot); clicked [N] i64 (slate column
    of the click, -1 = no click); candidates [N, C] i64 sampled candidate items; history [N, K] i64 last K
    clicked items before the decision (left-padded with 0); n_step_return [N] f32; bootstrap_row [N] i64
    (-1 = none); bootstrap_discount [N] f32. item_x [I, item_dim] f32 and item_ids [I] i64 (id buckets).
    """

    event_ids: list[str]
    context: np.ndarray
    slate: np.ndarray
    clicked: np.ndarray
    candidates: np.ndarray
    history: np.ndarray
    n_step_return: np.ndarray
    bootstrap_row: np.ndarray
    bootstrap_discount: np.ndarray
    item_x: np.ndarray
    item_ids: np.ndarray
    item_shown: np.ndarray  # [I] times each item was served (for diagnostics of the conservative penalty)
    data_range: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.event_ids)


class _Extractor:
    def __init__(self, featurizer: Featurizer, *, max_slate: int, cql_candidates: int, seed: int) -> None:
        self.featurizer = featurizer
        self.max_slate, self.cql_candidates = max_slate, cql_candidates
        self.rng = np.random.default_rng(seed)
        spec = featurizer.spec
        self.item_index: dict[str, int] = {"": 0}
        self.item_rows: list[np.ndarray] = [np.zeros(spec.item_dim, np.float32)]
        self.item_buckets: list[int] = [0]
        self.event_ids: list[str] = []
        self.user_ids: list[str] = []
        self.served_us: list[int] = []
        self.contexts: list[np.ndarray] = []
        self.slates: list[list[int]] = []
        self.slot_items: tuple[list[str], list[int], list[str]] = ([], [], [])  # event_id, position, item_id
        self.cands: list[np.ndarray] = []
        self.outcomes: dict[str, list] = {"event_id": [], "item_id": [], "outcome": [], "value": [], "occurred_at": []}

    def _item(self, candidate: object) -> int:
        item_id = candidate.item_id  # type: ignore[attr-defined]
        index = self.item_index.get(item_id)
        if index is None:
            index = len(self.item_rows)
            vec, bucket = self.featurizer.candidate_uncached(candidate)  # type: ignore[arg-type]
            self.item_index[item_id] = index
            self.item_rows.append(vec)
            self.item_buckets.append(bucket)
        return index

    def add_decision(self, event: object) -> None:
        candidates = event.candidates  # type: ignore[attr-defined]
        slate = [0] * self.max_slate
        for slot in event.slate:  # type: ignore[attr-defined]
            if slot.position >= self.max_slate:
                continue
            index = slot.candidate_index
            if not 0 <= index < len(candidates) or candidates[index].item_id != slot.item_id:
                raise InvalidInput(f"decision {event.event_id}.slate[{slot.position}].candidate_index",  # type: ignore[attr-defined]
                                   f"{index} does not point at item {slot.item_id!r}")
            slate[slot.position] = self._item(candidates[index])
            self.slot_items[0].append(event.event_id)  # type: ignore[attr-defined]
            self.slot_items[1].append(slot.position)
            self.slot_items[2].append(slot.item_id)
        n = len(candidates)
        picks = self.rng.integers(0, n, self.cql_candidates) if n else np.zeros(self.cql_candidates, np.int64)
        self.cands.append(np.array([self._item(candidates[int(j)]) for j in picks] if n else picks, np.int64))
        self.slates.append(slate)
        self.event_ids.append(event.event_id)  # type: ignore[attr-defined]
        self.user_ids.append(event.user_id)  # type: ignore[attr-defined]
        ts = event.served_at  # type: ignore[attr-defined]
        self.served_us.append(ts.seconds * 1_000_000 + ts.nanos // 1_000)
        self.contexts.append(self.featurizer.features(event.context))  # type: ignore[attr-defined]

    def add_outcome(self, event: object) -> None:
        o = self.outcomes
        ts = event.occurred_at if event.HasField("occurred_at") else event.received_at  # type: ignore[attr-defined]
        o["event_id"].append(event.event_id)  # type: ignore[attr-defined]
        o["item_id"].append(event.item_id)  # type: ignore[attr-defined]
        o["outcome"].append(event.outcome)  # type: ignore[attr-defined]
        o["value"].append(event.value)  # type: ignore[attr-defined]
        o["occurred_at"].append(ts.seconds * 1_000_000 + ts.nanos // 1_000)


def load_dataset(
    log_dir: Path,
    featurizer: Featurizer,
    retention: RetentionConfig,
    *,
    history: int = 10,
    max_slate: int = 10,
    cql_candidates: int = 16,
    seed: int = 0,
    retention_stats: RetentionStats | None = None,
) -> SlateQDataset:
    """Reads ``log_dir`` (a directory of segments) into a ``SlateQDataset``; raises InvalidInput if empty."""
    log_dir = Path(log_dir)
    if not log_dir.exists():
        raise InvalidInput("data_dir", f"no log directory at {log_dir}")
    extractor = _Extractor(featurizer, max_slate=max_slate, cql_candidates=cql_candidates, seed=seed)
    read_stats = ReadStats()
    for record in iter_records(log_dir, stats=read_stats):  # streams: one parsed record at a time
        kind = record.WhichOneof("event")
        if kind == "decision":
            extractor.add_decision(record.decision)
        elif kind == "outcome":  # gap records (unlogged decisions) carry nothing to learn from
            extractor.add_outcome(record.outcome)
    if not extractor.event_ids:
        raise InvalidInput("data_dir", f"no decisions in the logs under {log_dir}")

    ex = extractor
    decisions = pl.DataFrame({"event_id": ex.event_ids, "user_id": ex.user_ids, "served_at": ex.served_us,
                              "row": np.arange(len(ex.event_ids), dtype=np.int64)},
                             schema={"event_id": pl.String, "user_id": pl.String, "served_at": pl.Int64, "row": pl.Int64})
    outcomes = pl.DataFrame(ex.outcomes, schema={"event_id": pl.String, "item_id": pl.String, "outcome": pl.String,
                                                 "value": pl.Float64, "occurred_at": pl.Int64})
    table = retention_table(decisions, outcomes, retention, stats=retention_stats)
    table = table.join(decisions.select("event_id", "row"), on="event_id", how="left", maintain_order="left")
    order = table.get_column("row").to_numpy()  # extraction row of each output row (user, time order)
    position_of = {event_id: i for i, event_id in enumerate(table.get_column("event_id").to_list())}

    slots = pl.DataFrame({"event_id": ex.slot_items[0], "position": ex.slot_items[1], "item_id": ex.slot_items[2]},
                         schema={"event_id": pl.String, "position": pl.Int32, "item_id": pl.String})
    first_click = (
        slot_clicks(slots, outcomes).filter(pl.col("clicked")).group_by("event_id").agg(pl.col("position").min())
    )
    clicked_by_row = np.full(len(order), -1, np.int64)
    rows = np.array([position_of[e] for e in first_click.get_column("event_id").to_list()], np.int64)
    clicked_by_row[rows] = first_click.get_column("position").to_numpy()

    slate = np.asarray(ex.slates, np.int64)[order]
    clicked_item = np.where(clicked_by_row >= 0, slate[np.arange(len(order)), np.maximum(clicked_by_row, 0)], 0)
    users = table.get_column("user_id").to_numpy()
    hist = _click_history(users, clicked_item, history)

    bootstrap = table.get_column("bootstrap_event_id").to_list()
    bootstrap_row = np.fromiter((position_of[b] if b is not None else -1 for b in bootstrap), np.int64, len(bootstrap))
    served = table.get_column("served_at_us")
    data_range = {
        "log_dir": str(log_dir), "decisions": len(order), "outcomes": outcomes.height,
        "users": int(table.get_column("user_id").n_unique()), "sessions": int(table.get_column("session_id").n_unique()),
        "served_from_us": int(served.min()), "served_to_us": int(served.max()),  # type: ignore[arg-type]
        "segments": read_stats.segments, "torn_tail_records": read_stats.torn_tail_records,
        "corrupt_records": read_stats.corrupt_records,
    }  # fmt: skip
    item_x = np.stack(ex.item_rows)
    return SlateQDataset(
        event_ids=table.get_column("event_id").to_list(),
        context=np.stack(ex.contexts)[order],
        slate=slate,
        clicked=clicked_by_row,
        candidates=np.stack(ex.cands)[order],
        history=hist,
        n_step_return=table.get_column("n_step_return").to_numpy().astype(np.float32),
        bootstrap_row=bootstrap_row,
        bootstrap_discount=table.get_column("bootstrap_discount").to_numpy().astype(np.float32),
        item_x=item_x,
        item_ids=np.asarray(ex.item_buckets, np.int64),
        item_shown=np.bincount(slate.ravel(), minlength=len(item_x)),
        data_range=data_range,
    )


def _click_history(users: np.ndarray, clicked_item: np.ndarray, k: int) -> np.ndarray:
    """[N, k] the user's last k clicked items strictly before each row (rows sorted by user, time); 0 pads left.

    With c = the exclusive running count of clicks over all rows and c_u the count at the user's first row,
    row d's history is clicks[c_d - k .. c_d - 1], keeping entries at index >= c_u (the same user's clicks).
    """
    n = len(users)
    is_click = clicked_item > 0
    clicks = clicked_item[is_click]
    before = np.concatenate([[0], np.cumsum(is_click)[:-1]]) if n else np.zeros(0, np.int64)
    new_user = np.ones(n, bool)
    new_user[1:] = users[1:] != users[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    first = before[user_start]
    index = before[:, None] - k + np.arange(k)[None, :]
    valid = index >= first[:, None]
    padded = np.concatenate([[0], clicks])  # shift by one so invalid entries read the padding item
    return np.where(valid, padded[np.clip(index + 1, 0, len(padded) - 1)], 0).astype(np.int64)
