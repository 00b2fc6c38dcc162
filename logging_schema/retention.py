"""Retention rewards from logs: sessions, immediate rewards, n-step discounted returns, return-visit credit.

Everything is reconstructed from the logged events (``DecisionEvent`` / ``OutcomeEvent`` as polars frames, see
``tables.decisions_frame`` / ``outcomes_frame``), never from a simulator's memory. One output row per decision.

**Sessions.** A user's decisions are ordered by ``served_at`` (ties by ``event_id``). Decision t starts a new
session when it is the user's first, when the gap to the user's previous decision exceeds
``session_gap_seconds`` (the inactivity fallback), or when the previous decision carries a ``session_end``
outcome (any value, any item) - or a ``return_visit`` outcome when ``return_visit_on="last_decision"`` (below).
``session_id`` is ``"<user_id>#<k>"`` with k the 0-based session number of the user; ``step`` is the 0-based
index of the decision inside its session.

**Immediate reward.** r_t = Σ weights[o.outcome] · o.value over all outcomes o logged for decision t, item-level
or whole-slate (e.g. ``click`` weight 1, ``dwell_seconds`` weight 0.01 per second). No attribution window is
applied here: dwell and session outcomes legitimately arrive after the bandit's click window. ``session_end`` and
``return_visit`` are structural (they delimit sessions / carry the return credit) and must not appear in
``weights``.

**Return-visit credit.** The last decision of a session s gets the terminal reward
``return_visit_weight · R_s`` added to its immediate reward, so discounting carries it back to every decision
of s (decision at step t of a T-step session receives γ^(T-1-t) · R_s in its Monte-Carlo return; the column
``return_credit`` shows exactly that share). R_s is:

* explicit: the sum of the values of the ``return_visit`` outcomes credited to s (value 1 = came back, 0 = did
  not; a 0 is an explicit "no" and blocks the implicit rule). Which session an outcome credits depends on the
  host's convention, ``return_visit_on``:
  - ``"last_decision"`` (default; what ``recsys_rl.sim.host`` does): the outcome is reported on the last
    decision of the session it is about, once the next day shows whether the user came back. That decision
    ends its session and the credit goes to that session.
  - ``"next_visit"``: the outcome is reported on a decision of the new visit, at ``occurred_at = τ``; it is
    credited to the user's latest session whose *last decision was served strictly before τ*. One with no
    earlier session of the user is counted in ``uncredited_returns``.
* implicit (``implicit_returns=True``, used only for sessions without an explicit credit): R_s = 1 when the
  user's next session starts within ``return_horizon_seconds`` of s's last decision, else 0. The user's latest
  session never gets implicit credit (we cannot know yet; it is flagged ``censored``).

**Episodes, returns and TD targets.** An episode is a session: ``done`` is true on its last decision, so a
value never bootstraps across the gap between visits - the return visit is what links them. With γ and n:

    G_t^(n) = Σ_{k=0}^{m-1} γ^k r_{t+k},   m = min(n, T - t)
    target  = G_t^(n) + γ^n · V(s_{t+n})   if t + n < T    (``bootstrap_event_id`` = decision t+n,
                                                              ``bootstrap_discount`` = γ^n)
            = G_t^(n)                        otherwise        (``bootstrap_event_id`` null, discount 0)

``mc_return`` is the full discounted return to the end of the session (n = ∞); ``next_event_id`` is decision
t+1 of the same session (null on the last), for one-step SARSA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

__all__ = ["RetentionConfig", "RetentionStats", "retention_table", "slot_clicks"]

SESSION_END = "session_end"
RETURN_VISIT = "return_visit"
_US = 1_000_000


@dataclass(frozen=True)
class RetentionConfig:
    """How outcomes become rewards and returns (see the module docstring for the formulas)."""

    gamma: float = 0.9  # per-decision discount
    n_step: int = 5  # steps summed before bootstrapping; >= 1
    weights: Mapping[str, float] = field(default_factory=lambda: {"click": 1.0, "dwell_seconds": 0.01})
    session_gap_seconds: float = 1800.0  # inactivity that starts a new session without a session_end outcome
    return_visit_weight: float = 1.0  # reward per unit of return-visit credit, added at the session's last step
    implicit_returns: bool = True  # credit a next session within the horizon when no return_visit was logged
    return_horizon_seconds: float = 3 * 86_400.0  # how soon the next session must start to count as a return
    return_visit_on: str = "last_decision"  # host convention for return_visit outcomes: or "next_visit"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gamma) and 0.0 <= self.gamma <= 1.0):
            raise ValueError(f"gamma: must be in [0, 1], got {self.gamma}")
        if isinstance(self.n_step, bool) or not isinstance(self.n_step, int) or self.n_step < 1:
            raise ValueError(f"n_step: must be an integer >= 1, got {self.n_step!r}")
        for name, weight in self.weights.items():
            if name in (SESSION_END, RETURN_VISIT):
                raise ValueError(f"weights.{name}: {name!r} is structural (sessions / return credit), not weighted")
            if not math.isfinite(weight):
                raise ValueError(f"weights.{name}: must be finite, got {weight}")
        for name in ("session_gap_seconds", "return_horizon_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive number of seconds, got {value}")
        if self.return_visit_on not in ("last_decision", "next_visit"):
            raise ValueError(f"return_visit_on: must be 'last_decision' or 'next_visit', got {self.return_visit_on!r}")
        if not math.isfinite(self.return_visit_weight):
            raise ValueError(f"return_visit_weight: must be finite, got {self.return_visit_weight}")


@dataclass
class RetentionStats:
    decisions: int = 0
    users: int = 0
    sessions: int = 0
    orphan_outcomes: int = 0  # outcomes whose event_id matches no decision
    explicit_returns: int = 0  # return_visit outcomes credited to a session
    uncredited_returns: int = 0  # return_visit outcomes with no earlier session of the user
    implicit_returns: int = 0  # sessions credited because the next one started within the horizon


def _require(frame: pl.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(repr(c) for c in missing)}")


def _as_micros(frame: pl.DataFrame, column: str) -> pl.Expr:
    dtype = frame.schema[column]
    if isinstance(dtype, pl.Datetime):
        return pl.col(column).dt.epoch("us")
    if dtype.is_integer():
        return pl.col(column).cast(pl.Int64)
    raise ValueError(f"{column}: expected a datetime or integer-microseconds column, got {dtype}")


def retention_table(
    decisions_df: pl.DataFrame,
    outcomes_df: pl.DataFrame,
    config: RetentionConfig | None = None,
    *,
    stats: RetentionStats | None = None,
) -> pl.DataFrame:
    """One row per decision: sessions, rewards, returns and TD links (module docstring).

    ``decisions_df`` needs event_id, user_id, served_at (one row per decision or per slot; duplicates of an
    event_id are collapsed). ``outcomes_df`` needs event_id, item_id, outcome, value, occurred_at. Columns out:

        event_id, user_id, served_at_us: i64, session_id: str, session_index: i32, step: i32,
        session_length: i32, reward: f64 (immediate, incl. the return credit on the last step),
        immediate_reward: f64 (without it), return_visit: f64 (R_s, on every row of the session),
        return_credit: f64 (γ^(T-1-t) · weight · R_s), censored: bool, done: bool, next_event_id: str|null,
        n_step_return: f64, bootstrap_event_id: str|null, bootstrap_discount: f64, mc_return: f64

    Rows are sorted by (user_id, served_at, event_id).
    """
    config = config or RetentionConfig()
    stats = stats if stats is not None else RetentionStats()
    _require(decisions_df, ("event_id", "user_id", "served_at"), "decisions_df")
    _require(outcomes_df, ("event_id", "item_id", "outcome", "value", "occurred_at"), "outcomes_df")
    gamma, n = config.gamma, config.n_step

    decisions = (
        decisions_df.select("event_id", "user_id", _as_micros(decisions_df, "served_at").alias("served_at_us"))
        .unique(subset="event_id", keep="first", maintain_order=True)
        .sort("user_id", "served_at_us", "event_id")
    )
    outcomes = outcomes_df.select(
        "event_id", "outcome", pl.col("value").cast(pl.Float64),
        _as_micros(outcomes_df, "occurred_at").alias("occurred_at_us"),
    )  # fmt: skip
    known = outcomes.join(decisions.select("event_id", "user_id"), on="event_id", how="inner")
    stats.orphan_outcomes += outcomes.height - known.height

    last_decision_mode = config.return_visit_on == "last_decision"
    session_markers = [SESSION_END, RETURN_VISIT] if last_decision_mode else [SESSION_END]
    weights = pl.DataFrame({"outcome": list(config.weights), "weight": list(config.weights.values())},
                           schema={"outcome": pl.String, "weight": pl.Float64})  # fmt: skip
    per_decision = (
        known.join(weights, on="outcome", how="left")
        .group_by("event_id")
        .agg(
            immediate_reward=(pl.col("weight").fill_null(0.0) * pl.col("value")).sum(),
            ends_session=(pl.col("outcome").is_in(session_markers)).any(),
        )
    )
    table = decisions.join(per_decision, on="event_id", how="left").with_columns(
        pl.col("immediate_reward").fill_null(0.0), pl.col("ends_session").fill_null(False)
    )

    # Sessions: a boundary where the user changes, the gap is too long, or the previous decision ended a session.
    gap_us = round(config.session_gap_seconds * _US)
    prev_user = pl.col("user_id").shift(1)
    table = table.with_columns(
        new_session=(
            prev_user.is_null()
            | (prev_user != pl.col("user_id"))
            | ((pl.col("served_at_us") - pl.col("served_at_us").shift(1)) > gap_us)
            | pl.col("ends_session").shift(1).fill_null(False)
        )
    ).with_columns(session_index=pl.col("new_session").cast(pl.Int32).cum_sum().over("user_id") - 1)
    table = table.with_columns(
        session_id=pl.col("user_id") + pl.lit("#") + pl.col("session_index").cast(pl.String),
        step=pl.int_range(pl.len(), dtype=pl.Int32).over("user_id", "session_index"),
        session_length=pl.len().cast(pl.Int32).over("user_id", "session_index"),
    )

    # Per-session summary: start, end, next start - for explicit and implicit return credit.
    sessions = (
        table.group_by("user_id", "session_index")
        .agg(start_us=pl.col("served_at_us").min(), end_us=pl.col("served_at_us").max())
        .sort("user_id", "session_index")
        .with_columns(next_start_us=pl.col("start_us").shift(-1).over("user_id"))
    )
    returns = known.filter(pl.col("outcome") == RETURN_VISIT)
    if last_decision_mode:  # credited to the session of the decision it was reported on (which it ends)
        credited = returns.join(table.select("event_id", "session_index"), on="event_id", how="left")
    else:  # latest session of the same user whose last decision was served strictly before the return time
        credited = returns.sort("occurred_at_us").join_asof(
            sessions.sort("end_us").with_columns(pl.col("end_us").alias("end_key")),
            left_on="occurred_at_us", right_on="end_key", by="user_id", strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,  # both sides are sorted globally on the key, hence within each user
        )  # fmt: skip
    explicit = (
        credited.filter(pl.col("session_index").is_not_null())
        .group_by("user_id", "session_index")
        .agg(explicit_return=pl.col("value").sum())
    )
    stats.explicit_returns += int(credited.get_column("session_index").is_not_null().sum())
    stats.uncredited_returns += int(credited.get_column("session_index").is_null().sum())

    horizon_us = round(config.return_horizon_seconds * _US)
    implicit = (
        (pl.col("next_start_us") - pl.col("end_us") <= horizon_us).fill_null(False).cast(pl.Float64)
        if config.implicit_returns
        else pl.lit(0.0)
    )
    sessions = sessions.join(explicit, on=["user_id", "session_index"], how="left").with_columns(
        return_visit=pl.when(pl.col("explicit_return").is_not_null()).then(pl.col("explicit_return")).otherwise(implicit),
        implicit_credit=pl.col("explicit_return").is_null() & (implicit > 0),
        censored=pl.col("next_start_us").is_null() & pl.col("explicit_return").is_null(),
    )
    stats.implicit_returns += int(sessions.get_column("implicit_credit").sum())
    table = table.join(
        sessions.select("user_id", "session_index", "return_visit", "censored"),
        on=["user_id", "session_index"], how="left",
    )  # fmt: skip

    last = pl.col("step") == pl.col("session_length") - 1
    steps_to_end = (pl.col("session_length") - 1 - pl.col("step")).cast(pl.Float64)
    table = table.with_columns(
        done=last,
        reward=pl.col("immediate_reward") + pl.when(last).then(config.return_visit_weight * pl.col("return_visit")).otherwise(0.0),
        return_credit=config.return_visit_weight * pl.col("return_visit") * pl.lit(gamma).pow(steps_to_end),
    )

    group = ("user_id", "session_index")
    n_step_return = pl.lit(0.0)
    for k in range(n):  # n is small; each term is one vectorised shift within the session
        n_step_return = n_step_return + (gamma**k) * pl.col("reward").shift(-k).over(*group).fill_null(0.0)
    # Monte-Carlo return: G_t = Σ_{k>=t} γ^(k-t) r_k = (Σ_{k>=t} γ^(k-L) r_k) / γ^(t-L) with L the session length,
    # a reverse cumulative sum; exponents stay within one session so float64 is exact enough for
    # sessions up to thousands of steps (γ > 0). γ = 0 is the immediate reward.
    if gamma > 0:
        scale = pl.lit(gamma).pow(pl.col("step").cast(pl.Float64) - pl.col("session_length").cast(pl.Float64))
        mc = (pl.col("reward") * scale).cum_sum(reverse=True).over(*group) / scale
    else:
        mc = pl.col("reward")
    has_bootstrap = pl.col("step") + n < pl.col("session_length")
    table = table.with_columns(
        next_event_id=pl.col("event_id").shift(-1).over(*group),
        n_step_return=n_step_return,
        bootstrap_event_id=pl.when(has_bootstrap).then(pl.col("event_id").shift(-n).over(*group)),
        bootstrap_discount=pl.when(has_bootstrap).then(pl.lit(gamma**n)).otherwise(0.0),
        mc_return=mc,
    )
    stats.decisions += table.height
    stats.users += table.get_column("user_id").n_unique()
    stats.sessions += sessions.height
    return table.select(
        "event_id", "user_id", "served_at_us", "session_id", "session_index", "step", "session_length",
        "reward", "immediate_reward", "return_visit", "return_credit", "censored", "done", "next_event_id",
        "n_step_return", "bootstrap_event_id", "bootstrap_discount", "mc_return",
    )  # fmt: skip


def slot_clicks(decisions_df: pl.DataFrame, outcomes_df: pl.DataFrame, *, click_outcome: str = "click") -> pl.DataFrame:
    """One row per (decision, position) with ``clicked`` (a ``click`` outcome with value > 0 for that item).

    ``decisions_df`` must be per slot (event_id, position, item_id), as ``tables.decisions_frame`` returns.
    The choice model trains on these rows: a decision with no clicked slot is the no-click choice.
    """
    _require(decisions_df, ("event_id", "position", "item_id"), "decisions_df")
    _require(outcomes_df, ("event_id", "item_id", "outcome", "value"), "outcomes_df")
    clicks = (
        outcomes_df.filter((pl.col("outcome") == click_outcome) & (pl.col("value") > 0) & (pl.col("item_id") != ""))
        .select("event_id", "item_id")
        .unique()
        .with_columns(clicked=pl.lit(True))
    )
    return (
        decisions_df.select("event_id", "position", "item_id")
        .join(clicks, on=["event_id", "item_id"], how="left")
        .with_columns(pl.col("clicked").fill_null(False))
    )
