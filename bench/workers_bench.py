"""Load test: Rank and ReportOutcome against ``serve --workers 1`` and ``--workers 2`` in one run (issue 11).

Reads top to bottom (CleanRL style). Each configuration is the real ``recsys-rl serve`` (parent, workers, the
online learner, ``--metrics-port``) on a fresh data dir, on loopback; this process is the load generator
(``bench.loadgen``: asyncio, pre-serialized requests, a click reported for ``outcome_share`` of the decisions on
another connection than its Rank). Per configuration and round, on one warm server:

1. maximum: closed loop, ``callers_per_worker`` callers per worker (what saturates one: round 1 also sweeps it);
2. tail: open loop at ``open_loop_share`` x the maximum just measured, latency from each call's scheduled send;
3. overload: closed loop with ``overload_factor`` x the saturating callers (p99 against the decision budget).

After each phase the load stops until the online learner has learned every decision served (its progress file,
``D/run/learner.json``, against the server's count of logged decisions): the phase's **learned** share at its end
and this **catch-up** time show what serving first (``serve --learner-nice``, default 10) costs learning. Each
learner niceness in ``learner_nices`` is a configuration of its own.

Configurations alternate for ``rounds``; figures are medians over rounds and 2-vs-1 ratios are ratios of those
medians. Who used the cores in each phase is measured (the client by getrusage, the server's processes and the
machine from /proc), as are the fallbacks by reason (the server's own metrics), each process's memory and the log
bytes per decision. The run stops by itself; the default takes about 8 minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench import procstat
from bench.loadgen import LoadClient, PhaseResult
from bench.rank_bench import Args as RankArgs
from bench.rank_bench import make_request
from ranker.workers.layout import read_status
from recsys_rl.config import DEFAULT_SURFACE, default_config

REPO = Path(__file__).resolve().parents[1]
PHASES = ("maximum", "tail", "overload")
# Whose CPU a process's counts as: the parent's column also holds the resource tracker (and anything else).
ROLE_CPU = {"worker": "workers", "learner": "learner"}


@dataclass
class Args:
    rounds: int = 3  # 1, 2, 1, 2, 1, 2 workers
    phase_s: float = 5.0  # timed load per phase
    warmup_s: float = 3.0  # untimed load on a fresh server (caches, VW, the learner's first window); 1 s before the open loop
    # Saturating concurrency. A worker decides one Rank at a time (VW holds the GIL), but with fewer calls in
    # flight it waits for the client between them: the sweep shows 4 reaching the plateau with ~all decisions learned.
    callers_per_worker: int = 4
    overload_factor: int = 4  # the overload phase runs this many times the saturating callers
    open_loop_share: float = 0.8  # the tail phase's rate, as a share of the maximum measured just before
    outcome_share: float = 0.3  # decisions that get a click reported
    connections: int = 16  # SO_REUSEPORT spreads connections over workers: enough that the split is not lopsided
    deadline_s: float = 0.5  # every call's gRPC deadline, as a host would set
    sweep_callers: tuple[int, ...] = (1, 2, 4, 8)  # callers per worker tried in round 1
    sweep_s: float = 2.0
    requests: int = 2_000  # distinct pre-built Rank requests, cycled
    # The default surface with a short attribution window, so that the learner learns (it learns a decision once
    # its window has closed) through most of each ~20 s server life, as it does in steady state. A longer window
    # (5 s by default) delays learning without changing its rate; the learner holds rate x window decisions.
    attribution_window_s: float = 2.0
    learner_nices: tuple[int, ...] = (10, 0)  # serve --learner-nice: the default first, then the learner as serving
    catch_up_limit_s: float = 120.0  # the longest the bench waits after a phase for the learner to learn it all


@dataclass
class Usage:
    """CPU seconds by who used them, between two snapshots."""

    wall_s: float = 0.0
    cpu_s: Counter[str] = field(default_factory=Counter)  # workers, learner (and parent), client, other jobs


@dataclass
class Phase:
    load: PhaseResult
    usage: Usage
    metrics: Counter[tuple[str, str]]  # (sample name, label value of interest) -> increase over the phase
    learned_share: float = float("nan")  # of the decisions the phase logged, those the learner learned by its end
    catch_up_s: float = float("nan")  # from the phase's end until the learner had learned every logged decision


class Server:
    """A running ``recsys-rl serve --workers N --metrics-port 0`` on a fresh data dir."""

    def __init__(self, workers: int, data_dir: Path, config: Path, learner_nice: int) -> None:
        self.workers = workers
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--workers", str(workers),
             "--data-dir", str(data_dir), "--config", str(config), "--metrics-port", "0",
             "--learner-nice", str(learner_nice)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.address = self.process.stdout.readline().split()[-1]  # type: ignore[union-attr]
        self.metrics_url = f"http://{self.process.stdout.readline().split()[-1]}/metrics"  # type: ignore[union-attr]

    def worker_pids(self) -> list[int]:
        if self.workers == 1:
            return [self.process.pid]  # the single-process server serves itself
        status = read_status(self.data_dir) or {}
        return [int(pid) for pid in status.get("pids", {}).values()]  # type: ignore[union-attr]

    def roles(self) -> list[tuple[str, int]]:
        """(role, pid) of every process of this server: workers, parent, learner, resource tracker."""
        workers = self.worker_pids()
        found = [("worker", pid) for pid in workers]
        for pid in procstat.descendants(self.process.pid):
            if pid not in workers:
                command = procstat.command(pid)
                found.append(("parent" if pid == self.process.pid else "learner" if "spawn_main" in command
                              else "resource tracker" if "resource_tracker" in command else "other", pid))
        return found

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)

    def scrape(self) -> Counter[tuple[str, str]]:
        """The counters this bench reads, summed over every worker (the exporter is multiprocess)."""
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        wanted = {"recsys_rl_rank_seconds_count": "code", "recsys_rl_fallbacks_total": "reason",
                  "recsys_rl_outcomes_total": "result", "recsys_rl_report_outcome_seconds_count": "code",
                  "recsys_rl_log_written_bytes_total": "", "recsys_rl_decisions_unlogged_total": ""}
        values: Counter[tuple[str, str]] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    values[sample.name, sample.labels.get(wanted[sample.name], "")] += sample.value
        return values

    def learner_done(self) -> int:
        """Decisions the learner has read and learned so far (its progress file; 0 before it writes one)."""
        try:
            state = json.loads((self.data_dir / "run" / "learner.json").read_text())
        except (OSError, ValueError):
            return 0
        return sum(s["seen"] - s["pending"] for s in state["surfaces"].values())

    def cpu_snapshot(self) -> Counter[str]:
        """CPU seconds so far of the workers, the rest of the server, this client and the whole machine."""
        cpu: Counter[str] = Counter()
        for role, pid in self.roles():
            cpu[ROLE_CPU.get(role, "parent")] += procstat.cpu_s(pid)
        cpu["client"] = procstat.own_cpu_s()
        cpu["machine"] = procstat.machine_busy_s()
        cpu["wall"] = time.perf_counter()
        return cpu


def logged(metrics: Counter[tuple[str, str]]) -> float:
    """Decisions the server logged: Ranks answered OK minus those served unlogged (the log refusing records)."""
    return metrics["recsys_rl_rank_seconds_count", "OK"] - metrics["recsys_rl_decisions_unlogged_total", ""]


async def measure(server: Server, load: Awaitable[PhaseResult], limit_s: float) -> Phase:
    """Runs one phase (``load`` drives it) and records who used the CPU and what the server counted meanwhile,
    then waits (no load, at most ``limit_s``) until the learner has learned every decision logged so far."""
    metrics_before = await asyncio.to_thread(server.scrape)
    done_before = server.learner_done()
    cpu_before = server.cpu_snapshot()
    result = await load
    cpu_after = server.cpu_snapshot()
    ended = time.perf_counter()
    done_at_end = server.learner_done()
    totals = await asyncio.to_thread(server.scrape)
    metrics = totals.copy()
    metrics.subtract(metrics_before)
    usage = Usage(wall_s=cpu_after["wall"] - cpu_before["wall"])
    for who in ("workers", "learner", "parent", "client"):
        usage.cpu_s[who] = cpu_after[who] - cpu_before[who]
    usage.cpu_s["other jobs"] = max(0.0, cpu_after["machine"] - cpu_before["machine"] - sum(usage.cpu_s.values()))
    learned_share = (done_at_end - done_before) / max(1.0, logged(metrics))
    return Phase(result, usage, metrics, learned_share, await catch_up(server, totals, ended, limit_s))


async def catch_up(server: Server, totals: Counter[tuple[str, str]], since: float, limit_s: float) -> float:
    """Seconds from ``since`` (perf_counter) until the learner has learned every decision ``totals`` counts as
    logged; inf past ``limit_s``. The progress file is rewritten every 0.25 s: that is the resolution."""
    while time.perf_counter() - since < limit_s:
        if server.learner_done() >= logged(totals):
            return time.perf_counter() - since
        await asyncio.sleep(0.05)
    return float("inf")


def run_config(workers: int, learner_nice: int, payloads: list[bytes], args: Args, *,
               sweep: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "surfaces.toml"
        config.write_text(f"[surfaces.{DEFAULT_SURFACE}.reward]\n"
                          f"attribution_window_seconds = {args.attribution_window_s}\n")
        data_dir = Path(tmp) / "data"
        server = Server(workers, data_dir, config, learner_nice)
        try:
            result = asyncio.run(_drive(server, payloads, args, sweep=sweep))
            result["memory"] = [(role, *procstat.memory_mib(pid)) for role, pid in server.roles()]
            totals = server.scrape()
            decisions = sum(v for (name, _), v in totals.items() if name == "recsys_rl_rank_seconds_count")
            result["log_bytes_per_rank"] = totals["recsys_rl_log_written_bytes_total", ""] / max(1.0, decisions)
        finally:
            server.stop()
        models = data_dir / "models" / DEFAULT_SURFACE
        result["model_versions"] = sum(1 for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))
        result["model_bytes"] = max(p.stat().st_size for p in models.rglob("model.bin"))
    return result


async def _drive(server: Server, payloads: list[bytes], args: Args, *, sweep: bool) -> dict[str, object]:
    client = LoadClient(server.address, payloads, connections=args.connections, outcome_share=args.outcome_share,
                        deadline_s=args.deadline_s)
    saturating = args.callers_per_worker * server.workers
    try:
        await client.connect()
        await client.closed_loop(saturating, 0.0, warmup_s=args.warmup_s)
        swept = {}
        if sweep:
            for per_worker in args.sweep_callers:
                swept[per_worker] = (await client.closed_loop(per_worker * server.workers, args.sweep_s)).rank_rate
        limit_s = args.catch_up_limit_s
        await catch_up(server, await asyncio.to_thread(server.scrape), time.perf_counter(), limit_s)  # a clean start
        maximum = await measure(server, client.closed_loop(saturating, args.phase_s), limit_s)
        rate = args.open_loop_share * maximum.load.rank_rate
        tail = await measure(server, client.open_loop(rate, args.phase_s, warmup_s=1.0), limit_s)
        overload = await measure(server, client.closed_loop(args.overload_factor * saturating, args.phase_s), limit_s)
    finally:
        await client.close()
    return {"workers": server.workers, "saturating": saturating, "spread": Counter(client.connection_worker),
            "sweep": swept,
            "maximum": maximum, "tail": tail, "overload": overload, "offered": rate}


def figures(r: dict[str, object]) -> dict[str, float]:
    """The figures of one configuration's round, by name (the report shows the median of each over rounds)."""
    maximum, tail, overload = (r[name] for name in PHASES)
    assert isinstance(maximum, Phase) and isinstance(tail, Phase) and isinstance(overload, Phase)
    f: dict[str, float] = {"offered": r["offered"]}  # type: ignore[dict-item]
    for name, phase in zip(PHASES, (maximum, tail, overload)):
        load, calls = phase.load, max(1, len(phase.load.rank_ms))
        served = phase.metrics["recsys_rl_rank_seconds_count", "OK"]  # by the server, over the same window as CPU
        fallbacks = {reason: n for (metric, reason), n in phase.metrics.items() if metric == "recsys_rl_fallbacks_total"}
        f |= {f"{name} rate": load.rank_rate, f"{name} p50": load.rank_percentile(50),
              f"{name} p99": load.rank_percentile(99), f"{name} learned": load.rank_results["learned"] / calls,
              f"{name} fallback": load.rank_results["baseline_fallback"] / calls,
              f"{name} queued": fallbacks.get("queued", 0.0) / max(1.0, served),
              f"{name} other fallback": sum(n for k, n in fallbacks.items() if k != "queued") / max(1.0, served),
              f"{name} exhausted": load.rank_results["resource_exhausted"],
              f"{name} exhausted share": load.rank_results["resource_exhausted"] / calls,
              f"{name} other errors": calls - load.ranks_ok - load.rank_results["resource_exhausted"],
              f"{name} per worker core": served / max(1e-9, phase.usage.cpu_s["workers"]),
              f"{name} learner ms": phase.usage.cpu_s["learner"] / max(1.0, served) * 1e3,
              f"{name} learner learned": phase.learned_share, f"{name} catch-up s": phase.catch_up_s}
        f |= {f"{name} cpu {who}": cpu / phase.usage.wall_s for who, cpu in phase.usage.cpu_s.items()}
    outcomes = tail.load
    f |= {"outcomes/s": outcomes.outcomes / outcomes.span_s,
          "forwarded": len(outcomes.outcome_ms["forwarded"]) / max(1, outcomes.outcomes),
          "attributed": outcomes.outcome_results["attributed"] / max(1, outcomes.outcomes),
          "outcome errors": outcomes.outcomes - outcomes.outcome_results["attributed"]
          - outcomes.outcome_results["unattributed"],
          "log bytes per rank": r["log_bytes_per_rank"], "model versions": r["model_versions"],  # type: ignore[dict-item]
          "model MiB": r["model_bytes"] / 2**20}  # type: ignore[operator]
    for path, latencies in outcomes.outcome_ms.items():
        f |= {f"{path} p50": _percentile(latencies, 50), f"{path} p99": _percentile(latencies, 99)}
    return f


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


Config = tuple[int, int]  # (workers, learner niceness)


def markdown(results: dict[Config, list[dict[str, object]]], args: Args, *, load: tuple[float, float] = (0.0, 0.0)) -> str:
    """``load``: the machine's 1-minute load average at the start and end of the run (other jobs share it)."""
    rank = RankArgs()
    budget_ms = default_config().surfaces[DEFAULT_SURFACE].decision_budget_ms
    window_s = args.attribution_window_s + 1.0  # the learner's grace (recsys_rl.serving.learner._GRACE_S)
    ideal = max(0.0, (args.phase_s - window_s) / args.phase_s)
    rounds = {c: [figures(r) for r in rs] for c, rs in results.items()}
    m = {c: {key: statistics.median(f[key] for f in fs) for key in fs[0]} for c, fs in rounds.items()}
    saturating = {c: rs[0]["saturating"] for c, rs in results.items()}
    nices = sorted({nice for _, nice in results}, reverse=True)
    cpu = ("cpu workers", "cpu learner", "cpu parent", "cpu client", "cpu other jobs")

    def learner(f: dict[str, float], phase: str) -> str:
        return f"{f[f'{phase} learner learned']:.0%} | {f[f'{phase} catch-up s']:.1f}"

    lines = [
        f"The real `recsys-rl serve --workers N --learner-nice L --metrics-port 0` (its learner running) on loopback, "
        f"driven by one "
        f"asyncio client process (`bench/loadgen.py`: {args.connections} connections, pre-serialized Rank requests "
        f"with {rank.n_candidates} candidates, slate {rank.slate_size}, sent as bytes through a raw "
        f"`unary_unary`; a click reported on {args.outcome_share:.0%} of the decisions, each on another connection "
        f"than its Rank; deadline {args.deadline_s * 1e3:g} ms on every call). Per configuration and round, on one "
        f"server after {args.warmup_s:g} s warm-up, {args.phase_s:g} s each: **maximum** (closed loop, "
        f"{args.callers_per_worker} callers per worker), **tail** (open loop at {args.open_loop_share:.0%} of that "
        f"round's maximum, latency from each call's scheduled send), **overload** (closed loop, "
        f"{args.overload_factor}x the saturating callers). After each phase (and before the first) the load stops "
        "until the online learner has learned every decision logged. Configurations: 1 and 2 workers, each with the "
        "learner at niceness " + " and ".join(f"+{n}" for n in nices) + f" (`--learner-nice`), alternated for "
        f"{args.rounds} rounds; figures are medians over rounds, ratios are ratios of those medians. CPU is in cores "
        "(CPU seconds per wall second) over the phase: the workers, the learner, the parent (supervision, metrics "
        "exporter), this client, and every other process on the machine (`/proc/stat` minus ours). Rank/s per "
        "worker core and the learner's CPU per decision are what scale to other machines (docs/scaling.md). "
        f"Load average (1 min) at the start of the run {load[0]:.2f}, at its end {load[1]:.2f}.",
        "",
        f"**learner: learned by end**: of the decisions a phase logged, the share the learner had learned when the "
        f"phase ended. A decision is learned once its attribution window ({args.attribution_window_s:g} s here) and "
        f"the learner's 1 s grace have passed, so a learner that keeps up shows about {ideal:.0%} "
        f"(({args.phase_s:g} - {window_s:g}) / {args.phase_s:g}). **catch-up s**: from the phase's end until it had "
        f"learned every decision served; {window_s:g} s when it keeps up, more when it fell behind (inf: not within "
        f"{args.catch_up_limit_s:g} s).",
        "",
        "**Maximum throughput** (closed loop)",
        "",
        "| workers | learner nice | callers | Rank/s | learned | p50 ms | p99 ms | Rank/s each round | CPU: workers | "
        "learner | parent | client | other jobs | Rank/s per worker core | learner CPU ms per Rank | "
        "learner: learned by end | catch-up s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (w, nice), f in m.items():
        each = ", ".join(f"{r['maximum rate']:.0f}" for r in rounds[w, nice])
        lines.append(f"| {w} | +{nice} | {saturating[w, nice]} | {f['maximum rate']:.0f} | "
                     f"{f['maximum learned']:.1%} | {f['maximum p50']:.1f} | {f['maximum p99']:.1f} | {each} | "
                     + " | ".join(f"{f[f'maximum {c}']:.2f}" for c in cpu)
                     + f" | {f['maximum per worker core']:.0f} | {f['maximum learner ms']:.2f} | "
                     + learner(f, "maximum") + " |")
    lines.append("")
    for nice in nices:
        one, two = m[1, nice], m[2, nice]
        per_round = statistics.median(b["maximum rate"] / a["maximum rate"]
                                      for a, b in zip(rounds[1, nice], rounds[2, nice]))
        lines.append(
            f"**2 workers / 1 worker, learner at +{nice}: Rank/s x{two['maximum rate'] / one['maximum rate']:.2f}** "
            f"(ratio of medians; median of the per-round ratios x{per_round:.2f}; issue 11's goal x1.6). With 2 "
            f"workers the workers got {two['maximum cpu workers']:.2f} of the {os.cpu_count()} cores, the learner "
            f"{two['maximum cpu learner']:.2f}, the client {two['maximum cpu client']:.2f} and other jobs "
            f"{two['maximum cpu other jobs']:.2f}.")
        lines.append("")
    sweep = "; ".join(f"{w} worker(s), +{nice}: " + ", ".join(f"{c}: {v:.0f}" for c, v in rs[0]["sweep"].items())  # type: ignore[attr-defined]
                      for (w, nice), rs in results.items() if rs[0]["sweep"])
    lines += [f"Round 1's sweep, Rank/s by callers per worker ({args.sweep_s:g} s each): {sweep}."]
    lines += ["", f"**Tail at {args.open_loop_share:.0%} of the maximum** (open loop)", "",
              "| workers | learner nice | offered Rank/s | answered Rank/s | p50 ms | p99 ms | baseline fallbacks | "
              "RESOURCE_EXHAUSTED | CPU: workers | learner | parent | client | other jobs | learner: learned by end | "
              "catch-up s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (w, nice), f in m.items():
        lines.append(f"| {w} | +{nice} | {f['offered']:.0f} | {f['tail rate']:.0f} | {f['tail p50']:.1f} | "
                     f"{f['tail p99']:.1f} | {f['tail fallback']:.1%} | {f['tail exhausted']:.0f} | "
                     + " | ".join(f"{f[f'tail {c}']:.2f}" for c in cpu) + " | " + learner(f, "tail") + " |")
    lines += ["", f"**Overload: {args.overload_factor}x the saturating callers** (closed loop; surface `default`, "
                  f"decision budget {budget_ms:g} ms, so the goal is p99 <= {2 * budget_ms:g} ms)", "",
              "| workers | learner nice | callers | Rank/s | p50 ms | p99 ms | p99 / budget | learned | queued fallbacks | "
              "other fallbacks | RESOURCE_EXHAUSTED | other errors | CPU: workers | learner | learner: learned by end "
              "| catch-up s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (w, nice), f in m.items():
        lines.append(f"| {w} | +{nice} | {args.overload_factor * saturating[w, nice]} | {f['overload rate']:.0f} | "  # type: ignore[operator]
                     f"{f['overload p50']:.1f} | {f['overload p99']:.1f} | {f['overload p99'] / budget_ms:.2f} | "
                     f"{f['overload learned']:.1%} | {f['overload queued']:.1%} | {f['overload other fallback']:.1%} | "
                     f"{f['overload exhausted']:.0f} ({f['overload exhausted share']:.1%}) | "
                     f"{f['overload other errors']:.0f} | {f['overload cpu workers']:.2f} | "
                     f"{f['overload cpu learner']:.2f} | " + learner(f, "overload") + " |")
    lines += ["", f"**Outcomes** (during the tail phase: {args.outcome_share:.0%} of decisions, each on another "
                  "connection than its Rank)", "",
              "| workers | learner nice | outcomes/s | forwarded to the owner | p50 / p99 ms where they landed | "
              "p50 / p99 ms forwarded | attributed | errors |", "|---|---|---|---|---|---|---|---|"]
    for (w, nice), f in m.items():
        forwarded = f"{f['forwarded p50']:.1f} / {f['forwarded p99']:.1f}" if f["forwarded"] else "-"
        lines.append(f"| {w} | +{nice} | {f['outcomes/s']:.0f} | {f['forwarded']:.0%} | {f['local p50']:.1f} / "
                     f"{f['local p99']:.1f} | {forwarded} | {f['attributed']:.1%} | {f['outcome errors']:.0f} |")
    memory = "; ".join(f"{w} worker(s), +{nice}: " + ", ".join(f"{role} {rss:.0f}/{pss:.0f}" for role, rss, pss in
                                                                rs[-1]["memory"])  # type: ignore[attr-defined]
                       for (w, nice), rs in results.items())
    spread = "; ".join(f"{w}, +{nice}: " + ", ".join(f"{k}: {v}" for k, v in sorted(rs[-1]["spread"].items()))  # type: ignore[attr-defined]
                       for (w, nice), rs in results.items())
    lines += ["", f"Memory at the end of the last round, RSS/PSS MiB per process: {memory}. Log written per Rank "
                  f"(its decision record, and outcome records for {args.outcome_share:.0%} of them): "
              + "; ".join(f"{w} worker(s), +{nice} {f['log bytes per rank']:,.0f} B" for (w, nice), f in m.items())
              + "; model versions the learner published per server: "
              + "; ".join(f"{w} worker(s), +{nice} {f['model versions']:.0f}" for (w, nice), f in m.items())
              + f" (`model.bin` {max(f['model MiB'] for f in m.values()):.1f} MiB)"
              + f". Connections per worker (last round): {spread}."]
    return "\n".join(lines)


def main() -> None:
    args = Args()
    load_at_start = os.getloadavg()[0]
    print(f"load average at the start {load_at_start:.2f}", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    payloads = [make_request(rng, RankArgs(), i).SerializeToString() for i in range(args.requests)]
    results: dict[Config, list[dict[str, object]]] = {(w, n): [] for n in args.learner_nices for w in (1, 2)}
    for round_ in range(args.rounds):
        for workers, nice in results:
            print(f"round {round_ + 1}: {workers} worker(s), learner nice +{nice} ...", file=sys.stderr, flush=True)
            results[workers, nice].append(run_config(workers, nice, payloads, args, sweep=round_ == 0 and nice == args.learner_nices[0]))
    load_at_end = os.getloadavg()[0]
    print(f"load average at the end {load_at_end:.2f}", file=sys.stderr)
    print(markdown(results, args, load=(load_at_start, load_at_end)))


if __name__ == "__main__":
    main()
