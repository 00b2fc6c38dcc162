"""Versioned model checkpoints with manifests, under ``<data-dir>/models/<surface>/<version>/``.

A version directory holds ``model.bin`` and ``manifest.json`` (version, parent, surface, data range, parameters,
code version, sha256 of the model). ``LATEST`` names the newest version. Both are written to a temporary path
and renamed, so a reader (another replica, a restart after a crash) sees either the old or the new checkpoint,
never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_rl import __version__
from recsys_rl.errors import NotFound

_VERSION_RE = re.compile(r"^v(\d{6})-[0-9a-f]{8}$")


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

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._code_version = code_version()

    def _surface_dir(self, surface: str) -> Path:
        return self.models_dir / surface

    def versions(self, surface: str) -> list[str]:
        root = self._surface_dir(surface)
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if _VERSION_RE.match(p.name) and (p / "manifest.json").is_file())

    def publish(self, surface: str, model: bytes, *, parent: str | None, data_range: dict[str, Any],
                parameters: dict[str, Any]) -> Checkpoint:
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
        final = self._surface_dir(surface) / version
        staging = final.with_name(f".{version}.tmp-{os.getpid()}")
        staging.mkdir(parents=True)
        _write_synced(staging / "model.bin", model)
        _write_synced(staging / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
        os.rename(staging, final)
        latest_tmp = self._surface_dir(surface) / f".LATEST.tmp-{os.getpid()}"
        _write_synced(latest_tmp, version.encode())
        os.replace(latest_tmp, self._surface_dir(surface) / "LATEST")
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
        """Loads and verifies a checkpoint; a missing or corrupt one raises NotFound / ValueError."""
        path = self._surface_dir(surface) / version
        if not _VERSION_RE.match(version) or not (path / "manifest.json").is_file():
            raise NotFound(f"model version {version!r} of surface {surface!r} not found under {self.models_dir}")
        manifest = json.loads((path / "manifest.json").read_text())
        model = (path / "model.bin").read_bytes()
        if hashlib.sha256(model).hexdigest() != manifest.get("sha256"):
            raise ValueError(f"model {surface}/{version}: checksum does not match its manifest")
        return Checkpoint(surface, version, model, manifest)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
