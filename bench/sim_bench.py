"""Simulator speed and the clickbait trap, without a server; prints markdown tables.

    .venv/bin/python -m bench.sim_bench [--decisions 50000] [--days 8] [--users 500] [--seed 0]

1. Speed: simulated decisions per second (next_page_view + policy + respond) for the default shape
   (30 candidates, slate 5) and the benchmark shape (100 candidates, slate 10), with a random policy and
   with the oracle; plus the per-request cost of the oracle/random click-rate probes run_host adds and of
   building the RankRequest protobuf (cached per-item messages).
2. The trap: click rate, dwell per user, sessions per user and next-day return rate of the reference
   policies over --days days (myopic oracle vs quality-aware vs random vs the host's baseline).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.host import to_rank_request
from recsys_rl.sim.policies import (
    Policy,
    baseline_policy,
    myopic_oracle_policy,
    quality_aware_policy,
    uniform_random_policy,
)
from recsys_rl.sim.rollout import run_policy


@dataclass
class Args:
    decisions: int = 50_000  # simulated decisions per speed measurement
    days: int = 8  # days per policy in the trap table
    users: int = 500  # users in the trap table's world
    seed: int = 0  # world seed


SHAPES = {"default 30/5": SimConfig(), "benchmark 100/10": SimConfig(n_items=1000, n_candidates=100, slate_size=10)}


def decisions_per_second(config: SimConfig, seed: int, n: int, make_policy: Callable[[World], Policy]) -> float:
    world = World(config, seed)
    policy = make_policy(world)
    done = 0
    start = time.perf_counter()
    while done < n:
        page_view = world.next_page_view()
        if page_view is None:
            world.next_day()
            continue
        world.respond(page_view, policy(page_view))
        done += 1
    return n / (time.perf_counter() - start)


def per_request_us(config: SimConfig, seed: int, n: int, work: Callable[[World, object], object]) -> float:
    """Mean microseconds of ``work(world, page_view)`` over n page views (the page views are not timed)."""
    world = World(config, seed)
    total = 0.0
    done = 0
    while done < n:
        page_view = world.next_page_view()
        if page_view is None:
            world.next_day()
            continue
        start = time.perf_counter()
        work(world, page_view)
        total += time.perf_counter() - start
        world.respond(page_view, world.random_slate(page_view))
        done += 1
    return total / n * 1e6


def oracle_probes(world: World, page_view: object) -> None:
    world.slate_click_prob(page_view, world.oracle_slate(page_view))  # type: ignore[arg-type]
    world.random_slate_click_prob(page_view)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in vars(Args()).items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = Args(**vars(parser.parse_args(argv)))

    print("| shape | random policy (decisions/s) | oracle policy (decisions/s) "
          "| oracle+random probes (µs) | RankRequest (µs) |")
    print("|---|---|---|---|---|")
    for label, config in SHAPES.items():
        random_rate = decisions_per_second(config, args.seed, args.decisions, uniform_random_policy)
        oracle_rate = decisions_per_second(config, args.seed, args.decisions, myopic_oracle_policy)
        probes = per_request_us(config, args.seed, min(args.decisions, 5000), oracle_probes)
        proto = per_request_us(config, args.seed, min(args.decisions, 5000),
                               lambda w, pv: to_rank_request(pv, "r", "default", catalog=w.catalog))
        print(f"| {label} | {random_rate:,.0f} | {oracle_rate:,.0f} | {probes:.1f} | {proto:.1f} |")

    print(f"\nReference policies, {args.users} users, {args.days} days, seed {args.seed}:\n")
    print("| policy | click rate | dwell s/user | sessions/user | steps/session | next-day return rate |")
    print("|---|---|---|---|---|---|")
    policies: dict[str, Callable[[World], Policy]] = {
        "myopic oracle": myopic_oracle_policy,
        "quality-aware oracle": quality_aware_policy,
        "uniform random": uniform_random_policy,
        "host baseline": lambda world: baseline_policy,
    }
    for name, make in policies.items():
        world = World(SimConfig(n_users=args.users), args.seed)
        stats = run_policy(world, make(world), n_days=args.days)
        print(f"| {name} | {stats.click_rate:.3f} | {stats.dwell_per_user:,.0f} | {stats.sessions_per_user:.2f} | "
              f"{stats.steps_per_session:.1f} | {stats.return_rate:.3f} |")


if __name__ == "__main__":
    main()
