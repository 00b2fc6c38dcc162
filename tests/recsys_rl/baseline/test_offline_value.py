"""The LambdaRank baseline evaluated offline before it serves: on exploration logs of a real server (uniformly random
slates), its IPS estimate (``replay --policy baseline@VERSION`` + ``estimate``) covers its on-policy value, the
simulator's exact click rate of the slates it would serve on the same page views (``recsys_rl.sim.truth``); and
that value beats the host's baseline_score, which the simulator makes weak here (per-item noise of sd 3 on the logit
scale of appeal, ``SimConfig.baseline_noise``).

Slates of 2 out of 5 candidates keep the standard (joint-slate) IPS weights at most 20, so 2,500 decisions give an
interval narrow enough to mean something; the model is trained on a separate simulated log of another world.
"""

from __future__ import annotations

from pathlib import Path

from evaluators import estimate
from evaluators.replay.run import replay
from recsys_rl.baseline import baseline_surface
from recsys_rl.baseline.train import TrainConfig, train_from_data_dir
from recsys_rl.config import ExplorationConfig, ModelConfig, ServiceConfig, SurfaceConfig
from recsys_rl.serving.registry import ModelRegistry
from recsys_rl.sim import SimConfig, World
from recsys_rl.sim.host import run_host
from recsys_rl.sim.truth import target_click_rate
from tests.recsys_rl.slateq.simlog import write_sim_log

SIM = SimConfig(n_users=300, n_items=120, n_candidates=5, slate_size=2, baseline_noise=3.0)
EVAL_REQUESTS = 2500
MARGIN = 0.02  # absolute click rate per slate the learned baseline must gain over the host's score (truth)


def test_ips_of_the_learned_baseline_covers_its_true_value_and_it_beats_the_host(
        start_server, tmp_path: Path) -> None:  # noqa: ANN001
    train_dir = tmp_path / "train"
    write_sim_log(train_dir / "logs", decisions=3000, seed=21, config=SIM)
    result, _ = train_from_data_dir(train_dir, SurfaceConfig(), TrainConfig(num_rounds=60))

    uniform = SurfaceConfig(exploration_cap=1.0, exploration=ExplorationConfig(epsilon=1.0),
                            model=ModelConfig(learn=False))
    config = ServiceConfig(surfaces={"default": uniform}, seed=2)
    running = start_server(config, learner="off")
    world = World(SIM, seed=22)
    stats = run_host(running.stub, world, n_requests=EVAL_REQUESTS, keep_page_views=True)
    running.stop()
    data_dir = running.data_dir
    version = ModelRegistry(data_dir / "models").publish(
        baseline_surface("default"), result.model, parent=None, data_range={}, parameters={}).version
    page_views = {r.event_id: r.page_view for r in stats.records}

    spec = f"baseline@{version}"
    table = replay(data_dir, spec, surface="default", config=config, progress=False)
    ips = estimate(table, ["standard_ips"], ci="normal", alpha=0.05).row(0, named=True)
    truth = target_click_rate(data_dir, spec, world, page_views, surface=uniform).click_rate
    host = target_click_rate(data_dir, "baseline", world, page_views, surface=uniform).click_rate
    print(f"IPS {ips['value']:.4f} [{ips['ci_low']:.4f}, {ips['ci_high']:.4f}] ESS {ips['ess']:.0f}; "
          f"truth {truth:.4f}; host {host:.4f}")
    assert ips["ci_low"] <= truth <= ips["ci_high"]
    assert ips["ci_high"] - ips["ci_low"] < 0.15  # an interval that could miss
    assert truth - host >= MARGIN  # measured: truth 0.1118, host 0.0836 (+0.028); IPS 0.0960 [0.0418, 0.1502]
