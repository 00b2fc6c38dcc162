"""Where does a Rank give the GIL away? A probe for the decision path's voluntary GIL releases (issue 11).

Reads top to bottom. One DecisionService in this process (learner and log writer running, default surface) decides
bench.rank_bench's requests (100 candidates, slate 10) on the main thread. A probe thread waits for the GIL with the
switch interval at 5 s, so it runs only when the main thread *releases* the GIL itself (a C call that drops it:
some numpy calls, blocking system calls, a contended lock), not when the interpreter forces a switch; each time it
records where the main thread is and gives the GIL back. In a server every such release lets the log writer's thread
(or another handler) run inside the Rank, which then waits for it. Not part of ``make bench``: a diagnostic, run as
``PYTHONPATH=CHECKOUT python -m bench.gil_probe`` (another checkout's code: ``PYTHONPATH`` and ``cwd`` of that one).
"""

from __future__ import annotations

import collections
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys_rl.config import ServiceConfig


@dataclass
class Args:
    warmup: int = 1_000  # untimed Ranks first (fills the item and example caches, as a warm server has)
    ranks: int = 500  # Ranks probed
    seed: int = 0  # of bench.rank_bench's requests


def probe(args: Args = Args(), config: ServiceConfig | None = None) -> tuple[int, list[tuple[int, str]]]:
    """(releases caught, the most frequent places: innermost frame first). ``config``: the default one if None."""
    from bench.rank_bench import Args as RankArgs
    from bench.rank_bench import make_request
    from recsys_rl.config import default_config
    from recsys_rl.serving.service import DecisionService

    rng = np.random.default_rng(args.seed)
    requests = [make_request(rng, RankArgs(), i) for i in range(args.warmup + args.ranks)]
    places: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory() as data_dir:
        service = DecisionService(config or default_config(), Path(data_dir))
        try:
            for request in requests[:args.warmup]:
                service.rank(request)
            service.writer.flush(timeout=10)
            main, probing, done = threading.get_ident(), threading.Event(), threading.Event()

            def watch() -> None:
                while not done.is_set():
                    frame = sys._current_frames().get(main) if probing.is_set() else None
                    if frame is not None:
                        stack = traceback.extract_stack(frame)[-3:]
                        places[" <- ".join(f"{Path(s.filename).name}:{s.lineno} {s.name}" for s in reversed(stack))] += 1
                    time.sleep(0)  # gives the GIL back; the next turn comes at the main thread's next release

            switch = sys.getswitchinterval()
            sys.setswitchinterval(5.0)
            watcher = threading.Thread(target=watch, name="gil-probe", daemon=True)
            watcher.start()
            try:
                probing.set()
                for request in requests[args.warmup:]:
                    service.rank(request)
                probing.clear()
            finally:
                done.set()
                sys.setswitchinterval(switch)
            watcher.join(timeout=10)
        finally:
            service.close()
    return sum(places.values()), [(n, place) for place, n in places.most_common(10)]


if __name__ == "__main__":
    caught, top = probe(Args())
    print(f"{caught} voluntary GIL releases caught in {Args().ranks} Ranks (DecisionService.rank, in process)")
    for n, place in top:
        print(f"{n:6d}  {place}")
