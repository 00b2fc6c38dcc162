"""``sim compare``: the host loop agrees with the in-process rollout, the interval maths, bad input, and a
tiny-budget run of the real entry point (servers, warm-up, SlateQ training, JSON, plot)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from recsys_rl.errors import InvalidInput
from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.compare import (
    METRICS,
    POLICIES,
    ClientPolicy,
    CompareArgs,
    Run,
    format_paired,
    format_table,
    main,
    paired_differences,
    play,
    summarise,
    t_interval,
)
from recsys_rl.sim.policies import myopic_oracle_policy
from recsys_rl.sim.rollout import run_policy


def test_play_counts_what_the_rollout_counts() -> None:
    config = SimConfig(n_users=80)
    world = World(config, seed=4)
    run = play(world, ClientPolicy(world.oracle_slate), Run("oracle-myopic", 4, config.n_users), days=3)
    reference = World(config, seed=4)
    expected = run_policy(reference, myopic_oracle_policy(reference), n_days=3)
    assert run.decisions == expected.decisions and run.clicks == expected.clicks
    assert run.sessions == sum(d.sessions for d in expected.days)
    assert run.returned == sum(d.returned for d in expected.days)
    assert run.return_eligible == sum(d.return_eligible for d in expected.days)
    assert run.dwell_by_day == pytest.approx([d.dwell_seconds for d in expected.days])
    metrics = run.metrics()
    assert metrics["click_rate"] == pytest.approx(expected.click_rate)
    assert metrics["engagement_per_user"] == pytest.approx(expected.dwell_per_user)
    assert metrics["session_length"] == pytest.approx(expected.steps_per_session)
    assert metrics["return_rate"] == pytest.approx(expected.return_rate)


def test_t_interval_by_hand() -> None:
    values = [1.0, 2.0, 4.0, 7.0]
    mean, low, high = t_interval(values)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2.0
    assert (mean, low, high) == pytest.approx((3.5, 3.5 - half, 3.5 + half))
    assert math.isnan(t_interval([2.0])[1])


def test_summary_has_every_metric_with_bounds_and_renders() -> None:
    runs = [Run("bandit", s, 10, decisions=100, clicks=30 + s, sessions=5, returned=2, return_eligible=5,
                dwell_by_day=[100.0 * (s + 1)]) for s in range(3)]
    (record,) = summarise(runs, ("bandit",))
    assert record["policy"] == "bandit" and record["seeds"] == 3
    for metric in METRICS:
        assert record[f"{metric}_ci_low"] <= record[metric] <= record[f"{metric}_ci_high"]
    assert record["click_rate"] == pytest.approx(0.31) and record["engagement_per_user"] == pytest.approx(20.0)
    assert "| bandit | 0.310 [" in format_table([record])


def test_paired_differences_are_per_seed_with_a_paired_t_interval() -> None:
    # Engagement per user: bandit 100, 200, 300 (a large between-world spread), slateq +12, +10, +14 on each seed.
    runs = [Run(p, s, 1, decisions=100, clicks=c, sessions=10, returned=5, return_eligible=10, dwell_by_day=[d])
            for s, (b, g) in enumerate([(100.0, 12.0), (200.0, 10.0), (300.0, 14.0)])
            for p, c, d in (("bandit", 30, b), ("slateq", 28, b + g))]
    runs.append(Run("slateq", 9, 1, decisions=1, dwell_by_day=[1.0]))  # no bandit on seed 9: not paired
    record = paired_differences(runs)
    assert record is not None and record["seeds"] == [0, 1, 2]
    e = record["engagement_per_user"]
    half = stats.t.ppf(0.975, 2) * np.std([12.0, 10.0, 14.0], ddof=1) / math.sqrt(3)
    assert e["per_seed"] == pytest.approx([12.0, 10.0, 14.0])
    assert (e["mean"], e["ci_low"], e["ci_high"]) == pytest.approx((12.0, 12.0 - half, 12.0 + half))
    assert e["ci_low"] > 0  # the per-policy intervals overlap (spread 100..300) but the paired one excludes 0
    assert record["click_rate"]["per_seed"] == pytest.approx([-0.02] * 3)
    assert record["engagement_gain"]["per_seed"] == pytest.approx([0.12, 0.05, 14 / 300])
    text = format_paired(record)
    assert "| engagement per user | +12 [" in text and "+12.0%, +5.0%, +4.7%" in text
    assert paired_differences([r for r in runs if r.policy == "slateq"]) is None


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"policies": ("bandit", "greedy")}, "--policies"), ({"policies": ()}, "--policies"), ({"seeds": 0}, "--seeds"),
    ({"days": 0}, "--days"), ({"long_term_weight": 0.0}, "--long-term-weight"),
    ({"exploration_cap": 2.0}, "--exploration-cap"), ({"gamma": 0.0}, "--gamma"), ({"n_step": 0}, "--n-step"),
    ({"dwell_weight": -1.0}, "--dwell-weight"), ({"return_weight": math.nan}, "--return-weight"),
])
def test_bad_arguments_name_the_flag(kwargs: dict, name: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{name}"):
        CompareArgs(**kwargs)


def test_cli_exit_code_2_on_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "compare", "--policies", "bandit,nope", "--no-progress"]) == 2
    assert "--policies" in capsys.readouterr().err


def test_tiny_budget_run_of_the_real_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "engagement.png"
    code = main(["sim", "compare", "--seeds", "2", "--users", "12", "--days", "2", "--warmup-days", "1",
                 "--train-steps", "5", "--gamma", "0.8", "--n-step", "2", "--format", "json", "--no-progress",
                 "--plot", str(plot),
                 "--data-dir", str(tmp_path / "work")])  # fmt: skip
    assert code == 0
    records = json.loads(capsys.readouterr().out)  # one record per policy (the contract)
    assert [r["policy"] for r in records] == list(POLICIES)
    slateq = next(r for r in records if r["policy"] == "slateq")
    assert slateq["vs_bandit_seeds"] == [0, 1]
    assert slateq["vs_bandit_engagement_gain_ci_low"] <= slateq["vs_bandit_engagement_gain"]
    assert slateq["vs_bandit_engagement_gain"] <= slateq["vs_bandit_engagement_gain_ci_high"]
    for record in records:
        assert record["seeds"] == 2
        for metric in METRICS:
            assert math.isfinite(record[metric]) and record[f"{metric}_ci_low"] <= record[metric]
            assert record[metric] <= record[f"{metric}_ci_high"]
        assert 0.0 <= record["click_rate"] <= 1.0 and 0.0 <= record["return_rate"] <= 1.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The slateq arm served with a model trained on the warm-up logs (never on the simulator's memory).
    for seed in (0, 1):
        assert (tmp_path / "work" / f"seed{seed}" / "slateq" / "models" / "slateq" / "LATEST").exists()
        assert any((tmp_path / "work" / f"seed{seed}" / "warmup" / "logs").iterdir())
