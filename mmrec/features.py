"""Features read from the store: the encoder features of catalogue items and the vectors of behaviour texts.

Both training and serving read items and event texts through here, so a model sees the same inputs in both.
Widths are the stored vectors' (any local Hugging Face text model works); a modality the store holds no features
for has width 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .store import Store

__all__ = ["ItemFeatures", "item_features", "model_item_features", "embed_event_texts", "store_text_encoder"]


@dataclass
class ItemFeatures:
    """Stored encoder features of ``N`` items, aligned with a model's item order.

    ``text (N, T)``, ``image (N, I)`` float32 (``T``, ``I``: the encoders' widths, 0 when the store holds no such
    features); ``present (N, 2)`` bool (text, image); ``id_index (N,)`` long into the ID embedding; ``known (N,)``
    bool: the item was seen in training, so its ID token may be used.
    """

    text: torch.Tensor
    image: torch.Tensor
    present: torch.Tensor
    id_index: torch.Tensor
    known: torch.Tensor

    def __len__(self) -> int:
        return int(self.present.shape[0])

    def to(self, device: torch.device | str) -> ItemFeatures:
        return ItemFeatures(*(t.to(device) for t in (self.text, self.image, self.present, self.id_index, self.known)))

    def take(self, index: torch.Tensor) -> ItemFeatures:
        return ItemFeatures(*(t[index] for t in (self.text, self.image, self.present, self.id_index, self.known)))


def item_features(store: Store, item_ids: Sequence[str], known: np.ndarray | None = None,
                  modalities: Collection[str] = ("text", "image")) -> ItemFeatures:
    """Stored features of ``item_ids`` as tensors; ``known`` (bool) marks items whose ID token may be used (default
    none; ``id_index`` is each item's position). Only ``modalities`` count as present: a model trained on a store
    without images has untrained image weights, so a poster embedded later must not reach them."""
    _, text, has_text = store.feature_matrix("text", item_ids)
    _, image, has_image = store.feature_matrix("image", item_ids)
    n = len(item_ids)
    present = np.stack([has_text & ("text" in modalities), has_image & ("image" in modalities)], axis=1)
    return ItemFeatures(
        text=torch.from_numpy(text),
        image=torch.from_numpy(image),
        present=torch.from_numpy(present),
        id_index=torch.arange(n),
        known=torch.from_numpy(np.zeros(n, bool) if known is None else known),
    )


def model_item_features(store: Store, item_ids: Sequence[str], trained_item_ids: Sequence[str],
                        known_items: Sequence[int], modalities: Collection[str]) -> ItemFeatures:
    """Stored features of ``item_ids`` as a trained model reads them: items it trained on (``trained_item_ids``, of
    which positions ``known_items`` occurred in training) get their ID embedding's row (``known``), items embedded
    since are content only, and ``modalities`` it was trained without are not read."""
    known_trained = np.zeros(len(trained_item_ids), bool)
    known_trained[np.asarray(known_items, dtype=np.int64)] = True
    position = pd.Index(trained_item_ids).get_indexer(list(item_ids))  # -1: embedded after training
    id_index = np.maximum(position, 0).astype(np.int64)
    known = (position >= 0) & known_trained[id_index]
    features = item_features(store, item_ids, known, modalities=modalities)
    features.id_index = torch.from_numpy(id_index)
    return features


def embed_event_texts(store: Store, texts: list[str], text_encoder=None, encode_missing: bool = True) -> np.ndarray:
    """``(T, width)`` vectors of behaviour texts, cached in the store so a text is encoded once per encoder
    (``(0, 0)`` for no texts).

    Without ``text_encoder`` the texts are looked up under the encoder that embedded the store's item texts, and
    the encoder is only loaded when some text is not cached yet (``encode_missing=False``: ``LookupError`` then)."""
    if not texts:
        return np.zeros((0, 0), np.float32)
    stored = store.encoders().get("text", [])
    if text_encoder is None and len(stored) != 1:
        if not encode_missing:
            raise LookupError(f"store {store.path}: no single text encoder to look cached texts up under")
        text_encoder = store_text_encoder(store)
    version = text_encoder.version if text_encoder is not None else stored[0]
    if len(stored) == 1 and version != stored[0]:
        # vectors from two encoders would mix in one model's inputs
        raise ValueError(f"store {store.path}: item texts were embedded with {stored[0]}, but the text encoder is "
                         f"{version}; re-run `mmrec embed` first")
    keys = [hashlib.sha256(f"{version}\0{t}".encode()).hexdigest() for t in texts]
    cached = store.cached_texts(keys)
    missing = [i for i, k in enumerate(keys) if k not in cached]
    if missing:
        if not encode_missing:
            raise LookupError(f"{len(missing)} of {len(texts)} texts are not cached yet")
        if text_encoder is None:
            text_encoder = store_text_encoder(store)
            if text_encoder.version != version:
                raise ValueError(f"store {store.path}: item texts were embedded with {version}, but the installed "
                                 f"text encoder is {text_encoder.version}; re-run `mmrec embed` first")
        vectors = text_encoder.encode([texts[i] for i in missing])
        fresh = {keys[i]: v for i, v in zip(missing, vectors)}
        store.cache_texts(fresh)
        cached.update(fresh)
    return np.stack([cached[k] for k in keys]).astype(np.float32)


def store_text_encoder(store: Store):
    """A :class:`~mmrec.encoders.text.TextEncoder` like the one that embedded ``store``'s item texts, for texts
    embedded later (behaviour texts at training or serving time): the int8 one (ONNX Runtime, its model cached in
    ``STORE/encoders`` as ``mmrec embed`` caches it) when the stored text-encoder version carries the int8 suffix,
    else the default one."""
    from .encoders.onnx_int8 import VERSION_SUFFIX
    from .encoders.text import TextEncoder, TextEncoderConfig

    stored = store.encoders().get("text", [])
    if stored and all(version.endswith(VERSION_SUFFIX) for version in stored):
        return TextEncoder(TextEncoderConfig(precision="int8", cache_dir=store.path / "encoders"))
    return TextEncoder()
