"""Device and numeric-precision choice shared by the encoders.

``precision="auto"`` runs float32 on a CPU and mixed precision on CUDA (bf16 where the GPU supports it, fp16
otherwise). Mixed precision is applied with :func:`torch.autocast`, so weights stay float32 and only matmuls and
convolutions run in the lower precision; outputs are always returned as float32.

``precision="int8"`` is the text encoder's alone: it runs the model quantised to int8 by ONNX Runtime on the CPU
(see :mod:`mmrec.encoders.onnx_int8`), so :func:`resolve_precision` accepts it only when asked to.
"""

from __future__ import annotations

import contextlib
from enum import Enum
from typing import Iterator

import torch

__all__ = ["Precision", "resolve_device", "resolve_precision", "autocast_context"]


class Precision(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


_DTYPES = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


DEVICE_TYPES = ("cpu", "cuda", "mps")
"""The device types the encoders and models run on (``cuda`` with or without an index)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> ``cuda`` when available, else ``cpu``; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``
    (or such a ``torch.device``) -> that device.

    Anything else (``"banana"``, ``"cuda:x"``, ``"meta"``, a number) raises ``ValueError`` naming the value and the
    accepted forms; whether the machine has the device is not checked here.
    """
    if device is None or (isinstance(device, str) and device.strip() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parsed = None
    if isinstance(device, torch.device):
        parsed = device
    elif isinstance(device, str):
        try:
            parsed = torch.device(device.strip())
        except (RuntimeError, TypeError, ValueError):
            parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise ValueError(f"device={device!r} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return parsed


def resolve_precision(precision: str | Precision, device: torch.device, allow_int8: bool = False) -> Precision:
    """Turn ``"auto"`` into a concrete precision for ``device`` and validate explicit choices.

    ``"int8"`` is refused unless ``allow_int8`` (the text encoder), and on any device but the CPU.

    >>> resolve_precision("auto", torch.device("cpu"))
    <Precision.FP32: 'fp32'>
    """
    try:
        precision = Precision(precision)
    except ValueError:
        raise ValueError(
            f"precision={precision!r} is not one of {[p.value for p in Precision]}"
        ) from None
    if precision is Precision.AUTO:
        if device.type != "cuda":
            return Precision.FP32
        return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16
    if precision is Precision.FP16 and device.type == "cpu":
        # CPU fp16 autocast exists but is slow and lossy on most CPUs; bf16 is the CPU mixed precision.
        raise ValueError("precision='fp16' needs a CUDA device; use 'bf16' or 'fp32' on a CPU")
    if precision is Precision.INT8:
        if not allow_int8:
            raise ValueError("precision='int8' is available for the text encoder only; use 'auto', 'fp32', 'fp16' "
                             "or 'bf16' here")
        if device.type != "cpu":
            raise ValueError(f"precision='int8' runs on the CPU only (ONNX Runtime), not on {device}: use "
                             "device='cpu', or 'fp16'/'bf16' on a GPU")
    return precision


@contextlib.contextmanager
def autocast_context(device: torch.device, precision: Precision) -> Iterator[None]:
    """``inference_mode`` plus ``autocast`` for the mixed precisions (nothing extra for fp32)."""
    with torch.inference_mode():
        if precision in _DTYPES:
            with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
                yield
        else:
            yield
