"""GRU4Rec: a GRU over the item-ID embeddings of a user's sequence, cross-entropy over all items.

Reference: Hidasi, Karatzoglou, Baltrunas, Tikk, "Session-based Recommendations with Recurrent Neural Networks",
ICLR 2016. As RecBole's ``GRU4Rec`` with ``loss_type: CE``: embedding 64 (Xavier-normal), dropout 0.3 on the
embeddings, one bias-free GRU layer of 128 (Xavier-uniform), a dense layer back to 64, scores = dot product with
the (shared) item embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import SequentialBaseline
from ..data.batch import SequenceBatch

__all__ = ["GRU4Rec", "GRU4RecConfig"]


@dataclass(frozen=True)
class GRU4RecConfig:
    """RecBole's defaults. ``max_len``: positions per training window and evaluation context."""

    embedding_size: int = 64
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.3
    max_len: int = 50
    stride: int | None = None

    def __post_init__(self) -> None:
        for name in ("embedding_size", "hidden_size", "num_layers", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")


class GRU4Rec(SequentialBaseline):
    """``(B, L) item ids -> (B, L, embedding_size)`` next-item representations; scores ``(B, n_items)``.

    Example::

        model = GRU4Rec(split.n_items)
        fit_baseline(model, split, BaselineTrainConfig(epochs=100))
    """

    def __init__(self, n_items: int, config: GRU4RecConfig | None = None) -> None:
        self.config = config or GRU4RecConfig()
        super().__init__(n_items, self.config.max_len, self.config.stride)
        c = self.config
        self.item_embedding = nn.Embedding(n_items + 1, c.embedding_size, padding_idx=n_items)
        self.emb_dropout = nn.Dropout(c.dropout)
        self.gru = nn.GRU(c.embedding_size, c.hidden_size, c.num_layers, bias=False, batch_first=True)
        self.dense = nn.Linear(c.hidden_size, c.embedding_size)
        nn.init.xavier_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(weight)

    def encode(self, batch: SequenceBatch) -> torch.Tensor:
        # right padding: padded steps come after every real step, so they never reach a real output
        x = self.emb_dropout(self.item_embedding(batch.items))  # (B, L, E)
        out, _ = self.gru(x)  # (B, L, H)
        return self.dense(out)  # (B, L, E)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight[: self.n_items]  # (n_items, E)
