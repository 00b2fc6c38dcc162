"""SlateQValue's per-item projection table and context cache: exact agreement with the torch network
through hits, misses, evictions (row reuse), baseline changes and feature changes under one item id."""

from __future__ import annotations

import numpy as np
import torch

from recsys_rl.serving.features import item_key
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.slateq.model import FeatureSpec, NetSpec, SlateQNet
from recsys_rl.slateq.serving import SlateQValue

ATOL = 1e-5  # float32 torch and float32 cached projections vs float64 numpy for the rest


def _net() -> SlateQNet:
    torch.manual_seed(7)
    return SlateQNet(FeatureSpec(hash_dim=16, embedding_dim=2, id_buckets=32),
                     NetSpec(item_embed=8, id_embed=4, hidden=16, state=8, history=3))


def _request(items: list[tuple[str, float, float]], *, device: str = "ios", user: str = "u") -> pb.RankRequest:
    """items: (item_id, price, baseline_score)."""
    request = pb.RankRequest(request_id="r", user_id=user, slate_size=2)
    request.context.categorical["device"] = device
    for item_id, price, baseline in items:
        c = request.candidates.add(item_id=item_id, baseline_score=baseline)
        c.features.numeric["price"] = price
        c.features.tags.append(f"g{int(price) % 3}")
        c.embedding.extend([price / 10, -1.0])
    return request


def _torch_values(value: SlateQValue, net: SlateQNet, request: pb.RankRequest) -> np.ndarray:
    """The reference: the torch network on the featurizer's uncached vectors, empty click history."""
    rows = [value.featurizer.candidate_uncached(c) for c in request.candidates]
    x = torch.from_numpy(np.stack([r[0] for r in rows]))
    b = torch.tensor([r[1] for r in rows])
    with torch.inference_mode():
        s = net.state(torch.from_numpy(value.featurizer.features(request.context))[None],
                      torch.zeros(1, net.net_spec.history, net.net_spec.item_embed))
        return net.item_values(s, net.items(x, b)[None])[0].numpy()


def test_hits_misses_and_fifo_eviction_agree_with_torch() -> None:
    net = _net()
    value = SlateQValue(net, item_cache=3)
    first = _request([("a", 1.0, 0.0), ("b", 2.0, 0.0)])
    np.testing.assert_allclose(value.values(first), _torch_values(value, net, first), atol=ATOL)
    assert len(value._items.rows) == 2
    # c, d are new: inserting them evicts the oldest (a) and reuses its row for d; b, c, d stay exact.
    second = _request([("b", 2.0, 0.0), ("c", 3.0, 0.0), ("d", 4.0, 0.0)])
    np.testing.assert_allclose(value.values(second), _torch_values(value, net, second), atol=ATOL)
    assert item_key(first.candidates[0]) not in value._items.rows and len(value._items.rows) == 3
    again = _request([("a", 1.0, 0.0), ("d", 4.0, 0.0), ("b", 2.0, 0.0)])  # a is a miss again, d/b hits
    np.testing.assert_allclose(value.values(again), _torch_values(value, net, again), atol=ATOL)
    assert len(value._items.rows) == 3 and value._items.table.shape[0] == 3  # rows reused, not grown


def test_baseline_score_does_not_split_the_cache_but_features_do() -> None:
    net = _net()
    value = SlateQValue(net)
    base = value.values(_request([("a", 1.0, 0.0), ("b", 2.0, 5.0)]))
    rebaselined = value.values(_request([("a", 1.0, 3.5), ("b", 2.0, -1.0)]))
    np.testing.assert_array_equal(base, rebaselined)
    assert len(value._items.rows) == 2  # same items, other baselines: no new entries
    changed = _request([("a", 9.0, 0.0), ("b", 2.0, 0.0)])  # a's features changed under the same id
    out = value.values(changed)
    np.testing.assert_allclose(out, _torch_values(value, net, changed), atol=ATOL)
    assert abs(out[0] - base[0]) > 1e-6 and len(value._items.rows) == 3


def test_context_cache_keys_on_the_context_and_duplicates_in_one_request_are_fine() -> None:
    net = _net()
    value = SlateQValue(net, context_cache=1)
    for device in ("ios", "web", "ios"):  # the bound of 1 forces a clear between distinct contexts
        request = _request([("a", 1.0, 0.0), ("a", 1.0, 0.0), ("b", 2.0, 0.0)], device=device)
        out = value.values(request)
        np.testing.assert_allclose(out, _torch_values(value, net, request), atol=ATOL)
        assert out[0] == out[1]
    assert len(value._contexts) == 1


def test_the_table_grows_geometrically_up_to_its_capacity() -> None:
    net = _net()
    value = SlateQValue(net, item_cache=2000)
    request = _request([(f"i{j}", float(j % 50), 0.0) for j in range(1500)])
    np.testing.assert_allclose(value.values(request), _torch_values(value, net, request), atol=ATOL)
    assert value._items.table.shape[0] == 2000 and len(value._items.rows) == 1500
    np.testing.assert_allclose(value.values(request), _torch_values(value, net, request), atol=ATOL)  # all hits
