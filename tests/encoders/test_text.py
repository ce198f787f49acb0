import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.catalog import compose_text
from mmrec.encoders import TextEncoder, TextEncoderConfig

from ..conftest import ASSETS


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


def test_bf16_autocast_matches_fp32_on_cpu(text_encoder):
    """The mixed-precision path, exercised on CPU with bf16, stays within cosine 0.99 of float32."""
    texts = _item_texts(1, 2, 260, 1210, 17)
    bf16 = TextEncoder(TextEncoderConfig(precision="bf16", device="cpu"))
    bf16.__dict__["model"] = text_encoder.model  # same weights, no second load
    cosine = (text_encoder.encode(texts) * bf16.encode(texts)).sum(axis=1)
    assert cosine.min() >= 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_matches_fp32():
    texts = _item_texts(1, 2, 260, 1210, 17)
    fp32 = TextEncoder(TextEncoderConfig(precision="fp32", device="cuda")).encode(texts)
    fp16 = TextEncoder(TextEncoderConfig(precision="fp16", device="cuda")).encode(texts)
    assert (fp32 * fp16).sum(axis=1).min() >= 0.99
