"""The demo's staged rollout: simulated traffic through a real ``recsys-rl serve`` whose surface is moved through
the stages by the real admin path (``recsys-rl rollout show|set``, run through the CLI entry point), and a second
scenario in which the guardrail reverts a bad canary by itself.

Each scenario's server serves its admin listener (TLS, bearer token) with throwaway credentials made in the
scenario's dir (``admin-tls/``, ``recsys_rl.caps.devcerts``); the walk calls admin as identity ``demo-operator``.

* ``good``: a policy that beats the host's baseline (the demo's learning phase trains it; its registry folder is
  copied into this scenario's data dir) goes baseline → shadow → canary → live. Each forward move asks for the
  evidence the server judges (shadow decisions; the canary guardrail's decisions per arm and bounds).
* ``bad``: a model trained to prefer what users do *not* click (a short training run whose surface rewards a click
  with −1) starts as a canary against control; the guardrail's confidence sequence on canary − control crosses
  −tolerance and the server moves the surface to baseline, audited as automatic with its estimates.

Traffic is bounded by each scenario's ``requests``; with too little traffic a scenario says which step it could not
take and stops there (the demo must not fail on a small budget). Every ``chunk`` page views the scenario polls
``GetRollout``: those snapshots (the guardrail's counts, means and bounds) are what the plots draw.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from recsys_rl.caps.access import OPERATOR, admin_channel
from recsys_rl.caps.devcerts import AdminCredentials, throwaway_admin_credentials
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb
from recsys_rl.ranking.v1 import policy_admin_service_pb2_grpc as admin_grpc
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.sim.compare import Served
from recsys_rl.sim.compare import serving as compare_serving
from recsys_rl.sim.config import SimConfig
from recsys_rl.sim.host import RequestRecord, run_host
from recsys_rl.sim.world import World

SURFACE = "default"
WORKER_METADATA = "x-recsys-rl-worker"  # which worker of `serve --workers N` answered (ranker.workers.forwarding)
DEMO_IDENTITY = "demo-operator"  # the walk's admin identity, recorded as the actor of its changes


@dataclass(frozen=True)
class ScenarioArgs:
    """One scenario's knobs; the rollout settings go to the server's ``[surfaces.default.rollout]``."""

    requests: int  # simulated page views this scenario may send in all (training runs excluded)
    seed: int = 7  # seeds the simulated world and the server's draws
    min_decisions: int = 500  # rollout.min_decisions: shadow decisions, and rewarded decisions per canary arm
    canary_share: float = 0.5  # share of users in the canary
    tolerance: float = 0.002  # revert when canary − control < −tolerance (mean slot reward: clicks / slate size)
    alpha: float = 0.05
    attribution_window_s: float = 0.5  # short: simulated page views come ~200 a second, rewards must keep up
    chunk: int = 100  # page views between two GetRollout polls (the plot's resolution)
    quiet: bool = False  # True: print nothing (tests)


@dataclass(frozen=True)
class Snapshot:
    """One GetRollout poll after ``request`` page views of the scenario."""

    request: int
    stage: str
    canary_decisions: int
    control_decisions: int
    canary_mean: float
    control_mean: float
    difference_low: float
    difference_high: float
    status: str
    alpha: float = 0.0  # the confidence sequence's level (the fleet summary's: workers' alpha × guardrails combined)


@dataclass
class ScenarioResult:
    name: str
    args: ScenarioArgs
    snapshots: list[Snapshot] = field(default_factory=list)
    marks: list[tuple[int, str]] = field(default_factory=list)  # (page views so far, what happened)
    records: list[tuple[int, RequestRecord]] = field(default_factory=list)  # (page view index, record)
    commands: list[tuple[str, int]] = field(default_factory=list)  # CLI commands run and their exit codes
    final_stage: str = ""
    reverted: bool = False
    revert_entry: dict[str, Any] | None = None  # the automatic audit entry (rollout show --format json)
    too_little_traffic: str = ""  # the step the budget did not reach, if any


def config_toml(args: ScenarioArgs, *, stage: str, click_weight: float = 1.0, learn: bool = True,
                exploration_cap: float = 0.1) -> str:
    reward_range = "[0.0, 1.0]" if click_weight > 0 else "[-1.0, 0.0]"
    # A generous decision budget: the scenario is about the rollout, and on a loaded machine deadline (or queue)
    # fallbacks would serve the baseline inside the canary arm and blur the comparison it demonstrates.
    return f"""[surfaces.{SURFACE}]
exploration_cap = {exploration_cap}
decision_budget_ms = 200

[surfaces.{SURFACE}.reward]
weights = {{ click = {click_weight} }}
attribution_window_seconds = {args.attribution_window_s}
range = {reward_range}

[surfaces.{SURFACE}.model]
learn = {str(learn).lower()}

[surfaces.{SURFACE}.rollout]
stage = "{stage}"
canary_share = {args.canary_share}
min_decisions = {args.min_decisions}
tolerance = {args.tolerance}
alpha = {args.alpha}
"""


@contextlib.contextmanager
def serving(data_dir: Path, config: str, *, seed: int, admin: AdminCredentials | None = None) -> Iterator[Served]:
    """``sim.compare.serving`` (a real ``recsys-rl serve`` subprocess, SIGTERM on exit) with ``config`` as TOML text,
    written to ``data_dir/config.toml``, and its admin listener when ``admin`` is given."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.toml").write_text(config)
    with compare_serving(data_dir, data_dir / "config.toml", seed, admin=admin) as served:
        yield served


def demo_credentials(data_dir: Path) -> AdminCredentials:
    """Throwaway admin credentials in ``data_dir/admin-tls`` (remade on each run: nothing there outlives it)."""
    directory = data_dir / "admin-tls"
    shutil.rmtree(directory, ignore_errors=True)
    return throwaway_admin_credentials(directory, {DEMO_IDENTITY: OPERATOR}, name="recsys-rl demo")


def train_model(data_dir: Path, *, requests: int, click_weight: float, seed: int) -> Path:
    """Trains a model online on ``requests`` simulated page views at stage live; returns its registry folder.

    ``click_weight`` −1 trains a model that prefers what users do not click (the bad canary); exploration is wide
    (cap 0.3) so it sees enough of the catalog in a short run.
    """
    args = ScenarioArgs(requests=requests, seed=seed)
    with serving(data_dir, config_toml(args, stage="live", click_weight=click_weight, exploration_cap=0.3),
                 seed=seed) as served:
        with grpc.insecure_channel(served.address) as channel:
            # The scenario's own world seed: a model knows items by id, and the catalog follows the seed.
            run_host(pb_grpc.RankingServiceStub(channel), World(SimConfig(), seed=seed),
                     n_requests=requests, request_id_prefix="train")
    return data_dir / "models" / SURFACE


class SpreadStub:
    """Rank and ReportOutcome over one connection per worker of ``serve --workers N``, as a host with many
    connections spreads its traffic: Ranks take the connections in turn, an outcome goes to the worker that served
    its decision (event id ``wK.…``). With one worker it is a plain stub."""

    def __init__(self, address: str, workers: int, *, attempts: int = 64) -> None:
        self.channels: dict[int, grpc.Channel] = {}
        self._stubs: dict[int, pb_grpc.RankingServiceStub] = {}
        for n in range(attempts if workers > 1 else 1):
            # A local subchannel pool: channels to one address would otherwise share one TCP connection.
            channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            stub = pb_grpc.RankingServiceStub(channel)
            worker = 0
            if workers > 1:  # the kernel picks a worker per connection: ask who answers (a baseline-stage probe)
                _, call = stub.Rank.with_call(_probe(n), timeout=10)
                worker = int(dict(call.initial_metadata()).get(WORKER_METADATA, 0))
            if worker in self._stubs:
                channel.close()
            else:
                self.channels[worker], self._stubs[worker] = channel, stub
            if len(self._stubs) == workers:
                break
        self._order = sorted(self._stubs)
        self._next = 0

    def Rank(self, request: pb.RankRequest, **kwargs: Any) -> pb.RankResponse:  # noqa: N802 - the stub's name
        worker = self._order[self._next % len(self._order)]
        self._next += 1
        return self._stubs[worker].Rank(request, **kwargs)

    def ReportOutcome(self, request: pb.ReportOutcomeRequest, **kwargs: Any) -> pb.ReportOutcomeResponse:  # noqa: N802
        owner = request.event_id.partition(".")[0]
        worker = int(owner[1:]) if owner[:1] == "w" and owner[1:].isdigit() else self._order[0]
        return self._stubs.get(worker, self._stubs[self._order[0]]).ReportOutcome(request, **kwargs)

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def _probe(n: int) -> pb.RankRequest:
    request = pb.RankRequest(request_id=f"probe-{n}", surface=SURFACE, user_id="probe", slate_size=1)
    request.candidates.add(item_id="probe-item", baseline_score=1.0)
    return request


class _Walk:
    """Drives one scenario's server: traffic in chunks, GetRollout polls, and ``recsys-rl rollout`` commands."""

    def __init__(self, result: ScenarioResult, served: Served, credentials: AdminCredentials) -> None:
        assert served.admin_address is not None, "the walk needs the server's admin listener"
        self.result = result
        self.args = result.args
        self.admin_args = ["--server", served.admin_address, *credentials.client_args(DEMO_IDENTITY)]
        self.admin_channel = admin_channel(served.admin_address, ca=str(credentials.ca),
                                           token_file=str(credentials.tokens[DEMO_IDENTITY]))
        self.admin = admin_grpc.PolicyAdminServiceStub(self.admin_channel)
        # Traffic reaches every worker (a host's connections spread over them): each worker's guardrail needs
        # evidence of its own before the canary may grow (docs/operations.md, "What a guardrail sees with N workers").
        self.ranking = SpreadStub(served.address, max(1, len(self.rollout().workers)))
        self.world = World(SimConfig(), seed=self.args.seed)
        self.sent = 0

    def say(self, text: str = "") -> None:
        if not self.args.quiet:
            print(text)

    @property
    def left(self) -> int:
        return self.args.requests - self.sent

    def rollout(self) -> admin_pb.GetRolloutResponse:
        return self.admin.GetRollout(admin_pb.GetRolloutRequest(surface=SURFACE, history_limit=0), timeout=10)

    def traffic(self, limit: int, until: Callable[[admin_pb.GetRolloutResponse], bool] | None = None) -> bool:
        """Sends up to ``limit`` page views (within the budget) in chunks; True once ``until`` holds after a chunk."""
        stop = self.sent + min(limit, self.left)
        while self.sent < stop:
            n = min(self.args.chunk, stop - self.sent)
            stats = run_host(self.ranking, self.world, n_requests=n, surface=SURFACE,  # type: ignore[arg-type]
                             request_id_prefix=f"{self.result.name}-{self.sent}")
            self.result.records.extend((self.sent + i, r) for i, r in enumerate(stats.records))
            self.sent += n
            reply = self.rollout()
            g = reply.guardrail
            self.result.snapshots.append(Snapshot(
                request=self.sent, stage=admin_pb.RolloutStage.Name(reply.stage).removeprefix("ROLLOUT_STAGE_").lower(),
                canary_decisions=g.canary_decisions, control_decisions=g.control_decisions,
                canary_mean=g.canary_mean_reward, control_mean=g.control_mean_reward,
                difference_low=g.difference_low, difference_high=g.difference_high, status=g.status,
                alpha=g.alpha))
            if until is not None and until(reply):
                return True
        return until is None

    def wait_adopted(self, timeout_s: float = 5.0) -> bool:
        """Waits until every worker serves the rollout state in force (each one adopts another's change within 1 s;
        its published evidence says which state it serves). True when they all do within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            if all(w.status == "current" for w in self.rollout().workers):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def cli(self, *argv: str, mark: str | None = None) -> int:
        """Runs ``recsys-rl rollout ARGV --server ADMIN_ADDRESS --ca CA --token-file TOKEN`` through the CLI entry
        point and shows what it printed."""
        from recsys_rl.cli import main

        command = ["rollout", *argv, *self.admin_args]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(command)
        shown = " ".join(f'"{a}"' if " " in a else a for a in command)
        self.say(f"  $ recsys-rl {shown}" + (f"    # exit {code}" if code else ""))
        for line in (out.getvalue() + err.getvalue()).splitlines():
            self.say(f"    {line}")
        self.result.commands.append((shown, code))
        if mark is not None and code == 0:
            self.result.marks.append((self.sent, mark))
        return code

    def show(self) -> int:
        return self.cli("show", "--surface", SURFACE, "--limit", "2")

    def finish(self) -> None:
        reply = self.rollout()
        self.result.final_stage = admin_pb.RolloutStage.Name(reply.stage).removeprefix("ROLLOUT_STAGE_").lower()
        self.result.reverted = reply.reverted
        self.ranking.close()
        self.admin_channel.close()


def _shadow_ready(reply: admin_pb.GetRolloutResponse, need: int) -> bool:
    return reply.shadow.decisions >= need


def _arms_ready(reply: admin_pb.GetRolloutResponse, need: int) -> bool:
    """Every worker's guardrail has ``need`` rewarded decisions per arm (a forward move needs each one's)."""
    guardrails = [w.guardrail for w in reply.workers] or [reply.guardrail]
    return all(min(g.canary_decisions, g.control_decisions) >= need for g in guardrails)


def run_good(args: ScenarioArgs, data_dir: Path, model_dir: Path | None) -> ScenarioResult:
    """baseline → shadow → canary → live for a policy that beats the baseline; a step the budget cannot reach is
    reported in ``too_little_traffic`` and the walk stops there."""
    result = ScenarioResult("good", args)
    if model_dir is not None and model_dir.is_dir():  # the warm policy: the server loads the newest version
        shutil.copytree(model_dir, data_dir / "models" / SURFACE, dirs_exist_ok=True)
    credentials = demo_credentials(data_dir)
    with serving(data_dir, config_toml(args, stage="baseline"), seed=args.seed, admin=credentials) as served:
        walk = _Walk(result, served, credentials)
        walk.say(f"Scenario 1: a learned policy that beats the baseline, walked forward ({args.requests:,} page views "
                 f"at most; min_decisions {args.min_decisions}, canary share {args.canary_share:g}).")
        walk.show()
        walk.traffic(args.chunk)
        walk.cli("set", "--surface", SURFACE, "--stage", "shadow",
                 "--reason", "start the apprentice", mark="shadow")
        # Shadow takes at most a third of the budget; the canary needs the rest for two arms.
        if not walk.traffic(args.requests // 3, lambda r: _shadow_ready(r, args.min_decisions)):
            result.too_little_traffic = f"shadow (fewer than {args.min_decisions} shadow decisions)"
        walk.show()
        code = walk.cli("set", "--surface", SURFACE, "--stage", "canary", "--canary-share", str(args.canary_share),
                        "--reason", "shadow agrees, fallbacks low", mark="canary")
        if code == 0:
            walk.traffic(args.chunk)
            walk.cli("set", "--surface", SURFACE, "--stage", "live",
                     "--reason", "too early: shows the gate")  # refused (exit 3): the arms lack decisions
            # Most of the rest to the canary (the guardrail's bound narrows), the last sixth to live.
            walk.traffic(walk.left - max(args.requests // 6, args.chunk))
            enough = _arms_ready(walk.rollout(), args.min_decisions)
            walk.show()
            if walk.cli("set", "--surface", SURFACE, "--stage", "live",
                        "--reason", "guardrail held", mark="live") == 0:
                walk.traffic(walk.left)
                walk.show()
            elif not enough:
                result.too_little_traffic = f"canary (fewer than {args.min_decisions} rewarded decisions per arm)"
        walk.finish()
    return result


def run_bad(args: ScenarioArgs, data_dir: Path, model_dir: Path) -> ScenarioResult:
    """A canary of a bad model against control, until the guardrail reverts it (or the budget runs out)."""
    result = ScenarioResult("bad", args)
    shutil.copytree(model_dir, data_dir / "models" / SURFACE, dirs_exist_ok=True)
    credentials = demo_credentials(data_dir)
    with serving(data_dir, config_toml(args, stage="canary"), seed=args.seed, admin=credentials) as served:
        walk = _Walk(result, served, credentials)
        walk.say(f"Scenario 2: a canary of a model that prefers what users do not click ({args.requests:,} page views "
                 f"at most; canary share {args.canary_share:g}, tolerance {args.tolerance:g}).")
        result.marks.append((0, "canary"))
        walk.show()
        reverted = walk.traffic(args.requests - 3 * args.chunk, lambda r: r.reverted)
        if reverted:
            walk.wait_adopted()  # the worker that reverted serves the baseline at once, the others within 1 s
            result.marks.append((walk.sent, "automatic revert"))
            walk.traffic(3 * args.chunk)  # hosts keep getting slates: control's baseline for everyone now
        walk.show()
        reply = walk.rollout()
        automatic = [c for c in reply.history if c.automatic]
        if automatic:
            from recsys_rl.rollout.cli import _change_dict

            result.revert_entry = _change_dict(automatic[-1])
        walk.finish()
    return result


def format_revert(entry: dict[str, Any]) -> str:
    """The automatic audit entry: who, why, and the guardrail's estimates at the time."""
    evidence = entry.get("evidence") or {}
    keys = ("canary_decisions", "canary_mean_reward", "control_decisions", "control_mean_reward", "difference_low",
            "difference_high", "tolerance", "alpha", "canary_fallback_rate", "canary_latency_p50_ms")
    estimates = ", ".join(f"{k} {evidence[k]:.4g}" if isinstance(evidence.get(k), float) else f"{k} {evidence.get(k)}"
                          for k in keys if k in evidence)
    return "\n".join([
        f"  audit #{entry['sequence']} at {entry['changed_at']}: {entry['old_stage']} -> {entry['new_stage']} by "
        f"{entry['actor']} (automatic={entry['automatic']})",
        f"  reason: {entry['reason']}",
        f"  estimates: {estimates}",
        f"  failed checks: {'; '.join(evidence.get('failed_checks') or []) or '-'}",
    ])


_LEARNED_MODES = ("SERVING_MODE_CANARY", "SERVING_MODE_LEARNED")


def plot_scenario(result: ScenarioResult, out: Path, *, title: str) -> None:
    """Top: the click rate of page views served by the learned policy vs the baseline (the simulator's exact click
    probability of each served slate, per window); bottom: the guardrail's canary − control estimate and its
    confidence-sequence bounds as GetRollout reported them, with −tolerance. Stage changes are vertical lines."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = 2 * result.args.chunk
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.6), sharex=True, height_ratios=(1, 1.2))
    for label, learned, style in (("learned policy (canary, live)", True, "o-"), ("baseline (control, shadow)", False, "s-")):
        xs, ys = [], []
        for start in range(0, len(result.records), window):
            chunk = [r for _, r in result.records[start:start + window]
                     if (r.serving_mode in _LEARNED_MODES) == learned]
            if len(chunk) >= 10:
                xs.append(start + window / 2)
                ys.append(sum(r.served_click_prob for r in chunk) / len(chunk))
        top.plot(xs, ys, style, ms=3, label=label)
    top.set_ylabel("click rate per slate")
    top.legend(loc="lower right", fontsize=8)
    top.grid(alpha=0.3)
    shots = [s for s in result.snapshots if s.stage == "canary" and min(s.canary_decisions, s.control_decisions) > 0
             and math.isfinite(s.difference_low) and math.isfinite(s.difference_high)]
    points = [(s.request, s.canary_mean - s.control_mean, s.difference_low, s.difference_high) for s in shots]
    entry = result.revert_entry
    if entry and entry.get("evidence") and result.marks:
        ev = entry["evidence"]
        at = next((m for m, label in result.marks if label == "automatic revert"), None)
        if at is not None and all(isinstance(ev.get(k), float) for k in ("difference_low", "difference_high")):
            points.append((at, ev["canary_mean_reward"] - ev["control_mean_reward"], ev["difference_low"],
                           ev["difference_high"]))
    if points:
        x, est, low, high = zip(*points)
        level = max((s.alpha for s in shots), default=result.args.alpha) or result.args.alpha
        bottom.fill_between(x, low, high, alpha=0.25, step="post",
                            label=f"confidence sequence (1 − α = {1 - level:g})")
        bottom.plot(x, est, "k.-", ms=3, label="canary − control (guardrail)")
        # Zoomed on the final bound: the first bounds are as wide as the reward range and would flatten the rest.
        span = max(0.02, 3 * max(abs(low[-1]), abs(high[-1])), 4 * result.args.tolerance)
        bottom.set_ylim(-span, span)
    bottom.axhline(0.0, color="grey", lw=0.8)
    bottom.axhline(-result.args.tolerance, color="red", ls="--", lw=1, label="−tolerance (revert below)")
    bottom.set_ylabel("reward per slot, canary − control")
    bottom.set_xlabel("simulated page views in this scenario")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="lower right", fontsize=8)
    for at, label in result.marks:
        for ax in (top, bottom):
            ax.axvline(at, color="red" if "revert" in label else "tab:green", lw=1, alpha=0.7)
        top.annotate(label, (at, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                     fontsize=8)
    top.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


__all__ = ["ScenarioArgs", "ScenarioResult", "Snapshot", "SpreadStub", "config_toml", "format_revert", "plot_scenario", "run_bad", "run_good",
           "serving", "train_model"]
