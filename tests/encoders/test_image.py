import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from mmrec.encoders import ImageEncoder, ImageEncoderConfig, imagenet_categories, load_image


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
    return buffer.getvalue()


def _top3(encoder, array: np.ndarray) -> list[str]:
    probabilities = encoder.classify(load_image(_png_bytes(array))[None])[0]
    names = imagenet_categories()
    return [names[i] for i in probabilities.topk(3).indices]


def test_cat_photo_is_classified_as_a_cat(image_encoder):
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(_top3(image_encoder, data.chelsea()))


def test_coffee_photo_is_classified_as_espresso(image_encoder):
    assert {"espresso", "cup", "coffee mug"} & set(_top3(image_encoder, data.coffee()))


def test_posters_of_one_series_are_nearer_each_other(image_encoder, posters):
    toy_story, toy_story_2 = 1, 3114
    unrelated = [17, 2, 296, 356, 318, 593, 47, 50, 110, 150, 858, 260, 4993]
    result = image_encoder.encode_paths([posters / f"{i}.jpg" for i in [toy_story, toy_story_2, *unrelated]])
    assert result.ok.all()
    unit = result.features / np.linalg.norm(result.features, axis=1, keepdims=True)
    similarity = unit @ unit[0]
    assert similarity[1] > similarity[2:].max()


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "RGB"])
def test_any_colour_mode_decodes_to_rgb(mode):
    tensor = load_image(_png_bytes(data.chelsea(), mode))
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.uint8


def test_bad_files_are_reported_not_fatal(image_encoder, tmp_path):
    good = tmp_path / "cat.png"
    good.write_bytes(_png_bytes(data.chelsea()))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    result = image_encoder.encode_paths([good, tmp_path / "missing.jpg", corrupt, good])
    assert result.ok.tolist() == [True, False, False, True]
    assert "missing file" in result.errors[1] and "unreadable" in result.errors[2]
    np.testing.assert_allclose(result.features[0], result.features[3], atol=1e-5)
    assert not result.features[1].any()


def test_bf16_autocast_matches_fp32_on_cpu(image_encoder):
    images = torch.stack([load_image(_png_bytes(a)) for a in (data.chelsea(), data.coffee(), data.astronaut())])
    bf16 = ImageEncoder(ImageEncoderConfig(precision="bf16", device="cpu"))
    bf16.__dict__["network"] = image_encoder.network
    a, b = image_encoder.encode_tensors(images), bf16.encode_tensors(images)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99


def test_fp16_is_refused_on_cpu():
    with pytest.raises(ValueError, match="fp16"):
        ImageEncoder(ImageEncoderConfig(precision="fp16", device="cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_matches_fp32():
    images = torch.stack([load_image(_png_bytes(a)) for a in (data.chelsea(), data.coffee())])
    a = ImageEncoder(ImageEncoderConfig(precision="fp32", device="cuda")).encode_tensors(images)
    b = ImageEncoder(ImageEncoderConfig(precision="fp16", device="cuda")).encode_tensors(images)
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() >= 0.99
