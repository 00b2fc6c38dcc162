"""Overload tail vs how often the learner publishes a model version (issue 11 goal: p99 <= 2x the decision budget).

Every published version is hot-swapped by every worker (``DecisionService.load_version``): a new VW workspace loaded
from the model's bytes (one C call of ~5-10 ms that holds the GIL) and the worker's hot items parsed again for it
(``ItemExampleCache.warm``: Python, interleaved with Ranks at the interpreter's switch interval). With the default
``model.publish_every = 1000`` a server deciding 1,200 Rank/s swaps about once a second.

Reads top to bottom (CleanRL style). The same overload as the workers bench's (``recsys-rl serve --workers 2``, the
learner at its default priority, 4x the saturating callers in a closed loop, clicks on 30%), on servers that differ
only in ``publish_every``, alternating for a few rounds. The warm-up outlasts the attribution window and the learner's
grace, so the learner learns and publishes while the load is timed. Reported per setting: Rank/s, p50/p99 (medians
over rounds), the versions published during the timed phase, and the queued fallbacks / RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.loadgen import LoadClient
from bench.rank_bench import Args as RankArgs
from bench.rank_bench import make_request
from bench.workers_bench import Server
from recsys_rl.config import DEFAULT_SURFACE, default_config


@dataclass
class Args:
    workers: int = 2
    callers: int = 32  # the workers bench's overload: 4 x (4 callers per worker)
    warmup_s: float = 8.0  # > attribution window + 1 s grace: the learner publishes during the timed phase
    phase_s: float = 10.0
    rounds: int = 3
    publish_every: tuple[int, ...] = (1000, 50_000)  # the default, and no version during the phase
    attribution_window_s: float = 2.0
    connections: int = 16
    outcome_share: float = 0.3
    deadline_s: float = 0.5
    requests: int = 2_000  # distinct pre-built Rank requests, cycled


def _versions(data_dir: Path) -> int:
    models = data_dir / "models" / DEFAULT_SURFACE
    return sum(1 for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")) if models.exists() else 0


async def _drive(server: Server, payloads: list[bytes], args: Args) -> dict[str, float]:
    client = LoadClient(server.address, payloads, connections=args.connections, outcome_share=args.outcome_share,
                        deadline_s=args.deadline_s)
    try:
        await client.connect()
        await client.closed_loop(args.callers, 0.0, warmup_s=args.warmup_s)
        before = _versions(server.data_dir)
        phase = await client.closed_loop(args.callers, args.phase_s)
        published = _versions(server.data_dir) - before
    finally:
        await client.close()
    calls = sum(phase.rank_results.values())
    return {"rate": phase.rank_rate, "p50": float(np.percentile(phase.rank_ms, 50)),
            "p99": float(np.percentile(phase.rank_ms, 99)), "published": float(published),
            "queued": phase.rank_results["baseline_fallback"] / max(1, calls),
            "exhausted": phase.rank_results["resource_exhausted"] / max(1, calls)}


def run_one(publish_every: int, payloads: list[bytes], args: Args) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "surfaces.toml"
        config.write_text(f"[surfaces.{DEFAULT_SURFACE}.reward]\nattribution_window_seconds = "
                          f"{args.attribution_window_s}\n[surfaces.{DEFAULT_SURFACE}.model]\n"
                          f"publish_every = {publish_every}\n")
        server = Server(args.workers, Path(tmp) / "data", config, learner_nice=10)
        try:
            return asyncio.run(_drive(server, payloads, args))
        finally:
            server.stop()


def run(args: Args = Args()) -> dict[int, list[dict[str, float]]]:
    rng = np.random.default_rng(0)
    payloads = [make_request(rng, RankArgs(), i).SerializeToString() for i in range(args.requests)]
    results: dict[int, list[dict[str, float]]] = {every: [] for every in args.publish_every}
    for round_ in range(args.rounds):
        for every in args.publish_every:
            print(f"round {round_ + 1}/{args.rounds}: publish_every {every} ...", file=sys.stderr, flush=True)
            results[every].append(run_one(every, payloads, args))
    return results


def markdown(results: dict[int, list[dict[str, float]]], args: Args = Args()) -> str:
    budget_ms = default_config().surfaces[DEFAULT_SURFACE].decision_budget_ms
    m = {every: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for every, rs in results.items()}
    each = {every: ", ".join(format(r["p99"], ".1f") for r in rs) for every, rs in results.items()}
    rows = [f"| {every:,} | {f['rate']:.0f} | {f['p50']:.1f} | **{f['p99']:.1f}** | {f['p99'] / budget_ms:.2f} | "
            f"{each[every]} | {f['published']:.0f} | {f['queued']:.1%} | {f['exhausted']:.1%} |"
            for every, f in m.items()]
    first, *others = args.publish_every
    ratios = "; ".join(f"p99 at publish_every {first:,} / at {o:,} = {m[first]['p99'] / m[o]['p99']:.2f}x"
                       for o in others)
    return "\n".join([
        f"`recsys-rl serve --workers {args.workers}` (learner at its default priority +10) on loopback, one asyncio "
        f"client (`bench/loadgen.py`): {args.callers} callers in a closed loop (the workers bench's overload: 4x the "
        f"saturating callers), 100 candidates, slate 10, clicks on {args.outcome_share:.0%}; {args.warmup_s:g} s "
        f"warm-up (past the {args.attribution_window_s:g} s window + 1 s grace, so the learner publishes during the "
        f"timed phase), then {args.phase_s:g} s timed. Servers differ only in `model.publish_every`; alternated for "
        f"{args.rounds} rounds, medians over rounds. Surface budget {budget_ms:g} ms: the goal is p99 <= "
        f"{2 * budget_ms:g} ms.",
        "",
        "| publish_every | Rank/s | p50 ms | p99 ms | p99 / budget | p99 each round | versions published in the phase "
        "| queued fallbacks | RESOURCE_EXHAUSTED |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"{ratios} (ratio of medians, same run).",
    ])


if __name__ == "__main__":
    bench_args = Args()
    print(markdown(run(bench_args), bench_args))
