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
        that ``(B, C, 3D + 1)`` input: ``W [u; v; u*v; dot] = W_u u + (W_v + W_uv diag(u)) v + w_dot dot``, the
        user's parts once per user, one ``(C, D) @ (D, H)`` product per user for the items (a third of the work,
        and no copy of the candidates)."""
        first, d = self.mlp[0], self.config.dim
        w_u, w_v, w_uv, w_dot = first.weight[:, :d], first.weight[:, d : 2 * d], first.weight[:, 2 * d : 3 * d], \
            first.weight[:, 3 * d]
        dot = (items @ interest.unsqueeze(-1)).squeeze(-1)  # (B, C)
        per_user = w_v + w_uv * interest.unsqueeze(1)  # (B, H, D)
        hidden = items @ per_user.transpose(1, 2)  # (B, C, H)
        hidden = hidden + (interest @ w_u.T + first.bias).unsqueeze(1) + dot.unsqueeze(-1) * w_dot
        correction = self.mlp[3](self.mlp[2](self.mlp[1](hidden))).squeeze(-1)
        return self.dot_weight * dot + correction + self.bias

    def probability(self, interest: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(interest, items))
