"""IPS vs MIPS as the number of actions grows with the embedding cardinality fixed (Saito & Joachims 2022, Fig. 2).

The problem (:class:`EmbeddingProblem`) has K actions, each with one of C categorical embeddings (balanced, fixed
by the problem seed), and M contexts drawn uniformly. Rewards are Bernoulli with mean q(x, e(a)) =
sigmoid(θ_x · ψ_e + logit(mean_reward)): the action matters only through its embedding (no direct effect), the
assumption under which MIPS is unbiased. The logging policy is softmax over actions of
s_μ(x, a) = score_alignment · g(x, e(a)) + η_μ(x, a) (g = θ_x · ψ_e standardised, η i.i.d. N(0, 1) per action);
the target is ε-greedy on s_π(x, a) = g(x, e(a)) + η_π(x, a): it puts 1 − ε + ε/K on one action, which the
logger reaches with probability ~1/K, so the action weights grow like K while the embedding weights stay ~C.
The truth is exact: V = (1/M) Σ_x Σ_a π(a|x) q(x, e(a)). The reward model for the DR forms is
q̂(x, a) = clip(q(x, e(a)) + N(0, model_error²) per (x, e)), constant within an embedding (so MIPS-DR is unbiased).

    python -m evaluators.mips_study --out docs/       # writes docs/mips.md and docs/mips.png
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from evaluators.embeddings import marginal_propensities
from evaluators.evaluate import estimate
from evaluators.synthetic import _sample, _softmax

ESTIMATORS = ("ips", "snips", "mips", "snmips", "dr", "mips_dr")

REPORT = """# MIPS vs IPS as the number of actions grows

Written by `python -m evaluators.mips_study --out docs/` ({args}).

Marginalised IPS (Saito & Joachims, ICML 2022) weights each logged row by p_π(e|x) / p_μ(e|x), the two policies'
probabilities of the logged item's *embedding* e (a category), instead of π(a|x) / μ(a|x). `evaluators` has it as
`mips`, `snmips` (self-normalised) and `mips_dr` (q̂π + w_e (r − q̂)); formulas, assumptions and the table columns
they read (`embedding_pscore`, `embedding_target_pscore`, optional `action_embedding`) are in
`evaluators/embeddings.py` and `shared/design/feedback-table.md` terms below.

## Setup (known truth)

`evaluators.mips_study.EmbeddingProblem`: K actions spread evenly over C = {args.n_embeddings} embeddings, 50
contexts, Bernoulli rewards whose mean depends on (context, embedding) only (no direct effect of the action: the
assumption MIPS needs). Logging: softmax over actions of a partly aligned score plus per-action noise. Target:
ε-greedy (ε = 0.2) on a second noisy score, so it puts ~0.8 on one action that the logger picks with probability
~1/K: action weights grow like K, embedding weights stay near C. The reward model for `dr`/`mips_dr` is the true
mean plus N(0, 0.1²) per (context, embedding). The true value is computed exactly from the generator's tables
({truths}); each K has {args.n_draws} independent logs of n = {args.n_events} decisions.

![MSE vs number of actions](mips.png)

{table}

{ratios}

## Reading it

- IPS (and DR, which shares its weights) degrade as K grows at fixed n: the target's favourite action is logged
  ~n/K times, so most logs miss it and a few carry weights ~K. MIPS's weights depend on C, not K, and its MSE
  stays flat.
- IPS's mean ESS rises again at 10,000 actions: most logs never contain the target's favourite action, so the
  weights they do carry are small and alike. ESS only describes the weights that were logged; it cannot see the
  target mass the log never reached (here ~80%), which is why the support and weight diagnostics go with MSE-style
  checks on known truth, and why MIPS's weights are the ones to read for large catalogs.
- MIPS is unbiased only when the action affects the reward through its embedding alone; a coarser embedding
  lowers variance and raises that bias (the paper's trade-off). This study has no direct effect by construction.
- Diagnostics and intervals (`estimate(..., ci=...)`) work as for the other estimators, on the marginal weights.

## The table columns (feedback-table terms)

| column | type | meaning |
|---|---|---|
| `action_embedding` | int or str, optional | the logged item's discrete embedding e (category, or a discretised vector) |
| `embedding_pscore` | float | logging policy's probability of any item with embedding e in this slot: Σ over items a with e(a) = e of μ(a), same conditioning as `pscore` |
| `embedding_target_pscore` | float | the same sum under the target policy |

`target_pscore` covers only the logged item, so these cannot be derived from the other columns: the table's
builder sums each policy's full distribution over the candidates sharing the embedding
(`evaluators.add_embedding_propensities(table, logging, target, embedding_of_action)` does it from the (n, K)
distributions). Validation requires `embedding_pscore` ≥ `pscore` and `embedding_target_pscore` ≥
`target_pscore` (the sum includes the logged item), both in [0, 1], and counts support violations on
`embedding_pscore` like on `pscore`.
"""


@dataclass(frozen=True)
class EmbeddingProblem:
    """K actions with C categorical embeddings and a known target value (see module docstring)."""

    n_events: int
    n_actions: int = 1000
    n_embeddings: int = 10
    n_contexts: int = 50
    logging_temperature: float = 1.0
    epsilon: float = 0.2              # the target's uniform share
    score_alignment: float = 0.5
    mean_reward: float = 0.3
    model_error: float = 0.1          # std of the reward model's error per (context, embedding)
    problem_seed: int = 0
    _tables: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_events < 1 or self.n_contexts < 1 or self.n_embeddings < 1 or self.n_actions < self.n_embeddings:
            raise ValueError("parameters 'n_events', 'n_contexts', 'n_embeddings' must be >= 1 and "
                             f"'n_actions' >= n_embeddings, got {self}")
        if not 0 <= self.epsilon <= 1 or not 0 < self.mean_reward < 1 or not self.logging_temperature > 0:
            raise ValueError("parameters 'epsilon' in [0, 1], 'mean_reward' in (0, 1), 'logging_temperature' > 0")
        rng = np.random.default_rng(np.random.SeedSequence(self.problem_seed, spawn_key=(1,)))
        m, k, c = self.n_contexts, self.n_actions, self.n_embeddings
        embedding = rng.permutation(np.arange(k) % c)          # balanced: K/C actions per embedding
        g = rng.normal(size=(m, 4)) @ rng.normal(size=(c, 4)).T
        g = g / g.std()
        q = 1.0 / (1.0 + np.exp(-(g + math.log(self.mean_reward / (1 - self.mean_reward)))))     # (M, C)
        logging = _softmax(self.score_alignment * g[:, embedding] + rng.normal(size=(m, k)), self.logging_temperature)
        best = np.argmax(g[:, embedding] + rng.normal(size=(m, k)), axis=1)
        target = np.full((m, k), self.epsilon / k)
        target[np.arange(m), best] += 1 - self.epsilon
        q_hat = np.clip(q + rng.normal(scale=self.model_error, size=q.shape), 0.01, 0.99)
        object.__setattr__(self, "_tables", {
            "embedding": embedding, "q": q, "logging": logging, "target": target, "q_hat": q_hat,
            "logging_e": marginal_propensities(logging, embedding, c),
            "target_e": marginal_propensities(target, embedding, c),
            "q_hat_target": (target * q_hat[:, embedding]).sum(axis=1),
        })

    @property
    def embedding_of_action(self) -> np.ndarray:
        return self._tables["embedding"]

    @property
    def logging_policy(self) -> np.ndarray:
        """μ(a|x), (n_contexts, n_actions)."""
        return self._tables["logging"]

    @property
    def target_policy(self) -> np.ndarray:
        """π(a|x), (n_contexts, n_actions)."""
        return self._tables["target"]

    @property
    def truth(self) -> float:
        """V(π) = (1/M) Σ_x Σ_a π(a|x) q(x, e(a)), exactly."""
        t = self._tables
        return float((t["target_e"] * t["q"]).sum(axis=1).mean())

    def draw(self, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
        """A feedback table with the embedding columns, and each row's context index (for reference checks)."""
        t = self._tables
        rng = np.random.default_rng(seed)
        n = self.n_events
        context = rng.integers(0, self.n_contexts, n)
        action = _sample(t["logging"], context, rng.random(n))
        e = t["embedding"][action]
        reward = (rng.random(n) < t["q"][context, e]).astype(np.float64)
        table = pl.DataFrame({
            "event_id": np.arange(n).astype(str),
            "position": np.zeros(n, dtype=np.int64),
            "action": action.astype(np.int64),
            "reward": reward,
            "pscore": t["logging"][context, action],
            "target_pscore": t["target"][context, action],
            "action_embedding": e.astype(np.int64),
            "embedding_pscore": t["logging_e"][context, e],
            "embedding_target_pscore": t["target_e"][context, e],
            "q_hat": t["q_hat"][context, e],
            "q_hat_target": t["q_hat_target"][context],
            "reward_min": np.zeros(n),
            "reward_max": np.ones(n),
        })
        return table, context


@dataclass(frozen=True)
class Args:
    """The study's settings (defaults: the figure in docs/mips.md)."""

    n_actions: tuple[int, ...] = (100, 1000, 10_000)   # the x axis
    n_embeddings: int = 10                              # fixed embedding cardinality C
    n_events: int = 3000                                # logged decisions per draw
    n_draws: int = 500                                  # independent logs per K (the MSE's sample)
    problem_seed: int = 0


def run(args: Args) -> pl.DataFrame:
    """One row per (K, estimator): MSE, its standard error, bias and the mean ESS over ``n_draws`` logs."""
    rows = []
    for k in args.n_actions:
        problem = EmbeddingProblem(args.n_events, n_actions=k, n_embeddings=args.n_embeddings,
                                   problem_seed=args.problem_seed)
        truth = problem.truth
        draws = pl.concat([
            estimate(problem.draw(seed)[0], ",".join(ESTIMATORS)).select("estimator", "value", "ess")
            for seed in range(args.n_draws)
        ])
        for name, part in draws.group_by("estimator", maintain_order=True):
            error = part["value"].to_numpy() - truth
            squared = error * error
            rows.append({"n_actions": k, "estimator": name[0], "truth": truth, "mse": float(squared.mean()),
                         "mse_se": float(squared.std(ddof=1) / math.sqrt(squared.size)),
                         "bias": float(error.mean()), "mean_ess": float(part["ess"].mean())})
    return pl.DataFrame(rows)


def write_report(result: pl.DataFrame, args: Args, out: Path) -> None:
    import matplotlib  # only the report needs it (see evaluators/__init__.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ESTIMATORS:
        part = result.filter(pl.col("estimator") == name)
        ax.errorbar(part["n_actions"], part["mse"], yerr=2 * part["mse_se"], marker="o", capsize=3, label=name)
    ax.set(xscale="log", yscale="log", xlabel="number of actions K", ylabel="MSE of the value estimate",
           title=f"C = {args.n_embeddings} embeddings, n = {args.n_events}, {args.n_draws} logs per K")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "mips.png", dpi=110)
    plt.close(fig)
    table = ["| K | estimator | MSE | ± 2 s.e. | bias | mean ESS |", "|---|---|---|---|---|---|"]
    table += [f"| {r['n_actions']:,} | {r['estimator']} | {r['mse']:.2e} | {2 * r['mse_se']:.1e} | {r['bias']:+.4f} | "
              f"{r['mean_ess']:,.0f} |" for r in result.iter_rows(named=True)]
    ratio = result.pivot(on="estimator", index="n_actions", values="mse")
    ratios = [f"K = {r['n_actions']:,}: IPS / MIPS MSE = {r['ips'] / r['mips']:.1f}×, "
              f"SNIPS / SNMIPS = {r['snips'] / r['snmips']:.1f}×" for r in ratio.iter_rows(named=True)]
    truths = ", ".join(f"{r['n_actions']:,} actions: {r['truth']:.4f}"
                       for r in result.unique("n_actions", maintain_order=True).iter_rows(named=True))
    text = REPORT.format(args=args, table="\n".join(table), ratios="\n".join(f"- {line}" for line in ratios),
                         truths=truths)
    (out / "mips.md").write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluators.mips_study", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for mips.md and mips.png")
    parser.add_argument("--n-draws", type=int, default=Args.n_draws, help="logs per number of actions")
    parser.add_argument("--n-events", type=int, default=Args.n_events, help="logged decisions per log")
    ns = parser.parse_args(argv)
    if ns.n_draws < 2 or ns.n_events < 1:
        parser.error("--n-draws must be >= 2 and --n-events >= 1")
    args = Args(n_draws=ns.n_draws, n_events=ns.n_events)
    result = run(args)
    write_report(result, args, ns.out)
    print(result)


if __name__ == "__main__":
    main()
