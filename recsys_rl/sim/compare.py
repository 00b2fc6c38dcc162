"""``recsys-rl sim compare``: policies played through the real server in the simulator, with 95% intervals.

Reads top to bottom. For each seed s (world ``World(SimConfig(n_users=N), seed=s)``, server ``--seed s``):

0. Warm-up: a ``recsys-rl serve`` process whose surface has λ = 0 (VW alone, learning clicks online,
   exploration cap 0.1) plays W simulated days. The host reports ``click``, ``dwell_seconds``, ``session_end``
   and ``return_visit`` (reward weight 0 for all but click: the bandit optimises clicks; the rest is logged).
   This is "last period's production": its VW model versions are where both served arms start, so neither is
   measured while still learning from scratch.
1. ``bandit``: a server with λ = 0 starting from the warm-up's VW model, learning online, plays D days.
2. ``slateq``: the slate-RL model is trained offline (``train_from_data_dir``) on the warm-up's *logs* - never
   the simulator's memory - and published beside the same VW model; a server with λ > 0 (score = VW click
   estimate + λ · Q(s, i), VW still learning online) plays D days.
3. ``random`` (a uniformly random slate) and ``oracle-myopic`` (top-k by the page view's true utility:
   maximal immediate click probability, blind to quality) are client-side policies with no server: they
   are yardsticks, and the oracle reads the simulator's hidden truth.

Every policy plays the same world seed from day 0 (same users and catalog, fresh user state; the draws diverge
once the slates differ); the warm-up plays it too, as the period before.

Metrics per seed over the horizon: click rate = clicks / page views; session length = page views per
session; return rate = share of sessions followed by a visit the next day; engagement per user = total dwell
seconds per simulated user over the D days (dwell is what good content earns and what keeps users coming
back, so it is the long-term objective). Intervals: Student t across seeds, mean ± t_{0.975, S−1} · sd / √S
(each seed is a new world, so seeds are the i.i.d. units; users within a seed share one learned policy).

Paired comparison. Every policy plays the same world per seed (common random numbers as far as the simulator
allows: identical catalog, users, their preferences and the first page views; the world's one dynamics stream
diverges once slates differ). So the per-seed difference d_s = m_s(slateq) − m_s(bandit) removes the
between-world spread that dominates the per-policy intervals; ``paired_differences`` reports mean d ± t · sd(d)/√S
(unit: seeds, paired t) and the relative engagement gain g_s = m_s(slateq) / m_s(bandit) − 1 likewise.

The host loop is here rather than ``sim.host.run_host`` because the horizon is a number of days (run_host
stops after a number of requests) and per-day engagement feeds the plot. It is single-threaded, so a run is
reproducible given the server's seed (up to the learner's publishing times).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from recsys_rl.errors import InvalidInput
from recsys_rl.sim.config import SimConfig
from recsys_rl.sim.host import to_rank_request
from recsys_rl.sim.world import PageView, World

if TYPE_CHECKING:
    from recsys_rl.caps.devcerts import AdminCredentials

POLICIES = ("random", "bandit", "slateq", "oracle-myopic")
SERVED = ("bandit", "slateq")  # policies that run through a server
METRICS = ("click_rate", "session_length", "return_rate", "engagement_per_user")
SURFACE = "default"
OUTCOMES = ("click", "dwell_seconds", "session_end", "return_visit")
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CompareArgs:
    policies: tuple[str, ...] = POLICIES  # which policies to report (slateq always trains on a bandit run)
    seeds: int = 5  # independent worlds (and server seeds) 0 .. seeds-1
    users: int = 120  # simulated users per world
    days: int = 8  # simulated days per policy and seed (the measured horizon)
    warmup_days: int = 6  # days the λ = 0 bandit serves first; both served arms start from its model and logs
    long_term_weight: float = 1.0  # λ of the slateq server (tuned on seed 100, never on the reported seeds 0-4)
    train_steps: int = 400  # SlateQ gradient steps per seed
    train_batch: int = 256  # SlateQ minibatch size
    gamma: float = 0.9  # SlateQ per-decision discount
    n_step: int = 3  # SlateQ n-step return
    dwell_weight: float = 0.01  # SlateQ training reward per second of dwell
    return_weight: float = 1.0  # SlateQ training reward per return visit
    exploration_cap: float = 0.1  # both servers' exploration cap
    vw_args: str | None = None  # both servers' VW options (default: ModelConfig's)
    first_seed: int = 0  # seeds are first_seed .. first_seed + seeds - 1
    data_dir: str | None = None  # keep servers' logs and models here (default: a temporary directory, removed)
    plot: str | None = None  # write the engagement-per-day plot (PNG) here
    progress: bool = True  # a progress bar on stderr

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown or not self.policies:
            raise InvalidInput("--policies", f"must be a non-empty subset of {','.join(POLICIES)}, got {unknown}")
        for name in ("seeds", "users", "days", "warmup_days", "train_steps", "train_batch", "n_step"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"--{name.replace('_', '-')}", f"must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.long_term_weight) and self.long_term_weight > 0):
            raise InvalidInput("--long-term-weight", f"must be > 0, got {self.long_term_weight}")
        if not 0.0 < self.gamma <= 1.0:
            raise InvalidInput("--gamma", f"must be in (0, 1], got {self.gamma}")
        for name in ("dwell_weight", "return_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise InvalidInput(f"--{name.replace('_', '-')}", f"must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.exploration_cap <= 1.0:
            raise InvalidInput("--exploration-cap", f"must be in [0, 1], got {self.exploration_cap}")


@dataclass
class Run:
    """One policy on one seed: totals over the horizon and dwell per day."""

    policy: str
    seed: int
    n_users: int
    decisions: int = 0
    clicks: int = 0
    sessions: int = 0
    returned: int = 0
    return_eligible: int = 0
    dwell_by_day: list[float] = field(default_factory=list)
    clicks_by_day: list[int] = field(default_factory=list)
    decisions_by_day: list[int] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            "click_rate": self.clicks / max(self.decisions, 1),
            "session_length": self.decisions / max(self.sessions, 1),
            "return_rate": self.returned / max(self.return_eligible, 1),
            "engagement_per_user": sum(self.dwell_by_day) / self.n_users,
        }


# ------------------------------------------------------------------------------------------- the host
class Slates:
    """Where slates come from: ``slate(page_view)`` → (item ids, event id or ""); outcomes go to ``report``."""

    def slate(self, page_view: PageView) -> tuple[list[str], str]:
        raise NotImplementedError

    def report(self, event_id: str, item_id: str, outcome: str, value: float) -> None:
        """Client-side policies learn nothing: the default drops outcomes."""


class ClientPolicy(Slates):
    def __init__(self, choose: Callable[[PageView], list[str]]) -> None:
        self.choose = choose

    def slate(self, page_view: PageView) -> tuple[list[str], str]:
        return self.choose(page_view), ""


class ServerPolicy(Slates):
    """Rank / ReportOutcome over gRPC, as a host backend would."""

    def __init__(self, address: str, world: World, prefix: str) -> None:
        import grpc

        from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
        from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc

        self._pb, self._world, self._prefix = pb, world, prefix
        self.channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.RankingServiceStub(self.channel)

    def slate(self, page_view: PageView) -> tuple[list[str], str]:
        request = to_rank_request(page_view, f"{self._prefix}-{page_view.request_index}", SURFACE,
                                  catalog=self._world.catalog)
        response = self._stub.Rank(request, timeout=30)
        return [item.item_id for item in response.slate], response.event_id

    def report(self, event_id: str, item_id: str, outcome: str, value: float) -> None:
        self._stub.ReportOutcome(self._pb.ReportOutcomeRequest(event_id=event_id, item_id=item_id, outcome=outcome,
                                                               value=value), timeout=30)


def play(world: World, slates: Slates, run: Run, *, days: int, on_day: Callable[[], None] = lambda: None) -> Run:
    """Serve every page view of ``days`` days; ends by starting day ``days`` so the last returns are known."""
    last_event: dict[str, str] = {}  # user -> last decision of the session that just ended
    for _ in range(days):
        run.sessions += world.open_sessions
        dwell, clicks_before, decisions_before = 0.0, run.clicks, run.decisions
        while (page_view := world.next_page_view()) is not None:
            served, event_id = slates.slate(page_view)
            response = world.respond(page_view, served)
            run.decisions += 1
            if response.clicked_item_id is not None:
                run.clicks += 1
                dwell += response.dwell_seconds
                slates.report(event_id, response.clicked_item_id, "click", 1.0)
                slates.report(event_id, response.clicked_item_id, "dwell_seconds", response.dwell_seconds)
            if response.session_ended:
                slates.report(event_id, "", "session_end", 1.0)
                last_event[page_view.user_id] = event_id
        run.dwell_by_day.append(dwell)
        run.clicks_by_day.append(run.clicks - clicks_before)
        run.decisions_by_day.append(run.decisions - decisions_before)
        day = world.next_day()
        run.return_eligible += len(day.returned)
        run.returned += sum(day.returned.values())
        for user_id, came_back in day.returned.items():  # the sim host's "last_decision" convention
            event_id = last_event.pop(user_id, None)
            if event_id is not None:
                slates.report(event_id, "", "return_visit", 1.0 if came_back else 0.0)
        on_day()
    return run


# ----------------------------------------------------------------------------------------- the servers
def server_config(path: Path, *, long_term_weight: float, cap: float, vw_args: str | None = None) -> Path:
    """A one-surface TOML: reward = click only (the others are logged with weight 0), λ as given."""
    weights = ", ".join(f"{name} = {1.0 if name == 'click' else 0.0}" for name in OUTCOMES)
    model = f"long_term_weight = {long_term_weight}\n" + (f"vw_args = {json.dumps(vw_args)}\n" if vw_args else "")
    path.write_text(
        f"[surfaces.{SURFACE}]\nexploration_cap = {cap}\n\n"
        f"[surfaces.{SURFACE}.reward]\nweights = {{ {weights} }}\nattribution_window_seconds = 5\n\n"
        f"[surfaces.{SURFACE}.model]\n{model}"
    )
    return path


class Served(NamedTuple):
    address: str  # HOST:PORT of Rank and ReportOutcome
    admin_address: str | None  # HOST:PORT of the admin listener (TLS), None when not served


@contextmanager
def serving(data_dir: Path, config: Path, seed: int, *, admin: AdminCredentials | None = None) -> Iterator[Served]:
    """A ``recsys-rl serve`` process on a free loopback port; SIGTERM (graceful: logs flushed) on exit. ``admin``:
    also serve the admin listener (a free port) with these credentials."""
    data_dir.mkdir(parents=True, exist_ok=True)
    admin_args = [] if admin is None else ["--admin-port", "0", *admin.serve_args()]
    with open(data_dir / "server.log", "w") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir", str(data_dir),
             "--config", str(config), "--seed", str(seed), *admin_args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
    try:
        line = server.stdout.readline() if server.stdout else ""
        if not line.startswith("serving on "):
            raise RuntimeError(f"the server did not start; see {data_dir / 'server.log'}")
        admin_line = server.stdout.readline() if admin is not None and server.stdout else ""
        if admin is not None and not admin_line.startswith("admin on "):
            raise RuntimeError(f"the server's admin listener did not start; see {data_dir / 'server.log'}")
        yield Served(line.split()[-1], admin_line.split()[-1] if admin_line else None)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
        if code != 0:
            raise RuntimeError(f"server exited with {code}; see {data_dir / 'server.log'}")


def train_long_term(data_dir: Path, args: CompareArgs, seed: int) -> str:
    """Trains SlateQ on ``data_dir``'s logs and publishes it under ``data_dir/models``; returns the version."""
    from recsys_rl.slateq.train import TrainConfig, train_from_data_dir

    config = TrainConfig(steps=args.train_steps, batch_size=args.train_batch, seed=seed, gamma=args.gamma,
                         n_step=args.n_step, dwell_weight=args.dwell_weight, return_visit_weight=args.return_weight)
    _, checkpoint = train_from_data_dir(data_dir, config, progress=False)
    assert checkpoint is not None
    return checkpoint.version


# ------------------------------------------------------------------------------------------- one seed
def run_seed(seed: int, args: CompareArgs, work: Path, tick: Callable[[], None]) -> list[Run]:
    sim = SimConfig(n_users=args.users)
    runs: list[Run] = []

    def fresh_run(policy: str) -> tuple[World, Run]:
        return World(sim, seed=seed), Run(policy, seed, sim.n_users)

    for policy, make in (("random", lambda w: w.random_slate), ("oracle-myopic", lambda w: w.oracle_slate)):
        if policy in args.policies:
            world, run = fresh_run(policy)
            runs.append(play(world, ClientPolicy(make(world)), run, days=args.days, on_day=tick))
    served = [p for p in SERVED if p in args.policies]
    if not served:
        return runs
    # Warm-up period: the production bandit (λ = 0) serves and logs; its VW model and logs are what both arms
    # start from, so neither is measured while still learning from scratch.
    warmup_dir = work / f"seed{seed}" / "warmup"
    bandit_toml = server_config(work / f"seed{seed}-bandit.toml", long_term_weight=0.0, cap=args.exploration_cap,
                                vw_args=args.vw_args)
    with serving(warmup_dir, bandit_toml, seed) as server:
        world, _ = fresh_run("warmup")
        host = ServerPolicy(server.address, world, f"warmup-{seed}")
        play(world, host, Run("warmup", seed, sim.n_users), days=args.warmup_days, on_day=tick)
        host.channel.close()
    if "slateq" in served:
        train_long_term(warmup_dir, args, seed)  # from the warm-up logs only
    for policy in served:
        data_dir = work / f"seed{seed}" / policy
        shutil.copytree(warmup_dir / "models", data_dir / "models")  # VW versions (+ slateq), not the logs
        config = bandit_toml if policy == "bandit" else server_config(
            work / f"seed{seed}-slateq.toml", long_term_weight=args.long_term_weight, cap=args.exploration_cap,
            vw_args=args.vw_args)
        with serving(data_dir, config, seed) as server:
            world, run = fresh_run(policy)
            host = ServerPolicy(server.address, world, f"{policy}-{seed}")
            runs.append(play(world, host, run, days=args.days, on_day=tick))
            host.channel.close()
    return runs


# ------------------------------------------------------------------------------------------- summary
def t_interval(values: list[float], alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, low, high): mean ± t_{1−α/2, n−1} · sd / √n; NaN bounds for a single value."""
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(t.ppf(1 - alpha / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def summarise(runs: list[Run], policies: tuple[str, ...]) -> list[dict[str, float | str | int]]:
    """One record per policy: each metric's mean over seeds and its 95% t-interval."""
    records: list[dict[str, float | str | int]] = []
    for policy in policies:
        mine = [r.metrics() for r in runs if r.policy == policy]
        record: dict[str, float | str | int] = {"policy": policy, "seeds": len(mine)}
        for metric in METRICS:
            mean, low, high = t_interval([m[metric] for m in mine])
            record[metric], record[f"{metric}_ci_low"], record[f"{metric}_ci_high"] = mean, low, high
        records.append(record)
    return records


def paired_differences(runs: list[Run], treatment: str = "slateq", control: str = "bandit") -> dict[str, object] | None:
    """treatment − control per seed for every metric, and the relative engagement gain, with paired 95% t-intervals.

    d_s = m_s(treatment) − m_s(control) on the seeds where both ran; (mean, low, high) = t_interval(d). The unit is
    the seed (world): both arms on a seed share its catalog and users, so d_s cancels what the world adds to both.
    None when no seed has both policies.
    """
    by_key = {(r.policy, r.seed): r.metrics() for r in runs}
    seeds = sorted(seed for policy, seed in by_key if policy == treatment and (control, seed) in by_key)
    if not seeds:
        return None
    record: dict[str, object] = {"comparison": f"{treatment} - {control}", "seeds": seeds}
    for metric in METRICS:
        diffs = [by_key[(treatment, s)][metric] - by_key[(control, s)][metric] for s in seeds]
        mean, low, high = t_interval(diffs)
        record[metric] = {"mean": mean, "ci_low": low, "ci_high": high, "per_seed": diffs}
    gains = [by_key[(treatment, s)]["engagement_per_user"] / by_key[(control, s)]["engagement_per_user"] - 1.0
             for s in seeds]
    mean, low, high = t_interval(gains)
    record["engagement_gain"] = {"mean": mean, "ci_low": low, "ci_high": high, "per_seed": gains}
    return record


def format_paired(record: dict[str, object]) -> str:
    """The paired record as a markdown table: mean difference [95% paired t-interval] and the per-seed values."""
    lines = [f"| {record['comparison']} (paired by seed) | mean [95% CI] | per seed |", "|---|---|---|"]
    digits = {"click_rate": 4, "session_length": 2, "return_rate": 4, "engagement_per_user": 0}
    for metric, d in digits.items():
        m = record[metric]
        per_seed = ", ".join(f"{v:+.{d}f}" for v in m["per_seed"])  # type: ignore[index]
        lines.append(f"| {metric.replace('_', ' ')} | {m['mean']:+.{d}f} [{m['ci_low']:+.{d}f}, "  # type: ignore[index]
                     f"{m['ci_high']:+.{d}f}] | {per_seed} |")  # type: ignore[index]
    g: dict = record["engagement_gain"]  # type: ignore[assignment]
    per_seed = ", ".join(f"{100 * v:+.1f}%" for v in g["per_seed"])
    lines.append(f"| engagement gain (relative) | {100 * g['mean']:+.1f}% [{100 * g['ci_low']:+.1f}%, "
                 f"{100 * g['ci_high']:+.1f}%] | {per_seed} |")
    return "\n".join(lines)


def format_table(records: list[dict[str, float | str | int]]) -> str:
    def cell(r: dict[str, float | str | int], metric: str, digits: int) -> str:
        return f"{r[metric]:.{digits}f} [{r[metric + '_ci_low']:.{digits}f}, {r[metric + '_ci_high']:.{digits}f}]"

    lines = ["| policy | click rate | session length | return rate | engagement per user (dwell s) |",
             "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['policy']} | {cell(r, 'click_rate', 3)} | {cell(r, 'session_length', 1)} | "
                     f"{cell(r, 'return_rate', 3)} | {cell(r, 'engagement_per_user', 0)} |")
    return "\n".join(lines)


def plot_engagement(runs: list[Run], policies: tuple[str, ...], out: Path) -> None:
    """Dwell per user per simulated day, mean over seeds with the 95% t-band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for policy in policies:
        per_day = np.array([r.dwell_by_day for r in runs if r.policy == policy]) / runs[0].n_users
        days = np.arange(1, per_day.shape[1] + 1)
        bands = [t_interval(per_day[:, d].tolist()) for d in range(per_day.shape[1])]
        ax.plot(days, [b[0] for b in bands], "o-", label=policy)
        if per_day.shape[0] > 1:
            ax.fill_between(days, [b[1] for b in bands], [b[2] for b in bands], alpha=0.2)
    ax.set_xlabel("simulated day")
    ax.set_ylabel("dwell seconds per user that day")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"engagement per simulated day ({per_day.shape[0]} seeds, 95% t-band)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def compare(args: CompareArgs) -> tuple[list[dict[str, float | str | int]], list[Run]]:
    """Runs every policy on every seed; returns the summary records and the per-seed runs."""
    from tqdm import tqdm

    served = any(p in SERVED for p in args.policies)
    keep = args.data_dir is not None
    work = Path(args.data_dir) if keep else Path(tempfile.mkdtemp(prefix="recsys-rl-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    try:
        total = args.seeds * (len(args.policies) * args.days + served * args.warmup_days)
        with tqdm(total=total, unit="day", desc="sim compare", file=sys.stderr, disable=not args.progress) as bar:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                runs.extend(run_seed(seed, args, work, lambda: bar.update(1)))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.plot:
        plot_engagement(runs, args.policies, Path(args.plot))
    return summarise(runs, args.policies), runs


# ------------------------------------------------------------------------------------------------ CLI
def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``sim compare`` to the ``recsys-rl`` top-level subcommands."""
    d = CompareArgs()
    sim = subparsers.add_parser("sim", help="simulator experiments through the real server")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True)
    parser = sim_sub.add_parser("compare", help="click rate, session length, return rate and engagement per policy")
    parser.add_argument("--policies", default=",".join(d.policies), help=f"comma-separated subset of {POLICIES}")
    parser.add_argument("--seeds", type=int, default=d.seeds, help="independent worlds; intervals are across them")
    parser.add_argument("--users", type=int, default=d.users, help="simulated users per world")
    parser.add_argument("--days", type=int, default=d.days, help="simulated days per policy")
    parser.add_argument("--warmup-days", type=int, default=d.warmup_days,
                        help="days the λ=0 bandit serves first (both served arms start from its model and logs)")
    parser.add_argument("--long-term-weight", type=float, default=d.long_term_weight, help="λ of the slateq server")
    parser.add_argument("--train-steps", type=int, default=d.train_steps, help="SlateQ gradient steps per seed")
    parser.add_argument("--train-batch", type=int, default=d.train_batch, help="SlateQ minibatch size")
    parser.add_argument("--gamma", type=float, default=d.gamma, help="SlateQ per-decision discount")
    parser.add_argument("--n-step", type=int, default=d.n_step, help="SlateQ n-step return")
    parser.add_argument("--dwell-weight", type=float, default=d.dwell_weight,
                        help="SlateQ training reward per dwell second")
    parser.add_argument("--return-weight", type=float, default=d.return_weight,
                        help="SlateQ training reward per return visit")
    parser.add_argument("--exploration-cap", type=float, default=d.exploration_cap)
    parser.add_argument("--vw-args", help="both servers' VW options (default: the surface default)")
    parser.add_argument("--first-seed", type=int, default=d.first_seed)
    parser.add_argument("--data-dir", help="keep the servers' logs and models here")
    parser.add_argument("--plot", help="write a PNG of engagement per simulated day here")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_compare)


def _with_paired(record: dict[str, object], paired: dict[str, object] | None) -> dict[str, object]:
    if paired is None or record["policy"] != "slateq":
        return record
    out = dict(record, vs_bandit_seeds=paired["seeds"])
    for metric in (*METRICS, "engagement_gain"):
        values = paired[metric]  # type: ignore[index]
        out[f"vs_bandit_{metric}"] = values["mean"]  # type: ignore[index]
        out[f"vs_bandit_{metric}_ci_low"] = values["ci_low"]  # type: ignore[index]
        out[f"vs_bandit_{metric}_ci_high"] = values["ci_high"]  # type: ignore[index]
    return out


def run_compare(ns: argparse.Namespace) -> int:
    args = CompareArgs(
        policies=tuple(p.strip() for p in ns.policies.split(",") if p.strip()), seeds=ns.seeds, users=ns.users,
        days=ns.days, warmup_days=ns.warmup_days, long_term_weight=ns.long_term_weight, train_steps=ns.train_steps,
        train_batch=ns.train_batch, gamma=ns.gamma, n_step=ns.n_step, dwell_weight=ns.dwell_weight,
        return_weight=ns.return_weight,
        exploration_cap=ns.exploration_cap, vw_args=ns.vw_args, first_seed=ns.first_seed, data_dir=ns.data_dir,
        plot=ns.plot,
        progress=not ns.no_progress,
    )  # fmt: skip
    records, runs = compare(args)
    paired = paired_differences(runs)
    if ns.format == "json":
        # The contract: one record per policy. The paired comparison rides on the treatment's record as
        # vs_bandit_<metric> (mean difference) with _ci_low/_ci_high, plus vs_bandit_engagement_gain.
        print(json.dumps([_with_paired(record, paired) for record in records], indent=2))
    else:
        print(format_table(records))
        if paired is not None:
            print()
            print(format_paired(paired))
        print(f"\n95% t-intervals across {args.seeds} seeds (unit: seed = world; paired rows: t on per-seed "
              f"differences); {args.users} users, {args.days} days after {args.warmup_days} warm-up days; "
              f"slateq λ = {args.long_term_weight}, {args.train_steps} steps, γ = {args.gamma}, {args.n_step}-step, "
              f"dwell weight {args.dwell_weight}, return weight {args.return_weight}, trained on the warm-up logs.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys-rl")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(argv)
    try:
        return ns.run(ns)
    except InvalidInput as exc:
        print(f"recsys-rl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CompareArgs", "Run", "compare", "format_paired", "format_table", "paired_differences", "play", "register",
           "summarise", "t_interval"]
