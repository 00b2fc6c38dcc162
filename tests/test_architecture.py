"""Folder ownership from the design card: the core does not need gRPC's server layer, logs do not need models."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.architecture_rules import check_tree, collect_imports, module_name, python_files

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


# --- import boundaries read from source (tests/architecture_rules.py) ---------------------------------------------

BOUNDARY_PACKAGES = ("recsys_rl", "logging_schema", "evaluators")


@pytest.mark.parametrize("package", BOUNDARY_PACKAGES)
def test_import_boundaries_hold_in_the_repository(package: str) -> None:
    violations = [v for v in check_tree(REPO) if v.module.split(".")[0] == package]
    assert not violations, "import boundaries of architecture.md broken:\n" + "\n".join(map(str, violations))


def test_the_checker_reads_the_real_packages() -> None:
    # Guards the test above against passing vacuously (e.g. after a move leaves it scanning nothing).
    modules = {module_name(REPO, path) for path in python_files(REPO)}
    assert {"recsys_rl.cli", "recsys_rl.serving.service", "logging_schema.writer", "evaluators.estimators",
            "ranker.server"} <= modules
    assert not any(name.endswith("_pb2") for name in modules)
    dynamic = {ref.target for ref in collect_imports(REPO / "recsys_rl" / "cli.py", "recsys_rl.cli") if ref.dynamic}
    assert "recsys_rl.caps.cli" in dynamic  # the `for module in (...): import_module(module)` registration loop


def _plant(root: Path, files: dict[str, str]) -> Path:
    """Writes a fake repository: every directory on the way to a file becomes a package."""
    for relative, source in files.items():
        path = root / relative
        for parent in reversed(path.relative_to(root).parents[:-1]):
            (root / parent).mkdir(exist_ok=True)
            (root / parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return root


CLEAN_TREE = {
    "recsys_rl/cli.py": """\
        import importlib
        from ranker.server import serve_forever  # the composition root may import ranker openly
        for module in ("evaluators.replay.run", "recsys_rl.caps.cli"):
            importlib.import_module(module)
        """,
    "recsys_rl/errors.py": "class InvalidInput(ValueError): ...\n",
    "recsys_rl/serving/service.py": """\
        from __future__ import annotations
        import importlib
        from logging_schema.writer import LogWriter
        from ..errors import InvalidInput
        from . import features
        SLATEQ = "recsys_rl.slateq.serving"

        def load() -> None:
            importlib.import_module(SLATEQ)
        """,
    "recsys_rl/serving/features.py": "import json\n",
    "recsys_rl/logging/v1/events_pb2.py": "from recsys_rl.errors import InvalidInput  # generated: never read\n",
    "logging_schema/writer.py": """\
        from recsys_rl.logging.v1.events_pb2 import LogRecord
        from recsys_rl.ranking.v1 import ranking_service_pb2
        from .segments import list_segments
        """,
    "logging_schema/segments.py": "import os\n",
    "evaluators/replay/run.py": """\
        from importlib import import_module
        from ..estimators import ips
        from recsys_rl.serving.policy import SurfacePolicy
        MODULES = ["evaluators.estimators", "logging_schema.tables"]
        loaded = [import_module(m) for m in MODULES]
        """,
    "evaluators/estimators.py": "ips = None\n",
    "ranker/server.py": "from recsys_rl.serving.service import load\n",
}


def test_a_clean_tree_reports_nothing(tmp_path: Path) -> None:
    root = _plant(tmp_path, CLEAN_TREE)
    assert check_tree(root) == []
    # ...and it was read: the relative and dynamic imports resolved to absolute names.
    targets = {ref.target for ref in collect_imports(root / "recsys_rl/serving/service.py", "recsys_rl.serving.service")}
    assert {"recsys_rl.errors.InvalidInput", "recsys_rl.serving.features", "recsys_rl.slateq.serving"} <= targets
    targets = {ref.target for ref in collect_imports(root / "evaluators/replay/run.py", "evaluators.replay.run")}
    assert {"evaluators.estimators.ips", "evaluators.estimators", "logging_schema.tables"} <= targets


PLANTED: list[tuple[str, str, int, str, str]] = [
    # (file, source, line of the violation, rule, text the report must contain)
    ("recsys_rl/serving/shadow.py", 'import importlib\n\n\ndef grpc():\n    return importlib.import_module("ranker.server")\n',
     5, "core", "import_module ranker.server"),
    ("recsys_rl/serving/admin_bridge.py", '"""doc"""\nfrom ranker import server\n', 2, "core", "import ranker.server"),
    ("recsys_rl/caps/client.py", "import ranker.admin as admin\n", 1, "core", "import ranker.admin"),
    ("recsys_rl/serving/aliased.py", 'from importlib import import_module as load\nload("ranker.servicer")\n',
     2, "core", "import_module ranker.servicer"),
    ("recsys_rl/serving/builtin.py", 'x = 1\n__import__("ranker.errors")\n', 2, "core", "import_module ranker.errors"),
    ("recsys_rl/serving/looped.py",
     'import importlib\nfor name in ("json", "ranker.server"):\n    importlib.import_module(name)\n',
     3, "core", "import_module ranker.server"),
    ("recsys_rl/serving/relative.py", 'import importlib\nimportlib.import_module("...ranker", __package__)\n',
     2, "unresolved", "cannot be resolved"),
    ("recsys_rl/serving/computed.py", 'import importlib\nimportlib.import_module("ran" + "ker")\n',
     2, "unresolved", "cannot be resolved"),
    ("recsys_rl/serving/climbing.py", "from ...ranker import server\n", 1, "unresolved", "climbs above"),
    ("recsys_rl/cli.py", 'import importlib\nimport ranker.server\nimportlib.import_module("ranker.server")\n',
     3, "root", "import_module ranker.server"),
    ("logging_schema/writer.py", "from recsys_rl.errors import NotReady, Overloaded\n", 1, "log",
     "import recsys_rl.errors.NotReady"),
    ("logging_schema/views.py", "from recsys_rl.serving import policy\n", 1, "log", "recsys_rl.serving.policy"),
    ("logging_schema/tables.py", "import evaluators.estimators\n", 1, "log", "evaluators.estimators"),
    ("logging_schema/rewards.py", "from recsys_rl import config\n", 1, "log", "recsys_rl.config"),
    ("evaluators/replay/targets.py", "from ranker.validation import validate_rank_request\n", 1, "eval",
     "import ranker.validation"),
    ("evaluators/replay/run.py", "from ... import ranker\n", 1, "unresolved", "climbs above"),
    ("evaluators/report.py", 'import importlib\nimportlib.import_module(f"{__name__}.x")\n', 2, "unresolved",
     "cannot be resolved"),
]


@pytest.mark.parametrize(("file", "source", "line", "rule", "text"), PLANTED, ids=[p[0] + ":" + p[3] for p in PLANTED])
def test_a_planted_violation_is_reported_with_file_and_line(tmp_path: Path, file: str, source: str, line: int,
                                                            rule: str, text: str) -> None:
    root = _plant(tmp_path, {**CLEAN_TREE, file: source})
    violations = check_tree(root)
    assert [(str(v.path), v.line, v.rule) for v in violations] == [(file, line, rule)], violations
    assert text in violations[0].message and str(violations[0]).startswith(f"{file}:{line}: ")


def test_ranker_itself_may_import_anything(tmp_path: Path) -> None:
    root = _plant(tmp_path, {**CLEAN_TREE, "ranker/servicer.py": "import importlib\nimportlib.import_module(x)\n"})
    assert check_tree(root) == []
