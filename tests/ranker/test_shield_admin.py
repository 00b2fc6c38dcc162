"""GetShield/SetShield, ``recsys-rl shield show|set`` and replay by rules version, on a real server (127.0.0.1:0).

One scenario carries most checks: a server explores (ε-greedy under a cap) while an admin blocks the item it serves
on top; the next Rank no longer serves it and logs the new version; the change survives a restart on the same data
dir; replay of the log (two rules versions) reproduces every logged propensity bit for bit, and a what-if replays
it under other rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import polars as pl
import pytest

from evaluators.replay.run import replay
from logging_schema.reader import read_log
from recsys_rl.cli import main
from recsys_rl.config import ExplorationConfig, ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb
from recsys_rl.shield import parse_shield
from recsys_rl.caps.devcerts import AdminCredentials
from tests.helpers import OPERATOR, make_request

N, SLATE, REQUESTS = 8, 3, 150
EXPLORATION = ExplorationConfig(algorithm="epsilon_greedy", epsilon=0.6)
CONFIG = ServiceConfig(surfaces={"default": SurfaceConfig(
    exploration_cap=0.5, exploration=EXPLORATION, model=ModelConfig(learn=False), decision_budget_ms=60_000,
    shield=parse_shield({"max_per_value": {"topic": 1}}))}, seed=11)


def _served(running: object, prefix: str, count: int) -> list[list[str]]:
    return [[s.item_id for s in running.stub.Rank(  # type: ignore[attr-defined]
        make_request(N, SLATE, request_id=f"{prefix}-{r}"), timeout=10).slate] for r in range(count)]


def test_a_block_takes_effect_on_the_next_rank_survives_restart_and_replays_bit_for_bit(
        start_server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    running = start_server(CONFIG, data_dir=data, learner="off")
    admin = running.admin  # the admin listener, as the session's operator
    before = _served(running, "before", REQUESTS)
    top = max({s[0] for s in before}, key=[s[0] for s in before].count)  # the greedy item, served on top
    initial = admin.GetShield(admin_pb.GetShieldRequest(surface="default"), timeout=10)
    assert initial.version == CONFIG.surfaces["default"].shield.version

    reply = admin.SetShield(admin_pb.SetShieldRequest(surface="default", block_items=[top], actor="alice",
                                                      reason="takedown", expected_version=initial.version),
                            timeout=10)
    assert reply.old_version == initial.version and reply.version != initial.version
    assert reply.change.summary == "blocked 1 item" and reply.change.actor == OPERATOR  # verified, not typed
    after = _served(running, "after", REQUESTS)  # the very next Rank obeys the new rules
    assert all(top not in slate for slate in after)

    shown = admin.GetShield(admin_pb.GetShieldRequest(surface="default"), timeout=10)
    assert shown.version == reply.version and shown.rules.blocked_items_count == 1
    assert list(shown.rules.blocked_items) == [] and dict(shown.rules.max_per_value) == {"topic": 1}
    assert [(c.actor, c.new_version) for c in shown.history] == [
        ("recsys-rl serve", initial.version), (OPERATOR, reply.version)]
    running.stop()

    restarted = start_server(CONFIG, data_dir=data, learner="off")  # same TOML: the run-time change holds
    admin = restarted.admin
    assert admin.GetShield(admin_pb.GetShieldRequest(surface="default"), timeout=10).version == reply.version
    assert all(top not in slate for slate in _served(restarted, "restarted", 20))
    restarted.stop()

    events = read_log(data / "logs").decisions
    versions = [e.shield_version for e in events]
    assert versions == [initial.version] * REQUESTS + [reply.version] * (REQUESTS + 20)

    # Replay applies each decision's own rules: the logged policy reproduces every propensity bit for bit.
    table = replay(data, "logged", config=CONFIG, progress=False)
    assert table.height == len(events) * SLATE
    assert table["pscore"].to_list() == table["target_pscore"].to_list()

    # What-if: the original rules for every decision. Decisions served before the block are unchanged; after it,
    # the blocked item is feasible again, so the target's propensities differ where it was.
    what_if = replay(data, "logged", config=CONFIG, progress=False, shield=initial.version)
    changed = what_if.filter(pl.col("pscore") != pl.col("target_pscore"))["event_id"].unique()
    early = {e.event_id for e in events[:REQUESTS]}
    assert changed.len() > 0 and not set(changed.to_list()) & early
    assert what_if["pscore"].to_list() == table["pscore"].to_list()  # logged propensities stay as logged

    # The command line: --shield none / a rules TOML, and an unknown version is exit 2 naming --shield.
    rules_file = tmp_path / "whatif.toml"
    rules_file.write_text(f'blocked_items = ["{top}"]\nmax_per_value = {{ topic = 1 }}\n')
    out = tmp_path / "t.parquet"
    base = ["replay", "--data-dir", str(data), "--policy", "logged", "--out", str(out), "--no-progress"]
    assert main([*base, "--shield", str(rules_file)]) == 0
    # Those rules are the served ones after the block: identical there.
    from_file = pl.read_parquet(out).filter(~pl.col("event_id").is_in(list(early)))
    assert from_file["pscore"].to_list() == from_file["target_pscore"].to_list()
    assert main([*base, "--shield", "shield-00000000deadbeef"]) == 2


def test_bad_rules_and_races_are_refused_and_serving_goes_on(start_server) -> None:
    running = start_server(CONFIG, learner="off")
    admin = running.admin  # the admin listener, as the session's operator
    version = admin.GetShield(admin_pb.GetShieldRequest(surface="default"), timeout=10).version
    bad = [
        (admin_pb.SetShieldRequest(surface="default", replace_rules=True, actor="a",
                                   rules=admin_pb.ShieldRuleSet(max_per_value={"creator": 0})),
         "rules.max_per_value.creator: must be an integer >= 1"),
        (admin_pb.SetShieldRequest(surface="default", replace_rules=True, actor="a",
                                   rules=admin_pb.ShieldRuleSet(pinned={"x": -1})), "rules.pinned.x:"),
        (admin_pb.SetShieldRequest(surface="default", actor="a", rules=admin_pb.ShieldRuleSet(pinned={"x": 1})),
         "rules.pinned: set replace_rules"),
        (admin_pb.SetShieldRequest(surface="default", block_items=["x"], actor="a" * 201), "actor: longer than 200"),
        (admin_pb.SetShieldRequest(surface="nope", block_items=["x"], actor="a"), "surface: unknown surface"),
        (admin_pb.SetShieldRequest(surface="default", replace_rules=True, actor="a",
                                   rules=admin_pb.ShieldRuleSet(blocked_items_file="/nonexistent/ids.txt")),
         "rules.blocked_items_file: cannot read"),
    ]
    for request, message in bad:
        with pytest.raises(grpc.RpcError) as err:
            admin.SetShield(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(message), \
            err.value.details()
    assert len(_served(running, "still", 3)) == 3
    shown = admin.GetShield(admin_pb.GetShieldRequest(surface="default"), timeout=10)
    assert shown.version == version and len(shown.history) == 1  # nothing was audited

    # A read-modify-write race: the second writer's expected version is stale → ABORTED, nothing changes.
    first = admin.SetShield(admin_pb.SetShieldRequest(surface="default", block_items=["item-2"], actor="a",
                                                      expected_version=version), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        admin.SetShield(admin_pb.SetShieldRequest(surface="default", block_items=["item-3"], actor="b",
                                                  expected_version=version), timeout=10)
    assert err.value.code() == grpc.StatusCode.ABORTED and "expected_version" in err.value.details()
    shown = admin.GetShield(admin_pb.GetShieldRequest(surface="default", include_blocked_items=True), timeout=10)
    assert shown.version == first.version and list(shown.rules.blocked_items) == ["item-2"]


def test_cli_show_and_set(start_server, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          admin_credentials: AdminCredentials) -> None:
    running = start_server(CONFIG, learner="off")
    server = ["--server", running.admin_address, *admin_credentials.client_args(OPERATOR)]
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"bulk-{i}\n" for i in range(1000)))
    assert main(["shield", "set", *server, "--blocked-items-file", str(ids), "--block-item", "item-1",
                 "--actor", "ops", "--reason", "bulk takedown"]) == 0
    assert capsys.readouterr().out.strip().endswith("(audit #2): blocked 1001 items")
    assert main(["shield", "show", *server, "--format", "json", "--include-blocked-items"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["blocked_items_count"] == 1001 and "item-1" in shown["blocked_items"]
    assert shown["max_per_value"] == {"topic": 1} and shown["history"][-1]["actor"] == OPERATOR
    assert shown["history"][-1]["summary"] == "blocked 1001 items"

    rules = tmp_path / "rules.toml"
    rules.write_text('blocked_values = { topic = ["t3"] }\npinned = { "item-5" = 0 }\nmin_feasible = 2\n')
    assert main(["shield", "set", *server, "--rules", str(rules), "--unblock-item", "x", "--actor", "ops",
                 "--expected-version", shown["version"]]) == 0
    assert "replaced the rules" in capsys.readouterr().out
    assert main(["shield", "show", *server, "--history", "1"]) == 0
    text = capsys.readouterr().out
    assert "0 blocked items, min_feasible 2" in text and "pinned.item-5 = 0" in text
    assert text.count("\n#") == 1 and "\n#3 " in text and f"by {OPERATOR}: replaced the rules (unblocked 1001 items" in text
    assert text.rstrip().endswith("(on behalf of ops)")

    rules.write_text("max_per_value = { topic = 0 }\n")
    assert main(["shield", "set", *server, "--rules", str(rules), "--actor", "ops"]) == 2
    assert capsys.readouterr().err.strip().endswith("shield.max_per_value.topic: must be an integer >= 1, got 0")
    assert main(["shield", "set", *server, "--block-item", " ", "--actor", "ops"]) == 2
    assert "block_items[0]" in capsys.readouterr().err
    assert main(["shield", "set", *server, "--actor", "ops"]) == 2
    assert main(["shield", "show", *server, "--history", "-1"]) == 2
    assert main(["shield", "set", *server, "--block-item", "y", "--actor", "ops", "--expected-version", "old"]) == 1
    assert "ABORTED" in capsys.readouterr().err
