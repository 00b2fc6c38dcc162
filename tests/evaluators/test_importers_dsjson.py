"""DSJSON importer on the real Decision Service / Personalizer exports in ../shared/data/vw-dsjson."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from evaluators.importers.dsjson import DsjsonFormatError, load_dsjson, read_dsjson
from recsys_rl.errors import InvalidInput

DSJSON = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "vw-dsjson"
FEEDBACK_COLUMNS = ["event_id", "position", "action", "reward", "pscore", "target_pscore"]


@pytest.fixture(scope="module")
def data() -> Path:
    assert DSJSON.is_dir(), f"expected the DSJSON samples at {DSJSON.resolve()} (shared/ beside the clone)"
    return DSJSON


def _ips(table: pl.DataFrame) -> float:
    """Weighted IPS: Σ weight·(target/pscore)·reward / Σ weight."""
    terms = table["weight"] * table["target_pscore"] / table["pscore"] * table["reward"]
    return float(terms.sum() / table["weight"].sum())


def test_personalizer_cb_export(data: Path) -> None:
    table = load_dsjson(data / "dsjson_cb.json")
    assert table.columns[:6] == FEEDBACK_COLUMNS and table.height == 23
    assert table["position"].unique().to_list() == [0]
    assert sorted(table["pscore"].unique().to_list()) == [0.05, 0.85]
    assert table["reward"].sum() == 12.0  # twelve events with _label_cost = -1
    first = table.row(0, named=True)
    assert first["event_id"] == "13118d9b4c114f8485d9dec417e3aefe"
    # _label_Action 4 → index 3 in c._multi, which is the Latte; it was explored (p = 0.05).
    assert (first["action"], first["action_tag"], first["reward"], first["pscore"]) == (3, "Latte", 0.0, 0.05)
    assert first["ranked_actions"] == [3, 1, 0, 2] and first["ranked_probs"] == [0.05, 0.05, 0.05, 0.85]
    assert json.loads(first["context"]) == {"FromUrl": [{"timeofday": "Afternoon", "weather": "Sunny", "name": "Cathy"}]}
    assert [a["_tag"] for a in json.loads(first["actions"])] == ["Cappucino", "Cold brew", "Iced mocha", "Latte"]
    assert first["model_id"] == "ff0744c1aa494e1ab39ba0c78d048146/550c12cbd3aa47f09fbed3387fb9c6ec"


def test_parts_concatenate_to_the_whole(data: Path) -> None:
    whole = load_dsjson(data / "dsjson_cb.json").drop("source")
    parts = load_dsjson([data / "dsjson_cb_part1.json", data / "dsjson_cb_part2.json"]).drop("source")
    assert parts.equals(whole)


def test_decision_service_news_log(data: Path) -> None:
    table = load_dsjson(data / "decisionservice.json")
    assert table.height == 3 and table["n_actions"].to_list() == [12, 12, 12]
    assert table["action"].to_list() == [9, 9, 9] and table["reward"].to_list() == [1.0, 0.0, 1.0]
    assert table["pscore"].to_list() == pytest.approx([0.816666663] * 3)
    assert json.loads(table["context"][0])["Geo"]["city"] == "New Orleans"


def test_ccb_one_row_per_slot(data: Path) -> None:
    result = read_dsjson(data / "ccb_data.json")
    table = result.table
    assert result.n_events == 59 and table.height == 7 * 2 + 52  # seven two-slot events, then one-slot ones
    assert table.filter(pl.col("position") == 1)["slot_id"].unique().to_list() == ["SideBar"]
    assert table.filter(pl.col("position") == 0)["pscore"].unique().to_list() == [0.25]
    assert table.filter(pl.col("position") == 1)["pscore"].to_list() == pytest.approx([1 / 3] * 7)
    second = table.filter(pl.col("event_id") == "0000001").sort("position")
    assert second["action"].to_list() == [1, 3] and second["action_tag"].to_list() == ["Latte", "Americano"]
    assert second["reward"].to_list() == [0.6, 0.4] and second["n_actions"].to_list() == [4, 3]
    assert json.loads(second["slot_features"][1]) == {"_id": "SideBar", "sj": [{"size": "Medium", "position": "Right"}]}


def test_ccb_targets(data: Path) -> None:
    logged = load_dsjson(data / "ccb_data.json")
    # The CCB logger was uniform over the slot's remaining actions, so the uniform target is on-policy.
    uniform = load_dsjson(data / "ccb_data.json", target="uniform")
    assert uniform["target_pscore"].to_list() == pytest.approx(logged["pscore"].to_list(), abs=1e-7)
    baseline = load_dsjson(data / "ccb_data.json", target="baseline")
    expected = [
        1.0 if action == json.loads(line)["_ba"][position] else 0.0
        for line in (data / "ccb_data.json").read_text().splitlines()
        for position, action in enumerate(o["_a"][0] for o in json.loads(line)["_outcomes"])
    ]
    assert baseline["target_pscore"].to_list() == expected and sum(expected) == 17


def test_cb_uniform_and_baseline_targets(data: Path) -> None:
    uniform = load_dsjson(data / "dsjson_cb.json", target="uniform")
    assert uniform["target_pscore"].unique().to_list() == [0.25]
    baseline = load_dsjson(data / "dsjson_cb.json", target="baseline")
    assert baseline["target_pscore"].to_list() == (baseline["action"] == 0).cast(pl.Float64).to_list()


def test_pdrop_becomes_a_count_weight(data: Path) -> None:
    table = load_dsjson(data / "cb_simple_pdrop.json")
    row = table.row(0, named=True)
    assert row["weight"] == pytest.approx(10.0)  # pdrop = 0.9: the event stands for 10 events
    assert (row["action"], row["reward"], row["pscore"]) == (1, 1.0, 0.5)
    assert row["event_id"] == "cb_simple_pdrop.json:1"  # no EventId in the file


@pytest.mark.parametrize("name", ["dsjson_cb.json", "decisionservice.json", "ccb_data.json", "cb_simple_pdrop.json"])
def test_on_policy_ips_equals_mean_reward(data: Path, name: str) -> None:
    table = load_dsjson(data / name, target="logged")
    weighted_mean = float((table["weight"] * table["reward"]).sum() / table["weight"].sum())
    assert _ips(table) == pytest.approx(weighted_mean, abs=1e-12)


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "bad.json"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cb_line(data: Path, **changes: object) -> str:
    record = json.loads((data / "dsjson_cb.json").read_text().splitlines()[1])
    for key, value in changes.items():
        if value is None:
            del record[key]
        else:
            record[key] = value
    return json.dumps(record)


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"_label_cost": None}, "_label_cost", "missing"),
        ({"_label_probability": 0.5}, "_label_probability", "disagrees"),
        ({"_label_Action": 9, "_labelIndex": 8}, "_label_Action", "outside 1..4"),
        ({"_labelIndex": 2}, "_labelIndex", "disagrees"),
        ({"p": [0.85, 0.05, 0.05]}, "p", "list of 4"),
        ({"p": [0.85, 0.85, 0.05, 0.05]}, "p", "sum to"),
        ({"pdrop": 1.0}, "pdrop", r"\[0, 1\)"),
        ({"a": [1, "x", 2, 4]}, r"a\[1\]", "integer"),
        ({"_outcomes": [{"_a": [0], "_p": [1.0]}]}, "_label_cost", "slates"),
    ],
)
def test_malformed_record_names_file_line_and_field(
    data: Path, tmp_path: Path, changes: dict[str, object], field: str, reason: str
) -> None:
    path = _write(tmp_path, [_cb_line(data), _cb_line(data, **changes)])
    with pytest.raises(DsjsonFormatError, match=rf"bad\.json:2: {field}: .*{reason}") as error:
        load_dsjson(path)
    assert error.value.line == 2


def test_skip_mode_counts_bad_lines(data: Path, tmp_path: Path) -> None:
    path = _write(tmp_path, [_cb_line(data), "{not json", "", _cb_line(data, c=None), _cb_line(data)])
    with pytest.raises(DsjsonFormatError, match=r"bad\.json:2: <line>: not valid JSON"):
        load_dsjson(path)
    result = read_dsjson(path, on_error="skip")
    assert result.table.height == 2 and result.n_events == 2
    assert [(s.line, "c:" in s.reason) for s in result.skipped] == [(2, False), (4, True)]
    assert load_dsjson(path, on_error="skip").height == 2


def test_not_activated_events_are_excluded(data: Path, tmp_path: Path) -> None:
    path = _write(tmp_path, [_cb_line(data), _cb_line(data, _skipLearn=True)])
    result = read_dsjson(path)
    assert result.table.height == 1 and result.n_not_activated == 1


def test_bad_arguments(data: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="target"):
        load_dsjson(data / "dsjson_cb.json", target="greedy")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="on_error"):
        load_dsjson(data / "dsjson_cb.json", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_dsjson(tmp_path / "missing.json")
    empty = _write(tmp_path, [""])
    assert load_dsjson(empty).columns[:6] == FEEDBACK_COLUMNS and load_dsjson(empty).height == 0


@pytest.mark.parametrize("name", ["dsjson_cb.json", "decisionservice.json", "ccb_data.json"])
def test_tables_pass_the_evaluators_validation(data: Path, name: str) -> None:
    from evaluators import estimate, validate_table

    table = load_dsjson(data / name)
    check = validate_table(table, need=set(), allow_support_violations=False)
    assert check.n_rows == table.height
    result = estimate(table, estimators=["ips"], ci=None)
    assert result["value"][0] == pytest.approx(table["reward"].mean(), abs=1e-12)


def test_count_weights_make_a_dropped_log_estimate_like_the_full_one() -> None:
    """A row with weight 2 (pdrop = 0.5) counts as two rows: the same estimate as duplicating it."""
    import polars as pl

    from evaluators import estimate

    rows = pl.DataFrame({
        "event_id": ["a", "b", "c"], "position": [0, 0, 0], "action": [1, 2, 1],
        "reward": [1.0, 0.0, 1.0], "pscore": [0.5, 0.25, 0.5], "target_pscore": [1.0, 0.5, 0.0],
    })
    weighted = rows.with_columns(pl.Series("weight", [2.0, 1.0, 1.0]))
    duplicated = pl.concat([rows, rows.head(1).with_columns(pl.lit("a2").alias("event_id"))])
    got = estimate(weighted, "ips,snips")["value"].to_list()
    want = estimate(duplicated, "ips,snips")["value"].to_list()
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == pytest.approx((2 * 2.0 * 1.0 + 0.0 + 0.0) / 4)  # Σ c·w·r / Σ c
    with pytest.raises(ValueError, match="column 'weight'"):
        estimate(weighted.with_columns(pl.lit(0.0).alias("weight")), "ips")
