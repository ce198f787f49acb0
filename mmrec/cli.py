"""``mmrec`` command line: one subcommand per job.

Each subcommand parses its arguments and calls the library; scripts in ``scripts/`` call into the same functions.

Exit status of every subcommand: 0 success; 1 failed (invalid input or a runtime error: the message names the
field/row; nothing partial is committed beyond completed batches); 2 usage error; 3 finished, but some rows were
rejected (listed in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


def _csv_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in _csv_list(value)]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 0,1,2; got {value!r}") from None


def _names_list(valid: Callable[[str], bool], choices: str) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated list whose every name passes ``valid``; the error lists the valid names."""
    def names(value: str) -> list[str]:
        items = _csv_list(value)
        unknown = [v for v in items if not valid(v)]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, unknown))}; choose from {choices}")
        return items
    return names


_DEVICE_TYPES = ("cpu", "cuda", "mps")


def _device(value: str) -> str:
    """argparse type of ``--device``: ``auto`` or a torch device string (whether it exists is checked before the
    command runs, see :func:`_check_device`)."""
    if value == "auto":
        return value
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        device = None
    if device is None or device.type not in _DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"{value!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    return value


def _check_device(value: str) -> None:
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


def _require_file(option: str, path: Path | None) -> None:
    if path is not None and not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"{option} {path}: {what}")


def _require_folder_or_absent(option: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{option} {path}: exists and is not a folder")


def _require_folder(option: str, path: Path | None) -> None:
    if path is not None and not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "no such folder"
        raise FileNotFoundError(f"{option} {path}: {what}")


def _require_store(path: Path) -> None:
    from .store import DB_NAME

    if not (path / DB_NAME).is_file():
        raise FileNotFoundError(f"--store {path}: not an mmrec store (expected {DB_NAME} inside; "
                                "make one with `mmrec embed CATALOG --store ...`)")


def _print_json_last(payload: dict) -> None:
    sys.stdout.flush()
    print(json.dumps(payload, default=str))


def _fail(args: argparse.Namespace, message: object, code: int = EXIT_FAILED) -> int:
    """Print ``error: message`` to stderr (and, under ``--json``, ``{"error", "exit"}`` as the last stdout line)."""
    print(f"error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        _print_json_last({"error": str(message), "exit": code})
    return code


_TABLE_FORMATS = ".csv, .tsv, .jsonl/.ndjson/.json or .parquet"
_JSON_HELP = 'print one JSON summary as the last stdout line (on failure: {"error": MESSAGE, "exit": CODE})'


# -- embed ----------------------------------------------------------------------------------------------------
def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("catalog", type=Path,
                        help=f"catalogue file ({_TABLE_FORMATS}) with item_id, text columns[, image_path]")
    parser.add_argument("--store", type=Path, required=True, help="store folder (created when absent)")
    parser.add_argument("--images-root", type=Path, default=None,
                        help="folder image_path is relative to (default: the catalogue's folder)")
    parser.add_argument("--text-columns", type=_csv_list, default=None,
                        help="comma-separated columns joined into item text (default: all but image_path and ids: "
                             "item_id and *_id columns)")
    parser.add_argument("--no-images", action="store_true", help="refresh text only: ignore image_path, keep the image features already stored")
    parser.add_argument("--batch-size", type=int, default=None, help="encoder batch size")
    parser.add_argument("--chunk-size", type=int, default=256, help="items committed per transaction")
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    parser.add_argument("--device", type=_device, default="auto",
                        help="auto (CUDA when available), cpu, cuda, cuda:1...")
    parser.add_argument("--json", action="store_true", help=_JSON_HELP)


def run_embed(args: argparse.Namespace) -> int:
    from .embed import EmbedConfig, embed_catalog
    from .encoders.image import ImageEncoderConfig
    from .encoders.text import TextEncoderConfig

    _require_file("catalog", args.catalog)
    _require_folder_or_absent("--store", args.store)
    if not args.no_images:  # a mistyped folder would quietly make every item text-only
        _require_folder("--images-root", args.images_root)
    text = TextEncoderConfig(precision=args.precision, device=args.device)
    image = ImageEncoderConfig(precision=args.precision, device=args.device)
    if args.batch_size:
        text.batch_size = image.batch_size = args.batch_size
    config = EmbedConfig(
        text_columns=args.text_columns, images_root=args.images_root, use_images=not args.no_images,
        chunk_size=args.chunk_size, text=text, image=image, show_progress=None if sys.stderr.isatty() else False,
    )
    report = embed_catalog(args.catalog, args.store, config)
    for warning in report.warnings:
        print(f"warning: item {warning['item_id']} (row {warning['row']}): {warning['reason']}", file=sys.stderr)
    for rejected in report.rejected:
        print(f"rejected: item {rejected['item_id']} (row {rejected['row']}): {rejected['reason']}", file=sys.stderr)
    print(
        f"embedded {report.embedded}, unchanged {report.unchanged}, text-only {report.text_only}, "
        f"image-only {report.image_only}, rejected {len(report.rejected)}, stored images kept {report.images_kept}, "
        f"removed {report.images_removed} -> {args.store}"
    )
    if args.json:
        _print_json_last(report.to_dict())
    return EXIT_REJECTED if report.rejected else EXIT_OK


# -- train / evaluate / refresh -------------------------------------------------------------------------------
def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="store folder made by `mmrec embed`")
    parser.add_argument("--interactions", type=Path, required=True,
                        help=f"{_TABLE_FORMATS} file with user_id, item_id, timestamp[, event]")
    parser.add_argument("--context-events", type=Path, default=None,
                        help=f"optional text-bearing events ({_TABLE_FORMATS}: user_id, item_id, timestamp, "
                             "text|tag|review|query[, event]), e.g. MovieLens tags.csv: GRU inputs, never prediction "
                             "targets")
    parser.add_argument("--json", action="store_true", help=_JSON_HELP)


def _add_unknown_items_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unknown-items", choices=["error", "drop"], default="error",
                        help="interaction rows naming an item that is not in the store: fail naming them (default) "
                             "or drop them")


def _check_data_arguments(args: argparse.Namespace) -> None:
    _require_store(args.store)
    _require_file("--interactions", args.interactions)
    _require_file("--context-events", args.context_events)


_NEW_ITEM_RECALL_RATIO_HELP = ("exposure of new (untrained) items: rank them so that their users' validation "
                               "Recall@20 reaches this fraction of the other users' (costs those some recall; "
                               "default 0.5; 0: no target, new items lifted as far as NDCG@10 says)")
_NEW_ITEM_EXPOSURE_HELP = ("how --new-item-recall-ratio is reached: slots (default: the fewest of the last places of "
                           "every top 20 that reach it go to new items, trained items keep their order above them) "
                           "or lift (new items' scores raised until they reach it)")

_NEW_ITEM_NEIGHBOURS_HELP = ("after training, also try building each new (untrained) item from the vectors of this "
                             "many trained items with the nearest texts, and keep it if it validates better "
                             "(0: never)")

_SIGNALS = ("text", "image", "id")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .train.config import EXPOSURES, TrainConfig

    defaults = TrainConfig()
    _add_data_arguments(parser)
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="maximum epochs (early stopping)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-len", type=int, default=defaults.model.max_len, help="events of history the GRU reads")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--patience", type=int, default=defaults.patience)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--modalities", type=_names_list(lambda m: m in _SIGNALS, ", ".join(_SIGNALS)),
                        default=["text", "image", "id"],
                        help="item signals: any of text,image,id (id alone = a GRU4Rec-style baseline)")
    parser.add_argument("--device", type=_device, default="auto", help="auto (CUDA when available), cpu, cuda...")
    parser.add_argument("--new-item-recall-ratio", type=float, default=defaults.new_item_recall_ratio,
                        help=_NEW_ITEM_RECALL_RATIO_HELP)
    parser.add_argument("--new-item-exposure", choices=EXPOSURES, default=defaults.new_item_exposure,
                        help=_NEW_ITEM_EXPOSURE_HELP)
    parser.add_argument("--new-item-neighbours", type=int, default=defaults.new_item_neighbours,
                        help=f"{_NEW_ITEM_NEIGHBOURS_HELP[:-1]}; default {defaults.new_item_neighbours})")
    _add_unknown_items_argument(parser)


def run_train(args: argparse.Namespace) -> int:
    from .networks.model import ModelConfig
    from .train import TrainConfig, train_store

    _check_data_arguments(args)
    model = ModelConfig(max_len=args.max_len, use_text="text" in args.modalities,
                        use_image="image" in args.modalities, use_id="id" in args.modalities)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         patience=args.patience, seed=args.seed, device=args.device,
                         new_item_recall_ratio=args.new_item_recall_ratio, new_item_exposure=args.new_item_exposure,
                         new_item_neighbours=args.new_item_neighbours,
                         show_progress=None if sys.stderr.isatty() else False, model=model)
    summary = train_store(args.store, args.interactions, args.context_events, config,
                          unknown_items=args.unknown_items)
    valid = summary["valid"]
    print(f"best epoch {summary['best_epoch']}/{summary['epochs']}: valid ndcg@10 {valid['ndcg@10']:.4f}, "
          f"recall@10 {valid['recall@10']:.4f}; {summary['seconds_per_epoch']:.1f} s/epoch")
    if args.json:
        _print_json_last(summary)
    return EXIT_OK


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser)
    _add_unknown_items_argument(parser)
    parser.add_argument("--device", type=_device, default="cpu", help="cpu (default), auto (CUDA when available), cuda...")


def run_evaluate(args: argparse.Namespace) -> int:
    import math

    from .evaluation import format_metrics
    from .train import evaluate_store

    _check_data_arguments(args)
    results = evaluate_store(args.store, args.interactions, args.context_events, unknown_items=args.unknown_items,
                             device=args.device)
    print(format_metrics(results))
    if args.json:
        flat = {}
        for stage, metrics in results.items():
            for key, value in metrics.items():
                value = None if isinstance(value, float) and math.isnan(value) else value
                flat[key if stage == "test" else f"valid_{key}"] = value
        _print_json_last(flat)
    return EXIT_OK


def add_refresh_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="trained store")
    parser.add_argument("--events", type=Path, default=None,
                        help=f"new events ({_TABLE_FORMATS}): user_id, item_id, timestamp[, event][, text|tag|review|query]")
    parser.add_argument("--rebuild", action="store_true", help="recompute every user from the event log")
    parser.add_argument("--json", action="store_true", help=_JSON_HELP)


def run_refresh(args: argparse.Namespace) -> int:
    from .serve import refresh_store

    if args.events is None and not args.rebuild:
        return _fail(args, "give --events FILE, --rebuild, or both", EXIT_USAGE)
    _require_store(args.store)
    _require_file("--events", args.events)
    report = refresh_store(args.store, args.events, rebuild=args.rebuild)
    for rejected in report.rejected:
        print(f"rejected: row {rejected['row']} (user {rejected['user_id']}, item {rejected['item_id']}): "
              f"{rejected['reason']}", file=sys.stderr)
    print(f"refreshed {report.users_refreshed} users: {report.events_applied} events applied, "
          f"{report.events_duplicate} already applied, {report.users_recomputed} users recomputed from their log, "
          f"{len(report.rejected)} rejected")
    if args.json:
        _print_json_last(report.to_dict())
    return EXIT_REJECTED if report.rejected else EXIT_OK


# -- demo: the README's main job ----------------------------------------------------------------------------
def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from .demo import bundled_data

    parser.add_argument("--store", type=Path, default=Path("stores/demo"), help="store folder (default stores/demo)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with items.csv, interactions.csv, tags.csv (default: the bundled MovieLens, "
                             f"{bundled_data()})")
    parser.add_argument("--images-root", type=Path, default=None,
                        help="folder of <item_id>.jpg posters: run fully multimodal (default: text only)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--users", type=_csv_list, default=["1", "42", "414"], help="users to recommend for")


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    _require_folder("--images-root", args.images_root)
    _require_folder("--data", args.data)
    demo(args.store, args.data, args.images_root, args.epochs, args.users)
    return EXIT_OK


def _our_variant(value: str) -> str:
    from .report import OUR_VARIANTS, is_ours

    if not is_ours(value):
        raise argparse.ArgumentTypeError(f"unknown {value!r}; choose our model's item signals joined by '+', e.g. "
                                         f"{', '.join(OUR_VARIANTS)}")
    return value


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    from .baselines import BASELINES
    from .report import OUR_VARIANTS, PROTOCOLS, QualityConfig, is_ours
    from .train.config import EXPOSURES

    defaults = QualityConfig()
    model_names = (f"{', '.join(BASELINES)} or our model's item signals joined by '+' "
                   f"({', '.join(OUR_VARIANTS)})")
    _add_data_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("report"), help="folder for report.md, results.json, PNGs")
    parser.add_argument("--models", type=_names_list(lambda m: m in BASELINES or is_ours(m), model_names),
                        default=list(defaults.models),
                        help=f"baselines and our variants (default: all of {','.join(defaults.models)})")
    parser.add_argument("--seeds", type=_int_list, default=list(defaults.seeds),
                        help=f"comma-separated integers (default {','.join(map(str, defaults.seeds))})")
    parser.add_argument("--protocols", type=_names_list(lambda p: p in PROTOCOLS, ", ".join(PROTOCOLS)),
                        default=list(defaults.protocols), help=f"any of {','.join(PROTOCOLS)} (default: all)")
    parser.add_argument("--ours", default=defaults.ours, type=_our_variant,
                        help=f"our variant the win, bootstrap and cold checks are computed for (default {defaults.ours})")
    parser.add_argument("--epochs", type=int, default=defaults.train.epochs, help="our model's maximum epochs")
    parser.add_argument("--patience", type=int, default=defaults.train.patience)
    parser.add_argument("--new-item-recall-ratio", type=float, default=defaults.train.new_item_recall_ratio,
                        help=_NEW_ITEM_RECALL_RATIO_HELP)
    parser.add_argument("--new-item-exposure", choices=EXPOSURES, default=defaults.train.new_item_exposure,
                        help=_NEW_ITEM_EXPOSURE_HELP)
    parser.add_argument("--new-item-neighbours", type=int, default=defaults.train.new_item_neighbours,
                        help=f"{_NEW_ITEM_NEIGHBOURS_HELP[:-1]}; default {defaults.train.new_item_neighbours})")
    parser.add_argument("--exposure-ratio", type=float, default=defaults.exposure_ratio,
                        help="cold protocol: also evaluate our model with no exposure target, and with the new-item "
                             "lift and new-item places chosen on validation for this cold/warm Recall@20 ratio "
                             f"(0: off; default {defaults.exposure_ratio:g})")
    parser.add_argument("--baseline-epochs", type=int, default=defaults.baseline_epochs)
    parser.add_argument("--baseline-patience", type=int, default=defaults.baseline_patience)
    parser.add_argument("--reference", type=Path, default=None,
                        help="reference results (markdown table with an NDCG@10 column), e.g. "
                             "../shared/baselines/ml-latest-small.md")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per run (default: torch's; with --jobs, the cores shared out)")
    parser.add_argument("--jobs", type=int, default=defaults.jobs,
                        help="runs trained at once in worker processes (default 1; one run uses a small part of a "
                             "GPU, so there several at once save time)")
    parser.add_argument("--device", type=_device, default=defaults.device,
                        help="auto (CUDA when available), cpu, cuda...")
    parser.add_argument("--no-train", action="store_true",
                        help="only rebuild the report from the runs already in OUT/runs.jsonl")
    _add_unknown_items_argument(parser)


def run_report(args: argparse.Namespace) -> int:
    import logging

    from .report import QualityConfig, read_reference, run_report as report
    from .store import Store
    from .train import TrainConfig

    # Everything checkable is checked here: the first run_report reads only after hours of training.
    _require_store(args.store)
    if not args.no_train:
        _require_file("--interactions", args.interactions)
        _require_file("--context-events", args.context_events)
    _require_file("--reference", args.reference)
    if args.reference is not None:
        try:
            found = read_reference(args.reference)
        except ValueError as error:  # includes UnicodeDecodeError
            raise ValueError(f"--reference {args.reference}: {error}") from error
        if not found:
            raise ValueError(f"--reference {args.reference}: no markdown table with an NDCG@10 column and model rows")
    _require_folder_or_absent("--out", args.out)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    config = QualityConfig(
        models=tuple(args.models), seeds=tuple(args.seeds), protocols=tuple(args.protocols), ours=args.ours,
        train=TrainConfig(epochs=args.epochs, patience=args.patience, show_progress=False,
                          new_item_recall_ratio=args.new_item_recall_ratio, new_item_exposure=args.new_item_exposure,
                          new_item_neighbours=args.new_item_neighbours),
        baseline_epochs=args.baseline_epochs, baseline_patience=args.baseline_patience, threads=args.threads,
        jobs=args.jobs, device=args.device, exposure_ratio=args.exposure_ratio,
    )
    command = "mmrec report " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["report"] else sys.argv[1:])
    summary = report(Store(args.store, create=False), args.interactions, args.out, config, args.context_events,
                     args.reference, command=command, train=not args.no_train, unknown_items=args.unknown_items,
                     on_run=lambda r: print(f"{r['protocol']:>8} seed {r['seed']} {r['model']:<14} test ndcg@10 "
                                            f"{r['test']['all']['ndcg@10']:.4f}  ({r['wall_seconds']:.0f} s)",
                                            flush=True))
    print(summary.table)
    print("files: " + ", ".join(str(f) for f in summary.files))
    if args.json:
        _print_json_last({"checks": summary.checks, "files": [str(f) for f in summary.files]})
    return EXIT_OK


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "embed": ("embed new or changed catalogue items into a store", add_embed_arguments, run_embed),
    "train": ("train fusion + GRU + scorer on a store's features", add_train_arguments, run_train),
    "evaluate": ("evaluate the store's model under the leave-one-out protocol", add_evaluate_arguments, run_evaluate),
    "demo": ("embed, train, evaluate and recommend on the bundled MovieLens data", add_demo_arguments, run_demo),
    "refresh": ("apply new behaviour events to stored user interest vectors", add_refresh_arguments, run_refresh),
    "report": ("train every model on the same split (3 seeds, warm and cold) and write a quality report",
               add_report_arguments, run_report),
}


class _Parser(argparse.ArgumentParser):
    """argparse, remembering its last usage error so ``--json`` can report it (subcommand parsers share the class)."""

    last_error: str = ""

    def error(self, message: str):
        _Parser.last_error = message
        super().error(message)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``; a usage error (exit 2) under ``--json`` also prints ``{"error", "exit": 2}``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return parser.parse_args(argv)
    except SystemExit as exit:
        # argparse also accepts an abbreviation such as --js
        if exit.code == EXIT_USAGE and any(len(a) >= 3 and "--json".startswith(a) for a in argv):
            _print_json_last({"error": _Parser.last_error, "exit": EXIT_USAGE})
        raise


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="mmrec", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in commands or COMMANDS:
        help_text, add_arguments, _ = COMMANDS[name]
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def run_command(name: str, argv: Sequence[str] | None = None) -> int:
    """Entry point for ``scripts/<name>.py``: the same arguments as ``mmrec <name>``."""
    help_text, add_arguments, run = COMMANDS[name]
    parser = _Parser(description=help_text)
    add_arguments(parser)
    return _guarded(run, _parse(parser, argv))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # the library's warnings are addressed to the user (a leaking text column, a missing modality); the source line
    # Python prints with them is noise on a command line
    print(f"warning: {message}", file=sys.stderr)


def _guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; expected failures (bad input, missing files, no such device) become ``error: ...`` on
    stderr and exit 1, never a traceback. ``MMREC_DEBUG=1`` in the environment lets them raise instead: a torch or
    SQLite error deep inside a run is reported in one line, which is too little to debug it."""
    debug = os.environ.get("MMREC_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            if getattr(args, "device", None) is not None and not getattr(args, "no_train", False):
                _check_device(args.device)
            return run(args)
    except (ValueError, KeyError, OSError, RuntimeError, sqlite3.Error) as error:  # ValueError: ModelLoadError too
        if debug:
            raise
        message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
        if hasattr(args, "unknown_items"):  # the library's hint names its keyword; on the command line it's a flag
            message = message.replace("pass unknown_items='drop'", "pass --unknown-items drop")
        return _fail(args, message)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(build_parser(), argv)
    return _guarded(COMMANDS[args.command][2], args)


if __name__ == "__main__":
    sys.exit(main())
