"""``serve --workers 2``: a catalog version loaded offline (``recsys-rl catalog load``) is adopted by every worker
without a restart (on the watcher tick, 0.25 s)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import polars as pl

from recsys_rl.cli import main
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from tests.ranker.workers.conftest import Fleet, worker_of


def _ids_only(request_id: str, item_ids: list[str]) -> pb.RankRequest:
    request = pb.RankRequest(request_id=request_id, surface="default", user_id="u1", slate_size=2)
    for i, item_id in enumerate(item_ids):
        request.candidates.add(item_id=item_id, baseline_score=float(len(item_ids) - i))
    return request


def test_every_worker_adopts_a_loaded_version_without_a_restart(serve_workers: Callable[..., Fleet],
                                                                tmp_path: Path) -> None:
    fleet = serve_workers()
    by_worker = fleet.stubs_by_worker()
    # Before any catalog, ids-only candidates are served as sent; once "item-9" is known to be absent from the
    # catalog in force, a request naming it is refused: that tells which version a worker serves.
    probe = _ids_only("probe", ["item-0", "item-1", "item-9"])
    for channels in by_worker.values():
        assert len(fleet.stub(channels[0]).Rank(probe, timeout=10).slate) == 2
    items = tmp_path / "items.parquet"
    pl.DataFrame({"item_id": ["item-0", "item-1"], "price": [1.0, 2.0], "embedding": [[0.1, 0.2], [0.3, 0.4]]}
                 ).write_parquet(items)
    assert main(["catalog", "load", "--data-dir", str(fleet.data_dir), str(items)]) == 0
    loaded = time.monotonic()

    adopted_after: dict[int, float] = {}
    deadline = loaded + 10
    while len(adopted_after) < len(by_worker) and time.monotonic() < deadline:
        for worker, channels in by_worker.items():
            if worker in adopted_after:
                continue
            try:
                _, call = fleet.stub(channels[0]).Rank.with_call(probe, timeout=10)
                assert worker_of(call) == worker
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc.details()
                assert exc.details().startswith("candidates[2].item_id: item 'item-9' is not in the catalog")
                adopted_after[worker] = time.monotonic() - loaded
        time.sleep(0.02)  # polling interval of the adoption check, not hiding a race
    assert sorted(adopted_after) == sorted(by_worker), f"workers that adopted the version: {adopted_after}"
    for channels in by_worker.values():  # and they serve the known ids from it
        assert len(fleet.stub(channels[0]).Rank(_ids_only("known", ["item-0", "item-1"]), timeout=10).slate) == 2
