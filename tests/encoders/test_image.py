import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from mmrec.encoders import ImageEncoder, ImageEncoderConfig, Precision, imagenet_categories, load_image
from mmrec.encoders.precision import resolve_precision

from ..conftest import output_dtypes


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


def _with_network(precision: str, network, device: str = "cpu") -> ImageEncoder:
    encoder = ImageEncoder(ImageEncoderConfig(precision=precision, device=device))
    encoder.__dict__["network"] = network  # same weights, no second load
    return encoder


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture
def cpu_network(image_encoder):
    """The network on the CPU: the session encoder's on a CPU-only machine (no second load), else a CPU copy."""
    if image_encoder.device.type == "cpu":
        return image_encoder.network
    return ImageEncoder(ImageEncoderConfig(device="cpu")).network


@pytest.fixture
def cuda_network(image_encoder):
    if image_encoder.device.type == "cuda":
        return image_encoder.network
    return ImageEncoder(ImageEncoderConfig(device="cuda")).network


def test_bf16_autocast_runs_and_matches_fp32_on_cpu(cpu_network):
    """The mixed-precision path, exercised on CPU with bf16: the convolutions really run in bfloat16, and the
    features differ from float32 ones yet stay within cosine 0.99 of them."""
    images = torch.stack([load_image(_png_bytes(a)) for a in (data.chelsea(), data.coffee(), data.astronaut())])
    a, fp32_dtypes = output_dtypes(cpu_network, torch.nn.Conv2d, lambda: _with_network("fp32", cpu_network).encode_tensors(images))
    b, bf16_dtypes = output_dtypes(cpu_network, torch.nn.Conv2d, lambda: _with_network("bf16", cpu_network).encode_tensors(images))
    assert fp32_dtypes == {torch.float32} and bf16_dtypes == {torch.bfloat16}
    assert b.dtype == np.float32
    assert np.abs(a - b).max() > 1e-4  # not the float32 computation
    assert _cosine(a, b).min() >= 0.99


def test_auto_precision_is_fp32_on_cpu(cpu_network):
    assert resolve_precision("auto", torch.device("cpu")) is Precision.FP32
    auto = _with_network("auto", cpu_network)
    assert auto.precision is Precision.FP32
    _, dtypes = output_dtypes(cpu_network, torch.nn.Conv2d, lambda: auto.encode_tensors(load_image(_png_bytes(data.coffee()))[None]))
    assert dtypes == {torch.float32}


def test_fp16_is_refused_on_cpu():
    with pytest.raises(ValueError, match="fp16"):
        ImageEncoder(ImageEncoderConfig(precision="fp16", device="cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_runs_half_and_matches_fp32(cuda_network):
    images = torch.stack([load_image(_png_bytes(a)) for a in (data.chelsea(), data.coffee())])
    fp32, fp16 = (_with_network(p, cuda_network, "cuda") for p in ("fp32", "fp16"))
    a, fp32_dtypes = output_dtypes(cuda_network, torch.nn.Conv2d, lambda: fp32.encode_tensors(images))
    b, fp16_dtypes = output_dtypes(cuda_network, torch.nn.Conv2d, lambda: fp16.encode_tensors(images))
    assert fp32_dtypes == {torch.float32} and fp16_dtypes == {torch.float16}
    assert np.abs(a - b).max() > 1e-4
    assert _cosine(a, b).min() >= 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_precision_is_half_on_cuda(cuda_network):
    expected = Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16
    assert resolve_precision("auto", torch.device("cuda")) is expected
    auto = _with_network("auto", cuda_network, "cuda")
    assert auto.precision is expected
    image = load_image(_png_bytes(data.coffee()))[None]
    features, dtypes = output_dtypes(cuda_network, torch.nn.Conv2d, lambda: auto.encode_tensors(image))
    assert dtypes == {torch.bfloat16 if expected is Precision.BF16 else torch.float16}
    assert features.dtype == np.float32
