"""The training read: segments read by worker processes give rows bit for bit equal to the single-pass reader this
replaced (kept below as the reference), and the --max-decisions cap keeps a deterministic uniform sample (the
smallest event-id hashes), recorded in the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from logging_schema.reader import iter_records
from logging_schema.segments import file_header, frame, list_segments, scan_segment, segment_name
from logging_schema.tables import decisions_frame, join_rewards, outcomes_frame
from logging_schema.views import TableRecord
from recsys_rl.baseline.model import FeatureSpec, ItemRowCache
from recsys_rl.baseline.train import BaselineData, TrainConfig, load_data, sample_key, train_from_data_dir
from recsys_rl.config import SurfaceConfig
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.sim import SimConfig
from tests.recsys_rl.slateq.simlog import write_sim_log

SIM = SimConfig(n_users=60, n_items=80)
FIELDS = ("x", "label", "propensity", "baseline", "group")


def reference_load(log_dir: Path, surface: SurfaceConfig, spec_sample: int) -> BaselineData:
    """The reader before parallel segments and sampling (one pass, one process), trimmed to what it computed."""
    events: list[Any] = []
    outcomes: list[Any] = []
    for record in iter_records(log_dir, record_type=TableRecord):
        kind = record.WhichOneof("event")
        if kind == "outcome" and record.outcome.surface in (surface.name, ""):
            outcomes.append(record.outcome)
        elif kind == "decision" and record.decision.surface == surface.name and record.decision.slate:
            event = record.decision
            events.append((event, pb.Features.FromString(event.context),
                           [pb.Candidate.FromString(event.candidates[s.candidate_index]) for s in event.slate]))
            del event.candidates[:]
    spec = FeatureSpec.fit([c for _, c, _ in events[:spec_sample]], [x for _, _, s in events[:spec_sample] for x in s])
    cache = ItemRowCache(spec)
    rows = [spec.matrix(context, served, cache) for _, context, served in events]
    joined = join_rewards(decisions_frame(e for e, _, _ in events), outcomes_frame(outcomes),
                          {surface.name: surface.reward})
    group = joined.group_by("event_id", maintain_order=True).len().get_column("len").to_numpy()
    x = np.concatenate(rows)
    return BaselineData(spec, x, (joined.get_column("reward").fill_null(0.0).to_numpy() > 0).astype(np.int32),
                        joined.get_column("propensity").to_numpy(), x[:, 0].copy(), group,
                        {"decisions": int(group.size), "outcomes": len(outcomes)})


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 decisions re-framed into segments of 250 records (the writer's own segments are ~64 MB), so the
    workers get several segments each and outcomes land in other segments than their decisions."""
    root = tmp_path_factory.mktemp("lrload")
    write_sim_log(root / "written", decisions=1500, seed=7, config=SIM)
    payloads = [bytes(p) for path in list_segments(root / "written") for p in scan_segment(path)]
    out = root / "logs"
    out.mkdir()
    for i in range(0, len(payloads), 250):
        (out / segment_name(i // 250)).write_bytes(file_header() + b"".join(frame(p) for p in payloads[i:i + 250]))
    assert len(list_segments(out)) >= 6
    return out


def _same(a: BaselineData, b: BaselineData) -> None:
    for name in FIELDS:
        left, right = getattr(a, name), getattr(b, name)
        assert left.dtype == right.dtype and left.shape == right.shape, name
        assert np.array_equal(left, right, equal_nan=True), name
    assert a.spec == b.spec


def test_workers_read_bit_for_bit_equal_to_the_reference(log_dir: Path) -> None:
    reference = reference_load(log_dir, SurfaceConfig(), spec_sample=300)
    for workers in (1, 2):
        data = load_data(log_dir, SurfaceConfig(), spec_sample=300, workers=workers)
        _same(data, reference)
        assert data.data_range["decisions"] == 1500 and data.data_range["outcomes"] == reference.data_range["outcomes"]
        assert "sample" not in data.data_range
    # A cap above the log's size keeps everything (and says so).
    capped = load_data(log_dir, SurfaceConfig(), spec_sample=300, max_decisions=10_000, workers=2)
    _same(capped, reference)
    assert capped.data_range["sample"]["eligible_decisions"] == 1500


def test_cap_keeps_the_smallest_event_id_hashes_deterministically(log_dir: Path) -> None:
    full = load_data(log_dir, SurfaceConfig(), spec_sample=300)
    ids = decisions_frame_ids(log_dir)
    expected = set(sorted(ids, key=lambda e: (sample_key(e), e))[:400])
    runs = [load_data(log_dir, SurfaceConfig(), spec_sample=300, max_decisions=400, workers=w) for w in (1, 2, 2)]
    for run in runs[1:]:
        _same(run, runs[0])
    data = runs[0]
    assert data.group.size == 400 and data.data_range["sample"] == {
        "max_decisions": 400, "eligible_decisions": 1500, "kept": 400, "rule": "smallest blake2b-64(event_id)"}
    # The kept decisions are exactly the expected ones, in log order, with the rows they have in the full read.
    starts = np.concatenate([[0], np.cumsum(full.group)[:-1]]).astype(np.int64)
    keep = np.array([e in expected for e in ids])
    rows = np.concatenate([np.arange(s, s + g) for s, g, k in zip(starts, full.group, keep) if k])
    assert np.array_equal(data.group, full.group[keep])
    assert np.array_equal(data.label, full.label[rows]) and np.array_equal(data.propensity, full.propensity[rows])
    assert np.array_equal(data.x[:, 0], full.x[rows, 0])  # the spec is refitted on the sample; scores are not


def decisions_frame_ids(log_dir: Path) -> list[str]:
    return [r.decision.event_id for r in iter_records(log_dir, record_type=TableRecord)
            if r.WhichOneof("event") == "decision"]


def test_manifest_records_the_sample(log_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "logs").symlink_to(log_dir)
    result, checkpoint = train_from_data_dir(tmp_path, SurfaceConfig(),
                                             TrainConfig(num_rounds=10, max_decisions=500, read_workers=2))
    assert result.report["decisions"] == 500
    assert checkpoint.manifest["data_range"]["sample"]["kept"] == 500
    assert checkpoint.manifest["parameters"]["max_decisions"] == 500
    assert pl.Series(result.report["ndcg@5"].values()).is_not_nan().all()
