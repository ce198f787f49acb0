"""Approximate top-k retrieval over item vectors with FAISS: maximum inner product, exact exclusion.

Retrieval scores item ``i`` for an interest ``q (D,)`` by ``q · v_i`` (item vectors ``v (N, D)``, not unit-norm).
Below :data:`AUTO_EXACT_BELOW` items an exact matmul + topk is as fast; above it :class:`ItemIndex` answers the same
question approximately (recall@10 >= 0.95 at 1M items with the defaults, ``scripts/bench_ann.py``)::

    index = ItemIndex.build(vectors, IndexConfig())                     # vectors: (N, D) float32
    scores, rows = index.search(interests, k=10, exclude=[seen_rows])   # (B, 10) float32, (B, 10) int64
    index.add(new_vectors)                                              # rows N..N+M-1, no rebuild
    index.save(path); index = ItemIndex.load(path)

Kinds (``IndexConfig.kind``): ``"hnsw"`` (the default, ``IndexHNSWFlat``) or ``"ivf"`` (``IndexIVFFlat``). Both
store the vectors uncompressed, so the graph / the lists only pick candidates; every candidate is re-scored exactly.

How the inner product becomes something the index can search (``IndexConfig.mips``; default: ``"augment"`` for
HNSW, ``"ip"`` for IVF, each kind's best on vectors shaped like the model's):

- ``"augment"``: the classic MIPS -> L2 reduction (Bachrach et al. 2014): each item gets one extra
  coordinate ``sqrt(phi^2 - |v|^2)`` (``phi`` = the largest norm at build), each query a 0 there, so
  ``|q' - v'|^2 = |q|^2 + phi^2 - 2 q·v`` and the L2-nearest rows are exactly the largest-inner-product ones; the
  graph / the k-means then work in a true metric space.
- ``"ip"``: the index runs on the inner product itself (HNSW linking items by inner product; IVF with spherical
  k-means, lists by direction). Only sound when norms are nearly equal.

The model's item vectors have nearly equal norms (its fusion ends in a LayerNorm), where both modes work; but the
inner-product graph loses a fifth to half of the answers as soon as norms spread, while ``augment`` is never far
behind and is exact in principle. IVF's spherical lists suit nearly equal norms better (hence its ``ip`` default).
Measurements: ``docs/serving.md`` ("ANN retrieval"), from ``scripts/bench_ann.py``.

Rows added later (:meth:`ItemIndex.add`) longer than every build row (``|v| > phi``) cannot be augmented and would be
the hubs an inner-product graph handles worst, so in both modes they go into a small exact side list scored on every
search (they are in the index too, keeping row numbers aligned).

Excluded rows are filtered exactly (over-fetch, then fetch more until ``k`` remain). FAISS's OpenMP thread count is
process-wide; it is set from the config before every call (``threads`` for search/add, ``build_threads`` for build),
since a serving process runs one thread. Files are FAISS's own format (``faiss.write_index``) followed by a small
JSON trailer with a CRC32 of the FAISS bytes and the metadata (see :meth:`ItemIndex.save`); FAISS ignores it.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

__all__ = ["AUTO_EXACT_BELOW", "IndexConfig", "ItemIndex"]

# Catalogue size under which an exact torch matmul + topk top-10 is at least as fast as ItemIndex.search with the
# default config (one query, one thread, D=128, 100 rows excluded as serving excludes seen items; the 2-core CPU box;
# scripts/bench_ann.py --crossover; table in docs/serving.md): the curves cross at ~15k items.
AUTO_EXACT_BELOW: int = 15_000

_KINDS = ("hnsw", "ivf")
_MIPS = ("augment", "ip")
_DEFAULT_MIPS = {"hnsw": "augment", "ivf": "ip"}
# Trailer: JSON metadata, then its byte length and this magic (names the writer and the trailer's version).
_MAGIC = b"MMRECIX1"
_FOOTER = struct.Struct("<Q8s")
_CHUNK = 1 << 24


@dataclass(frozen=True)
class IndexConfig:
    """How an :class:`ItemIndex` is built and searched.

    - ``kind``: ``"hnsw"`` or ``"ivf"``; ``mips``: ``"augment"``, ``"ip"`` or ``None`` = the kind's default
      (module docstring).
    - HNSW: ``m`` links per node, ``ef_construction`` (build beam), ``ef_search`` (search beam; FAISS widens it to
      the rows fetched when more are asked for).
    - IVF: ``nlist`` lists (0 = ``4 sqrt(N)``, at most ``N // 39``: FAISS's minimum of training points per
      centroid), ``nprobe`` lists scanned per query, ``train_size`` rows sampled to train the centroids (0 = all).
    - ``threads``: FAISS threads for search and add (1: a serving process owns one core); ``build_threads``: for
      build (0 = every core).
    - ``seed``: k-means and sampling seed.

    Defaults chosen on 1M vectors shaped like a trained model's, real interests as queries (``scripts/bench_ann.py``;
    numbers in docs/serving.md): HNSW M=32, ef_construction=100, augment, ef_search 256 reaches recall@10 0.984 at
    p50 ~0.36 ms; 128 misses 0.95, lower ef_construction needs a much wider search, higher M costs memory. IVF
    (``ip``, nprobe 128) reaches 0.994 at ~1.1 ms in 1.04x the raw vectors: the choice when memory matters more.
    """

    kind: str = "hnsw"
    mips: str | None = None
    m: int = 32
    ef_construction: int = 100
    ef_search: int = 256
    nlist: int = 0
    nprobe: int = 128
    train_size: int = 200_000
    threads: int = 1
    build_threads: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"IndexConfig.kind must be one of {_KINDS}, got {self.kind!r}")
        if self.mips is not None and self.mips not in _MIPS:
            raise ValueError(f"IndexConfig.mips must be one of {_MIPS}, got {self.mips!r}")
        for name in ("nprobe", "m", "ef_construction", "ef_search", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("nlist", "train_size", "build_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"IndexConfig.{name} must be >= 0, got {getattr(self, name)}")


def _as_matrix(x, dim: int | None, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(n, dim)`` array, or ``ValueError`` naming ``what``."""
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, D)"
        raise ValueError(f"{what} must have shape {want}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return a


def _norms(x: np.ndarray) -> np.ndarray:
    return np.sqrt((x.astype(np.float64) ** 2).sum(1))  # float64: phi^2 - |v|^2 must not go negative by rounding


class ItemIndex:
    """An ANN index over item vectors ``(N, D)``; rows are positions ``0..N-1`` in the order given, then added.

    Build with :meth:`build` or :meth:`load`. ``len(index)`` is ``N``; ``index.dim`` is ``D``; ``index.mips`` the
    mode in force (``"ip"`` or ``"augment"``). Concurrent :meth:`search` calls are safe (FAISS searches only read);
    :meth:`add` may reallocate the storage searches read, so callers serialise it against searches (a lock).
    """

    def __init__(self, index: faiss.Index, config: IndexConfig, dim: int, mips: str, phi: float,
                 exact_rows: Sequence[int] = ()) -> None:
        # Private: use build() or load(). ``index`` holds the vectors (D+1 columns when augmented); ``phi`` is the
        # largest build norm; ``exact_rows`` the rows added later with a norm above it.
        self._index = index
        self.config = config
        self.dim = dim
        self.mips = mips
        self._phi = float(phi)
        self._exact_rows = np.asarray(exact_rows, dtype=np.int64)
        self._view: np.ndarray | None = None
        #: JSON-able metadata saved with the index (e.g. which item each row is), given to :meth:`save`
        self.extra: dict = {}

    # -- building ----------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors, config: IndexConfig | None = None) -> ItemIndex:
        """An index over ``vectors (N, D)`` float32 (N >= 1), rows = their positions. Runs on
        ``config.build_threads`` threads and leaves FAISS at ``config.threads``."""
        config = config or IndexConfig()
        x = _as_matrix(vectors, None, "vectors")
        n, dim = x.shape
        if n < 1 or dim < 1:
            raise ValueError(f"vectors must be a non-empty (N, D) matrix, got {x.shape}")
        norms = _norms(x)
        phi = float(norms.max())
        mips = config.mips or _DEFAULT_MIPS[config.kind]
        data = _augment(x, phi) if mips == "augment" else x
        metric = faiss.METRIC_L2 if mips == "augment" else faiss.METRIC_INNER_PRODUCT
        faiss.omp_set_num_threads(config.build_threads or os.cpu_count() or 1)
        try:
            if config.kind == "ivf":
                index = cls._build_ivf(data, metric, config)
            else:
                index = faiss.IndexHNSWFlat(data.shape[1], config.m, metric)
                index.hnsw.efConstruction = config.ef_construction
                index.add(data)
        finally:
            faiss.omp_set_num_threads(config.threads)
        return cls(index, config, dim, mips, phi)

    @staticmethod
    def _build_ivf(x: np.ndarray, metric: int, config: IndexConfig) -> faiss.IndexIVFFlat:
        n, dim = x.shape
        # 4 sqrt(N) lists balances the coarse scan (nlist distances) against the list scans (nprobe N / nlist).
        nlist = config.nlist or int(round(4 * math.sqrt(n)))
        nlist = max(1, min(nlist, n // 39 or 1))
        quantizer = faiss.IndexFlatL2(dim) if metric == faiss.METRIC_L2 else faiss.IndexFlatIP(dim)
        # FAISS trains inner-product IVF with spherical k-means (lists by direction), L2 IVF with plain k-means.
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        index.cp.seed = config.seed
        index.cp.min_points_per_centroid = min(39, n // nlist)  # tiny catalogues: no warning for the 1-list case
        sample = x
        if config.train_size and n > config.train_size:
            rng = np.random.default_rng(config.seed)
            sample = x[np.sort(rng.choice(n, config.train_size, replace=False))]
        index.train(sample)
        # Row-ordered reconstruction (exact re-scoring, the exact fallback) needs the row -> list position map.
        index.make_direct_map(True)
        index.add(x)
        return index

    def add(self, vectors) -> np.ndarray:
        """Append ``vectors (M, D)`` as rows ``N..N+M-1`` without rebuilding; returns those rows ``(M,)`` int64.

        For a handful of new items: HNSW links them into the graph, IVF files them in their nearest list (the
        centroids are not retrained; rebuild once the catalogue has changed a lot). Rows longer than every build
        row also go into the exact side list (module docstring)."""
        x = _as_matrix(vectors, self.dim, "vectors")
        start = len(self)
        over = np.flatnonzero(_norms(x) > self._phi)
        faiss.omp_set_num_threads(self.config.threads)
        self._index.add(_augment(x, self._phi) if self.mips == "augment" else x)
        if len(over):
            self._exact_rows = np.concatenate([self._exact_rows, start + over])
        self._view = None  # the storage may have been reallocated
        return np.arange(start, start + len(x), dtype=np.int64)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    # -- stored vectors ----------------------------------------------------------------------------------------
    def vectors(self, rows) -> np.ndarray:
        """The stored vectors of ``rows`` (int array), ``(len(rows), D)`` float32 (a copy)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.config.kind == "hnsw":
            return self._hnsw_view()[rows, : self.dim]
        if len(rows) == 0:
            return np.empty((0, self.dim), np.float32)
        return self._index.reconstruct_batch(rows)[:, : self.dim]

    def _hnsw_view(self) -> np.ndarray:
        # Zero-copy (N, D or D+1) view of HNSW's flat storage: a copy would double the index's memory. It points
        # into memory FAISS owns, so it is dropped whenever add() may have reallocated it.
        if self._view is None:
            storage = faiss.downcast_index(self._index.storage)
            n, d = self._index.ntotal, self._index.d
            self._view = faiss.rev_swig_ptr(storage.get_xb(), n * d).reshape(n, d)
        return self._view

    # -- searching ---------------------------------------------------------------------------------------------
    def search(self, queries, k: int, exclude: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows by inner product for each of ``queries (B, D)``.

        ``exclude``: ``None`` or ``B`` int arrays (or ``None``) of row positions never to return for that query.
        Exclusion is exact: ``k + len(exclude[b])`` rows are fetched, the excluded ones dropped, and if fewer than
        ``k`` remain the fetch doubles (HNSW's beam and IVF's ``nprobe`` grow with it) until ``k`` are found; once
        a fetch would reach the whole catalogue, every row is scored exactly instead. Scores are exact inner
        products recomputed from the stored vectors, rows sorted by them (ties: lower row first).

        Returns ``scores (B, k)`` float32 and ``rows (B, k)`` int64, padded with ``-inf`` / ``-1`` where fewer than
        ``k`` rows are rankable (catalogue smaller than ``k`` + exclusions)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = _as_matrix(queries, self.dim, "queries")
        n_queries, n = len(q), len(self)
        if exclude is None:
            exclude = [None] * n_queries
        if len(exclude) != n_queries:
            raise ValueError(f"exclude must hold one entry per query ({n_queries}), got {len(exclude)}")
        excluded = [self._exclusion(e) for e in exclude]
        faiss.omp_set_num_threads(self.config.threads)

        scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
        rows = np.full((n_queries, k), -1, dtype=np.int64)
        # First round batched (one FAISS call: serving's B is usually 1, offline callers batch), fetching enough
        # for the longest exclusion list; queries still short of k retry alone with a doubled fetch.
        fetch = k + max((len(e) for e in excluded), default=0)
        found = self._candidates(q, fetch, 1) if fetch < n else None
        for b in range(n_queries):
            cand = None if found is None else found[b]
            growth = 1
            while True:
                if cand is None:  # the fetch reached the catalogue: rank every row exactly
                    cand = np.arange(n, dtype=np.int64)
                    complete = True
                else:
                    complete = False
                cand = cand[cand >= 0]
                cand = cand[~_member(cand, excluded[b])]
                enough = len(cand) >= k  # from the index alone: the side list must not stand in for its rows
                if len(self._exact_rows):
                    extra = self._exact_rows[~_member(self._exact_rows, excluded[b])]
                    cand = np.concatenate([cand, extra[~np.isin(extra, cand)]])
                if enough or complete:
                    break
                growth *= 2
                fetch_b = (k + len(excluded[b])) * growth
                cand = self._candidates(q[b : b + 1], fetch_b, growth)[0] if fetch_b < n else None
            s, r = self._exact_top(q[b], cand, k)
            scores[b, : len(s)], rows[b, : len(r)] = s, r
        return scores, rows

    def _exclusion(self, rows) -> np.ndarray:
        if rows is None:
            return np.empty(0, dtype=np.int64)
        # Sorted and unique (the over-fetch counts distinct rows; _member bisects). Sort + neighbour compare: a
        # fraction of np.unique's cost on the ~100-row lists of a served user.
        e = np.sort(np.asarray(rows, dtype=np.int64).reshape(-1))
        if len(e) > 1:
            e = e[np.concatenate(([True], e[1:] != e[:-1]))]
        if len(e) and (e[0] < 0 or e[-1] >= len(self)):
            raise ValueError(f"exclude rows must be in [0, {len(self)}), got {e[0] if e[0] < 0 else e[-1]}")
        return e

    def _candidates(self, q: np.ndarray, fetch: int, growth: int) -> np.ndarray:
        """``(B, fetch)`` candidate rows (``-1`` where FAISS found fewer) from the ANN structure."""
        if self.config.kind == "ivf":
            # Fetching more rows than the probed lists hold returns -1s: widen the probe as the fetch grows.
            params = faiss.SearchParametersIVF(nprobe=min(self._index.nlist, self.config.nprobe * growth))
        else:
            # HNSW's beam must hold at least the rows asked for (FAISS takes max(efSearch, k) itself; said here).
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, fetch))
        if self.mips == "augment":
            # Queries get 0 in the augmentation coordinate: L2 order over augmented rows = inner-product order.
            q = np.hstack([q, np.zeros((len(q), 1), np.float32)])
        _, found = self._index.search(q, fetch, params=params)
        return found

    def _exact_top(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # FAISS's own distances are not the scores when augmented (|q|^2 + phi^2 - 2 q·v loses digits in
        # float32), and rows from the exact side list have none: re-score every candidate the same way.
        if len(cand) == 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        s = (self.vectors(cand) @ q).astype(np.float32)
        order = np.lexsort((cand, -s))[:k]
        return s[order], cand[order]

    # -- files -------------------------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the index to ``path`` atomically: ``faiss.write_index`` to a temporary file beside it, then the
        trailer (JSON metadata + CRC32 of the FAISS bytes), fsync, rename over ``path``, fsync the folder. A crash
        leaves the old file or the new one, never a torn one. ``extra``: metadata to keep (default :attr:`extra`)."""
        path = Path(path)
        # The temporary sits beside the target (same filesystem: the rename is atomic) under a unique name
        # (concurrent savers never write into each other's file).
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            faiss.write_index(self._index, str(tmp))
            crc, size = _crc32(tmp, None)
            meta = {"format": 1, "kind": self.config.kind, "mips": self.mips, "dim": self.dim, "rows": len(self),
                    "phi": self._phi, "exact_rows": self._exact_rows.tolist(), "faiss_bytes": size, "crc32": crc,
                    "extra": self.extra if extra is None else extra}
            blob = json.dumps(meta).encode()
            with open(tmp, "ab") as f:
                f.write(blob + _FOOTER.pack(len(blob), _MAGIC))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; serving processes of other users read it
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable only once the folder is synced
        finally:
            os.close(fd)

    @classmethod
    def load(cls, path: str | Path, config: IndexConfig | None = None, dim: int | None = None,
             rows: int | None = None) -> ItemIndex:
        """The index saved at ``path``. ``config`` gives the search-time settings (``nprobe``/``ef_search``,
        ``threads``; its ``kind`` must match the file's). ``dim`` / ``rows``: the dimension and row count the caller
        expects (e.g. the model's D and catalogue size), checked when given. ``config.mips`` None takes the file's mode.

        Raises ``ValueError`` naming ``path`` for a file that is not such an index, is truncated or corrupt (the
        CRC is checked before FAISS parses anything) or does not match ``config``/``dim``/``rows``;
        ``FileNotFoundError`` when there is none."""
        path = Path(path)
        total = path.stat().st_size
        with open(path, "rb") as f:
            if total < _FOOTER.size:
                raise ValueError(f"{path}: not an mmrec item index (truncated: {total} bytes)")
            f.seek(total - _FOOTER.size)
            blob_len, magic = _FOOTER.unpack(f.read(_FOOTER.size))
            if magic != _MAGIC or blob_len > total - _FOOTER.size:
                raise ValueError(f"{path}: not an mmrec item index, or truncated (no valid trailer)")
            f.seek(total - _FOOTER.size - blob_len)
            try:
                meta = json.loads(f.read(blob_len))
                kind, mips, d, n = meta["kind"], meta["mips"], int(meta["dim"]), int(meta["rows"])
                phi = float(meta["phi"])
                size, crc = int(meta["faiss_bytes"]), int(meta["crc32"])
                exact_rows = np.asarray(meta["exact_rows"], dtype=np.int64).reshape(-1)
                extra = dict(meta.get("extra") or {})
                if kind not in _KINDS or mips not in _MIPS or ((exact_rows < 0) | (exact_rows >= n)).any():
                    raise ValueError(f"kind {kind!r}, mips {mips!r} or side-list rows out of range")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}: corrupt item index trailer ({e})") from e
        if size != total - _FOOTER.size - blob_len:
            raise ValueError(f"{path}: corrupt or truncated item index ({size} FAISS bytes expected)")
        if _crc32(path, size)[0] != crc:
            raise ValueError(f"{path}: corrupt item index (checksum mismatch)")
        config = config or IndexConfig(kind=kind)
        if config.kind != kind or (config.mips or mips) != mips:
            raise ValueError(f"{path}: holds a {kind!r} index (mips {mips!r}), the config asks for {config.kind!r} "
                             f"(mips {config.mips!r})")
        if dim is not None and d != dim:
            raise ValueError(f"{path}: index of dimension {d}, expected {dim}")
        if rows is not None and n != rows:
            raise ValueError(f"{path}: index of {n} rows, expected {rows}")
        try:
            index = faiss.read_index(str(path))  # reads the FAISS part and stops before the trailer
        except RuntimeError as e:
            raise ValueError(f"{path}: unreadable FAISS index ({str(e).splitlines()[0][:200]})") from e
        cls_ = faiss.IndexIVFFlat if kind == "ivf" else faiss.IndexHNSWFlat
        metric = faiss.METRIC_L2 if mips == "augment" else faiss.METRIC_INNER_PRODUCT
        stored = d + 1 if mips == "augment" else d
        if not isinstance(index, cls_) or index.d != stored or index.ntotal != n or index.metric_type != metric:
            raise ValueError(f"{path}: FAISS index {type(index).__name__} d={index.d} n={index.ntotal} does not "
                             f"match its trailer ({kind}, {mips}, dimension {d}, {n} rows)")
        if kind == "ivf" and index.direct_map.type != faiss.DirectMap.Array:
            raise ValueError(f"{path}: IVF index without its row map")
        faiss.omp_set_num_threads(config.threads)
        loaded = cls(index, config, d, mips, phi, exact_rows)
        loaded.extra = extra
        return loaded

    def __repr__(self) -> str:
        return f"ItemIndex({self.config.kind}, rows={len(self)}, dim={self.dim}, config={asdict(self.config)})"


def _member(values: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """``(len(values),)`` bool: which ``values`` are in ``sorted_unique`` (bisection; np.isin costs ~10x more on
    the few hundred rows of one query)."""
    if len(sorted_unique) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_unique, values), len(sorted_unique) - 1)
    return sorted_unique[pos] == values


def _augment(x: np.ndarray, phi: float) -> np.ndarray:
    """``(n, D+1)``: ``x`` with ``sqrt(phi^2 - |x|^2)`` appended (0 for rows longer than ``phi``)."""
    extra = np.sqrt(np.maximum(phi * phi - _norms(x) ** 2, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([x, extra[:, None]]))


def _crc32(path: Path, size: int | None) -> tuple[int, int]:
    """CRC32 of the first ``size`` bytes of ``path`` (all when None), and the bytes read."""
    crc, read = 0, 0
    with open(path, "rb") as f:
        while size is None or read < size:
            chunk = f.read(_CHUNK if size is None else min(_CHUNK, size - read))
            if not chunk:
                break
            crc, read = zlib.crc32(chunk, crc), read + len(chunk)
    if size is not None and read != size:
        raise ValueError(f"{path}: truncated item index ({read} of {size} bytes)")
    return crc, read
