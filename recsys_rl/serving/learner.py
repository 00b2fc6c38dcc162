"""The online learner that reads the log and publishes models (outcome attribution lives in ``outcomes``).

Learner (its own process, ``run_learner``; a thread in tests): ``OnlineLearner`` follows the log the server writes
(``logging_schema.tail``), applies the surface's reward rule to each decision's outcomes (``DecisionRewards``:
duplicates by outcome_id once, the attribution window in microseconds, max/sum aggregation, the reward range -
the same rule as the offline join), and once a decision's window has closed (plus a grace period for outcomes
still in the writer's queue) learns it with its logged propensities: one IPS cb label per served slot
(``VWBandit.learn``). Every ``publish_every`` decisions it publishes a version to the registry; serving processes
pick it up (``ModelWatcher``) and hot-swap. Whole-slate outcomes (empty ``item_id``) are logged but not in the
bandit's per-item reward: they belong to the slate-level (retention) model. Learning off the serving process
keeps VW's GIL-holding updates off Rank's path.

Restart. A server start starts the learner at the end of the existing log: decisions whose windows were still open
at the previous shutdown are not learned online (their outcomes may come later); offline training reads them from
the log. A learner that dies while the server runs (killed, out of memory, a crash) is restarted by
``recsys_rl.serving.supervisor`` with backoff, and the restarted one resumes: it loads the newest published version
that loads and re-reads the log from just after that version's last learned decision (``data_range.last_served_at``;
never before the first learner's start), so what the dead learner had learned but not yet published is learned
again and nothing is learned twice. A few decisions served milliseconds before that last one but logged after it
(concurrent requests) may be skipped.

Streams. With ``serve --workers N`` each worker logs to its own stream (``D/logs/worker-K/``); the learner follows
all of them, including a worker's stream that appears after it started (``LogTailer``), and joins outcomes to
decisions by event id whichever stream holds them. The server logs an outcome in the stream of the worker that
served its decision, after the decision, so it normally comes after it; should an outcome ever be read before its
decision (two streams, the decision's writer lagging), it waits up to ``_EARLY_OUTCOME_S`` for the decision.

Cost. The learner reads the log through its table view (``logging_schema.views.TableRecord``: a decision's candidates
stay the bytes the server logged) and ``VWBandit.learn`` keeps each item's parsed VW example in its item cache, keyed
as serving keys it: a decision costs its VW updates plus parsing its context and one labelled example per slot, not
reading and parsing 100 candidates' features. What it learns is unchanged, bit for bit
(tests/recsys_rl/serving/test_learner_exact.py); docs/benchmarks.md "Online learner CPU per decision (issue 11)".

Priority and memory. The learner process runs ``config.learner_nice`` niceness steps below the server
(``serve --learner-nice``, default 10; ``lower_priority``): at peak load serving gets the cores and learning lags,
catching up when the load drops. A learner that is behind reads ``READ_AHEAD_RECORDS`` at a time and learns each
read before the next (``follow_log``), so it holds the decisions whose windows are open plus one read, not its lag.
Its progress is in ``D/run/learner.json`` (``write_progress``).

A publish that fails (disk full in ``D/models``) does not stop the learner: it logs an ERROR, keeps learning, and
retries with backoff (1 s doubling to 30 s); ``LATEST`` keeps naming the previous version meanwhile.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from google.protobuf.message import Message

from logging_schema.rewards import DecisionRewards, micros
from logging_schema.tail import LogTailer
from logging_schema.views import TableRecord
from recsys_rl.config import ServiceConfig, SurfaceConfig
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.serving.registry import Checkpoint, ModelRegistry, PublishError

log = logging.getLogger(__name__)

# Outcomes accepted just before a window closes may reach the log a little later (the writer's queue).
_GRACE_S = 1.0
# Backoff of publish retries after a failed publish (disk full): long enough not to spin, short enough to recover.
_PUBLISH_RETRY_S = (1.0, 30.0)
# An outcome read before its decision (another stream, its writer behind) waits this long for it, and at most this
# many such outcomes wait: outcomes of decisions this learner never sees (served before it started) expire.
_EARLY_OUTCOME_S = 5.0
_EARLY_OUTCOMES_MAX = 100_000
# Items whose parsed VW example the learner keeps (its bandit's item cache): a parsed example takes ~32 kB, so this
# bounds the cache near 0.6 GiB. Items beyond it cost what every item cost before the cache (parse and build).
LEARNER_CACHE_ITEMS = 20_000
# Records the learner reads at a time. A decision record with 100 candidates is ~19 kB, so one read holds ~40 MB
# however far behind the learner is (it used to read up to 100,000 records, ~1.9 GB, and on stop the whole backlog).
READ_AHEAD_RECORDS = 2_000
# On stop, the learner drains the log for at most this long, then publishes: within the server's LEARNER_STOP_S
# (2.5 s), past which it is killed and what it learned since its last publish is lost to online learning.
DRAIN_S = 1.5
# The learner's progress (D/run/learner.json), rewritten at most this often.
PROGRESS_FILE = "learner.json"
PROGRESS_EVERY_S = 0.25


def _seconds(ts: object) -> float:
    return ts.seconds + ts.nanos * 1e-9  # type: ignore[attr-defined]


@dataclass
class _Pending:
    event: events_pb2.DecisionEvent | Message  # or its table view (candidates as bytes)
    rewards: DecisionRewards


def _occurred_at_us(outcome: events_pb2.OutcomeEvent) -> int | None:
    """When the outcome happened, as the offline join reads it: occurred_at, else received_at, else unknown."""
    if outcome.HasField("occurred_at"):
        return micros(outcome.occurred_at.seconds, outcome.occurred_at.nanos)
    if outcome.HasField("received_at"):
        return micros(outcome.received_at.seconds, outcome.received_at.nanos)
    return None


@dataclass
class LearnerStats:
    decisions_seen: int = 0
    learned_decisions: int = 0
    updates: int = 0
    outcomes_used: int = 0
    published: int = 0
    learn_errors: int = 0
    publish_errors: int = 0
    peak_pending: int = 0  # the most decisions held at once (read, not learned yet)


class OnlineLearner:
    """Learns one surface from its log records. Single-threaded: ``consume`` then ``step``, in a loop."""

    def __init__(self, surface: SurfaceConfig, bandit: object, registry: ModelRegistry, *, parent_version: str,
                 on_publish: Callable[[Checkpoint], None] = lambda _: None) -> None:
        self.surface = surface
        self._bandit = bandit  # a VWBandit (typed loosely so this module imports without VW)
        self._registry = registry
        self._parent = parent_version
        self._on_publish = on_publish
        self._pending: dict[str, _Pending] = {}
        self._order: deque[tuple[float, str]] = deque()
        self._since_publish = 0
        self._data_range: dict[str, float | int] = {}
        self._publish_retry_at = 0.0  # time.monotonic() before which a failed publish is not retried
        self._publish_backoff_s = _PUBLISH_RETRY_S[0]
        self._early: dict[str, list[events_pb2.OutcomeEvent]] = {}  # event_id -> outcomes read before it
        self._early_order: deque[tuple[float, str]] = deque()  # (expires at, event_id), oldest first
        self.stats = LearnerStats()

    @property
    def pending(self) -> int:
        """Decisions read and not learned yet (their windows still open, or due at the next ``step``)."""
        return len(self._pending)

    def consume(self, record: events_pb2.LogRecord | Message) -> None:
        """One log record: a LogRecord or its table view (``logging_schema.views.TableRecord``)."""
        kind = record.WhichOneof("event")
        if kind == "decision":
            event = record.decision
            due = _seconds(event.served_at) + self.surface.reward.attribution_window_seconds + _GRACE_S
            rewards = DecisionRewards(self.surface.reward, micros(event.served_at.seconds, event.served_at.nanos),
                                      [slot.item_id for slot in event.slate])
            self._pending[event.event_id] = _Pending(event, rewards)
            self._order.append((due, event.event_id))
            self.stats.decisions_seen += 1
            self.stats.peak_pending = max(self.stats.peak_pending, len(self._pending))
            for outcome in self._early.pop(event.event_id, ()):
                self._add_outcome(self._pending[event.event_id], outcome)
        elif kind == "outcome":
            outcome = record.outcome
            pending = self._pending.get(outcome.event_id)
            if pending is not None:
                self._add_outcome(pending, outcome)
            elif len(self._early_order) < _EARLY_OUTCOMES_MAX:
                received = _seconds(outcome.received_at) if outcome.HasField("received_at") else time.time()
                self._early.setdefault(outcome.event_id, []).append(outcome)
                self._early_order.append((received + _EARLY_OUTCOME_S, outcome.event_id))

    def _add_outcome(self, pending: _Pending, outcome: events_pb2.OutcomeEvent) -> None:
        # Every outcome of the decision goes through the rule (whole-slate ones too: they may share an
        # outcome_id with an item's outcome, and only the first of a key counts).
        counted = pending.rewards.add(outcome.item_id, outcome.outcome, outcome.value, _occurred_at_us(outcome),
                                      outcome.outcome_id)
        if counted and outcome.item_id:
            self.stats.outcomes_used += 1

    def step(self, now_s: float) -> int:
        """Learns every decision whose window (plus grace) closed before ``now_s``; publishes when due."""
        learned = 0
        while self._early_order and self._early_order[0][0] < now_s:  # their decisions never came
            self._early.pop(self._early_order.popleft()[1], None)
        while self._order and self._order[0][0] < now_s:
            _, event_id = self._order.popleft()
            pending = self._pending.pop(event_id, None)
            if pending is None or not self.surface.model.learn:
                continue
            try:
                rewards = pending.rewards.slot_rewards()
                self.stats.updates += self._bandit.learn(pending.event, rewards)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - one bad record must not stop learning; it is counted and logged
                log.exception("could not learn decision %s", event_id)
                self.stats.learn_errors += 1
                continue
            learned += 1
            self.stats.learned_decisions += 1
            self._since_publish += 1
            served = _seconds(pending.event.served_at)
            self._data_range = {
                "first_served_at": min(self._data_range.get("first_served_at", served), served),
                "last_served_at": served,
                "decisions": int(self._data_range.get("decisions", 0)) + 1,
            }
            if self._since_publish >= self.surface.model.publish_every:
                self.publish()
        return learned

    def publish(self, *, force: bool = False) -> Checkpoint | None:
        """Publishes the model as a new version if it learned anything since the last one.

        A failed publish is logged and retried later (after a backoff, unless ``force``); learning goes on.
        """
        if self._since_publish == 0 or (not force and time.monotonic() < self._publish_retry_at):
            return None
        try:
            checkpoint = self._registry.publish(
                self.surface.name,
                self._bandit.to_bytes(),  # type: ignore[attr-defined]
                parent=self._parent,
                data_range=dict(self._data_range),
                parameters={"vw_args": self.surface.model.vw_args, "updates": self.stats.updates,
                            "exploration": self.surface.exploration.algorithm},
            )
        except PublishError as exc:
            self.stats.publish_errors += 1
            self._publish_retry_at = time.monotonic() + self._publish_backoff_s
            log.error("%s; %s keeps serving, retrying in %.0f s", exc, self._parent, self._publish_backoff_s)
            self._publish_backoff_s = min(2 * self._publish_backoff_s, _PUBLISH_RETRY_S[1])
            return None
        self._parent = checkpoint.version
        self._since_publish = 0
        self._publish_backoff_s = _PUBLISH_RETRY_S[0]
        self._publish_retry_at = 0.0
        self.stats.published += 1
        self._on_publish(checkpoint)
        return checkpoint


def build_learners(config: ServiceConfig, registry: ModelRegistry, *,
                   last_served: dict[str, float] | None = None) -> dict[str, OnlineLearner]:
    """One learner per learning surface, starting from the surface's newest published version that loads.

    ``last_served`` (filled when given): per surface, the served_at of the last decision that version learned.
    """
    from recsys_rl.serving.bandit import VWBandit

    learners: dict[str, OnlineLearner] = {}
    for name, surface in config.surfaces.items():
        if not surface.model.learn:
            continue
        found = registry.load_newest(name, lambda checkpoint: VWBandit(surface.model.vw_args, model=checkpoint.model,
                                                                       cache_items=LEARNER_CACHE_ITEMS))
        if found is None:
            continue
        checkpoint, bandit = found
        learners[name] = OnlineLearner(surface, bandit, registry, parent_version=checkpoint.version)
        if last_served is not None:
            data_range = checkpoint.manifest.get("data_range")
            last = data_range.get("last_served_at") if isinstance(data_range, dict) else None
            last_served[name] = float(last) if isinstance(last, (int, float)) else -math.inf
    return learners


def learn_from_log(learners: dict[str, OnlineLearner], records: Iterable[events_pb2.LogRecord | Message],
                   now_s: float) -> int:
    for record in records:
        kind = record.WhichOneof("event")
        if kind == "gap":  # decisions served unlogged: nothing to learn
            continue
        surface = record.decision.surface if kind == "decision" else record.outcome.surface
        learner = learners.get(surface)
        if learner is not None:
            learner.consume(record)
    return sum(learner.step(now_s) for learner in learners.values())


def _not_learned_yet(records: list[Message], after: dict[str, float]) -> list[Message]:
    """Drops decisions a resumed learner's model already holds (served at or before its surface's resume point)."""
    return [record for record in records
            if record.WhichOneof("event") != "decision"
            or _seconds(record.decision.served_at) > after.get(record.decision.surface, math.inf)]


def run_learner(config: ServiceConfig, data_dir: Path, stop: threading.Event | object, *,
                interval_s: float = 0.1, from_end: bool = True, resume_after_s: float | None = None) -> None:
    """The learner loop (target of the learner process or thread). ``stop`` has ``wait(timeout) -> bool``.

    ``resume_after_s`` (a restart after the learner died): re-read the log and learn, per surface, the decisions
    served after both this time (the first learner's start) and the last decision its loaded version learned.
    On stop it reads what the server flushed, learns what is due and publishes the rest, then returns.
    """
    registry = ModelRegistry(Path(data_dir) / "models")
    last_served: dict[str, float] = {}
    learners = build_learners(config, registry, last_served=last_served)
    after: dict[str, float] | None = None
    if resume_after_s is None:
        tailer = LogTailer(Path(data_dir) / "logs", from_end=from_end, record_type=TableRecord)
    else:
        after = {name: max(resume_after_s, last) for name, last in last_served.items()}
        # A segment last written (1 s of clock slack) before every resume point holds nothing left to learn.
        skip_before = min(after.values(), default=math.inf) - 1.0
        tailer = LogTailer(Path(data_dir) / "logs", skip_written_before=skip_before, record_type=TableRecord)
        log.info("learner resumes after %s", ", ".join(f"{name}@{at:.3f}" for name, at in after.items()))
    follow_log(tailer, learners, stop, after=after, interval_s=interval_s,
               progress=Path(data_dir) / "run" / PROGRESS_FILE)


def follow_log(tailer: LogTailer, learners: dict[str, OnlineLearner], stop: threading.Event | object, *,
               after: dict[str, float] | None = None, interval_s: float = 0.1, read_ahead: int = READ_AHEAD_RECORDS,
               drain_s: float = DRAIN_S, clock: Callable[[], float] = time.time,
               progress: Path | None = None) -> None:
    """Reads the log ``read_ahead`` records at a time, learns what is due, until ``stop``; then drains and publishes.

    Bounded when behind (a starved learner: ``serve --learner-nice``, a peak): it holds the decisions whose
    windows are still open (rate x window, as when it keeps up) plus at most one read of ``read_ahead`` records,
    whatever the lag; a full read means more is waiting, so it reads again at once instead of sleeping. On stop
    it drains what the server flushed for at most ``drain_s`` (within the server's LEARNER_STOP_S, so it publishes
    before it would be killed); a backlog left then is offline training's, as at any restart.
    ``clock``: the learner's now (tests move it past every window). ``progress``: where to write
    ``write_progress`` every ``PROGRESS_EVERY_S`` and at the end.
    """
    written_at = -math.inf

    def read_and_learn() -> bool:
        """One read; True when it was full (more is waiting)."""
        nonlocal written_at
        records = tailer.poll(max_records=read_ahead)
        learn_from_log(learners, records if after is None else _not_learned_yet(records, after), clock())
        if progress is not None and time.monotonic() - written_at >= PROGRESS_EVERY_S:
            write_progress(progress, learners)
            written_at = time.monotonic()
        return len(records) >= read_ahead

    behind = False
    while not stop.wait(0.0 if behind else interval_s):  # type: ignore[attr-defined]
        behind = read_and_learn()
    deadline = time.monotonic() + drain_s
    while read_and_learn() and time.monotonic() < deadline:
        pass
    for learner in learners.values():
        learner.publish(force=True)
    if progress is not None:
        write_progress(progress, learners)


def write_progress(path: Path, learners: dict[str, OnlineLearner]) -> None:
    """``D/run/learner.json``: per surface, decisions read (``seen``), read and not learned yet (``pending``),
    learned, and the time it was written. Decisions logged minus ``seen - pending`` is how far behind it is, in
    decisions (the load test's catch-up time reads it; the lag alert reads the published versions). Best effort."""
    import json
    import os

    state = {"pid": os.getpid(), "written_at": time.time(),
             "surfaces": {name: {"seen": learner.stats.decisions_seen, "pending": learner.pending,
                                 "learned": learner.stats.learned_decisions,
                                 "peak_pending": learner.stats.peak_pending}
                          for name, learner in learners.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)
    except OSError as exc:  # disk full: the file is a convenience, learning goes on
        log.debug("learner: cannot write %s: %s", path, exc)


def lower_priority(steps: int) -> None:
    """Raises this process's niceness by ``steps`` (``serve --learner-nice``), so that serving gets the CPU first.

    Relative to the niceness the server started with (a spawned process inherits it): the learner stays below its
    workers however the operator started the service. Only this process, never a thread of the server: on Linux a
    niceness set from a thread applies to that thread alone, so thread mode (tests) keeps the server's priority.
    Where there is no niceness (Windows) or it cannot be changed, one line in the log and the learner goes on.
    """
    import os

    if steps == 0:
        return
    try:
        os.nice(steps)  # raising one's own niceness needs no privilege; the kernel caps it at 19
    except (AttributeError, OSError) as exc:
        log.warning("learner: cannot lower its CPU priority (%s); it runs at the server's priority", exc)
        return
    log.info("learner (pid %d) runs at niceness %d (--learner-nice %d)", os.getpid(), os.nice(0), steps)


def learner_process_main(config: ServiceConfig, data_dir: Path, stop: Connection, parent_pid: int,
                         resume_after_s: float | None = None) -> None:
    """Entry point of the learner process: the server coordinates shutdown, so signals are its business.

    ``stop`` is the read end of a pipe: the server closing its end (or dying) makes it readable (EOF).
    """
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lower_priority(config.learner_nice)

    class _StopOrOrphaned:
        def wait(self, timeout: float) -> bool:
            # A learner whose server died without stopping it must not linger.
            return stop.poll(timeout) or os.getppid() != parent_pid

    run_learner(config, data_dir, _StopOrOrphaned(), resume_after_s=resume_after_s)


def describe_exit_code(code: int | None) -> str:
    """A child process's exit for the log (``returncode``/``exitcode``: negative = the signal that killed it)."""
    import signal

    if code is None:
        return "is running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class LearnerHandle:
    """One running learner: a spawned process (production) or a thread (tests, one process to debug).

    Stopping never blocks on the learner: in process mode "stop" is our end of a pipe, closed. (It used to be a
    ``multiprocessing.Event``, whose ``set()`` waits until every process sleeping in ``wait()`` has woken; a
    learner SIGKILLed inside ``wait()`` never wakes, so the server's SIGTERM hung for good.)
    """

    def __init__(self, mode: str, config: ServiceConfig, data_dir: Path, *,
                 resume_after_s: float | None = None) -> None:
        import multiprocessing
        import os

        self._process: multiprocessing.process.BaseProcess | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self._stop_thread = threading.Event()
        self._stop_sender: Connection | None = None
        if mode == "process":
            # spawn, not fork: the server process already runs gRPC and writer threads.
            context = multiprocessing.get_context("spawn")
            receiver, self._stop_sender = context.Pipe(duplex=False)
            self._process = context.Process(target=learner_process_main, name="recsys-rl-learner", daemon=True,
                                            args=(config, Path(data_dir), receiver, os.getpid(), resume_after_s))
            self._process.start()
            receiver.close()  # the child holds its own copy; ours would keep the pipe from ever reaching EOF
        elif mode == "thread":
            self._thread = threading.Thread(target=self._run_thread, args=(config, Path(data_dir), resume_after_s),
                                            name="learner", daemon=True)
            self._thread.start()
        else:
            raise ValueError(f"learner: must be 'process', 'thread' or 'off', got {mode!r}")

    def _run_thread(self, config: ServiceConfig, data_dir: Path, resume_after_s: float | None) -> None:
        try:
            run_learner(config, data_dir, self._stop_thread, resume_after_s=resume_after_s)
        except BaseException as exc:
            self._thread_error = exc
            raise

    @property
    def pid(self) -> int | None:
        """The learner process's id (None in thread mode)."""
        return self._process.pid if self._process is not None else None

    def join(self, timeout_s: float) -> bool:
        """Waits up to ``timeout_s`` for the learner to end; True when it has ended."""
        if self._process is not None:
            self._process.join(timeout_s)  # waits on the process sentinel: returns as soon as it exits
            return not self._process.is_alive()
        assert self._thread is not None
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def describe_exit(self) -> str:
        """How the learner ended, for the log: "killed by SIGKILL", "exited with code 1", "raised ..."."""
        if self._process is not None:
            return describe_exit_code(self._process.exitcode)
        if self._thread_error is not None:
            return f"raised {type(self._thread_error).__name__}: {self._thread_error}"
        return "ended"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Lets the learner read what the log writer flushed, learn what is due, publish, and exit.

        Bounded: a learner still running after ``timeout_s`` is killed (it ignores SIGTERM, so ``terminate()``
        would not do), keeping shutdown within its budget; what it learned since its last publish is then left to
        offline training.
        """
        self._stop_thread.set()
        if self._stop_sender is not None:
            self._stop_sender.close()
        if self.join(timeout_s) or self._process is None:
            return
        log.error("learner (pid %s) did not stop within %.0f s; killing it", self._process.pid, timeout_s)
        self._process.kill()
        self._process.join(2.0)


class ModelWatcher:
    """Serving side: polls the registry and hot-swaps a surface's model when a newer version is published."""

    def __init__(self, refresh: Callable[[], None], *, interval_s: float = 0.25) -> None:
        self._refresh = refresh
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._refresh()
            except Exception:  # noqa: BLE001 - a bad checkpoint is refused; the old model keeps serving
                log.exception("model refresh failed; the current version keeps serving")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Bounded: a refresh stuck loading a model must not hold up shutdown (the thread is a daemon)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
