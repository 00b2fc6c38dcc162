"""Event ids' random part: batched os.urandom, each 16-byte slice handed out once, never inherited by a fork."""

from __future__ import annotations

import os
import re
import threading

from recsys_rl.serving import event_ids


def test_ids_are_hex_and_distinct_across_threads_and_batches() -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [event_ids.random_hex() for _ in range(3 * event_ids._BATCH)]  # several refills per thread
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(seen) == 4 * 3 * event_ids._BATCH
    assert len(set(seen)) == len(seen)
    assert all(re.fullmatch(r"[0-9a-f]{32}", s) for s in seen)


def test_a_forked_child_does_not_reuse_its_parents_batch() -> None:
    event_ids.random_hex()  # the parent holds a batch with ids left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, event_ids.random_hex().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent_next = event_ids.random_hex()
    assert re.fullmatch(r"[0-9a-f]{32}", child) and child != parent_next
