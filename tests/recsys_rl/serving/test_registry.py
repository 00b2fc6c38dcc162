"""The model registry under faults: interrupted publishes, leftovers of a dead publisher, damaged versions.

Real files; the publish is interrupted through the registry's ``write_file`` seam, and, when the test runs as root,
by a genuinely full filesystem (a small tmpfs mounted at ``D/models``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys_rl.serving.registry import CorruptModel, ModelRegistry, PublishError, _write_synced


def _publish(registry: ModelRegistry, model: bytes = b"model-bytes", surface: str = "home") -> str:
    return registry.publish(surface, model, parent=None, data_range={}, parameters={}).version


def _entries(registry: ModelRegistry, surface: str = "home") -> list[str]:
    return sorted(p.name for p in (registry.models_dir / surface).iterdir())


def _failing_on(name: str):  # noqa: ANN202 - a write_file hook
    def write(path: Path, data: bytes) -> None:
        if path.name.startswith(name):
            _write_synced(path, data[: len(data) // 2])  # half written, then the disk "fills up"
            raise OSError(28, "No space left on device")
        _write_synced(path, data)

    return write


@pytest.mark.parametrize("failing_file", ["model.bin", "manifest.json", ".LATEST.tmp"])
def test_a_publish_interrupted_anywhere_leaves_latest_and_the_versions_as_they_were(
        tmp_path: Path, failing_file: str) -> None:
    registry = ModelRegistry(tmp_path)
    first = _publish(registry, b"first")
    before = _entries(registry)
    broken = ModelRegistry(tmp_path, write_file=_failing_on(failing_file))
    with pytest.raises(PublishError, match="No space left"):
        _publish(broken, b"second")
    assert registry.latest_version("home") == first
    assert registry.versions("home") == [first]
    assert _entries(registry) == before  # no staging dir, no orphaned version, no LATEST temp file
    again = _publish(registry, b"third")
    assert registry.versions("home") == [first, again] and again.startswith("v000002-")
    assert registry.latest("home").model == b"third"  # type: ignore[union-attr]


def test_staging_of_a_dead_publisher_is_removed_at_start_and_never_listed(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    first = _publish(registry)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    root = tmp_path / "home"
    (root / f".v000002-0123abcd.tmp-{dead_pid}").mkdir()
    (root / f".v000002-0123abcd.tmp-{dead_pid}" / "model.bin").write_bytes(b"half")
    (root / f".LATEST.tmp-{dead_pid}").write_text("v000002-0123abcd")
    assert registry.versions("home") == [first]
    ModelRegistry(tmp_path)  # a start
    assert _entries(registry) == sorted(["LATEST", first])
    assert registry.latest_version("home") == first


def test_a_live_publishers_staging_is_left_alone(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    _publish(registry)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        staging = tmp_path / "home" / f".v000002-0123abcd.tmp-{sleeper.pid}"
        staging.mkdir()
        ModelRegistry(tmp_path)
        _publish(registry)
        assert staging.is_dir()  # another process (the learner) may be mid-publish
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    _publish(registry)
    assert not staging.exists()


@pytest.mark.parametrize("damage", ["truncate model", "edit model", "delete model", "garble manifest",
                                    "manifest not an object"])
def test_a_damaged_version_is_refused_and_load_newest_falls_back(tmp_path: Path, damage: str) -> None:
    registry = ModelRegistry(tmp_path)
    good = _publish(registry, b"good model")
    bad = _publish(registry, b"newer model")
    path = tmp_path / "home" / bad
    if damage == "truncate model":
        (path / "model.bin").write_bytes(b"newer")
    elif damage == "edit model":
        (path / "model.bin").write_bytes(b"NEWER model")
    elif damage == "delete model":
        (path / "model.bin").unlink()
    elif damage == "garble manifest":
        (path / "manifest.json").write_bytes(b"{\x00not json")
    else:
        (path / "manifest.json").write_text(json.dumps(["a list"]))
    with pytest.raises(CorruptModel, match=bad):
        registry.load("home", bad)
    refused: set[str] = set()
    checkpoint, accepted = registry.load_newest("home", lambda cp: cp.model, refused=refused)  # type: ignore[misc]
    assert (checkpoint.version, accepted, refused) == (good, b"good model", {bad})


def test_load_newest_skips_versions_the_loader_refuses_and_versions_newer_than_latest(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    oldest, middle, newest = (_publish(registry, model) for model in (b"a", b"b", b"c"))
    registry.point_latest("home", middle)  # `newest` never became the serving version

    def loader(checkpoint):  # noqa: ANN001, ANN202
        if checkpoint.model == b"b":
            raise RuntimeError("Bad model format.")  # what VW says about a model it cannot read
        return checkpoint.model

    refused: set[str] = set()
    found = registry.load_newest("home", loader, refused=refused)
    assert found is not None and found[0].version == oldest and refused == {middle}
    assert registry.load_newest("home", lambda cp: 1 / 0) is None  # nothing loads
    assert newest in registry.versions("home")


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True)


@pytest.fixture
def small_models_fs(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/data/models`` on a 256 KiB tmpfs (root only; CI runs as root, elsewhere this is skipped)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the write_file seam covers the same contract")
    models = tmp_path / "data" / "models"
    try:
        _mount_tmpfs(models, "256k")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield models
    finally:
        subprocess.run(["umount", "-l", str(models)], check=False, capture_output=True)


def test_a_publish_on_a_full_disk_never_becomes_the_serving_version(small_models_fs: Path) -> None:
    from recsys_rl.config import default_config
    from recsys_rl.serving.bandit import VWBandit
    from recsys_rl.serving.service import DecisionService

    config = default_config()
    service = DecisionService(config, small_models_fs.parent, learner="off", watch_models=False)
    try:
        serving = service.policy_version("default")
        learner_side = ModelRegistry(small_models_fs)  # the learner process's registry, same files
        model = VWBandit(config.surfaces["default"].model.vw_args).to_bytes()
        filler = small_models_fs / "filler"
        with open(filler, "wb", buffering=0) as fh:  # fill the filesystem up to the last block
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        with pytest.raises(PublishError, match="No space left"):
            learner_side.publish("default", model, parent=serving, data_range={}, parameters={})
        assert learner_side.latest_version("default") == serving
        assert service.refresh_models() == [] and service.policy_version("default") == serving
        assert [p.name for p in (small_models_fs / "default").iterdir() if p.name.startswith(".")] == []
        filler.unlink()  # space returns: the next publish works and is served
        published = learner_side.publish("default", model, parent=serving, data_range={}, parameters={}).version
        assert service.refresh_models() == [f"default={published}"]
        assert service.policy_version("default") == published
    finally:
        service.close()
