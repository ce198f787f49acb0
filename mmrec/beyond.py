"""Beyond-accuracy metrics of top lists: catalogue coverage, Gini index of exposure, intra-list diversity, novelty.

They read each user's top :data:`~mmrec.evaluation.LIST_LENGTH` list as :func:`mmrec.evaluation.evaluate` keeps it
(``EvalResult.top_items``: ``(U, k) int64`` item positions, best first, the history excluded but the target, ``-1``
past the rankable items, which every metric here skips). With ``U`` lists over ``N`` catalogue items:

- ``coverage@10``: the share of the ``N`` items that appear in at least one list.
- ``gini@10``: the Gini index of exposure over all ``N`` items, an item's exposure being how many lists hold it:
  ``sum_i (2 i - N - 1) c_(i) / (N sum_i c_i)`` over the counts ``c`` sorted ascending (``i = 1..N``); 0 when every
  item is shown equally often, ``(N - 1) / N`` when one item takes every place.
- ``ild@10``: intra-list diversity, each list's mean pairwise cosine distance ``1 - cos(v_a, v_b)`` of its items'
  vectors, averaged over lists. To compare models, every model is measured with one item representation: the
  store's text-encoder features (:func:`content_vectors`; image features where a store holds no text), never a
  model's own vectors. Items without a vector (a zero row) are skipped; a list with fewer than two such items has
  none (NaN) and is left out of the mean.
- ``novelty@10``: each list's mean ``-log2 p(item)`` averaged over lists, ``p`` being the item's training
  popularity: the share of the split's users with the item in their training part (:func:`item_popularity`).
  An item no user trained on counts as if one had: ``p = max(users, 1) / n_users``, so it scores the most novel
  value, ``log2(n_users)``, rather than infinity.

Example::

    result = evaluate(model, data.behaviour, "test")
    beyond_accuracy(result.top_items, data.split, content_vectors(data.features))
    # {"coverage@10": 0.21, "gini@10": 0.93, "ild@10": 0.61, "novelty@10": 6.2}
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data.split import Split
from .features import ItemFeatures

__all__ = ["BEYOND_METRICS", "beyond_accuracy", "catalogue_coverage", "content_vectors", "exposure_counts",
           "gini_index", "intra_list_diversities", "item_popularity", "novelties"]

BEYOND_METRICS: tuple[str, ...] = ("coverage@10", "gini@10", "ild@10", "novelty@10")
"""Names of the beyond-accuracy metrics, in report order (lists of ``LIST_LENGTH`` = 10 items)."""

_CHUNK = 2048  # lists per (chunk, k, k) similarity block in intra_list_diversities


def _lists(lists) -> np.ndarray:
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim != 2:
        raise ValueError(f"lists: must be a (U, k) array of item positions, got shape {lists.shape}")
    return lists


def exposure_counts(lists: np.ndarray, n_items: int) -> np.ndarray:
    """``(U, k) -> (n_items,) int64``: how many lists hold each item (``-1`` places skipped)."""
    lists = _lists(lists)
    shown = lists[lists >= 0]
    if len(shown) and shown.max() >= n_items:
        raise ValueError(f"lists: item position {int(shown.max())} is outside a catalogue of {n_items}")
    return np.bincount(shown, minlength=n_items).astype(np.int64)


def catalogue_coverage(lists: np.ndarray, n_items: int) -> float:
    """Share of the ``n_items`` catalogue items that appear in at least one of the ``(U, k)`` lists."""
    return float((exposure_counts(lists, n_items) > 0).sum() / n_items)


def gini_index(counts: np.ndarray) -> float:
    """Gini index of exposure counts ``(N,)`` (every catalogue item, unshown ones as 0): 0 = equal exposure,
    ``(N - 1) / N`` = one item holds every place; NaN when nothing is shown."""
    counts = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(counts), counts.sum()
    if n == 0 or total == 0:
        return math.nan
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * i - n - 1) * counts).sum() / (n * total))


def item_popularity(split: Split) -> np.ndarray:
    """``(n_items,) float64``: the share of the split's users whose training part holds each item (a user counts
    once however often they had it), floored at ``1 / n_users`` for items no user trained on."""
    train = split.train
    pairs = np.unique(train.row_of * split.n_items + train.item)  # distinct (user, item) pairs
    users = np.bincount(pairs % split.n_items, minlength=split.n_items)
    return np.maximum(users, 1) / max(split.n_users, 1)


def novelties(lists: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """``(U, k) , (N,) -> (U,) float64``: each list's mean ``-log2 popularity`` of its items (NaN for a list with
    none). ``popularity`` in (0, 1], e.g. :func:`item_popularity`."""
    lists = _lists(lists)
    popularity = np.asarray(popularity, dtype=np.float64)
    if (popularity <= 0).any() or (popularity > 1).any():
        raise ValueError("popularity: must be in (0, 1] (smooth items no user trained on, e.g. item_popularity)")
    shown = lists >= 0
    surprise = np.where(shown, -np.log2(popularity[np.maximum(lists, 0)]), 0.0)
    count = shown.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, surprise.sum(1) / count, np.nan)


def intra_list_diversities(lists: np.ndarray, vectors: torch.Tensor) -> np.ndarray:
    """``(U, k) , (N, D) -> (U,) float64``: each list's mean pairwise cosine distance ``1 - cos`` over its items
    that have a vector (non-zero row of ``vectors``); NaN for a list with fewer than two of them."""
    lists = _lists(lists)
    vectors = torch.as_tensor(vectors).float()
    unit = torch.nn.functional.normalize(vectors, dim=1)  # zero rows stay zero
    has_vector = vectors.norm(dim=1) > 0
    k = lists.shape[1]
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    out = np.empty(len(lists), dtype=np.float64)
    for start in range(0, len(lists), _CHUNK):
        chunk = torch.from_numpy(lists[start : start + _CHUNK])
        valid = (chunk >= 0) & has_vector[chunk.clamp(min=0)]  # (C, k)
        members = unit[chunk.clamp(min=0)]  # (C, k, D)
        similarity = members @ members.transpose(1, 2)  # (C, k, k)
        pairs = valid[:, :, None] & valid[:, None, :] & off_diagonal  # (C, k, k)
        distance = ((1.0 - similarity.double()) * pairs).sum((1, 2))
        n_pairs = pairs.sum((1, 2)).double()
        out[start : start + len(chunk)] = torch.where(n_pairs > 0, distance / n_pairs.clamp(min=1),
                                                      torch.tensor(math.nan, dtype=torch.float64)).numpy()
    return out


def content_vectors(features: ItemFeatures) -> torch.Tensor:
    """``(N, D)`` the one item representation intra-list diversity reads for every model: the store's text-encoder
    features, or its image features where it holds no text (zero rows: items without that modality)."""
    text_present = features.text.shape[1] > 0 and bool((features.text != 0).any())
    return features.text if text_present else features.image


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if len(present) else math.nan


def beyond_accuracy(lists: np.ndarray, split: Split, vectors: torch.Tensor) -> dict[str, float]:
    """:data:`BEYOND_METRICS` of the ``(U, k)`` top lists (``EvalResult.top_items``): coverage and Gini over the
    split's catalogue, intra-list diversity over ``vectors (n_items, D)`` (:func:`content_vectors`) and novelty
    against the split's training popularity (:func:`item_popularity`), the last two averaged over lists."""
    if len(vectors) != split.n_items:
        raise ValueError(f"vectors: {len(vectors)} rows, the split has {split.n_items} items")
    return {
        "coverage@10": catalogue_coverage(lists, split.n_items),
        "gini@10": gini_index(exposure_counts(lists, split.n_items)),
        "ild@10": _nanmean(intra_list_diversities(lists, vectors)),
        "novelty@10": _nanmean(novelties(lists, item_popularity(split))),
    }
