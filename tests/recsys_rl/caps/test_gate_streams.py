"""The gate on a log written by several workers: the same estimates and checks as on the same records written by
one process (``tests.log_streams``), and its log manifest covers every stream, so editing any stream refuses it."""

from __future__ import annotations

import json

import pytest

from recsys_rl.caps.gate import EvidenceRefused, GateConfig, run_gate, verify_evidence
from tests.log_streams import CONFIG, WORKERS, SplitLog, served_log, split_log

GATE = GateConfig(tolerance=0.5, min_ess=50)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> SplitLog:
    root = tmp_path_factory.mktemp("gate_streams")
    served_log(root / "served", 500, seed=11)
    return split_log(root / "served", root)


def test_gate_on_streams_equals_the_gate_on_the_one_stream_log(split: SplitLog) -> None:
    single = run_gate(split.single, "default", 0.3, config=CONFIG, gate=GATE)
    multi = run_gate(split.multi, "default", 0.3, config=CONFIG, gate=GATE)
    assert multi["estimates"] == single["estimates"] and multi["checks"] == single["checks"]
    assert multi["passed"] == single["passed"]
    logs = {name: {k: v for k, v in report["logs"].items() if k not in ("segments", "digest")}
            for name, report in (("single", single), ("multi", multi))}
    assert logs["multi"] == logs["single"] and logs["multi"]["events"] == 500
    streams = {segment["path"].split("/")[0] for segment in multi["logs"]["segments"]}
    assert streams == {f"worker-{k}" for k in range(WORKERS)}

    text = json.dumps(multi)
    verify_evidence(text, data_dir=split.multi, surface="default", cap=0.3, gate=GATE)
    # A stream's bytes changed after the report: refused, naming the segment of that stream.
    edited = split.multi / "logs" / multi["logs"]["segments"][-1]["path"]
    data = bytearray(edited.read_bytes())
    data[20] ^= 0xFF
    edited.write_bytes(bytes(data))
    with pytest.raises(EvidenceRefused) as refused:
        verify_evidence(text, data_dir=split.multi, surface="default", cap=0.3, gate=GATE)
    logs_check = next(c for c in refused.value.failed if c.name == "logs")
    assert f"worker-{WORKERS - 1}/" in logs_check.reason
