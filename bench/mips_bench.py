"""MIPS vs IPS: MSE of the value estimate at 1,000 and 10,000 actions (issue 12), on the synthetic problem with an
exactly known truth from ``evaluators.mips_study``; prints a markdown section (docs/mips.md has the full study,
100 -> 10,000 actions with its plot: ``python -m evaluators.mips_study --out docs/``).

    .venv/bin/python -m bench.mips_bench [--n-draws 200]

Every estimator sees the same logs (one seed per draw), so the MSE ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import time

from evaluators.mips_study import Args, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-draws", type=int, default=200, help="independent logs per number of actions")
    ns = parser.parse_args()
    args = Args(n_actions=(1000, 10_000), n_draws=ns.n_draws)
    started = time.perf_counter()
    result = run(args)
    took = time.perf_counter() - started
    print(f"`evaluators.mips_study`: K actions over C = {args.n_embeddings} embeddings, rewards depending on the "
          f"embedding only, {args.n_draws} independent logs of {args.n_events:,} decisions per K, truth computed "
          f"exactly; estimators on the same logs ({took:.0f} s).\n")
    print("| K | estimator | MSE | ± 2 s.e. | bias | mean ESS |")
    print("|---|---|---|---|---|---|")
    for r in result.iter_rows(named=True):
        print(f"| {r['n_actions']:,} | {r['estimator']} | {r['mse']:.2e} | {2 * r['mse_se']:.1e} | {r['bias']:+.4f} | "
              f"{r['mean_ess']:,.0f} |")
    mse = {(r["n_actions"], r["estimator"]): r["mse"] for r in result.iter_rows(named=True)}
    print()
    for k in args.n_actions:
        print(f"- K = {k:,}: IPS / MIPS MSE = **{mse[k, 'ips'] / mse[k, 'mips']:.0f}×**, SNIPS / SNMIPS = "
              f"{mse[k, 'snips'] / mse[k, 'snmips']:.0f}×, DR / MIPS-DR = {mse[k, 'dr'] / mse[k, 'mips_dr']:.0f}×")


if __name__ == "__main__":
    main()
