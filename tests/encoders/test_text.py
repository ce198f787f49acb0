import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.io.catalog import compose_text
from mmrec.encoders import Precision, TextEncoder, TextEncoderConfig
from mmrec.encoders.precision import resolve_precision

from ..conftest import ASSETS, output_dtypes


def _item_texts(*ids: int) -> list[str]:
    items = pd.read_csv(ASSETS / "items.csv", dtype=str, keep_default_na=False).set_index("item_id")
    return [compose_text({"title": items.at[str(i), "title"], "genres": items.at[str(i), "genres"]}) for i in ids]


def test_star_wars_is_nearer_return_of_the_jedi_than_sense_and_sensibility(text_encoder):
    star_wars, jedi, sense = text_encoder.encode(_item_texts(260, 1210, 17))
    assert "Star Wars" in _item_texts(260)[0]
    assert float(star_wars @ jedi) > float(star_wars @ sense) + 0.2


def test_output_is_normalised_float32_in_input_order(text_encoder):
    texts = ["a very long text about space operas and jedi knights " * 5, "short", "Jane Austen romance"]
    vectors = text_encoder.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Length sorting inside the batch must not permute the outputs.
    one_by_one = np.stack([text_encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)


@pytest.mark.parametrize("bad", ["", "   \n\t", None])
def test_empty_text_is_a_clear_error(text_encoder, bad):
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        text_encoder.encode(["fine", bad])


def test_bad_config_fails_early(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        TextEncoderConfig(batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        TextEncoder(TextEncoderConfig(precision="fp8"))
    with pytest.raises(ValueError, match="model_path"):
        TextEncoder(TextEncoderConfig(model_path=tmp_path))


def test_version_names_model_and_weights(text_encoder):
    assert text_encoder.version.startswith("all-MiniLM-L6-v2@")


def _with_model(precision: str, model, device: str = "cpu") -> TextEncoder:
    encoder = TextEncoder(TextEncoderConfig(precision=precision, device=device))
    encoder.__dict__["model"] = model  # same weights, no second load
    return encoder


@pytest.fixture
def cpu_model(text_encoder):
    """The model on the CPU: the session encoder's on a CPU-only machine (no second load), else a CPU copy."""
    if text_encoder.device.type == "cpu":
        return text_encoder.model
    return TextEncoder(TextEncoderConfig(device="cpu")).model


@pytest.fixture
def cuda_model(text_encoder):
    if text_encoder.device.type == "cuda":
        return text_encoder.model
    return TextEncoder(TextEncoderConfig(device="cuda")).model


def test_bf16_autocast_runs_and_matches_fp32_on_cpu(cpu_model):
    """The mixed-precision path, exercised on CPU with bf16: the matmuls really run in bfloat16, and the vectors
    differ from float32 ones yet stay within cosine 0.99 of them."""
    texts = _item_texts(1, 2, 260, 1210, 17)
    fp32, fp32_dtypes = output_dtypes(cpu_model, torch.nn.Linear, lambda: _with_model("fp32", cpu_model).encode(texts))
    bf16, bf16_dtypes = output_dtypes(cpu_model, torch.nn.Linear, lambda: _with_model("bf16", cpu_model).encode(texts))
    assert fp32_dtypes == {torch.float32} and bf16_dtypes == {torch.bfloat16}
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - fp32).max() > 1e-5  # not the float32 computation
    assert (fp32 * bf16).sum(axis=1).min() >= 0.99


def test_auto_precision_is_fp32_on_cpu(cpu_model):
    assert resolve_precision("auto", torch.device("cpu")) is Precision.FP32
    auto = _with_model("auto", cpu_model)
    assert auto.precision is Precision.FP32
    _, dtypes = output_dtypes(cpu_model, torch.nn.Linear, lambda: auto.encode(_item_texts(1, 260)))
    assert dtypes == {torch.float32}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_runs_half_and_matches_fp32(cuda_model):
    texts = _item_texts(1, 2, 260, 1210, 17)
    fp32, fp32_dtypes = output_dtypes(cuda_model, torch.nn.Linear, lambda: _with_model("fp32", cuda_model, "cuda").encode(texts))
    fp16, fp16_dtypes = output_dtypes(cuda_model, torch.nn.Linear, lambda: _with_model("fp16", cuda_model, "cuda").encode(texts))
    assert fp32_dtypes == {torch.float32} and fp16_dtypes == {torch.float16}
    assert np.abs(fp16 - fp32).max() > 1e-5
    assert (fp32 * fp16).sum(axis=1).min() >= 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_precision_is_half_on_cuda(cuda_model):
    expected = Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16
    assert resolve_precision("auto", torch.device("cuda")) is expected
    auto = _with_model("auto", cuda_model, "cuda")
    assert auto.precision is expected
    vectors, dtypes = output_dtypes(cuda_model, torch.nn.Linear, lambda: auto.encode(_item_texts(1, 260)))
    assert dtypes == {torch.bfloat16 if expected is Precision.BF16 else torch.float16}
    assert vectors.dtype == np.float32
