"""Disk-full episodes against a real server: the share of Rank calls answered, and how fast logging comes back.

Reads top to bottom (CleanRL style). Each episode starts ``recsys-rl serve`` on a fresh data dir whose ``logs/`` is
a 2 MiB tmpfs (as root; otherwise an injected ENOSPC in the log writer, see ``tests/ranker/disk_faults.py``), warms
it up, fills the disk, sends Rank calls for ``full_s`` seconds, gives the space back, and polls Rank until a
decision is served with its event queued again (serving mode LEARNED) and then until that decision's event is
in the log on disk. We report medians over the episodes: the share of Rank calls answered OK while the disk was
full (goal 100%), the time from space returning to the first logged decision (goal ≤ 2 s), and SIGTERM to exit.
"""

from __future__ import annotations

import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from logging_schema.reader import read_log
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from tests.helpers import make_request
from tests.ranker.disk_faults import REAL_DISK, FullDisk

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    episodes: int = 5  # independent server runs
    warmup: int = 50  # Rank calls before the disk fills
    full_s: float = 2.0  # seconds of Rank traffic on the full disk
    n_candidates: int = 20  # candidates per Rank request
    give_up_s: float = 30.0  # bound of every poll (reached only if recovery is broken)


@dataclass
class Episode:
    calls: int  # Rank calls while the disk was full
    answered: int  # of which answered OK
    fallbacks: int  # of which served the baseline (log unavailable)
    to_queued_s: float  # space back → first decision served with its event queued
    to_logged_s: float  # space back → that decision's event readable in the log
    sigterm_s: float  # SIGTERM → exit after the episode
    gaps: int  # LogGap records in the log afterwards


def episode(args: Args, index: int) -> Episode:
    with tempfile.TemporaryDirectory() as tmp, FullDisk(Path(tmp)) as disk:
        server = subprocess.Popen(disk.server_command("serve", "--port", "0", "--data-dir", tmp), cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            address = server.stdout.readline().split()[-1]  # type: ignore[union-attr]
            with grpc.insecure_channel(address) as channel:
                rank = pb_grpc.RankingServiceStub(channel).Rank

                def call(request_id: str) -> pb.RankResponse | None:
                    try:
                        return rank(make_request(args.n_candidates, request_id=request_id), timeout=10)
                    except grpc.RpcError:
                        return None

                for i in range(args.warmup):
                    call(f"e{index}-warm-{i}")
                disk.fill()
                calls = answered = fallbacks = 0
                ends = time.monotonic() + args.full_s
                while time.monotonic() < ends:
                    response = call(f"e{index}-full-{calls}")
                    calls += 1
                    answered += response is not None
                    fallbacks += response is not None and response.serving_mode == pb.SERVING_MODE_BASELINE_FALLBACK
                disk.free()
                freed = time.monotonic()
                probe = 0
                while True:
                    probe += 1
                    response = call(f"e{index}-probe-{probe}")
                    if response is not None and response.serving_mode == pb.SERVING_MODE_LEARNED:
                        break
                    assert time.monotonic() - freed < args.give_up_s, "logging never came back"
                    time.sleep(0.005)
                queued = time.monotonic() - freed
                while response.event_id not in {d.event_id for d in read_log(disk.logs).decisions}:
                    assert time.monotonic() - freed < args.give_up_s, "the decision never reached the log"
                    time.sleep(0.005)
                logged = time.monotonic() - freed
            server.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            server.wait(timeout=60)
            sigterm = time.monotonic() - sent
            gaps = len(read_log(disk.logs).gaps)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    return Episode(calls, answered, fallbacks, queued, logged, sigterm, gaps)


def run(args: Args = Args()) -> list[Episode]:
    episodes = []
    for i in range(args.episodes):
        episodes.append(episode(args, i))
        print(f"episode {i + 1}/{args.episodes}: {episodes[-1]}", file=sys.stderr, flush=True)
    return episodes


def markdown(episodes: list[Episode], args: Args = Args()) -> str:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    share = [e.answered / e.calls for e in episodes]
    return "\n".join([
        f"{len(episodes)} episodes, each a fresh `recsys-rl serve` (learner process on) whose `logs/` is "
        + ("a 2 MiB tmpfs filled with a filler file (run as root)" if REAL_DISK else
           "failing with an injected ENOSPC (not root: no tmpfs)")
        + f"; {args.warmup} warm-up Rank calls ({args.n_candidates} candidates), then {args.full_s:.0f} s of "
        "sequential Rank calls on the full disk, then the space is given back.",
        "",
        "| measure | median | min | max | goal |",
        "|---|---|---|---|---|",
        f"| Rank calls answered OK while full | {median(share):.1%} | {min(share):.1%} | {max(share):.1%} | 100% |",
        f"| of which baseline (log_unavailable) | {median([e.fallbacks / e.calls for e in episodes]):.1%} | | | |",
        f"| Rank calls per episode while full | {median([e.calls for e in episodes]):.0f} | "
        f"{min(e.calls for e in episodes)} | {max(e.calls for e in episodes)} | |",
        f"| space back → first decision served with its event queued | {median([e.to_queued_s for e in episodes]):.3f} s"
        f" | {min(e.to_queued_s for e in episodes):.3f} s | {max(e.to_queued_s for e in episodes):.3f} s | |",
        f"| space back → that decision in the log on disk | **{median([e.to_logged_s for e in episodes]):.3f} s** | "
        f"{min(e.to_logged_s for e in episodes):.3f} s | {max(e.to_logged_s for e in episodes):.3f} s | ≤ 2 s |",
        f"| SIGTERM → exit after the episode | {median([e.sigterm_s for e in episodes]):.2f} s | "
        f"{min(e.sigterm_s for e in episodes):.2f} s | {max(e.sigterm_s for e in episodes):.2f} s | ≤ 10 s |",
        f"| LogGap records in the log afterwards | {median([e.gaps for e in episodes]):.0f} | "
        f"{min(e.gaps for e in episodes)} | {max(e.gaps for e in episodes)} | 1 |",
        "",
        "The recovery time is bounded by the writer's retry backoff (50 ms doubling to 1 s): it depends on how long "
        "the disk was full, not on load.",
    ])


if __name__ == "__main__":
    result = run()
    print(platform.platform())
    print(markdown(result))
