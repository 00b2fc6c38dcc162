"""Surface configuration: the embedded default, TOML parsing, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_rl.config import ConfigError, default_config, load_config, parse_config


def test_embedded_default_surface_matches_the_contract() -> None:
    surface = default_config().surfaces["default"]
    assert surface.exploration_cap == 0.1
    assert surface.reward.weights == {"click": 1.0}
    assert surface.reward.attribution_window_seconds == 5.0
    assert default_config().with_cap(0.0).surfaces["default"].exploration_cap == 0.0


def test_toml_surfaces(tmp_path: Path) -> None:
    path = tmp_path / "surfaces.toml"
    path.write_text("""
[surfaces.home_feed]
exploration_cap = 0.2
decision_budget_ms = 40
[surfaces.home_feed.exploration]
algorithm = "softmax"
temperature = 0.05
[surfaces.home_feed.reward]
weights = { click = 1.0, purchase = 5.0, dwell_seconds = 0.01 }
attribution_window_seconds = 30
aggregation = { dwell_seconds = "sum" }
range = [0, 8]
[surfaces.home_feed.model]
publish_every = 500
long_term_weight = 0.5
[surfaces.search]
""")
    config = load_config(path, seed=9)
    home = config.surfaces["home_feed"]
    assert (home.exploration_cap, home.decision_budget_ms, config.seed) == (0.2, 40, 9)
    assert home.exploration.algorithm == "softmax" and home.exploration.temperature == 0.05
    assert home.reward.weight("purchase") == 5.0 and home.reward.attribution_window_seconds == 30
    assert home.reward.aggregation_of("dwell_seconds") == "sum" and home.reward.aggregation_of("click") == "max"
    assert home.reward.range == (0.0, 8.0)
    assert config.surfaces["search"].reward.range == (0.0, 1.0)  # derived: click = 1 with values in [0, 1]
    assert home.model.publish_every == 500 and home.model.long_term_weight == 0.5
    assert config.surfaces["search"].exploration_cap == 0.1


@pytest.mark.parametrize(("data", "key"), [
    ({}, "config.surfaces"),
    ({"surfaces": {"a": {"exploration_cap": 1.5}}}, "surfaces.a.exploration_cap"),
    ({"surfaces": {"a": {"exploration": {"algorithm": "ucb"}}}}, "surfaces.a.exploration.algorithm"),
    ({"surfaces": {"a": {"exploration": {"epsilon": -0.1}}}}, "surfaces.a.exploration.epsilon"),
    ({"surfaces": {"a": {"reward": {"weights": {}}}}}, "surfaces.a.reward.weights"),
    ({"surfaces": {"a": {"reward": {"attribution_window_seconds": 0}}}}, "surfaces.a.reward.attribution_window"),
    ({"surfaces": {"a": {"model": {"publish_every": 0}}}}, "surfaces.a.model.publish_every"),
    ({"surfaces": {"a": {"model": {"item_cache": 0}}}}, "surfaces.a.model.item_cache"),
    ({"surfaces": {"a": {"colour": "red"}}}, "surfaces.a.colour"),
    ({"surfaces": {"a": {"exploration": {"tau": 1}}}}, "surfaces.a.exploration.tau"),
    ({"surfaces": {"a": {"name": "b"}}}, "surfaces.a.name"),
    ({"surfaces": {"a": 3}}, "surfaces.a"),
    ({"surfaces": {"a": {"reward": {"aggregation": {"dwell": "sum"}}}}}, "surfaces.a.reward.aggregation.dwell"),
    ({"surfaces": {"a": {"reward": {"aggregation": {"click": "mean"}}}}}, "surfaces.a.reward.aggregation.click"),
    ({"surfaces": {"a": {"reward": {"aggregation": "max"}}}}, "surfaces.a.reward.aggregation"),
    ({"surfaces": {"a": {"reward": {"weights": {"click": 1, "dwell": 0.1}, "aggregation": {"dwell": "sum"}}}}},
     "surfaces.a.reward.range"),  # a weighted sum has no bound to derive
    ({"surfaces": {"a": {"reward": {"range": [0.5, 1.0]}}}}, "surfaces.a.reward.range"),  # must contain 0
    ({"surfaces": {"a": {"reward": {"range": [0.0]}}}}, "surfaces.a.reward.range"),
    ({"surfaces": {"a": {"reward": {"range": [0.0, "1"]}}}}, "surfaces.a.reward.range"),
    ({"surfaces": {"a": {"reward": {"range": [0.0, float("inf")]}}}}, "surfaces.a.reward.range"),
    ({"surfaces": {"a": {"reward": {"weights": {"click": "1"}}}}}, "surfaces.a.reward.weights.click"),
])
def test_bad_config_names_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value).startswith(key), str(err.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^--config: cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[surfaces\n")
    with pytest.raises(ConfigError, match="^--config: .* is not valid TOML"):
        load_config(bad)


def test_retrieval_section_parses_and_bad_values_name_the_key() -> None:
    from recsys_rl.retrieval.config import RetrievalConfig

    surfaces = {"feed": {"retrieval": {"index": "ivf", "nlist": 256, "nprobe": 16, "outside_share": 0.25}},
                "plain": {}}
    parsed = parse_config({"surfaces": surfaces})
    assert parsed.surfaces["feed"].retrieval == RetrievalConfig(index="ivf", nlist=256, nprobe=16, outside_share=0.25)
    assert parsed.surfaces["plain"].retrieval is None  # retrieval is opt-in per surface
    bad = {
        "surfaces.feed.retrieval.index: 'lsh' is not one of exact, ivf, hnsw": {"index": "lsh"},
        "surfaces.feed.retrieval.nprobe: must be a positive integer, got 0": {"nprobe": 0},
        "surfaces.feed.retrieval.outside_share: must be in [0, 1), got 1.0": {"outside_share": 1.0},
        "surfaces.feed.retrieval.nlists: unknown key": {"nlists": 4},
    }
    for message, table in bad.items():
        with pytest.raises(ConfigError) as refused:
            parse_config({"surfaces": {"feed": {"retrieval": table}}})
        assert str(refused.value) == message
