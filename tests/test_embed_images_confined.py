"""embed reads only regular image files inside the images root, and none larger than the cap.

A FIFO would block ``open()`` forever; ``../`` paths, absolute paths and symlinks could read any file the process can
(``/etc/passwd`` into a hash and an error message). Each is a warning naming the item and the reason, and the item is
stored text-only, like any other unusable image.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mmrec import Store
from mmrec.embed import EmbedConfig, embed_catalog

from .conftest import POSTERS

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and symlinks")


def _poster(path: Path, index: int) -> Path:
    """A real poster from the shared data folder where there is one, else a small JPEG made here."""
    source = POSTERS / f"{index}.jpg"
    if source.is_file():
        shutil.copy(source, path)
    else:
        Image.new("RGB", (120, 180), (40 * index % 255, 90, 160)).save(path, "JPEG")
    return path


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """``tmp_path/catalog/images`` (the root, with one good poster) and ``tmp_path/outside.jpg`` (a valid image)."""
    root = tmp_path / "catalog" / "images"
    root.mkdir(parents=True)
    _poster(root / "good.jpg", 1)
    outside = _poster(tmp_path / "outside.jpg", 2)
    return tmp_path / "catalog", root, outside


def _run(folder: Path, images: dict[str, str], root: Path | None, text_encoder, image_encoder, timeout: float = 60):
    """Embed one item per ``images`` entry (item id -> image_path) in a thread: a blocked ``open()`` fails the test
    instead of hanging it."""
    catalog = pd.DataFrame({"item_id": list(images), "title": [f"Movie {i}" for i in images],
                            "image_path": list(images.values())})
    catalog.to_csv(folder / "items.csv", index=False)
    result: dict = {}

    def work():
        try:
            result["report"] = embed_catalog(folder / "items.csv", folder / "store", EmbedConfig(images_root=root),
                                             text_encoder, image_encoder)
        except BaseException as error:  # re-raised in the test's thread
            result["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in result:
        raise result["error"]
    if thread.is_alive():
        return None, thread
    with Store(folder / "store") as store:
        return (result["report"], store.stored_modalities()), thread


def _reasons(report) -> dict[str, str]:
    return {w["item_id"]: w["reason"] for w in report.warnings}


def test_a_fifo_is_refused_without_blocking(layout, text_encoder, image_encoder):
    folder, root, _ = layout
    fifo = root / "pipe.jpg"
    os.mkfifo(fifo)
    outcome, thread = _run(folder, {"fifo": "pipe.jpg", "good": "good.jpg"}, root, text_encoder, image_encoder, 30)
    if outcome is None:
        # unblock the reader stuck in open() so the thread can end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(30)
        pytest.fail("embed blocked opening a FIFO named as an image")
    report, modalities = outcome
    assert "not a regular file" in _reasons(report)["fifo"] and str(fifo) in _reasons(report)["fifo"]
    assert "stored text-only" in _reasons(report)["fifo"]
    assert modalities == {"fifo": {"text"}, "good": {"image", "text"}}


def test_paths_leading_out_of_the_root_are_refused(layout, text_encoder, image_encoder):
    folder, root, outside = layout
    (root / "link.jpg").symlink_to(outside)
    (root / "sub").mkdir()
    (root / "sub" / "inner.jpg").symlink_to(root / "good.jpg")  # a symlink that stays inside is fine
    images = {"escape": "../../outside.jpg", "absolute": str(outside), "symlink": "link.jpg",
              "passwd": "../" * 12 + "etc/passwd", "inner": "sub/inner.jpg", "good": "good.jpg"}
    outcome, _ = _run(folder, images, root, text_encoder, image_encoder)
    report, modalities = outcome
    reasons = _reasons(report)
    assert set(reasons) == {"escape", "absolute", "symlink", "passwd"}
    for item_id in ("escape", "absolute", "symlink", "passwd"):
        assert "outside the images root" in reasons[item_id] and "stored text-only" in reasons[item_id]
        assert modalities[item_id] == {"text"}, item_id
    assert "root:x:0" not in " ".join(reasons.values())
    assert modalities["good"] == modalities["inner"] == {"image", "text"}


def test_the_catalogue_folder_is_the_root_when_none_is_given(layout, text_encoder, image_encoder):
    folder, _, _ = layout
    outcome, _ = _run(folder, {"good": "images/good.jpg", "escape": "../outside.jpg"}, None, text_encoder,
                      image_encoder)
    report, modalities = outcome
    assert list(_reasons(report)) == ["escape"] and "outside the images root" in _reasons(report)["escape"]
    assert modalities == {"good": {"image", "text"}, "escape": {"text"}}


def test_an_image_over_the_size_cap_is_not_read(layout, text_encoder, image_encoder, monkeypatch):
    import mmrec.encoders.image as image_module

    folder, root, _ = layout
    big = _poster(root / "big.jpg", 3)
    small = root / "small.jpg"
    Image.new("RGB", (8, 8)).save(small, "JPEG")
    assert small.stat().st_size < 1000 < big.stat().st_size
    monkeypatch.setattr(image_module, "MAX_IMAGE_BYTES", 1000)
    outcome, _ = _run(folder, {"big": "big.jpg", "small": "small.jpg"}, root, text_encoder, image_encoder)
    report, modalities = outcome
    assert list(_reasons(report)) == ["big"]
    assert "larger than" in _reasons(report)["big"] and str(root / "big.jpg") in _reasons(report)["big"]
    assert modalities == {"big": {"text"}, "small": {"image", "text"}}


def test_load_image_refuses_a_fifo_and_an_oversized_file(tmp_path, monkeypatch):
    import mmrec.encoders.image as image_module

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    raised: list[BaseException] = []

    def load():
        try:
            image_module.load_image(fifo)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the blocked open() return
        thread.join(30)
        pytest.fail("load_image blocked opening a FIFO")
    assert len(raised) == 1 and isinstance(raised[0], ValueError) and "not a regular file" in str(raised[0])
    poster = _poster(tmp_path / "poster.jpg", 4)
    assert image_module.load_image(poster).shape == (3, 224, 224)
    monkeypatch.setattr(image_module, "MAX_IMAGE_BYTES", poster.stat().st_size - 1)
    with pytest.raises(ValueError, match="larger than"):
        image_module.load_image(poster)
    with pytest.raises(ValueError, match="larger than"):
        image_module.load_image(poster.read_bytes())
