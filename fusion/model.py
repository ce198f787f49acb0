"""Siamese/attention fusion: per-modality item features -> one item vector.

    text (N, 384) ─ adapter ─┐                      ┌─ tower(text)  ─┐
                             ├─ shared space (N, S) ┤                ├─ attention over present tokens ─► (N, D)
    image (N, 1280) ─ adapter┘                      └─ tower(image) ─┤   (+ optional item-ID token)
                                                                     │
    contrastive alignment: tower(text_i) ~ tower(image_i), other items repel (symmetric InfoNCE)

The tower is one module applied to both modalities (shared weights: a Siamese network), so text and image land in
one space where the contrastive loss can align them. A missing modality is masked out of the attention; an item
seen in training may add a learned ID token, dropped out during training so content alone still gives good
vectors for items never seen in training (cold items).

Reference: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP), 2021,
for the symmetric contrastive objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FusionConfig", "ItemFusion", "ModalityAttention", "SiameseTower", "ModalityAdapter"]


@dataclass(frozen=True)
class FusionConfig:
    """Shape and regularisation of the fusion layer.

    Attributes:
        text_dim / image_dim: encoder feature sizes (0 disables that modality); training sets them to the widths
            of the features its store holds.
        shared_dim: width of the shared space the adapters project into.
        item_dim: size ``D`` of the fused item vector.
        n_items: size of the item-ID vocabulary (0 = no ID token).
        id_dropout: probability, per item and training step, that its ID token is hidden. High (0.7) by default:
            on ml-latest-small ID embeddings overfit the training sequences, and items that mostly rely on content
            during training both validate better and leave content-only vectors used to being ranked.
        dropout: dropout inside the adapters and tower.
        temperature: InfoNCE temperature of the alignment loss.
        feature_noise: standard deviation of Gaussian noise added to the normalised encoder features during
            training: two items whose features differ by less than the noise cannot be told apart, so the content
            path learns a smooth map that carries over to items never seen in training instead of memorising
            each training item's exact features.
        id_init_std: initial scale of ID embeddings. Tokens are layer-normalised before attention, so the scale
            does not decide their weight; but Adam moves each weight by about the learning rate per step, so a
            small start lets ID vectors change direction quickly (a large one made them learn ~15x slower).
    """

    text_dim: int = 384
    image_dim: int = 1280
    shared_dim: int = 256
    item_dim: int = 128
    n_items: int = 0
    id_dropout: float = 0.7
    dropout: float = 0.0
    temperature: float = 0.1
    id_init_std: float = 0.02
    feature_noise: float = 0.5

    def __post_init__(self) -> None:
        if self.text_dim < 0 or self.image_dim < 0 or self.n_items < 0:
            raise ValueError("text_dim, image_dim and n_items must be >= 0")
        if self.text_dim == 0 and self.image_dim == 0 and self.n_items == 0:
            raise ValueError("FusionConfig needs at least one of text_dim, image_dim, n_items")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        if self.item_dim < 1 or self.shared_dim < 1:
            raise ValueError("item_dim and shared_dim must be >= 1")


class ModalityAdapter(nn.Module):
    """``(N, F) -> (N, S)``: normalise one encoder's features and project them into the shared space."""

    def __init__(self, in_dim: int, shared_dim: int, dropout: float, noise: float = 0.0) -> None:
        super().__init__()
        self.noise = noise
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, shared_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        normed = self.norm(features)
        if self.training and self.noise > 0:
            normed = normed + self.noise * torch.randn_like(normed)
        return self.dropout(self.proj(normed))


class SiameseTower(nn.Module):
    """``(N, S) -> (N, D)``: the one MLP applied to every modality (shared weights)."""

    def __init__(self, shared_dim: int, item_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.GELU(), nn.Linear(shared_dim, shared_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(shared_dim, item_dim)
        )

    def forward(self, shared: torch.Tensor) -> torch.Tensor:
        return self.net(shared)


class ModalityAttention(nn.Module):
    """Multi-head attention pooling over modality tokens: ``(N, M, D)`` tokens + ``(N, M)`` bool mask -> ``(N, D)``.

    Each head has a learned query that scores the present tokens and pools its own value projection of them;
    heads are concatenated. With several heads one item vector can carry both its ID and its content (one head
    per source) instead of a single convex mix where a strong token drowns the others. Absent tokens get zero
    weight; rows with no present token return zeros.
    """

    def __init__(self, dim: int, n_tokens: int, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"item_dim={dim} must be divisible by attention heads={heads}")
        self.heads = heads
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.randn(heads, dim // heads) * 0.02)
        # Which token each head trusts a priori: heads take turns favouring each source, starting from the last
        # token (the item ID), so at the start every source owns part of the vector and the ID, the sharpest
        # signal for items seen in training, owns the most; training can shift it.
        prior = torch.zeros(heads, n_tokens)
        prior[torch.arange(heads), (n_tokens - 1 - torch.arange(heads)) % n_tokens] = 4.0
        self.token_bias = nn.Parameter(prior)
        self.scale = (dim // heads) ** -0.5

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, m, d = tokens.shape
        keys = self.key(tokens).view(n, m, self.heads, d // self.heads)
        values = self.value(tokens).view(n, m, self.heads, d // self.heads)
        logits = (keys * self.query).sum(-1) * self.scale + self.token_bias.T  # (N, M, heads)
        logits = logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # over tokens; all-masked rows -> 0
        pooled = (weights.unsqueeze(-1) * values).sum(1)  # (N, heads, D / heads)
        return pooled.reshape(n, d), weights

class ItemFusion(nn.Module):
    """Fuses item features into item vectors.

    ``forward(text (N, T), image (N, I), present (N, 2) bool, item_index (N,) long | None, known (N,) bool | None)
    -> (N, D)``. ``present[:, 0]``/``[:, 1]`` say whether the text/image feature exists; ``known`` says whether the
    item's ID token may be used (items seen in training); ``item_index`` indexes the ID embedding.

    Example::

        >>> fusion = ItemFusion(FusionConfig(n_items=10))
        >>> v = fusion(torch.randn(4, 384), torch.rand(4, 1280), torch.ones(4, 2, dtype=torch.bool),
        ...            torch.arange(4), torch.ones(4, dtype=torch.bool))
        >>> v.shape
        torch.Size([4, 128])
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.text_adapter = (
            ModalityAdapter(c.text_dim, c.shared_dim, c.dropout, c.feature_noise) if c.text_dim else None)
        self.image_adapter = (
            ModalityAdapter(c.image_dim, c.shared_dim, c.dropout, c.feature_noise) if c.image_dim else None)
        self.tower = SiameseTower(c.shared_dim, c.item_dim, c.dropout)
        self.id_embedding = nn.Embedding(c.n_items, c.item_dim) if c.n_items else None
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=self.config.id_init_std)
        # Tokens are normalised before attention so no source wins by sheer scale (content tower outputs start
        # far larger than fresh ID embeddings, which then never get weight or gradient).
        self.token_norm = nn.LayerNorm(c.item_dim)
        self.attention = ModalityAttention(c.item_dim, 3)
        self.out_norm = nn.LayerNorm(c.item_dim)

    def modality_vectors(
        self, text: torch.Tensor | None, image: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Tower outputs per modality, ``(N, D)`` each (``None`` where the modality is disabled)."""
        t = self.tower(self.text_adapter(text)) if self.text_adapter is not None and text is not None else None
        i = self.tower(self.image_adapter(image)) if self.image_adapter is not None and image is not None else None
        return t, i

    def forward(
        self,
        text: torch.Tensor | None,
        image: torch.Tensor | None,
        present: torch.Tensor,
        item_index: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n = present.shape[0]
        t, i = self.modality_vectors(text, image)
        zeros = present.new_zeros((n, self.config.item_dim), dtype=torch.float32)
        id_vec = zeros
        id_mask = torch.zeros(n, dtype=torch.bool, device=present.device)
        if self.id_embedding is not None and item_index is not None:
            id_vec = self.id_embedding(item_index)
            id_mask = known if known is not None else torch.ones_like(id_mask)
            if self.training and self.config.id_dropout > 0:
                id_mask = id_mask & (torch.rand(n, device=present.device) >= self.config.id_dropout)
        tokens = self.token_norm(torch.stack([t if t is not None else zeros, i if i is not None else zeros, id_vec], 1))
        mask = torch.stack([
            present[:, 0] & (t is not None),
            present[:, 1] & (i is not None),
            id_mask,
        ], dim=1)
        # An item whose only signal was a dropped-out ID keeps it: an all-masked row would carry no information.
        empty = ~mask.any(1)
        if empty.any():
            mask[:, 2] = mask[:, 2] | (empty & (known if known is not None else torch.ones_like(empty)))
        pooled, _ = self.attention(tokens, mask)
        return self.out_norm(pooled)

    def alignment_loss(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE between the tower outputs of ``N`` items having both modalities: ``(N, T), (N, I) -> ()``.

        Item ``k``'s text and image are the positive pair; every other item in the batch is a negative.
        """
        t, i = self.modality_vectors(text, image)
        if t is None or i is None:
            return text.new_zeros(())
        t, i = F.normalize(t, dim=-1), F.normalize(i, dim=-1)
        logits = t @ i.T / self.config.temperature
        labels = torch.arange(len(t), device=t.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
