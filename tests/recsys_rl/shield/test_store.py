"""ShieldStore on real files: versions round-trip, start-up precedence, audit order, refresh across stores, races."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_rl.errors import Aborted, InvalidInput, NotFound
from recsys_rl.shield import NO_SHIELD, parse_shield
from recsys_rl.shield.edits import ShieldEdit
from recsys_rl.shield.rules import ShieldRules, rules_from_dict, rules_to_dict
from recsys_rl.shield.store import CONFIG_ACTOR, ShieldStore, ShieldStoreError, load_rules

RULES = parse_shield({"blocked_items": ["b", "a"], "blocked_values": {"topic": ["t1"]},
                      "max_per_value": {"creator": 2}, "pinned": {"p": 0}, "min_feasible": 3})


def test_dict_round_trip_keeps_the_version() -> None:
    assert rules_from_dict(rules_to_dict(RULES)) == RULES
    assert json.loads(json.dumps(rules_to_dict(RULES))) == rules_to_dict(RULES)
    assert "blocked_items" not in rules_to_dict(RULES, blocked_items=False)


def test_a_stored_version_loads_back_and_damage_is_detected(tmp_path: Path) -> None:
    many = rules_from_dict({"blocked_items": [f"item-{i}" for i in range(50_000)], "max_per_value": {"c": 1}})
    store = ShieldStore(tmp_path)
    store.apply_config({"s": many})
    assert load_rules(tmp_path, many.version) == many
    assert (tmp_path / "admin" / "shield" / f"{many.version}.blocked").read_text().count("\n") == 50_000
    assert load_rules(tmp_path, "") is NO_SHIELD
    with pytest.raises(NotFound, match="shield-0000"):
        load_rules(tmp_path, "shield-0000")
    (tmp_path / "admin" / "shield" / f"{many.version}.blocked").write_text("item-1\n")
    with pytest.raises(ShieldStoreError, match="damaged"):
        load_rules(tmp_path, many.version)


def _kinds(store: ShieldStore) -> list[tuple[str, str, str]]:
    return [(e.kind, e.actor, e.new_version) for e in store.history("s")]


def test_start_up_precedence(tmp_path: Path) -> None:
    first = ShieldStore(tmp_path)
    assert first.apply_config({"s": RULES}) == {"s": RULES}
    assert _kinds(first) == [("initial", "recsys-rl serve", RULES.version)]
    entry, changed = first.set("s", ShieldEdit(block=["x"]).apply, actor="alice", reason="takedown")
    assert "x" in changed.blocked_items and entry.old_version == RULES.version and entry.summary == "blocked 1 item"

    # Same TOML: the run-time change survives the restart, nothing new is audited.
    second = ShieldStore(tmp_path)
    assert second.apply_config({"s": RULES}) == {"s": changed}
    assert len(second.history("s")) == 2

    # The TOML's rules changed since the last start: applied as an audited change by "config".
    edited = parse_shield({"blocked_items": ["z"]})
    third = ShieldStore(tmp_path)
    assert third.apply_config({"s": edited}) == {"s": edited}
    kind, actor, version = _kinds(third)[-1]
    assert (kind, actor, version) == ("config", CONFIG_ACTOR, edited.version)
    assert third.history("s")[-1].old_version == changed.version

    # And a restart with that TOML again keeps it (the config version last seen is the trail's).
    assert ShieldStore(tmp_path).apply_config({"s": edited}) == {"s": edited}
    assert len(ShieldStore(tmp_path).history("s")) == 3


def test_refresh_adopts_another_stores_change_in_audit_order(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    mine = ShieldStore(tmp_path, on_change=lambda surface, rules: seen.append((surface, rules.version)))
    mine.apply_config({"s": NO_SHIELD})
    other = ShieldStore(tmp_path)
    other.apply_config({"s": NO_SHIELD})
    assert mine.refresh() == {}
    _, rules = other.set("s", ShieldEdit(block=["a"]).apply, actor="bob")
    assert mine.refresh() == {"s": rules} and seen[-1] == ("s", rules.version)
    assert mine.rules("s") == rules and mine.refresh() == {}


def test_expected_version_race_is_aborted_and_changes_nothing(tmp_path: Path) -> None:
    a, b = ShieldStore(tmp_path), ShieldStore(tmp_path)
    a.apply_config({"s": RULES})
    b.apply_config({"s": RULES})
    a.set("s", ShieldEdit(block=["x"]).apply, actor="alice", expected_version=RULES.version)
    with pytest.raises(Aborted, match="expected_version"):
        b.set("s", ShieldEdit(unblock=["a"]).apply, actor="bob", expected_version=RULES.version)
    assert len(b.history("s")) == 2 and "a" in b.rules("s").blocked_items
    with pytest.raises(InvalidInput, match="^actor"):
        b.set("s", ShieldEdit(block=["y"]).apply, actor=" ")


@pytest.mark.parametrize("edit,field", [
    (ShieldEdit(replacement={"max_per_value": {"creator": 0}}), "rules.max_per_value.creator"),
    (ShieldEdit(replacement={"pinned": {"a": 0, "b": 0}}), "rules.pinned"),
    (ShieldEdit(replacement={"colour": 1}), "rules.colour"),
    (ShieldEdit(block=["ok", "bad\nid"]), r"block_items\[1\]"),
    (ShieldEdit(block=["a"], unblock=["a"]), "unblock_items"),
])
def test_bad_edits_name_the_field(edit: ShieldEdit, field: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{field}: "):
        edit.validate()


def test_replacement_then_edits_and_a_server_side_file(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("f1\nf2\n\n")
    edit = ShieldEdit(replacement={"blocked_items": ["r"], "max_per_value": {"creator": 1}}, block=["e"],
                      unblock=["r"], blocked_items_file=str(ids))
    rules, summary = edit.apply(RULES)
    assert rules.blocked_items == {"e", "f1", "f2"} and rules.max_per_value == (("creator", 1),)
    assert summary.startswith("replaced the rules (") and isinstance(rules, ShieldRules)
    with pytest.raises(InvalidInput, match="^rules.blocked_items_file: cannot read"):
        ShieldEdit(blocked_items_file=str(tmp_path / "missing")).apply(RULES)
