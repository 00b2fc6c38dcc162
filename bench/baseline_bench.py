"""LambdaRank baseline: its serving cost per request, Rank with a forced fallback, and training time toward 1M decisions.

Reads top to bottom (CleanRL style). One simulated world (100 candidates per page view, slate 5) gives both the
training log (tests/recsys_rl/slateq/simlog.py: uniformly random slates, exact propensities) and the requests.

1. Scoring, in process, 100 candidates, interleaved per request: the host's baseline_score (the in-run baseline:
   what a fallback costs without a learned baseline), ``LambdaRankBaseline.score`` with its item-row cache warm, and
   its parts (feature matrix without / with the cache, LightGBM predict alone).
2. ``DecisionService.rank`` (what the Rank servicer calls: validate, decide, enqueue the event; no gRPC) on three
   surfaces of one service, interleaved: live (VW decides), forced fallback with the host's baseline, forced
   fallback with the learned baseline (decision budget 1 ns: every decision misses it).
3. Training: the log read (``load_data``) next to a full parse of every record (nothing else: what any reader of
   the log pays), and 200 boosting rounds on half and all of the decisions (after a warm-up); 1M is extrapolated
   linearly from the two sizes.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    decisions: int = 40_000  # logged decisions to train on (writing the simulated log dominates the bench's time)
    candidates: int = 100  # per page view
    items: int = 300  # catalog size
    requests: int = 400  # distinct requests for the latency parts (each timed `repeats` times)
    repeats: int = 5


def _p50_p99(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), float(np.percentile(times, 99))


def _requests(sim: object, n: int, surface: str, seed: int) -> list[object]:
    from recsys_rl.sim import World
    from recsys_rl.sim.host import to_rank_request

    world = World(sim, seed=seed)  # type: ignore[arg-type]
    out = []
    while len(out) < n:
        page_view = world.next_page_view()
        if page_view is None:
            world.next_day()
            continue
        out.append(to_rank_request(page_view, f"{surface}-{len(out)}", surface, catalog=world.catalog))
        world.respond(page_view, world.random_slate(page_view))
    return out


def main(args: Args = Args()) -> None:
    sys.path.insert(0, str(REPO))
    from logging_schema.reader import iter_records
    from recsys_rl.baseline import baseline_surface
    from recsys_rl.baseline.model import ItemRowCache, LambdaRankBaseline
    from recsys_rl.baseline.train import TrainConfig, load_data, train
    from recsys_rl.config import ModelConfig, ServiceConfig, SurfaceConfig
    from recsys_rl.logging.v1.events_pb2 import LogRecord
    from recsys_rl.serving.decision import baseline_scores
    from recsys_rl.serving.registry import ModelRegistry
    from recsys_rl.serving.service import DecisionService
    from recsys_rl.sim import SimConfig
    from tests.recsys_rl.slateq.simlog import write_sim_log

    sim = SimConfig(n_items=args.items, n_candidates=args.candidates)
    config = TrainConfig()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        print(f"writing {args.decisions:,} simulated decisions ...", file=sys.stderr, flush=True)
        write_sim_log(data_dir / "logs", decisions=args.decisions, seed=0, config=sim)

        # --- 3. training ---------------------------------------------------------------------------------------
        started = time.perf_counter()
        parsed = sum(1 for _ in iter_records(data_dir / "logs", record_type=LogRecord))
        full_parse_s = time.perf_counter() - started
        started = time.perf_counter()
        data = load_data(data_dir / "logs", SurfaceConfig(), spec_sample=config.spec_sample)
        load_s = time.perf_counter() - started
        n = data.group.size
        half = n // 2
        half_rows = int(data.group[:half].sum())
        half_data = type(data)(data.spec, data.x[:half_rows], data.label[:half_rows], data.propensity[:half_rows],
                               data.baseline[:half_rows], data.group[:half], data.data_range)
        print("training ...", file=sys.stderr, flush=True)
        train(half_data, TrainConfig(num_rounds=5))  # warm-up: LightGBM's first call pays its own start-up
        train_half_s = train(half_data, config).train_seconds
        result = train(data, config)
        train_s = result.train_seconds
        model_bytes = result.model

        # --- 1. scoring ----------------------------------------------------------------------------------------
        model = LambdaRankBaseline(model_bytes)
        spec, cold = model.features, ItemRowCache(model.features)
        requests = _requests(sim, args.requests, "default", seed=11)
        for request in requests:  # warm the serving cache (a hit is the steady state: catalog items repeat)
            model.score(request)
        matrices = {id(r): spec.matrix(r.context, r.candidates) for r in requests}
        parts: dict[str, list[float]] = {k: [] for k in ("host", "score", "matrix", "matrix_cached", "predict")}
        for _ in range(args.repeats):
            for request in requests:
                for name, call in (
                    ("host", lambda r=request: baseline_scores(r)),
                    ("score", lambda r=request: model.score(r)),
                    ("matrix", lambda r=request: spec.matrix(r.context, r.candidates)),
                    ("matrix_cached", lambda r=request, c=cold: spec.matrix(r.context, r.candidates, c)),
                    ("predict", lambda r=request: model.booster.predict(matrices[id(r)], num_threads=1)),
                ):
                    t = time.perf_counter_ns()
                    call()
                    parts[name].append((time.perf_counter_ns() - t) / 1e6)
        score = {k: _p50_p99(v) for k, v in parts.items()}

        # --- 2. DecisionService.rank with forced fallbacks -------------------------------------------------------
        version = ModelRegistry(data_dir / "serve" / "models").publish(
            baseline_surface("lr_fallback"), model_bytes, parent=None, data_range={}, parameters={}).version
        quiet = ModelConfig(learn=False)
        surfaces = {
            "live": SurfaceConfig(name="live", model=quiet),
            "host_fallback": SurfaceConfig(name="host_fallback", model=quiet, decision_budget_ms=1e-6),
            "lr_fallback": SurfaceConfig(name="lr_fallback", model=ModelConfig(learn=False, baseline=version),
                                         decision_budget_ms=1e-6),
        }
        service = DecisionService(ServiceConfig(surfaces=surfaces), data_dir / "serve", learner="off",
                                  watch_models=False)
        ranks: dict[str, list[float]] = {name: [] for name in surfaces}
        per_surface = {name: _requests(sim, args.requests, name, seed=11) for name in surfaces}
        try:
            for _ in range(args.repeats):
                for i in range(args.requests):
                    for name in surfaces:
                        t = time.perf_counter_ns()
                        decision, _ = service.rank(per_surface[name][i])  # type: ignore[arg-type]
                        ranks[name].append((time.perf_counter_ns() - t) / 1e6)
                        assert (name == "live") != bool(decision.fallback_reason)
        finally:
            service.close()
        rank = {k: _p50_p99(v) for k, v in ranks.items()}

    timed = args.requests * args.repeats
    print(f"Simulated world: {args.items} items, {args.candidates} candidates per request, slate 5; model: "
          f"{config.num_rounds} rounds, {len(spec.names)} features. Latency: {timed:,} timed calls per row, "
          f"interleaved (medians and p99 in ms).\n")
    print("| scoring 100 candidates (in process) | p50 ms | p99 ms | p50 / host |")
    print("|---|---|---|---|")
    labels = {"host": "host baseline_score (in-run baseline)", "score": "`LambdaRankBaseline.score` (cache warm)",
              "matrix": "feature matrix, no cache", "matrix_cached": "feature matrix, item-row cache",
              "predict": "LightGBM predict alone (200 trees)"}
    for key, label in labels.items():
        p50, p99 = score[key]
        print(f"| {label} | {p50:.3f} | {p99:.3f} | {p50 / score['host'][0]:.0f}x |")
    print("\n| `DecisionService.rank` (validate, decide, enqueue the event) | p50 ms | p99 ms | p50 / live |")
    print("|---|---|---|---|")
    for key, label in (("live", "live: VW decides (in-run baseline)"),
                       ("host_fallback", "forced fallback, host baseline_score"),
                       ("lr_fallback", "forced fallback, LambdaRank baseline")):
        p50, p99 = rank[key]
        print(f"| {label} | {p50:.3f} | {p99:.3f} | {p50 / rank['live'][0]:.2f}x |")
    rows = int(data.group.sum())
    per_decision = (train_s - train_half_s) / (n - half)  # boosting's marginal cost per decision
    train_1m = train_s + per_decision * (1_000_000 - n)
    read_1m = load_s * 1_000_000 / n
    print(f"\nTraining on {n:,} logged decisions ({rows:,} served rows, {parsed:,} log records):\n")
    print("| phase | seconds | decisions/s | 1M decisions (linear) |")
    print("|---|---|---|---|")
    print(f"| parse every record in full, nothing else (reference: what any reader pays) | {full_parse_s:.1f} | "
          f"{n / full_parse_s:,.0f} | {full_parse_s * 1_000_000 / n:.0f} s |")
    print(f"| `load_data`: table view, served candidates only, join rewards | {load_s:.1f} | {n / load_s:,.0f} | "
          f"{read_1m:.0f} s |")
    print(f"| boosting, {half:,} decisions | {train_half_s:.1f} | {half / train_half_s:,.0f} | |")
    print(f"| boosting, {n:,} decisions | {train_s:.1f} | {n / train_s:,.0f} | {train_1m:.0f} s |")
    upper = train_s * 1_000_000 / n  # a + b·n scaled by 1M/n: an upper bound when a fixed cost a >= 0
    print(f"\n`load_data` / full parse: {load_s / full_parse_s:.1f}x. Extrapolated to 1M decisions: read "
          f"{read_1m:.0f} s + boosting {train_1m:.0f} s (marginal cost between the two sizes; proportional "
          f"scaling of the full size gives {upper:.0f} s) = **{(read_1m + train_1m) / 60:.1f} min** (goal < 2 min).")


if __name__ == "__main__":
    main()
