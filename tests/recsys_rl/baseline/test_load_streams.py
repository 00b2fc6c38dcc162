"""Training on a log written by several workers: the same rows, in the same order, and the same model as on the same
records written by one process (``tests.log_streams``)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_rl.baseline.train import BaselineData, TrainConfig, load_data, train
from tests.log_streams import CONFIG, SplitLog, served_log, split_log

SURFACE = CONFIG.surfaces["default"]
FIELDS = ("x", "label", "propensity", "baseline", "group")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> SplitLog:
    root = tmp_path_factory.mktemp("train_streams")
    served_log(root / "served", 600, seed=3)
    return split_log(root / "served", root)


def _same(a: BaselineData, b: BaselineData) -> None:
    for name in FIELDS:
        left, right = getattr(a, name), getattr(b, name)
        assert left.shape == right.shape and np.array_equal(left, right, equal_nan=True), name
    assert a.spec == b.spec and a.data_range == b.data_range


@pytest.mark.parametrize("max_decisions", [None, 250])
def test_streams_train_on_the_rows_of_the_one_stream_log(split: SplitLog, max_decisions: int | None) -> None:
    # spec_sample below the log's size: which decisions come first depends on merging the streams by time.
    single = load_data(split.single / "logs", SURFACE, spec_sample=40, max_decisions=max_decisions)
    multi = load_data(split.multi / "logs", SURFACE, spec_sample=40, max_decisions=max_decisions)
    _same(multi, single)
    assert single.group.size == (max_decisions or 600) and single.label.any()


def test_streams_read_by_worker_processes_train_the_same_model(split: SplitLog) -> None:
    config = TrainConfig(num_rounds=20, min_decisions=50, spec_sample=40)
    single = load_data(split.single / "logs", SURFACE, spec_sample=40)
    multi = load_data(split.multi / "logs", SURFACE, spec_sample=40, workers=2)
    _same(multi, single)
    # The holdout split is by position in the log: only the same order gives the same model.
    assert train(multi, config).model == train(single, config).model
