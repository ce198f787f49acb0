"""Baselines: ID-only (popularity, BPR, GRU4Rec, SASRec) and content kNN, networks on the contract every mmrec
model shares (:mod:`mmrec.baselines.base`); :func:`mmrec.train.baselines.fit_baseline` trains them.

Example::

    from mmrec.baselines import build_baseline
    from mmrec.train.baselines import BaselineTrainConfig, fit_baseline
    model = build_baseline("sasrec", split)
    result = fit_baseline(model, split, BaselineTrainConfig(epochs=200))
"""

from __future__ import annotations

import torch

from ..data.split import Split
from .base import BaselineModel, SequentialBaseline
from .bpr import BPR, BPRConfig, PairBatch, PairData
from .content_knn import ContentKNN
from .gru4rec import GRU4Rec, GRU4RecConfig
from .popularity import Popularity
from .sasrec import SASRec, SASRecConfig

__all__ = [
    "BASELINES", "BPR", "BPRConfig", "BaselineModel", "ContentKNN", "GRU4Rec", "GRU4RecConfig", "PairBatch", "PairData",
    "Popularity", "SASRec", "SASRecConfig", "SequentialBaseline", "build_baseline",
]

BASELINES: tuple[str, ...] = ("pop", "bpr", "gru4rec", "sasrec", "content-knn")
"""Names accepted by :func:`build_baseline`."""


def build_baseline(name: str, split: Split, content: torch.Tensor | None = None) -> BaselineModel:
    """A baseline with its default config, sized for ``split`` (seed torch first to fix its initial weights).
    ``content (n_items, T)``: the items' content vectors, which ``"content-knn"`` ranks by
    (:func:`mmrec.beyond.content_vectors` of the store's features)."""
    key = name.strip().lower()
    if key == "content-knn":
        if content is None:
            raise ValueError("content-knn ranks items by their content: pass content=(n_items, dim) vectors")
        return ContentKNN(content)
    if key == "pop":
        return Popularity(split.n_items)
    if key == "bpr":
        return BPR(split.n_users, split.n_items)
    if key == "gru4rec":
        return GRU4Rec(split.n_items)
    if key == "sasrec":
        return SASRec(split.n_items)
    raise ValueError(f"name: unknown baseline {name!r}; choose from {list(BASELINES)}")
