"""LambdaRank baseline: its serving cost per request, Rank with a forced fallback, and training time toward 1M decisions.

Reads top to bottom (CleanRL style). One simulated world (100 candidates per page view, slate 5) gives both the
training log (tests/recsys_rl/slateq/simlog.py: uniformly random slates, exact propensities) and the requests.

1. Scoring, in process, 100 candidates, interleaved per request: the host's baseline_score (the in-run baseline:
   what a fallback costs without a learned baseline), ``LambdaRankBaseline.score`` with its item-row cache warm, and
   its parts (feature matrix without / with the cache, LightGBM predict alone).
2. ``DecisionService.rank`` (what the Rank servicer calls: validate, decide, enqueue the event; no gRPC) on three
   surfaces of one service, interleaved: live (VW decides), forced fallback with the host's baseline, forced
   fallback with the learned baseline (decision budget 1 ns: every decision misses it).
3. Training toward 1M decisions (``recsys-rl train baseline``'s defaults: a sample of at most 200k decisions, log
   read by one process per core, LightGBM on one thread). The read is timed uncapped (1 and 2 worker processes),
   then with the cap's two passes over the log: keys only (cap >= log: nothing dropped) and a cap of 1/5 of the
   log; the two give the read's cost per logged decision (pass 1 + skip) and per kept decision, extrapolated to
   1M logged / 200k kept. Boosting (200 rounds, after a warm-up) on half and all of the decisions gives the cost per
   training decision, extrapolated to the 160k training decisions of a 200k sample (20% held out). A full parse of
   every record is the reference for any reader. Then held-out NDCG@5 against training size (one fixed held-out
   set of 20% of the log): what the cap gives up.
"""

from __future__ import annotations

import os
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
    decisions: int = 100_000  # logged decisions to train on (writing the simulated log dominates the bench's time)
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
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        print(f"writing {args.decisions:,} simulated decisions ...", file=sys.stderr, flush=True)
        write_sim_log(data_dir / "logs", decisions=args.decisions, seed=0, config=sim)

        # --- 3. training ---------------------------------------------------------------------------------------
        logs = data_dir / "logs"
        started = time.perf_counter()
        parsed = sum(1 for _ in iter_records(logs, record_type=LogRecord))
        full_parse_s = time.perf_counter() - started
        read: dict[str, float] = {}
        for name, kwargs in (("w1", {"workers": 1}), ("w2", {"workers": 2}),
                             ("keys", {"workers": workers, "max_decisions": args.decisions}),
                             ("fifth", {"workers": workers, "max_decisions": args.decisions // 5})):
            started = time.perf_counter()
            loaded = load_data(logs, SurfaceConfig(), spec_sample=config.spec_sample, **kwargs)  # type: ignore[arg-type]
            read[name] = time.perf_counter() - started
            if name == "w1":
                data = loaded
            del loaded
        n = data.group.size
        half = n // 2
        half_rows = int(data.group[:half].sum())
        half_data = type(data)(data.spec, data.x[:half_rows], data.label[:half_rows], data.propensity[:half_rows],
                               data.baseline[:half_rows], data.group[:half], data.data_range)
        print("training ...", file=sys.stderr, flush=True)
        train(half_data, TrainConfig(num_rounds=5))  # warm-up: LightGBM's first call pays its own start-up
        half_result = train(half_data, config)
        result = train(data, config)
        train_half_s, train_s = half_result.train_seconds, result.train_seconds
        model_bytes = result.model
        ndcg_by_size = _ndcg_by_size(data, config, (n // 40, n // 20, n // 10, n // 5, n * 2 // 5, n * 4 // 5))

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
    kept = min(config.max_decisions, 1_000_000)
    train_decisions = n - int(round(config.holdout * n))
    per_train = (train_s - train_half_s) / (train_decisions - half_result.report["train_decisions"])
    boost_1m = train_s + per_train * (int(kept * (1 - config.holdout)) - train_decisions)
    per_kept = (read["keys"] - read["fifth"]) / (n - n // 5)  # pass 2's cost of a decision kept
    per_logged = (read["keys"] - per_kept * n) / n  # pass 1 + skipping in pass 2, per logged decision
    read_1m = per_logged * 1_000_000 + per_kept * kept
    print(f"\nTraining on {n:,} logged decisions ({rows:,} served rows, {parsed:,} log records); reads with "
          f"{workers} worker processes unless said:\n")
    print("| phase | seconds | logged decisions/s | 1M logged decisions |")
    print("|---|---|---|---|")
    print(f"| parse every record in full, nothing else (reference: what any reader pays) | {full_parse_s:.1f} | "
          f"{n / full_parse_s:,.0f} | {full_parse_s * 1_000_000 / n:.0f} s (linear) |")
    for key, label in (("w1", "`load_data`, every decision, 1 process (in-run baseline)"),
                       ("w2", "`load_data`, every decision, 2 processes")):
        print(f"| {label} | {read[key]:.1f} | {n / read[key]:,.0f} | {read[key] * 1_000_000 / n:.0f} s (linear) |")
    print(f"| `load_data`, cap >= log: key pass + every decision kept | {read['keys']:.1f} | {n / read['keys']:,.0f} |"
          f" |")
    print(f"| `load_data`, cap = {n // 5:,}: key pass + 1/5 kept | {read['fifth']:.1f} | {n / read['fifth']:,.0f} | "
          f"{per_logged * 1e6:.0f} µs/logged + {per_kept * 1e6:.0f} µs/kept: **{read_1m:.0f} s** at {kept:,} kept |")
    print(f"| boosting ({config.num_rounds} rounds, {config.threads} thread), "
          f"{half_result.report['train_decisions']:,} training decisions | {train_half_s:.1f} | | |")
    print(f"| boosting, {train_decisions:,} training decisions | {train_s:.1f} | | {per_train * 1e6:.0f} µs/decision: "
          f"**{boost_1m:.0f} s** at {int(kept * (1 - config.holdout)):,} |")
    print(f"\nExtrapolated `recsys-rl train baseline` on 1M logged decisions with the default cap: read {read_1m:.0f} s "
          f"+ boosting {boost_1m:.0f} s = **{(read_1m + boost_1m) / 60:.1f} min** (goal < 2 min). Every decision "
          f"instead (no cap): read {read['w1'] * 1_000_000 / n:.0f} s (1 process) + boosting "
          f"{train_s + per_train * (800_000 - train_decisions):.0f} s.\n")
    print(f"Held-out NDCG@5 against training decisions (one held-out set of {n // 5:,} decisions, same boosting; "
          f"host baseline_score {ndcg_by_size['host']:.4f}):\n")
    print("| training decisions | NDCG@5 | top-1 hit rate |")
    print("|---|---|---|")
    for size, (ndcg, hit) in ndcg_by_size["sizes"].items():
        print(f"| {size:,} | {ndcg:.4f} | {hit:.4f} |")


def _ndcg_by_size(data: object, config: object, sizes: tuple[int, ...]) -> dict:
    """NDCG@k and top-1 of models trained on nested random subsets, all scored on one fixed held-out set."""
    from recsys_rl.baseline.model import LambdaRankBaseline
    from recsys_rl.baseline.train import BaselineData, _ndcg_and_hits, train

    assert isinstance(data, BaselineData)
    n = data.group.size
    starts = np.concatenate([[0], np.cumsum(data.group)[:-1]]).astype(np.int64)
    order = np.random.default_rng(1).permutation(n)
    test = np.sort(order[: n // 5])

    def subset(idx: np.ndarray) -> BaselineData:
        rows = np.concatenate([np.arange(starts[i], starts[i] + data.group[i]) for i in idx])
        return BaselineData(data.spec, data.x[rows], data.label[rows], data.propensity[rows], data.baseline[rows],
                            data.group[idx], data.data_range)

    held = subset(test)
    out: dict = {"host": _ndcg_and_hits(held.baseline, held.label, held.group, config.ndcg_k)[0], "sizes": {}}
    for size in sizes:
        part = subset(np.sort(order[n // 5: n // 5 + size]))
        result = train(part, config)  # holds out 20% of the subset itself: trains on the rest
        booster = LambdaRankBaseline(result.model).booster
        out["sizes"][result.report["train_decisions"]] = _ndcg_and_hits(booster.predict(held.x, num_threads=1), held.label, held.group,
                                            config.ndcg_k)
    return out


if __name__ == "__main__":
    main()
