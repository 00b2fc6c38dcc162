"""``serve --learner-nice N``: the online learner runs N niceness steps below the serving processes, a restarted
learner too, the workers keep the server's priority, and a bad value exits 2 naming the flag.

Real parts: ``python -m recsys_rl.cli serve`` subprocesses (one process, and ``--workers 2``), the spawned learner
process, loopback gRPC; niceness read back with ``os.getpriority`` as the kernel reports it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from tests.helpers import make_request
from tests.ranker.test_learner_faults import REPO, _learner_pids, _poll

BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)  # what the server inherits from this test process


def _niceness(pid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:  # exited meanwhile
        return None


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Started servers, each stopped (SIGTERM, then killed) after the test."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _start(started: list[subprocess.Popen[str]], data_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir",
                             str(data_dir), *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    started.append(proc)
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.startswith("serving on "), line + "".join(stderr)
    return proc, line.split()[-1]


def _learner_at(server_pid: int, nice: int) -> int:
    """The server's learner once it has lowered its priority to ``nice`` (it does so right after it starts)."""
    def found() -> int | None:
        return next((pid for pid in _learner_pids(server_pid) if _niceness(pid) == nice), None)
    return _poll(found, timeout_s=60, what=f"a learner at niceness {nice} (pids "  # type: ignore[return-value]
                 f"{ {pid: _niceness(pid) for pid in _learner_pids(server_pid)} })")


def test_one_process_server_runs_its_learner_at_the_default_niceness(serve: list, tmp_path: Path) -> None:
    proc, address = _start(serve, tmp_path / "data", "--workers", "1")
    _learner_at(proc.pid, min(19, BASE_NICE + 10))
    with grpc.insecure_channel(address) as channel:  # serving goes on, at the server's own priority
        assert pb_grpc.RankingServiceStub(channel).Rank(make_request(), timeout=10).slate
    assert _niceness(proc.pid) == BASE_NICE


def test_workers_keep_their_priority_and_a_restarted_learner_is_lowered_again(serve: list, tmp_path: Path) -> None:
    from tests.ranker.workers.conftest import Fleet

    proc, _ = _start(serve, tmp_path / "data", "--workers", "2", "--learner-nice", "7")
    wanted = min(19, BASE_NICE + 7)
    first = _learner_at(proc.pid, wanted)
    workers = Fleet(proc, "", tmp_path / "data").worker_pids()
    assert len(workers) == 2 and all(_niceness(pid) == BASE_NICE for pid in workers.values()), workers
    assert _niceness(proc.pid) == BASE_NICE

    os.kill(first, signal.SIGKILL)  # the supervisor restarts it (1 s backoff); it lowers itself again
    restarted = _poll(lambda: _learner_pids(proc.pid) - {first}, timeout_s=60, what="a restarted learner")
    assert _learner_at(proc.pid, wanted) in restarted  # type: ignore[operator]
    assert all(_niceness(pid) == BASE_NICE for pid in workers.values())


def test_learner_nice_zero_keeps_the_server_priority(serve: list, tmp_path: Path) -> None:
    proc, _ = _start(serve, tmp_path / "data", "--workers", "1", "--learner-nice", "0")
    learner = _poll(lambda: _learner_pids(proc.pid), timeout_s=60, what="the learner process")
    assert {_niceness(pid) for pid in learner} == {BASE_NICE}  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["20", "-1", "ten", "2.5"])
def test_a_bad_learner_nice_exits_2_naming_the_flag(tmp_path: Path, value: str) -> None:
    result = subprocess.run([sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir",
                             str(tmp_path / "data"), "--learner-nice", value], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--learner-nice" in lines[0] and "0 to 19" in lines[0], lines
    assert not (tmp_path / "data" / "logs").exists()  # refused before serving anything
