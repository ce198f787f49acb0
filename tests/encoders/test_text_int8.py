"""precision="int8": MiniLM exported to ONNX, dynamically quantised and run by ONNX Runtime on the CPU.

The real model and the real ONNX Runtime throughout. Exporting and quantising takes some seconds, so one module
fixture builds the model once; the tests that need a build of their own (a corrupt cache) reuse the loaded fp32
model.
"""

import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec import Store
from mmrec.embed import EmbedConfig, embed_catalog
from mmrec.encoders import ImageEncoder, ImageEncoderConfig, Precision, TextEncoder, TextEncoderConfig, onnx_int8
from mmrec.encoders.precision import resolve_precision
from mmrec.io.catalog import compose_text
from mmrec.trained import ModelLoadError, check_encoders

from ..conftest import ASSETS



def _needs_onnxruntime() -> None:
    pytest.importorskip("onnxruntime", reason="the int8 extra (pip install 'mmrec[int8]') is not installed")


def _movielens_texts(n: int = 200, seed: int = 0) -> list[str]:
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False).sample(n, random_state=seed)
    return [compose_text({"title": row.title, "genres": row.genres}) for row in items.itertuples()]


@pytest.fixture(scope="module")
def fp32(text_encoder):
    """The fp32 encoder on the CPU: the session one on a CPU-only machine (no second load)."""
    return text_encoder if text_encoder.device.type == "cpu" else TextEncoder(TextEncoderConfig(device="cpu"))


def _int8(fp32: TextEncoder, cache_dir) -> TextEncoder:
    encoder = TextEncoder(TextEncoderConfig(precision="int8", cache_dir=cache_dir))
    encoder.__dict__["model"] = fp32.model  # same weights: an export, when needed, loads nothing again
    return encoder


@pytest.fixture(scope="module")
def int8(fp32, tmp_path_factory):
    """An int8 encoder whose model was built (exported and quantised) into a fresh cache folder."""
    _needs_onnxruntime()
    encoder = _int8(fp32, tmp_path_factory.mktemp("onnx-cache"))
    encoder.encode(["build the model"])
    return encoder


@pytest.fixture(scope="module")
def texts():
    return _movielens_texts()


def _entry(encoder: TextEncoder):
    return onnx_int8.ModelCache(encoder.cache_dir).entry(encoder.version.removesuffix(onnx_int8.VERSION_SUFFIX))


def test_int8_vectors_stay_within_cosine_098_of_fp32_on_movielens(int8, fp32, texts):
    quantised, reference = int8.encode(texts), fp32.encode(texts)
    assert quantised.shape == (200, 384) and quantised.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(quantised, axis=1), 1.0, atol=1e-5)
    cosine = (quantised * reference).sum(axis=1)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, (cosine.mean(), cosine.min())
    assert np.abs(quantised - reference).max() > 1e-3  # really not the fp32 computation


def test_int8_keeps_input_order_and_neighbours(int8, texts):
    """Outputs come back in input order although batches run longest first. Activations are quantised per batch, so
    one text's vector moves a little with its batch companions (cosine ~0.99), never to another text's place."""
    batched = int8.encode(texts[:20])
    alone = np.stack([int8.encode([text])[0] for text in texts[:20]])
    assert ((batched * alone).sum(axis=1) >= 0.98).all()
    assert ((alone @ batched.T).argmax(axis=1) == np.arange(20)).all()
    star_wars, jedi, sense = int8.encode([
        "Star Wars: Episode IV - A New Hope (1977). genres: Action, Adventure, Sci-Fi",
        "Star Wars: Episode VI - Return of the Jedi (1983). genres: Action, Adventure, Sci-Fi",
        "Sense and Sensibility (1995). genres: Drama, Romance",
    ])
    assert float(star_wars @ jedi) > float(star_wars @ sense) + 0.2


def test_tokenization_is_the_sentence_transformers_one(int8, fp32):
    """Same ids and mask as sentence-transformers: padding, truncation at max_seq_length, case, accents, spaces."""
    cases = ["  spaces around  ", "Crème Brûlée (2001). genres: Comedy", "word " * 300, "UPPER and lower", "a"]
    ours = int8.onnx_model.tokenize(cases)
    st = fp32.model
    theirs = (st.preprocess if hasattr(st, "preprocess") else st.tokenize)(cases)
    assert ours["input_ids"].shape == (5, 128)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[name], theirs[name].numpy())


def test_version_differs_from_fp32(int8, fp32):
    assert fp32.version.startswith("all-MiniLM-L6-v2@") and "int8" not in fp32.version
    assert int8.version == fp32.version + "+int8-ort"
    assert int8.precision is Precision.INT8 and int8.device.type == "cpu" and int8.dim == 384


def test_cached_model_is_reused_without_a_new_export(int8, fp32, texts, monkeypatch):
    entry = _entry(int8)
    model_file = entry / "model.onnx"
    before = model_file.stat().st_mtime_ns
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["source"] == fp32.version and meta["settings"] == onnx_int8.QUANT_SETTINGS
    assert meta["versions"]["onnxruntime"].split(".")[:2] == entry.name.rsplit("-ort", 1)[1].split(".")

    def no_export(*args, **kwargs):
        raise AssertionError("the cached model was exported again")

    monkeypatch.setattr(onnx_int8, "export_int8", no_export)
    again = TextEncoder(TextEncoderConfig(precision="int8", cache_dir=int8.cache_dir))
    np.testing.assert_array_equal(again.encode(texts[:50]), int8.encode(texts[:50]))
    assert "model" not in again.__dict__  # the fp32 model was never loaded
    assert model_file.stat().st_mtime_ns == before
    assert [p.name for p in int8.cache_dir.iterdir()] == [entry.name]  # no temporary folder left behind


def test_corrupt_cached_model_is_detected_and_rebuilt(int8, fp32, texts, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(int8.cache_dir, cache)
    model_file = cache / _entry(int8).name / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x7f" * 64  # same size, still loadable: only the hash tells
    model_file.write_bytes(bytes(data))

    rebuilt = _int8(fp32, cache)
    with pytest.warns(RuntimeWarning, match="does not match the sha256.*rebuilding"):
        vectors = rebuilt.encode(texts[:50])
    assert onnx_int8.ModelCache(cache).problem(model_file.parent, fp32.version) is None
    assert ((vectors * int8.encode(texts[:50])).sum(axis=1) >= 0.999).all()


def test_int8_on_cuda_is_refused_and_auto_device_means_cpu():
    with pytest.raises(ValueError, match="CPU only"):
        TextEncoder(TextEncoderConfig(precision="int8", device="cuda"))
    with pytest.raises(ValueError, match="CPU only"):
        resolve_precision("int8", torch.device("cuda:1"), allow_int8=True)
    _needs_onnxruntime()
    assert TextEncoder(TextEncoderConfig(precision="int8")).device.type == "cpu"


def test_int8_is_the_text_encoders_alone():
    with pytest.raises(ValueError, match="text encoder only"):
        ImageEncoder(ImageEncoderConfig(precision="int8", device="cpu"))
    with pytest.raises(ValueError, match="text encoder only"):
        resolve_precision("int8", torch.device("cpu"))


def test_without_onnxruntime_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'mmrec\[int8\]'") as raised:
        TextEncoder(TextEncoderConfig(precision="int8"))
    assert isinstance(raised.value, RuntimeError)  # the command line reports it as `error: ...`, no traceback


def test_int8_store_never_mixes_with_fp32_features(int8, fp32, tmp_path, monkeypatch):
    """Switching a store to int8 re-embeds every text (the version is part of the text hash), and a model trained
    on fp32 text features refuses to run on int8 ones, whether the store switched fully or half way."""
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False).head(6)
    items[["item_id", "title", "genres"]].to_csv(tmp_path / "items.csv", index=False)
    store = Store(tmp_path / "store")
    config = EmbedConfig(use_images=False, text_columns=["title", "genres"])
    embed_catalog(tmp_path / "items.csv", store, config, text_encoder=fp32)
    assert store.encoders() == {"text": [fp32.version]}

    # embed builds its own int8 encoder, whose model cache lives beside the store (seeded: no export here)
    shutil.copytree(int8.cache_dir, store.path / "encoders")
    monkeypatch.setattr(onnx_int8, "export_int8",
                        lambda *a, **k: pytest.fail("exported instead of using STORE/encoders"))
    int8_config = EmbedConfig(use_images=False, text_columns=["title", "genres"],
                              text=TextEncoderConfig(precision="int8"))
    report = embed_catalog(tmp_path / "items.csv", store, int8_config)
    assert (report.embedded, report.unchanged) == (6, 0)
    assert store.encoders() == {"text": [int8.version]}

    trained_on_fp32 = SimpleNamespace(network=SimpleNamespace(config=SimpleNamespace(use_text=True, use_image=False)),
                                      meta={"encoders": {"text": [fp32.version]}})
    for stored in (store.encoders(), {"text": sorted([fp32.version, int8.version])}):
        with pytest.raises(ModelLoadError, match=r"\+int8-ort"):
            check_encoders(trained_on_fp32, stored)
