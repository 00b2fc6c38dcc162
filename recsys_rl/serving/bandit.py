"""The Vowpal Wabbit contextual bandit (``--cb_adf``) that scores candidates and learns from logs.

VW only scores: it predicts a cost per action; exploration is ours (recsys_rl.serving.exploration), so the
options must not include an explore reduction. Scoring runs on pre-parsed per-item examples from an
:class:`~recsys_rl.serving.features.ItemExampleCache` plus a freshly parsed shared (context) example.

Verified (tests/recsys_rl/test_bandit.py): reusing a parsed item example across many predictions with
a new shared example each time gives bit-identical scores to parsing the whole multi-line text, also
while the model learns; memory stays flat. Examples are built with ``pyvw.Example(workspace, line)``,
whose Python object owns and frees the native example: examples from ``Workspace.parse`` come from the
workspace's pool and leak (about 30 kB each) unless ``finish_example`` returns them, which cannot be
done for a cached item. A label cannot be cleared from an example (setting "" leaves the cost in place), so
learning labels a fresh example of the served item only; the other actions of a slot's update are unlabelled, and
the online learner takes them from the item cache (``learn`` on a decision read through the log's table view):
identical examples in the same order, so the same model bit for bit (tests/recsys_rl/serving/test_learner_exact.py).

Thread-safe: a VW workspace is not, and neither is the cache, so the bandit holds its own lock around every
use of them (a swapped-out bandit finishes its calls under its own lock while the new one serves).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from operator import attrgetter

import numpy as np
from google.protobuf.message import Message
from vowpalwabbit import pyvw

from logging_schema.views import CandidateBaselines
from recsys_rl.serving.candidates import current_view, logged_item_keys
from recsys_rl.serving.features import ItemExampleCache, context_line
from recsys_rl.logging.v1 import events_pb2
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

# Distinct logged contexts whose shared line the learner keeps (cleared when full).
_CONTEXT_LINES_MAX = 10_000
# Distinct request contexts whose parsed shared example scoring keeps (cleared when full): contexts repeat (hour,
# device, segment), and the line and its parse are ~35 µs of every Rank.
_SHARED_EXAMPLES_MAX = 4_096
_EXAMPLE = attrgetter("example")  # ItemExample.example
_EXPLORE_OPTIONS = ("--cb_explore_adf", "--epsilon", "--squarecb", "--softmax", "--bag", "--cover", "--first")


class VWBandit:
    """score(request) = −(VW predicted cost) per candidate; learn(event, rewards) = one IPS update per slot."""

    # Inside the decision path score/validate read the candidates only through the view (decision.Scorer): they
    # are handed the request as sent, and candidates sent by id only are never built as protobuf messages.
    reads_view = True

    def __init__(self, vw_args: str, *, model: bytes | None = None, cache_items: int = 100_000) -> None:
        tokens = vw_args.split()
        if "--cb_adf" not in tokens:
            raise ValueError(f"vw_args: must include --cb_adf, got {vw_args!r}")
        explore = [t for t in tokens if t in _EXPLORE_OPTIONS]
        if explore:
            raise ValueError(f"vw_args: exploration is done by the explorer, not VW; remove {' '.join(explore)}")
        if any(t in ("-i", "--initial_regressor", "-d", "--data") for t in tokens):
            raise ValueError("vw_args: pass the model as bytes, not -i/-d")
        self.vw_args = vw_args
        # A Workspace is not thread-safe: every use of it (and of the cache of examples parsed into it) holds this.
        self._lock = threading.Lock()
        self._workspace = self._load(vw_args, model)
        workspace = self._workspace
        self.cache: ItemExampleCache[pyvw.Example] = ItemExampleCache(
            cache_items, prepare=lambda line: pyvw.Example(workspace, line)
        )
        self.updates = 0
        # Logged context bytes -> shared line, for learning from the log (contexts repeat: hour, device, segment).
        self._context_lines: dict[bytes, str] = {}
        # Request context bytes -> its shared example parsed into this workspace, for scoring (under the lock). Exact:
        # equal bytes are equal contexts iterated in the same order, so the same line; and predicting leaves a shared
        # example as parsed, as it does the cached item examples (tests/recsys_rl/serving/test_bandit.py).
        self._shared: dict[bytes, pyvw.Example] = {}

    @staticmethod
    def _load(vw_args: str, model: bytes | None) -> pyvw.Workspace:
        if model is None:
            return pyvw.Workspace(f"{vw_args} --quiet")
        with tempfile.TemporaryDirectory(prefix="recsys_rl_vw_") as tmp:
            path = os.path.join(tmp, "model.vw")
            with open(path, "wb") as f:
                f.write(model)
            return pyvw.Workspace(f"{vw_args} --quiet -i {path}")

    # --- scoring ---------------------------------------------------------------------------------

    def score(self, request: pb.RankRequest) -> np.ndarray:
        """Scores (higher = better, = −predicted cost), shape (len(request.candidates),), float64.

        Raises InvalidInput (from features) for a bad context or candidate, naming the field. Inside the decision
        path the request's candidates are already read (``candidates.current_view``): the item cache is looked up by
        their keys, with no protobuf read of a cached item.
        """
        context = request.context.SerializeToString()
        shared = self._shared.get(context)  # a dict read is atomic; the example is used under the lock only
        shared_line = context_line(request.context) if shared is None else ""  # InvalidInput before the lock
        view = current_view(request)
        with self._lock:
            entries = self.cache.entries(view) if view is not None else self.cache.items(request.candidates)
            if not entries:
                return np.empty(0)
            workspace = self._workspace
            if shared is None:
                shared = pyvw.Example(workspace, shared_line)
                if len(self._shared) >= _SHARED_EXAMPLES_MAX:
                    self._shared.clear()
                self._shared[context] = shared
            examples: list[pyvw.Example] = [shared]
            examples.extend(map(_EXAMPLE, entries))  # each entry's parsed example, read in C
            # The item cache's callers reject repeated item ids (ItemExampleCache.items, CandidateView), so every
            # cached example appears once: VW merges the shared features into each action example in place, and the
            # same object twice would be corrupted.
            costs = workspace.predict(examples)
        return -np.asarray(costs, dtype=np.float64)

    def validate(self, request: pb.RankRequest) -> None:
        """Raises InvalidInput as ``score`` would, without predicting (a baseline served by the rollout's choice).

        Goes through the item cache like ``score``, so a valid item's check is a cache hit next time too.
        """
        context_line(request.context)
        view = current_view(request)
        with self._lock:
            if view is not None:
                self.cache.entries(view)
            else:
                self.cache.items(request.candidates)

    def hot_items(self, limit: int = 10_000) -> list[tuple[bytes, str, str]]:
        """The cache's most recently used items, to warm a replacement model before it is swapped in."""
        with self._lock:
            return self.cache.snapshot(limit)

    # --- learning --------------------------------------------------------------------------------

    def learn(self, event: events_pb2.DecisionEvent | Message, slot_rewards: Sequence[float]) -> int:
        """One cb_adf update per served slot; returns the number of updates.

        Slot k's action set is the candidates not placed in slots < k; the label sits on the served
        item with cost = −reward and probability = the logged propensity, so VW's IPS/DR reduction
        corrects for how the slot was drawn (not a regression on served items only).

        ``event``: a DecisionEvent, or a decision of the log's table view (``logging_schema.views.TableRecord``:
        candidates and context as logged bytes), as the online learner reads the log. The view's path reads no
        candidate's features: each candidate's parsed example comes from the item cache (a miss parses that
        candidate), and only the shared example and one labelled example per slot are parsed per decision.
        """
        if len(slot_rewards) != len(event.slate):
            raise ValueError(f"slot_rewards: expected {len(event.slate)} values (one per slot), got {len(slot_rewards)}")
        n = len(event.candidates)
        if n == 0 or not event.slate:
            return 0
        with self._lock:
            if isinstance(event.candidates[0], bytes):
                return self._learn_logged(event, slot_rewards)
            return self._learn(event, slot_rewards, n)

    def _learn_logged(self, event: Message, slot_rewards: Sequence[float]) -> int:
        """``_learn`` for a table-view decision: the same VW calls on the same examples, cached where unlabelled."""
        raw: Sequence[bytes] = event.candidates  # type: ignore[attr-defined]
        baselines = CandidateBaselines.FromString(event.SerializeToString()).candidates  # type: ignore[attr-defined]
        keys = logged_item_keys(raw, [candidate.baseline_score for candidate in baselines])
        entries = self.cache.logged(keys, raw)
        workspace = self._workspace
        if len(set(keys)) == len(keys):
            actions: list[pyvw.Example] = [entry.example for entry in entries]  # type: ignore[misc]
        else:  # the same cached example twice in one update would be corrupted (see score): fresh ones
            actions = [pyvw.Example(workspace, entry.line) for entry in entries]
        shared = pyvw.Example(workspace, self._logged_context_line(event.context))  # type: ignore[attr-defined]
        remaining = list(range(len(raw)))  # candidate index of each of ``actions``
        for k, (slot, reward) in enumerate(zip(event.slate, slot_rewards, strict=True)):  # type: ignore[attr-defined]
            index = slot.candidate_index
            self._check_slot(k, slot, reward, index in remaining, entries[index].item_id if index < len(raw) else "")
            at = remaining.index(index)
            # Parsed unlabelled and then labelled, as ``_learn`` does; fresh because a label cannot be cleared.
            labelled = pyvw.Example(workspace, entries[index].line)
            labelled.set_label_string(f"0:{-float(reward)!r}:{float(slot.propensity)!r}")
            batch = [shared, *actions]
            batch[at + 1] = labelled
            workspace.learn(batch)
            del actions[at], remaining[at]
        self.updates += len(event.slate)  # type: ignore[attr-defined]
        return len(event.slate)  # type: ignore[attr-defined]

    def _logged_context_line(self, context: bytes) -> str:
        line = self._context_lines.get(context)
        if line is None:
            line = context_line(pb.Features.FromString(context))
            if len(self._context_lines) >= _CONTEXT_LINES_MAX:
                self._context_lines.clear()  # bounded; refilled from the next decisions
            self._context_lines[context] = line
        return line

    @staticmethod
    def _check_slot(k: int, slot: events_pb2.LoggedSlot, reward: float, index_ok: bool, candidate_item_id: str) -> None:
        index = slot.candidate_index
        if not index_ok:
            raise ValueError(f"slate[{k}].candidate_index: {index} is out of range or repeated")
        if candidate_item_id != slot.item_id:
            raise ValueError(f"slate[{k}].item_id: {slot.item_id!r} is not candidates[{index}].item_id")
        if not 0.0 < slot.propensity <= 1.0:
            raise ValueError(f"slate[{k}].propensity: must be in (0, 1], got {slot.propensity}")
        if not np.isfinite(reward):
            raise ValueError(f"slot_rewards[{k}]: must be finite, got {reward}")

    def _learn(self, event: events_pb2.DecisionEvent, slot_rewards: Sequence[float], n: int) -> int:
        """The reference path (a DecisionEvent): every candidate's line from its features, fresh examples."""
        workspace = self._workspace
        lines = self.cache.lines(event.candidates)
        shared = pyvw.Example(workspace, context_line(event.context))
        examples = [pyvw.Example(workspace, line) for line in lines]
        remaining = list(range(n))
        for k, (slot, reward) in enumerate(zip(event.slate, slot_rewards, strict=True)):
            index = slot.candidate_index
            if index not in remaining:
                raise ValueError(f"slate[{k}].candidate_index: {index} is out of range or repeated")
            if event.candidates[index].item_id != slot.item_id:
                raise ValueError(f"slate[{k}].item_id: {slot.item_id!r} is not candidates[{index}].item_id")
            if not 0.0 < slot.propensity <= 1.0:
                raise ValueError(f"slate[{k}].propensity: must be in (0, 1], got {slot.propensity}")
            if not np.isfinite(reward):
                raise ValueError(f"slot_rewards[{k}]: must be finite, got {reward}")
            examples[index].set_label_string(f"0:{-float(reward)!r}:{float(slot.propensity)!r}")
            workspace.learn([shared] + [examples[j] for j in remaining])
            remaining.remove(index)
        self.updates += len(event.slate)
        return len(event.slate)

    # --- persistence -----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The VW model file (VW saves to paths only, so this goes through a temporary file)."""
        with tempfile.TemporaryDirectory(prefix="recsys_rl_vw_") as tmp:
            path = os.path.join(tmp, "model.vw")
            with self._lock:
                self._workspace.save(path)
            with open(path, "rb") as f:
                return f.read()

    @classmethod
    def from_bytes(cls, vw_args: str, model: bytes, *, cache_items: int = 100_000) -> VWBandit:
        return cls(vw_args, model=model, cache_items=cache_items)

    def compare(self, other: VWBandit) -> str:
        """"" when both have the same options and model bytes; otherwise what differs."""
        if self.vw_args != other.vw_args:
            return f"vw_args differ: {self.vw_args!r} != {other.vw_args!r}"
        mine, theirs = self.to_bytes(), other.to_bytes()
        if mine == theirs:
            return ""
        if len(mine) != len(theirs):
            return f"model sizes differ: {len(mine)} != {len(theirs)} bytes"
        first = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
        diff = sum(a != b for a, b in zip(mine, theirs))
        return f"models differ in {diff} of {len(mine)} bytes (first at offset {first})"
