"""Event ids name the worker that served them; anything shaped like one but not one is INVALID_ARGUMENT."""

from __future__ import annotations

import pytest

from ranker.workers.layout import event_id_prefix, owner_of
from recsys_rl.errors import InvalidInput

HEX = "0123456789abcdef" * 2


@pytest.mark.parametrize(("event_id", "owner"), [
    (event_id_prefix(0) + HEX, 0), (event_id_prefix(1) + HEX, 1), (event_id_prefix(15) + HEX, 15),
    (HEX, None), ("", None), ("anything-without-a-dot", None),  # a single server's ids: handled where they land
])
def test_owner_of(event_id: str, owner: int | None) -> None:
    assert owner_of(event_id) == owner


@pytest.mark.parametrize("event_id", [
    "w1.", "w1.xyz", "w." + HEX, "wx." + HEX, "w01." + HEX, "w-1." + HEX, "w1." + HEX + "0", "w1." + HEX.upper(),
    "v1." + HEX, "w1.." + HEX, "w99999." + HEX,
])
def test_malformed_worker_ids_name_event_id(event_id: str) -> None:
    with pytest.raises(InvalidInput, match="event_id"):
        owner_of(event_id)
