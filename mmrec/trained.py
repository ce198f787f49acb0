"""A trained model as files: what :mod:`mmrec.train` writes and :mod:`mmrec.serve` loads.

``STORE/model/model.safetensors`` holds the weights, ``STORE/model/config.json`` the network's settings
(:class:`~mmrec.networks.model.ModelConfig`), the new-item policy training chose
(:class:`~mmrec.networks.model.NewItemPolicy`) and what the model was trained on: the item ids and which of them
occurred in training, the event vocabulary, the encoders behind the features, the training summary. No pickles.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .features import ItemFeatures, model_item_features
from .io.events import TEXT_COLUMNS
from .networks.model import ModelConfig, MultimodalRecommender, NewItemPolicy
from .store import Store

__all__ = ["MODEL_DIR", "ModelLoadError", "TrainedModel", "check_encoders"]

MODEL_DIR = "model"
"""The trained model's folder inside a store."""


class ModelLoadError(ValueError):
    """A saved model cannot be used with this store (encoder mismatch, missing files...)."""


@dataclass
class TrainedModel:
    """A trained network and what it was trained on (``meta``, the JSON beside the weights).

    ``meta`` keys: ``model_id``, ``item_ids``, ``known_items`` (positions of ``item_ids`` that occurred in
    training), ``event_names``, ``interaction_events``, ``default_event``, ``encoders`` (modality -> encoder
    versions), ``train`` (the training summary), ``trained_at``.
    """

    network: MultimodalRecommender
    meta: dict

    @property
    def model_id(self) -> str:
        return self.meta["model_id"]

    @property
    def event_names(self) -> tuple[str, ...]:
        return tuple(self.meta["event_names"])

    @property
    def interaction_events(self) -> tuple[str, ...]:
        """The events of the interactions it trained on (the kinds it predicts)."""
        # Models saved before this was recorded: context events were named after their text column
        return tuple(self.meta.get("interaction_events") or [
            e for e in self.event_names if e not in TEXT_COLUMNS] or self.event_names)

    @property
    def text_events(self) -> tuple[str, ...]:
        """The events it reads by their text (the context events training had, e.g. ``"tag"``)."""
        return tuple(e for e in self.event_names if e not in self.interaction_events)

    @property
    def default_event(self) -> str:
        """The event of the interactions it trained on most (what an event given without a name is)."""
        return self.meta.get("default_event", self.event_names[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the training store held features for (all for models saved without that record)."""
        encoders = self.meta.get("encoders")
        return ("text", "image") if encoders is None else tuple(m for m in ("text", "image") if encoders.get(m))

    def item_features(self, store: Store, item_ids: Sequence[str]) -> ItemFeatures:
        """Stored features of ``item_ids`` as this model reads them (see :func:`mmrec.features.model_item_features`)."""
        return model_item_features(store, item_ids, self.meta["item_ids"], self.meta["known_items"], self.modalities)

    def save(self, folder: Path) -> None:
        """``model.safetensors`` + ``config.json`` (the model config, the new-item policy, the weights' SHA-256 and
        ``meta``). Each is written to a temporary name and renamed; a crash between the two renames leaves new
        weights beside the old config, which :meth:`load` detects by the hash. Both files reach the disk before
        they replace the old ones, so a power cut cannot leave a renamed but empty file in place of a model that
        was there."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        tmp_weights, tmp_config = folder / "model.safetensors.tmp", folder / "config.json.tmp"
        save_file(tensors, str(tmp_weights))
        meta = {"model": self.network.config.to_dict(), "new_items": self.network.new_items.to_dict(),
                "weights_sha256": _sha256(tmp_weights), **self.meta}
        tmp_config.write_text(json.dumps(meta, indent=2))
        _fsync(tmp_weights)
        _fsync(tmp_config)
        tmp_weights.replace(folder / "model.safetensors")
        tmp_config.replace(folder / "config.json")
        if os.name == "posix":  # the renames themselves live in the folder's entry; Windows cannot open a folder
            _fsync(folder)

    @classmethod
    def load(cls, folder: Path) -> TrainedModel:
        """The model saved in ``folder``, in eval mode on the CPU. Raises :class:`ModelLoadError` naming what is
        missing or inconsistent."""
        config_path, weights_path = folder / "config.json", folder / "model.safetensors"
        if not config_path.is_file() or not weights_path.is_file():
            raise ModelLoadError(f"no trained model in {folder} (run `mmrec train` first)")
        try:
            meta = json.loads(config_path.read_text())
            saved = dict(meta["model"])
            # models saved before the model config held max_len read it from their training summary
            saved.setdefault("max_len", meta.get("train", {}).get("max_len", ModelConfig.max_len))
            config = ModelConfig.from_dict(saved)
            # models saved before the policy was kept apart from the settings held it in their config
            policy = NewItemPolicy.from_dict(meta.get("new_items", meta["model"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{config_path} is not a model config ({exc!r}); retrain with `mmrec train`") from None
        # Models saved before the hash was recorded have none; they load unchecked.
        expected = meta.get("weights_sha256")
        if expected is not None and _sha256(weights_path) != expected:
            raise ModelLoadError(
                f"{weights_path} does not belong to {config_path} (a save was interrupted between the two files?); "
                "retrain with `mmrec train`")
        network = MultimodalRecommender(config, policy)
        try:
            network.load_state_dict(load_file(str(weights_path)))
        except (RuntimeError, OSError, SafetensorError) as exc:
            raise ModelLoadError(f"{weights_path} does not fit {config_path}: {exc}") from None
        network.eval()
        return cls(network, meta)


_EMBED_HINT = {"text": "its text columns (--text-columns)", "image": "images (--images-root, without --no-images)"}


def check_encoders(trained: TrainedModel, stored: dict[str, list[str]]) -> None:
    """Refuse a model whose training features came from other encoders than the store holds now (``stored``:
    modality -> encoder versions), or whose trained modality the store no longer holds (the model would silently
    serve without it)."""
    config = trained.network.config
    used = [m for m, on in (("text", config.use_text), ("image", config.use_image)) if on]
    for modality in used:
        want, have = sorted(trained.meta.get("encoders", {}).get(modality, [])), sorted(stored.get(modality, []))
        if not want:
            continue  # trained without such features (a text-only store): the model does not read them
        if not have:
            raise ModelLoadError(
                f"the model was trained on {modality} features from {want}, but the store holds no {modality} "
                f"features: re-embed the catalogue with {_EMBED_HINT[modality]} (`mmrec embed`), or retrain "
                f"without {modality}"
            )
        extra = [v for v in have if v not in want]
        if extra:
            raise ModelLoadError(
                f"the model was trained on {modality} features from {want}, but the store now "
                f"holds {modality} features from {extra}: retrain (`mmrec train`) or re-embed with the encoder "
                f"the model was trained on"
            )


def _fsync(path: Path) -> None:
    # Windows flushes only a file opened for writing (and cannot open a folder at all); POSIX takes either
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
