"""One surface's rollout evidence over every process serving the data dir (``serve --workers N``).

Inputs are the members ``evidence_files.read_members`` returns (each worker's published snapshot, the reader's own
from memory). With one member everything is exactly that process's view, as before workers existed.

Shadow statistics are sums, so they merge exactly: decisions, top-1 matches, overlap sums and fallbacks add up, the
rates are ratios of the sums (fallback rate = Σ fallbacks / Σ decisions), and the latency median comes from the sum
of the workers' latency histograms. shadow → canary is judged on these fleet totals.

Guardrails do not merge exactly: each worker's confidence sequence bets with predictable plug-ins that depend on
the order of its own rewards. The rules, per surface (docs/operations.md, "What a guardrail sees with N workers"):

* **Forward moves** (a larger canary share, live): every worker's guardrail must pass its own checks at the
  configured ``alpha`` (``min_decisions`` rewarded decisions per arm of its own, no failed check), and every worker
  must have published evidence about the rollout state in force (same audit sequence). The refusal names the
  workers that have not passed. Why ``alpha`` and not ``alpha/N``: a forward move needs "no evidence of harm", so
  what it risks is a miss (advancing a canary that hurts). A worker's guardrail at alpha/N has wider bounds and
  fails *later*, which would make advancing easier, the opposite of a safety margin; at ``alpha`` a forward move is
  allowed only if each of N independent looks, each as strong as a single server's guardrail, saw no harm. The
  price is on the other side: a fine canary is stopped falsely with probability up to N·alpha (each worker's
  guardrail may fail, and then reverts the surface); that is the false-revert rate already documented, set
  ``rollout.alpha`` to the fleet-wide rate / N to bound it (Bonferroni by configuration).
* **Reverts** stay per worker: the first worker whose guardrail fails reverts the surface for everyone.
* **The fleet summary** shown by ``rollout show``: counts and means are pooled exactly (Σ n, Σ n·mean / Σ n);
  each arm's bounds are the decision-weighted averages of the workers' bounds (weights n_k / Σ n). When every
  worker's sequences hold, which happens with probability ≥ 1 − K·alpha for K guardrails (union bound over their
  2K one-sided events at alpha/2 each), the pooled arm mean Σ (n_k/n) μ_k lies within them at every moment, so
  [canary_low − control_high, canary_high − control_low] is a confidence sequence on the fleet's canary − control
  at level 1 − K·alpha, which the summary reports as its ``alpha``. It is wider than one guardrail on all the
  traffic would be (about √K), and is informative only: moves are judged per worker as above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from recsys_rl.rollout.config import RolloutConfig
from recsys_rl.rollout.evidence_files import Member, SurfaceEvidence
from recsys_rl.rollout.guardrail import (Check, GuardrailShare, GuardrailSnapshot, LatencyHistogram, Status,
                                         evidence_estimates)
from recsys_rl.rollout.store import GuardrailEvidence
from recsys_rl.serving.shadow import ShadowStats, ShadowSums

_GUARDRAIL_CHECKS = ("canary_decisions", "control_decisions", "reward", "fallback_rate", "latency_p50")


@dataclass(frozen=True)
class WorkerView:
    """One member's line in ``rollout show``."""

    label: str
    pid: int
    rollout_sequence: int
    status: str  # "current", or why its guardrail does not count (behind, not serving, no evidence, stale)
    shadow: ShadowStats | None
    guardrail: GuardrailSnapshot | None


@dataclass(frozen=True)
class FleetRollout:
    """The evidence of ``surface`` over ``members``, judged against the rollout state in force (``sequence``)."""

    surface: str
    sequence: int  # the audit sequence of the reader's rollout state (after adopting other processes' changes)
    config: RolloutConfig
    members: tuple[Member, ...]

    @property
    def single(self) -> bool:
        return len(self.members) == 1

    def _current(self, member: Member) -> SurfaceEvidence | None:
        found = member.surface(self.surface)
        return found if found is not None and found.rollout_sequence == self.sequence else None

    def _status(self, member: Member) -> str:
        if member.problem:
            return member.problem
        found = member.surface(self.surface)
        if found is None:
            return "no evidence for this surface"
        if found.rollout_sequence != self.sequence:
            return f"behind: serves rollout #{found.rollout_sequence}, not #{self.sequence} yet"
        return "current"

    # --- shadow: exact sums ----------------------------------------------------------------------------------

    def shadow_sums(self) -> ShadowSums:
        return ShadowSums.merge(s.shadow for m in self.members if (s := m.surface(self.surface)) is not None)

    def shadow(self) -> ShadowStats:
        return self.shadow_sums().stats()

    def shadow_evidence(self) -> GuardrailEvidence:
        """shadow → canary: ``min_decisions`` shadow decisions and a fallback rate within the maximum, fleet-wide."""
        stats, need = self.shadow(), self.config.min_decisions
        detail = f"{stats.decisions} of {need}"
        if not self.single:
            detail += " (" + ", ".join(f"{m.label} {s.shadow.decisions if s else 0}"
                                       for m in self.members for s in [m.surface(self.surface)]) + ")"
        estimates: dict[str, object] = {"shadow": asdict(stats)}
        if not self.single:
            estimates["workers"] = {m.label: asdict(s.shadow.stats())
                                    for m in self.members if (s := m.surface(self.surface)) is not None}
        return GuardrailEvidence([
            ("shadow_decisions", stats.decisions >= need, detail),
            ("shadow_fallback_rate", stats.fallback_rate <= self.config.max_fallback_rate,
             f"{stats.fallback_rate:.4f} (max {self.config.max_fallback_rate:g})"),
        ], estimates)

    # --- guardrails: per worker ------------------------------------------------------------------------------

    def _shares(self) -> list[tuple[Member, GuardrailShare]]:
        return [(m, s.guardrail) for m in self.members if (s := self._current(m)) is not None and s.guardrail]

    def guardrail(self) -> GuardrailSnapshot | None:
        """The fleet summary (module docstring); one guardrail's own snapshot when it is the only one."""
        shares = self._shares()
        if not shares:
            return None
        if len(shares) == 1 and self.single:
            return shares[0][1].snapshot
        return combine([share for _, share in shares], self.config,
                       holding=len(shares) == len(self.members), labels=[m.label for m, _ in shares])

    def guardrail_evidence(self) -> GuardrailEvidence | None:
        """A larger share or live: every member's guardrail passes its checks (module docstring). None when no
        member runs a guardrail for the state in force."""
        shares = dict((m.label, share) for m, share in self._shares())
        if not shares:
            return None
        if self.single:
            share = next(iter(shares.values()))
            return GuardrailEvidence(list(share.checks), evidence_estimates(share.snapshot))
        need = self.config.min_decisions
        per_member: dict[str, dict[str, tuple[bool, str]]] = {}
        for member in self.members:
            if self._current(member) is None:
                continue  # named by the "workers" check
            share = shares.get(member.label)
            if share is None:  # current, but it served no canary decision yet
                per_member[member.label] = {"canary_decisions": (False, f"0 of {need}"),
                                            "control_decisions": (False, f"0 of {need}")}
            else:
                per_member[member.label] = {name: (passed, detail) for name, passed, detail in share.checks}
        checks: list[Check] = []
        lagging = [f"{m.label}: {self._status(m)}" for m in self.members if self._current(m) is None]
        checks.append(("workers", not lagging, "; ".join(lagging) if lagging else
                       f"all {len(self.members)} workers publish evidence for rollout #{self.sequence}"))
        for name in _GUARDRAIL_CHECKS:
            results = {label: found[name] for label, found in per_member.items() if name in found}
            if not results:
                continue
            failed = [label for label, (passed, _) in results.items() if not passed]
            detail = ", ".join(f"{label} {detail}" for label, (_, detail) in results.items())
            checks.append((name, not failed, f"not passed by {', '.join(failed)}: {detail}" if failed else detail))
        summary = self.guardrail()
        estimates: dict[str, object] = {} if summary is None else {"fleet": evidence_estimates(summary)}
        estimates["workers"] = {label: evidence_estimates(share.snapshot) for label, share in shares.items()}
        return GuardrailEvidence(checks, estimates)

    # --- display and settling --------------------------------------------------------------------------------

    def workers(self) -> list[WorkerView]:
        views = []
        for member in self.members:
            found = member.surface(self.surface)
            current = self._current(member)
            views.append(WorkerView(
                member.label, member.pid or 0, found.rollout_sequence if found else 0, self._status(member),
                found.shadow.stats() if found else None,
                current.guardrail.snapshot if current and current.guardrail else None))
        return views

    def settled(self, since_unix: float) -> bool:
        """Every other member published a snapshot made after ``since_unix`` about the state in force."""
        return all(m.own or (m.evidence is not None and m.evidence.as_of_unix >= since_unix
                             and self._current(m) is not None) for m in self.members)


def combine(shares: Sequence[GuardrailShare], config: RolloutConfig, *, holding: bool,
            labels: Iterable[str]) -> GuardrailSnapshot:
    """The fleet summary of several guardrails (module docstring). ``holding``: every member runs one."""
    snapshots = [share.snapshot for share in shares]

    def pooled(arm: str) -> tuple[int, float, float, float]:
        counts = [getattr(s, f"{arm}_decisions") for s in snapshots]
        total = sum(counts)
        weights = [n / total for n in counts] if total else [1 / len(counts)] * len(counts)
        bounds = [getattr(share, f"{arm}_bounds") for share in shares]
        mean = sum(n * getattr(s, f"{arm}_mean_reward") for n, s in zip(counts, snapshots, strict=True) if n)
        return (total, mean / total if total else math.nan, sum(w * b[0] for w, b in zip(weights, bounds, strict=True)),
                sum(w * b[1] for w, b in zip(weights, bounds, strict=True)))

    canary_n, canary_mean, canary_low, canary_high = pooled("canary")
    control_n, control_mean, control_low, control_high = pooled("control")
    latency = LatencyHistogram()
    for share in shares:
        latency.merge(LatencyHistogram.from_sparse(dict(share.latency_bins)))
    served = sum(s.canary_served for s in snapshots)
    failed = tuple(f"{label}: {check}" for label, s in zip(labels, snapshots, strict=True) for check in s.failed_checks)
    if failed:
        status = Status.FAILED
    elif holding and all(s.status == Status.HOLDING.value for s in snapshots):
        status = Status.HOLDING
    else:
        status = Status.COLLECTING
    return GuardrailSnapshot(
        status=status.value, canary_decisions=canary_n, control_decisions=control_n,
        canary_mean_reward=canary_mean, control_mean_reward=control_mean,
        difference_low=canary_low - control_high, difference_high=canary_high - control_low,
        tolerance=config.tolerance, alpha=min(1.0, len(shares) * config.alpha),
        canary_fallback_rate=sum(share.canary_fallbacks for share in shares) / served if served else math.nan,
        canary_latency_p50_ms=latency.median(), canary_served=served, failed_checks=failed)


__all__ = ["FleetRollout", "WorkerView", "combine"]
