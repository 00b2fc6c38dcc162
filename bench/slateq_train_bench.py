"""SlateQ offline training throughput: write a simulated log directory, then `recsys-rl train slateq` on it.

The log is written as the service writes it (tests/recsys_rl/slateq/simlog.py: uniformly random slates,
exact propensities, click/dwell/return outcomes). The in-run baseline is the time to read the same log back
(``load``): training is reported as decisions per second next to it, and extrapolated linearly to 1M.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    decisions: int = 100_000  # logged decisions to train on


def main(args: Args = Args()) -> None:
    sys.path.insert(0, str(REPO))
    from tests.recsys_rl.slateq.simlog import write_sim_log

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        write_sim_log(data_dir / "logs", decisions=args.decisions, seed=0)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "recsys_rl.cli", "train", "slateq", "--data-dir", str(data_dir),
                                 "--no-progress"], cwd=REPO, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    per_million = wall * 1_000_000 / args.decisions
    print(f"`recsys-rl train slateq` on {summary['decisions']:,} logged decisions (30 candidates, slate 5), one pass "
          f"({summary['steps']} steps):\n")
    print("| phase | seconds | decisions/s |")
    print("|---|---|---|")
    print(f"| read the log (baseline) | {summary['load_seconds']:.1f} | {summary['decisions'] / summary['load_seconds']:,.0f} |")
    print(f"| train | {summary['train_seconds']:.1f} | {summary['decisions_per_second']:,.0f} |")
    print(f"| whole command (process start, load, train, publish) | {wall:.1f} | {summary['decisions'] / wall:,.0f} |")
    print(f"\nExtrapolated linearly to 1M decisions: **{per_million / 60:.1f} min** (goal < 10 min).")


if __name__ == "__main__":
    main()
