"""Choice model, value head and the SlateQ decomposition on small fixed cases; featurisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.slateq.model import Featurizer, FeatureSpec, NetSpec, SlateQNet, slate_value


def _net(seed: int = 0) -> SlateQNet:
    torch.manual_seed(seed)
    return SlateQNet(FeatureSpec(hash_dim=8, embedding_dim=2, id_buckets=16), NetSpec(item_embed=4, id_embed=2,
                                                                                       hidden=8, state=4, history=3))


def test_conditional_logit_with_no_click_on_fixed_logits() -> None:
    net = _net()
    s, e = torch.randn(1, 4), torch.randn(1, 3, 4)
    positions = torch.arange(3).unsqueeze(0)
    v, v0 = net.choice_logits(s, e, positions)
    probs = net.choice_probs(s, e, positions)[0]
    denominator = math.exp(v0.item()) + sum(math.exp(x) for x in v[0].tolist())
    assert probs[0].item() == pytest.approx(math.exp(v0.item()) / denominator, rel=1e-6)
    for j in range(3):
        assert probs[1 + j].item() == pytest.approx(math.exp(v[0, j].item()) / denominator, rel=1e-6)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_masked_slot_gets_zero_probability_and_others_renormalise() -> None:
    net = _net()
    s, e = torch.randn(1, 4), torch.randn(1, 3, 4)
    positions = torch.arange(3).unsqueeze(0)
    full = net.choice_probs(s[:, :], e[:, :2], positions[:, :2])
    masked = net.choice_probs(s, e, positions, torch.tensor([[True, True, False]]))
    assert masked[0, 3].item() == 0.0
    assert torch.allclose(masked[:, :3], full, atol=1e-6)


def test_position_bias_shifts_only_its_slot() -> None:
    net = _net()
    with torch.no_grad():
        net.position_bias[1] = 2.0
    s, e = torch.randn(1, 4), torch.randn(1, 2, 4)
    v, _ = net.choice_logits(s, e, torch.tensor([[0, 1]]))
    base = net.choice(s, e)
    assert torch.allclose(v - base, torch.tensor([[0.0, 2.0]]))


def test_value_head_is_itemwise_and_independent_of_the_rest_of_the_slate() -> None:
    net = _net()
    s, e = torch.randn(2, 4), torch.randn(2, 3, 4)
    q_all = net.item_values(s, e)
    q_one = net.item_values(s, e[:, 1:2])
    assert torch.allclose(q_all[:, 1:2], q_one, atol=1e-6)


def test_slate_value_decomposes_as_slateq() -> None:
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    q = torch.tensor([[2.0, -1.0, 5.0]])
    assert slate_value(probs, q, torch.tensor([0.5])).item() == pytest.approx(0.4 * 0.5 + 0.3 * 2 - 0.2 + 0.5)
    net = _net()
    s, e = torch.randn(3, 4), torch.randn(3, 4, 4)
    positions = torch.arange(4).expand(3, 4)
    expected = (net.choice_probs(s, e, positions)[:, 1:] * net.item_values(s, e)).sum(1) \
        + net.choice_probs(s, e, positions)[:, 0] * net.null_value(s)
    assert torch.allclose(net.slate_value(s, e, positions), expected, atol=1e-6)


def test_slate_value_ignores_masked_items_even_with_nonfinite_values() -> None:
    probs = torch.tensor([[0.5, 0.5, 0.0]])
    assert slate_value(probs, torch.tensor([[1.0, float("nan")]]), torch.tensor([0.0])).item() == 0.5


def _candidate(item_id: str, price: float = 3.0) -> pb.Candidate:
    c = pb.Candidate(item_id=item_id, embedding=[0.5, -1.0, 9.0])
    c.features.numeric["price"] = price
    c.features.categorical["topic"] = "t1"
    c.features.tags.extend(["x", "y"])
    return c


def test_featurizer_is_stable_signed_hashing_with_log_numeric() -> None:
    spec = FeatureSpec(hash_dim=4096, embedding_dim=2, id_buckets=10)  # wide enough that these 4 tokens don't collide
    x, bucket = Featurizer(spec).candidate_uncached(_candidate("i1"))
    assert x.shape == (4098,) and x.dtype == np.float32
    assert x[4096:].tolist() == [0.5, -1.0]  # embedding truncated to embedding_dim
    magnitudes = sorted(np.abs(x[:4096][x[:4096] != 0]).tolist())
    assert magnitudes == pytest.approx(sorted([1.0, 1 / math.sqrt(2), 1 / math.sqrt(2), math.log1p(3.0)]), abs=1e-6)
    # CRC32-based, so the same across processes and runs (Python's hash() is salted per process).
    assert 1 <= bucket <= 10 and bucket == Featurizer(spec).id_bucket("i1")


def test_featurizer_cache_keys_on_features_not_just_the_id() -> None:
    featurizer = Featurizer(FeatureSpec(hash_dim=16, embedding_dim=0), cache_size=2)
    a, _ = featurizer.candidate(_candidate("i1", price=1.0))
    b, _ = featurizer.candidate(_candidate("i1", price=100.0))
    assert not np.array_equal(a, b)
    assert featurizer.candidate(_candidate("i1", price=1.0))[0] is a  # cache hit returns the cached vector
    featurizer.candidate(_candidate("i2"))
    featurizer.candidate(_candidate("i3"))  # LRU bound 2 evicts the oldest
    assert len(featurizer._items) == 2


def test_featurizer_rejects_non_finite_numeric() -> None:
    features = pb.Features()
    features.numeric["price"] = float("nan")
    with pytest.raises(ValueError, match=r"features.numeric\['price'\]"):
        Featurizer(FeatureSpec()).features(features)


def test_feature_spec_validates() -> None:
    with pytest.raises(ValueError, match="^hash_dim:"):
        FeatureSpec(hash_dim=0)
