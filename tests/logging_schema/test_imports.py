"""logging_schema must stay usable without the models: importing it never loads VW or torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_logging_schema_does_not_import_vowpalwabbit_or_torch() -> None:
    code = (
        "import sys\n"
        "import logging_schema.writer, logging_schema.reader, logging_schema.tables, logging_schema.segments\n"
        "print(sorted(m for m in ('vowpalwabbit', 'torch') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
