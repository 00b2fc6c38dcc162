"""Folder ownership from the design card: the core does not need gRPC's server layer, logs do not need models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_importing_the_stubs_does_not_load_models() -> None:
    loaded = _modules_loaded_by("import recsys_rl.ranking.v1.ranking_service_pb2_grpc, recsys_rl.logging.v1.events_pb2")
    assert not loaded & {"vowpalwabbit", "torch", "lightgbm", "polars"}


def test_logging_schema_does_not_know_vw_or_torch() -> None:
    loaded = _modules_loaded_by("import logging_schema.writer, logging_schema.reader, logging_schema.tables")
    assert not loaded & {"vowpalwabbit", "torch"}


def test_core_does_not_import_the_grpc_layer() -> None:
    loaded = _modules_loaded_by("import recsys_rl.serving.service, recsys_rl.serving.policy, recsys_rl.serving.learner")
    assert not any(name == "ranker" or name.startswith("ranker.") for name in loaded)
