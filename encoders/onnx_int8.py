"""int8 text encoding on the CPU: the transformer exported to ONNX, dynamically quantised, run by ONNX Runtime.

Used by :class:`~mmrec.encoders.text.TextEncoder` for ``precision="int8"``. The pipeline reproduces the
sentence-transformers one of a mean-pooling model (Transformer -> mean Pooling -> Normalize, e.g. all-MiniLM-L6-v2):

1. the Hugging Face transformer is exported with ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``:
   the dynamo exporter needs ``onnxscript``, which the ``int8`` extra does not install), batch and sequence axes
   dynamic, output ``last_hidden_state``;
2. its weights are quantised with ``onnxruntime.quantization.quantize_dynamic``: int8 weights per output channel for
   every MatMul with a constant weight and for the embedding Gathers; activations are quantised per batch at run
   time (uint8). ``reduce_range`` (7-bit weights) avoids the int16 saturation of u8*s8 products on AVX2/AVX-512
   CPUs without VNNI; on MiniLM it costs no measurable accuracy (cosine to fp32 0.992 mean either way);
3. texts are tokenized as sentence-transformers does (padding to the batch's longest, ``longest_first``
   truncation at ``max_seq_length``), the token vectors mean-pooled over the attention mask and L2-normalised
   in numpy.

The quantised model is built once and cached on disk (:class:`ModelCache`), keyed by the fp32 encoder version
(weights fingerprint + token limit), the quantisation settings and the ONNX Runtime major.minor. Nothing is ever
fetched from a hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "INSTALL_HINT", "QUANT_SETTINGS", "VERSION_SUFFIX", "ModelCache", "OnnxRuntimeMissing", "OnnxTextModel",
    "check_pipeline", "default_cache_dir", "export_int8", "require_onnxruntime",
]

INSTALL_HINT = "pip install 'mmrec[int8]'"

VERSION_SUFFIX = "+int8-ort"
"""Appended to the fp32 encoder version: int8 features are never taken for fp32 ones (nor mixed with them)."""

QUANT_SETTINGS = {
    "exporter": "torchscript",
    "opset": 17,
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": True,
    "op_types": ["Gather", "MatMul"],
    "matmul_const_b_only": True,
}
"""How the model is exported and quantised; part of the cache key, so changing any of it rebuilds the model."""

_FORMAT = 1  # layout of a cache entry (model.onnx + meta.json)
_STALE_BUILD_S = 3600  # a half-built entry older than this was left by a crashed build


class OnnxRuntimeMissing(ImportError, RuntimeError):
    """ONNX Runtime (or onnx) is not installed. An ``ImportError`` and, for the command line, a ``RuntimeError``."""


def require_onnxruntime():
    """The ``onnxruntime`` module; raises :class:`OnnxRuntimeMissing` naming the extra to install."""
    try:
        import onnx  # noqa: F401  (the quantiser needs it)
        import onnxruntime
    except ImportError as error:
        missing = error.name or "onnxruntime"
        raise OnnxRuntimeMissing(
            f"precision='int8' runs the text encoder with ONNX Runtime, and {missing} is not installed: "
            f"{INSTALL_HINT}", name=missing,
        ) from error
    return onnxruntime


def default_cache_dir() -> Path:
    """``$MMREC_CACHE/onnx`` when set, else ``$XDG_CACHE_HOME/mmrec/onnx`` (``~/.cache/mmrec/onnx``)."""
    if os.environ.get("MMREC_CACHE"):
        return Path(os.environ["MMREC_CACHE"]).expanduser() / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mmrec" / "onnx"


def _ort_major_minor() -> str:
    import onnxruntime

    return ".".join(onnxruntime.__version__.split(".")[:2])


def cache_key(source_version: str) -> str:
    """File-system safe name of the cache entry for the fp32 encoder ``source_version``."""
    settings = hashlib.sha256(json.dumps(QUANT_SETTINGS, sort_keys=True).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', source_version)}-int8-{settings}-ort{_ort_major_minor()}"


# -- the sentence-transformers pipeline this module reproduces ------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not readable JSON ({error})") from None


def check_pipeline(model_path: Path) -> bool:
    """Check that ``model_path`` is a Transformer -> mean Pooling [-> Normalize] model (what int8 reproduces);
    returns whether inputs are lower-cased first (``do_lower_case`` of ``sentence_bert_config.json``).

    A folder without ``modules.json`` is a plain Hugging Face model, which sentence-transformers mean-pools too.
    """
    unsupported = f"precision='int8' supports mean-pooling sentence-transformers models only; {model_path} has "
    modules_file = model_path / "modules.json"
    if modules_file.is_file():
        modules = sorted(_read_json(modules_file), key=lambda m: m.get("idx", 0))
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            raise ValueError(unsupported + f"modules {kinds}")
        if modules[0].get("path", "") not in ("", "."):
            raise ValueError(unsupported + f"its transformer in the subfolder {modules[0]['path']!r}")
        pooling_file = model_path / modules[1].get("path", "") / "config.json"
        pooling = _read_json(pooling_file) if pooling_file.is_file() else {"pooling_mode_mean_tokens": True}
        modes = pooling.get("pooling_mode")
        if modes is None:
            modes = [key[len("pooling_mode_"):] for key, on in pooling.items()
                     if key.startswith("pooling_mode_") and on is True]
        modes = [modes] if isinstance(modes, str) else list(modes)
        if modes not in (["mean_tokens"], ["mean"]):
            raise ValueError(unsupported + f"pooling {modes}")
    st_config = model_path / "sentence_bert_config.json"
    return bool(_read_json(st_config).get("do_lower_case", False)) if st_config.is_file() else False


# -- export + quantisation ----------------------------------------------------------------------------------------
def _last_hidden_state(transformer, names: Sequence[str]):
    """The export wrapper: positional int64 tensors in ``names`` order -> ``last_hidden_state``."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *tensors):
            return self.transformer(**dict(zip(names, tensors)), return_dict=True).last_hidden_state

    return LastHiddenState().eval()


def export_int8(transformer, sample: dict[str, np.ndarray], dest: Path) -> None:
    """Export the Hugging Face ``transformer`` (a ``torch.nn.Module``) to ONNX with the inputs named in ``sample``
    (tokenizer output of a few texts of different lengths) and write its int8 quantisation to ``dest``."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    names = list(sample)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    args = tuple(torch.from_numpy(np.asarray(sample[name], dtype=np.int64)) for name in names)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=dest.parent) as folder:
        fp32 = Path(folder) / "model.fp32.onnx"
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes: checked below
            torch.onnx.export(
                _last_hidden_state(transformer, names), args, str(fp32), dynamo=False,
                input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
                opset_version=QUANT_SETTINGS["opset"], do_constant_folding=True,
            )
        # The quantiser logs (root logger) a hint to run its pre-processing first: measured on MiniLM, that
        # (ONNX Runtime graph optimisation before quantising) changes neither accuracy nor speed, so it is skipped.
        hint = _DropMessage("pre-processing before quantization")
        logging.getLogger().addFilter(hint)
        try:
            quantize_dynamic(
                fp32, dest, weight_type=getattr(QuantType, QUANT_SETTINGS["weight_type"]),
                per_channel=QUANT_SETTINGS["per_channel"], reduce_range=QUANT_SETTINGS["reduce_range"],
                op_types_to_quantize=list(QUANT_SETTINGS["op_types"]),
                extra_options={"MatMulConstBOnly": QUANT_SETTINGS["matmul_const_b_only"]},
            )
        finally:
            logging.getLogger().removeFilter(hint)


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# -- the on-disk cache ------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are durable enough here
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ModelCache:
    """Quantised models under ``root``, one folder per :func:`cache_key` holding ``model.onnx`` and ``meta.json``
    (the model's sha256, the settings and the library versions that built it).

    An entry is built in a hidden temporary folder and renamed into place, so a reader sees a complete entry or
    none; two processes building at once both succeed and one entry wins. An entry whose model file does not match
    its recorded sha256 (truncated, overwritten) is set aside and rebuilt, with a warning.
    """

    MODEL, META = "model.onnx", "meta.json"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def entry(self, source_version: str) -> Path:
        return self.root / cache_key(source_version)

    def problem(self, folder: Path, source_version: str) -> str | None:
        """Why the entry in ``folder`` cannot be used (``None``: it can)."""
        try:
            meta = json.loads((folder / self.META).read_text())
            model = folder / self.MODEL
            if meta.get("format") != _FORMAT or meta.get("key") != folder.name or meta.get("source") != source_version:
                return f"{folder / self.META} describes another model"
            if model.stat().st_size != meta.get("bytes") or _sha256(model) != meta.get("sha256"):
                return f"{model} does not match the sha256 recorded in {self.META} (corrupt or truncated)"
        except FileNotFoundError as error:
            return f"{error.filename} is missing"
        except (OSError, ValueError, AttributeError) as error:
            return f"{folder / self.META} is unreadable ({error})"
        return None

    def get(self, source_version: str, build: Callable[[Path], None]) -> Path:
        """The cached ``model.onnx`` for ``source_version``, building it with ``build(path)`` when absent or
        corrupt."""
        folder = self.entry(source_version)
        if folder.exists():
            problem = self.problem(folder, source_version)
            if problem is None:
                return folder / self.MODEL
            warnings.warn(f"int8 text model cache: {problem}; rebuilding it", RuntimeWarning, stacklevel=3)
            self._discard(folder)
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_stale(folder.name)
        building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=self.root))
        try:
            model = building / self.MODEL
            build(model)
            meta = {
                "format": _FORMAT, "key": folder.name, "source": source_version, "settings": QUANT_SETTINGS,
                "bytes": model.stat().st_size, "sha256": _sha256(model), "versions": _library_versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (building / self.META).write_text(json.dumps(meta, indent=1, sort_keys=True))
            for path in (model, building / self.META, building):
                _fsync(path)
            try:
                os.rename(building, folder)
            except OSError:
                if self.problem(folder, source_version) is not None:  # not a concurrent build that won the race
                    raise
            else:
                _fsync(self.root)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return folder / self.MODEL

    def _discard(self, folder: Path) -> None:
        aside = folder.with_name(f".{folder.name}.discarded-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            return  # another process set it aside already
        shutil.rmtree(aside, ignore_errors=True)

    def _clean_stale(self, key: str) -> None:
        """Remove half-built entries of ``key`` left by crashed builds (older than an hour)."""
        for leftover in self.root.glob(f".{key}.*"):
            try:
                if time.time() - leftover.stat().st_mtime > _STALE_BUILD_S:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                pass


def _library_versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    return {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


# -- running it -------------------------------------------------------------------------------------------------
class OnnxTextModel:
    """A quantised model file run by ONNX Runtime on the CPU with ``threads`` intra-op threads, plus the model's
    tokenizer, mean pooling and L2 normalisation: ``encode(texts)`` -> ``(N, dim)`` float32 unit vectors."""

    def __init__(self, onnx_path: Path, model_path: Path, max_length: int, threads: int, lower_case: bool = False):
        ort = require_onnxruntime()
        from transformers import AutoTokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        limit = getattr(self.tokenizer, "model_max_length", None)
        self.max_length = min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length
        self.lower_case = lower_case
        width = self.session.get_outputs()[0].shape[-1]
        self.dim = int(width) if isinstance(width, int) else int(self.encode(["dimension probe"]).shape[1])

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if self.lower_case:
            texts = [t.lower() for t in texts]
        tokens = self.tokenizer(list(texts), padding=True, truncation="longest_first", max_length=self.max_length,
                                return_tensors="np")
        return {name: np.asarray(tokens[name], dtype=np.int64) for name in self.input_names}

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress=None) -> np.ndarray:
        """Longest texts first (little padding per batch, as sentence-transformers does); outputs in input order."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(texts), batch_size):
            picked = order[start:start + batch_size]
            feed = self.tokenize([texts[i] for i in picked])
            hidden = self.session.run(["last_hidden_state"], feed)[0].astype(np.float32, copy=False)
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[picked] = pooled
            if progress is not None:
                progress.update(len(picked))
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)
