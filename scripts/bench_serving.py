"""Serving benchmark: each operation beside its floor, measured in the same process on the model's own tensors.

Not a test. Prints one table (operation, p50 / p99 or rate, its floor and the ratio), the machine and its load::

    python scripts/bench_serving.py --store STORE            # a trained store (mmrec embed + mmrec train)

Operations: ``score`` 1 user x 1,000 items; ``recommend`` top-10 over the store's catalogue; top-10 over a synthetic
1,000,000-item catalogue shaped like the model's vectors (``scripts/bench_ann.py``'s KDE), exact vs the HNSW index
plus the model's re-ranking of 100 candidates, with recall@10 of ANN against exact for the store's real user
interests; ``Recommender.load``; ``observe`` at durability normal and full; batch refresh (``rebuild``) users/s; HTTP
``/recommend`` and ``/score`` p50/p99 at a fixed arrival rate from an asyncio open-loop generator on loopback
against ``mmrec serve``; the text encoder's items/s at fp32 vs int8 and the cosine between their embeddings.

Floors: ``score`` -- the scorer's MLP on the already gathered tensors; ``recommend`` -- matmul + top-100 + the MLP on
100 + top-10; ``observe`` -- one GRU step on the model's tensors, and an SQLite commit of one row at the same
durability; exact 1M -- matmul + topk. Latencies are single calls at the serving default of one torch thread.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ROWS: list[tuple[str, str, str, str]] = []


def row(operation: str, value: str, floor: str = "", ratio: str = "") -> None:
    ROWS.append((operation, value, floor, ratio))
    print(f"  {operation:<44} {value:<30} {floor:<24} {ratio}", flush=True)


def timed(fn, n: int, warm: int = 20) -> np.ndarray:
    """Milliseconds of ``n`` calls of ``fn(i)`` (after ``warm`` untimed ones)."""
    for i in range(warm):
        fn(i)
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out[i] = time.perf_counter() - t
    return out * 1e3


def pct(ms: np.ndarray) -> str:
    return f"p50 {np.percentile(ms, 50):.3f} / p99 {np.percentile(ms, 99):.3f} ms"


def ratio(a: np.ndarray, b: np.ndarray) -> str:
    return f"{np.median(a) / np.median(b):.2f}x floor"


def sibling(name: str):
    """Another benchmark script of this folder, imported as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_api(store: Path, n: int) -> tuple:
    from mmrec import Recommender

    times = [0.0] * 4
    for i in range(4):
        t = time.perf_counter()
        rec = Recommender.load(store, device="cpu", retrieval="exact")
        times[i] = (time.perf_counter() - t) * 1e3
    row(f"Recommender.load, {len(rec.item_ids):,} items", f"median {np.median(times[1:]):.0f} ms",
        f"first {times[0]:.0f} ms")
    rng = np.random.default_rng(0)
    users = sorted(rec.store.get_users())
    items = [rec.item_ids[i] for i in rng.choice(len(rec.item_ids), 1000, replace=len(rec.item_ids) < 1000)]
    model = rec.model
    for user in users:  # steady state: every user's interest and seen items cached, as in a warm server
        rec.recommend(user, k=10)
    api = timed(lambda i: rec.score(users[i % len(users)], items), n)
    rows = rec._rows(items)
    interests = rec.users.interests(users)

    @torch.inference_mode()
    def score_floor(i):
        model.scorer.probability(interests[i % len(users)][None], rec.item_vectors[rows][None])

    floor = timed(score_floor, n)
    row("score 1 user x 1,000 items", pct(api), pct(floor).split(" /")[0], ratio(api, floor))

    api = timed(lambda i: rec.recommend(users[i % len(users)], k=10), n)
    vectors, rerank = rec.item_vectors, model.config.scorer.rerank

    @torch.inference_mode()
    def recommend_floor(i):
        q = interests[i % len(users)]
        top = (vectors @ q).topk(rerank).indices
        model.scorer.logits(q[None], vectors[top][None]).topk(10)

    floor = timed(recommend_floor, n)
    row(f"recommend top-10, {len(rec.item_ids):,} items, exact", pct(api), pct(floor).split(" /")[0],
        ratio(api, floor))
    many = timed(lambda i: rec.recommend_many(users[:64], k=10), max(20, n // 20), warm=3)
    row("recommend_many 64 users, exact", f"{64 / np.median(many) * 1e3:,.0f} users/s", "", "")
    logs = rec.store.user_events(users)
    full = [u for u in users if len(logs[u]) >= rec.max_len][:100]
    picks = {u: rec.recommend(u, k=1)[0][0] for u in full}
    ms = timed(lambda i: rec.explain(full[i % len(full)], [picks[full[i % len(full)]]]), min(n, 200), warm=5)
    row(f"explain 1 item, {rec.max_len}-event history", pct(ms))
    return rec, users, interests


def bench_large(rec, interests: torch.Tensor, n_items: int, queries: int, build_threads: int) -> None:
    bench_ann = sibling("bench_ann")
    from mmrec.serve.index import IndexConfig, ItemIndex

    real = rec.item_vectors.detach().numpy()
    x = bench_ann.synthetic_catalogue(real, n_items, 0.5, 0.0, 0)
    q = interests.detach().numpy()[:queries]
    truth = bench_ann.exact_top(x, q)
    xt = torch.from_numpy(x)
    exact = timed(lambda i: (xt @ torch.from_numpy(q[i % len(q)])).topk(10), len(q), warm=5)
    row(f"top-10, {n_items:,} items, exact matmul + topk", pct(exact))
    t = time.perf_counter()
    index = ItemIndex.build(x, IndexConfig(build_threads=build_threads))
    build = time.perf_counter() - t
    size = bench_ann.index_bytes(index) / x.nbytes
    model, rerank = rec.model, rec.model.config.scorer.rerank
    found = []

    @torch.inference_mode()
    def ann_recommend(i):
        qi = q[i % len(q)]
        _, r = index.search(qi[None], rerank)
        cand = torch.from_numpy(index.vectors(r[0]))
        top = model.scorer.logits(torch.from_numpy(qi)[None], cand[None]).topk(10)
        found.append(r[0][:10])
        return top

    ms = timed(ann_recommend, len(q), warm=0)
    recall = bench_ann.recall(np.stack(found[: len(q)]), truth)
    search = timed(lambda i: index.search(q[i % len(q)][None], 10), len(q), warm=5)
    row(f"top-10, {n_items:,} items, HNSW search", pct(search), pct(exact).split(" /")[0],
        f"recall@10 {recall:.3f}")
    row(f"  + re-rank 100 by the MLP (recommend path)", pct(ms), "", f"{np.median(exact) / np.median(ms):.0f}x "
        "faster than exact")
    row(f"  index build ({build_threads or os.cpu_count()} threads) / memory", f"{build:.0f} s",
        f"{size:.2f}x raw vectors")


def bench_observe(store: Path, tmp: Path, n: int) -> None:
    from mmrec import Recommender

    for durability in ("normal", "full"):
        copy = tmp / f"observe-{durability}"
        shutil.copytree(store, copy, ignore=shutil.ignore_patterns("index"))
        rec = Recommender.load(copy, device="cpu", durability=durability, retrieval="exact")
        users = sorted(rec.store.get_users())
        items = rec.item_ids
        base, calls = 2_000_000_000, itertools.count()  # every call a new, later event: one GRU step each

        def observe(_):
            i = next(calls)
            rec.observe(users[i % len(users)], items[i % len(items)], timestamp=base + i)

        api = timed(observe, n)
        db = sqlite3.connect(copy / "scratch.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        db.execute("CREATE TABLE t (a TEXT, b INTEGER, c TEXT)")

        def commit(i):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?, ?, ?)", ("u", i, "x"))
            db.execute("COMMIT")

        floor_sql = timed(commit, n)
        folder = rec.folder  # the step observe runs for one new event, without the store
        event = [(base, items[0], rec.default_event, "")]

        @torch.inference_mode()
        def step(i):
            folder.step(rec.model_id, ["u"], {"u": event}, {"u": None})

        floor_step = timed(step, n)
        floor = floor_sql + floor_step
        row(f"observe, durability {durability}", pct(api),
            f"commit {np.median(floor_sql):.3f} + step {np.median(floor_step):.3f} ms", ratio(api, floor))
        rec.close()


def bench_load_large(store: Path, tmp: Path, n: int) -> None:
    """``Recommender.load`` of a store grown to ``n`` items: synthetic items whose vectors training stored (random,
    at the store's model), so the load reads them in bulk as it reads real ones. Exact retrieval: an ANN index is
    built by `mmrec train`, not by the load."""
    from mmrec import Recommender

    copy = tmp / "load-large"
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns("index"))
    db = sqlite3.connect(copy / "mmrec.sqlite", isolation_level=None)
    (model, dim), have = db.execute("SELECT model, length(vector) / 4 FROM item_vectors LIMIT 1").fetchone(), \
        db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    rng = np.random.default_rng(0)
    db.execute("BEGIN")
    for start in range(0, n - have, 100_000):
        ids = [f"synthetic-{i}" for i in range(start, min(start + 100_000, n - have))]
        vectors = rng.standard_normal((len(ids), dim), dtype=np.float32)
        db.executemany("INSERT INTO items (item_id, title, text, updated_at) VALUES (?, '', '', 0)",
                       [(i,) for i in ids])
        db.executemany("INSERT INTO item_vectors VALUES (?, ?, ?)",
                       [(i, model, v.tobytes()) for i, v in zip(ids, vectors)])
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    seconds = []
    for _ in range(3):
        tick = time.perf_counter()
        Recommender.load(copy, device="cpu", retrieval="exact").close()
        seconds.append(time.perf_counter() - tick)
    row(f"Recommender.load, {n:,} items", f"median {np.median(seconds):.2f} s", f"first {seconds[0]:.2f} s")


def bench_refresh(store: Path, tmp: Path) -> None:
    from mmrec import Recommender

    copy = tmp / "refresh"
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns("index"))
    for threads in (1, os.cpu_count() or 1):
        rec = Recommender.load(copy, device="cpu", threads=threads, retrieval="exact")
        t = time.perf_counter()
        users = rec.rebuild()
        elapsed = time.perf_counter() - t
        row(f"refresh (rebuild all users), {threads} thread(s)", f"{users / elapsed:,.0f} users/s",
            f"{users} users in {elapsed:.2f} s")
        rec.close()
    torch.set_num_threads(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load_test(port: int, path: str, bodies: list[dict], rate: float, seconds: float,
                    connections: int = 32) -> tuple[np.ndarray, int]:
    """Open-loop load on loopback: request ``i`` is due at ``i / rate`` s, whatever the earlier ones are doing, and
    its latency counts from then (queueing included: no coordinated omission). ``connections`` keep-alive HTTP/1.1
    connections take due requests in turn. Written on asyncio streams because an httpx client spends more CPU per
    request than the server does, and on a 2-core box the load generator must not be what is measured."""
    import json

    payloads = [json.dumps(b).encode() for b in bodies]
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
    queue: asyncio.Queue = asyncio.Queue()
    latencies, errors, first_error = [], 0, []

    async def connection():
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (job := await queue.get()) is not None:
                due, body = job
                writer.write(f"{head}{len(body)}\r\n\r\n".encode() + body)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                answer = await reader.readexactly(length)
                if b" 200 " not in status:
                    errors += 1
                    first_error.append(f"{status!r} {answer[:200]!r}")
                else:
                    latencies.append(time.perf_counter() - due)
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    start, n = time.perf_counter() + 0.05, int(rate * seconds)
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, payloads[i % len(payloads)]))
    for _ in workers:
        queue.put_nowait(None)
    done = await asyncio.gather(*workers, return_exceptions=True)
    failed = [d for d in done if isinstance(d, Exception)]
    errors += n - len(latencies) - errors if failed else 0
    if first_error or failed:
        print(f"  {path}: {errors} errors, the first: {(first_error or [repr(failed[0])])[0]}", flush=True)
    return np.array(latencies) * 1e3, errors


def bench_http(store: Path, tmp: Path, users: list[str], items: list[str], rate: float, seconds: float,
               workers: int) -> None:
    import httpx

    copy = tmp / "http"
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns("index"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mmrec.cli", "serve", "--store", str(copy), "--port", str(port),
                               "--workers", str(workers)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mmrec serve did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
        rng = np.random.default_rng(1)
        recommend = [{"user_id": u, "k": 10} for u in users]
        score = [{"user_id": u, "item_ids": list(rng.choice(items, 100, replace=False))} for u in users[:50]]
        for path, bodies in (("/recommend", recommend), ("/score", score)):
            # warm-up: every body once at least (each server process caches the users it has answered)
            warm = min(rate, 150)
            asyncio.run(load_test(port, path, bodies, warm, max(3.0, 3 * workers * len(bodies) / warm)))
            ms, errors = asyncio.run(load_test(port, path, bodies, rate, seconds))
            label = "100 items" if path == "/score" else "top-10"
            row(f"HTTP {path} ({label}), {rate:.0f} req/s x {seconds:.0f} s, {workers} worker(s)", pct(ms),
                f"{errors} errors of {int(rate * seconds)}")
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(30)


def bench_int8(texts: int, tmp: Path) -> None:
    from mmrec.encoders.text import TextEncoder, TextEncoderConfig

    sample = sibling("bench_int8").movielens_texts(REPO / "assets" / "ml-latest-small" / "items.csv", texts, 0)
    torch.set_num_threads(os.cpu_count() or 1)
    out, speed = {}, {}
    for precision in ("fp32", "int8"):
        encoder = TextEncoder(TextEncoderConfig(precision=precision, cache_dir=tmp / "encoders"))
        encoder.encode(sample[:64], show_progress=False)  # loads (and for int8 builds) the model
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            out[precision] = encoder.encode(sample, show_progress=False)
            best = min(best, time.perf_counter() - t)
        speed[precision] = len(sample) / best
    a, b = out["fp32"], out["int8"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    row(f"text encoder, {len(sample)} texts, {os.cpu_count()} threads", f"fp32 {speed['fp32']:.0f} items/s",
        f"int8 {speed['int8']:.0f} items/s", f"{speed['int8'] / speed['fp32']:.2f}x")
    row("  cosine int8 vs fp32", f"mean {cos.mean():.4f} / min {cos.min():.4f}")
    torch.set_num_threads(1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, required=True, help="trained store")
    p.add_argument("--calls", type=int, default=1000, help="timed calls per in-process operation")
    p.add_argument("--large", type=int, default=1_000_000, help="synthetic catalogue size (0: skip)")
    p.add_argument("--build-threads", type=int, default=0, help="index build threads (0: every core)")
    p.add_argument("--rate", type=float, default=300.0, help="HTTP requests per second")
    p.add_argument("--seconds", type=float, default=60.0, help="HTTP load duration per endpoint (0: skip)")
    p.add_argument("--workers", type=int, default=1, help="mmrec serve --workers")
    p.add_argument("--texts", type=int, default=1000, help="texts for the encoder timing (0: skip)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: api,large,load,observe,refresh,http,int8")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(1)
    print(f"machine: {sibling('bench_int8').cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"load average at start {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        tmp = Path(scratch)
        rec, users, interests = bench_api(args.store, args.calls)
        if args.large and "large" not in skip:
            bench_large(rec, interests, args.large, min(len(users), 500), args.build_threads)
        if args.large and "load" not in skip:
            bench_load_large(args.store, tmp, args.large)
        if "observe" not in skip:
            bench_observe(args.store, tmp, args.calls)
        if "refresh" not in skip:
            bench_refresh(args.store, tmp)
        if args.seconds and "http" not in skip:
            bench_http(args.store, tmp, users, rec.item_ids, args.rate, args.seconds, args.workers)
        if args.texts and "int8" not in skip:
            bench_int8(args.texts, tmp)
    print(f"load average at end {os.getloadavg()}\n")
    print("| operation | measured | floor / detail | ratio |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
