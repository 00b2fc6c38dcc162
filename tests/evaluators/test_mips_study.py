"""The MIPS study: its problem's truth, MIPS beating IPS at 10,000 actions, and the real entry point on a tiny budget."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from evaluators import estimate
from evaluators.mips_study import Args, EmbeddingProblem, main, run


def test_mips_is_centred_on_the_exact_truth() -> None:
    """One large log: MIPS, SNMIPS and MIPS-DR fall inside their 99.9% normal interval around the exact truth
    (IPS is unbiased too, but its interval at 1,000 actions is too wide to say much)."""
    problem = EmbeddingProblem(200_000, n_actions=1000)
    table, _ = problem.draw(seed=3)
    out = estimate(table, "mips,snmips,mips_dr", ci="normal", alpha=0.001)
    for row in out.iter_rows(named=True):
        assert row["ci_low"] <= problem.truth <= row["ci_high"], row
        assert row["ci_high"] - row["ci_low"] < 0.03, row  # informative, not vacuous


def test_mips_mse_is_far_below_ips_at_10000_actions() -> None:
    """Fixed seeds, 20 logs of 1,000 decisions: MIPS's MSE below a tenth of IPS's (the full study shows ~1000×),
    and SNMIPS's below SNIPS's likewise."""
    result = run(Args(n_actions=(10_000,), n_events=1000, n_draws=20))
    mse = dict(zip(result["estimator"], result["mse"]))
    assert mse["mips"] * 10 < mse["ips"]
    assert mse["snmips"] * 10 < mse["snips"]
    assert mse["mips_dr"] * 10 < mse["dr"]


def test_entry_point_writes_report_and_plot(tmp_path: Path) -> None:
    main(["--out", str(tmp_path), "--n-draws", "2", "--n-events", "200"])
    text = (tmp_path / "mips.md").read_text()
    assert "| 10,000 | mips |" in text and "IPS / MIPS MSE" in text
    assert (tmp_path / "mips.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_entry_point_rejects_bad_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--out", str(tmp_path), "--n-draws", "1"])
    assert stopped.value.code == 2 and "--n-draws" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_actions": 5, "n_embeddings": 10}, "n_actions"), ({"epsilon": 1.5}, "epsilon")],
)
def test_problem_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddingProblem(100, **kwargs)


def test_drawn_tables_carry_consistent_embedding_columns() -> None:
    table, _ = EmbeddingProblem(500, n_actions=300).draw(seed=1)
    assert (table["embedding_pscore"] >= table["pscore"]).all()
    assert table.select(pl.col("embedding_target_pscore") >= pl.col("target_pscore")).to_series().all()
