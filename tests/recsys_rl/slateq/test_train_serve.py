"""Smoke test on a real log directory: ``train slateq`` via the CLI handler, the checkpoint, serving and reload."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from logging_schema.reader import read_log
from recsys_rl.errors import InvalidInput
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.registry import ModelRegistry
from recsys_rl.slateq import SURFACE
from recsys_rl.slateq.cli import register
from recsys_rl.slateq.data import _click_history
from recsys_rl.slateq.serving import ReloadableSlateQ, SlateQLoadError, SlateQValue
from recsys_rl.slateq.train import deserialize

from .simlog import write_sim_log

DECISIONS = 1500


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-rl")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    data_dir = tmp_path_factory.mktemp("slateq")
    assert write_sim_log(data_dir / "logs", decisions=DECISIONS, seed=5) == DECISIONS
    args = _parser().parse_args(["train", "slateq", "--data-dir", str(data_dir), "--steps", "200",
                                 "--batch-size", "64", "--seed", "3", "--no-progress"])  # fmt: skip
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.run(args) == 0
    return data_dir, json.loads(out.getvalue())


def test_train_publishes_a_versioned_checkpoint_with_manifest(trained: tuple[Path, dict]) -> None:
    data_dir, summary = trained
    assert summary["decisions"] == DECISIONS and summary["steps"] == 200
    version_dir = data_dir / "models" / SURFACE / summary["version"]
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["parent"] is None
    assert manifest["data_range"]["decisions"] == DECISIONS
    assert manifest["data_range"]["served_from_us"] < manifest["data_range"]["served_to_us"]
    assert manifest["parameters"]["train"]["gamma"] == 0.9 and manifest["parameters"]["train"]["seed"] == 3
    assert manifest["code_version"]
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    net = deserialize((version_dir / "model.bin").read_bytes())
    assert net.net_spec.history == 10


def test_second_training_records_its_parent(trained: tuple[Path, dict]) -> None:
    data_dir, first = trained
    args = _parser().parse_args(["train", "slateq", "--data-dir", str(data_dir), "--steps", "5",
                                 "--batch-size", "32", "--no-progress"])  # fmt: skip
    assert args.run(args) == 0
    latest = ModelRegistry(data_dir / "models").latest(SURFACE)
    assert latest is not None and latest.manifest["parent"] == first["version"]


def test_training_moved_the_choice_model_towards_logged_clicks(trained: tuple[Path, dict]) -> None:
    # The logs click on roughly a third of slates; an untrained no-click logit of ~0 among 5 items would put
    # P(no click) near 1/6. After training, the mean predicted P(no click) must be within 0.15 of the log's rate.
    data_dir, summary = trained
    log = read_log(data_dir / "logs")
    clicked_events = {o.event_id for o in log.outcomes if o.outcome == "click"}
    no_click_rate = 1 - len(clicked_events) / len(log.decisions)
    assert summary["final_losses"]["choice"] < np.log(6)  # better than uniform over 5 items + no click
    value = ReloadableSlateQ(data_dir / "models")
    value.load(summary["version"])
    net = deserialize(value.registry.load(SURFACE, summary["version"]).model)
    featurizer = value.current.featurizer  # type: ignore[union-attr]
    p0 = []
    with torch.inference_mode():
        for event in log.decisions[:300]:
            x, b = featurizer.candidates([event.candidates[s.candidate_index] for s in event.slate])
            s = net.state(torch.from_numpy(featurizer.features(event.context))[None],
                          torch.zeros(1, net.net_spec.history, net.net_spec.item_embed))
            e = net.items(torch.from_numpy(x), torch.from_numpy(b))[None]
            p0.append(net.choice_probs(s, e, torch.arange(len(x))[None])[0, 0].item())
    assert abs(float(np.mean(p0)) - no_click_rate) < 0.15


def _request(event) -> pb.RankRequest:  # noqa: ANN001 - DecisionEvent
    request = pb.RankRequest(request_id="r", user_id=event.user_id, context=event.context, slate_size=5)
    request.candidates.extend(event.candidates)
    return request


def test_serving_matches_the_torch_network_and_uses_the_user_history(trained: tuple[Path, dict]) -> None:
    data_dir, summary = trained
    checkpoint = ModelRegistry(data_dir / "models").load(SURFACE, summary["version"])
    value = SlateQValue.from_checkpoint(checkpoint)
    event = read_log(data_dir / "logs").decisions[0]
    request = _request(event)
    served = value.values(request)
    assert served.shape == (len(event.candidates),) and np.all(np.isfinite(served))

    net = deserialize(checkpoint.model)
    with torch.inference_mode():
        x, b = value.featurizer.candidates(request.candidates)
        s = net.state(torch.from_numpy(value.featurizer.features(request.context))[None],
                      torch.zeros(1, net.net_spec.history, net.net_spec.item_embed))
        expected = net.item_values(s, net.items(torch.from_numpy(x), torch.from_numpy(b))[None])[0].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-4)  # float32 torch vs float64 numpy

    value.observe(event.user_id, [request.candidates[0], request.candidates[1]])
    after = value.values(request)
    assert not np.allclose(after, served)  # the click history changed the state
    with torch.inference_mode():
        hist = torch.zeros(1, net.net_spec.history, net.net_spec.item_embed)
        hist[0, -2:] = net.items(torch.from_numpy(x[:2]), torch.from_numpy(b[:2]))
        s = net.state(torch.from_numpy(value.featurizer.features(request.context))[None], hist)
        expected = net.item_values(s, net.items(torch.from_numpy(x), torch.from_numpy(b))[None])[0].numpy()
    np.testing.assert_allclose(after, expected, atol=1e-4)
    assert value.values(pb.RankRequest(user_id="u")).shape == (0,)


def test_hot_reload_refuses_a_broken_checkpoint_and_keeps_serving(trained: tuple[Path, dict]) -> None:
    data_dir, summary = trained
    reloadable = ReloadableSlateQ(data_dir / "models")
    request = _request(read_log(data_dir / "logs").decisions[0])
    assert np.all(reloadable.values(request) == 0.0)  # nothing loaded yet: no long-term term
    assert reloadable.load(summary["version"]) == summary["version"]
    before = reloadable.values(request)

    registry = ModelRegistry(data_dir / "models")
    broken = registry.publish(SURFACE, b"not a torch checkpoint", parent=summary["version"], data_range={},
                              parameters={})  # fmt: skip
    with pytest.raises(SlateQLoadError, match=f"{broken.version}.*not a readable slateq checkpoint"):
        reloadable.load(broken.version)
    with pytest.raises(SlateQLoadError, match="v999999-00000000"):
        reloadable.load("v999999-00000000")
    assert reloadable.version == summary["version"]
    np.testing.assert_array_equal(reloadable.values(request), before)


def test_reload_under_concurrent_requests_drops_none(trained: tuple[Path, dict]) -> None:
    data_dir, summary = trained
    reloadable = ReloadableSlateQ(data_dir / "models")
    reloadable.load(summary["version"])
    request = _request(read_log(data_dir / "logs").decisions[0])
    errors: list[BaseException] = []
    served = [0]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                assert len(reloadable.values(request)) == len(request.candidates)
                served[0] += 1
            except BaseException as exc:  # noqa: BLE001 - any failure is the test's finding
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(5):
        reloadable.load(summary["version"])
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and served[0] > 0


def test_click_history_is_per_user_strictly_before_and_left_padded() -> None:
    users = np.array(["a", "a", "a", "a", "b", "b"])
    clicked = np.array([5, 0, 7, 9, 3, 0])
    history = _click_history(users, clicked, 2)
    assert history.tolist() == [[0, 0], [0, 5], [0, 5], [5, 7], [0, 0], [0, 3]]


def test_cli_rejects_bad_input_naming_the_parameter(tmp_path: Path) -> None:
    parser = _parser()
    with pytest.raises(InvalidInput, match="^--data-dir"):
        args = parser.parse_args(["train", "slateq", "--data-dir", str(tmp_path / "missing")])
        args.run(args)
    with pytest.raises(InvalidInput, match="^gamma"):
        args = parser.parse_args(["train", "slateq", "--data-dir", str(tmp_path), "--gamma", "2"])
        args.run(args)
    with pytest.raises(InvalidInput, match="^data_dir: no logs"):
        args = parser.parse_args(["train", "slateq", "--data-dir", str(tmp_path)])
        args.run(args)
