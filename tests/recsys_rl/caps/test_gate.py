"""The cap gate on real logs: a DecisionService (learner off) serving the simulator, then replay + estimators.

The simulated host lists candidates best-first (by the world's true utility). The untrained VW model scores
every candidate alike, so its greedy choice is the first candidate: a policy far better than uniform, whose
value falls as the cap (with epsilon = 1, the cap is the exploration mass) rises. On these logs (seed 0,
2000 decisions, 10 candidates, slate 2) the current policy's RIPS estimate is ≈ 0.23 and the one-sided
95% Bernstein lower bound at cap 0.15 ≈ 0.19, at cap 1.0 ≈ 0 with ESS ≈ 100.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from recsys_rl.caps.store import CapStore
from recsys_rl.config import ConfigError, ExplorationConfig, ServiceConfig, SurfaceConfig
from recsys_rl.errors import InvalidInput
from recsys_rl.caps.gate import (
    EvidenceRefused,
    GateConfig,
    evaluate_checks,
    gate_verdict_policy,
    key_path,
    load_key,
    run_gate,
    sign,
    verify_evidence,
)
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

N_DECISIONS = 2000
# Thresholds the passing raise (0.1 → 0.15) meets with margin on these logs: L(0.15) ≈ 0.191 ≥ 0.23 − 0.05.
GATE = GateConfig(tolerance=0.05, min_ess=1000)
CONFIG = ServiceConfig(surfaces={
    "default": SurfaceConfig(exploration_cap=0.1, exploration=ExplorationConfig(epsilon=1.0)),
    "other": SurfaceConfig(name="other", exploration_cap=0.1, exploration=ExplorationConfig(epsilon=1.0)),
})
CONFIG_TOML = """
[surfaces.default]
exploration_cap = 0.1
[surfaces.default.exploration]
epsilon = 1.0
"""


def simulate_logs(data_dir: Path, n: int = N_DECISIONS, *, config: ServiceConfig = CONFIG, seed: int = 0) -> float:
    """Serve ``n`` simulated page views on surface "default" in-process; returns the click rate."""
    from recsys_rl.serving.service import DecisionService
    from recsys_rl.sim import SimConfig, World
    from recsys_rl.sim.host import to_rank_request

    service = DecisionService(config, data_dir, learner="off", watch_models=False)
    world = World(SimConfig(n_candidates=10, slate_size=2), seed=seed)
    served = clicks = 0
    try:
        while served < n:
            page_view = world.next_page_view()
            if page_view is None:
                world.next_day()
                continue
            request = to_rank_request(page_view, f"r{served}", "default", catalog=world.catalog)
            best_first = [request.candidates[i] for i in np.argsort(-page_view.truth.utility, kind="stable")]
            del request.candidates[:]
            request.candidates.extend(best_first)
            decision, event_id = service.rank(request)
            response = world.respond(page_view, [slot.item_id for slot in decision.slots])
            if response.clicked_item_id is not None:
                clicks += 1
                service.report_outcome(pb.ReportOutcomeRequest(
                    event_id=event_id, item_id=response.clicked_item_id, outcome="click", value=1.0))
            served += 1
    finally:
        service.close()
    return clicks / n


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("gate") / "data"
    click_rate = simulate_logs(data_dir)
    assert 0.15 < click_rate < 0.35  # the best-first greedy policy: far above uniform (≈ 0.05 on these logs)
    return data_dir


@pytest.fixture(scope="module")
def passing(sim_dir: Path) -> dict:
    return run_gate(sim_dir, "default", 0.15, config=CONFIG, gate=GATE)


@pytest.fixture(scope="module")
def worse(sim_dir: Path) -> dict:
    return run_gate(sim_dir, "default", 1.0, config=CONFIG, gate=GATE)


def _failed(report: dict) -> set[str]:
    return {c["name"] for c in report["checks"] if not c["passed"]}


def _refused(evidence: str, data_dir: Path, **overrides: object) -> set[str]:
    args = {"surface": "default", "cap": 0.15, "gate": GATE, **overrides}
    with pytest.raises(EvidenceRefused) as refused:
        verify_evidence(evidence, data_dir=data_dir, **args)  # type: ignore[arg-type]
    return {check.name for check in refused.value.failed}


def test_passing_report_is_signed_complete_and_verifies(sim_dir: Path, passing: dict) -> None:
    assert passing["passed"], passing["checks"]
    assert _failed(passing) == set()
    assert {c["name"] for c in passing["checks"]} == {"coverage", "method", "lower_bound", "ess", "support"}
    assert (passing["surface"], passing["cap"], passing["current_cap"]) == ("default", 0.15, 0.1)
    assert passing["policy_version"].startswith("v")
    logs = passing["logs"]
    assert logs["events"] == N_DECISIONS and logs["rows"] == 2 * N_DECISIONS
    assert logs["segments"] and all(s["bytes"] > 0 for s in logs["segments"])
    assert logs["first_served_at"] <= logs["last_served_at"]
    target, current = passing["estimates"]["target"], passing["estimates"]["current"]
    assert target["ci_method"] == "bernstein" and target["support_violations"] == 0
    assert target["ci_low"] < target["value"] < current["value"]  # more exploration of a good policy costs
    key = key_path(sim_dir)
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert passing["signature"] == sign(passing, load_key(sim_dir))  # type: ignore[arg-type]
    text = json.dumps(passing, indent=2)
    verified = verify_evidence(text, data_dir=sim_dir, surface="default", cap=0.15, gate=GATE)
    assert verified.digest == hashlib.sha256(text.encode()).hexdigest()


def test_clearly_worse_target_fails_the_lower_bound_and_ess(sim_dir: Path, worse: dict) -> None:
    assert not worse["passed"]
    assert _failed(worse) == {"lower_bound", "ess"}
    target, current = worse["estimates"]["target"], worse["estimates"]["current"]
    assert target["value"] < current["value"] / 2  # uniform over 10 candidates vs best-first
    assert _refused(json.dumps(worse), sim_dir, cap=1.0) == {"lower_bound", "ess"}


def test_ess_check_alone(sim_dir: Path, passing: dict) -> None:
    ess = passing["estimates"]["target"]["ess"]
    assert 1000 < ess < 5000
    strict = GateConfig(tolerance=GATE.tolerance, min_ess=5000)
    assert _refused(json.dumps(passing), sim_dir, gate=strict) == {"ess"}
    report = run_gate(sim_dir, "default", 0.15, config=CONFIG, gate=strict)
    assert _failed(report) == {"ess"} and not report["passed"]


def test_gate_checks_name_the_same_reasons_as_the_verdict(worse: dict) -> None:
    from evaluators.verdict import split_reasons, verdict

    target = worse["estimates"]["target"]
    # The report's estimates carry the verdict under the gate's thresholds, for the reviewer ...
    assert target["verdict"] == "unreliable" and split_reasons(target["reasons"])[0] == f"ess: {target['ess']:.4g} < 1000"
    # ... and the refusing ess check states that same reason, recomputed from the numbers.
    ess_check = next(c for c in worse["checks"] if c["name"] == "ess")
    (reason,) = [r for r in verdict(target, None, gate_verdict_policy(GATE)).reasons if r.code == "ess"]
    assert ess_check["reason"] == f"{reason.text} (gate.min_ess)"


def test_gate_verdict_policy_follows_the_gate_config() -> None:
    policy = gate_verdict_policy(GateConfig(min_ess=250))
    assert (policy.min_ess, policy.min_ess_clt, policy.allow_support_violations) == (250, 250, False)
    assert gate_verdict_policy(GateConfig(min_ess=0)).min_ess == 1     # the gate allows 0; any ESS with weight is >= 1
    report = {"surface": "s", "cap": 0.3, "logs": {"events": 10},
              "method": {"estimator": "rips", "ci": "bernstein", "alpha": 0.05},
              "estimates": {"target": {"ci_low": 0.2, "ess": 249.99, "support_violations": 0},
                            "current": {"value": 0.2}}}
    checks = {c.name: c for c in evaluate_checks(report, GateConfig(min_ess=250))}
    assert not checks["ess"].passed and checks["ess"].reason == "ess: 249.99 < 250 (gate.min_ess)"
    report["estimates"]["target"]["ess"] = 250.0
    assert {c.name: c for c in evaluate_checks(report, GateConfig(min_ess=250))}["ess"].passed


def test_verify_refuses_edited_foreign_wrong_and_stale_reports(sim_dir: Path, passing: dict, tmp_path: Path) -> None:
    text = json.dumps(passing)
    edited = json.loads(text)
    edited["estimates"]["target"]["ci_low"] = 0.5
    assert _refused(json.dumps(edited), sim_dir) == {"signature"}
    unsigned = json.loads(text)
    del unsigned["signature"]
    assert _refused(json.dumps(unsigned), sim_dir) == {"signature"}
    assert _refused(text, sim_dir, surface="other") == {"surface"}
    assert _refused(text, sim_dir, cap=0.2) == {"cap"}
    assert _refused(text, sim_dir, current_cap=0.05) == {"current_cap"}
    verify_evidence(text, data_dir=sim_dir, surface="default", cap=0.15, gate=GATE, current_cap=0.1)
    assert _refused(text, sim_dir, now=passing["created_unix"] + 25 * 3600) == {"recency"}
    assert _refused(text, sim_dir, gate=GateConfig(tolerance=0.0, min_ess=1000)) == {"lower_bound"}
    assert _refused(text, sim_dir, gate=GateConfig(tolerance=0.05, min_ess=1000, ci="bootstrap")) == {"method"}
    # Another deployment (its own key, its own logs) cannot use the report, and cannot sign for this one.
    foreign = tmp_path / "foreign"
    shutil.copytree(sim_dir / "logs", foreign / "logs")
    assert _refused(text, foreign) == {"signature"}
    # The same deployment with different log bytes: the report was not computed from these logs.
    tampered = tmp_path / "tampered"
    shutil.copytree(sim_dir, tampered)
    segment = tampered / "logs" / passing["logs"]["segments"][0]["path"]
    data = bytearray(segment.read_bytes())
    data[100] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert _refused(text, tampered) == {"logs"}
    os.remove(segment)
    assert _refused(text, tampered) == {"logs"}
    for garbage in ("", "not json", json.dumps({"format": "something else"}), "[1, 2]"):
        assert _refused(garbage, sim_dir) == {"evidence"}


def test_recency_allows_fresh_reports_up_to_max_age(sim_dir: Path, passing: dict) -> None:
    text = json.dumps(passing)
    verify_evidence(text, data_dir=sim_dir, surface="default", cap=0.15, gate=GATE,
                    now=passing["created_unix"] + 23.9 * 3600)
    lax = GateConfig(tolerance=GATE.tolerance, min_ess=GATE.min_ess, max_age_hours=48)
    verify_evidence(text, data_dir=sim_dir, surface="default", cap=0.15, gate=lax,
                    now=passing["created_unix"] + 47 * 3600)
    # A re-signed report with an old creation time is refused for its age alone.
    old = dict(passing, created_unix=passing["created_unix"] - 30 * 3600)
    old["signature"] = sign(old, load_key(sim_dir))  # type: ignore[arg-type]
    assert _refused(json.dumps(old), sim_dir) == {"recency"}


def test_current_cap_comes_from_the_cap_store_and_bootstrap_bound(sim_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(sim_dir, data_dir)
    CapStore(data_dir).record(surface="default", actor="t", old_cap=0.1, new_cap=0.05, reason="",
                              evidence_digest="", outcome="accepted")
    gate = GateConfig(tolerance=0.05, min_ess=1000, ci="bootstrap", n_bootstrap=500)
    report = run_gate(data_dir, "default", 0.1, config=CONFIG, gate=gate)
    assert report["current_cap"] == 0.05
    assert report["estimates"]["current"]["policy"] == "logged"  # the system as it ran, at the caps it logged
    assert report["estimates"]["target"]["ci_method"] == "bootstrap"
    assert report["method"]["n_bootstrap"] == 500
    assert np.isfinite(report["estimates"]["target"]["ci_low"])


def test_betting_lower_bound_is_a_gate_method(sim_dir: Path, passing: dict) -> None:
    """The finite-sample betting interval can bound the gate's estimate: a finite lower bound below the estimate."""
    gate = GateConfig(tolerance=0.05, min_ess=1000, ci="betting")
    report = run_gate(sim_dir, "default", 0.15, config=CONFIG, gate=gate)
    target = report["estimates"]["target"]
    assert target["ci_method"] == "betting" and np.isfinite(target["ci_low"])
    assert target["ci_low"] <= target["value"]
    assert report["method"]["ci"] == "betting"


def test_run_gate_bad_input_names_the_argument(sim_dir: Path, tmp_path: Path) -> None:
    cases = [
        (dict(data_dir=sim_dir, surface="nope", cap=0.2), "--surface"),
        (dict(data_dir=sim_dir, surface="default", cap=1.5), "--cap"),
        (dict(data_dir=sim_dir, surface="default", cap=float("nan")), "--cap"),
        (dict(data_dir=tmp_path, surface="default", cap=0.2), "--data-dir"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidInput) as error:
            run_gate(kwargs.pop("data_dir"), **kwargs, config=CONFIG, gate=GATE)  # type: ignore[arg-type]
        assert error.value.field == field


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"tolerance": -0.1}, "gate.tolerance"), ({"min_ess": float("nan")}, "gate.min_ess"),
    ({"max_age_hours": 0}, "gate.max_age_hours"), ({"ci": "normal"}, "gate.ci"), ({"alpha": 0.5}, "gate.alpha"),
    ({"n_bootstrap": 10}, "gate.n_bootstrap"), ({"estimator": "ips,snips"}, "gate.estimator"),
])
def test_gate_config_rejects_bad_values(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        GateConfig(**kwargs)


def test_support_violations_and_missing_bounds_fail() -> None:
    report = {"surface": "s", "cap": 0.3, "logs": {"events": 10},
              "method": {"estimator": "rips", "ci": "bernstein", "alpha": 0.05},
              "estimates": {"target": {"ci_low": None, "ess": 5000.0, "support_violations": 3},
                            "current": {"value": 0.2}}}
    checks = {c.name: c for c in evaluate_checks(report, GateConfig())}
    assert not checks["support"].passed and "3 row(s)" in checks["support"].reason
    assert not checks["lower_bound"].passed
    assert checks["ess"].passed and checks["coverage"].passed and checks["method"].passed
    report["logs"] = {"events": 0}
    assert not {c.name: c for c in evaluate_checks(report, GateConfig())}["coverage"].passed


def _gate_cli(argv: list[str]) -> int:
    from recsys_rl.caps.cli import register

    parser = argparse.ArgumentParser(prog="recsys-rl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


def test_gate_cli_writes_a_failing_report_and_exits_3(sim_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "surfaces.toml"
    config.write_text(CONFIG_TOML)
    out = tmp_path / "report.json"
    code = _gate_cli(["gate", "--data-dir", str(sim_dir), "--surface", "default", "--cap", "1.0",
                      "--out", str(out), "--config", str(config)])
    captured = capsys.readouterr()
    assert code == 3
    assert captured.out.startswith("FAILED: ")
    assert "failed check lower_bound:" in captured.err and "failed check ess:" in captured.err
    report = json.loads(out.read_text())
    assert report["passed"] is False and report["cap"] == 1.0
    with pytest.raises(InvalidInput, match="--config"):
        _gate_cli(["gate", "--data-dir", str(sim_dir), "--cap", "0.2", "--out", str(out),
                   "--config", str(tmp_path / "missing.toml")])
    with pytest.raises(InvalidInput, match="--out"):
        _gate_cli(["gate", "--data-dir", str(sim_dir), "--cap", "0.2", "--out", str(tmp_path / "no" / "r.json")])
