"""``recsys-rl serve --workers N``: N serving processes on one port, one parent that keeps them running.

VW holds the GIL, so one process serves one core. With ``--workers N >= 2`` the ``serve`` process becomes a parent
(``supervisor``): it holds the data dir's lock, reserves the port and runs no gRPC server itself; it spawns N
workers (``worker``: the same ``recsys-rl serve`` command line plus a hidden ``--worker-index K``), each a full
RankingServer bound with SO_REUSEPORT to the shared port (the kernel spreads connections over them), writing its
own log stream ``D/logs/worker-K/`` and issuing event ids ``wK.<hex>`` that name it. A ReportOutcome that lands on
another worker is forwarded to the owner over its Unix socket (``forwarding``). The parent runs the one online
learner (it follows every stream) and, with ``--metrics-port``, the exporter that sums every worker's metrics;
it restarts a worker that dies, with backoff, and writes ``D/run/workers.json`` so every worker's health says
SERVING only while all of them serve. ``layout`` holds the names they share.
"""

from __future__ import annotations

import os
import socket


def default_workers() -> int:
    """One worker per usable core where SO_REUSEPORT exists (Linux); elsewhere 1 (docs/operations.md, "Workers")."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (not Linux)
        return max(1, os.cpu_count() or 1)
