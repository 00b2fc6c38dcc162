"""The metrics (names ``recsys_rl_*``) and the request-path hooks that feed them.

Label values are bounded by construction: ``surface`` is a configured surface or ``unknown`` (a request naming
any other surface must not mint a time series), ``mode`` a ServingMode name, ``reason`` a fallback reason's
prefix from :data:`FALLBACK_REASONS` or ``other``, ``code`` a gRPC status name.

Multiprocess aggregation (``multiprocess_mode``, only read in multiprocess mode), chosen per gauge:

* ``livesum`` where workers add up (log queue depth);
* ``livemax`` where the worst live worker matters: the cap in force (a lowered cap shows until every worker has
  applied it), the model info and age (a worker still on the old version keeps it visible), learner lag, and the
  guardrail status flags (one worker seeing ``failed`` is enough).

Counters and histograms always sum over every process's files, including workers that exited.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import REGISTRY

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.decision import Decision
from recsys_rl.serving.outcomes import OutcomeAck

# The prefixes of Decision.fallback_reason (recsys_rl.serving.decision, .log_guard); anything else counts as "other".
# A new kind of fallback (e.g. load shedding) adds its prefix here so its alert can name it.
FALLBACK_REASONS = frozenset({"model_error", "long_term_error", "deadline", "log_unavailable", "queued"})
UNKNOWN_SURFACE = "unknown"
GUARDRAIL_STATUSES = ("none", "collecting", "holding", "failed")  # "none": no canary guardrail running

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The smallest slot propensity of each decision: importance weights are 1/propensity, so the low buckets are what
# an evaluator's variance (and an operator's alert) cares about; 1.0 is a greedy or baseline slate.
PROPENSITY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.99, 1.0)

_MODE_NAMES = {value: name.removeprefix("SERVING_MODE_").lower() for name, value in pb.ServingMode.items()}


def reason_label(fallback_reason: str) -> str:
    """``"deadline: passed 0.2 ms before sampling"`` → ``"deadline"``; unknown prefixes → ``"other"``."""
    prefix = fallback_reason.split(":", 1)[0].strip()
    return prefix if prefix in FALLBACK_REASONS else "other"


class ServingMetrics:
    """Every metric of one serving process, and the :class:`~recsys_rl.metrics.hooks.ServingHooks` it serves.

    ``registry``: where the metrics register; in multiprocess mode the exporter does not read it (it reads the
    files), so the default registry is fine; tests and the single-process fallback pass their own.
    """

    def __init__(self, surfaces: list[str], *, registry: CollectorRegistry | None = REGISTRY,
                 clock=time.time) -> None:  # noqa: ANN001 - a () -> float
        self.surfaces = frozenset(surfaces)
        self._clock = clock
        # Newest time (unix s) a logged decision was served, per surface: the learner lag's "newest logged".
        self.newest_logged: dict[str, float] = {}
        r = registry
        self.rank_seconds = Histogram(
            "recsys_rl_rank_seconds", "Rank latency inside the server (arrival in its queue to encode), by outcome",
            ["surface", "mode", "code"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.report_outcome_seconds = Histogram(
            "recsys_rl_report_outcome_seconds", "ReportOutcome latency inside the server, by status code",
            ["code"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.outcomes = Counter(
            "recsys_rl_outcomes", "Acknowledged outcomes: attributed (inside a window, item served), unattributed, "
            "or duplicate (a repeated outcome_id)", ["surface", "result"], registry=r)
        self.fallbacks = Counter(
            "recsys_rl_fallbacks", "Rank answered by the baseline instead of the policy, by reason prefix",
            ["surface", "reason"], registry=r)
        self.slots = Counter("recsys_rl_slots", "Slate slots served", ["surface"], registry=r)
        self.explored_slots = Counter(
            "recsys_rl_explored_slots", "Slate slots whose item was not the greedy choice", ["surface"], registry=r)
        self.min_propensity = Histogram(
            "recsys_rl_min_propensity", "Smallest slot propensity of each served decision",
            ["surface"], buckets=PROPENSITY_BUCKETS, registry=r)
        self.exploration_cap = Gauge(
            "recsys_rl_exploration_cap", "Exploration cap in force", ["surface"], multiprocess_mode="livemax",
            registry=r)
        self.log_queue_depth = Gauge(
            "recsys_rl_log_queue_depth", "Log records accepted and not yet written", multiprocess_mode="livesum",
            registry=r)
        self.log_bytes = Counter("recsys_rl_log_written_bytes", "Bytes written to the decision log", registry=r)
        self.log_write_errors = Counter(
            "recsys_rl_log_write_errors", "Failed attempts to open, write, truncate or fsync a log segment",
            registry=r)
        self.decisions_unlogged = Counter(
            "recsys_rl_decisions_unlogged", "Decisions served (the baseline) while the log could not take records",
            registry=r)
        self.outcomes_refused = Counter(
            "recsys_rl_outcomes_refused", "Outcomes refused (UNAVAILABLE) while the log could not take records",
            registry=r)
        self.model_info = Gauge(
            "recsys_rl_model_info", "1 for the model version serving a surface (0: a version no longer served)",
            ["surface", "version"], multiprocess_mode="livemax", registry=r)
        self.model_age = Gauge(
            "recsys_rl_model_age_seconds", "Seconds since the serving model version was published", ["surface"],
            multiprocess_mode="livemax", registry=r)
        self.learner_lag = Gauge(
            "recsys_rl_learner_lag_seconds", "Newest logged decision's serve time minus the newest learned one "
            "(the published model's data_range.last_served_at)", ["surface"], multiprocess_mode="livemax",
            registry=r)
        self.guardrail_status = Gauge(
            "recsys_rl_guardrail_status", "1 for the canary guardrail's status (none: no guardrail running)",
            ["surface", "status"], multiprocess_mode="livemax", registry=r)
        # Retrieval tuned to a recall target (recsys_rl/retrieval/tuning.py): what the index serving the surface
        # measured before it served, and the parameter it searches with. livemin / livemax: a worker still on an older
        # index shows until it swaps the new one in.
        self.retrieval_recall = Gauge(
            "recsys_rl_retrieval_recall", "recall@size against exact search measured by the surface's retrieval index "
            "at its tuned nprobe / ef_search (1: exact index); set only with a recall_target", ["surface"],
            multiprocess_mode="livemin", registry=r)
        self.retrieval_search_parameter = Gauge(
            "recsys_rl_retrieval_search_parameter", "The nprobe (ivf) or ef_search (hnsw) the surface's retrieval "
            "index searches with", ["surface", "parameter"], multiprocess_mode="livemax", registry=r)
        # labels() validates and locks on every call; the children are cached so a hook is a dict lookup + inc.
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):  # noqa: ANN001, ANN202 - a prometheus metric and its child
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _surface(self, surface: str) -> str:
        return surface if surface in self.surfaces else UNKNOWN_SURFACE

    # ------------------------------------------------------------------------------- ServingHooks

    def ranked(self, decision: Decision, seconds: float) -> None:
        surface = decision.surface
        self._child(self.rank_seconds, surface, _MODE_NAMES.get(decision.serving_mode, "unspecified"),
                    "OK").observe(seconds)
        slots = decision.slots
        self._child(self.slots, surface).inc(len(slots))
        explored = sum(1 for slot in slots if slot.explored)
        if explored:
            self._child(self.explored_slots, surface).inc(explored)
        if slots:
            self._child(self.min_propensity, surface).observe(min(slot.propensity for slot in slots))
        reason = decision.fallback_reason
        if reason:
            label = reason_label(reason)
            self._child(self.fallbacks, surface, label).inc()
            if label == "log_unavailable":
                return  # served unlogged: not a logged decision (the learner lag must not count it)
        self.newest_logged[surface] = self._clock()

    def rank_failed(self, surface: str, code: str, seconds: float) -> None:
        self._child(self.rank_seconds, self._surface(surface), "none", code).observe(seconds)

    def outcome_reported(self, code: str, seconds: float) -> None:
        self._child(self.report_outcome_seconds, code).observe(seconds)

    def outcome_attributed(self, surface: str, ack: OutcomeAck) -> None:
        result = "duplicate" if ack.duplicate else "attributed" if ack.attributed else "unattributed"
        self._child(self.outcomes, surface, result).inc()
