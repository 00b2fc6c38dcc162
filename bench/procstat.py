"""What the processes of a bench used, from /proc (Linux): CPU seconds, resident memory, the machine's busy time.

A bench on a shared machine reports who took the cores during a phase: the client (``resource.getrusage``), the
server's processes (this module, per pid) and everything else (the machine's busy time minus both), so a ratio
measured while other jobs ran says so next to it.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (children first found, depth first)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += descendants(int(child))
    return found


def own_cpu_s() -> float:
    """User + system CPU seconds of this process, all its threads (gRPC's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) so far; 0 once it is gone."""
    try:
        # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` in MiB. PSS divides pages shared with other processes (libraries, forked pages)
    among them, so the PSS of N workers adds up to what they take together."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    pss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
               if line.startswith("Pss:"))
    return rss / 1024, pss / 1024


def machine_busy_s() -> float:
    """CPU seconds all cores spent running something since boot (``/proc/stat``: user, nice, system, irq, softirq;
    guest time is inside user and nice, steal is the hypervisor's)."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in
                                                        Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) * _TICK_S


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
    except OSError:
        return ""
