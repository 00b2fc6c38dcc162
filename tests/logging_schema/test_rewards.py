"""The reward rule of ``logging_schema.rewards``: range, aggregation, the µs window, duplicates by outcome_id."""

from __future__ import annotations

import pytest

from logging_schema.rewards import DecisionRewards, OutcomeValueError, RewardDefinition, UnknownOutcomeError, micros

T0 = 1_700_000_000_000_000  # µs


def test_default_range_is_derived_from_the_weights_as_if_values_lay_in_0_1() -> None:
    assert RewardDefinition().range == (0.0, 1.0)
    assert RewardDefinition(weights={"click": 1.0, "purchase": 5.0, "skip": -0.5}).range == (-0.5, 6.0)
    # A sum with weight 0 contributes nothing, so it needs no declared bound.
    assert RewardDefinition(weights={"click": 1.0, "dwell": 0.0}, aggregation={"dwell": "sum"}).range == (0.0, 1.0)
    with pytest.raises(ValueError, match="^reward.range: required"):
        RewardDefinition(weights={"click": 1.0, "dwell": 0.1}, aggregation={"dwell": "sum"})
    assert RewardDefinition(range=[-1, 2]).range == (-1.0, 2.0)  # TOML arrays become a tuple of floats


def test_check_value_refuses_an_outcome_that_cannot_fit_the_range_alone() -> None:
    reward = RewardDefinition(weights={"click": 1.0, "purchase": 2.0}, range=(0.0, 3.0))
    assert reward.check_value("purchase", 1.5) == 2.0  # 3.0: at the top, fits
    with pytest.raises(OutcomeValueError, match="^value: purchase = 1.6 contributes 3.2"):
        reward.check_value("purchase", 1.6)
    with pytest.raises(OutcomeValueError, match="^value"):
        reward.check_value("click", -0.1)
    with pytest.raises(OutcomeValueError, match="^value: must be finite"):
        reward.check_value("click", float("nan"))
    with pytest.raises(UnknownOutcomeError, match="^outcome"):
        reward.check_value("like", 1.0)


def test_window_is_integer_microseconds_inclusive_at_both_ends() -> None:
    reward = RewardDefinition(attribution_window_seconds=0.1234567)  # rounds to 123457 µs
    assert reward.window_us == 123_457
    assert reward.in_window(T0, T0) and reward.in_window(T0, T0 + 123_457)
    assert not reward.in_window(T0, T0 + 123_458) and not reward.in_window(T0, T0 - 1)
    assert micros(1_700_000_000, 999_999_999) == 1_700_000_000_999_999  # truncates, as the offline join does


def test_decision_rewards_aggregate_dedupe_and_clip() -> None:
    reward = RewardDefinition(weights={"click": 1.0, "dwell": 0.01, "purchase": 2.0}, aggregation={"dwell": "sum"},
                              range=(0.0, 3.0))
    rewards = DecisionRewards(reward, T0, ["a", "b", "c"])
    assert [rewards.add("a", "click", 1.0, T0 + 1) for _ in range(3)] == [True] * 3  # no ids: max keeps 1
    assert rewards.add("b", "dwell", 30.0, T0 + 1, "d1") and rewards.add("b", "dwell", 20.0, T0 + 2, "d2")
    assert not rewards.add("b", "dwell", 30.0, T0 + 3, "d1")  # a retry of d1: not counted
    assert rewards.add("c", "purchase", 1.0, T0) and rewards.add("c", "click", 1.0, T0)
    assert rewards.add("c", "dwell", 100.0, T0)  # 2 + 1 + 1 = 4: clipped to 3
    assert not rewards.add("c", "like", 1.0, T0)  # unknown name
    assert not rewards.add("a", "purchase", 1.0, T0 + reward.window_us + 1)  # 1 µs late
    assert not rewards.add("zzz", "click", 1.0, T0, "k")  # not served; its key is still taken...
    assert not rewards.add("a", "purchase", 1.0, T0, "k")  # ...so the same key on a served item is a repeat
    assert rewards.add("", "purchase", 1.0, T0)  # whole slate
    assert rewards.slot_rewards() == pytest.approx([1.0, 0.5, 3.0])
    assert rewards.slate_reward() == 2.0
