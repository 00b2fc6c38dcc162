"""LambdaRank baseline: trained on a simulated log (uniformly random slates with exact propensities, written by
the SlateQ tests' log generator), it must beat the host's weak baseline_score on held-out page views of a fresh
world; bad data must fail with one line and publish nothing; replay must evaluate ``baseline@VERSION``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluators.replay.run import replay
from evaluators.replay.targets import parse_policy_spec
from recsys_rl.baseline.model import LambdaRankBaseline
from recsys_rl.baseline.train import TrainConfig, train_from_data_dir
from recsys_rl.cli import main
from recsys_rl.config import SurfaceConfig, default_config
from recsys_rl.errors import InvalidInput
from recsys_rl.serving.decision import baseline_order
from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.host import to_rank_request
from tests.recsys_rl.slateq.simlog import write_sim_log

SIM = SimConfig(n_users=60, n_items=80)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, LambdaRankBaseline]:
    data_dir = tmp_path_factory.mktemp("lambdarank")
    write_sim_log(data_dir / "logs", decisions=4000, seed=3, config=SIM)
    result, checkpoint = train_from_data_dir(data_dir, SurfaceConfig(), TrainConfig(num_rounds=100))
    assert result.report["ndcg@5"]["model"] > result.report["ndcg@5"]["baseline_score"]
    return data_dir, checkpoint.version, LambdaRankBaseline(checkpoint.model, version=checkpoint.version)


def test_beats_weak_host_score_on_fresh_world(trained: tuple[Path, str, LambdaRankBaseline]) -> None:
    """Exact click probabilities (World.slate_click_prob) of top-k slates on 1,500 held-out page views: the
    training world (same seed: same catalog and users), played past the 4,000 logged page views with random
    slates, then evaluated. The learned baseline must gain >= 0.02 absolute over the host's baseline_score."""
    _, _, model = trained
    world = World(SIM, seed=3)
    learned, host, skipped = [], [], 0
    while len(learned) < 1500:
        page_view = world.next_page_view()
        if page_view is None:
            world.next_day()
            continue
        if skipped < 4000:  # the log's share of the world's history
            skipped += 1
            world.respond(page_view, world.random_slate(page_view))
            continue
        request = to_rank_request(page_view, f"h{len(learned)}", "default", catalog=world.catalog)
        ids = [c.item_id for c in request.candidates]
        ours = [ids[i] for i in baseline_order(model.score(request), request.slate_size)]
        theirs = [ids[i] for i in baseline_order(np.array([c.baseline_score for c in request.candidates]),
                                                 request.slate_size)]
        learned.append(world.slate_click_prob(page_view, ours))
        host.append(world.slate_click_prob(page_view, theirs))
        world.respond(page_view, ours)
    margin = float(np.mean(learned) - np.mean(host))
    print(f"click prob: learned {np.mean(learned):.4f} host {np.mean(host):.4f} margin {margin:+.4f}")
    assert margin >= 0.02


def test_bad_data_one_line_exit_2_nothing_published(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    few = tmp_path / "few"
    write_sim_log(few / "logs", decisions=30, seed=1, config=SIM)
    assert main(["train", "baseline", "--data-dir", str(few), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "too few decisions: 30 < 100" in err
    assert not (few / "models" / "default.baseline").exists()
    assert main(["train", "baseline", "--data-dir", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_no_rewards_and_one_class() -> None:
    from recsys_rl.baseline.train import BaselineData, FeatureSpec, train

    group = np.full(200, 5)
    x = np.zeros((1000, 1))
    data = BaselineData(FeatureSpec(), x, np.zeros(1000, np.int32), np.full(1000, 0.5), x[:, 0], group,
                        {"outcomes": 0})
    with pytest.raises(InvalidInput, match="no rewards"):
        train(data, TrainConfig())
    data.label[:] = 1
    data.data_range["outcomes"] = 1000
    with pytest.raises(InvalidInput, match="one class"):
        train(data, TrainConfig())


def test_cli_publishes_a_version_with_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_sim_log(tmp_path / "logs", decisions=600, seed=5, config=SIM)
    assert main(["train", "baseline", "--data-dir", str(tmp_path), "--rounds", "20", "--no-progress",
                 "--max-decisions", "400", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    versions = sorted(p.name for p in (tmp_path / "models" / "default.baseline").iterdir() if p.name.startswith("v"))
    assert len(versions) == 1 and versions[0] in out
    manifest = json.loads((tmp_path / "models" / "default.baseline" / versions[0] / "manifest.json").read_text())
    assert manifest["data_range"]["sample"]["eligible_decisions"] == 600
    assert manifest["data_range"]["decisions"] == manifest["parameters"]["max_decisions"] == 400


def test_replay_baseline_at_version(trained: tuple[Path, str, LambdaRankBaseline]) -> None:
    data_dir, version, _ = trained
    assert parse_policy_spec(f"baseline@{version}").version == version
    table = replay(data_dir, f"baseline@{version}", surface="default", config=default_config(), progress=False)
    p = table.get_column("target_pscore").to_numpy()
    assert table.height > 0 and set(np.unique(p)) <= {0.0, 1.0} and p.sum() > 0  # Greedy: deterministic
    with pytest.raises(InvalidInput, match="v000099-deadbeef.*unknown version of surface 'default.baseline'"):
        replay(data_dir, "baseline@v000099-deadbeef", surface="default", config=default_config(), progress=False)
