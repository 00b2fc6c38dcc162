"""A run-time change of a surface's shield rules: a whole replacement and/or block / unblock edits.

Validated here (InvalidInput naming the request field, e.g. ``rules.max_per_value.creator`` or ``block_items[2]``)
and applied by the shield store under its lock to the rules in force, so two admins' edits never lose each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recsys_rl.errors import InvalidInput
from recsys_rl.shield import bulk
from recsys_rl.shield.rules import (
    ShieldConfigError, ShieldRules, read_blocked_file, rules_from_dict, rules_to_dict, sorted_blocked,
)

MAX_EDIT_ITEMS = 100_000  # ids per request edit list; more go through blocked_items_file
_BISECT_EDITS = 64  # up to this many ids are bisected into the sorted list (~1 ms memmove each for a million)


@dataclass(frozen=True)
class ShieldEdit:
    """``replacement``: a whole rules dict (TOML names; its ``blocked_items_file`` is a path on the server), or None
    to edit the rules in force. ``block`` / ``unblock``: ids applied after the replacement. ``blocked_items_file``:
    a server path whose ids are blocked too (read when the change is applied; the store keeps the ids)."""

    replacement: dict[str, Any] | None = None
    block: Sequence[str] = field(default_factory=tuple)
    unblock: Sequence[str] = field(default_factory=tuple)
    blocked_items_file: str = ""

    def validate(self) -> None:
        """Checks what can be checked without the rules in force (before any lock is taken)."""
        for name, ids in (("block_items", self.block), ("unblock_items", self.unblock)):
            if len(ids) > MAX_EDIT_ITEMS:
                raise InvalidInput(name, f"more than {MAX_EDIT_ITEMS} ids; use rules.blocked_items_file")
            for i, item in enumerate(ids):
                if not item.strip() or "\n" in item or "\r" in item:
                    raise InvalidInput(f"{name}[{i}]", f"{item!r} is not an item id (blank or a line break)")
        if set(self.block) & set(self.unblock):
            raise InvalidInput("unblock_items", "an id is both blocked and unblocked in one request")
        if self.replacement is not None:
            _build(self.replacement, read_files=False)

    def apply(self, current: ShieldRules) -> tuple[ShieldRules, str]:
        """(the new rules, a summary in words) from the rules in force."""
        base = _build(self.replacement) if self.replacement is not None else current
        table = rules_to_dict(base, blocked_items=False)
        # The ids in force, sorted (kept with the rules: no re-sort). Every step below is chunked (bulk) so that a
        # change to a million ids does not hold the GIL against the Rank threads of this process.
        ordered = sorted_blocked(base.blocked_items)
        if not self.blocked_items_file and len(self.block) + len(self.unblock) <= _BISECT_EDITS:
            # A few ids on top of a sorted list: bisect them in; rules_from_dict sees a sorted list, sorts nothing.
            table["blocked_items"] = bulk.edit_sorted(ordered, self.block, self.unblock)
        else:
            # One list of all the ids (duplicates too: rules_from_dict's sort drops them), no set: each big
            # temporary container is one more garbage-collector pass over a million ids under the GIL.
            extra: list[str] = []
            if self.blocked_items_file:
                try:
                    extra = read_blocked_file(self.blocked_items_file)
                except ShieldConfigError as exc:
                    raise InvalidInput("rules.blocked_items_file", str(exc).partition(": ")[2]) from None
            items: list[str] = []
            unblock = frozenset(self.unblock)
            for source in (ordered, extra, self.block):
                for part in bulk.chunks(source):
                    items += [i for i in part if i not in unblock] if unblock else part
            del extra
            table["blocked_items"] = items
        rules = _build(table, owned=True)  # its id list was built above for this call only
        summary = diff(current, rules)
        if self.replacement is not None:
            summary = f"replaced the rules ({summary})"
        return rules, summary


def _build(table: dict[str, Any], *, read_files: bool = True, prefix: str = "rules", owned: bool = False) -> ShieldRules:
    """rules_from_dict with its ``shield.KEY`` errors renamed to the request field ``rules.KEY``."""
    if not read_files:
        table = {k: v for k, v in table.items() if k != "blocked_items_file"}
    try:
        return rules_from_dict(table, owned=owned)
    except ShieldConfigError as exc:
        key, _, reason = str(exc).partition(": ")
        raise InvalidInput(prefix + key.removeprefix("shield"), reason) from None


def describe(rules: ShieldRules) -> str:
    """The rules in a line, for the audit trail."""
    if not rules.active:
        return "no shield"
    parts = [f"{len(rules.blocked_items)} blocked items"]
    parts += [f"blocked_values.{k} ({len(v)} values)" for k, v in rules.blocked_values]
    parts += [f"max_per_value.{k} = {n}" for k, n in rules.max_per_value]
    parts += [f"pinned {item}@{slot}" for item, slot in rules.pinned]
    if rules.near_duplicates_max_cosine is not None:
        parts.append(f"near_duplicates.max_cosine = {rules.near_duplicates_max_cosine}")
    return ", ".join(parts + [f"min_feasible {rules.min_feasible}"])


def diff(old: ShieldRules, new: ShieldRules) -> str:
    """What changed, in words: blocked ids added/removed, and the other rules when they differ."""
    parts = []
    # Counted a chunk per C call: a set difference of a million ids is one ~50 ms C call holding the GIL.
    if added := bulk.count_missing(new.blocked_items, old.blocked_items):
        parts.append(f"blocked {added} item{'s' * (added != 1)}")
    if removed := bulk.count_missing(old.blocked_items, new.blocked_items):
        parts.append(f"unblocked {removed} item{'s' * (removed != 1)}")
    if old.active != new.active or rules_to_dict(old, blocked_items=False) != rules_to_dict(new, blocked_items=False):
        parts.append(f"rules now: {describe(new)}")
    return "; ".join(parts) or "no change"


__all__ = ["MAX_EDIT_ITEMS", "ShieldEdit", "describe", "diff"]
