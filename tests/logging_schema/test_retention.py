"""The retention pipeline on hand-made logs: sessions, rewards, n-step/MC returns, return-visit attribution."""

from __future__ import annotations

import polars as pl
import pytest

from logging_schema.retention import RetentionConfig, RetentionStats, retention_table, slot_clicks
from logging_schema.tables import decisions_frame, outcomes_frame

from .builders import BASE_US, make_decision, make_outcome

S = 1_000_000
DAY = 86_400 * S


def _decision(event_id: str, user: str, at_us: int):  # noqa: ANN202 - DecisionEvent
    event = make_decision(event_id, served_at_us=at_us)
    event.user_id = user
    return event


def _table(decisions: list, outcomes: list, stats: RetentionStats | None = None, **config: object) -> pl.DataFrame:
    table = retention_table(decisions_frame(decisions), outcomes_frame(outcomes), RetentionConfig(**config),
                            stats=stats)  # type: ignore[arg-type]
    return table


def _col(table: pl.DataFrame, name: str) -> list:
    return table.get_column(name).to_list()


def test_sessions_split_on_session_end_and_inactivity_gap() -> None:
    decisions = [_decision(f"d{i}", "u1", BASE_US + t * S) for i, t in enumerate([0, 10, 20, 30, 5000, 5010])]
    decisions.append(_decision("x0", "u2", BASE_US + 15 * S))
    outcomes = [make_outcome("d1", "", "session_end", occurred_at_us=BASE_US + 11 * S)]
    table = _table(decisions, outcomes, session_gap_seconds=1800)
    assert _col(table, "event_id") == ["d0", "d1", "d2", "d3", "d4", "d5", "x0"]
    assert _col(table, "session_id") == ["u1#0", "u1#0", "u1#1", "u1#1", "u1#2", "u1#2", "u2#0"]
    assert _col(table, "step") == [0, 1, 0, 1, 0, 1, 0]
    assert _col(table, "done") == [False, True, False, True, False, True, True]
    assert _col(table, "next_event_id") == ["d1", None, "d3", None, "d5", None, None]


def test_immediate_reward_n_step_and_monte_carlo_returns() -> None:
    decisions = [_decision(f"d{i}", "u1", BASE_US + i * 10 * S) for i in range(4)]
    outcomes = [
        make_outcome("d0", "a", "click"), make_outcome("d0", "a", "dwell_seconds", value=100.0),  # r0 = 1 + 1 = 2
        make_outcome("d2", "b", "click"),  # r2 = 1
        make_outcome("d3", "c", "purchase", value=9.0),  # not weighted: r3 = 0
    ]  # fmt: skip
    table = _table(decisions, outcomes, gamma=0.5, n_step=2, implicit_returns=False)
    assert _col(table, "reward") == [2.0, 0.0, 1.0, 0.0]
    # G^(2)_t = r_t + 0.5 r_{t+1}; bootstrap from t+2 with 0.25 while t+2 < 4.
    assert _col(table, "n_step_return") == [2.0, 0.5, 1.0, 0.0]
    assert _col(table, "bootstrap_event_id") == ["d2", "d3", None, None]
    assert _col(table, "bootstrap_discount") == [0.25, 0.25, 0.0, 0.0]
    assert _col(table, "mc_return") == pytest.approx([2.25, 0.5, 1.0, 0.0], abs=1e-12)


def test_return_visit_on_last_decision_credits_its_session_with_discounting() -> None:
    decisions = [_decision(f"d{i}", "u1", BASE_US + i * 10 * S) for i in range(3)]
    decisions += [_decision(f"n{i}", "u1", BASE_US + DAY + i * 10 * S) for i in range(2)]
    # The host reports on the session's last decision, the next day; the next session is not yet split by a gap.
    outcomes = [make_outcome("d2", "", "return_visit", value=1.0, occurred_at_us=BASE_US + DAY)]
    stats = RetentionStats()
    table = _table(decisions, outcomes, stats, gamma=0.5, n_step=5, session_gap_seconds=10 * 86_400,
                   return_visit_weight=2.0)  # fmt: skip
    assert _col(table, "session_id") == ["u1#0"] * 3 + ["u1#1"] * 2
    assert _col(table, "reward") == [0.0, 0.0, 2.0, 0.0, 0.0]
    assert _col(table, "return_credit")[:3] == pytest.approx([0.5, 1.0, 2.0])  # 2 · γ^(T-1-t)
    assert _col(table, "mc_return")[:3] == pytest.approx([0.5, 1.0, 2.0])
    assert _col(table, "censored") == [False] * 3 + [True] * 2
    assert stats.explicit_returns == 1 and stats.implicit_returns == 0 and stats.sessions == 2


def test_explicit_no_return_blocks_the_implicit_rule() -> None:
    decisions = [_decision("d0", "u1", BASE_US), _decision("n0", "u1", BASE_US + DAY)]
    outcomes = [make_outcome("d0", "", "return_visit", value=0.0, occurred_at_us=BASE_US + DAY)]
    table = _table(decisions, outcomes)
    assert _col(table, "return_visit") == [0.0, 0.0]
    assert _col(table, "reward") == [0.0, 0.0]


def test_next_visit_convention_credits_the_previous_session() -> None:
    decisions = [_decision("d0", "u1", BASE_US), _decision("d1", "u1", BASE_US + 10 * S),
                 _decision("n0", "u1", BASE_US + DAY), _decision("v0", "u2", BASE_US)]  # fmt: skip
    outcomes = [
        make_outcome("n0", "", "return_visit", value=1.0, occurred_at_us=BASE_US + DAY),  # first decision of visit
        make_outcome("v0", "", "return_visit", value=1.0, occurred_at_us=BASE_US),  # nothing earlier: uncredited
    ]  # fmt: skip
    stats = RetentionStats()
    table = _table(decisions, outcomes, stats, return_visit_on="next_visit", implicit_returns=False, gamma=0.9)
    assert _col(table, "session_id") == ["u1#0", "u1#0", "u1#1", "u2#0"]
    assert _col(table, "reward") == [0.0, 1.0, 0.0, 0.0]
    assert _col(table, "return_credit") == pytest.approx([0.9, 1.0, 0.0, 0.0])
    assert stats.explicit_returns == 1 and stats.uncredited_returns == 1


def test_implicit_return_within_horizon_only() -> None:
    decisions = [_decision("a0", "u1", BASE_US), _decision("a1", "u1", BASE_US + DAY),
                 _decision("a2", "u1", BASE_US + 10 * DAY)]  # fmt: skip
    stats = RetentionStats()
    table = _table(decisions, [], stats, return_horizon_seconds=3 * 86_400)
    assert _col(table, "session_index") == [0, 1, 2]
    assert _col(table, "return_visit") == [1.0, 0.0, 0.0]  # 1 day later: yes; 9 days later: no; last: unknown
    assert _col(table, "censored") == [False, False, True]
    assert stats.implicit_returns == 1


def test_orphan_outcomes_are_counted_and_ignored() -> None:
    stats = RetentionStats()
    table = _table([_decision("d0", "u1", BASE_US)], [make_outcome("ghost", "a", "click")], stats)
    assert _col(table, "reward") == [0.0]
    assert stats.orphan_outcomes == 1


def test_slot_clicks_marks_the_clicked_position() -> None:
    decisions = decisions_frame([make_decision("d0", items=("a", "b", "c"))])
    outcomes = outcomes_frame([make_outcome("d0", "b", "click"), make_outcome("d0", "c", "click", value=0.0)])
    assert slot_clicks(decisions, outcomes).get_column("clicked").to_list() == [False, True, False]


@pytest.mark.parametrize(("config", "field"), [
    ({"gamma": 1.5}, "gamma"), ({"n_step": 0}, "n_step"), ({"weights": {"return_visit": 1.0}}, "weights.return_visit"),
    ({"session_gap_seconds": 0.0}, "session_gap_seconds"), ({"return_visit_on": "sometimes"}, "return_visit_on"),
])  # fmt: skip
def test_bad_config_names_the_field(config: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        RetentionConfig(**config)


def test_missing_column_is_named() -> None:
    with pytest.raises(ValueError, match="decisions_df: missing column.*'user_id'"):
        retention_table(pl.DataFrame({"event_id": ["a"], "served_at": [1]}), outcomes_frame([]))
