"""Benchmark :class:`mmrec.serve.index.ItemIndex` on a large synthetic catalogue shaped like a trained model's vectors.

The catalogue is a Gaussian kernel density estimate of real trained item vectors: row ``j`` is a random real vector
plus noise drawn from ``N(0, alpha^2 * Sigma)``, ``Sigma`` the real vectors' covariance. It keeps what makes these
vectors hard for ANN search: a strong shared mean (the fusion's output LayerNorm puts every item in a narrow cone),
the clusters of the real catalogue, its low effective dimension and its norms, while every row is distinct
(``alpha=0.5``: a copy differs from its source by half the catalogue's own spread). ``--norm-spread s`` also scales
every row by ``exp(s * N(0, 1))``, for models whose item norms vary more. Queries are the real users' interests.

Prints, for each index kind: build time (``--build-threads``), index size vs the raw float32 vectors, then a sweep of
the search-time parameter with p50/p99 latency at one thread (one query per call, as served), p50 with 100 excluded
rows, and recall@10 against the exact top-10; the exact torch top-10 latency (one thread) for comparison. With
``--crossover``, exact vs ANN p50 at 3k, 10k, 15k, 20k, 30k, 100k, 300k and 1M items (the first rows of the catalogue).

Real vectors come from a trained store (``--store``) or from ``.npy`` files (``--vectors``, ``--interests``)::

    python scripts/bench_ann.py --store STORE --n 1000000 --crossover
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def real_vectors(args) -> tuple[np.ndarray, np.ndarray]:
    """``(items (N, D), interests (U, D))`` float32 of a trained model."""
    if args.store:
        from mmrec import Recommender

        rec = Recommender.load(args.store, device="cpu")
        items = rec.item_vectors.detach().numpy()
        interests = np.stack([s.interest for s in rec.store.get_users().values()])
        return items.astype(np.float32), interests.astype(np.float32)
    return np.load(args.vectors).astype(np.float32), np.load(args.interests).astype(np.float32)


def synthetic_catalogue(real: np.ndarray, n: int, alpha: float, spread: float, seed: int) -> np.ndarray:
    """``(n, D)`` float32: Gaussian KDE samples of ``real`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    cov = np.cov((real - real.mean(0)).T.astype(np.float64))
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(cov.shape[0])).T.astype(np.float32)
    out = np.empty((n, real.shape[1]), np.float32)
    for start in range(0, n, 1 << 17):  # chunks: the noise of 1M rows at once would take another GB
        stop = min(n, start + (1 << 17))
        noise = rng.standard_normal((stop - start, real.shape[1]), dtype=np.float32) @ chol
        out[start:stop] = real[rng.integers(0, len(real), stop - start)] + alpha * noise
        if spread:
            out[start:stop] *= np.exp(spread * rng.standard_normal(stop - start)).astype(np.float32)[:, None]
    return out


def exact_top(x, queries, k: int = 10):
    """Exact top-``k`` rows ``(B, k)`` (torch, all threads, queries in chunks to bound memory)."""
    import torch

    xt = torch.from_numpy(x)
    return np.concatenate([(torch.from_numpy(queries[i:i + 64]) @ xt.T).topk(k).indices.numpy()
                           for i in range(0, len(queries), 64)])


def exact_latency(x, queries, repeats: int, exclude=None) -> float:
    """p50 ms of one query's exact top-10 (matmul, ``exclude``d rows set to -inf, topk) in torch at one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    xt = torch.from_numpy(x)
    times = []
    try:
        with torch.no_grad():
            for b, q in enumerate(queries[:repeats]):
                qt = torch.from_numpy(q)
                ex = None if exclude is None else torch.from_numpy(exclude[b])
                t = time.perf_counter()
                s = xt @ qt
                if ex is not None:
                    s[ex] = float("-inf")
                s.topk(10)
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times) * 1e3)


def timed_search(index, queries, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(B, 10)`` and per-query latencies in ms, one query per call (as served)."""
    rows, times = [], []
    for b, q in enumerate(queries):
        ex = None if exclude is None else [exclude[b]]
        t = time.perf_counter()
        _, r = index.search(q[None], 10, ex)
        times.append(time.perf_counter() - t)
        rows.append(r[0])
    return np.stack(rows), np.array(times) * 1e3


def recall(found, truth) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def index_bytes(index) -> int:
    """Size of the saved index file (FAISS's serialisation: the in-memory arrays, written out)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        path = Path(tmp) / "index.faiss"
        index.save(path)
        return path.stat().st_size


def sweep(index, name, values, queries, truth, exclude) -> None:
    base = index.config
    for value in values:
        index.config = replace(base, **{name: value})
        found, lat = timed_search(index, queries)
        _, lat_ex = timed_search(index, queries, exclude)
        print(f"  {name}={value:<5d} p50 {np.percentile(lat, 50):7.3f} ms  p99 {np.percentile(lat, 99):7.3f} ms  "
              f"p50 excl100 {np.percentile(lat_ex, 50):7.3f} ms  recall@10 {recall(found, truth):.4f}", flush=True)
    index.config = base


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", help="trained store: item vectors and user interests from its model")
    p.add_argument("--vectors", help=".npy (N, D) trained item vectors (instead of --store)")
    p.add_argument("--interests", help=".npy (U, D) user interests (instead of --store)")
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic catalogue size")
    p.add_argument("--alpha", type=float, default=0.5, help="KDE bandwidth, in units of the real covariance")
    p.add_argument("--norm-spread", type=float, default=0.0, help="log-normal sigma of an extra norm scaling")
    p.add_argument("--kinds", default="hnsw,hnsw:ip,ivf,ivf:augment",
                   help="indexes to build, comma-separated kind[:mips] (mips default: the kind's); '' for none")
    p.add_argument("--m", type=int, default=None, help="HNSW M (default: IndexConfig's)")
    p.add_argument("--ef-construction", type=int, default=None)
    p.add_argument("--ef-search", default="64,128,256,512", help="HNSW ef_search sweep")
    p.add_argument("--nprobe", default="64,128,256,512", help="IVF nprobe sweep")
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--crossover", action="store_true", help="exact vs ANN p50 at 10k..1M (default kind)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.store and not (args.vectors and args.interests):
        p.error("give --store, or --vectors and --interests")

    import faiss
    import torch

    from mmrec.serve.index import AUTO_EXACT_BELOW, IndexConfig, ItemIndex

    torch.set_num_threads(args.build_threads)
    real, queries = real_vectors(args)
    t = time.time()
    x = synthetic_catalogue(real, args.n, args.alpha, args.norm_spread, args.seed)
    norms = np.linalg.norm(x, axis=1)
    print(f"real: {real.shape[0]} items, {queries.shape[0]} interests, D={real.shape[1]}; synthetic {x.shape} "
          f"(KDE alpha={args.alpha}, norm spread {args.norm_spread}) in {time.time() - t:.1f}s; norms p1/p50/p99 "
          f"{np.percentile(norms, 1):.2f}/{np.percentile(norms, 50):.2f}/{np.percentile(norms, 99):.2f}; "
          f"faiss {faiss.__version__}, {os.cpu_count()} cores", flush=True)
    t = time.time()
    truth = exact_top(x, queries)
    rng = np.random.default_rng(args.seed)
    # 100 excluded rows per query, the exact top-5 among them: the over-fetch must find the next ones.
    exclude = [np.union1d(rng.choice(len(x), 95, replace=False), truth[b, :5]) for b in range(len(queries))]
    raw = x.nbytes
    print(f"exact top-10 of {len(queries)} queries in {time.time() - t:.1f}s; raw vectors {raw / 2**20:.0f} MiB; "
          f"exact torch top-10 p50 at 1 thread: {exact_latency(x, queries, 100):.2f} ms", flush=True)

    default = IndexConfig()
    crossover_index = None
    for spec in filter(None, args.kinds.split(",")):
        kind, _, mips = spec.partition(":")
        overrides = {"kind": kind, "build_threads": args.build_threads, "threads": 1}
        if mips:
            overrides["mips"] = mips
        if kind == "hnsw":
            overrides.update({k: v for k, v in (("m", args.m), ("ef_construction", args.ef_construction))
                              if v is not None})
        elif args.nlist is not None:
            overrides["nlist"] = args.nlist
        config = replace(default, **overrides)
        t = time.time()
        index = ItemIndex.build(x, config)
        build = time.time() - t
        size = index_bytes(index)
        extra = (f"M={config.m} ef_construction={config.ef_construction}" if kind == "hnsw"
                 else f"nlist={index._index.nlist}")
        print(f"\n{kind} mips={index.mips} ({extra}): build {build:.1f}s at {args.build_threads} threads; index "
              f"{size / 2**20:.0f} MiB = {size / raw:.2f}x raw vectors", flush=True)
        if kind == "hnsw":
            sweep(index, "ef_search", [int(v) for v in args.ef_search.split(",")], queries, truth, exclude)
        else:
            sweep(index, "nprobe", [int(v) for v in args.nprobe.split(",")], queries, truth, exclude)
        if args.crossover and replace(config, build_threads=default.build_threads, threads=default.threads) == default:
            crossover_index = index
        del index

    if args.crossover:
        print(f"\ncrossover ({default.kind}, defaults {default}); AUTO_EXACT_BELOW = {AUTO_EXACT_BELOW}")
        print("  p50 ms of one query's top-10 at one thread; 'excl': 100 rows excluded (the exact top-5 among them)")
        print(f"  {'items':>9}  {'exact':>8}  {'ann':>8}  {'exact excl':>10}  {'ann excl':>8}  {'ann recall@10':>13}")
        for n in (3_000, 10_000, 15_000, 20_000, 30_000, 100_000, 300_000, 1_000_000):
            if n > len(x):
                break
            sub = x[:n]
            if n == len(x) and crossover_index is not None:
                index = crossover_index
            else:
                index = ItemIndex.build(sub, replace(default, build_threads=args.build_threads))
            sub_truth = exact_top(sub, queries)
            sub_exclude = [np.union1d(rng.choice(n, 95, replace=False), sub_truth[b, :5]) for b in range(len(queries))]
            found, lat = timed_search(index, queries)
            _, lat_ex = timed_search(index, queries, sub_exclude)
            print(f"  {n:>9,}  {exact_latency(sub, queries, 300):8.3f}  {np.percentile(lat, 50):8.3f}  "
                  f"{exact_latency(sub, queries, 300, sub_exclude):10.3f}  {np.percentile(lat_ex, 50):8.3f}  "
                  f"{recall(found, sub_truth):13.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
