"""Nothing counted twice, over the wire: outcome_id retries, max/sum aggregation, the reward range, a restart,
the attribution window's edge online, and the online learner's rewards against ``logs export`` on the same log."""

from __future__ import annotations

from pathlib import Path

import grpc
import polars as pl
import pytest

from logging_schema.reader import iter_records, read_log
from logging_schema.rewards import micros
from recsys_rl.cli import main as cli_main
from recsys_rl.config import load_config
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.serving.learner import OnlineLearner
from recsys_rl.serving.registry import ModelRegistry
from tests.helpers import make_request

CONFIG = """
[surfaces.default.reward]
weights = { click = 1.0, dwell_seconds = 0.01, purchase = 2.0 }
attribution_window_seconds = 600
aggregation = { dwell_seconds = "sum" }
range = [0.0, 3.0]
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "surfaces.toml"
    path.write_text(CONFIG)
    return path


def _report(stub: object, event_id: str, item_id: str, outcome: str, value: float, outcome_id: str = "",
            occurred_at_us: int | None = None) -> pb.ReportOutcomeResponse:
    request = pb.ReportOutcomeRequest(event_id=event_id, item_id=item_id, outcome=outcome, value=value,
                                      outcome_id=outcome_id)
    if occurred_at_us is not None:
        request.occurred_at.FromMicroseconds(occurred_at_us)
    return stub.ReportOutcome(request, timeout=10)  # type: ignore[attr-defined]


def _export(data_dir: Path, config_path: Path | None, out: Path) -> pl.DataFrame:
    args = ["logs", "export", "--data-dir", str(data_dir), "--out", str(out)]
    assert cli_main([*args, "--config", str(config_path)] if config_path else args) == 0
    return pl.read_parquet(out)


def _reward(table: pl.DataFrame, event_id: str, item_id: str) -> float:
    return table.filter((pl.col("event_id") == event_id) & (pl.col("item_id") == item_id))["reward"].item()


def test_a_click_retried_with_its_outcome_id_is_logged_and_counted_once(start_server, tmp_path: Path) -> None:
    running = start_server(learner="off")
    ranked = running.stub.Rank(make_request(), timeout=10)
    item = ranked.slate[0].item_id
    acks = [_report(running.stub, ranked.event_id, item, "click", 1.0, "click-1") for _ in range(3)]
    assert [(a.attributed, a.duplicate) for a in acks] == [(True, False), (True, True), (True, True)]
    running.stop()

    outcomes = read_log(running.data_dir / "logs").outcomes
    assert [(o.event_id, o.item_id, o.outcome_id) for o in outcomes] == [(ranked.event_id, item, "click-1")]
    table = _export(running.data_dir, None, tmp_path / "export.parquet")
    assert _reward(table, ranked.event_id, item) == 1.0
    assert table["reward_min"].unique().to_list() == [0.0] and table["reward_max"].unique().to_list() == [1.0]


def test_a_click_repeated_without_ids_counts_once_by_max(start_server, tmp_path: Path) -> None:
    running = start_server(learner="off")
    ranked = running.stub.Rank(make_request(), timeout=10)
    item = ranked.slate[1].item_id
    acks = [_report(running.stub, ranked.event_id, item, "click", 1.0) for _ in range(3)]
    assert [(a.attributed, a.duplicate) for a in acks] == [(True, False)] * 3  # no id: nothing to recognise
    running.stop()

    assert len(read_log(running.data_dir / "logs").outcomes) == 3  # logged as sent...
    table = _export(running.data_dir, None, tmp_path / "export.parquet")
    assert _reward(table, ranked.event_id, item) == 1.0  # ...but a click counts once (was 3.0)
    assert table.filter(pl.col("item_id") == item)["n_outcomes"].item() == 3


def test_dwell_sums_its_pieces_and_the_sum_is_clipped_to_the_range(start_server, config_path: Path,
                                                                   tmp_path: Path) -> None:
    running = start_server(load_config(config_path), learner="off")
    ranked = running.stub.Rank(make_request(), timeout=10)
    first, second = ranked.slate[0].item_id, ranked.slate[1].item_id
    for piece, seconds in enumerate((30.0, 40.0, 30.0)):
        assert _report(running.stub, ranked.event_id, first, "dwell_seconds", seconds, f"dwell-{piece}").attributed
    assert _report(running.stub, ranked.event_id, first, "dwell_seconds", 40.0, "dwell-1").duplicate  # a retry
    assert _report(running.stub, ranked.event_id, first, "click", 1.0, "click").attributed
    # second: click 1 + purchase 2 + dwell 0.5 = 3.5, clipped to the declared range's top, 3.
    _report(running.stub, ranked.event_id, second, "click", 1.0)
    _report(running.stub, ranked.event_id, second, "purchase", 1.0)
    _report(running.stub, ranked.event_id, second, "dwell_seconds", 50.0)
    with pytest.raises(grpc.RpcError) as err:  # 2.0 × 2 = 4 cannot fit [0, 3] on its own: refused
        _report(running.stub, ranked.event_id, second, "purchase", 2.0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("value")
    running.stop()

    table = _export(running.data_dir, config_path, tmp_path / "export.parquet")
    assert _reward(table, ranked.event_id, first) == pytest.approx(1.0 + 0.01 * (30 + 40 + 30))
    assert _reward(table, ranked.event_id, second) == 3.0
    assert table["reward_max"].unique().to_list() == [3.0]


def test_a_retry_after_a_restart_inside_the_window_is_still_a_duplicate(start_server, config_path: Path,
                                                                        tmp_path: Path) -> None:
    config = load_config(config_path)
    running = start_server(config, learner="off")
    ranked = running.stub.Rank(make_request(), timeout=10)
    item = ranked.slate[0].item_id
    late_us = 2_000_000_000 * 1_000_000  # far after the window: logged, not attributed
    assert _report(running.stub, ranked.event_id, item, "click", 1.0, "c1").attributed
    assert not _report(running.stub, ranked.event_id, item, "purchase", 1.0, "p1", late_us).attributed
    running.stop()

    again = start_server(config, data_dir=running.data_dir, learner="off")
    retried = [_report(again.stub, ranked.event_id, item, "click", 1.0, "c1"),
               _report(again.stub, ranked.event_id, item, "purchase", 1.0, "p1", late_us)]
    assert [(a.attributed, a.duplicate) for a in retried] == [(True, True), (False, True)]  # the first answers
    assert not _report(again.stub, ranked.event_id, item, "click", 1.0, "c2").duplicate  # a new key is new
    again.stop()

    assert [o.outcome_id for o in read_log(running.data_dir / "logs").outcomes] == ["c1", "p1", "c2"]
    assert _reward(_export(running.data_dir, config_path, tmp_path / "x.parquet"), ranked.event_id, item) == 1.0


def test_bad_outcome_ids_and_values_are_invalid_argument_naming_the_field(start_server) -> None:
    running = start_server(learner="off")
    ranked = running.stub.Rank(make_request(), timeout=10)
    item = ranked.slate[0].item_id
    cases = [("x" * 257, 1.0, "outcome_id"), ("é" * 129, 1.0, "outcome_id"),  # 258 bytes in UTF-8
             ("ok", 2.0, "value"), ("ok", -1.0, "value")]  # click weight 1, range [0, 1]
    for outcome_id, value, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            _report(running.stub, ranked.event_id, item, "click", value, outcome_id)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(field), err.value.details()
    assert not _report(running.stub, ranked.event_id, item, "click", 1.0, "x" * 256).duplicate  # the limit is fine


def test_online_attribution_and_the_offline_join_agree_at_the_window_edge(start_server, tmp_path: Path) -> None:
    running = start_server(learner="off")  # default surface: click, 5 s window
    ranked = running.stub.Rank(make_request(), timeout=10)
    assert running.server.service.writer.flush(timeout=10)
    decision = next(d for d in read_log(running.data_dir / "logs").decisions if d.event_id == ranked.event_id)
    edge_us = micros(decision.served_at.seconds, decision.served_at.nanos) + 5_000_000
    at_edge, past_edge = ranked.slate[0].item_id, ranked.slate[1].item_id
    assert _report(running.stub, ranked.event_id, at_edge, "click", 1.0, occurred_at_us=edge_us).attributed
    assert not _report(running.stub, ranked.event_id, past_edge, "click", 1.0, occurred_at_us=edge_us + 1).attributed
    running.stop()

    table = _export(running.data_dir, None, tmp_path / "export.parquet")
    assert (_reward(table, ranked.event_id, at_edge), _reward(table, ranked.event_id, past_edge)) == (1.0, 0.0)


class _RecordingBandit(VWBandit):
    """A real VW bandit that also keeps the per-slot rewards it was asked to learn."""

    def __init__(self, vw_args: str) -> None:
        super().__init__(vw_args)
        self.rewards: dict[str, list[float]] = {}

    def learn(self, event: object, rewards: list[float]) -> int:
        self.rewards[event.event_id] = list(rewards)  # type: ignore[attr-defined]
        return super().learn(event, rewards)  # type: ignore[arg-type]


def test_the_online_learner_learns_the_rewards_logs_export_reports(start_server, config_path: Path,
                                                                   tmp_path: Path) -> None:
    config = load_config(config_path)
    running = start_server(config, learner="off")
    events = []
    for i in range(6):
        ranked = running.stub.Rank(make_request(request_id=f"r{i}"), timeout=10)
        events.append(ranked.event_id)
        slate = [slot.item_id for slot in ranked.slate]
        for repeat in range(i % 3 + 1):  # repeats with and without ids, on several outcome kinds
            _report(running.stub, ranked.event_id, slate[0], "click", 1.0, f"c{repeat % 2}")
            _report(running.stub, ranked.event_id, slate[1], "click", 1.0)
            _report(running.stub, ranked.event_id, slate[2], "dwell_seconds", 20.0 * (repeat + 1), f"d{repeat}")
            _report(running.stub, ranked.event_id, slate[2], "dwell_seconds", 15.0)
            _report(running.stub, ranked.event_id, slate[3], "purchase", 1.0, "p")
        _report(running.stub, ranked.event_id, "", "purchase", 1.0, "slate")  # whole slate: not in item rewards
    running.stop()

    surface = config.surfaces["default"]
    bandit = _RecordingBandit(surface.model.vw_args)
    learner = OnlineLearner(surface, bandit, ModelRegistry(tmp_path / "models"), parent_version="none")
    for record in iter_records(running.data_dir / "logs"):
        learner.consume(record)
    assert learner.step(float("inf")) == len(events)

    table = _export(running.data_dir, config_path, tmp_path / "export.parquet").sort("event_id", "position")
    for event_id in events:
        offline = table.filter(pl.col("event_id") == event_id)["reward"].to_list()
        assert bandit.rewards[event_id] == pytest.approx(offline, abs=1e-12)
    assert {round(r, 9) for rewards in bandit.rewards.values() for r in rewards} >= {0.0, 1.0, 2.0}
    assert max(r for rewards in bandit.rewards.values() for r in rewards) <= 3.0
