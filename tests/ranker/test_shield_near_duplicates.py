"""The near-duplicate shield rule on a real server (127.0.0.1:0), with embeddings from the item catalog.

Hosts send ids only; the catalog fills in features and embeddings. The rule is set at run time through SetShield
(bad θ refused naming the field, serving goes on), no served slate holds two near-duplicates, the log records the
candidates with their embeddings and the removals in ``shield_rules_fired``, and replay of the log under the logged
rules version reproduces every propensity bit for bit.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from evaluators.replay.run import replay
from logging_schema.reader import read_log
from recsys_rl.caps.devcerts import AdminCredentials
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from recsys_rl.cli import main
from recsys_rl.config import ExplorationConfig, ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.ranking.v1 import policy_admin_service_pb2 as admin_pb
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from tests.helpers import OPERATOR

N, SLATE, REQUESTS, THETA = 16, 5, 200, 0.9
CONFIG = ServiceConfig(surfaces={"default": SurfaceConfig(
    exploration_cap=0.6, exploration=ExplorationConfig(algorithm="epsilon_greedy", epsilon=0.8),
    model=ModelConfig(learn=False), decision_budget_ms=60_000)}, seed=3)


def _embeddings() -> np.ndarray:
    """16 items in 4 tight clusters of 4 (cosine > 0.95 within a cluster, < 0.5 across)."""
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8) * 3.0
    return np.vstack([centres[i // 4] + rng.normal(scale=0.1, size=8) for i in range(N)]).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _request(request_id: str) -> pb.RankRequest:
    request = pb.RankRequest(request_id=request_id, surface="default", user_id="u1", slate_size=SLATE)
    request.context.categorical["device"] = "ios"
    for i in range(N):
        request.candidates.add(item_id=f"item-{i}", baseline_score=float(N - i))  # ids only
    return request


def test_near_duplicates_never_served_logged_and_replayed_bit_for_bit(start_server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    running = start_server(CONFIG, data_dir=data, learner="off")
    vectors = _embeddings()
    items = [catalog_pb.CatalogItem(item_id=f"item-{i}", embedding=vectors[i].tolist()) for i in range(N)]
    for i, item in enumerate(items):
        item.features.categorical["topic"] = f"t{i % 3}"
    catalog_grpc.CatalogServiceStub(running.admin_channel).UpsertItems(
        iter([catalog_pb.UpsertItemsRequest(items=items)]), timeout=10)
    admin = running.admin
    bad = [({"replace_rules": True, "rules": admin_pb.ShieldRuleSet(
                near_duplicates=admin_pb.NearDuplicates(max_cosine=value))},
            f"rules.near_duplicates.max_cosine: must be in (0, 1], got {value}") for value in (0.0, 1.5, float("nan"))]
    bad.append(({"rules": admin_pb.ShieldRuleSet(near_duplicates=admin_pb.NearDuplicates(max_cosine=0.9))},
                "rules.near_duplicates: set replace_rules to replace the rules"))
    for fields, message in bad:
        with pytest.raises(grpc.RpcError) as err:
            admin.SetShield(admin_pb.SetShieldRequest(surface="default", actor="a", **fields), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == message, \
            err.value.details()
    before = running.stub.Rank(_request("before"), timeout=10)  # serving goes on, no rule yet
    assert len(before.slate) == SLATE

    reply = admin.SetShield(admin_pb.SetShieldRequest(
        surface="default", actor="a", replace_rules=True,
        rules=admin_pb.ShieldRuleSet(near_duplicates=admin_pb.NearDuplicates(max_cosine=THETA))), timeout=10)
    shown = admin.GetShield(admin_pb.GetShieldRequest(surface="default"), timeout=10)
    assert shown.version == reply.version and shown.rules.near_duplicates.max_cosine == THETA
    assert "near_duplicates.max_cosine = 0.9" in reply.change.summary

    for r in range(REQUESTS):
        slate = [int(s.item_id.split("-")[1]) for s in running.stub.Rank(_request(f"r{r}"), timeout=10).slate]
        # 4 clusters: one item of each, then nothing is feasible: a shorter slate (4 < SLATE).
        assert len(slate) == 4 and sorted(i // 4 for i in slate) == [0, 1, 2, 3], slate
        assert all(_cosine(vectors[a], vectors[b]) < THETA for a, b in itertools.combinations(slate, 2))
    running.stop()

    events = read_log(data / "logs").decisions
    assert [e.shield_version for e in events] == [""] + [reply.version] * REQUESTS
    for event in events[1:]:
        logged = np.array([list(c.embedding) for c in event.candidates], dtype=np.float32)
        assert logged.tobytes() == vectors.tobytes()  # the catalog's embeddings, as served: what replay reads
        placed = [s.candidate_index for s in event.slate]
        removed = [f for f in event.shield_rules_fired if f.startswith("near_duplicates:")]
        # The other items of the first 3 placed items' clusters, each listed once, at the slot after its cluster's
        # item was placed (slots of the slate only, as for max_per_value: the last item's removals are not listed).
        assert len(removed) == 9 and len({f.split("@")[0] for f in removed}) == 9
        for entry in removed:
            item, slot = entry.removeprefix("near_duplicates:item-").split("@slot")
            assert int(item) // 4 == placed[int(slot) - 1] // 4, entry

    table = replay(data, "logged", config=CONFIG, progress=False)
    assert table.height == 5 + 4 * REQUESTS
    assert table["pscore"].to_list() == table["target_pscore"].to_list()
    assert min(table["pscore"].to_list()) < 0.5  # exploration drew inside the feasible sets: not a trivial check


def test_cli_sets_and_shows_the_rule_and_refuses_a_bad_theta(start_server, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               admin_credentials: AdminCredentials) -> None:
    running = start_server(CONFIG, learner="off")
    server = ["--server", running.admin_address, *admin_credentials.client_args(OPERATOR)]
    rules = tmp_path / "rules.toml"
    rules.write_text("near_duplicates = { max_cosine = 0.97 }\nmax_per_value = { topic = 2 }\n")
    assert main(["shield", "set", *server, "--rules", str(rules), "--actor", "ops"]) == 0
    assert "near_duplicates.max_cosine = 0.97" in capsys.readouterr().out
    assert main(["shield", "show", *server, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["near_duplicates"] == {"max_cosine": 0.97} and shown["max_per_value"] == {"topic": 2}
    assert main(["shield", "show", *server]) == 0
    assert "  near_duplicates.max_cosine = 0.97\n" in capsys.readouterr().out

    rules.write_text("near_duplicates = { max_cosine = nan }\n")
    assert main(["shield", "set", *server, "--rules", str(rules), "--actor", "ops"]) == 2
    assert capsys.readouterr().err.strip().endswith("shield.near_duplicates.max_cosine: must be in (0, 1], got nan")
    assert main(["shield", "show", *server, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == shown["version"]  # nothing changed
