"""The query kept per user: an exponentially decayed mean of the engaged items' embeddings, bounded by an LRU."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_rl.retrieval.config import RetrievalConfig
from recsys_rl.retrieval.users import UserEmbeddings


def test_the_query_is_the_decayed_mean_newest_click_weighing_most() -> None:
    users = UserEmbeddings(10, decay=0.5)
    a, b, c = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([2.0, 2.0])
    for e in (a, b, c):
        users.observe("u", e)
    expected = (0.25 * a + 0.5 * b + c) / (0.25 + 0.5 + 1.0)
    assert users.query("u") == pytest.approx(expected.astype(np.float32))
    assert users.query("u").dtype == np.float32
    assert users.query("nobody") is None


def test_decay_zero_keeps_the_last_click_and_a_new_dimension_starts_afresh() -> None:
    users = UserEmbeddings(10, decay=0.0)
    users.observe("u", np.array([1.0, 0.0]))
    users.observe("u", np.array([0.0, 3.0]))
    assert users.query("u").tolist() == [0.0, 3.0]
    users.observe("u", np.array([1.0, 1.0, 1.0]))  # the catalog's dimension changed: old clicks are dropped
    assert users.query("u").tolist() == [1.0, 1.0, 1.0]


def test_the_least_recently_used_user_is_dropped_past_the_capacity() -> None:
    users = UserEmbeddings(2, decay=0.8)
    users.observe("a", np.ones(2))
    users.observe("b", np.ones(2))
    assert users.query("a") is not None  # a read refreshes "a": "b" is now the least recently used
    users.observe("c", np.ones(2))
    assert len(users) == 2 and users.query("b") is None
    assert users.query("a") is not None and users.query("c") is not None


def test_a_query_is_a_copy_a_later_click_does_not_change_it() -> None:
    users = UserEmbeddings(2, decay=0.5)
    users.observe("u", np.array([1.0, 0.0]))
    before = users.query("u")
    users.observe("u", np.array([0.0, 1.0]))
    assert before.tolist() == [1.0, 0.0]


def test_capacity_zero_keeps_nothing_and_bad_settings_are_refused() -> None:
    users = UserEmbeddings(0, decay=0.5)
    users.observe("u", np.ones(2))
    assert users.query("u") is None
    with pytest.raises(ValueError, match="retrieval.user_decay: must be in"):
        RetrievalConfig(user_decay=1.0)
    with pytest.raises(ValueError, match="retrieval.user_embeddings: must be a non-negative integer"):
        RetrievalConfig(user_embeddings=-1)
