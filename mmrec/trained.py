"""A trained model as files: what :mod:`mmrec.train` writes and :mod:`mmrec.serve` loads.

``STORE/model/model.safetensors`` holds the weights, ``STORE/model/config.json`` the network's settings
(:class:`~mmrec.networks.model.ModelConfig`), the new-item policy training chose
(:class:`~mmrec.networks.model.NewItemPolicy`) and what the model was trained on: the item ids and which of them
occurred in training, the event vocabulary, the encoders behind the features, the training summary. No pickles.
``STORE/model/manifest.json`` records the SHA-256 of both, so an edited or half-replaced file is refused at load.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_weights
from safetensors.torch import save_file

from .encoders.precision import resolve_device
from .features import ItemFeatures, model_item_features
from .io.events import TEXT_COLUMNS
from .networks.model import ModelConfig, MultimodalRecommender, NewItemPolicy
from .store import Store

__all__ = ["MODEL_DIR", "ModelLoadError", "TrainedModel", "check_encoders", "model_device"]

MODEL_DIR = "model"
"""The trained model's folder inside a store."""
WEIGHTS, CONFIG, MANIFEST = "model.safetensors", "config.json", "manifest.json"


class ModelLoadError(ValueError):
    """A saved model cannot be used with this store (encoder mismatch, missing files...)."""


class _Mismatch(ModelLoadError):
    """A file whose hash differs from the record: possibly a save in progress, so it is read again first."""


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
        ``meta``) + ``manifest.json`` (the SHA-256 of both, written last). Each is written to a temporary name,
        reaches the disk and is then renamed, so a power cut cannot leave a renamed but empty file in place of a
        model that was there; a crash between the renames leaves files the manifest does not describe, which
        :meth:`load` refuses."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        tmp_weights, tmp_config = folder / f"{WEIGHTS}.tmp", folder / f"{CONFIG}.tmp"
        save_file(tensors, str(tmp_weights))
        weights_sha256 = _sha256(tmp_weights.read_bytes())
        meta = {"model": self.network.config.to_dict(), "new_items": self.network.new_items.to_dict(),
                "weights_sha256": weights_sha256, **self.meta}
        tmp_config.write_text(json.dumps(meta, indent=2))
        files = {WEIGHTS: weights_sha256, CONFIG: _sha256(tmp_config.read_bytes())}
        tmp_manifest = folder / f"{MANIFEST}.tmp"
        tmp_manifest.write_text(json.dumps({"sha256": files}, indent=2))
        for tmp in (tmp_weights, tmp_config, tmp_manifest):
            _fsync(tmp)
        tmp_weights.replace(folder / WEIGHTS)
        tmp_config.replace(folder / CONFIG)
        tmp_manifest.replace(folder / MANIFEST)  # last: until it lands, the folder's files fail the old manifest
        if os.name == "posix":  # the renames themselves live in the folder's entry; Windows cannot open a folder
            _fsync(folder)

    @classmethod
    def load(cls, folder: Path, attempts: int = 10) -> TrainedModel:
        """The model saved in ``folder``, in eval mode on the CPU. Every file is checked against
        ``manifest.json`` (models saved before it existed: the weights against ``config.json``'s
        ``weights_sha256``, when present). Raises :class:`ModelLoadError` naming what is missing or inconsistent.

        A save running meanwhile (a retrain) replaces the files one by one: files that do not match are read again,
        ``attempts`` times 0.1 s apart, before the mismatch is an error."""
        for attempt in range(attempts):
            try:
                return cls._load_once(folder)
            except _Mismatch as exc:
                if attempt == attempts - 1:
                    raise ModelLoadError(str(exc)) from None
                time.sleep(0.1)
        raise AssertionError("unreachable")

    @classmethod
    def _load_once(cls, folder: Path) -> TrainedModel:
        config_path, weights_path, manifest_path = folder / CONFIG, folder / WEIGHTS, folder / MANIFEST
        if not config_path.is_file() or not weights_path.is_file():
            raise ModelLoadError(f"no trained model in {folder} (run `mmrec train` first)")
        # each file is read once: the bytes checked are the bytes loaded, whatever a concurrent save renames
        manifest = manifest_path.read_bytes() if manifest_path.is_file() else None
        data = {CONFIG: config_path.read_bytes(), WEIGHTS: weights_path.read_bytes()}
        if manifest is not None:
            try:
                recorded = json.loads(manifest)["sha256"]
                missing = [name for name in data if not isinstance(recorded.get(name), str)]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ModelLoadError(f"{manifest_path} is not a model manifest ({exc!r}); retrain with "
                                     "`mmrec train`") from None
            if missing:
                raise ModelLoadError(f"{manifest_path} records no sha256 of {missing}; retrain with `mmrec train`")
            for name, content in data.items():
                if _sha256(content) != recorded[name]:
                    raise _Mismatch(
                        f"{folder / name} does not belong to the saved model: its sha256 differs from the one "
                        f"{manifest_path} records (the file was edited, or a save was interrupted); retrain with "
                        "`mmrec train`")
        try:
            meta = json.loads(data[CONFIG])
            saved = dict(meta["model"])
            # models saved before the model config held max_len read it from their training summary
            saved.setdefault("max_len", meta.get("train", {}).get("max_len", ModelConfig.max_len))
            config = ModelConfig.from_dict(saved)
            # models saved before the policy was kept apart from the settings held it in their config
            policy = NewItemPolicy.from_dict(meta.get("new_items", meta["model"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{config_path} is not a model config ({exc!r}); retrain with `mmrec train`") from None
        # Models saved before the manifest: their weights' hash in config.json (none before that: unchecked).
        expected = meta.get("weights_sha256")
        if manifest is None and expected is not None and _sha256(data[WEIGHTS]) != expected:
            raise _Mismatch(
                f"{weights_path} does not belong to {config_path} (a save was interrupted between the two files?); "
                "retrain with `mmrec train`")
        network = MultimodalRecommender(config, policy)
        try:
            network.load_state_dict(load_weights(data[WEIGHTS]))
        except (RuntimeError, OSError, SafetensorError) as exc:
            raise ModelLoadError(f"{weights_path} does not fit {config_path}: {exc}") from None
        network.eval()
        return cls(network, meta)


def model_device(device: str | torch.device | None) -> torch.device:
    """The torch device ``device`` names (``"auto"``/``None``: CUDA when available), for loading a model: a name
    that is no device, or a CUDA device this machine lacks, is a ``ValueError`` naming it."""
    try:
        parsed = resolve_device(device)
    except (RuntimeError, TypeError) as exc:  # torch's own error for a name that is no device
        raise ValueError(f"device={device!r} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' "
                         f"({exc})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no CUDA device on this machine (use 'cpu' or 'auto')")
    return parsed


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


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
