"""Small hand-made feedback tables shared by the evaluator tests."""

from __future__ import annotations

import polars as pl
import pytest


@pytest.fixture
def small_table() -> pl.DataFrame:
    """Four single-item decisions; weights w = 2, 0.5, 1, 0."""
    return pl.DataFrame({
        "event_id": ["e1", "e2", "e3", "e4"],
        "position": [0, 0, 0, 0],
        "action": [1, 2, 3, 1],
        "reward": [1.0, 0.0, 1.0, 1.0],
        "pscore": [0.25, 0.5, 0.5, 0.2],
        "target_pscore": [0.5, 0.25, 0.5, 0.0],
        "q_hat": [0.5, 0.2, 0.6, 0.9],
        "q_hat_target": [0.4, 0.3, 0.5, 0.1],
    })
