"""``recsys-rl demo``: simulated host traffic through the real server, online learning, logs, a report.

Reads top to bottom. The server is the real ``recsys-rl serve`` in its own process (with its learner process);
this process plays the host backend over gRPC with the simulator (``recsys_rl.sim``), whose users have
context-dependent preferences, so a good policy must use the context. At the end the server is stopped with
SIGTERM (graceful: logs flushed and fsynced) and we read its logs back to report on them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from tqdm import tqdm

from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.sim.host import HostStats, run_host
from recsys_rl.sim import SimConfig, World


CI_METHOD = "auto"  # betting (finite-sample) where weights are heavy or ESS small, normal elsewhere


@dataclass(frozen=True)
class DemoArgs:
    requests: int = 20_000  # simulated page views sent through Rank
    seed: int = 7  # seeds the simulator and the server's draws
    data_dir: str | None = None  # logs and models (default: a new temporary directory, kept for inspection)
    exploration_cap: float = 0.1  # the default surface's exploration cap
    window: int = 2_000  # requests per row of the click-rate table


def start_server(data_dir: Path, *, cap: float, seed: int) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir", str(data_dir),
         "--exploration-cap", str(cap), "--seed", str(seed)],
        stdout=subprocess.PIPE, stderr=open(data_dir / "server.log", "w"), text=True,
    )
    line = server.stdout.readline() if server.stdout else ""
    if not line.startswith("serving on "):
        server.kill()
        raise RuntimeError(f"the server did not start; see {data_dir / 'server.log'}")
    return server, line.split()[-1]


def stop_server(server: subprocess.Popen[str]) -> int:
    server.send_signal(signal.SIGTERM)
    return server.wait(timeout=120)


def plot_click_rate(stats: HostStats, window: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = stats.windows(window)
    x = [w.end for w in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [w.click_rate for w in rows], "o-", label="learned (served, realised)")
    ax.plot(x, [w.expected_click_rate for w in rows], ".--", label="learned (served, expected)")
    ax.plot(x, [w.random_click_rate for w in rows], "s-", label="uniform random (same page views)")
    ax.plot(x, [w.oracle_click_rate for w in rows], "^-", label="myopic oracle (same page views)")
    ax.set_xlabel("requests served")
    ax.set_ylabel("click rate per slate")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("recsys-rl demo: online learning through the real server")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def log_report(data_dir: Path, cap: float) -> str:
    from logging_schema.reader import read_log
    from recsys_rl.serving.registry import ModelRegistry

    result = read_log(data_dir / "logs")
    decisions = result.decisions
    slots = [slot for event in decisions for slot in event.slate]
    explored = sum(slot.explored for slot in slots)
    max_mass = max((slot.exploration_mass for slot in slots), default=0.0)
    modes: dict[int, int] = {}
    for event in decisions:
        modes[event.serving_mode] = modes.get(event.serving_mode, 0) + 1
    versions = ModelRegistry(data_dir / "models").versions("default")
    stats = result.stats
    return "\n".join([
        f"decisions logged       {len(decisions):,} in {stats.segments} segment(s), {stats.bytes / 2**20:.1f} MiB",
        f"outcomes logged        {len(result.outcomes):,} ({sum(o.attributed for o in result.outcomes):,} attributed)",
        f"torn / corrupt records {stats.torn_tail_records} / {stats.corrupt_records}",
        f"serving modes          {', '.join(f'{_mode_name(m)}={n:,}' for m, n in sorted(modes.items()))}",
        f"explored slots         {explored:,} of {len(slots):,} ({explored / max(len(slots), 1):.1%})",
        f"max exploration mass   {max_mass:.4f} (cap {cap})",
        f"model versions         {len(versions)} published (latest {versions[-1] if versions else '-'})",
    ])


TARGETS = ("uniform", "logged@cap=0", "logged@cap=0.2")


def counterfactual_report(data_dir: Path, stats: HostStats, world: World, *, since: float, first_request: int) -> str:
    """Replays the tail of the log (served after ``since``, once learning settled) for three targets, estimates
    their click rate per slate from the logs alone, and sets each estimate beside the simulator's truth.

    ``uniform`` (random slates) is far from the logging policy: its estimate rests on a handful of effective events
    and the verdict says so. ``logged@cap=0`` is what the learning system as it ran (each decision's own model
    version) would have earned with exploration off, ``logged@cap=0.2`` with the cap doubled - the question the
    cap gate asks; these the logs can answer. The truth of each target comes from the simulator: the exact click
    probability of the slates the target would draw on the same page views (``recsys_rl.sim.truth``). Slate
    estimators: standard IPS (joint slate weight: unbiased, high variance) and RIPS (cascade weights: lower
    variance, assumes a click depends only on the items above it).
    """
    import logging

    import polars as pl

    from evaluators import estimate
    from evaluators.replay.run import ReplayStats, replay
    from evaluators.report import render
    from recsys_rl.config import default_config
    from recsys_rl.sim.truth import target_click_rate

    page_views = {r.event_id: r.page_view for r in stats.records[first_request:] if r.page_view is not None}
    surface = default_config().surfaces["default"]
    rows: list[pl.DataFrame] = []
    truths: dict[str, float] = {}
    replay_stats = ReplayStats()
    tables_log = logging.getLogger("logging_schema.tables")
    level = tables_log.level
    tables_log.setLevel(logging.WARNING)  # its per-join INFO line is summed up in one sentence below
    try:
        for spec in TARGETS:
            replay_stats = ReplayStats()
            table = replay(data_dir, spec, progress=False, since=since, stats=replay_stats)
            result = estimate(table, ["standard_ips", "rips"], ci=CI_METHOD, alpha=0.05)
            rows.append(result.with_columns(pl.lit(spec).alias("target")))
            (data_dir / f"counterfactual-{spec.replace('@', '_').replace('=', '')}.html").write_text(
                render(result, "html", weights=(table["slate_target_pscore"] / table["slate_pscore"]).to_numpy()))
            truths[spec] = target_click_rate(data_dir, spec, world, page_views, surface=surface).click_rate
    finally:
        tables_log.setLevel(level)
    lines = [f"{'target':16} {'estimator':13} {'click rate':>10} {'95% interval':>20} {'ESS':>7} {'truth':>6}  verdict"]
    for row in pl.concat(rows).iter_rows(named=True):
        truth = truths[row["target"]]
        covered = row["ci_low"] <= truth <= row["ci_high"]
        verdict = row.get("verdict", "ok")
        note = f"UNRELIABLE: {row.get('reasons', '')}" if verdict != "ok" else (
            "ok, covers the truth" if covered else "ok, MISSES the truth")
        lines.append(f"{row['target']:16} {row['estimator']:13} {row['value']:10.3f} "
                     f"[{row['ci_low']:8.3f}, {row['ci_high']:8.3f}] {row['ess']:7.0f} {truth:6.3f}  {note}")
    orphans = replay_stats.join.orphan_outcomes
    lines.append(f"truth = the simulator's exact click rate of the slates each target would draw on these {len(page_views):,} "
                 f"page views; intervals: {CI_METHOD} (finite-sample where the weights are heavy).")
    if orphans:
        lines.append(f"{orphans:,} outcomes in the log belong to decisions before this window and are not part of "
                     "these estimates.")
    lines.append("standard IPS is unbiased but needs the logged slate to match the target's; RIPS trades that for the "
                 "cascade assumption (a click depends on the items above it), which this simulator's choice over the "
                 "whole slate breaks, so RIPS can be biased here - the reason analysts look at several estimators.")
    return "\n".join(lines)


def rollout_section(data_dir: Path, requests: int, seed: int) -> None:
    """The staged rollout (``recsys_rl.sim.rollout_demo``) on a budget proportional to the demo's: the policy the
    learning phase trained walks baseline → shadow → canary → live; then a bad canary is reverted by the guardrail.
    Each scenario has its own server and data dir (``rollout-*`` under the demo's)."""
    from recsys_rl.sim.rollout_demo import ScenarioArgs, format_revert, plot_scenario, run_bad, run_good, train_model

    chunk = max(25, min(100, requests // 100))
    good = ScenarioArgs(requests=requests // 4, seed=seed, chunk=chunk)
    result = run_good(good, data_dir / "rollout-good", data_dir / "models" / "default")
    if result.too_little_traffic:
        print(f"too little traffic to leave {result.too_little_traffic}: the demo's --requests {requests:,} gives "
              f"this scenario {good.requests:,} page views; the walk stops there.")
    print(f"final stage: {result.final_stage}")
    plot = data_dir / "rollout-good.png"
    plot_scenario(result, plot, title="Staged rollout of a learned policy that beats the baseline")
    print(f"plot: {plot}")
    print()
    bad = ScenarioArgs(requests=requests // 5, seed=seed, chunk=chunk)
    if bad.requests < 4 * bad.min_decisions:
        print(f"Scenario 2 (automatic revert) skipped: it needs at least {4 * bad.min_decisions:,} page views "
              f"(--requests {20 * bad.min_decisions:,}), --requests {requests:,} gives it {bad.requests:,}.")
        return
    print(f"Training the bad model: {requests // 10:,} page views on a surface that rewards a click with -1 ...")
    model = train_model(data_dir / "rollout-bad-train", requests=requests // 10, click_weight=-1.0, seed=seed)
    result = run_bad(bad, data_dir / "rollout-bad", model)
    if result.revert_entry is not None:
        at = next(at for at, label in result.marks if label == "automatic revert")
        print(f"reverted automatically after {at:,} page views of the canary; the audit entry:")
        print(format_revert(result.revert_entry))
    else:
        print(f"not reverted within {bad.requests:,} page views (final stage {result.final_stage})")
    plot = data_dir / "rollout-bad.png"
    plot_scenario(result, plot, title="A canary worse than control, reverted by the guardrail")
    print(f"plot: {plot}")


def _mode_name(mode: int) -> str:
    from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

    return pb.ServingMode.Name(mode).removeprefix("SERVING_MODE_").lower()


def run_demo(args: DemoArgs) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="recsys-rl-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"recsys-rl demo: {args.requests:,} simulated requests through the real server; data in {data_dir}")
    started = time.perf_counter()
    server, address = start_server(data_dir, cap=args.exploration_cap, seed=args.seed)
    try:
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.RankingServiceStub(channel)
        world = World(SimConfig(), seed=args.seed)
        # The counterfactual report replays the last quarter of the traffic, when learning has settled.
        replay_from = {"request": args.requests * 3 // 4, "time": time.time()}
        with tqdm(total=args.requests, unit="req", desc="host traffic", file=sys.stderr) as bar:
            def progress(done: int, total: int) -> None:
                bar.update(done - bar.n)
                if done <= replay_from["request"]:
                    replay_from["time"] = time.time()

            stats = run_host(stub, world, n_requests=args.requests, progress=progress, keep_page_views=True)
        channel.close()
    finally:
        code = stop_server(server)
    elapsed = time.perf_counter() - started
    if code != 0:
        print(f"server exited with {code}; see {data_dir / 'server.log'}", file=sys.stderr)
        return 1
    plot = data_dir / "click_rate.png"
    plot_click_rate(stats, args.window, plot)
    rows = stats.windows(args.window)
    first, last = rows[0], rows[-1]
    print()
    print("Click rate per slate over time (served = this server; random and oracle on the same page views):")
    print(stats.format_windows(args.window))
    print()
    print(f"last window: learned {last.click_rate:.3f} vs uniform random {last.random_click_rate:.3f} "
          f"({last.click_rate / max(last.random_click_rate, 1e-9):.2f}x) vs myopic oracle "
          f"{last.oracle_click_rate:.3f}; first window {first.click_rate:.3f}")
    print()
    print("Logs:")
    print(log_report(data_dir, args.exploration_cap))
    print()
    print(f"Counterfactual estimates from the last {args.requests - replay_from['request']:,} logged decisions "
          "(replay → evaluators; HTML reports in the data dir):")
    print(counterfactual_report(data_dir, stats, world, since=replay_from["time"],
                                first_request=replay_from["request"]))
    print()
    print(f"plot: {plot}")
    print()
    print("Staged rollout (recsys-rl rollout show|set against a real server; data in rollout-* dirs):")
    rollout_started = time.perf_counter()
    rollout_section(data_dir, args.requests, args.seed)
    print(f"staged rollout section: {time.perf_counter() - rollout_started:.0f} s")
    print()
    print(f"{args.requests:,} requests in {elapsed:.0f} s ({args.requests / elapsed:.0f} req/s end to end)")
    return 0
