"""A data dir whose ``logs/`` fills up: a real small tmpfs when we run as root, else an injected writer fault.

Both have the same observable contract: ``fill()`` makes every later write of the log writer fail with ENOSPC
(after what already fits), ``free()`` gives the space back. As root (CI runs as root) ``logs/`` is a 2 MiB
tmpfs mounted by the test and filled by a filler file; otherwise the writer's ``_write`` hook fails while a
flag file exists (in this process through ``install()``, in a subprocess through ``server_command``).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import logging_schema.writer as writer_module

# RECSYS_RL_INJECTED_DISK_FAULT=1 forces the fallback, to exercise it as root too.
REAL_DISK = os.geteuid() == 0 and not os.environ.get("RECSYS_RL_INJECTED_DISK_FAULT")
_FILLER = ".filler"

# Run the CLI with the flag-file fault installed (the non-root fallback for subprocess servers).
_BOOT = """
import errno, os, sys
import logging_schema.writer as writer
flag = sys.argv.pop(1)
def write(fd, data, _write=os.write):
    if os.path.exists(flag):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    return _write(fd, data)
writer._write = write
from recsys_rl.cli import main
sys.exit(main(sys.argv[1:]))
"""


class FullDisk:
    """``logs/`` under ``data_dir`` on a filesystem the test can fill and free. Use as a context manager."""

    def __init__(self, data_dir: Path) -> None:
        self.logs = Path(data_dir) / "logs"
        self.flag = Path(data_dir) / "disk-full.flag"
        self._mounted = False
        self._saved_write = writer_module._write

    def __enter__(self) -> FullDisk:
        self.logs.mkdir(parents=True, exist_ok=True)
        if REAL_DISK:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(self.logs)], check=True, timeout=30)
            self._mounted = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        writer_module._write = self._saved_write
        if self._mounted:
            # Whatever happened: unmount, lazily if something still holds a file there.
            if subprocess.run(["umount", str(self.logs)], timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", str(self.logs)], timeout=30)
            self._mounted = False

    def install(self) -> None:
        """For a writer in this process (non-root mode): make its writes obey ``fill``/``free``."""
        if REAL_DISK:
            return
        flag, write = self.flag, os.write

        def injected(fd: int, data: bytes) -> int:
            if flag.exists():
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return write(fd, data)

        writer_module._write = injected

    def server_command(self, *cli_args: str) -> list[str]:
        """``python -m recsys_rl.cli <cli_args>`` (with the injected fault when not root)."""
        if REAL_DISK:
            return [sys.executable, "-m", "recsys_rl.cli", *cli_args]
        return [sys.executable, "-c", _BOOT, str(self.flag), *cli_args]

    def fill(self) -> None:
        if not REAL_DISK:
            self.flag.touch()
            return
        fd = os.open(self.logs / _FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for size in (64 << 10, 4096):  # big chunks, then the last pages
                chunk = b"\0" * size
                while True:
                    try:
                        if os.write(fd, chunk) < size:
                            break
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        if REAL_DISK:
            (self.logs / _FILLER).unlink(missing_ok=True)
        else:
            self.flag.unlink(missing_ok=True)
