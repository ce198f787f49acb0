"""``mmrec embed --engine ray``: the catalogue's encoding spread over a Ray Data actor pool, one writer.

The run is :func:`mmrec.embed.embed_catalog`'s, split where it can be: the driver validates the catalogue and plans
every chunk against the store (:func:`~mmrec.embed.plan_chunk`: hashes, rows to skip, features to carry over), the
actors encode what the plans list (:func:`~mmrec.embed.encode_items`, each actor loading its encoders once), and
the driver, the store's one writer, commits each chunk in one transaction as its encodings come back
(:func:`~mmrec.embed.commit_chunk`), in catalogue order. An interrupted run keeps the chunks committed before it
stopped; the next run plans them as unchanged and encodes the rest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..embed import (ChunkPlan, EmbedConfig, EmbedReport, catalog_images_root, commit_chunk, count_modalities, digest,
                     embed_encoders, embed_text_config, encode_items, plan_chunk, read_image)
from ..encoders.image import ImageEncoder, ImageEncoderConfig
from ..encoders.text import TextEncoder, TextEncoderConfig
from ..io.catalog import read_catalog
from ..store import Store
from .ray_session import RayConfig, commit_in_order, pool_size, ray_session, require_ray

__all__ = ["EmbedWorker", "embed_catalog_ray"]


class EmbedWorker:
    """A Ray actor of the encoding pool: loads the encoders once, then encodes batches of work rows.

    A batch holds ``item_id``, ``chunk``, ``text`` (``""``: not to encode), ``image_path`` (``""``: not to encode)
    and ``image_hash`` (the planned hash of that file) for ``B`` items; the answer adds ``text_vector (B, T)`` with
    ``has_text (B,)``, ``image_vector (B, I)`` with ``has_image (B,)`` and ``image_error (B,)`` (``""``: none)."""

    def __init__(self, text_config: TextEncoderConfig, image_config: ImageEncoderConfig | None, images_root: str,
                 versions: tuple[str, str | None], threads: int) -> None:
        torch.set_num_threads(threads)
        self.text_encoder = TextEncoder(text_config)
        self.image_encoder = ImageEncoder(image_config) if image_config is not None else None
        mine = (self.text_encoder.version, self.image_encoder.version if self.image_encoder else None)
        if mine != tuple(versions):
            # hashes planned with one model and features made by another would pass for current forever
            raise RuntimeError(f"this Ray worker's encoders are {mine}, the driver's {tuple(versions)}: install the "
                               "same mmrec and encoder packages on every node")
        self.images_root = Path(images_root)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(i) for i in batch["item_id"]]
        texts = [(i, str(t)) for i, t in zip(ids, batch["text"]) if t]
        images, failed = [], {}
        for item_id, path, planned in zip(ids, batch["image_path"], batch["image_hash"]):
            if not path:
                continue
            # the driver hashed the file and dropped its bytes; the file read here must be the file it hashed
            data, problem = read_image(Path(str(path)), self.images_root)
            if data is not None and digest(self.image_encoder.version, data) != planned:
                data, problem = None, "image file changed while it was being embedded: run embed again"
            if data is None:
                failed[item_id] = problem
            else:
                images.append((item_id, data))
        encoded_texts, encoded_images = encode_items(texts, images, self.text_encoder, self.image_encoder)
        encoded_images.update(failed)
        n, image_dim = len(ids), ImageEncoder.dim if self.image_encoder is not None else 0
        text_vector = np.zeros((n, self.text_encoder.dim), np.float32)
        image_vector = np.zeros((n, image_dim), np.float32)
        has_text, has_image = np.zeros(n, bool), np.zeros(n, bool)
        image_error = np.full(n, "", dtype=object)
        for k, item_id in enumerate(ids):
            if item_id in encoded_texts:
                text_vector[k], has_text[k] = encoded_texts[item_id], True
            found = encoded_images.get(item_id)
            if isinstance(found, str):
                image_error[k] = found
            elif found is not None:
                image_vector[k], has_image[k] = found, True
        return {"item_id": np.asarray(ids, dtype=object), "chunk": batch["chunk"], "text_vector": text_vector,
                "has_text": has_text, "image_vector": image_vector, "has_image": has_image,
                "image_error": image_error}


def _work_rows(index: int, plan: ChunkPlan) -> list[dict]:
    """The rows of chunk ``index`` the actors encode; the plans drop their image bytes (the worker reads the file
    again), so the driver holds texts and paths only."""
    texts = {p.row.item_id for p in plan.need_text}
    images = {p.row.item_id: p for p in plan.need_image}
    rows = []
    for p in plan.plans:
        item_id = p.row.item_id
        if item_id in texts or item_id in images:
            rows.append({"chunk": index, "item_id": item_id, "text": p.row.text if item_id in texts else "",
                         "image_path": str(p.row.image) if item_id in images else "",
                         "image_hash": p.image_hash if item_id in images else ""})
        p.new_image = None
    return rows


def embed_catalog_ray(
    catalog: str | Path,
    store: Store | str | Path,
    config: EmbedConfig | None = None,
    ray_config: RayConfig | None = None,
) -> EmbedReport:
    """:func:`mmrec.embed.embed_catalog` with the encoders run by a Ray Data actor pool (``ray_config``: the
    cluster and the pool). Same inputs, same store contents (hashes equal, vectors equal up to batching, cosine
    >= 0.9999), same report; the store stays one SQLite file written by this process, one transaction per
    ``config.chunk_size`` items. Raises :class:`~mmrec.distributed.RayNotInstalledError` without Ray, ``ValueError``
    for an invalid catalogue before anything is written, ``RuntimeError`` when the Ray job fails."""
    require_ray()
    config, ray_config = config or EmbedConfig(), ray_config or RayConfig()
    # The driver reads and validates the catalogue with the single-process reader rather than ray.data.read_csv:
    # its checks are global (ids unique across the whole file, row numbers counted from its start, every column
    # read as text so "0042" keeps its zeros), so a bad catalogue fails with the same error, before any write. The
    # work shipped to the actors is what planning leaves: the items to encode.
    rows = read_catalog(catalog, config.text_columns, config.images_root, config.use_images)
    store = store if isinstance(store, Store) else Store(store)
    text_encoder, image_encoder = embed_encoders(config, store)  # for their versions: no model is loaded here
    stored_hashes, stored_modalities = store.item_hashes(), store.stored_modalities()
    images_root = catalog_images_root(catalog, config)
    image_version = image_encoder.version if image_encoder is not None else None
    plans = [plan_chunk(rows[start : start + config.chunk_size], text_encoder.version, image_version, stored_hashes,
                        stored_modalities, images_root) for start in range(0, len(rows), config.chunk_size)]
    work = [row for index, plan in enumerate(plans) for row in _work_rows(index, plan)]
    report, encodings = EmbedReport(), _Encodings(len(plans))
    show = config.show_progress if config.show_progress is not None else len(rows) > 100
    with tqdm(total=len(rows), desc="embedding (ray)", unit="item", disable=not show) as bar:
        def commit(part: int) -> None:
            commit_chunk(plans[part], *encodings.take(part), store, stored_hashes, stored_modalities, report)
            bar.update(min(config.chunk_size, len(rows) - part * config.chunk_size))

        if not work:  # nothing to encode: no cluster needed
            for part in range(len(plans)):
                commit(part)
        else:
            if text_encoder.config.precision == "int8":  # built once into the store's cache, not once per actor
                text_encoder.onnx_model
            with ray_session(ray_config) as ray:
                answers = _encode(ray, work, ray_config, *_worker_configs(config, store, text_encoder, image_encoder),
                                  images_root, (text_encoder.version, image_version))
                counts = Counter(row["chunk"] for row in work)
                commit_in_order(answers, [counts[part] for part in range(len(plans))], encodings.file, commit,
                                "embedding")
    count_modalities(rows, stored_modalities, report)
    return report


class _Encodings:
    """The actors' answers gathered per chunk until the chunk commits."""

    def __init__(self, parts: int) -> None:
        self.texts: list[dict[str, np.ndarray]] = [{} for _ in range(parts)]
        self.images: list[dict[str, np.ndarray | str]] = [{} for _ in range(parts)]

    def file(self, answer: dict[str, np.ndarray]) -> list[int]:
        """File one answered batch (:class:`EmbedWorker`'s columns); returns each row's chunk."""
        parts = [int(part) for part in answer["chunk"]]
        for k, (part, item_id) in enumerate(zip(parts, answer["item_id"])):
            if answer["has_text"][k]:
                self.texts[part][str(item_id)] = np.array(answer["text_vector"][k])
            if answer["has_image"][k]:
                self.images[part][str(item_id)] = np.array(answer["image_vector"][k])
            elif answer["image_error"][k]:
                self.images[part][str(item_id)] = str(answer["image_error"][k])
        return parts

    def take(self, part: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | str]]:
        texts, images = self.texts[part], self.images[part]
        self.texts[part], self.images[part] = {}, {}
        return texts, images


def _worker_configs(config: EmbedConfig, store: Store, text_encoder: TextEncoder, image_encoder: ImageEncoder | None
                    ) -> tuple[TextEncoderConfig, ImageEncoderConfig | None]:
    """The encoders' configs for the actors, with absolute paths: an actor's working folder is not the driver's."""
    text = embed_text_config(config, store)
    # a path given is made absolute; none given stays none (the bundled model, whose version names it so)
    text = replace(text, cache_dir=Path(text.cache_dir).expanduser().resolve(),
                   model_path=text_encoder.model_path if text.model_path is not None else None)
    if image_encoder is None:
        return text, None
    weights = image_encoder.weights_path.resolve() if config.image.weights_path is not None else None
    return text, replace(config.image, weights_path=weights)


def _encode(ray, work: list[dict], ray_config: RayConfig, text_config: TextEncoderConfig,
            image_config: ImageEncoderConfig | None, images_root: Path, versions: tuple[str, str | None]):
    """The stream of encoded batches of ``work`` from an actor pool sized by ``ray_config``."""
    on_gpu = str(text_config.device).strip() != "cpu" or (image_config is not None
                                                        and str(image_config.device).strip() != "cpu")
    pool = pool_size(ray, ray_config, use_gpus=on_gpu)
    blocks, batch = pool.split(len(work), ray_config.batch_size)
    encoded = ray.data.from_items(work, override_num_blocks=blocks).map_batches(
        EmbedWorker, batch_size=batch, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool.workers), num_cpus=pool.cpus, num_gpus=pool.gpus,
        fn_constructor_kwargs={"text_config": text_config, "image_config": image_config,
                               "images_root": str(images_root), "versions": versions, "threads": pool.threads})
    return encoded.iter_batches(batch_size=None, batch_format="numpy")
