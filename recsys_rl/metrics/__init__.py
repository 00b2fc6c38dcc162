"""Prometheus metrics of a serving process: what it serves, falls back to, logs and learns, per surface.

Off by default and then free: the service holds :data:`NO_METRICS` (``hooks``), and nothing imports
``prometheus_client``. ``recsys-rl serve --metrics-port P`` turns them on:

1. ``exporter.configure_multiprocess(data_dir)`` points ``PROMETHEUS_MULTIPROC_DIR`` at ``<data dir>/run/metrics``
   (emptied first: files of a previous run would add stale counts) *before* ``prometheus_client`` is imported,
   because the client picks its value storage at import time;
2. ``definitions.ServingMetrics`` creates the metrics (each process that serves writes its own mmap'd files);
3. ``sampler.StateSampler`` copies process state (log writer, guard, models, caps, guardrails, learner lag)
   into gauges and counters once a second, and right before a local scrape;
4. ``exporter.start_exporter`` serves ``/metrics`` over HTTP, summing every process's files.

The exporter belongs to the parent (first) process: with ``--workers N`` the parent configures the directory
and starts the exporter before forking, each worker creates its own ``ServingMetrics``/``StateSampler``, and the
supervisor calls ``exporter.mark_worker_dead(pid)`` for a worker that exits so its live gauges disappear
(its counters stay: totals never go backwards).
"""
