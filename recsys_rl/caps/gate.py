"""The gate for raising an exploration cap: a signed evidence report, and its verification by the server.

``recsys-rl gate --data-dir D --surface S --cap X`` replays the surface's logs twice — the policy as it ran
(``logged``: each decision's own model version, so a policy that keeps learning is judged as the system it is)
at cap X (``logged@cap=X``), and as it ran (``logged``, at the caps then in force) — and checks

* ``lower_bound``: L(X) ≥ V̂(current) − tolerance, where L(X) is a one-sided (1 − α) lower confidence bound of
  the value at cap X that holds without normality: the lower end of the two-sided (1 − 2α) empirical-Bernstein
  interval (``evaluators.intervals``, Maurer & Pontil 2009) or of a Poisson-bootstrap percentile interval with
  ``n_bootstrap`` resamples; V̂(current) is the same estimator's point estimate;
* ``ess``: the effective sample size (Σw)²/Σw² of the cap-X weights ≥ ``min_ess``;
* ``support``: no row where the cap-X policy could serve what the logging policy could not;
  (``ess`` and ``support`` are the ``ess`` and ``support_violations`` reasons of ``evaluators.verdict`` under
  :func:`gate_verdict_policy`, the same logic that marks estimates unreliable in ``recsys-rl evaluate``; the
  report's target and current estimates also carry that verdict and all its reasons, for the reviewer)
* ``coverage``: the report covers at least one decision of the surface in this data dir's logs;
* ``method``: estimator, interval and α are the ones the gate configuration requires.

The default estimator is cascade IPS (``rips``): slots are drawn sequentially, so the weight of slot k is the
product of the slot weights of positions ≤ k (unbiased when a slot's reward depends on the items above it).

Authenticity: the report carries HMAC-SHA256 over its canonical JSON (sorted keys, no whitespace, the
``signature`` field left out) under a per-deployment key, ``D/admin/gate.key`` (32 random bytes, mode 0600,
created by the first gate run). It also records the log segments it read (path, size, SHA-256 of that prefix),
so the server — which shares D — checks that the report was produced here, from these logs, unedited, for this
surface and cap, recently, and re-evaluates every check under its own thresholds (:func:`verify_evidence`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_rl.caps.store import ADMIN_DIR, CapStore, check_cap, effective_cap
from recsys_rl.config import GateConfig, ServiceConfig, default_config
from recsys_rl.errors import InvalidInput, PreconditionFailed

if TYPE_CHECKING:
    from evaluators.verdict import VerdictPolicy

REPORT_FORMAT = "recsys-rl/gate-report/v1"
KEY_FILE = "gate.key"
# gRPC trailing metadata of a refused raise: a JSON list of "check: reason" strings (ranker.admin sets it).
FAILED_CHECKS_METADATA = "recsys-rl-failed-checks-bin"
_HASH_CHUNK = 1 << 20
# A report "from the future" by more than this is refused (clock skew between the gate's host and the server's).
_MAX_CLOCK_SKEW_S = 300.0

ReplayFn = Callable[..., Any]  # evaluators.replay.run.replay's signature; returns a polars DataFrame


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    reason: str

    def line(self) -> str:
        return f"{self.name}: {self.reason}"


class EvidenceRefused(PreconditionFailed):
    """The evidence does not allow the raise; ``failed`` lists every failed check."""

    def __init__(self, failed: list[GateCheck], digest: str = "") -> None:
        self.failed = failed
        self.digest = digest
        super().__init__(f"{len(failed)} failed gate check(s): " + "; ".join(c.line() for c in failed))


# --- key, signature, digests -----------------------------------------------------------------------------


def key_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / ADMIN_DIR / KEY_FILE


def load_key(data_dir: Path | str) -> bytes | None:
    """This deployment's gate key, or None when no gate has run here yet."""
    try:
        key = key_path(data_dir).read_bytes()
    except FileNotFoundError:
        return None
    return key if len(key) == 32 else None


def load_or_create_key(data_dir: Path | str) -> bytes:
    """The gate key, created on first use: written to a private temporary file, then hard-linked into place,
    so a concurrent reader never sees a partial key and two first runs agree on one key."""
    path = key_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = load_key(data_dir)
    if key is not None:
        return key
    tmp = path.with_name(f".{KEY_FILE}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another gate run won the race: use its key
    finally:
        tmp.unlink()
    key = load_key(data_dir)
    if key is None:
        raise OSError(f"{path}: not a 32-byte gate key")
    return key


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, no NaN: the bytes the signature covers."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign(body: Mapping[str, Any], key: bytes) -> str:
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    return hmac.new(key, canonical_json(unsigned), hashlib.sha256).hexdigest()


def evidence_digest(evidence: str | bytes) -> str:
    """SHA-256 (hex) of the evidence exactly as sent: the audit log's reference to it."""
    return hashlib.sha256(evidence.encode() if isinstance(evidence, str) else evidence).hexdigest()


def _prefix_sha256(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = size
        while remaining > 0:
            chunk = handle.read(min(_HASH_CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def log_manifest(data_dir: Path | str) -> dict[str, Any]:
    """The log segments under ``D/logs`` now, every stream's (``worker-K/events-...`` with several serving
    workers): relative path, size, SHA-256 of those bytes, and a digest of all.

    Segments only grow (and a closed one never changes), so a later check of the same prefixes proves the
    report was computed from these logs. Hashing costs one read of the log (~1 GB/s).
    """
    from logging_schema.segments import log_segments

    log_dir = Path(data_dir) / "logs"
    segments = []
    for path in log_segments(log_dir):
        size = path.stat().st_size
        segments.append({"path": path.relative_to(log_dir).as_posix(), "bytes": size,
                         "sha256": _prefix_sha256(path, size)})
    return {"segments": segments, "digest": hashlib.sha256(canonical_json({"s": segments})).hexdigest()}


def _manifest_problems(data_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    log_dir = data_dir / "logs"
    segments = manifest.get("segments")
    if not isinstance(segments, list) or not segments:
        return ["the report lists no log segment"]
    if hashlib.sha256(canonical_json({"s": segments})).hexdigest() != manifest.get("digest"):
        return ["the segment list does not match its digest"]
    problems = []
    for segment in segments:
        rel = Path(str(segment.get("path", "")))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            problems.append(f"segment path {str(rel)!r} is not inside the log directory")
            continue
        path, size = log_dir / rel, int(segment.get("bytes", -1))
        if not path.is_file():
            problems.append(f"segment {rel} is not in {log_dir}")
        elif path.stat().st_size < size:
            problems.append(f"segment {rel} is shorter than the report says ({path.stat().st_size} < {size} bytes)")
        elif _prefix_sha256(path, size) != segment.get("sha256"):
            problems.append(f"segment {rel} has other contents than the report was computed from")
        if len(problems) >= 3:
            problems.append("...")
            break
    return problems


# --- checks ----------------------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None  # type: ignore[arg-type]


def gate_verdict_policy(gate: GateConfig) -> VerdictPolicy:
    """The verdict thresholds of the gate: its ``min_ess`` (the gate allows 0, the verdict >= 1: no difference,
    as an ESS is >= 1 whenever any weight is positive) and no support violation allowed.

    Only the ``ess`` and ``support_violations`` reasons refuse a raise; the others (weight share, interval
    regime) are recorded in the report's ``verdict`` for the reviewer. The CLT-regime ESS follows ``min_ess``
    so that a passing gate ESS never reads as an interval-regime failure by itself.
    """
    from evaluators.verdict import VerdictPolicy  # lazily: the server imports this module, not the analysis stack

    min_ess = max(gate.min_ess, 1.0)
    return VerdictPolicy(min_ess=min_ess, allow_support_violations=False, min_ess_clt=min_ess)


def evaluate_checks(report: Mapping[str, Any], gate: GateConfig) -> list[GateCheck]:
    """The statistical checks of a report under ``gate``'s thresholds (the gate and the server both call it)."""
    checks: list[GateCheck] = []
    estimates = report.get("estimates") or {}
    target, current = estimates.get("target") or {}, estimates.get("current") or {}
    events = int((report.get("logs") or {}).get("events") or 0)
    surface = report.get("surface")
    checks.append(GateCheck("coverage", events > 0,
                            f"{events} decision(s) of surface {surface!r} replayed" if events > 0
                            else f"no decision of surface {surface!r} in the logs"))
    method = report.get("method") or {}
    wanted = {"estimator": gate.estimator, "ci": gate.ci, "alpha": gate.alpha}
    differs = [f"{k}={method.get(k)!r} (required {v!r})" for k, v in wanted.items() if method.get(k) != v]
    checks.append(GateCheck("method", not differs, "; ".join(differs) if differs
                            else f"{gate.estimator}, one-sided {gate.ci} bound at alpha={gate.alpha}"))

    low, value = _number(target.get("ci_low")), _number(current.get("value"))
    if low is None or value is None:
        checks.append(GateCheck("lower_bound", False, "no finite lower bound or current estimate (too few events?)"))
    else:
        floor = value - gate.tolerance
        verb = ">=" if low >= floor else "<"
        checks.append(GateCheck(
            "lower_bound", low >= floor,
            f"lower bound {low:.5g} at cap {report.get('cap')} {verb} current estimate {value:.5g} "
            f"- tolerance {gate.tolerance:g} = {floor:.5g}"))
    # ess and support come from the same verdict logic as every estimate (evaluators.verdict), so the gate names
    # the reasons `recsys-rl evaluate` shows; the report's own numbers are judged, never its stored verdict.
    from evaluators.verdict import verdict

    judged = verdict(target, None, gate_verdict_policy(gate))
    reasons = {r.code: r.text for r in judged.reasons}
    ess = _number(target.get("ess"))
    checks.append(GateCheck("ess", "ess" not in reasons, f"{reasons['ess']} (gate.min_ess)" if "ess" in reasons
                            else f"effective sample size {ess if ess is None else round(ess, 1)} >= {gate.min_ess:g}"))
    violations = target.get("support_violations")
    why = reasons.get("support_violations")
    if why is not None and isinstance(violations, int):
        why += f" row(s) the cap-{report.get('cap')} policy can serve but the logging policy could not"
    checks.append(GateCheck("support", why is None, why or "no support violations"))
    return checks


# --- the gate --------------------------------------------------------------------------------------------


def _served_at(table: Any, pick: str) -> str | None:
    if "served_at" not in table.columns or table.height == 0:
        return None
    value = getattr(table.get_column("served_at"), pick)()
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat() if value.tzinfo else value.isoformat() + "+00:00"
    return datetime.fromtimestamp(float(value) / 1e6, tz=timezone.utc).isoformat()  # microseconds since epoch


def _estimate(table: Any, gate: GateConfig) -> dict[str, Any]:
    from evaluators import estimate

    row = estimate(table, [gate.estimator], ci=gate.ci, alpha=2 * gate.alpha, seed=gate.seed,
                   n_bootstrap=gate.n_bootstrap, allow_support_violations=True,
                   verdict_policy=gate_verdict_policy(gate)).row(0, named=True)
    # verdict/reasons are for the reader; the checks re-judge the numbers (evaluate_checks), never these fields.
    keep = ("estimator", "value", "ci_low", "ci_high", "ci_method", "ci_note", "n", "ess", "max_weight",
            "max_weight_share", "clipped_share", "support_violations", "verdict", "reasons")
    # JSON has no NaN or infinity (an unbounded Bernstein interval has ci_low = -inf): those become null.
    return {k: None if isinstance(row[k], float) and not math.isfinite(row[k]) else row[k] for k in keep}


def _policy_version(data_dir: Path, surface: str) -> str:
    try:
        return (data_dir / "models" / surface / "LATEST").read_text().strip()
    except OSError:
        return ""


def run_gate(
    data_dir: Path | str, surface: str, cap: float, *, config: ServiceConfig | None = None,
    gate: GateConfig | None = None, replay_fn: ReplayFn | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Build and sign the evidence report for raising ``surface``'s cap to ``cap`` (passing or not).

    ``config`` gives the surface (reward definition, exploration); the current cap is the one recorded in
    ``D/admin/caps.json`` or else the configured one. ``gate`` defaults to the surface's ``gate`` section.
    ``replay_fn`` defaults to :func:`evaluators.replay.run.replay`. Raises InvalidInput naming the bad argument.
    """
    data_dir = Path(data_dir)
    if not (data_dir / "logs").is_dir():
        raise InvalidInput("--data-dir", f"no logs under {data_dir / 'logs'}")
    try:
        cap = check_cap(cap, "--cap")
    except ValueError as exc:
        raise InvalidInput("--cap", str(exc).split(": ", 1)[1]) from None
    config = config or default_config()
    surface_config = config.surface(surface)
    if surface_config is None:
        raise InvalidInput("--surface", f"unknown surface {surface!r} (configured: {', '.join(sorted(config.surfaces))})")
    gate = gate or getattr(surface_config, "gate", None) or GateConfig()
    if replay_fn is None:
        from evaluators.replay.run import replay as replay_fn
    stored = CapStore(data_dir).cap(surface)
    current_cap = effective_cap(surface_config.exploration_cap, stored)
    in_force = replace(config, surfaces={**config.surfaces, surface: replace(surface_config, exploration_cap=current_cap)})

    # Hash first: the replays then read at least these bytes (segments only grow).
    manifest = log_manifest(data_dir)
    policy_version = _policy_version(data_dir, surface)
    target_table = replay_fn(data_dir, f"logged@cap={cap!r}", surface=surface, config=in_force, progress=progress)
    current_table = replay_fn(data_dir, "logged", surface=surface, config=in_force, progress=progress)

    key = load_or_create_key(data_dir)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "surface": surface,
        "cap": cap,
        "current_cap": current_cap,
        "policy_version": policy_version,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "created_unix": time.time(),
        "key_id": hashlib.sha256(b"key-id" + key).hexdigest()[:16],
        "logs": {**manifest, "events": int(target_table.get_column("event_id").n_unique()),
                 "rows": target_table.height, "first_served_at": _served_at(target_table, "min"),
                 "last_served_at": _served_at(target_table, "max")},
        "method": {"estimator": gate.estimator, "ci": gate.ci, "alpha": gate.alpha,
                   "n_bootstrap": gate.n_bootstrap if gate.ci == "bootstrap" else None,
                   "lower_bound": f"lower end of the two-sided {1 - 2 * gate.alpha:g} {gate.ci} interval"},
        "estimates": {"target": {"policy": f"logged@cap={cap!r}", **_estimate(target_table, gate)},
                      "current": {"policy": "logged", **_estimate(current_table, gate)}},
        "thresholds": {"tolerance": gate.tolerance, "min_ess": gate.min_ess, "max_age_hours": gate.max_age_hours},
    }
    checks = evaluate_checks(report, gate)
    report["checks"] = [asdict(c) for c in checks]
    report["passed"] = all(c.passed for c in checks)
    report["signature"] = sign(report, key)
    return report


def write_report(report: Mapping[str, Any], out: Path | str) -> Path:
    """Write the report as indented JSON (the signature covers the content, not the layout)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n")
    tmp.replace(out)
    return out


# --- verification by the server --------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedEvidence:
    report: dict[str, Any]
    digest: str


def verify_evidence(evidence: str, *, data_dir: Path | str, surface: str, cap: float, gate: GateConfig,
                    current_cap: float | None = None, now: float | None = None) -> VerifiedEvidence:
    """Accept ``evidence`` for raising ``surface`` to ``cap`` or raise EvidenceRefused listing every failed check.

    Checks: ``evidence`` (a gate report at all), ``signature`` (HMAC under this deployment's key: refuses
    edited reports and reports from other deployments), ``surface``, ``cap`` (the report was made for exactly
    this cap), ``current_cap`` (when given: the report compared against the cap in force now), ``recency`` (within ``gate.max_age_hours``), ``logs`` (its segments are this data dir's, with
    the same bytes), and the statistical checks re-evaluated under ``gate`` (:func:`evaluate_checks`).
    """
    digest = evidence_digest(evidence)
    if not evidence.strip():
        raise EvidenceRefused([GateCheck("evidence", False, "raising the cap needs a report from `recsys-rl gate`"
                                                            f" --surface {surface} --cap {cap:g}")], digest)
    try:
        report = json.loads(evidence)
    except ValueError as exc:
        raise EvidenceRefused([GateCheck("evidence", False, f"not JSON: {exc}")], digest) from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise EvidenceRefused([GateCheck("evidence", False, f"not a {REPORT_FORMAT} report")], digest)
    data_dir = Path(data_dir)
    failed: list[GateCheck] = []
    key = load_key(data_dir)
    try:
        signed = key is not None and hmac.compare_digest(sign(report, key), str(report.get("signature", "")))
    except (TypeError, ValueError):  # values json.dumps cannot canonicalise (NaN): not something we signed
        signed = False
    if not signed:
        why = ("no gate has run in this deployment (no admin/gate.key)" if key is None
               else "the signature does not match: the report was edited or made by another deployment")
        failed.append(GateCheck("signature", False, why))
    if report.get("surface") != surface:
        failed.append(GateCheck("surface", False, f"the report is for surface {report.get('surface')!r}, not {surface!r}"))
    report_cap = _number(report.get("cap"))
    if report_cap is None or not math.isclose(report_cap, cap, rel_tol=0, abs_tol=1e-12):
        failed.append(GateCheck("cap", False, f"the report is for cap {report.get('cap')}, not {cap:g}"))
    if current_cap is not None:
        baseline = _number(report.get("current_cap"))
        if baseline is None or not math.isclose(baseline, current_cap, rel_tol=0, abs_tol=1e-12):
            failed.append(GateCheck("current_cap", False, f"the report compares against cap {report.get('current_cap')}"
                                                          f", but {current_cap:g} is in force: run the gate again"))
    created = _number(report.get("created_unix"))
    now = time.time() if now is None else now
    if created is None:
        failed.append(GateCheck("recency", False, "the report has no creation time"))
    elif now - created > gate.max_age_hours * 3600:
        failed.append(GateCheck("recency", False, f"the report is {(now - created) / 3600:.1f} h old "
                                                  f"(max {gate.max_age_hours:g} h): run the gate again"))
    elif created - now > _MAX_CLOCK_SKEW_S:
        failed.append(GateCheck("recency", False, "the report was created in the future"))
    problems = _manifest_problems(data_dir, report.get("logs") or {})
    if problems:
        failed.append(GateCheck("logs", False, "; ".join(problems)))
    try:
        failed.extend(c for c in evaluate_checks(report, gate) if not c.passed)
    except (TypeError, ValueError, AttributeError) as exc:
        failed.append(GateCheck("evidence", False, f"malformed report: {exc}"))
    if failed:
        raise EvidenceRefused(failed, digest)
    return VerifiedEvidence(report, digest)


class GateVerifier:
    """What the admin servicer asks: is this evidence enough to raise ``surface`` to ``cap``?

    ``gate_for(surface)`` gives the surface's thresholds (the server's own, not the report's).
    """

    def __init__(self, data_dir: Path | str, gate_for: Callable[[str], GateConfig] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.gate_for = gate_for or (lambda _surface: GateConfig())

    def verify(self, evidence: str, surface: str, cap: float, *, current_cap: float | None = None,
               now: float | None = None) -> VerifiedEvidence:
        return verify_evidence(evidence, data_dir=self.data_dir, surface=surface, cap=cap,
                               gate=self.gate_for(surface), current_cap=current_cap, now=now)
