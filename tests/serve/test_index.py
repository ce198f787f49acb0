"""ItemIndex (mmrec.serve.index): ANN recall against exact search, exact exclusion, small catalogues, add, files.

Vectors are made the way the model makes them (fusion/model.py ends in a LayerNorm): clustered pooled vectors of
low effective dimension, layer-normalised, scaled by a learned-looking gain and shifted by a large shared bias, at
nearly equal norms. That gives what trained vectors have (ml-latest-small, 3 epochs: norms 11.22-11.26, the mean
vector 10.6 long, effective dimension ~26) and what makes them hard for ANN search: every item in one narrow cone.
Queries are shaped like real interests (:func:`interests`). ``spread`` scales rows by log-normal factors, for norms
that vary.
"""

import numpy as np
import pytest

from mmrec.serve.index import AUTO_EXACT_BELOW, IndexConfig, ItemIndex

D = 128


def catalogue(n: int, seed: int = 0, spread: float = 0.0) -> np.ndarray:
    """``(n, D)`` float32 item vectors shaped like a trained model's (module docstring)."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((D, D)) * (1.0 / (1 + np.arange(D)) ** 0.4)  # decaying spectrum: eff. dim ~25
    centres = rng.standard_normal((64, D)) @ mixing
    pooled = centres[rng.integers(0, 64, n)] + 0.7 * rng.standard_normal((n, D)) @ mixing
    z = (pooled - pooled.mean(1, keepdims=True)) / pooled.std(1, keepdims=True)
    gain = 0.35 * (1 + 0.1 * rng.standard_normal(D))
    bias = rng.standard_normal(D) * 10.5 / np.sqrt(D)
    v = z * gain + bias
    # Trained norms are nearly equal (the LayerNorm's bias learns to stay clear of the items' variation: CV 0.001 on
    # ml-latest-small); a random bias is not, so rows are set to such norms, with 1% spread.
    v *= (11.2 * np.exp(0.01 * rng.standard_normal(n)) / np.linalg.norm(v, axis=1))[:, None]
    if spread:
        v *= np.exp(spread * rng.standard_normal(n))[:, None]
    return v.astype(np.float32)


def interests(vectors: np.ndarray, b: int, seed: int = 1) -> np.ndarray:
    """``(b, D)`` queries shaped like real interests: ~1.9 long, sharing one direction (mean cosine between users
    0.86 on ml-latest-small), a little along the items' mean, and pointing where the items vary: a trained interest
    separates items, so the items' score variance along it is ~5x that along a random direction (5.4 measured;
    random directions, 1x, are far harder for any ANN index and not what the model asks)."""
    rng = np.random.default_rng(seed)
    centred = vectors - vectors.mean(0)
    w, u = np.linalg.eigh(centred.T @ centred / len(vectors))
    root = (u * np.sqrt(np.maximum(w, 0))) @ u.T  # covariance^(1/2): draws along the items' variance
    mean = vectors.mean(0) / np.linalg.norm(vectors.mean(0))
    shared = root @ rng.standard_normal(D)
    shared = shared / np.linalg.norm(shared) + 0.15 * mean
    noise = rng.standard_normal((b, D)) @ root / np.sqrt(np.trace(root @ root))
    return (1.8 * shared / np.linalg.norm(shared) + 0.6 * noise).astype(np.float32)


def exact(vectors, queries, k, exclude=None):
    s = queries @ vectors.T
    if exclude is not None:
        for b, e in enumerate(exclude):
            s[b, e] = -np.inf
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, rows, 1), rows


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])


@pytest.fixture(scope="module")
def cone():
    x = catalogue(20_000)
    return x, interests(x, 200)


@pytest.fixture(scope="module")
def cone_hnsw(cone):
    return ItemIndex.build(cone[0], IndexConfig(build_threads=2))


@pytest.mark.parametrize("kind,spread", [("hnsw", 0.0), ("hnsw", 0.3), ("ivf", 0.0)])
def test_recall_against_exact(kind, spread):
    x = catalogue(20_000, spread=spread)
    q = interests(x, 200)
    norms = np.linalg.norm(x, axis=1)
    assert spread or norms.std() / norms.mean() < 0.02  # the LayerNorm-like shape: nearly equal norms
    index = ItemIndex.build(x, IndexConfig(kind=kind, build_threads=2))
    assert index.mips == {"hnsw": "augment", "ivf": "ip"}[kind] and len(index) == 20_000 and index.dim == D
    scores, rows = index.search(q, 10)
    assert scores.shape == rows.shape == (200, 10) and scores.dtype == np.float32 and rows.dtype == np.int64
    truth_scores, truth = exact(x, q, 10)
    assert recall(rows, truth) >= 0.95
    # Scores are the exact inner products of the returned rows, best first.
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", q, x[rows]), rtol=1e-5, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_the_exact_answers_are_spread_over_the_catalogue(cone):
    """The recall test is not trivial: different queries want different items, and they are not a handful."""
    x, q = cone
    _, truth = exact(x, q, 10)
    assert len(np.unique(truth)) > 100


def test_exclusion_is_exact(cone, cone_hnsw):
    x, q = cone
    q = q[:50]
    _, top = exact(x, q, 5)
    rng = np.random.default_rng(3)
    exclude = [np.concatenate([top[b], rng.choice(len(x), 200, replace=False)]) for b in range(len(q))]
    scores, rows = cone_hnsw.search(q, 10, exclude)
    assert (rows >= 0).all() and np.isfinite(scores).all()  # k rows each
    for b in range(len(q)):
        assert not set(rows[b]) & set(exclude[b].tolist())
        assert len(set(rows[b])) == 10
    truth_scores, truth = exact(x, q, 10, exclude)
    assert recall(rows, truth) >= 0.95
    # Whenever the exact top-k rows were among the candidates, the result is exactly the exact top-k.
    hits = [b for b in range(len(q)) if set(truth[b]) <= set(rows[b])]
    assert hits
    for b in hits:
        np.testing.assert_array_equal(rows[b], truth[b])


def test_exclusion_fetches_more_until_k_found(monkeypatch):
    """IVF probing one list of many (~40 rows each) runs out of candidates once excluded rows fill it: the search
    must widen (and finally score everything) instead of returning fewer than k rows."""
    x = catalogue(4_000, seed=5)
    q = interests(x, 3, seed=6)
    index = ItemIndex.build(x, IndexConfig(kind="ivf", nlist=100, nprobe=1, build_threads=2))
    _, probed = index.search(q, 40)
    exclude = [probed[b] for b in range(3)]  # about everything the first probe holds
    rounds = []
    candidates = index._candidates
    monkeypatch.setattr(index, "_candidates", lambda q, fetch, growth: rounds.append(growth) or
                        candidates(q, fetch, growth))
    scores, rows = index.search(q, 10, exclude)
    assert max(rounds) > 1  # a second, wider round ran
    assert (rows >= 0).all()  # (recall is not the point: one probed list of 100 is a deliberately poor index)
    for b in range(3):
        assert not set(rows[b]) & set(exclude[b].tolist())
    # Almost everything excluded: the exact fallback returns the rows left, best first, then padding.
    keep = np.array([7, 1234, 3999])
    everything_else = [np.setdiff1d(np.arange(len(x)), keep)] * 3
    scores, rows = index.search(q, 5, everything_else)
    for b in range(3):
        order = keep[np.argsort(-(x[keep] @ q[b]))]
        np.testing.assert_array_equal(rows[b], np.concatenate([order, [-1, -1]]))
        np.testing.assert_allclose(scores[b, :3], x[order] @ q[b], rtol=1e-5, atol=1e-5)
        assert np.isneginf(scores[b, 3:]).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_catalogue_smaller_than_k(kind):
    x = catalogue(5, seed=2)
    q = interests(x, 2)
    index = ItemIndex.build(x, IndexConfig(kind=kind, build_threads=1))
    scores, rows = index.search(q, 10)
    truth_scores, truth = exact(x, q, 5)
    np.testing.assert_array_equal(rows[:, :5], truth)
    np.testing.assert_allclose(scores[:, :5], truth_scores, rtol=1e-5, atol=1e-5)
    assert (rows[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    _, rows = index.search(q, 10, [np.array([truth[0, 0], truth[0, 1]]), None])
    assert list(rows[0]) == list(truth[0, 2:]) + [-1] * 7
    assert list(rows[1, :5]) == list(truth[1])


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_add_appends_rows_without_rebuild(kind, cone):
    x, q = cone
    x = x[:5_000]
    index = ItemIndex.build(x, IndexConfig(kind=kind, build_threads=2))
    q = q[:3]
    direction = q[0] / np.linalg.norm(q[0])
    norm = np.linalg.norm(x, axis=1).max()
    new = np.stack([direction * norm * 3,  # longer than any build row: the exact side list
                    direction * norm * 0.999,  # within the build norms: found through the index
                    x[17] + 0.01])
    assert list(index.add(new)) == [5_000, 5_001, 5_002]
    assert len(index) == 5_003
    scores, rows = index.search(q, 10)
    assert rows[0, 0] == 5_000 and rows[0, 1] == 5_001
    np.testing.assert_allclose(scores[0, :2], [new[0] @ q[0], new[1] @ q[0]], rtol=1e-5)
    # The long row wins for every query pointing roughly its way; excluded, it is gone and the rest stays exact.
    _, rows = index.search(q[:1], 10, [np.array([5_000])])
    assert rows[0, 0] == 5_001 and 5_000 not in rows[0]
    np.testing.assert_allclose(index.vectors([5_002]), new[2:], rtol=1e-6)


@pytest.mark.parametrize("kind,mips", [("hnsw", "augment"), ("hnsw", "ip"), ("ivf", "augment"), ("ivf", "ip")])
def test_save_load_round_trip(tmp_path, kind, mips):
    x = catalogue(3_000, seed=4)
    q = interests(x, 20)
    index = ItemIndex.build(x, IndexConfig(kind=kind, mips=mips, build_threads=2))
    index.add(q[:1] * 50)  # an exact side-list row must survive the round trip
    path = tmp_path / "items.index"
    index.save(path)
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temporary left behind
    loaded = ItemIndex.load(path, IndexConfig(kind=kind), dim=D, rows=3_001)
    assert loaded.mips == index.mips and len(loaded) == 3_001
    exclude = [np.array([b, 2 * b]) for b in range(20)]
    for a, b in zip(index.search(q, 10, exclude), loaded.search(q, 10, exclude), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.search(q[:1], 1)[1][0, 0] == 3_000
    index.save(path)  # overwriting an existing file works too
    assert len(ItemIndex.load(path)) == 3_001


def test_load_rejects_bad_files_naming_them(tmp_path, cone_hnsw):
    path = tmp_path / "good.index"
    small = ItemIndex.build(catalogue(500, seed=9), IndexConfig(build_threads=1))
    small.save(path)
    data = path.read_bytes()
    cases = {
        "empty.index": b"",
        "garbage.index": b"not an index at all" * 10,
        "truncated.index": data[: len(data) // 2],
        "tail_cut.index": data[:-3],
        "flipped.index": data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:],
    }
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=name):
            ItemIndex.load(bad)
    with pytest.raises(ValueError, match="good.index.*dimension"):
        ItemIndex.load(path, dim=64)
    with pytest.raises(ValueError, match="good.index.*rows"):
        ItemIndex.load(path, rows=501)
    with pytest.raises(ValueError, match="good.index"):
        ItemIndex.load(path, IndexConfig(kind="ivf"))
    with pytest.raises(FileNotFoundError):
        ItemIndex.load(tmp_path / "missing.index")


def test_threads_and_input_checks(cone, cone_hnsw):
    import faiss

    x, q = cone
    cone_hnsw.search(q[:1], 10)
    assert faiss.omp_get_max_threads() == 1  # serving default: one thread per process
    with pytest.raises(ValueError, match="queries"):
        cone_hnsw.search(q[:, :64], 10)
    with pytest.raises(ValueError, match="exclude"):
        cone_hnsw.search(q[:2], 10, [np.array([len(x)]), None])
    with pytest.raises(ValueError, match="exclude"):
        cone_hnsw.search(q[:2], 10, [None])
    with pytest.raises(ValueError, match="k must be"):
        cone_hnsw.search(q[:1], 0)
    with pytest.raises(ValueError, match="kind"):
        IndexConfig(kind="flat")
    assert AUTO_EXACT_BELOW > 0
