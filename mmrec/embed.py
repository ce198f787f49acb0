"""Catalogue -> encoders -> store: embed new or changed items, skip unchanged ones.

Change detection is per modality: ``text_hash = sha256(text encoder version, cleaned text)`` and
``image_hash = sha256(image encoder version, image file bytes)``. An item whose hashes match what is stored is
not touched; an item whose text alone changed gets only its text re-encoded. Work is committed in chunks, one
SQLite transaction each, so an interrupted run loses at most the chunk in flight.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from .catalog import CatalogRow, read_catalog
from .encoders.image import ImageEncoder, ImageEncoderConfig
from .encoders.text import TextEncoder, TextEncoderConfig
from .store import Store

__all__ = ["EmbedConfig", "EmbedReport", "embed_catalog"]


@dataclass
class EmbedConfig:
    """Options of :func:`embed_catalog`.

    Attributes:
        text_columns: catalogue columns joined into item text (default: all but ``item_id``/``image_path``).
        images_root: folder that ``image_path`` values are relative to (default: the catalogue's folder).
        use_images: ``False`` embeds text only and ignores ``image_path``.
        chunk_size: items encoded and committed per transaction.
        text: text encoder options.  image: image encoder options.
        show_progress: progress bar over items (``None``: when more than 500 items).
    """

    text_columns: Sequence[str] | None = None
    images_root: str | Path | None = None
    use_images: bool = True
    chunk_size: int = 256
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


@dataclass
class EmbedReport:
    """What a run did. ``text_only``/``image_only`` count catalogue items stored with one modality after the run;
    ``rejected`` items (no text and no usable image) were not stored; ``warnings`` name items whose image failed
    and which were stored text-only instead."""

    embedded: int = 0
    unchanged: int = 0
    text_only: int = 0
    image_only: int = 0
    rejected: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def _read_image(path: Path | None) -> tuple[bytes | None, str | None]:
    if path is None:
        return None, None
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, f"image file not found: {path}"
    except OSError as error:
        return None, f"image file unreadable: {path} ({error})"


def embed_catalog(
    catalog: str | Path,
    store: Store | str | Path,
    config: EmbedConfig | None = None,
    text_encoder: TextEncoder | None = None,
    image_encoder: ImageEncoder | None = None,
) -> EmbedReport:
    """Embed the new or changed items of ``catalog`` into ``store`` and report what happened.

    Encoders may be passed in to reuse loaded models across calls; otherwise they are built from ``config``.
    Raises ``ValueError`` for an invalid catalogue (missing ``item_id`` column, duplicate ids...) before
    anything is written.
    """
    config = config or EmbedConfig()
    store = store if isinstance(store, Store) else Store(store)
    rows = read_catalog(catalog, config.text_columns, config.images_root, config.use_images)
    text_encoder = text_encoder or TextEncoder(config.text)
    if config.use_images and image_encoder is None:
        image_encoder = ImageEncoder(config.image)
    elif not config.use_images:
        image_encoder = None
    report = EmbedReport()
    stored_hashes = store.item_hashes()
    stored_modalities = store.stored_modalities()
    show = config.show_progress if config.show_progress is not None else len(rows) > 500
    with tqdm(total=len(rows), desc="embedding", unit="item", disable=not show) as bar:
        for start in range(0, len(rows), config.chunk_size):
            chunk = rows[start : start + config.chunk_size]
            _embed_chunk(chunk, store, text_encoder, image_encoder, stored_hashes, stored_modalities, report)
            bar.update(len(chunk))
    rejected = {r["item_id"] for r in report.rejected}
    for row in rows:
        modalities = stored_modalities.get(row.item_id)
        if row.item_id in rejected or modalities is None:
            continue
        report.text_only += modalities == {"text"}
        report.image_only += modalities == {"image"}
    return report


def _embed_chunk(
    chunk: list[CatalogRow],
    store: Store,
    text_encoder: TextEncoder,
    image_encoder: ImageEncoder | None,
    stored_hashes: dict[str, tuple[str | None, str | None]],
    stored_modalities: dict[str, set[str]],
    report: EmbedReport,
) -> None:
    image_version = image_encoder.version if image_encoder is not None else ""
    plans = []  # (row, text_hash, image_hash, image_bytes, image_problem)
    for row in chunk:
        image_bytes, problem = _read_image(row.image) if image_encoder is not None else (None, None)
        text_hash = _digest(text_encoder.version, row.text) if row.text else None
        image_hash = _digest(image_version, image_bytes) if image_bytes is not None else None
        if not row.text and image_bytes is None:
            reason = "no text and no image" + (f" ({problem})" if problem else "")
            report.rejected.append({"item_id": row.item_id, "row": row.row, "reason": reason})
            continue
        if stored_hashes.get(row.item_id) == (text_hash, image_hash):
            report.unchanged += 1
            continue
        if problem:
            report.warnings.append({"item_id": row.item_id, "row": row.row, "reason": problem + "; stored text-only"})
        plans.append((row, text_hash, image_hash, image_bytes))
    if not plans:
        return

    old = stored_hashes
    need_text = [p for p in plans if p[1] and old.get(p[0].item_id, (None, None))[0] != p[1]]
    need_image = [p for p in plans if p[2] and old.get(p[0].item_id, (None, None))[1] != p[2]]
    ids = [p[0].item_id for p in plans]
    # Unchanged modalities of changed items are carried over from the store instead of re-encoded.
    text_features = {k: v for k, v in store.features_for("text", ids).items() if old[k][0] is not None}
    image_features = {k: v for k, v in store.features_for("image", ids).items() if old[k][1] is not None}
    if need_text:
        vectors = text_encoder.encode([p[0].text for p in need_text], show_progress=False)
        text_features.update({p[0].item_id: (text_encoder.version, v) for p, v in zip(need_text, vectors)})
    if need_image:
        result = image_encoder.encode_paths([p[3] for p in need_image], show_progress=False)
        for i, p in enumerate(need_image):
            if result.ok[i]:
                image_features[p[0].item_id] = (image_encoder.version, result.features[i])
            else:
                image_features.pop(p[0].item_id, None)
                if p[0].text:
                    report.warnings.append(
                        {"item_id": p[0].item_id, "row": p[0].row, "reason": f"{result.errors[i]}; stored text-only"}
                    )

    to_store = []
    for row, text_hash, image_hash, _ in plans:
        features = {}
        if text_hash and row.item_id in text_features:
            features["text"] = text_features[row.item_id]
        if image_hash and row.item_id in image_features:
            features["image"] = image_features[row.item_id]
        if not features:
            report.rejected.append(
                {"item_id": row.item_id, "row": row.row, "reason": "no text and the image could not be decoded"}
            )
            continue
        to_store.append({
            "item_id": row.item_id, "title": row.title, "text": row.text,
            "image_ref": str(row.image) if row.image else None,
            "text_hash": text_hash, "image_hash": image_hash, "features": features,
        })
    store.put_items(to_store)
    for entry in to_store:
        stored_hashes[entry["item_id"]] = (entry["text_hash"], entry["image_hash"])
        stored_modalities[entry["item_id"]] = set(entry["features"])
    report.embedded += len(to_store)
