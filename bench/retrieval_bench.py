"""Retrieval from a 1M-item catalog (issue 12): build time, search latency, recall@K vs exact search, memory.

Reads top to bottom. A seeded clustered catalog (``N_CLUSTERS`` Gaussian clusters on the unit sphere, items =
centre + noise, in memory: the index code the server runs, :func:`recsys_rl.retrieval.index.build_index`, without
gRPC or the catalog store) and ``N_QUERIES`` queries drawn like the items. For each index setting: build time, the
index's size (serialized: what it keeps in memory, faiss holding its own copy of the vectors; the process's RSS
growth is not used because freed indexes' pages are reused), p50/p99 latency of one query at a time (single-threaded, as a serving worker searches), and recall@K
against the exact top-K of the same query (``|approx ∩ exact| / K``, mean over the queries).

Settings with ``recall_target`` are tuned as the server tunes them (:func:`recsys_rl.retrieval.tuning.tune`: the
smallest nprobe / ef_search reaching the target recall@K on 200 of the catalog's own vectors), and then measured on
the bench's queries like the others: their "recall" column is on queries that are not catalog items.

The exact index is the in-run baseline: its per-query latency is the figure the approximate ones are compared with.
HNSW is built single-threaded as the server builds it (~2 minutes at 1M items, most of this bench's time);
``--hnsw-items N`` indexes only the first N items for a quicker run (its recall is then against the exact top-K of
those N items).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import faiss
import numpy as np

from recsys_rl.retrieval.config import RetrievalConfig
from recsys_rl.retrieval.index import ItemIndex, build_index
from recsys_rl.retrieval.tuning import tune

N_ITEMS = 1_000_000
DIM = 64
K = 200
N_QUERIES = 200
N_CLUSTERS = 20_000  # ~50 items each: an item's top-200 spans several clusters (2,000: all in one, every index exact)
SEED = 12
# Spread of an item around its cluster's unit centre (noise norm ~NOISE): clusters overlap, so an item's nearest
# neighbours by inner product come from several of them and IVF's probing matters.
NOISE = 0.5


def catalog(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(items (n, DIM), queries (N_QUERIES, DIM)), float32: clustered, as learned item embeddings are."""
    centres = rng.standard_normal((N_CLUSTERS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    items = centres[rng.integers(0, N_CLUSTERS, n)]
    items += NOISE * rng.standard_normal((n, DIM), dtype=np.float32) / np.sqrt(DIM)
    queries = centres[rng.integers(0, N_CLUSTERS, N_QUERIES)]
    queries += NOISE * rng.standard_normal((N_QUERIES, DIM), dtype=np.float32) / np.sqrt(DIM)
    return items, queries


def timed_searches(index: ItemIndex, queries: np.ndarray, config: RetrievalConfig) -> tuple[list[float], np.ndarray]:
    """Per-query latencies (ms) and the (N_QUERIES, K) ids found, one query per call as the server searches."""
    latencies: list[float] = []
    found = np.empty((len(queries), K), dtype=np.int64)
    for i in range(len(queries)):
        t = time.perf_counter()
        _, ids = index.search(queries[i:i + 1], K, config)
        latencies.append((time.perf_counter() - t) * 1e3)
        found[i] = ids[0]
    return latencies, found


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / K for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=N_ITEMS)
    parser.add_argument("--hnsw-items", type=int, default=0, help="items HNSW indexes (0: all; fewer: quicker)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # as recsys_rl.retrieval.index does on first use: one core per serving worker

    rng = np.random.default_rng(SEED)
    items, queries = catalog(args.items, rng)
    ids = [f"item-{i:07d}" for i in range(args.items)]
    hnsw_n = args.hnsw_items or args.items
    settings = [
        ("exact (IndexFlatIP)", RetrievalConfig(index="exact", exact_below=0), args.items),
        ("IVF nlist 1024, nprobe 32 (config defaults)", RetrievalConfig(index="ivf", exact_below=0), args.items),
        ("IVF nlist 1024, nprobe 64 (operations.md example)",
         RetrievalConfig(index="ivf", nprobe=64, exact_below=0), args.items),
        ("IVF nlist 4096, nprobe 128", RetrievalConfig(index="ivf", nlist=4096, nprobe=128, exact_below=0), args.items),
        ("IVF nlist 1024, recall_target 0.95 (nprobe tuned from 32)",
         RetrievalConfig(index="ivf", exact_below=0, recall_target=0.95), args.items),
        (f"HNSW M 32, ef_search 512 ({hnsw_n:,} items)",
         RetrievalConfig(index="hnsw", ef_search=512, exact_below=0), hnsw_n),
        (f"HNSW M 32, recall_target 0.95 (ef_search tuned from 128; {hnsw_n:,} items)",
         RetrievalConfig(index="hnsw", exact_below=0, recall_target=0.95), hnsw_n),
    ]
    tunings: list[str] = []
    truths: dict[int, np.ndarray] = {}  # n items -> the exact top-K of each query over the first n items
    exact_p50 = float("nan")  # the in-run baseline (the first setting)
    rows: list[str] = []
    built: dict[tuple[tuple[str, int, int, int], int], ItemIndex] = {}  # HNSW: built once, searched twice
    for label, config, n in settings:
        gc.collect()
        index = built.get((config.build_key, n)) or build_index(ids[:n], items[:n], config, version="bench")
        if config.index == "hnsw":
            built[(config.build_key, n)] = index
        tuning = tune(index, items[:n], config)
        if tuning is not None:
            index.tunings[config.tuning_key] = tuning
            tried = ", ".join(f"{v}: {r:.3f}" for v, r in tuning.tried)
            tunings.append(f"* {label}: {tuning.describe()}; tried {tried}")
            label = f"{label}: {tuning.parameter} {tuning.value}"
        memory = faiss.serialize_index(index.index).nbytes / 2**20  # what it holds; RSS reuses freed pages
        latencies, found = timed_searches(index, queries, config)
        p50 = statistics.median(latencies)
        if config.index == "exact":
            exact_p50 = p50
            truths[n] = found
        elif n not in truths:
            exact = build_index(ids[:n], items[:n], RetrievalConfig(index="exact", exact_below=0), version="bench")
            truths[n] = exact.search(queries, K, config)[1]
            del exact
        truth = truths[n]
        rows.append(f"| {label} | {index.build_seconds:.1f} | {memory:.0f} | {p50:.2f} | "
                    f"{float(np.percentile(latencies, 99)):.2f} | {exact_p50 / p50:.1f}x | "
                    f"{recall(found, truth):.3f} |")
        print(f"{label}: built in {index.build_seconds:.1f} s, p50 {p50:.2f} ms",
              file=sys.stderr, flush=True)
        del index
    built.clear()
    print(f"{args.items:,} items × {DIM} dims (float32, {N_CLUSTERS:,} seeded clusters), K = {K}, {N_QUERIES} "
          f"queries drawn like the items, one per search call, faiss {faiss.__version__} single-threaded "
          f"(`recsys_rl.retrieval.index.build_index`, in process, no gRPC). In-run baseline: the exact index's p50.")
    print()
    print("| index | build s | index MiB (serialized) | p50 ms | p99 ms | exact p50 / p50 | recall@200 vs exact |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    if tunings:
        print("Tuning (recall@K on 200 catalog vectors as queries; the table's recall is on the bench's queries):")
        print("\n".join(tunings))
        print()
    if hnsw_n != args.items:
        print(f"HNSW indexes the first {hnsw_n:,} items only (`--hnsw-items`); its recall is against the exact "
              f"top-{K} of those.")
    print(f"Index size: the catalog's vectors alone are {args.items * DIM * 4 / 2**20:.0f} MiB and every index keeps "
          "its own copy (IVF adds the ids and centroids, HNSW its links); the server holds one index per build key "
          "and catalog version, two while a new version's index is being built.")

if __name__ == "__main__":
    main()
