"""Content kNN: the classic content matcher. A user's profile is the recency-weighted mean of their history's item
content vectors (the store's text features), and every item is ranked by its cosine to that profile.

It needs no training and reads no interaction statistics, so it ranks items never seen in training exactly as it
ranks the others: the yardstick for cold items (docs/evaluation.md). Recency weights halve every ``half_life``
events back from the last one.

Reference: Lops, de Gemmis, Semeraro, "Content-based Recommender Systems: State of the Art and Trends",
Recommender Systems Handbook, 2011 (profile = weighted centroid of liked items; cosine matching).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..data.batch import SequenceBatch
from ..data.split import Split
from .base import BaselineModel

__all__ = ["ContentKNN"]


class ContentKNN(BaselineModel):
    """``scores(batch) -> (B, N)`` cosine between each user's profile and every item's content vector.

    ``content (N, T)``: one content vector per catalogue item (a zero row: an item without content, scored 0).
    ``max_len``: events of history read; ``half_life``: events back at which an event weighs half the last one.

    Example::

        knn = ContentKNN(content_vectors(data.features))
        evaluate(knn, build_behaviour(data.split), "test")
    """

    trainable: ClassVar[bool] = False

    def __init__(self, content: torch.Tensor, half_life: float = 10.0, max_len: int = 50) -> None:
        super().__init__()
        if content.ndim != 2 or len(content) < 1:
            raise ValueError(f"content: expected (n_items, dim) vectors, got shape {tuple(content.shape)}")
        if not half_life > 0:
            raise ValueError(f"half_life: must be > 0, got {half_life}")
        if max_len < 1:
            raise ValueError(f"max_len: must be >= 1, got {max_len}")
        self.n_items, self.half_life, self.max_len = len(content), float(half_life), max_len
        # one zero row past the catalogue: the padding index reads nothing
        unit = F.normalize(content.float(), dim=1)
        self.register_buffer("content", torch.cat([unit, unit.new_zeros(1, unit.shape[1])]))

    def prepare(self, split: Split) -> None:
        if split.n_items != self.n_items:
            raise ValueError(f"split: has {split.n_items} items, the content vectors {self.n_items}")

    def profiles(self, batch: SequenceBatch) -> torch.Tensor:
        """``(B, T)`` unit profiles: recency-weighted means of the rows' item content vectors (zero without
        history)."""
        batch = batch.padded(max(batch.width, 1))
        position = torch.arange(batch.width, device=batch.items.device)
        age = (batch.lengths[:, None] - 1 - position).to(torch.float32)  # 0 for the last real event
        weight = torch.where(age >= 0, 0.5 ** (age / self.half_life), torch.zeros_like(age))  # (B, L)
        summed = (weight.unsqueeze(-1) * self.content[batch.items]).sum(1)  # (B, T)
        return F.normalize(summed, dim=1)

    def scores(self, batch: SequenceBatch, exclude: torch.Tensor | None = None) -> torch.Tensor:
        return self.profiles(batch) @ self.content[: self.n_items].T
