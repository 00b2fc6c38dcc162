"""Versioned model checkpoints with manifests, under ``<data-dir>/models/<surface>/<version>/``.

A version directory holds ``model.bin`` and ``manifest.json`` (version, parent, surface, data range, parameters,
code version, sha256 of the model). ``LATEST`` names the newest version. Both are written to a temporary path
and renamed, so a reader (another replica, a restart after a crash) sees either the old or the new checkpoint,
never half of one.

Faults. A publish that fails half way (disk full, an I/O error, an exception between ``model.bin`` and ``LATEST``)
raises PublishError and leaves ``LATEST`` as it was: the staging directory (``.<version>.tmp-<pid>``) is removed,
and so is a version directory whose ``LATEST`` update failed, so ``LATEST`` only ever names a complete,
checksummed version. Staging left by a process that died mid-publish is removed at the next publish or start
(only a dead process's: the server and its learner share the registry). A version that does not load (manifest
unreadable, ``model.bin`` missing, truncated or edited: CorruptModel; or refused by the caller's loader, e.g. VW)
is skipped by ``load_newest``, which falls back to the newest older version that loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from recsys_rl import __version__
from recsys_rl.errors import NotFound
from recsys_rl.serving.dirlock import pid_alive

log = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^v(\d{6})-[0-9a-f]{8}$")
# Staging names carry the writer's pid, so a leftover is removed only once its writer is gone.
_STAGING_RE = re.compile(r"^\.(?:v\d{6}-[0-9a-f]{8}|LATEST)\.tmp-(\d+)$")

T = TypeVar("T")


class PublishError(RuntimeError):
    """A publish failed; ``LATEST`` still names the previous version (or nothing)."""


class CorruptModel(ValueError):
    """A version's files are missing, unreadable or fail their checksum."""


@dataclass(frozen=True)
class Checkpoint:
    surface: str
    version: str
    model: bytes
    manifest: dict[str, Any]


def code_version() -> str:
    """The package version plus the git commit when running from a checkout (for manifests)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


class ModelRegistry:
    """Publishes and loads checkpoints. Safe for one writer per surface and any number of readers."""

    def __init__(self, models_dir: Path, *, write_file: Callable[[Path, bytes], None] | None = None) -> None:
        """``write_file(path, data)`` writes and fsyncs one file (a seam for fault tests)."""
        self.models_dir = Path(models_dir)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._code_version = code_version()
        self.write_file = write_file or _write_synced
        for surface_dir in self.models_dir.iterdir():
            if surface_dir.is_dir():
                self.clean_staging(surface_dir.name)

    def clean_staging(self, surface: str) -> list[str]:
        """Removes staging left by publishes whose process is gone (or by this process); returns their names."""
        root = self._surface_dir(surface)
        removed = []
        for path in root.iterdir() if root.is_dir() else ():
            match = _STAGING_RE.match(path.name)
            if match is None or (int(match.group(1)) != os.getpid() and pid_alive(int(match.group(1)))):
                continue
            _remove(path)
            removed.append(path.name)
        if removed:
            log.warning("models %s: removed staging of an interrupted publish: %s", surface, ", ".join(removed))
        return removed

    def _surface_dir(self, surface: str) -> Path:
        return self.models_dir / surface

    def versions(self, surface: str) -> list[str]:
        root = self._surface_dir(surface)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if _VERSION_RE.match(p.name) and (p / "manifest.json").is_file())

    def publish(self, surface: str, model: bytes, *, parent: str | None, data_range: dict[str, Any],
                parameters: dict[str, Any]) -> Checkpoint:
        """Writes a new version and points ``LATEST`` at it; on any failure raises PublishError, LATEST unchanged."""
        root = self._surface_dir(surface)
        root.mkdir(parents=True, exist_ok=True)
        self.clean_staging(surface)
        existing = self.versions(surface)
        number = int(_VERSION_RE.match(existing[-1]).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
        digest = hashlib.sha256(model).hexdigest()
        version = f"v{number:06d}-{digest[:8]}"
        manifest = {
            "surface": surface,
            "version": version,
            "parent": parent,
            "created_at": time.time(),
            "data_range": data_range,
            "parameters": parameters,
            "code_version": self._code_version,
            "sha256": digest,
        }
        final = root / version
        staging = root / f".{version}.tmp-{os.getpid()}"
        latest_tmp = root / f".LATEST.tmp-{os.getpid()}"
        renamed = False
        try:
            staging.mkdir()
            self.write_file(staging / "model.bin", model)
            self.write_file(staging / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
            os.rename(staging, final)
            renamed = True
            self.write_file(latest_tmp, version.encode())
            os.replace(latest_tmp, root / "LATEST")
        except BaseException as exc:
            # A version LATEST never named is not kept: nothing may start serving it later by accident.
            for path in (staging, latest_tmp, final) if renamed else (staging, latest_tmp):
                _remove(path)
            if isinstance(exc, Exception):
                raise PublishError(f"could not publish model {surface}/{version}: {exc}") from exc
            raise
        _fsync_dir(root)
        return Checkpoint(surface, version, model, manifest)

    def latest_version(self, surface: str) -> str | None:
        """The newest version's name (a cheap read of the LATEST pointer), or None."""
        try:
            return (self._surface_dir(surface) / "LATEST").read_text().strip() or None
        except FileNotFoundError:
            return None

    def latest(self, surface: str) -> Checkpoint | None:
        version = self.latest_version(surface)
        return None if version is None else self.load(surface, version)

    def load(self, surface: str, version: str) -> Checkpoint:
        """Loads and verifies a checkpoint; a missing one raises NotFound, a damaged one CorruptModel."""
        path = self._surface_dir(surface) / version
        if not _VERSION_RE.match(version) or not (path / "manifest.json").is_file():
            raise NotFound(f"model version {version!r} of surface {surface!r} not found under {self.models_dir}")
        try:
            manifest = json.loads((path / "manifest.json").read_bytes())
            if not isinstance(manifest, dict):
                raise ValueError("manifest.json is not a JSON object")
            model = (path / "model.bin").read_bytes()
        except (OSError, ValueError) as exc:
            raise CorruptModel(f"model {surface}/{version}: unreadable: {exc}") from exc
        if hashlib.sha256(model).hexdigest() != manifest.get("sha256"):
            raise CorruptModel(f"model {surface}/{version}: checksum does not match its manifest "
                               f"({len(model)} bytes in model.bin)")
        return Checkpoint(surface, version, model, manifest)

    def point_latest(self, surface: str, version: str) -> None:
        """Points ``LATEST`` at an existing version (start-up falls back past a refused one)."""
        root = self._surface_dir(surface)
        latest_tmp = root / f".LATEST.tmp-{os.getpid()}"
        try:
            self.write_file(latest_tmp, version.encode())
            os.replace(latest_tmp, root / "LATEST")
        except BaseException:
            _remove(latest_tmp)
            raise
        _fsync_dir(root)

    def load_newest(self, surface: str, accept: Callable[[Checkpoint], T], *,
                    refused: set[str] | None = None) -> tuple[Checkpoint, T] | None:
        """The newest version that loads and that ``accept`` takes (e.g. VW builds a model from it), or None.

        Tries ``LATEST`` first, then older versions, newest first; versions newer than ``LATEST`` never became
        the serving version and are not tried. Each refused version is logged (ERROR) and added to ``refused``.
        """
        versions = self.versions(surface)
        pointer = self.latest_version(surface)
        if pointer is not None:
            versions = [v for v in versions if v < pointer]  # names sort by their zero-padded number
            versions.append(pointer)
        for version in reversed(versions):
            if refused is not None and version in refused:
                continue
            try:
                checkpoint = self.load(surface, version)
                return checkpoint, accept(checkpoint)
            except Exception as exc:  # noqa: BLE001 - any failure to load refuses the version, never the start
                if refused is not None:
                    refused.add(version)
                log.error("models %s: refusing version %s: %s", surface, version, exc)
        return None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Makes renames inside ``path`` durable (best effort: some filesystems refuse to fsync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Removes a file or directory tree if it exists; never raises (it runs while handling another error)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass

