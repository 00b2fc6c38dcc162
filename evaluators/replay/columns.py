"""The replay table's decision columns, filled decision by decision as the log is read.

Replay needs ten of the decision table's columns (``DECISION_COLUMNS``); they are appended to flat lists straight from
each record (a :data:`logging_schema.views.ReplayRecord`), so no protobuf is kept for the table and no per-row dict is
built, and a chunk becomes one DataFrame: per-decision values are stored once and gathered per slot, as
``logging_schema.tables.decisions_frame`` does (same values and types: its ``DECISION_SCHEMA``).

The logged slots are checked as they are read: each slot's ``candidate_index`` must point at a logged candidate with
the slot's item id (the candidates stay unparsed bytes; only that one candidate's item id is parsed).
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np
import polars as pl

from logging_schema.tables import DECISION_SCHEMA, SERVING_MODE_NAMES
from logging_schema.views import CandidateId
from recsys_rl.errors import InvalidInput

DECISION_COLUMNS = ("event_id", "position", "item_id", "propensity", "user_id", "served_at", "policy_version",
                    "serving_mode", "n_candidates", "surface")
_PER_DECISION = ("event_id", "user_id", "served_at", "policy_version", "serving_mode", "n_candidates")
_PER_SLOT = ("position", "item_id", "propensity")
_ITEM_ID = attrgetter("item_id")


class DecisionColumns:
    """One chunk's decision columns (``DECISION_COLUMNS``), plus whether the target fell back, per decision."""

    def __init__(self) -> None:
        self.event_id: list[str] = []
        self.user_id: list[str] = []
        self.served_at: list[int | None] = []
        self.policy_version: list[str] = []
        self.serving_mode: list[str] = []
        self.n_candidates: list[int] = []
        self.fallback: list[bool] = []  # the target model failed on the decision and the baseline stood in
        self.slots: list[int] = []  # slots per decision
        self.position: list[int] = []
        self.item_id: list[str] = []
        self.propensity: list[float] = []
        self._index: list[int] = []  # candidate_index per slot

    @staticmethod
    def _reject(event: object, n_candidates: int, indices: list[int], items: list[str], check_items: bool) -> None:
        raw = event.candidates  # type: ignore[attr-defined]
        for k, (i, item) in enumerate(zip(indices, items)):
            if not 0 <= i < n_candidates or check_items and CandidateId.FromString(raw[i]).item_id != item:
                raise InvalidInput(f"event {event.event_id}: slate[{k}].candidate_index",  # type: ignore[attr-defined]
                                   f"{i} does not point at item {item!r} among {n_candidates} candidates")

    @property
    def decisions(self) -> int:
        return len(self.slots)

    @property
    def rows(self) -> int:
        return len(self.position)

    def add(self, event: object, n_candidates: int, check_items: bool = True) -> list[int]:
        """Append a decision (a DecisionEvent or its view, with a non-empty slate) and return its logged slots'
        candidate indices; InvalidInput when one does not point at the slot's item among the ``n_candidates``.
        ``check_items=False``: the event's candidates are not at hand (a what-if companion's decision, written by
        the writer from the same decision as its segment record): only the indices' range is checked."""
        start = len(self.position)
        position, item_id, propensity, index = self.position, self.item_id, self.propensity, self._index
        for slot in event.slate:  # type: ignore[attr-defined]
            position.append(slot.position)
            item_id.append(slot.item_id)
            propensity.append(slot.propensity)
            index.append(slot.candidate_index)
        indices, items = index[start:], item_id[start:]
        # The candidates stay bytes: only the logged ones are parsed, for their item ids (map: no Python frame each).
        raw = event.candidates  # type: ignore[attr-defined]
        if (min(indices) < 0 or max(indices) >= n_candidates or check_items
                and list(map(_ITEM_ID, map(CandidateId.FromString, map(raw.__getitem__, indices)))) != items):
            self._reject(event, n_candidates, indices, items, check_items)
        self.slots.append(len(indices))
        self.event_id.append(event.event_id)  # type: ignore[attr-defined]
        self.user_id.append(event.user_id)  # type: ignore[attr-defined]
        if event.HasField("served_at"):  # type: ignore[attr-defined]
            at = event.served_at  # type: ignore[attr-defined]
            self.served_at.append(at.seconds * 1_000_000 + at.nanos // 1_000)
        else:
            self.served_at.append(None)
        self.policy_version.append(event.policy_version)  # type: ignore[attr-defined]
        mode = event.serving_mode  # type: ignore[attr-defined]
        self.serving_mode.append(SERVING_MODE_NAMES.get(mode, f"unknown_{mode}"))
        self.n_candidates.append(n_candidates)
        self.fallback.append(False)
        return indices

    def frame(self, surface: str, target_pscore: np.ndarray) -> pl.DataFrame:
        """The chunk as ``DECISION_COLUMNS`` + target_pscore (one value per row) + target_fallback."""
        per_decision = pl.DataFrame({name: getattr(self, name) for name in _PER_DECISION} | {"fallback": self.fallback},
                                    schema={name: DECISION_SCHEMA[name] for name in _PER_DECISION}
                                    | {"fallback": pl.Boolean()})
        owners = pl.Series(np.repeat(np.arange(self.decisions, dtype=np.uint32), self.slots))
        gathered = per_decision.select(pl.all().gather(owners))
        per_slot = pl.DataFrame({name: getattr(self, name) for name in _PER_SLOT},
                                schema={name: DECISION_SCHEMA[name] for name in _PER_SLOT})
        return pl.concat([gathered, per_slot], how="horizontal").select(
            *DECISION_COLUMNS[:-1], pl.lit(surface, dtype=pl.String).alias("surface"),
            pl.Series("target_pscore", target_pscore, dtype=pl.Float64), pl.col("fallback").alias("target_fallback"),
        )


__all__ = ["DECISION_COLUMNS", "DecisionColumns"]
