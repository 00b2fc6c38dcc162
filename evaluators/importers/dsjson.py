"""DSJSON importer: Decision Service / Azure Personalizer exports → bandit-feedback table.

DSJSON is one JSON object per line, the format Vowpal Wabbit reads with ``--dsjson``. Two shapes are read:

* **single-slot CB** — ``_label_cost``, ``_label_probability``, ``_label_Action`` (1-based action id),
  ``_labelIndex`` (0-based), ``a`` (action ids, chosen first), ``p`` (probabilities aligned with ``a``),
  ``c`` (context; ``c._multi`` lists the actions with their features). One table row, ``position = 0``.
* **multi-slot CCB** — ``_outcomes[k]`` per slot k with ``_a`` (0-based indices into ``c._multi``, chosen
  first), ``_p`` (aligned), ``_label_cost``, ``_id``; ``c._slots[k]`` holds slot features; ``_ba`` the
  baseline action per slot. One row per slot, ``position = k``. Each slot's probability is conditional on
  the earlier slots' choices (chosen actions are removed from later slots), which is the conditioning the
  feedback table asks for.

Conventions of the output (see ``read_dsjson``): ``action`` is always the 0-based index into ``c._multi``;
``reward = −cost`` because Personalizer logs costs as negated rewards; ``pscore`` is the logged probability
of the chosen action in that slot; ``weight = 1 / (1 − pdrop)`` counts the events the client dropped before
upload (``pdrop`` is the share dropped), so a weighted estimator uses ``Σ weight·term / Σ weight``.
Events with ``_skipLearn: true`` (deferred and never activated, so never shown) are excluded and counted.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from recsys_rl.errors import InvalidInput

logger = logging.getLogger(__name__)

Target = Literal["logged", "uniform", "baseline"]
OnError = Literal["raise", "skip"]
_Fail = Callable[[str, str], "DsjsonFormatError"]

# Logged probabilities are often float32 (0.05000000074505806 next to 0.05); anything looser is a real mismatch.
_PROBABILITY_TOLERANCE = 1e-5

SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "position": pl.Int64(),
    "action": pl.Int64(),
    "reward": pl.Float64(),
    "pscore": pl.Float64(),
    "target_pscore": pl.Float64(),
    "weight": pl.Float64(),
    "action_tag": pl.String(),
    "slot_id": pl.String(),
    "n_actions": pl.Int64(),
    "ranked_actions": pl.List(pl.Int64()),
    "ranked_probs": pl.List(pl.Float64()),
    "timestamp": pl.String(),
    "model_id": pl.String(),
    "context": pl.String(),
    "actions": pl.String(),
    "slot_features": pl.String(),
    "source": pl.String(),
}


class DsjsonFormatError(InvalidInput):
    """A DSJSON line that cannot be imported; ``field`` is ``"<file>:<line>: <json field path>"``."""

    def __init__(self, source: str, line: int, field: str, reason: str) -> None:
        super().__init__(f"{source}:{line}: {field}", reason)
        self.source, self.line, self.json_field = source, line, field


@dataclass(frozen=True)
class SkippedLine:
    source: str
    line: int
    reason: str


@dataclass(frozen=True)
class DsjsonImport:
    """Result of ``read_dsjson``: the table plus what was left out and why."""

    table: pl.DataFrame
    n_events: int
    skipped: tuple[SkippedLine, ...]
    n_not_activated: int


def load_dsjson(
    path: str | Path | Sequence[str | Path],
    *,
    target: Target = "logged",
    on_error: OnError = "raise",
) -> pl.DataFrame:
    """The bandit-feedback table of one or more DSJSON files (see ``read_dsjson``)."""
    result = read_dsjson(path, target=target, on_error=on_error)
    if result.skipped:
        first = result.skipped[0]
        logger.warning(
            "skipped %d malformed DSJSON lines (first %s:%d: %s)",
            len(result.skipped), first.source, first.line, first.reason,
        )
    return result.table


def read_dsjson(
    path: str | Path | Sequence[str | Path],
    *,
    target: Target = "logged",
    on_error: OnError = "raise",
) -> DsjsonImport:
    """Read DSJSON files (concatenated in the given order) into the bandit-feedback table.

    ``target`` fills ``target_pscore`` so the table is evaluable at once:

    * ``"logged"`` — the logging policy itself: ``target_pscore = pscore`` (on-policy; IPS = mean reward);
    * ``"uniform"`` — uniform over the actions available in the slot: ``1 / n_actions`` (for CCB,
      ``n_actions = len(_a)``, i.e. after removing the actions chosen for earlier slots);
    * ``"baseline"`` — the application's default: 1 if the logged action is the baseline, else 0. For CB the
      baseline is ``c._multi[0]`` (Personalizer's offline evaluations use the first action of the Rank call);
      for CCB it is ``_ba[k]``.

    ``on_error="raise"`` stops at the first bad line with a ``DsjsonFormatError`` naming file, line and
    field; ``"skip"`` drops bad lines and lists them in ``DsjsonImport.skipped``. Blank lines are ignored.
    Beyond the feedback-table columns, the table keeps ``weight`` (1/(1−pdrop)), ``action_tag``, ``slot_id``,
    ``n_actions``, ``ranked_actions``/``ranked_probs`` (the logged distribution, chosen first), ``timestamp``
    (as logged), ``model_id`` (``VWState.m``), and the features as JSON strings: ``context`` (``c`` without
    ``_multi``/``_slots``), ``actions`` (``c._multi``), ``slot_features`` (``c._slots[k]``, CCB only).
    """
    if target not in ("logged", "uniform", "baseline"):
        raise InvalidInput("target", f"must be 'logged', 'uniform' or 'baseline', got {target!r}")
    if on_error not in ("raise", "skip"):
        raise InvalidInput("on_error", f"must be 'raise' or 'skip', got {on_error!r}")
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if not paths:
        raise InvalidInput("path", "no DSJSON file given")

    rows: list[dict[str, Any]] = []
    skipped: list[SkippedLine] = []
    n_events = n_not_activated = 0
    for file in paths:
        if not file.is_file():
            raise FileNotFoundError(f"DSJSON file not found: {file}")
        for line_no, text in _lines(file):
            try:
                record = _parse_json(text, str(file), line_no)
                if record.get("_skipLearn") is True:
                    n_not_activated += 1
                    continue
                rows.extend(_rows_of(record, str(file), line_no, target))
                n_events += 1
            except DsjsonFormatError as error:
                if on_error == "raise":
                    raise
                skipped.append(SkippedLine(error.source, error.line, str(error)))
    table = pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)
    return DsjsonImport(table=table, n_events=n_events, skipped=tuple(skipped), n_not_activated=n_not_activated)


def _lines(file: Path) -> Iterable[tuple[int, str]]:
    with file.open(encoding="utf-8") as handle:
        for line_no, text in enumerate(handle, start=1):
            if text.strip():
                yield line_no, text


def _parse_json(text: str, source: str, line: int) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise DsjsonFormatError(source, line, "<line>", f"not valid JSON ({error.msg} at column {error.colno})")
    if not isinstance(record, dict):
        raise DsjsonFormatError(source, line, "<line>", "expected a JSON object")
    return record


def _rows_of(record: dict[str, Any], source: str, line: int, target: Target) -> list[dict[str, Any]]:
    def fail(field: str, reason: str) -> DsjsonFormatError:
        return DsjsonFormatError(source, line, field, reason)

    context = record.get("c")
    if not isinstance(context, dict):
        raise fail("c", "missing or not an object (the context)")
    multi = context.get("_multi")
    if not isinstance(multi, list) or not multi:
        raise fail("c._multi", "missing or empty (the actions)")
    pdrop = _number(record.get("pdrop", 0.0), "pdrop", fail)
    if not 0.0 <= pdrop < 1.0:
        raise fail("pdrop", f"must be in [0, 1), got {pdrop}")
    state = record.get("VWState")
    common = {
        "event_id": str(record.get("EventId") or f"{Path(source).name}:{line}"),
        "weight": 1.0 / (1.0 - pdrop),
        "timestamp": record.get("Timestamp"),
        "model_id": state.get("m") if isinstance(state, dict) else None,
        "context": json.dumps({k: v for k, v in context.items() if k not in ("_multi", "_slots")}),
        "actions": json.dumps(multi),
        "source": f"{source}:{line}",
    }

    if "_outcomes" in record:
        if "_label_cost" in record:
            raise fail("_label_cost", "slates DSJSON (one global cost with _outcomes) is not supported")
        return _ccb_rows(record, context, multi, common, target, fail)
    return [_cb_row(record, multi, common, target, fail)]


def _cb_row(
    record: dict[str, Any], multi: list[Any], common: dict[str, Any], target: Target, fail: _Fail
) -> dict[str, Any]:
    for field in ("_label_cost", "a", "p"):
        if field not in record:
            raise fail(field, "missing (an unlabeled or truncated event)")
    ids = _int_list(record["a"], "a", fail)
    probs = _prob_list(record["p"], "p", len(ids), fail)
    # `a` holds 1-based action ids; the chosen one comes first unless _label_Action says otherwise.
    chosen_id = _int(record.get("_label_Action", ids[0]), "_label_Action", fail)
    if "_labelIndex" in record and _int(record["_labelIndex"], "_labelIndex", fail) != chosen_id - 1:
        raise fail("_labelIndex", f"{record['_labelIndex']} disagrees with _label_Action={chosen_id}")
    if not 1 <= chosen_id <= len(multi):
        raise fail("_label_Action", f"{chosen_id} is outside 1..{len(multi)} (the actions in c._multi)")
    if chosen_id not in ids:
        raise fail("a", f"does not contain the chosen action {chosen_id}")
    pscore = probs[ids.index(chosen_id)]
    if "_label_probability" in record:
        label_p = _number(record["_label_probability"], "_label_probability", fail)
        if abs(label_p - pscore) > _PROBABILITY_TOLERANCE:
            raise fail("_label_probability", f"{label_p} disagrees with p for the chosen action ({pscore})")
    if pscore <= 0.0:
        raise fail("p", "the chosen action has probability 0")
    action = chosen_id - 1
    return {
        **common,
        "position": 0,
        "action": action,
        "reward": 0.0 - _number(record["_label_cost"], "_label_cost", fail),
        "pscore": pscore,
        "target_pscore": _target_pscore(target, pscore, len(ids), action == 0),
        "action_tag": _tag(multi[action]),
        "slot_id": None,
        "n_actions": len(ids),
        "ranked_actions": [i - 1 for i in ids],
        "ranked_probs": probs,
        "slot_features": None,
    }


def _ccb_rows(
    record: dict[str, Any],
    context: dict[str, Any],
    multi: list[Any],
    common: dict[str, Any],
    target: Target,
    fail: _Fail,
) -> list[dict[str, Any]]:
    outcomes = record["_outcomes"]
    if not isinstance(outcomes, list) or not outcomes:
        raise fail("_outcomes", "must be a non-empty list of slots")
    slots = context.get("_slots") or []
    baseline = record.get("_ba")
    if target == "baseline" and (not isinstance(baseline, list) or len(baseline) < len(outcomes)):
        raise fail("_ba", "target='baseline' needs one baseline action per slot")
    rows = []
    for k, outcome in enumerate(outcomes):
        where = f"_outcomes[{k}]"
        if not isinstance(outcome, dict):
            raise fail(where, "must be an object")
        for field in ("_label_cost", "_a", "_p"):
            if field not in outcome:
                raise fail(f"{where}.{field}", "missing")
        actions = _int_list(outcome["_a"], f"{where}._a", fail)
        probs = _prob_list(outcome["_p"], f"{where}._p", len(actions), fail)
        if any(not 0 <= a < len(multi) for a in actions):
            raise fail(f"{where}._a", f"indices must be in 0..{len(multi) - 1} (the actions in c._multi)")
        action, pscore = actions[0], probs[0]
        if pscore <= 0.0:
            raise fail(f"{where}._p", "the chosen action has probability 0")
        is_baseline = target == "baseline" and action == _int(baseline[k], f"_ba[{k}]", fail)  # type: ignore[index]
        slot = slots[k] if k < len(slots) else None
        rows.append({
            **common,
            "position": k,
            "action": action,
            "reward": 0.0 - _number(outcome["_label_cost"], f"{where}._label_cost", fail),
            "pscore": pscore,
            "target_pscore": _target_pscore(target, pscore, len(actions), is_baseline),
            "action_tag": _tag(multi[action]),
            "slot_id": str(outcome.get("_id", slot.get("_id") if isinstance(slot, dict) else k)),
            "n_actions": len(actions),
            "ranked_actions": actions,
            "ranked_probs": probs,
            "slot_features": json.dumps(slot) if slot is not None else None,
        })
    return rows


def _target_pscore(target: Target, pscore: float, n_actions: int, is_baseline: bool) -> float:
    if target == "logged":
        return pscore
    if target == "uniform":
        return 1.0 / n_actions
    return 1.0 if is_baseline else 0.0


def _tag(action: Any) -> str | None:
    if isinstance(action, dict) and "_tag" in action:
        return str(action["_tag"])
    return None


def _number(value: Any, field: str, fail: _Fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(field, f"must be a finite number, got {value!r}")
    return float(value)


def _int(value: Any, field: str, fail: _Fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(field, f"must be an integer, got {value!r}")
    return value


def _int_list(value: Any, field: str, fail: _Fail) -> list[int]:
    if not isinstance(value, list) or not value:
        raise fail(field, "must be a non-empty list of action ids")
    return [_int(v, f"{field}[{i}]", fail) for i, v in enumerate(value)]


def _prob_list(value: Any, field: str, length: int, fail: _Fail) -> list[float]:
    if not isinstance(value, list) or len(value) != length:
        raise fail(field, f"must be a list of {length} probabilities aligned with the actions")
    probs = [_number(v, f"{field}[{i}]", fail) for i, v in enumerate(value)]
    if any(not 0.0 <= p <= 1.0 for p in probs):
        raise fail(field, "probabilities must lie in [0, 1]")
    # Logged distributions are float32 and may be rounded; a sum well above 1 means a corrupt line.
    if sum(probs) > 1.0 + 1e-3:
        raise fail(field, f"probabilities sum to {sum(probs):.6g} > 1")
    return probs
