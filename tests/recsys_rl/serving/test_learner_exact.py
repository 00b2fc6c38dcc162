"""The online learner's lean path (log table view, cached item examples) learns the same model, bit for bit, as the
reference path (every record parsed whole, fresh examples for every candidate), on a log a real server wrote."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from logging_schema.reader import iter_records
from logging_schema.tail import LogTailer
from logging_schema.views import TableRecord
from recsys_rl.config import default_config
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.serving.bandit import VWBandit
from recsys_rl.serving.learner import OnlineLearner, build_learners, learn_from_log
from recsys_rl.serving.registry import ModelRegistry
from recsys_rl.serving.service import DecisionService

DECISIONS = 120
CATALOG = 60  # items repeat across decisions: the lean path's cache hits


def _request(rng: random.Random, i: int) -> pb.RankRequest:
    request = pb.RankRequest(request_id=f"r{i}", surface="default", user_id=f"u{i % 7}", slate_size=4)
    request.context.numeric["hour"] = float(i % 5)
    request.context.categorical["device"] = ("ios", "web")[i % 2]
    for item in rng.sample(range(CATALOG), 25):
        # A baseline score that changes per request (and is sometimes 0, i.e. not serialized): the cache key must
        # strip it to find the item again.
        baseline = 0.0 if item % 5 == 0 else rng.random()
        candidate = request.candidates.add(item_id=f"item-{item}", baseline_score=baseline)
        candidate.features.numeric["price"] = float(item % 13)
        candidate.features.categorical["topic"] = f"t{item % 4}"
        candidate.features.tags.append(f"g{item % 3}")
        if item % 2:
            candidate.embedding.extend([item / 7.0, -item / 11.0])
    return request


@pytest.fixture(scope="module")
def served_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real DecisionService's log: decisions with clicks, purchases and repeats on about a third of them."""
    data_dir = tmp_path_factory.mktemp("served")
    service = DecisionService(default_config(), data_dir, learner="off", watch_models=False)
    rng = random.Random(7)
    try:
        for i in range(DECISIONS):
            decision, event_id = service.rank(_request(rng, i))
            if rng.random() < 0.35:
                for n in range(rng.randint(1, 3)):
                    item = decision.slots[rng.randrange(len(decision.slots))].item_id
                    service.report_outcome(pb.ReportOutcomeRequest(event_id=event_id, item_id=item, outcome="click",
                                                                   value=1.0, outcome_id=f"o{i}-{n % 2}"))
    finally:
        service.close()
    return data_dir


def _learner(data_dir: Path, *, cache_items: int = 100_000) -> OnlineLearner:
    config = default_config()
    learner = build_learners(config, ModelRegistry(data_dir / "models"))["default"]
    learner._bandit = VWBandit(config.surfaces["default"].model.vw_args,  # noqa: SLF001 - the cache size under test
                               model=learner._bandit.to_bytes(), cache_items=cache_items)  # type: ignore[attr-defined]
    return learner


@pytest.mark.parametrize("cache_items", [100_000, 10])  # 10: evictions inside every decision
def test_lean_and_reference_paths_learn_the_same_model(served_log: Path, cache_items: int) -> None:
    reference, lean = _learner(served_log), _learner(served_log, cache_items=cache_items)
    records = list(iter_records(served_log / "logs"))
    assert learn_from_log({"default": reference}, records, float("inf")) == DECISIONS

    views = LogTailer(served_log / "logs", record_type=TableRecord).poll(max_records=10**6)
    assert isinstance(views[0].decision.candidates[0], bytes)  # the lean path, not the reference again
    assert learn_from_log({"default": lean}, views, float("inf")) == DECISIONS

    assert reference.stats.outcomes_used == lean.stats.outcomes_used > 0
    assert reference.stats.updates == lean.stats.updates == 4 * DECISIONS
    cache = lean._bandit.cache.stats()  # type: ignore[attr-defined]  # noqa: SLF001
    if cache_items == 10:
        assert cache["evictions"] > 0
    else:  # each item parsed once, whatever its baseline score in each request
        assert cache["misses"] <= CATALOG < cache["hits"]
    assert reference._bandit.compare(lean._bandit) == ""  # type: ignore[attr-defined]  # noqa: SLF001


def test_a_logged_decision_repeating_an_item_learns_as_the_reference_does() -> None:
    """Serving refuses repeated item ids, but a log is input: the lean path must not put one cached example twice
    into an update (VW merges the shared features into it in place)."""
    event = events_pb2.DecisionEvent(event_id="e", surface="default")
    event.context.categorical["device"] = "ios"
    for item in ("a", "b", "a", "c"):
        event.candidates.add(item_id=item).features.numeric["price"] = 2.0
    for k, index in enumerate((3, 1)):  # both copies of "a" stay unlabelled actions
        event.slate.add(item_id=event.candidates[index].item_id, position=k, propensity=0.5, candidate_index=index)
    view = TableRecord.FromString(events_pb2.LogRecord(decision=event).SerializeToString()).decision
    vw_args = default_config().surfaces["default"].model.vw_args
    reference, lean = VWBandit(vw_args), VWBandit(vw_args)
    for _ in range(3):
        assert reference.learn(event, [1.0, 0.0]) == lean.learn(view, [1.0, 0.0]) == 2
    assert reference.compare(lean) == ""


def test_a_bad_logged_slot_is_refused_naming_the_field() -> None:
    event = events_pb2.DecisionEvent(event_id="e", surface="default")
    event.candidates.add(item_id="a")
    event.candidates.add(item_id="b")
    event.slate.add(item_id="b", position=0, propensity=0.5, candidate_index=0)
    view = TableRecord.FromString(events_pb2.LogRecord(decision=event).SerializeToString()).decision
    bandit = VWBandit(default_config().surfaces["default"].model.vw_args)
    with pytest.raises(ValueError, match=r"^slate\[0\]\.item_id"):
        bandit.learn(view, [1.0])
    event.slate[0].candidate_index = 5
    view = TableRecord.FromString(events_pb2.LogRecord(decision=event).SerializeToString()).decision
    with pytest.raises(ValueError, match=r"^slate\[0\]\.candidate_index"):
        bandit.learn(view, [1.0])
