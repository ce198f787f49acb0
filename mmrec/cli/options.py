"""The command line's shared pieces: exit codes, argument types, checks run before any work, JSON output."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


def csv_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in csv_list(value)]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 0,1,2; got {value!r}") from None


def _integer(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1 (sizes, counts, epochs), refused while parsing, before any work."""
    number = _integer(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0 (0 switches the option off)."""
    number = _integer(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


SEED_LIMIT = 2**63
"""Seeds are non-negative and below 2**63 (torch's generator refuses larger ones deep inside a run)."""


def seed_int(value: str) -> int:
    """argparse type: a random seed, an integer in [0, 2**63)."""
    number = _integer(value)
    if not 0 <= number < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63-1, got {value!r}")
    return number


def seeds_list(value: str) -> list[int]:
    """argparse type of ``--seeds``: comma-separated seeds (:func:`seed_int`)."""
    seeds = int_list(value)
    if any(not 0 <= seed < SEED_LIMIT for seed in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers from 0 to 2**63-1, got {value!r}")
    return seeds


def _finite(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """argparse type: a finite number > 0 (a learning rate)."""
    number = _finite(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def non_negative_float(value: str) -> float:
    """argparse type: a finite number >= 0 (the ratios; 0 switches them off)."""
    number = _finite(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return number


def names_list(valid: Callable[[str], bool], choices: str) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated list whose every name passes ``valid``; the error lists the valid names."""
    def names(value: str) -> list[str]:
        items = csv_list(value)
        unknown = [v for v in items if not valid(v)]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, unknown))}; choose from {choices}")
        return items
    return names


DEVICE_TYPES = ("cpu", "cuda", "mps")


def device_type(value: str) -> str:
    """argparse type of ``--device``: ``auto`` or a torch device string (whether it exists is checked before the
    command runs, see :func:`check_device`)."""
    if value == "auto":
        return value
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"{value!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    return value


def check_device(value: str) -> None:
    """Fail before any work when ``--device`` names hardware this machine lacks."""
    if value == "auto":
        return
    import torch

    device = torch.device(value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {value}: no CUDA device on this machine (use --device cpu or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {value}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {value}: MPS is not available on this machine (use --device cpu or auto)")


def require_file(option: str, path: Path | None) -> None:
    if path is not None and not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"{option} {path}: {what}")


def require_folder_or_absent(option: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{option} {path}: exists and is not a folder")


def require_folder(option: str, path: Path | None) -> None:
    if path is not None and not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "no such folder"
        raise FileNotFoundError(f"{option} {path}: {what}")


def require_store(path: Path) -> None:
    from ..store import DB_NAME

    if not (path / DB_NAME).is_file():
        raise FileNotFoundError(f"--store {path}: not an mmrec store (expected {DB_NAME} inside; "
                                "make one with `mmrec embed CATALOG --store ...`)")


def print_json_last(payload: dict) -> None:
    sys.stdout.flush()
    print(json.dumps(payload, default=str))


def fail(args: argparse.Namespace, message: object, code: int = EXIT_FAILED) -> int:
    """Print ``error: message`` to stderr (and, under ``--json``, ``{"error", "exit"}`` as the last stdout line)."""
    print(f"error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print_json_last({"error": str(message), "exit": code})
    return code


TABLE_FORMATS = ".csv, .tsv, .jsonl/.ndjson/.json or .parquet"
JSON_HELP = 'print one JSON summary as the last stdout line (on failure: {"error": MESSAGE, "exit": CODE})'
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
PRECISION_HELP = ("encoder precision: auto (fp32 on a CPU, bf16/fp16 autocast on CUDA), fp32, fp16, bf16, or int8 "
                  "(the text encoder on the CPU via ONNX Runtime, pip install 'mmrec[int8]'; images then run at auto)")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="store folder made by `mmrec embed`")
    parser.add_argument("--interactions", type=Path, required=True,
                        help=f"{TABLE_FORMATS} file with user_id, item_id, timestamp[, event]")
    parser.add_argument("--context-events", type=Path, default=None,
                        help=f"optional text-bearing events ({TABLE_FORMATS}: user_id, item_id, timestamp, "
                             "text|tag|review|query[, event]), e.g. MovieLens tags.csv: GRU inputs, never prediction "
                             "targets")
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def add_id_key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--id-key", type=Path, default=None, metavar="FILE",
                        help="key file of a pseudonymised store: user ids are stored as HMAC-SHA256 pseudonyms, "
                             "callers keep using raw ids (default: the file MMREC_ID_KEY names, if set; "
                             "docs/privacy.md)")


def add_unknown_items_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unknown-items", choices=["error", "drop"], default="error",
                        help="interaction rows naming an item that is not in the store: fail naming them (default) "
                             "or drop them")


def check_data_arguments(args: argparse.Namespace) -> None:
    require_store(args.store)
    require_file("--interactions", args.interactions)
    require_file("--context-events", args.context_events)


NEW_ITEM_RECALL_RATIO_HELP = ("exposure of new (untrained) items: rank them so that their users' validation "
                               "Recall@20 reaches this fraction of the other users' (costs those some recall; "
                               "default 0.5; 0: no target, new items lifted as far as NDCG@10 says)")
NEW_ITEM_EXPOSURE_HELP = ("how --new-item-recall-ratio is reached: slots (default: the fewest of the last places of "
                           "every top 20 that reach it go to new items, trained items keep their order above them) "
                           "or lift (new items' scores raised until they reach it)")

NEW_ITEM_NEIGHBOURS_HELP = ("after training, also try building each new (untrained) item from the vectors of this "
                             "many trained items with the nearest texts, and keep it if it validates better "
                             "(0: never)")

SIGNALS = ("text", "image", "id")
