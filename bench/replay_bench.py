"""Replay speed against serving speed on the same decisions; prints markdown.

    .venv/bin/python -m bench.replay_bench [--decisions 100000] [--candidates 30] [--slate-size 5] [--seed 0]

1. Serve: a DecisionService in this process (learner off, no gRPC) ranks --decisions simulated page views and
   takes the click reports. Timed: the rank and report_outcome calls plus the final close (which drains the log
   writer). Not timed: the simulator. The writer thread also works while the simulator runs, so this slightly
   undercounts serving, which makes the comparison harder for replay, not easier.
2. Replay: ``replay(data_dir, spec)`` for each spec, timed end to end (log read, request rebuild, scoring,
   target propensities, reward join, table build).

The requirement (issue 3): replaying 1M decisions takes no longer than serving them. 1M is extrapolated linearly
from --decisions (replay streams in fixed-size chunks; only the final join and table are whole-log).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from recsys_rl.config import ServiceConfig, SurfaceConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from evaluators.replay.run import ReplayStats, replay
from recsys_rl.serving.service import DecisionService
from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.host import to_rank_request


@dataclass
class Args:
    decisions: int = 100_000  # decisions served, then replayed
    candidates: int = 30  # candidates per request
    slate_size: int = 5  # slate positions per request
    seed: int = 0  # simulator seed
    specs: tuple[str, ...] = ("current", "current@cap=0.3@epsilon=0.3", "uniform")  # target policies replayed


def serve(data_dir: Path, config: ServiceConfig, args: Args) -> float:
    """Serve args.decisions page views; returns the seconds spent in the service."""
    world = World(SimConfig(n_candidates=args.candidates, slate_size=args.slate_size), seed=args.seed)
    service = DecisionService(config, data_dir, learner="off", watch_models=False)
    spent = 0.0
    for i in range(args.decisions):
        page_view = world.next_page_view()
        while page_view is None:
            world.next_day()
            page_view = world.next_page_view()
        request = to_rank_request(page_view, f"bench-{i}", "default", catalog=world.catalog)
        started = time.perf_counter()
        decision, event_id = service.rank(request)
        spent += time.perf_counter() - started
        response = world.respond(page_view, [slot.item_id for slot in decision.slots])
        if response.clicked_item_id is not None:
            outcome = pb.ReportOutcomeRequest(event_id=event_id, item_id=response.clicked_item_id, outcome="click",
                                              value=1.0)
            started = time.perf_counter()
            service.report_outcome(outcome)
            spent += time.perf_counter() - started
    # The log writer's thread gets the GIL only when this loop gives it up (a Rank no longer releases it itself), so
    # in a loop that never waits on I/O it falls behind; the bench waits until everything is on disk (inside the
    # timed serving cost) instead of letting close() give up on the backlog after its shutdown deadline.
    started = time.perf_counter()
    backlog = service.writer.health().held
    if not service.writer.flush(timeout=600):
        raise RuntimeError(f"the decision log did not drain in 600 s ({backlog} records were behind)")
    service.close()
    print(f"log writer backlog when serving ended: {backlog:,} records (drained before close)", file=sys.stderr)
    return spent + time.perf_counter() - started


def run(args: Args) -> list[tuple[str, float, float]]:
    """[(what, seconds, decisions/s)], serving first; prints the markdown table."""
    # A huge decision budget so no decision falls back to the baseline (that would make serving cheaper).
    config = ServiceConfig(surfaces={"default": SurfaceConfig(decision_budget_ms=1e6)})
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="replay_bench_") as tmp:
        data_dir = Path(tmp)
        serving_s = serve(data_dir, config, args)
        rows.append(("serve (in-process DecisionService)", serving_s, args.decisions / serving_s))
        for spec in args.specs:
            stats = ReplayStats()
            started = time.perf_counter()
            replay(data_dir, spec, config=config, progress=False, stats=stats)
            seconds = time.perf_counter() - started
            if stats.decisions != args.decisions:
                raise RuntimeError(f"replayed {stats.decisions} decisions, served {args.decisions}")
            rows.append((f"replay `{spec}`", seconds, args.decisions / seconds))

    print(f"Replay vs serving, {args.decisions:,} decisions, {args.candidates} candidates, slate {args.slate_size} "
          f"({platform.python_implementation()} {platform.python_version()}, {platform.machine()}):\n")
    print("| step | seconds | decisions/s | time / serving time | extrapolated to 1M decisions |")
    print("|---|---|---|---|---|")
    for what, seconds, rate in rows:
        print(f"| {what} | {seconds:.2f} | {rate:,.0f} | {seconds / serving_s:.2f} | "
              f"{seconds * 1_000_000 / args.decisions / 60:.1f} min |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=Args.decisions)
    parser.add_argument("--candidates", type=int, default=Args.candidates)
    parser.add_argument("--slate-size", type=int, default=Args.slate_size)
    parser.add_argument("--seed", type=int, default=Args.seed)
    ns = parser.parse_args(argv)
    run(Args(decisions=ns.decisions, candidates=ns.candidates, slate_size=ns.slate_size, seed=ns.seed))


if __name__ == "__main__":
    main()
