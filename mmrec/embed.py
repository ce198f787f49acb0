"""Catalogue -> encoders -> store: embed new or changed items, skip unchanged ones.

Change detection is per modality: ``text_hash = sha256(text encoder version, cleaned text)`` and
``image_hash = sha256(image encoder version, image file bytes)``. An item whose hashes match what is stored is
not touched; an item whose text alone changed gets only its text re-encoded. Work is committed in chunks, one
SQLite transaction each, so an interrupted run loses at most the chunk in flight.

A run is three steps per chunk, public so another engine can run the middle one elsewhere
(:mod:`mmrec.distributed.ray_embed`): :func:`plan_chunk` (hashes, what to skip, keep or encode), :func:`encode_items`
(the encoders) and :func:`commit_chunk` (one transaction).

Stored image features are removed only when the catalogue says so: a row whose ``image_path`` is empty describes an
item without an image. A run with images off, or on a catalogue without an ``image_path`` column, leaves every
stored image as it is, and an image that cannot be used in this run (file missing or unreadable, undecodable, too many pixels)
keeps the stored features it would have replaced, with a warning; only an item the store holds no image for falls
back to text-only. Images are read only from regular files inside the images root (see :func:`read_image`): a path
leading out of it (``..``, absolute, symlink), a FIFO or device, or a file over ``MAX_IMAGE_BYTES`` is such an
unusable image.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .io.catalog import CatalogRow, read_catalog
from .encoders import image as image_files
from .encoders.image import ImageEncoder, ImageEncoderConfig
from .encoders.text import TextEncoder, TextEncoderConfig
from .store import Store

__all__ = ["ChunkPlan", "EmbedConfig", "EmbedReport", "ItemPlan", "catalog_images_root", "commit_chunk",
           "count_modalities", "digest", "embed_catalog", "embed_encoders", "embed_text_config", "encode_items",
           "plan_chunk", "read_image"]


@dataclass(frozen=True)
class EmbedConfig:
    """Options of :func:`embed_catalog`.

    Attributes:
        text_columns: catalogue columns joined into item text (default: all but ``image_path`` and id columns,
            ``item_id`` and ``*_id``).
        images_root: folder that ``image_path`` values are relative to (default: the catalogue's folder).
        use_images: ``False`` embeds text only and ignores ``image_path``; image features already stored (and their
            hashes) are kept as they are.
        chunk_size: items encoded and committed per transaction.
        text: text encoder options.  image: image encoder options.
        show_progress: progress bar over items (``None``: when more than 100 items).
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
        if isinstance(self.text_columns, str):
            raise ValueError(f"text_columns must be a list of column names, not the string {self.text_columns!r}; "
                             f"pass [{self.text_columns!r}]")


@dataclass
class EmbedReport:
    """What a run did.

    ``embedded`` items were written, ``unchanged`` ones were already current (together with ``rejected``, every
    catalogue row). ``text_only``/``image_only`` count catalogue items stored with one modality after the run.
    ``rejected`` items (no text and no usable image) were not stored, and whatever the store held for them stays.
    ``warnings`` name items whose catalogued image could not be used in this run, with the file and the reason:
    either the store held no image for the item, which was stored text-only (reported when the item is written), or
    it held one, which was kept (reported on every run until the file is usable or the catalogue row drops it).
    ``images_kept`` counts the latter; ``images_removed`` counts items whose stored image was deleted because their
    catalogue row no longer lists one.
    """

    embedded: int = 0
    unchanged: int = 0
    text_only: int = 0
    image_only: int = 0
    images_kept: int = 0
    images_removed: int = 0
    rejected: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def digest(*parts: bytes | str) -> str:
    """The content hash of ``parts`` (an encoder version, then the text or the image bytes): hex SHA-256."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def read_image(path: Path | None, root: Path) -> tuple[bytes | None, str | None]:
    """The bytes of a catalogued image, or why it cannot be used.

    Only a regular file inside the resolved images ``root`` is read, once ``..``, symlinks and absolute paths are
    resolved (a catalogue must not make embed read ``/etc/passwd`` or block on a FIFO), and none over
    ``MAX_IMAGE_BYTES`` (see :func:`mmrec.encoders.image.read_image_file`)."""
    if path is None:
        return None, None
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        return None, f"image file not found: {path}"
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop on Python < 3.13
        return None, f"image file unreadable: {path} ({error})"
    if not resolved.is_relative_to(root):
        return None, f"image file outside the images root {root}: {path}"
    try:
        return image_files.read_image_file(resolved), None
    except FileNotFoundError:
        return None, f"image file not found: {path}"
    except ValueError as error:
        return None, f"image file unusable: {path} is {error}"
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
    Stored image features survive runs with images off and images that fail in this run (see the module docstring).
    Raises ``ValueError`` for an invalid catalogue (missing ``item_id`` column, duplicate ids...) before
    anything is written. :func:`mmrec.distributed.embed_catalog_ray` runs the same plan on a Ray cluster.
    """
    config = config or EmbedConfig()
    rows = read_catalog(catalog, config.text_columns, config.images_root, config.use_images)
    store = store if isinstance(store, Store) else Store(store)
    text_encoder, image_encoder = embed_encoders(config, store, text_encoder, image_encoder)
    report = EmbedReport()
    stored_hashes = store.item_hashes()
    stored_modalities = store.stored_modalities()
    show = config.show_progress if config.show_progress is not None else len(rows) > 100
    images_root = catalog_images_root(catalog, config)
    image_version = image_encoder.version if image_encoder is not None else None
    with tqdm(total=len(rows), desc="embedding", unit="item", disable=not show) as bar:
        for start in range(0, len(rows), config.chunk_size):
            chunk = rows[start : start + config.chunk_size]
            plan = plan_chunk(chunk, text_encoder.version, image_version, stored_hashes, stored_modalities,
                              images_root)
            texts, images = encode_items([(p.row.item_id, p.row.text) for p in plan.need_text],
                                         [(p.row.item_id, p.new_image) for p in plan.need_image],
                                         text_encoder, image_encoder)
            commit_chunk(plan, texts, images, store, stored_hashes, stored_modalities, report)
            bar.update(len(chunk))
    count_modalities(rows, stored_modalities, report)
    return report


def embed_encoders(config: EmbedConfig, store: Store, text_encoder: TextEncoder | None = None,
                   image_encoder: ImageEncoder | None = None) -> tuple[TextEncoder, ImageEncoder | None]:
    """The encoders a run of ``config`` on ``store`` uses (those given, else built: building loads no model); the
    image encoder is ``None`` when images are off."""
    if text_encoder is None:  # an int8 text model is built once per store, beside it, unless told otherwise
        text_encoder = TextEncoder(embed_text_config(config, store))
    if not config.use_images:
        return text_encoder, None
    return text_encoder, image_encoder if image_encoder is not None else ImageEncoder(config.image)


def embed_text_config(config: EmbedConfig, store: Store) -> TextEncoderConfig:
    """``config.text`` with the int8 model cache inside the store unless it names another."""
    if config.text.cache_dir is None:
        return replace(config.text, cache_dir=store.path / "encoders")
    return config.text


def catalog_images_root(catalog: str | Path, config: EmbedConfig) -> Path:
    """The folder images are read from, resolved (so symlinks in the root's own path are fine)."""
    return Path(config.images_root if config.images_root is not None else Path(catalog).parent).resolve()


def count_modalities(rows: Sequence[CatalogRow], stored_modalities: dict[str, set[str]], report: EmbedReport) -> None:
    """Count the catalogue's items stored text-only and image-only after the run into ``report``."""
    rejected = {r["item_id"] for r in report.rejected}
    for row in rows:
        modalities = stored_modalities.get(row.item_id)
        if row.item_id in rejected or modalities is None:
            continue
        report.text_only += modalities == {"text"}
        report.image_only += modalities == {"image"}


@dataclass
class ItemPlan:
    """What one catalogue row should leave in the store."""

    row: CatalogRow
    text_hash: str | None
    image_hash: str | None = None
    image_ref: str | None = None
    new_image: bytes | None = None  # bytes to encode in this run
    kept_image: bool = False  # the stored image (features, hash and reference) stays as it is
    problem: str | None = None  # why the catalogued image is unusable, for an item the store has no image for


@dataclass
class ChunkPlan:
    """One chunk of catalogue rows planned against the store, before anything is encoded.

    ``plans``: the rows to write (changed or new); ``need_text`` / ``need_image``: those of them whose text / image
    must be encoded (the rest carry stored features over); ``report``: what planning found (unchanged rows,
    rejections, kept images), merged into the run's report when the chunk commits, so the run reports the chunks
    committed and in the catalogue's order whichever engine encodes them."""

    plans: list[ItemPlan]
    need_text: list[ItemPlan]
    need_image: list[ItemPlan]
    report: EmbedReport
    text_version: str
    image_version: str | None


def _keep_stored_image(plan: ItemPlan, stored_hash: str | None, report: EmbedReport, problem: str | None) -> None:
    """Let ``plan`` carry the stored image over; ``problem`` (none when images are off) is warned and counted."""
    plan.image_hash, plan.new_image, plan.kept_image = stored_hash, None, True
    if problem:
        report.images_kept += 1
        report.warnings.append({"item_id": plan.row.item_id, "row": plan.row.row,
                                "reason": f"{problem}; kept the stored image features"})


def _plan_row(
    row: CatalogRow,
    text_version: str,
    image_version: str | None,
    stored_hashes: dict[str, tuple[str | None, str | None]],
    stored_modalities: dict[str, set[str]],
    report: EmbedReport,
    images_root: Path,
) -> ItemPlan | None:
    """Decide what ``row`` should become before anything is encoded (``image_version=None``: images are off).

    Returns ``None`` for a rejected row (no text and no image to store)."""
    plan = ItemPlan(row, digest(text_version, row.text) if row.text else None)
    stored_hash = stored_hashes.get(row.item_id, (None, None))[1]
    has_image = "image" in stored_modalities.get(row.item_id, ())
    if image_version is None or not row.image_listed:
        if has_image:
            _keep_stored_image(plan, stored_hash, report, None)
    elif row.image is not None:
        image_bytes, problem = read_image(row.image, images_root)
        if image_bytes is not None:
            plan.image_hash, plan.image_ref = digest(image_version, image_bytes), str(row.image)
            plan.new_image = image_bytes
        elif has_image:
            _keep_stored_image(plan, stored_hash, report, problem)
        else:
            plan.problem = problem
    if not row.text and plan.image_hash is None:
        reason = "no text and no image" + (f" ({plan.problem})" if plan.problem else "")
        report.rejected.append({"item_id": row.item_id, "row": row.row, "reason": reason})
        return None
    return plan


def plan_chunk(
    chunk: Sequence[CatalogRow],
    text_version: str,
    image_version: str | None,
    stored_hashes: dict[str, tuple[str | None, str | None]],
    stored_modalities: dict[str, set[str]],
    images_root: Path,
) -> ChunkPlan:
    """Plan ``chunk`` against the stored hashes and modalities (``image_version=None``: images are off): hash each
    row's text and image file (read here, from inside ``images_root`` only), skip rows whose hashes are stored, and
    list what must be encoded. Reads no features and writes nothing."""
    report = EmbedReport()
    plans: list[ItemPlan] = []
    for row in chunk:
        plan = _plan_row(row, text_version, image_version, stored_hashes, stored_modalities, report, images_root)
        if plan is None:
            continue
        if stored_hashes.get(row.item_id) == (plan.text_hash, plan.image_hash):
            report.unchanged += 1
            continue
        plans.append(plan)
    # A modality whose hash matches the stored one is carried over from the store instead of re-encoded.
    need_text = [p for p in plans if p.text_hash is not None and not (
        p.text_hash == stored_hashes.get(p.row.item_id, (None, None))[0]
        and "text" in stored_modalities.get(p.row.item_id, ()))]
    # An image hash stored without features marks a file that failed before: it is not retried until it changes.
    need_image = [p for p in plans
                  if p.new_image is not None and p.image_hash != stored_hashes.get(p.row.item_id, (None, None))[1]]
    return ChunkPlan(plans, need_text, need_image, report, text_version, image_version)


def encode_items(texts: Sequence[tuple[str, str]], images: Sequence[tuple[str, bytes]], text_encoder: TextEncoder,
                 image_encoder: ImageEncoder | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | str]]:
    """Encode ``(item_id, text)`` and ``(item_id, image bytes)`` pairs, each encoder in its own batch size:
    ``item_id -> (T,)`` text vectors, and ``item_id -> (I,)`` image features or the reason the image failed."""
    vectors = text_encoder.encode([t for _, t in texts], show_progress=False) if texts else []
    encoded_texts = {item_id: v for (item_id, _), v in zip(texts, vectors)}
    encoded_images: dict[str, np.ndarray | str] = {}
    if images:
        result = image_encoder.encode_paths([b for _, b in images], show_progress=False)
        for i, (item_id, _) in enumerate(images):
            encoded_images[item_id] = result.features[i] if result.ok[i] else result.errors[i]
    return encoded_texts, encoded_images


def _merge(report: EmbedReport, part: EmbedReport) -> None:
    report.unchanged += part.unchanged
    report.images_kept += part.images_kept
    report.rejected.extend(part.rejected)
    report.warnings.extend(part.warnings)


def commit_chunk(
    plan: ChunkPlan,
    texts: dict[str, np.ndarray],
    images: dict[str, np.ndarray | str],
    store: Store,
    stored_hashes: dict[str, tuple[str | None, str | None]],
    stored_modalities: dict[str, set[str]],
    report: EmbedReport,
) -> None:
    """Write one planned chunk in one transaction, given its encoded ``texts`` and ``images`` (from
    :func:`encode_items`, wherever it ran), and update the stored-state maps and ``report`` in place."""
    _merge(report, plan.report)
    plans = plan.plans
    if not plans:
        return
    ids = [p.row.item_id for p in plans]
    stored_text = store.features_for("text", ids)
    stored_image = store.features_for("image", ids)
    text_features: dict[str, tuple[str, np.ndarray]] = {}
    image_features: dict[str, tuple[str, np.ndarray]] = {}
    for p in plans:
        old_text, old_image = stored_hashes.get(p.row.item_id, (None, None))
        if p.text_hash is not None and p.text_hash == old_text and p.row.item_id in stored_text:
            text_features[p.row.item_id] = stored_text[p.row.item_id]
        if p.image_hash is not None and p.image_hash == old_image and p.row.item_id in stored_image:
            image_features[p.row.item_id] = stored_image[p.row.item_id]
    text_features.update({p.row.item_id: (plan.text_version, texts[p.row.item_id]) for p in plan.need_text})
    for p in plan.need_image:
        encoded = images[p.row.item_id]
        if not isinstance(encoded, str):
            image_features[p.row.item_id] = (plan.image_version, encoded)
        elif p.row.item_id in stored_image:
            _keep_stored_image(p, stored_hashes[p.row.item_id][1], report, f"{p.row.image}: {encoded}")
            image_features[p.row.item_id] = stored_image[p.row.item_id]
        else:
            p.problem = f"{p.row.image}: {encoded}"

    kept_refs = store.image_refs([p.row.item_id for p in plans if p.kept_image])
    to_store = []
    for p in plans:
        item_id = p.row.item_id
        if stored_hashes.get(item_id) == (p.text_hash, p.image_hash):
            report.unchanged += 1  # the new image failed and the stored one was kept: nothing changed
            continue
        features = {}
        if item_id in text_features:
            features["text"] = text_features[item_id]
        if item_id in image_features:
            features["image"] = image_features[item_id]
        if not features:
            report.rejected.append({"item_id": item_id, "row": p.row.row,
                                    "reason": f"no text and the image could not be decoded ({p.problem})"})
            continue
        if p.problem:
            report.warnings.append({"item_id": item_id, "row": p.row.row, "reason": f"{p.problem}; stored text-only"})
        if "image" in stored_modalities.get(item_id, ()) and "image" not in features:
            report.images_removed += 1
        to_store.append({
            "item_id": item_id, "title": p.row.title, "text": p.row.text,
            "image_ref": kept_refs[item_id] if p.kept_image else p.image_ref,
            "text_hash": p.text_hash, "image_hash": p.image_hash, "features": features,
        })
    store.put_items(to_store)
    for entry in to_store:
        stored_hashes[entry["item_id"]] = (entry["text_hash"], entry["image_hash"])
        stored_modalities[entry["item_id"]] = set(entry["features"])
    report.embedded += len(to_store)
