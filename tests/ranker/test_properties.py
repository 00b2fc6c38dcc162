"""Property-based tests over the wire: generated hostile Rank and ReportOutcome requests never break the server.

One real server (RankingServer around a DecisionService, 127.0.0.1:0) takes every generated request. The
generators build requests from "clean" and "wild" parts; a small model of the request rules (``_rank_problems``,
``_outcome_problems``) says which fields of each request are bad. The properties:

- a request the model calls valid gets OK (a valid request always gets a slate, invariant 4);
- an invalid one gets INVALID_ARGUMENT (or NOT_FOUND for an unknown event) whose details start with one of the
  fields the model found bad, so the message names the actual problem;
- never INTERNAL/UNKNOWN/UNAVAILABLE/DEADLINE_EXCEEDED; every OK slate is well formed;
- afterwards the server still serves a plain valid request.

Deterministic (``derandomize=True``, no example database) so CI sees the same examples every run.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from tests.helpers import make_request

RPC_TIMEOUT_S = 10.0  # generous: a slow example must show up as slow, not as DEADLINE_EXCEEDED
FLOAT32_MAX = 3.4028234663852886e38  # features.py rejects numeric features VW would turn into inf
TIMESTAMP_MIN_S, TIMESTAMP_MAX_S = -62_135_596_800, 253_402_300_799  # 0001-01-01 .. 9999-12-31 (timestamp.proto)

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@dataclass
class Server:
    stub: pb_grpc.RankingServiceStub
    window_s: float


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from ranker.server import RankingServer
    from recsys_rl.config import default_config
    from recsys_rl.serving.service import DecisionService

    config = default_config()
    service = DecisionService(config, tmp_path_factory.mktemp("props"), learner="off", watch_models=False)
    running = RankingServer(service, host="127.0.0.1", port=0).start()
    assert running.port != 0
    channel = grpc.insecure_channel(running.address)
    window_s = config.surfaces["default"].reward.attribution_window_seconds
    assert window_s >= 1.0  # the "in window" occurred_at offsets below (0 and 0.5 s after now) rely on it
    try:
        yield Server(pb_grpc.RankingServiceStub(channel), window_s)
    finally:
        channel.close()
        running.stop(grace_s=5.0)


# --- strategies ---------------------------------------------------------------------------------------------------

ODD_STRINGS = [
    "\x00", "a\x00b", "🙂", "👩‍👩‍👧‍👦", "e\u0301\u0301\u0301", "\u202eevil", "\ufeff", "\u2028", "\u00a0", " ", "\t",
    "a b", "%", "%20", ":", "|", "=", "|C x:1", "shared", "\n|I id=x", "\r\n", "\x1f", "\U0010ffff", "ǅ",
    # Long ones are constants: generating them char by char would overrun hypothesis' buffer and crawl.
    "x" * 5_000, "🙂" * 2_000, "e\u0301" * 3_000, "🙂" * 6_000,
]
# Surrogate-free text (protobuf strings are UTF-8): hypothesis' default alphabet excludes category Cs.
texts = st.one_of(st.text(max_size=12), st.text(st.characters(codec="utf-8"), max_size=30), st.sampled_from(ODD_STRINGS))
nonempty_texts = texts.filter(bool)
NON_FINITE = [math.nan, math.inf, -math.inf]
EDGE_FINITE = [0.0, -0.0, 5e-324, -5e-324, 1e-308, FLOAT32_MAX, -FLOAT32_MAX, 3.5e38, 1e308, -1e308,
               1.7976931348623157e308]
moderate = st.floats(-1e6, 1e6)
any_finite = st.one_of(moderate, st.sampled_from(EDGE_FINITE), st.floats(allow_nan=False, allow_infinity=False))
feature_values = {
    False: st.one_of(moderate, st.sampled_from([0.0, -0.0, 5e-324, 1e-300, FLOAT32_MAX, -FLOAT32_MAX])),
    True: st.one_of(any_finite, st.sampled_from(NON_FINITE)),
}
ASPECTS = ("surface", "count", "slate", "ids", "names", "numbers", "baseline", "embedding")


def wild_aspects(aspects: tuple[str, ...]) -> st.SearchStrategy[frozenset[str]]:
    """Which aspects of a request are generated wild. A third are clean in every aspect (odd unicode everywhere,
    but valid), so OK responses are really exercised; a third break one aspect, where the check is sharpest."""
    return st.one_of(st.just(frozenset()), st.sampled_from(aspects).map(lambda a: frozenset({a})),
                     st.frozensets(st.sampled_from(aspects), min_size=2))


def _features(draw: st.DrawFn, message: pb.Features, wild: frozenset[str]) -> None:
    names = texts if "names" in wild else nonempty_texts
    for name, value in draw(st.dictionaries(names, feature_values["numbers" in wild], max_size=4)).items():
        message.numeric[name] = value
    for name, value in draw(st.dictionaries(names, texts, max_size=3)).items():
        message.categorical[name] = value
    message.tags.extend(draw(st.lists(texts, max_size=3)))


@st.composite
def rank_requests(draw: st.DrawFn) -> pb.RankRequest:
    wild = draw(wild_aspects(ASPECTS))
    surface = draw(st.one_of(st.just("default"), texts)) if "surface" in wild else "default"
    request = pb.RankRequest(request_id=draw(texts), surface=surface, user_id=draw(texts))
    _features(draw, request.context, wild)
    n = draw(st.integers(0 if "count" in wild else 1, 40))
    if "ids" in wild:
        ids = draw(st.lists(st.one_of(texts, st.sampled_from(["", "dup"])), min_size=n, max_size=n))
    else:
        ids = draw(st.lists(nonempty_texts, min_size=n, max_size=n, unique=True))
    for item_id in ids:
        candidate = request.candidates.add(item_id=item_id)
        candidate.baseline_score = draw(st.one_of(any_finite, st.sampled_from(NON_FINITE)) if "baseline" in wild
                                        else st.floats(allow_nan=False, allow_infinity=False))
        _features(draw, candidate.features, wild)
        if "embedding" in wild:
            candidate.embedding.extend(draw(st.lists(st.one_of(st.floats(width=32), st.sampled_from(
                [1e308, -1e308, 5e-324] + NON_FINITE)), max_size=6)))  # 1e308 becomes inf as float32 on the wire
        else:
            candidate.embedding.extend(draw(st.lists(st.floats(-1e3, 1e3, width=32), max_size=6)))
    if "slate" in wild:
        request.slate_size = draw(st.one_of(st.integers(-3, n + 3), st.sampled_from([-(2**31), 2**31 - 1])))
    else:
        request.slate_size = draw(st.integers(1, max(n, 1)))
    return request


def _bad_features(features: pb.Features, field: str) -> list[str]:
    problems = []
    if any(not name or not -FLOAT32_MAX <= value <= FLOAT32_MAX for name, value in features.numeric.items()):
        problems.append(f"{field}.numeric")
    if any(not name for name in features.categorical):
        problems.append(f"{field}.categorical")
    return problems


def _rank_problems(request: pb.RankRequest) -> list[str]:
    """Field paths the request rules reject (read back from the message exactly as it goes on the wire)."""
    problems = []
    if request.surface != "default":
        problems.append("surface")
    n = len(request.candidates)
    if n == 0:
        problems.append("candidates")
    if not 1 <= request.slate_size <= max(n, 1):
        problems.append("slate_size")
    problems += _bad_features(request.context, "context")
    seen: set[str] = set()
    for i, candidate in enumerate(request.candidates):
        field = f"candidates[{i}]"
        if not candidate.item_id or candidate.item_id in seen:
            problems.append(f"{field}.item_id")
        seen.add(candidate.item_id)
        if not math.isfinite(candidate.baseline_score):
            problems.append(f"{field}.baseline_score")
        problems += _bad_features(candidate.features, f"{field}.features")
        if not all(map(math.isfinite, candidate.embedding)):
            problems.append(f"{field}.embedding")
    return problems


NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
         grpc.StatusCode.DEADLINE_EXCEEDED}


def _check_slate(request: pb.RankRequest, response: pb.RankResponse) -> None:
    candidate_ids = {candidate.item_id for candidate in request.candidates}
    slate_ids = [item.item_id for item in response.slate]
    # ranker/validation.py requires slate_size <= len(candidates), so the slate is exactly slate_size long.
    assert len(response.slate) == request.slate_size
    assert [item.position for item in response.slate] == list(range(len(response.slate)))
    assert len(set(slate_ids)) == len(slate_ids) and set(slate_ids) <= candidate_ids
    assert all(0.0 < item.propensity <= 1.0 and math.isfinite(item.score) for item in response.slate)
    assert math.isclose(response.slate_propensity, math.prod(item.propensity for item in response.slate),
                        rel_tol=1e-9, abs_tol=0.0)
    assert response.event_id and response.policy_version
    assert response.serving_mode != pb.SERVING_MODE_UNSPECIFIED
    assert 0.0 <= response.exploration_cap <= 1.0


def _assert_still_serves(stub: pb_grpc.RankingServiceStub) -> None:
    response = stub.Rank(make_request(n=20, slate_size=5, request_id="after-the-storm"), timeout=RPC_TIMEOUT_S)
    assert len(response.slate) == 5 and response.event_id


def test_rank_answers_every_generated_request_with_ok_or_a_named_field(server: Server) -> None:
    tally: Counter[str] = Counter()

    @PROPERTY_SETTINGS
    @given(request=rank_requests())
    def rank_property(request: pb.RankRequest) -> None:
        problems = _rank_problems(request)
        try:
            response = server.stub.Rank(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            assert code not in NEVER, f"{code}: {details}"
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code}: {details}"
            assert problems, f"a valid request was refused: {details}"
            assert any(details.startswith(problem) for problem in problems), (details, problems)
            tally["invalid"] += 1
            event(f"INVALID_ARGUMENT {details.split('[')[0].split(':')[0]}")
            return
        assert not problems, f"an invalid request was served (expected one of {problems})"
        _check_slate(request, response)
        tally["ok"] += 1
        event(f"OK {pb.ServingMode.Name(response.serving_mode)}")

    rank_property()
    total = tally["ok"] + tally["invalid"]
    # Both branches really ran: generators that drifted to all-invalid (or all-valid) would test little.
    assert tally["ok"] >= 0.25 * total and tally["invalid"] >= 0.25 * total, tally
    _assert_still_serves(server.stub)


# --- ReportOutcome ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutcomeRecipe:
    """How to build one ReportOutcomeRequest; parts that depend on a served slate are resolved at run time."""

    event: str  # "served": a fresh decision's event_id; "empty"; "random": ``event_text``
    event_text: str
    item: str  # "whole_slate" (empty), "served", "unserved" (a candidate not in the slate), "text"
    item_index: int
    item_text: str
    outcome: str
    value: float
    occurred: tuple[str, float, int]  # ("unset"|"offset", seconds from now, 0) or ("raw", seconds, nanos)
    outcome_id: str


occurred_at = st.one_of(
    st.just(("unset", 0.0, 0)),
    st.tuples(st.just("offset"), st.sampled_from([0.0, 0.5, -0.5, -1e6, 1e6, -3e9, 3e9]), st.just(0)),
    st.tuples(st.just("raw"), st.one_of(st.sampled_from([TIMESTAMP_MIN_S, TIMESTAMP_MAX_S, TIMESTAMP_MIN_S - 1,
                                                         TIMESTAMP_MAX_S + 1, 0, -1, 2**63 - 1, -(2**63)]),
                                        st.integers(-(2**63), 2**63 - 1)),
              st.one_of(st.sampled_from([0, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)]),
                        st.integers(0, 999_999_999))),
)
OUTCOME_ASPECTS = ("event", "item", "outcome", "value", "occurred")


@st.composite
def outcome_recipes(draw: st.DrawFn) -> OutcomeRecipe:
    # As for Rank: half the recipes are clean in every aspect, so OK (and attribution) is exercised.
    wild = draw(wild_aspects(OUTCOME_ASPECTS))
    return OutcomeRecipe(
        event=draw(st.sampled_from(["served", "empty", "random"])) if "event" in wild else "served",
        event_text=draw(texts),
        item=draw(st.sampled_from(["whole_slate", "served", "unserved", "text"] if "item" in wild
                                  else ["whole_slate", "served"])),
        item_index=draw(st.integers(0, 100)),
        item_text=draw(texts),
        outcome=draw(st.one_of(st.just(""), texts)) if "outcome" in wild else "click",
        value=draw(st.one_of(any_finite, st.sampled_from(NON_FINITE)) if "value" in wild
                   else st.one_of(st.sampled_from([0.0, 1.0]), moderate)),
        occurred=draw(occurred_at if "occurred" in wild else st.just(("unset", 0.0, 0))),
        outcome_id=draw(st.one_of(st.just(""), texts)),
    )


def _timestamp_is_valid(seconds: int, nanos: int) -> bool:
    return TIMESTAMP_MIN_S <= seconds <= TIMESTAMP_MAX_S and 0 <= nanos <= 999_999_999


def _build_outcome(recipe: OutcomeRecipe, stub: pb_grpc.RankingServiceStub
                   ) -> tuple[pb.ReportOutcomeRequest, list[tuple[grpc.StatusCode, str]], bool]:
    """(request, acceptable errors as (code, field), whether an OK must be attributed)."""
    request = pb.ReportOutcomeRequest(outcome=recipe.outcome, value=recipe.value, outcome_id=recipe.outcome_id)
    problems: list[tuple[grpc.StatusCode, str]] = []
    slate: list[str] = []
    if recipe.event == "served":
        served = stub.Rank(make_request(n=8, slate_size=3, request_id=f"outcome-{time.monotonic_ns()}"),
                           timeout=RPC_TIMEOUT_S)
        request.event_id, slate = served.event_id, [item.item_id for item in served.slate]
    elif recipe.event == "random":
        request.event_id = recipe.event_text  # a random string is never one of the server's uuid4 hex ids
    if not request.event_id:
        problems.append((grpc.StatusCode.INVALID_ARGUMENT, "event_id"))
    elif recipe.event != "served":
        problems.append((grpc.StatusCode.NOT_FOUND, "event_id"))
    unserved = [f"item-{i}" for i in range(8) if f"item-{i}" not in slate]
    if recipe.item == "served" and slate:
        request.item_id = slate[recipe.item_index % len(slate)]
    elif recipe.item == "unserved":
        request.item_id = unserved[recipe.item_index % len(unserved)]
    elif recipe.item == "text":
        request.item_id = recipe.item_text
    if request.item_id and request.item_id not in slate:
        problems.append((grpc.StatusCode.INVALID_ARGUMENT, "item_id"))
    if recipe.outcome != "click":
        problems.append((grpc.StatusCode.INVALID_ARGUMENT, "outcome"))
    if not math.isfinite(recipe.value) or not 0.0 <= recipe.value <= 1.0:
        # The default surface: click weight 1, reward range [0, 1]; one outcome alone must fit the range.
        problems.append((grpc.StatusCode.INVALID_ARGUMENT, "value"))
    kind, seconds, nanos = recipe.occurred
    in_window = kind == "unset"
    if kind == "offset":
        request.occurred_at.FromNanoseconds(time.time_ns() + int(seconds * 1e9))
        in_window = 0.0 <= seconds <= 0.5
    elif kind == "raw":
        request.occurred_at.seconds, request.occurred_at.nanos = int(seconds), nanos
        if not _timestamp_is_valid(int(seconds), nanos):
            # Not a Timestamp (timestamp.proto's range): refusing it or reading it as some instant are both fine.
            problems.append((grpc.StatusCode.INVALID_ARGUMENT, "occurred_at"))
            in_window = None  # type: ignore[assignment]
    must_attribute = bool(in_window) and recipe.event == "served"
    return request, problems, must_attribute


def test_report_outcome_answers_every_generated_request_with_ok_or_a_named_field(server: Server) -> None:
    tally: Counter[str] = Counter()

    @PROPERTY_SETTINGS
    @given(recipe=outcome_recipes())
    def outcome_property(recipe: OutcomeRecipe) -> None:
        request, problems, must_attribute = _build_outcome(recipe, server.stub)
        try:
            response = server.stub.ReportOutcome(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            assert code not in NEVER, f"{code}: {details}"
            assert any(code == c and details.startswith(field) for c, field in problems), (code, details, problems)
            tally["refused"] += 1
            event(f"{code.name} {details.split(':')[0]}")
            return
        # OK is right only when nothing the model found is a definite problem (an invalid Timestamp may be read).
        definite = [p for p in problems if p[1] != "occurred_at"]
        assert not definite, f"accepted an outcome the rules refuse: {definite}"
        if must_attribute:
            assert response.attributed, "an outcome inside the window of a served decision was not attributed"
        if recipe.occurred[0] == "offset" and abs(recipe.occurred[1]) >= 1e6:
            assert not response.attributed, "an outcome far outside the window was attributed"
        tally["ok"] += 1
        event(f"OK attributed={response.attributed}")

    outcome_property()
    total = tally["ok"] + tally["refused"]
    assert tally["ok"] >= 0.25 * total and tally["refused"] >= 0.25 * total, tally
    _assert_still_serves(server.stub)


# --- regressions found by the properties above --------------------------------------------------------------------

LONG_EMOJI = "🙂" * 5_000  # 20 kB of UTF-8, ~60 kB percent-encoded: over gRPC's 16 KiB trailer limit if echoed


def test_an_error_echoing_a_huge_event_id_still_reaches_the_client_as_not_found(server: Server) -> None:
    # Before: the details echoed the whole id, the trailer passed 16 KiB, and the client saw RESOURCE_EXHAUSTED
    # ("Stream removed (received metadata size exceeds hard limit)") instead of NOT_FOUND.
    with pytest.raises(grpc.RpcError) as err:
        server.stub.ReportOutcome(pb.ReportOutcomeRequest(event_id=LONG_EMOJI, outcome="click", value=1.0),
                                  timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith("event_id") and "cut" in err.value.details()


def test_an_error_echoing_a_huge_surface_name_still_names_the_field(server: Server) -> None:
    with pytest.raises(grpc.RpcError) as err:
        server.stub.Rank(make_request(surface=LONG_EMOJI), timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("surface")
