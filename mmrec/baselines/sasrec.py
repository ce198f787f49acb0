"""SASRec: causal self-attention over item-ID and position embeddings, cross-entropy over all items.

Reference: Kang, McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. As RecBole's ``SASRec`` with
``loss_type: CE``: 2 post-LayerNorm transformer blocks, 2 heads, hidden 64, feed-forward 256 with GELU, dropout 0.5
on attention weights and hidden states, LayerNorm eps 1e-12, normal(0, 0.02) init, learned positional embeddings
for ``max_len`` 50, scores = dot product with the (shared) item embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import SequentialBaseline
from ..data.batch import SequenceBatch

__all__ = ["SASRec", "SASRecConfig"]


@dataclass(frozen=True)
class SASRecConfig:
    """RecBole's defaults. ``max_len``: positions per training window and evaluation context."""

    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 2
    inner_size: int = 256
    hidden_dropout: float = 0.5
    attn_dropout: float = 0.5
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    max_len: int = 50
    stride: int | None = None

    def __post_init__(self) -> None:
        for name in ("hidden_size", "n_layers", "n_heads", "inner_size", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size: {self.hidden_size} is not a multiple of n_heads {self.n_heads}")
        for name in ("hidden_dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}: must be in [0, 1), got {getattr(self, name)}")


class _Block(nn.Module):
    """Post-LN transformer block with causal attention: ``(B, L, D) -> (B, L, D)``."""

    def __init__(self, c: SASRecConfig) -> None:
        super().__init__()
        self.n_heads = c.n_heads
        self.attn_dropout = c.attn_dropout
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.drop_attn_out = nn.Dropout(c.hidden_dropout)
        self.norm_attn = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.ff_in = nn.Linear(c.hidden_size, c.inner_size)
        self.ff_out = nn.Linear(c.inner_size, c.hidden_size)
        self.drop_ff_out = nn.Dropout(c.hidden_dropout)
        self.norm_ff = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        # right padding + causal mask: a real position never attends to a padded one
        attn = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, heads, L, D/heads)
        x = self.norm_attn(x + self.drop_attn_out(self.proj(attn.transpose(1, 2).reshape(b, length, d))))
        return self.norm_ff(x + self.drop_ff_out(self.ff_out(F.gelu(self.ff_in(x)))))


class SASRec(SequentialBaseline):
    """``(B, L) item ids -> (B, L, hidden_size)`` next-item representations; scores ``(B, n_items)``.

    Example::

        model = SASRec(split.n_items)
        fit_baseline(model, split, BaselineTrainConfig(epochs=200))
    """

    def __init__(self, n_items: int, config: SASRecConfig | None = None) -> None:
        self.config = config or SASRecConfig()
        super().__init__(n_items, self.config.max_len, self.config.stride)
        c = self.config
        self.item_embedding = nn.Embedding(n_items + 1, c.hidden_size, padding_idx=n_items)
        self.position_embedding = nn.Embedding(c.max_len, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.n_layers))
        self.apply(self._init_weights)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def encode(self, batch: SequenceBatch) -> torch.Tensor:
        length = batch.items.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"batch: {length} positions, more than max_len {self.config.max_len}")
        positions = torch.arange(length, device=batch.items.device)
        x = self.item_embedding(batch.items) + self.position_embedding(positions)[None]  # (B, L, D)
        x = self.dropout(self.norm(x))
        for block in self.blocks:
            x = block(x)
        return x  # (B, L, D)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight[: self.n_items]  # (n_items, D)
