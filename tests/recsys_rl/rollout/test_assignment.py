"""Canary assignment: stable across processes, monotone in the share, and the realised share is binomial."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_rl.rollout.assignment import canary_position, in_canary

N_USERS = 20_000


def test_position_is_uniform_in_unit_interval_and_surface_specific() -> None:
    positions = [canary_position("home_feed", f"user-{i}") for i in range(N_USERS)]
    assert all(0.0 <= u < 1.0 for u in positions)
    # Mean of U(0, 1) is 1/2 with sd 1/sqrt(12 n): 5 sd.
    assert abs(sum(positions) / N_USERS - 0.5) <= 5 / math.sqrt(12 * N_USERS)
    other = [canary_position("search", f"user-{i}") for i in range(N_USERS)]
    assert sum(a < 0.1 and b < 0.1 for a, b in zip(positions, other)) / N_USERS < 0.02  # independent: ~0.01


@pytest.mark.parametrize("share", [0.01, 0.05, 0.25, 0.5])
def test_realised_share_is_within_binomial_tolerance(share: float) -> None:
    realised = sum(in_canary("home_feed", f"user-{i}", share) for i in range(N_USERS)) / N_USERS
    sd = math.sqrt(share * (1 - share) / N_USERS)
    assert abs(realised - share) <= 4 * sd, (realised, share, sd)  # 4 sd: false alarm ~6e-5 per case


def test_ramp_only_adds_users() -> None:
    users = [f"user-{i}" for i in range(5_000)]
    shares = (0.01, 0.05, 0.25, 1.0)
    arms = [{u for u in users if in_canary("home_feed", u, s)} for s in shares]
    assert all(a <= b for a, b in zip(arms, arms[1:]))
    assert arms[-1] == set(users)
    assert not any(in_canary("home_feed", u, 0.0) for u in users)


def test_empty_user_id_is_control_at_any_share() -> None:
    assert not in_canary("home_feed", "", 1.0)


def test_same_assignment_in_another_process_with_another_hash_seed() -> None:
    users = [f"user-{i}" for i in range(200)]
    here = [canary_position("home_feed", u) for u in users]
    code = ("from recsys_rl.rollout.assignment import canary_position as p; "
            f"print(repr([p('home_feed', f'user-{{i}}') for i in range({len(users)})]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=Path(__file__).resolve().parents[3])
    assert eval(out.stdout) == here  # noqa: S307 - our own subprocess's repr of floats
