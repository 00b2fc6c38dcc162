"""The epsilon-greedy decision path never gives the GIL away while sampling (bench.gil_probe, real service).

``ndarray.argmax`` releases the GIL; the generic slot loop calls it once per slot (Softmax here: the probe catches it),
the epsilon-greedy fast path not at all. Any release inside a Rank lets the log writer's thread run inside it.
"""

from __future__ import annotations

from dataclasses import replace

from bench.gil_probe import Args, probe
from recsys_rl.config import ExplorationConfig, default_config


def _in_exploration(places: list[tuple[int, str]]) -> int:
    return sum(n for n, place in places if place.startswith("exploration.py"))


def test_epsilon_greedy_sampling_keeps_the_gil_and_the_probe_sees_a_release_where_there_is_one() -> None:
    _, default_places = probe(Args(warmup=200, ranks=300))
    assert _in_exploration(default_places) == 0, default_places
    config = default_config()
    softmax = replace(config, surfaces={name: replace(surface, exploration=ExplorationConfig(algorithm="softmax"))
                                        for name, surface in config.surfaces.items()})
    _, softmax_places = probe(Args(warmup=200, ranks=300), config=softmax)
    assert _in_exploration(softmax_places) > 0, softmax_places
