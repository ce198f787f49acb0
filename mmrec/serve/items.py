"""The catalogue as serving holds it: item ids, an id -> row map and the item vectors, built once at load.

Training stores every item's vector (``item_vectors`` table, stamped with the model). Loading reads them in bulk
instead of running the fusion over every item again; only items without a vector of this model (embedded or
re-embedded since training: embedding deletes the stale vector) are fused, from their stored features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..store import Store
from ..trained import TrainedModel

__all__ = ["ServedItems", "load_items"]


@dataclass(frozen=True)
class ServedItems:
    """``ids (N,)`` in the store's id order, ``row`` (id -> position), ``vectors (N, D)`` contiguous on the model's
    device, ``new (N,) bool`` (items the model never trained on), ``new_bias (N,)`` (the new-item policy's
    retrieval lift per item, 0 for trained items) and ``new_rows (M,)`` (positions of the new items)."""

    ids: list[str]
    row: dict[str, int]
    vectors: torch.Tensor
    new: torch.Tensor
    new_bias: torch.Tensor
    new_rows: torch.Tensor
    computed: int
    """How many vectors were fused at load rather than read (items embedded after training)."""
    mean: torch.Tensor
    """``(D,)`` the catalogue's mean item vector."""

    def __len__(self) -> int:
        return len(self.ids)


def trained_mask(trained: TrainedModel, item_ids: Sequence[str]) -> np.ndarray:
    """``(N,) bool``: which of ``item_ids`` occurred in training (their ID embedding is learned)."""
    known = {trained.meta["item_ids"][p] for p in trained.meta["known_items"]}
    return np.fromiter((i in known for i in item_ids), dtype=bool, count=len(item_ids))


@torch.no_grad()
def load_items(store: Store, trained: TrainedModel, device: torch.device) -> ServedItems:
    """The store's items with this model's vectors: read when stored for this model, fused otherwise."""
    network = trained.network
    ids = store.item_ids()
    row = {item_id: i for i, item_id in enumerate(ids)}
    stored_ids, matrix, model = store.item_vectors()
    dim = network.config.scorer.dim
    vectors = np.zeros((len(ids), dim), np.float32)
    have = np.zeros(len(ids), bool)
    if model == trained.model_id and matrix.shape[1] == dim:
        at = pd.Index(stored_ids).get_indexer(ids)  # (N,) each item's stored row, -1: none
        have = at >= 0
        vectors = matrix[np.where(have, at, 0)]  # one gather, no per-id Python
        vectors[~have] = 0.0
    missing = np.flatnonzero(~have)
    if len(missing):
        # Neighbour-built new items read every trained item's text, so they are fused with the whole catalogue;
        # any other item's vector depends on its own features only.
        whole = bool(network.new_items.neighbours) and network.config.use_text
        subset = ids if whole else [ids[i] for i in missing]
        fused = network.item_vectors(trained.item_features(store, subset)).cpu().numpy()
        vectors[missing] = fused[missing] if whole else fused
    new = torch.from_numpy(~trained_mask(trained, ids)).to(device)
    return ServedItems(
        ids=ids, row=row, vectors=torch.from_numpy(vectors).to(device).contiguous(), new=new,
        new_bias=network.new_items.bias * new.float(), new_rows=torch.nonzero(new).squeeze(1),
        computed=len(missing), mean=torch.from_numpy(vectors.mean(0) if len(vectors) else vectors.sum(0)).to(device))
