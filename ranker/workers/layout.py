"""What the parent and the workers share: where each worker writes, listens and reports, and how event ids name it.

Event ids of worker K are ``wK.<32 hex digits>`` (16 random bytes): self-describing, so the worker that receives a
ReportOutcome knows which worker's stream and memory hold the decision without a shared index. They need no
signature: a forged id gains nothing, because the owner accepts outcomes only for decisions it served (anything
else is NOT_FOUND). Ids without a ``.`` (a single-process server's plain hex) are handled where they land.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from recsys_rl.errors import InvalidInput

STATUS_FILE = "workers.json"
_ID = re.compile(r"w(0|[1-9][0-9]{0,3})\.[0-9a-f]{32}")
# sockaddr_un holds 108 bytes: a longer data dir path falls back to an abstract socket named by the dir's hash.
_MAX_SOCKET_PATH = 100


def event_id_prefix(index: int) -> str:
    return f"w{index}."


def owner_of(event_id: str) -> int | None:
    """The index of the worker that served ``event_id``; None for an id without a worker prefix.

    Raises InvalidInput (naming event_id) for an id that has the form of a worker's but is not one."""
    if "." not in event_id:
        return None
    match = _ID.fullmatch(event_id)
    if match is None:
        raise InvalidInput("event_id", f"{event_id!r} is not an event id this server issued "
                                       "(w<worker>.<32 hex digits>, or 32 hex digits)")
    return int(match.group(1))


def worker_log_dir(data_dir: Path, index: int) -> Path:
    return Path(data_dir) / "logs" / f"worker-{index}"


def run_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "run"


def outcome_socket(data_dir: Path, index: int) -> tuple[str, Path | None]:
    """The gRPC address of worker ``index``'s forwarded-outcome listener and its socket file (None: abstract)."""
    path = (run_dir(data_dir) / f"worker-{index}.sock").resolve()
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return f"unix:{path}", path
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
    return f"unix-abstract:recsys-rl-{digest}-worker-{index}", None


def write_status(data_dir: Path, status: dict[str, object]) -> None:
    """Replaces ``D/run/workers.json`` atomically (a reader sees the old or the new file, never half of one)."""
    path = run_dir(data_dir) / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status, sort_keys=True))
    tmp.replace(path)


def health_ack(data_dir: Path, index: int) -> Path:
    """Where worker ``index`` writes the status generation its health reflects (the parent prints ``serving on``
    only once every worker's health says SERVING)."""
    return run_dir(data_dir) / f"worker-{index}.health"


def read_generation(path: Path) -> int:
    try:
        return int(path.read_text() or -1)
    except (OSError, ValueError):
        return -1


def read_status(data_dir: Path) -> dict[str, object] | None:
    try:
        return json.loads((run_dir(data_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
