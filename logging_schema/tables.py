"""Logs as polars tables: decisions one row per slate position, outcomes, and the reward join.

``decisions_frame`` columns (one row per (decision, slate position); a decision with an empty slate has
no row):

    event_id, request_id, surface, user_id: str   served_at: datetime[us, UTC]   position: i32
    item_id: str   candidate_index: i32   propensity: f64 (P(item at position | earlier positions))
    slate_propensity: f64   score: f64   explored: bool   exploration_mass: f64   policy_version: str
    serving_mode: str ("learned", "baseline_fallback", "shadow", "canary", "baseline", "unspecified")
    exploration_cap: f64   algorithm: str   n_candidates: i32   slate_size: i32
    rollout_stage: str ("live", "shadow", "canary", "baseline"; "" in logs from before staged rollout) - with
    serving_mode it tells a canary's control users (canary, baseline) from a surface at stage baseline

``outcomes_frame`` columns: event_id, item_id ("" = whole slate), outcome, value: f64,
occurred_at, received_at: datetime[us, UTC], surface, attributed: bool, outcome_id: str ("" = none). An
outcome logged without ``occurred_at`` takes ``received_at`` (what the server does for an unset time).

``join_rewards`` applies the reward rule of ``logging_schema.rewards`` (one definition, also used online by
the learner; read it there) and adds, per row of the decisions table (surface s, decision served at t, item a):

    reward          = clip(Σ_o weight_s[o] · agg_s[o](values of o), range_s) over the outcomes of
                      (event_id, a) whose name o is known to s, with t ≤ occurred_at ≤ t + window_s
                      (integer microseconds, inclusive), after dropping repeats of an (event_id, outcome_id);
                      agg is "max" (default: a click reported three times counts once) or "sum"
    n_outcomes      = the number of such outcomes (repeats without an id included, each counted)
    clicked         = any in-window outcome for (event_id, a) named "click" with value > 0
                      (whether or not the surface's reward weighs clicks)
    slate_reward    = the same rule over the decision's whole-slate outcomes (empty item_id); repeated on
                      every row of the decision and NOT added to ``reward`` - summing ``reward`` over
                      rows then never counts a slate-level outcome once per position
    n_slate_outcomes = the number of those
    reward_min, reward_max = the surface's reward range (every reward and slate_reward lies in it); they
                      travel with ``logs export`` and the replay table so the evaluators can check and use it

Outcomes whose name the surface's definition does not list, outcomes of unknown decisions (orphans),
outcomes outside the window and repeats of an outcome_id do not count; ``JoinStats`` says how many there were.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from google.protobuf.message import Message

from logging_schema.views import TableRecord
from logging_schema.reader import ReadStats, gap_of, iter_records
from logging_schema.rewards import RewardDefinition
from recsys_rl.logging.v1.events_pb2 import DecisionEvent, LogGap, OutcomeEvent
from recsys_rl.ranking.v1.ranking_service_pb2 import ServingMode

log = logging.getLogger(__name__)

UTC_US = pl.Datetime("us", "UTC")
DECISION_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(), "request_id": pl.String(), "surface": pl.String(), "user_id": pl.String(),
    "served_at": UTC_US, "position": pl.Int32(), "item_id": pl.String(), "candidate_index": pl.Int32(),
    "propensity": pl.Float64(), "slate_propensity": pl.Float64(), "score": pl.Float64(),
    "explored": pl.Boolean(), "exploration_mass": pl.Float64(), "policy_version": pl.String(),
    "serving_mode": pl.String(), "exploration_cap": pl.Float64(), "algorithm": pl.String(),
    "n_candidates": pl.Int32(), "slate_size": pl.Int32(), "rollout_stage": pl.String(),
}  # fmt: skip
OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(), "item_id": pl.String(), "outcome": pl.String(), "value": pl.Float64(),
    "occurred_at": UTC_US, "received_at": UTC_US, "surface": pl.String(), "attributed": pl.Boolean(),
    "outcome_id": pl.String(),
}  # fmt: skip
_PER_DECISION = ("event_id", "request_id", "surface", "user_id", "served_at", "slate_propensity",
                 "policy_version", "serving_mode", "exploration_cap", "algorithm", "n_candidates", "slate_size",
                 "rollout_stage")  # fmt: skip
_PER_SLOT = ("position", "item_id", "candidate_index", "propensity", "score", "explored", "exploration_mass")
# SERVING_MODE_BASELINE_FALLBACK -> "baseline_fallback"
SERVING_MODE_NAMES: dict[int, str] = {
    v.number: v.name.removeprefix("SERVING_MODE_").lower() for v in ServingMode.DESCRIPTOR.values
}
# Convert to a DataFrame chunk every this many decisions while reading, so protobufs and Python lists are
# dropped as we go instead of piling up for a whole large log.
_CHUNK_DECISIONS = 100_000


def _micros(ts: object) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1_000  # type: ignore[attr-defined]


class _DecisionColumns:
    """Column lists for decisions; per-decision values are stored once and gathered per slot at the end."""

    def __init__(self) -> None:
        self.decision = {name: [] for name in _PER_DECISION}
        self.slot = {name: [] for name in _PER_SLOT}
        self.slot_owner: list[int] = []
        self.count = 0

    def add(self, event: DecisionEvent | Message) -> None:
        # ``event`` is a DecisionEvent or its table view (same field names, see ``views``).
        d = self.decision
        d["event_id"].append(event.event_id)
        d["request_id"].append(event.request_id)
        d["surface"].append(event.surface)
        d["user_id"].append(event.user_id)
        d["served_at"].append(_micros(event.served_at) if event.HasField("served_at") else None)
        d["slate_propensity"].append(event.slate_propensity)
        d["policy_version"].append(event.policy_version)
        mode = event.serving_mode
        d["serving_mode"].append(SERVING_MODE_NAMES.get(mode, f"unknown_{mode}"))
        exploration = event.exploration
        d["exploration_cap"].append(exploration.cap)
        d["algorithm"].append(exploration.algorithm)
        d["n_candidates"].append(len(event.candidates))
        d["slate_size"].append(event.slate_size)
        d["rollout_stage"].append(event.rollout_stage)
        s = self.slot
        slate = event.slate
        s["position"].extend([x.position for x in slate])
        s["item_id"].extend([x.item_id for x in slate])
        s["candidate_index"].extend([x.candidate_index for x in slate])
        s["propensity"].extend([x.propensity for x in slate])
        s["score"].extend([x.score for x in slate])
        s["explored"].extend([x.explored for x in slate])
        s["exploration_mass"].extend([x.exploration_mass for x in slate])
        self.slot_owner.extend([self.count] * len(slate))
        self.count += 1

    def to_frame(self) -> pl.DataFrame:
        per_decision = pl.DataFrame(self.decision, schema={k: DECISION_SCHEMA[k] for k in _PER_DECISION})
        per_slot = pl.DataFrame(self.slot, schema={k: DECISION_SCHEMA[k] for k in _PER_SLOT})
        owners = pl.Series("owner", self.slot_owner, dtype=pl.UInt32)
        gathered = per_decision.select(pl.all().gather(owners))
        return pl.concat([gathered, per_slot], how="horizontal").select(list(DECISION_SCHEMA))


class _OutcomeColumns:
    def __init__(self) -> None:
        self.columns = {name: [] for name in OUTCOME_SCHEMA}
        self.count = 0

    def add(self, event: OutcomeEvent | Message) -> None:
        c = self.columns
        received = _micros(event.received_at) if event.HasField("received_at") else None
        c["event_id"].append(event.event_id)
        c["item_id"].append(event.item_id)
        c["outcome"].append(event.outcome)
        c["value"].append(event.value)
        c["occurred_at"].append(_micros(event.occurred_at) if event.HasField("occurred_at") else received)
        c["received_at"].append(received)
        c["surface"].append(event.surface)
        c["attributed"].append(event.attributed)
        c["outcome_id"].append(event.outcome_id)
        self.count += 1

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.columns, schema=OUTCOME_SCHEMA)


def decisions_frame(decisions: Iterable[DecisionEvent]) -> pl.DataFrame:
    """One row per (decision, slate position); columns in the module docstring."""
    columns = _DecisionColumns()
    for event in decisions:
        columns.add(event)
    return columns.to_frame()


def outcomes_frame(outcomes: Iterable[OutcomeEvent]) -> pl.DataFrame:
    """One row per outcome; columns in the module docstring."""
    columns = _OutcomeColumns()
    for event in outcomes:
        columns.add(event)
    return columns.to_frame()


@dataclass
class LogTables:
    decisions: pl.DataFrame
    outcomes: pl.DataFrame
    stats: ReadStats
    gaps: list[LogGap] = field(default_factory=list)  # decisions served unlogged (the log could not take them)


def read_tables(log_dir: Path) -> LogTables:
    """Decisions and outcomes tables of the log at ``log_dir`` (a directory or one segment file).

    Records are streamed: each is turned into column values and dropped before the next is parsed, and
    the column lists become a DataFrame chunk every ~100k decisions, so a large log is never held as
    protobufs, nor all as Python lists. Records are parsed through a wire-compatible view that leaves
    the candidates' features unparsed (``views``): about 5x cheaper for 100-candidate decisions.
    """
    stats = ReadStats()
    decision_chunks: list[pl.DataFrame] = []
    outcome_chunks: list[pl.DataFrame] = []
    gaps: list[LogGap] = []
    decisions, outcomes = _DecisionColumns(), _OutcomeColumns()
    for record in iter_records(log_dir, stats=stats, record_type=TableRecord):
        kind = record.WhichOneof("event")
        if kind == "decision":
            decisions.add(record.decision)
            if decisions.count >= _CHUNK_DECISIONS:
                decision_chunks.append(decisions.to_frame())
                decisions = _DecisionColumns()
        elif kind == "gap":
            gaps.append(gap_of(record))
        else:
            outcomes.add(record.outcome)
            if outcomes.count >= _CHUNK_DECISIONS:
                outcome_chunks.append(outcomes.to_frame())
                outcomes = _OutcomeColumns()
    decision_chunks.append(decisions.to_frame())
    outcome_chunks.append(outcomes.to_frame())
    return LogTables(pl.concat(decision_chunks, rechunk=True), pl.concat(outcome_chunks, rechunk=True), stats, gaps)


def load_tables(data_dir: Path) -> LogTables:
    """``read_tables(data_dir / "logs")``, with an error naming the path when there are no logs."""
    log_dir = Path(data_dir) / "logs"
    if not log_dir.is_dir():
        raise FileNotFoundError(f"data_dir: {log_dir} does not exist (has the server written any log?)")
    return read_tables(log_dir)


@dataclass
class JoinStats:
    """What ``join_rewards`` did with the outcomes it was given."""

    outcomes: int = 0
    duplicate_outcomes: int = 0  # repeats of an (event_id, outcome_id) already seen earlier in the log
    orphan_outcomes: int = 0  # event_id matches no decision
    unknown_outcomes: int = 0  # name not in the decision surface's reward definition (any time)
    out_of_window_outcomes: int = 0  # matched a decision but occurred outside its window
    counted_outcomes: int = 0  # item-level outcomes counted in ``reward``
    slate_outcomes: int = 0  # whole-slate outcomes counted in ``slate_reward``
    clipped_rewards: int = 0  # per-item and per-slate sums clipped to the reward range


def _require(frame: pl.DataFrame, columns: Iterable[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(repr(c) for c in missing)}")


def _definitions(
    rewards: Mapping[str, RewardDefinition] | RewardDefinition, surfaces: list[str]
) -> dict[str, RewardDefinition]:
    if isinstance(rewards, RewardDefinition):
        return dict.fromkeys(surfaces, rewards)
    missing = sorted(s for s in surfaces if s not in rewards)
    if missing:
        raise ValueError(f"rewards: no reward definition for surface(s) {', '.join(repr(s) for s in missing)}")
    return {s: rewards[s] for s in surfaces}


def _rule_frames(definitions: dict[str, RewardDefinition]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per surface: window and range; per (surface, outcome): weight and aggregation."""
    surfaces = sorted(definitions)
    per_surface = pl.DataFrame(
        {"surface": surfaces, "window_us": [definitions[s].window_us for s in surfaces],
         "reward_min": [definitions[s].low for s in surfaces], "reward_max": [definitions[s].high for s in surfaces]},
        schema={"surface": pl.String, "window_us": pl.Int64, "reward_min": pl.Float64, "reward_max": pl.Float64},
    )
    rows = [(s, name, w, definitions[s].aggregation_of(name)) for s in surfaces for name, w in definitions[s].weights.items()]
    per_outcome = pl.DataFrame(
        rows, schema={"surface": pl.String, "outcome": pl.String, "weight": pl.Float64, "aggregation": pl.String},
        orient="row",
    )
    return per_surface, per_outcome


def _clipped(total: str) -> pl.Expr:
    return pl.col(total).clip(pl.col("reward_min"), pl.col("reward_max"))


def join_rewards(
    decisions_df: pl.DataFrame,
    outcomes_df: pl.DataFrame,
    rewards: Mapping[str, RewardDefinition] | RewardDefinition,
    *,
    stats: JoinStats | None = None,
) -> pl.DataFrame:
    """``decisions_df`` with reward, n_outcomes, clicked, slate_reward, n_slate_outcomes, reward_min, reward_max
    (module docstring; the rule is ``logging_schema.rewards``, restated here as polars expressions).

    ``rewards`` maps surface -> definition, or is one definition for every surface; a surface of
    ``decisions_df`` without a definition is an error. Row order of ``decisions_df`` is kept, and the row order
    of ``outcomes_df`` is taken as log order (the first of a duplicated outcome_id wins). ``outcome_id`` is
    optional (absent = no ids). Pass a ``JoinStats`` to get the counts of duplicate, orphan, unknown and
    out-of-window outcomes (also logged at INFO).
    """
    _require(decisions_df, ("event_id", "item_id", "surface", "served_at"), "decisions_df")
    _require(outcomes_df, ("event_id", "item_id", "outcome", "value", "occurred_at"), "outcomes_df")
    surfaces = decisions_df.get_column("surface").unique().sort().to_list()
    per_surface, per_outcome = _rule_frames(_definitions(rewards, surfaces))

    keys = decisions_df.select("event_id", "surface", "served_at").unique(subset="event_id", keep="first")
    outcome_id = pl.col("outcome_id") if "outcome_id" in outcomes_df.columns else pl.lit("", dtype=pl.String)
    logged = outcomes_df.select(
        "event_id", "item_id", "outcome", pl.col("value").cast(pl.Float64), pl.col("occurred_at").cast(UTC_US),
        outcome_id.fill_null("").alias("outcome_id"),
    ).with_row_index("log_order")
    # Rule 1: of the outcomes sharing (event_id, outcome_id) with an id, only the first in log order counts.
    keyed = logged.select((pl.col("outcome_id") != "").any()).item()
    outcomes = logged.filter(
        (pl.col("outcome_id") == "") | (pl.col("log_order") == pl.col("log_order").min().over("event_id", "outcome_id"))
    ) if keyed else logged  # a log without ids (or from before them) skips the window pass
    matched = (
        outcomes.join(keys, on="event_id", how="inner")
        .join(per_surface, on="surface", how="inner")
        .join(per_outcome, on=["surface", "outcome"], how="left")
        .with_columns(
            # Rule 2 (RewardDefinition.in_window): integer microseconds, inclusive at both ends.
            in_window=(pl.col("occurred_at") >= pl.col("served_at"))
            & (pl.col("occurred_at") <= pl.col("served_at") + pl.duration(microseconds=pl.col("window_us"))),
            known=pl.col("weight").is_not_null(),
        )
    )
    in_window = matched.filter(pl.col("in_window"))
    # Rule 3: aggregate each (item, outcome name) by its rule, then weigh; rule 4: sum and clip to the range.
    per_name = (
        in_window.filter(pl.col("known"))
        .group_by("event_id", "item_id", "outcome")
        .agg(
            pl.col("weight", "aggregation", "reward_min", "reward_max").first(),
            value_sum=pl.col("value").sum(), value_max=pl.col("value").max(), n=pl.len(),
        )
        .with_columns(
            contribution=pl.col("weight")
            * pl.when(pl.col("aggregation") == "sum").then(pl.col("value_sum")).otherwise(pl.col("value_max"))
        )
    )

    def totals(frame: pl.DataFrame, by: list[str], reward: str, n: str) -> pl.DataFrame:
        return (
            frame.group_by(*by)
            .agg(pl.col("contribution").sum().alias("raw"), pl.col("reward_min", "reward_max").first(),
                 pl.col("n").sum().cast(pl.Int32).alias(n))
            .with_columns(_clipped("raw").alias(reward))
        )

    per_item = totals(per_name.filter(pl.col("item_id") != ""), ["event_id", "item_id"], "reward", "n_outcomes")
    per_slate = totals(per_name.filter(pl.col("item_id") == ""), ["event_id"], "slate_reward", "n_slate_outcomes")
    clicked = (
        in_window.filter(pl.col("item_id") != "")
        .group_by("event_id", "item_id")
        .agg(clicked=((pl.col("outcome") == "click") & (pl.col("value") > 0)).any())
    )
    joined = (
        decisions_df.join(per_item.select("event_id", "item_id", "reward", "n_outcomes"), on=["event_id", "item_id"],
                          how="left", maintain_order="left")
        .join(clicked, on=["event_id", "item_id"], how="left", maintain_order="left")
        .join(per_slate.select("event_id", "slate_reward", "n_slate_outcomes"), on="event_id", how="left",
              maintain_order="left")
        .join(per_surface.select("surface", "reward_min", "reward_max"), on="surface", how="left",
              maintain_order="left")
        .with_columns(
            pl.col("reward", "slate_reward").fill_null(0.0),
            pl.col("n_outcomes", "n_slate_outcomes").fill_null(0),
            pl.col("clicked").fill_null(False),
        )
    )

    counts = matched.select(
        matched=pl.len(),
        unknown=(~pl.col("known")).sum(),
        out_of_window=(pl.col("known") & ~pl.col("in_window")).sum(),
        counted=(pl.col("known") & pl.col("in_window") & (pl.col("item_id") != "")).sum(),
        slate=(pl.col("known") & pl.col("in_window") & (pl.col("item_id") == "")).sum(),
    ).row(0, named=True)
    result = stats if stats is not None else JoinStats()
    result.outcomes = logged.height
    result.duplicate_outcomes = logged.height - outcomes.height
    result.orphan_outcomes = outcomes.height - counts["matched"]
    result.unknown_outcomes = counts["unknown"]
    result.out_of_window_outcomes = counts["out_of_window"]
    result.counted_outcomes = counts["counted"]
    result.slate_outcomes = counts["slate"]
    result.clipped_rewards = sum(
        frame.filter(pl.col("raw") != pl.col(name)).height for frame, name in ((per_item, "reward"),
                                                                             (per_slate, "slate_reward"))
    )
    if result.unknown_outcomes or result.orphan_outcomes or result.duplicate_outcomes:
        # info, not warning: a library call prints nothing by default; callers read ``stats``.
        log.info(
            "join_rewards: ignored %d outcomes with names unknown to their surface's reward definition, "
            "%d outcomes of unknown decisions and %d repeats of an outcome_id",
            result.unknown_outcomes,
            result.orphan_outcomes,
            result.duplicate_outcomes,
        )
    return joined


@dataclass
class ExportStats:
    out: Path
    rows: int
    decisions: int
    outcomes: int
    read: ReadStats = field(default_factory=ReadStats)
    join: JoinStats = field(default_factory=JoinStats)
    gaps: list[LogGap] = field(default_factory=list)  # unlogged decisions: not in the export (``describe_gaps``)


def export_parquet(
    data_dir: Path, out: Path, rewards: Mapping[str, RewardDefinition] | RewardDefinition
) -> ExportStats:
    """Write ``data_dir/logs`` as parquet: one row per slate position with its reward (``join_rewards``).

    The file is written beside ``out`` and renamed into place, so a reader never sees half a file.
    Prints nothing; the caller reports the returned ExportStats.
    """
    tables = load_tables(data_dir)
    join_stats = JoinStats()
    joined = join_rewards(tables.decisions, tables.outcomes, rewards, stats=join_stats)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    joined.write_parquet(partial)
    os.replace(partial, out)
    return ExportStats(
        out=out,
        rows=joined.height,
        decisions=tables.decisions.get_column("event_id").n_unique(),
        outcomes=tables.outcomes.height,
        read=tables.stats,
        join=join_stats,
        gaps=tables.gaps,
    )


def describe_gaps(gaps: Iterable[LogGap]) -> str:
    """One line naming the decisions a log is missing and when, e.g. for ``recsys-rl logs export``; "" if none."""
    gaps = list(gaps)
    if not gaps:
        return ""
    ranges = []
    for gap in gaps:
        if gap.HasField("first_unlogged_at"):
            first, last = (ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
                           for ts in (gap.first_unlogged_at, gap.last_unlogged_at))
            ranges.append(f"{first}..{last}")
    decisions = sum(gap.decisions_unlogged for gap in gaps)
    refused = sum(gap.outcomes_refused for gap in gaps)
    shown = ", ".join(ranges[:5]) + (f", … ({len(ranges) - 5} more)" if len(ranges) > 5 else "")
    return (f"log gaps: {decisions:,} decisions served unlogged (baseline, log unavailable) in {len(gaps)} gap(s)"
            f"{': ' + shown if shown else ''}; {refused:,} outcomes refused then")
