"""Scorer: an MLP over (interest, candidate) giving the probability that the user engages with the candidate.

For top-k over a whole catalogue, candidates are first retrieved by the exact dot product ``interest . item``
(a matrix product over every item: exact, not approximate), then the MLP re-ranks the best ``rerank`` of them.
The MLP sees the dot product as an input and learns a correction to it, so re-ranking refines rather than
replaces the retrieval order.

Reference: Covington et al., "Deep Neural Networks for YouTube Recommendations", RecSys 2016 (retrieve, then rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ScorerConfig", "MLPScorer"]


@dataclass(frozen=True)
class ScorerConfig:
    """``dim``: interest/item vector size ``D``; ``hidden``: MLP width; ``rerank``: candidates re-ranked by the
    MLP after dot-product retrieval (0 = rank by the dot product alone)."""

    dim: int = 128
    hidden: int = 128
    dropout: float = 0.1
    rerank: int = 100

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.dim < 1 or self.rerank < 0:
            raise ValueError("dim and hidden must be >= 1 and rerank >= 0")


class MLPScorer(nn.Module):
    """``logits(interest (B, D), items (B, C, D)) -> (B, C)``; ``probability`` applies a sigmoid (values in [0, 1]).

    Example::

        >>> s = MLPScorer(ScorerConfig())
        >>> s.probability(torch.randn(2, 128), torch.randn(2, 7, 128)).shape
        torch.Size([2, 7])
    """

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.mlp = nn.Sequential(
            nn.Linear(3 * d + 1, config.hidden), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, 1)
        )
        self.dot_weight = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def logits(self, interest: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` logits. The MLP's first layer reads ``[u, v, u * v, u . v]``; it is computed without building
        that ``(B, C, 3D + 1)`` input: ``W [u; v; u*v; dot] = W_u u + (W_v + (W_uv + w_dot) diag(u)) v``, the user's
        parts once per user, then one ``(C, D) @ (D, H + 1)`` product per user for the items, whose extra column
        (``u`` itself) is the dot product (a third of the work, and no copy of the candidates)."""
        first, d, h = self.mlp[0], self.config.dim, self.config.hidden
        w = first.weight
        u = interest.unsqueeze(1)  # (B, 1, D)
        per_user = torch.cat([w[:, d : 2 * d] + (w[:, 2 * d : 3 * d] + w[:, 3 * d, None]) * u, u], dim=1)  # (B, H+1, D)
        offset = F.pad(interest @ w[:, :d].T + first.bias, (0, 1)).unsqueeze(1)  # (B, 1, H + 1)
        out = torch.baddbmm(offset, items, per_user.transpose(1, 2))  # (B, C, H + 1): first layer | u . v
        correction = self.mlp[3](self.mlp[2](self.mlp[1](out[..., :h]))).squeeze(-1)
        return self.dot_weight * out[..., h] + correction + self.bias

    def probability(self, interest: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(interest, items))
