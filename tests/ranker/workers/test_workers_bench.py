"""Smoke test: the load test (bench/workers_bench.py with bench/loadgen.py) against real ``serve --workers 1``
and ``--workers 2`` on a tiny budget: every phase answers, outcomes reach their owner, the report is complete."""

from __future__ import annotations

import numpy as np

from bench.rank_bench import Args as RankArgs
from bench.rank_bench import make_request
from bench.workers_bench import PHASES, Args, Phase, markdown, run_config


def test_load_test_drives_both_configurations_and_reports_every_section() -> None:
    args = Args(rounds=1, phase_s=0.5, warmup_s=0.5, sweep_callers=(1, 2), sweep_s=0.3, requests=50,
                attribution_window_s=0.2, catch_up_limit_s=30.0)
    rng = np.random.default_rng(0)
    payloads = [make_request(rng, RankArgs(), i).SerializeToString() for i in range(args.requests)]
    results = {(workers, 10): [run_config(workers, 10, payloads, args, sweep=True)] for workers in (1, 2)}

    for (workers, _), (result,) in results.items():
        for name in PHASES:
            phase = result[name]
            assert isinstance(phase, Phase)
            assert phase.load.ranks_ok > 0, (workers, name, phase.load.rank_results)
            assert phase.usage.cpu_s["workers"] > 0 and phase.usage.cpu_s["client"] > 0
            # The learner (at the default niceness) learned every decision after the phase, window + grace at least.
            assert 1.2 <= phase.catch_up_s < 30.0 and 0.0 <= phase.learned_share <= 1.0, (workers, name, phase)
        maximum = result["maximum"]
        assert isinstance(maximum, Phase)
        # The server's own count (metrics, summed over workers) sees the Ranks the client saw answered.
        assert maximum.metrics["recsys_rl_rank_seconds_count", "OK"] >= 0.9 * maximum.load.ranks_ok
        tail = result["tail"]
        assert isinstance(tail, Phase)
        assert tail.load.outcomes > 0
        assert tail.load.outcome_results["attributed"] == tail.load.outcomes, tail.load.outcome_results
        worker_count = result["spread"]
        if workers == 1:
            assert not tail.load.outcome_ms["forwarded"]
        else:
            assert set(worker_count) == {"w0", "w1"}, worker_count  # type: ignore[arg-type]
            assert tail.load.outcome_ms["forwarded"] and tail.load.outcome_ms["local"]
        assert 100 < result["log_bytes_per_rank"] < 100_000  # type: ignore[operator]
        assert any(role == "learner" for role, _, _ in result["memory"])  # type: ignore[attr-defined]

    report = markdown(results, args)
    for heading in ("**Maximum throughput**", "**2 workers / 1 worker, learner at +10: Rank/s x", "**Tail at 80% of the maximum**",
                    "**Overload: 4x the saturating callers**", "**Outcomes**", "Memory at the end"):
        assert heading in report
    assert "nan" not in report
