"""Re-embedding never destroys stored image features by accident: text-only runs, posters missing for a run and
undecodable (oversized) posters and a catalogue without an image column all keep what the store holds; only a
catalogue row whose image_path is empty drops it."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mmrec import Store
from mmrec.embed import EmbedConfig, EmbedReport, embed_catalog
from mmrec.encoders import ImageEncoder, TextEncoder

from .conftest import ASSETS

ImageState = dict[str, tuple[str | None, str | None, str | None, bytes | None]]


def _write_huge_png(path: Path, side: int) -> Path:
    """A valid all-black 1-bit PNG of ``side x side`` pixels, written chunk by chunk.

    PIL would need ``side**2`` bytes of memory to create it (mode "1" keeps a byte per pixel), while this file is a
    few kB: enough to trip PIL's decompression-bomb check, which reads only the header size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte 0, then the packed pixels
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


# Above twice Image.MAX_IMAGE_PIXELS PIL raises DecompressionBombError; between once and twice it only warns.
BOMB_SIDE = 20_000
WARNING_SIDE = 10_000
assert BOMB_SIDE**2 > 2 * Image.MAX_IMAGE_PIXELS
assert Image.MAX_IMAGE_PIXELS < WARNING_SIDE**2 <= 2 * Image.MAX_IMAGE_PIXELS


@pytest.fixture
def posters_copy(tmp_path: Path, posters: Path) -> tuple[pd.DataFrame, Path, EmbedConfig]:
    """Three catalogue items with posters copied into the test's own folder, so a test can delete or replace one."""
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False)
    catalog = items[items.image_path != ""].iloc[:3].reset_index(drop=True)
    own = tmp_path / "posters"
    own.mkdir()
    for name in catalog.image_path:
        shutil.copy(posters / name, own / name)
    config = EmbedConfig(images_root=own, text_columns=["title", "genres"])
    return catalog, own, config


def _embed(catalog: pd.DataFrame, folder: Path, config: EmbedConfig, text_encoder: TextEncoder,
           image_encoder: ImageEncoder | None) -> EmbedReport:
    catalog.to_csv(folder / "catalog.csv", index=False)
    return embed_catalog(folder / "catalog.csv", folder / "store", config, text_encoder, image_encoder)


def _image_state(folder: Path) -> ImageState:
    """``item_id -> (image_hash, image_ref, encoder, raw vector bytes)`` straight from SQLite: byte-level equality."""
    with Store(folder / "store") as store:
        query = "SELECT item_id, encoder, vector FROM features WHERE modality = 'image'"
        features = {i: (encoder, vector) for i, encoder, vector in store.db.execute(query)}
        rows = store.db.execute("SELECT item_id, image_hash, image_ref FROM items").fetchall()
        return {i: (h, ref, *features.get(i, (None, None))) for i, h, ref in rows}


def _modalities(folder: Path, item_id: str) -> tuple[str, ...]:
    with Store(folder / "store") as store:
        return tuple(sorted(store.stored_modalities()[item_id]))


def test_text_only_rerun_refreshes_text_and_keeps_image_features(posters_copy, text_encoder, image_encoder):
    catalog, own, config = posters_copy
    folder = own.parent
    first = _embed(catalog, folder, config, text_encoder, image_encoder)
    assert (first.embedded, first.text_only) == (3, 0)
    before = _image_state(folder)
    with Store(folder / "store") as store:
        old_text = store.item_hashes()[catalog.item_id[0]][0]

    edited = catalog.copy()
    edited.loc[0, "title"] += " (director's cut)"
    text_run = EmbedConfig(images_root=own, text_columns=["title", "genres"], use_images=False)
    second = _embed(edited, folder, text_run, text_encoder, None)
    assert (second.embedded, second.unchanged, second.text_only, second.warnings) == (1, 2, 0, [])
    assert _image_state(folder) == before
    with Store(folder / "store") as store:
        assert store.item_hashes()[catalog.item_id[0]][0] != old_text
        stored = store.stored_modalities()
        assert all(stored[i] == {"image", "text"} for i in catalog.item_id)

    # The kept image hashes still describe the kept features, so turning images back on re-encodes nothing.
    third = _embed(edited, folder, config, text_encoder, image_encoder)
    assert (third.embedded, third.unchanged) == (0, 3)


@pytest.mark.parametrize("breakage", ["deleted", "oversized"])
def test_unusable_poster_keeps_the_stored_image_and_warns(posters_copy, text_encoder, image_encoder, breakage):
    catalog, own, config = posters_copy
    folder = own.parent
    _embed(catalog, folder, config, text_encoder, image_encoder)
    before = _image_state(folder)
    poster = own / catalog.image_path[1]
    saved = poster.read_bytes()
    if breakage == "deleted":
        poster.unlink()
    else:
        _write_huge_png(poster, BOMB_SIDE)

    report = _embed(catalog, folder, config, text_encoder, image_encoder)
    assert _image_state(folder) == before
    assert _modalities(folder, catalog.item_id[1]) == ("image", "text")
    assert (report.embedded, report.unchanged, report.images_kept, report.text_only) == (0, 3, 1, 0)
    [warning] = report.warnings
    assert warning["item_id"] == catalog.item_id[1] and str(poster) in warning["reason"]
    assert "kept the stored image" in warning["reason"]

    # Once the poster is back the item is current again: nothing to redo, nothing to warn about.
    poster.write_bytes(saved)
    restored = _embed(catalog, folder, config, text_encoder, image_encoder)
    assert (restored.embedded, restored.unchanged, restored.images_kept, restored.warnings) == (0, 3, 0, [])


def test_emptied_image_path_removes_the_stored_image(posters_copy, text_encoder, image_encoder):
    catalog, own, config = posters_copy
    folder = own.parent
    _embed(catalog, folder, config, text_encoder, image_encoder)
    before = _image_state(folder)
    edited = catalog.copy()
    edited.loc[2, "image_path"] = ""

    report = _embed(edited, folder, config, text_encoder, image_encoder)
    assert (report.embedded, report.unchanged, report.images_removed, report.text_only) == (1, 2, 1, 1)
    assert report.warnings == []
    after = _image_state(folder)
    assert after[catalog.item_id[2]] == (None, None, None, None)
    assert {i: after[i] for i in catalog.item_id[:2]} == {i: before[i] for i in catalog.item_id[:2]}
    assert _modalities(folder, catalog.item_id[2]) == ("text",)


def test_catalogue_without_image_column_keeps_stored_images(posters_copy, text_encoder, image_encoder):
    # a column dropped from an export says nothing about the posters; only an empty image_path removes one
    catalog, own, config = posters_copy
    folder = own.parent
    _embed(catalog, folder, config, text_encoder, image_encoder)
    before = _image_state(folder)
    report = _embed(catalog.drop(columns="image_path"), folder, config, text_encoder, image_encoder)
    assert (report.embedded, report.unchanged, report.images_removed, report.text_only) == (0, 3, 0, 0)
    assert _image_state(folder) == before


def test_oversized_new_image_falls_back_to_text_only(posters_copy, text_encoder, image_encoder):
    catalog, own, config = posters_copy
    folder = own.parent
    bomb = _write_huge_png(own / "huge.png", BOMB_SIDE)
    assert bomb.stat().st_size < 1_000_000
    catalog.loc[0, "image_path"] = bomb.name

    report = _embed(catalog, folder, config, text_encoder, image_encoder)
    assert (report.embedded, report.text_only, report.images_kept, report.rejected) == (3, 1, 0, [])
    [warning] = report.warnings
    assert warning["item_id"] == catalog.item_id[0] and str(bomb) in warning["reason"]
    assert "DecompressionBomb" in warning["reason"] and "stored text-only" in warning["reason"]
    assert _modalities(folder, catalog.item_id[0]) == ("text",)
    assert all(_modalities(folder, i) == ("image", "text") for i in catalog.item_id[1:])


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_warning_escalated_to_an_error_is_reported_per_file(tmp_path, image_encoder, posters):
    # Run with -W error (or this marker), PIL's warning for 1x..2x MAX_IMAGE_PIXELS is raised in a decode thread.
    large = _write_huge_png(tmp_path / "large.png", WARNING_SIDE)
    result = image_encoder.encode_paths([large, posters / "1.jpg"])
    assert result.ok.tolist() == [False, True]
    assert "DecompressionBombWarning" in result.errors[0] and str(large) in result.errors[0]
