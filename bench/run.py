"""``make bench``: runs every benchmark in its own process and writes docs/benchmarks.md.

Each benchmark prints a markdown section with its in-run baseline (these machines are noisy: ratios measured in one
run, medians). Progress goes to stderr; ``--only NAME`` runs a subset and replaces only those sections, keeping the
others as they were (each section says when it was measured).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "benchmarks.md"

# (name, module, title) in the order they appear in the document.
BENCHES: list[tuple[str, str, str]] = [
    ("rank", "bench.rank_bench", "Rank latency vs grpc.health Check (issue 2)"),
    ("stages", "bench.stages_bench", "Rank time per stage vs grpc.health Check (issue 11)"),
    ("decision_path", "bench.decision_path_bench", "Rank before and after the single decision path (issue 7)"),
    ("guardrail", "bench.guardrail_bench", "Canary guardrail: detection delay and false reverts (issue 9)"),
    ("shadow", "bench.shadow_bench", "Rank at rollout stage shadow vs live (issue 9)"),
    ("shield", "bench.shield_bench", "Decision path with the shield on vs off (issue 10)"),
    ("metrics", "bench.metrics_bench", "Rank with Prometheus metrics on vs off (issue 11)"),
    ("shield_store", "bench.shield_store_bench", "Run-time shield changes with 1M blocked ids (issue 10)"),
    ("baseline", "bench.baseline_bench", "LambdaRank baseline: serving cost, forced-fallback Rank, training (issue 10)"),
    ("catalog", "bench.catalog_bench", "Rank with ids-only vs full-feature candidates from the item catalog (issue 12)"),
    ("long_term", "bench.long_term_bench", "Slate-RL inference inside Rank (issue 4)"),
    ("slateq_train", "bench.slateq_train_bench", "Slate-RL offline training (issue 4)"),
    ("logging", "bench.logging_bench", "Decision log writer and reader"),
    ("disk_full", "bench.disk_full_bench", "Rank through a full disk (issue 7)"),
    ("overload", "bench.overload_bench", "Rank under overload: queue-aware admission (issue 11)"),
    ("learner", "bench.learner_bench", "Online learner CPU per decision (issue 11)"),
    ("workers", "bench.workers_bench", "Load test: Rank and ReportOutcome with 1 vs 2 serving workers (issue 11)"),
    ("publish", "bench.publish_bench", "Overload tail vs how often the learner publishes (issue 11)"),
    ("sim", "bench.sim_bench", "Simulator speed without the server"),
    ("replay", "bench.replay_bench", "Replay vs serving the same decisions (issue 3)"),
    ("whatif", "bench.whatif_bench", "What-if replay from logged scores vs re-scoring (issue 11)"),
    ("retrieval", "bench.retrieval_bench", "Retrieval from a 1M-item catalog: latency, recall, build, memory (issue 12)"),
    ("evaluators", "bench.evaluators_bench", "Estimators on a 10M-row table (issue 3)"),
    ("mips", "bench.mips_bench", "MIPS vs IPS as the number of actions grows (issue 12)"),
    ("spark", "bench.spark_bench", "Estimators on Spark local[2] vs polars (issue 13)"),
]


def machine(load_at_start: float) -> str:
    """The machine, and its 1-minute load average when the bench started (other jobs share these cores)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return (f"{os.cpu_count()} cores ({cpu}), {mem_kb / 2**20:.0f} GiB, {platform.platform()}, "
            f"Python {platform.python_version()}; load average at start {load_at_start:.2f}")


def _existing_sections() -> dict[str, str]:
    """The sections already in docs/benchmarks.md, by title (kept when --only re-runs others)."""
    if not OUT.is_file():
        return {}
    sections: dict[str, str] = {}
    for chunk in OUT.read_text().split("\n## ")[1:]:
        title = chunk.split("\n", 1)[0].strip()
        sections[title] = f"## {chunk.rstrip()}\n"
    return sections


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=[name for name, _, _ in BENCHES])
    args = parser.parse_args()
    selected = [b for b in BENCHES if not args.only or b[0] in args.only]
    sections: dict[str, str] = _existing_sections() if args.only else {}
    for i, (name, module, title) in enumerate(selected, 1):
        if not (REPO / (module.replace(".", "/") + ".py")).is_file():
            print(f"[{i}/{len(selected)}] {name}: {module} not present, skipped", file=sys.stderr)
            continue
        print(f"[{i}/{len(selected)}] {name}: running {module} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        load_at_start = os.getloadavg()[0]  # not when the section is written: that is the load at its end
        result = subprocess.run([sys.executable, "-m", module], cwd=REPO, stdout=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            body = f"**failed** (exit {result.returncode}); see stderr of `python -m {module}`."
        else:
            body = result.stdout.strip()
        sections[title] = (f"## {title}\n\nCommand: `.venv/bin/python -m {module}` (part of `make bench`; "
                           f"measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine(load_at_start)}; "
                           f"took {elapsed:.0f} s)\n\n{body}\n")
        print(f"[{i}/{len(selected)}] {name}: done in {elapsed:.0f} s", file=sys.stderr, flush=True)
    order = [title for _, _, title in BENCHES] + sorted(set(sections) - {title for _, _, title in BENCHES})
    header = ("# Benchmarks\n\nWritten by `make bench` (`python -m bench.run`; `--only NAME` re-runs one section). "
              "Every figure is compared with a baseline measured in the same run (noisy shared machines: "
              "ratios and medians, not absolute times across runs).\n")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(header + "\n" + "\n".join(sections[t] for t in order if t in sections))
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
