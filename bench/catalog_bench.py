"""Rank p50 with 100 ids-only candidates vs the same 100 sent with full features, over gRPC, same run (issue 12 goal
ids-only ≤ 0.7× full-feature).

Reads top to bottom (CleanRL style). A catalog of ``Args.items`` items (16-dim embeddings, 6 features: 3 numeric,
3 categorical) is written to a parquet file and loaded with ``recsys-rl catalog load``; one ``recsys-rl serve
--workers 1`` then serves the data dir. Each request is sent twice, by id only and with every candidate's features
and embedding exactly as the catalog holds them (so both decide the same slate), alternating which goes first, so
both see the same machine noise. Reported per round: p50/p99 of each kind, the ratio of the p50s, and the median
logged ``DecisionEvent.latency_micros`` of each kind (the server's own time, validation to decision, no gRPC).

Two more kinds per round, *ids built* and *full built*, time what a host that builds each request from its own item
data (plain Python values: feature dicts, embedding lists) with the protobuf API pays per call: building the
request, then the same Rank. The headline ratio is the pre-built one (the server's side); the built one is the host's.

The in-process part times ``requests.validate_rank_request`` alone on the same requests against the same catalog
version, interleaved: what reading (and, ids-only, completing) the candidates costs, without gRPC.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import polars as pl

from bench.rank_bench import percentile, time_alternating
from recsys_rl.catalog.cli import read_items
from recsys_rl.catalog.store import CatalogStore
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb
from recsys_rl.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from recsys_rl.serving.requests import validate_rank_request

REPO = Path(__file__).resolve().parents[1]
KINDS = ("full", "ids")
BUILT = ("full_built", "ids_built")  # the same requests, built by the client inside the timed call

# A host's item data as plain Python values: item_id -> (numeric features, categorical features, embedding).
HostItems = dict[str, tuple[dict[str, float], dict[str, str], list[float]]]


@dataclass
class Args:
    items: int = 2_000  # catalog items
    dimension: int = 16  # embedding dimension
    n_candidates: int = 100  # candidates per Rank request
    slate_size: int = 10  # slate positions per Rank request
    warmup: int = 300  # untimed calls of each kind first
    calls: int = 2_000  # timed calls of each kind per round
    rounds: int = 3  # the whole comparison is repeated; the median ratio is reported
    in_process_calls: int = 3_000  # validate_rank_request calls of each kind


def write_catalog(path: Path, args: Args) -> None:
    """The catalog's parquet file: item_id, embedding, and 6 features (3 numeric, 3 categorical)."""
    rng = np.random.default_rng(0)
    ids = np.arange(args.items)
    pl.DataFrame({
        "item_id": [f"item-{i}" for i in ids],
        "embedding": rng.normal(size=(args.items, args.dimension)).astype(np.float32).tolist(),
        "price": (ids % 50).astype(float),
        "quality": rng.uniform(size=args.items),
        "age_days": (ids % 365).astype(float),
        "topic": [f"t{i % 10}" for i in ids],
        "creator": [f"c{i % 37}" for i in ids],
        "lang": [("en", "de", "fr", "es")[i % 4] for i in ids],
    }).write_parquet(path)


def make_requests(rng: np.random.Generator, held: dict[str, bytes], args: Args, seed: int, i: int
                  ) -> dict[str, pb.RankRequest]:
    """Request i by id only and with full features (the catalog's own item bytes, which parse as a Candidate)."""
    requests = {}
    for kind in KINDS:
        # The same request_id (the draw's seed material); the user id tells the kinds apart in the log.
        requests[kind] = pb.RankRequest(request_id=f"r{seed}-{i}", surface="default", user_id=f"{kind}-u{i % 500}",
                                        slate_size=args.slate_size)
        requests[kind].context.numeric["hour"] = float(i % 24)
        requests[kind].context.categorical["device"] = ("ios", "android", "web")[i % 3]
    for item in rng.choice(args.items, size=args.n_candidates, replace=False):
        item_id, baseline = f"item-{item}", float(item % 97)
        requests["ids"].candidates.add(item_id=item_id, baseline_score=baseline)
        full = requests["full"].candidates.add()
        full.MergeFromString(held[item_id])
        full.baseline_score = baseline
    return requests


class Pair:
    """One request id, sent by id only or in full: time_alternating passes a Pair and each rank picks its kind."""

    def __init__(self, requests: dict[str, pb.RankRequest]) -> None:
        self.requests = requests
        # What a host building the request needs: its fields other than candidates, and (item_id, baseline) each.
        self.head = {kind: pb.RankRequest(request_id=r.request_id, surface=r.surface, user_id=r.user_id,
                                          slate_size=r.slate_size, context=r.context) for kind, r in requests.items()}
        self.items = [(c.item_id, c.baseline_score) for c in requests["ids"].candidates]


def host_items(held: dict[str, bytes]) -> HostItems:
    """The catalog's items as a host would hold them in memory (parsed once, outside any timing)."""
    from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb

    items: HostItems = {}
    for item_id, blob in held.items():
        item = catalog_pb.CatalogItem.FromString(blob)
        items[item_id] = (dict(item.features.numeric), dict(item.features.categorical), list(item.embedding))
    return items


def build_request(pair: Pair, kind: str, items: HostItems) -> pb.RankRequest:
    """The request of ``kind`` built from the host's values, as a host would per call (not a copy of bytes)."""
    request = pb.RankRequest()
    request.CopyFrom(pair.head[kind])
    add = request.candidates.add
    if kind == "ids":
        for item_id, baseline in pair.items:
            add(item_id=item_id, baseline_score=baseline)
    else:
        for item_id, baseline in pair.items:
            numeric, categorical, embedding = items[item_id]
            add(item_id=item_id, features=pb.Features(numeric=numeric, categorical=categorical), embedding=embedding,
                baseline_score=baseline)
    return request


def _serve(data_dir: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "recsys_rl.cli", "serve", "--port", "0", "--data-dir", data_dir,
                             "--workers", "1"],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def _server_us(data_dir: str) -> dict[str, float]:
    """Median DecisionEvent.latency_micros of each kind (user ids start with the kind)."""
    from logging_schema.reader import read_log

    by_kind: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for event in read_log(Path(data_dir) / "logs").decisions:
        by_kind[event.user_id.split("-", 1)[0]].append(event.latency_micros)
    return {kind: statistics.median(v) for kind, v in by_kind.items()}


def one_round(catalog_file: Path, work: Path, args: Args, seed: int) -> dict[str, float]:
    data_dir = tempfile.mkdtemp(dir=work)
    subprocess.run([sys.executable, "-m", "recsys_rl.cli", "catalog", "load", "--data-dir", data_dir,
                    str(catalog_file)], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    held = CatalogStore(data_dir).current.items  # type: ignore[union-attr]
    rng = np.random.default_rng(seed)
    pairs = [Pair(make_requests(rng, held, args, seed, i)) for i in range(args.warmup + args.calls)]
    items = host_items(held)
    server = _serve(data_dir)
    try:
        channel = grpc.insecure_channel(server.stdout.readline().split()[-1])  # type: ignore[union-attr]
        rank = pb_grpc.RankingServiceStub(channel).Rank
        ranks = {kind: (lambda pair, timeout, kind=kind: rank(pair.requests[kind], timeout=timeout)) for kind in KINDS}
        ranks.update({f"{kind}_built": (lambda pair, timeout, kind=kind: rank(build_request(pair, kind, items),
                                                                             timeout=timeout)) for kind in KINDS})
        times = time_alternating(ranks, pairs, args.warmup)
        # Both kinds decide alike (once the first model is in force: the watcher may swap it in during warm-up).
        for pair in pairs[-5:]:
            slates = [[(s.item_id, s.propensity) for s in rank(pair.requests[kind], timeout=10).slate] for kind in KINDS]
            if slates[0] != slates[1]:
                raise SystemExit("ids-only and full-feature requests served different slates: not comparable")
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    result = {f"{kind}_p50_ms": statistics.median(times[kind]) for kind in KINDS + BUILT}
    result.update({f"{kind}_p99_ms": percentile(times[kind], 99) for kind in KINDS})
    result["ratio"] = result["ids_p50_ms"] / result["full_p50_ms"]
    result["built_ratio"] = result["ids_built_p50_ms"] / result["full_built_p50_ms"]
    result.update({f"{kind}_server_us": us for kind, us in _server_us(data_dir).items()})
    return result


def in_process(catalog_file: Path, work: Path, args: Args) -> dict[str, float]:
    """Per kind, µs, same requests, interleaved: validate_rank_request p50/p99 against the same catalog version, and
    the p50s of what the two kinds' transport costs in Python: the client's SerializeToString and the server's
    RankRequest.FromString."""
    data_dir = tempfile.mkdtemp(dir=work)
    store = CatalogStore(data_dir)
    store.upsert([read_items(catalog_file)], actor="bench")
    version = store.current
    assert version is not None
    rng = np.random.default_rng(1)
    pairs = [make_requests(rng, version.items, args, 1, i) for i in range(args.in_process_calls)]
    times: dict[str, list[float]] = {f"{kind}{what}": [] for kind in KINDS for what in ("", "_encode", "_decode")}
    for r, requests in enumerate(pairs):
        for kind in KINDS if r % 2 else KINDS[::-1]:
            t0 = time.perf_counter_ns()
            validate_rank_request(requests[kind], max_candidates=1000, catalog=version)
            t1 = time.perf_counter_ns()
            wire = requests[kind].SerializeToString()
            t2 = time.perf_counter_ns()
            pb.RankRequest.FromString(wire)
            t3 = time.perf_counter_ns()
            times[kind].append((t1 - t0) / 1e3)
            times[f"{kind}_encode"].append((t2 - t1) / 1e3)
            times[f"{kind}_decode"].append((t3 - t2) / 1e3)
    result = {f"{name}_p50_us": statistics.median(values[200:]) for name, values in times.items()}
    result.update({f"{kind}_p99_us": percentile(times[kind][200:], 99) for kind in KINDS})
    result.update({f"{kind}_bytes": len(pairs[0][kind].SerializeToString()) for kind in KINDS})
    return result


def markdown(rounds: list[dict[str, float]], local: dict[str, float], args: Args = Args()) -> str:
    rows = [f"| {i + 1} | {r['full_p50_ms']:.3f} | {r['ids_p50_ms']:.3f} | **{r['ratio']:.3f}** | "
            f"{r['full_p99_ms']:.3f} | {r['ids_p99_ms']:.3f} | {r['full_server_us']:.0f} | {r['ids_server_us']:.0f} |"
            for i, r in enumerate(rounds)]
    built_rows = [f"| {i + 1} | {r['full_built_p50_ms']:.3f} | {r['ids_built_p50_ms']:.3f} | "
                  f"**{r['built_ratio']:.3f}** |" for i, r in enumerate(rounds)]
    built_ratio = statistics.median(r["built_ratio"] for r in rounds)
    ratio = statistics.median(r["ratio"] for r in rounds)
    full_ms = statistics.median(r["full_p50_ms"] for r in rounds)
    ids_ms = statistics.median(r["ids_p50_ms"] for r in rounds)
    extra = sum(local[f"full{what}_p50_us"] - local[f"ids{what}_p50_us"] for what in ("", "_encode", "_decode"))
    return "\n".join([
        f"Rank over gRPC, one `recsys-rl serve --workers 1`, catalog of {args.items:,} items ({args.dimension}-dim "
        f"embeddings, 6 features: 3 numeric, 3 categorical) loaded with `recsys-rl catalog load`; "
        f"{args.n_candidates} candidates, slate {args.slate_size}. Each request sent twice: *ids* = candidates by "
        f"`item_id` (+ baseline_score) only; *full* = the same candidates with the catalog's features and embedding "
        f"(the same slate is served). Alternating who goes first, {args.calls} timed calls of each per round after "
        f"{args.warmup} warm-up; a new server and data dir per round. *server µs* = median logged "
        "`DecisionEvent.latency_micros` (inside the server, validation to decision, no gRPC or log write).",
        "",
        "| round | full p50 ms | ids p50 ms | ids/full p50 | full p99 ms | ids p99 ms | full server µs | "
        "ids server µs |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Median ids-only / full-feature Rank p50 ratio = **{ratio:.3f}×** (goal ≤ 0.7×).",
        "",
        "The host's side, same rounds and server: each call builds its request from the host's item data (feature "
        "dicts and embedding lists in memory, the Python protobuf API: `candidates.add(item_id=..., features="
        "Features(numeric=..., categorical=...), embedding=..., baseline_score=...)`) and then ranks it, timed "
        "together:",
        "",
        "| round | full built p50 ms | ids built p50 ms | ids/full p50 |",
        "|---|---|---|---|",
        *built_rows,
        "",
        f"Median ratio with the host's building = **{built_ratio:.3f}×**: what a Python host saves by sending ids. "
        "Hosts in compiled languages build requests much faster, so their ratio lies between this and the one above; "
        "the goal is judged on the one above (the server's part).",
        "",
        f"In process (`validate_rank_request` against the same catalog version, {args.in_process_calls} requests "
        f"of each kind, interleaved): p50 full {local['full_p50_us']:.1f} µs, ids {local['ids_p50_us']:.1f} µs; "
        f"p99 full {local['full_p99_us']:.1f} µs, ids {local['ids_p99_us']:.1f} µs. A request is "
        f"{local['full_bytes']:,} bytes in full, {local['ids_bytes']:,} by id; encoding it (the client's "
        f"`SerializeToString`) takes p50 {local['full_encode_p50_us']:.1f} µs in full, {local['ids_encode_p50_us']:.1f} "
        f"µs by id, decoding it (the server's `RankRequest.FromString`) {local['full_decode_p50_us']:.1f} µs and "
        f"{local['ids_decode_p50_us']:.1f} µs.",
        "",
        "What changed (task IDS): an id-only candidate used to be completed by rebuilding the request (the completed "
        "candidates' bytes into a new RankRequest, parsed again: ~50 µs), so every consumer saw protobuf candidates. "
        "Now the catalog version hands back, per distinct request candidate, one cached bytes object: the stored item "
        "for an id (`CatalogVersion.complete`). `CandidateView` keys its info cache and the VW item cache by that "
        "object (hits by identity), the shield reads the cached ids and categorical features, and the log writer "
        "writes stored bytes + the request's baseline record; the completed RankRequest is built only for a consumer "
        "that reads protobuf candidates (learned baseline, slate-RL, a scorer other than VW).",
        "",
        "Where the time goes, and why the ratio stays far from 0.7×: only three costs differ between the kinds - "
        "the client's encoding and the server's decoding of the bigger request (above), reading the candidates "
        "(validate, above) and the loopback transfer of the extra bytes. Everything else in a Rank is the same work "
        "for both: gRPC's hand-off and response, VW predict over 100 examples, sampling the slate, the decision "
        "record (the log keeps the completed candidates either way, so the writer thread's share of the GIL is "
        f"equal) - see \"Rank time per stage\" for their sizes. Measured above, the in-process part of what full "
        f"features cost more (encode + decode + validate, full minus ids) is {extra:.0f} µs, "
        f"{extra / full_ms / 10:.0f}% of the full-feature Rank p50 ({full_ms:.3f} ms, median of the rounds); the "
        f"gRPC Ranks differ by {(full_ms - ids_ms) * 1e3:.0f} µs (the transfer and gRPC core's own copying on top). "
        "So with these 16-dim, 6-feature items even reading ids for free could not reach 0.7×: it needs the full "
        "request's own costs to be ~30% of its Rank, i.e. much bigger items per candidate.",
    ])


def run(args: Args = Args()) -> tuple[list[dict[str, float]], dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        catalog_file = work / "items.parquet"
        write_catalog(catalog_file, args)
        print("in process ...", file=sys.stderr, flush=True)
        local = in_process(catalog_file, work, args)
        rounds = []
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
            rounds.append(one_round(catalog_file, work, args, seed=rnd))
    return rounds, local


if __name__ == "__main__":
    bench_args = Args()
    if "--quick" in sys.argv[1:]:  # a smoke run (tests): a few calls, one round
        bench_args = Args(warmup=20, calls=60, rounds=1, in_process_calls=250)
    by_round, local_result = run(bench_args)
    print(markdown(by_round, local_result, bench_args))
