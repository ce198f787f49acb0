"""The subcommands: each adds its arguments to a parser and runs by calling the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import (EXIT_OK, EXIT_REJECTED, EXIT_USAGE, JSON_HELP, NEW_ITEM_EXPOSURE_HELP, NEW_ITEM_NEIGHBOURS_HELP,
                      NEW_ITEM_RECALL_RATIO_HELP, PRECISION_HELP, PRECISIONS, SIGNALS, TABLE_FORMATS,
                      add_data_arguments, add_id_key_argument, add_unknown_items_argument, check_data_arguments,
                      csv_list, device_type, fail,
                      names_list, non_negative_float, non_negative_int, positive_float, positive_int, print_json_last,
                      require_file, require_folder, require_folder_or_absent, require_store, seed_int, seeds_list)
from .engine import add_engine_arguments, engine_usage_error, ray_config


# -- embed ----------------------------------------------------------------------------------------------------
def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("catalog", type=Path,
                        help=f"catalogue file ({TABLE_FORMATS}) with item_id, text columns[, image_path]")
    parser.add_argument("--store", type=Path, required=True, help="store folder (created when absent)")
    parser.add_argument("--images-root", type=Path, default=None,
                        help="folder image_path is relative to (default: the catalogue's folder)")
    parser.add_argument("--text-columns", type=csv_list, default=None,
                        help="comma-separated columns joined into item text (default: all but image_path and ids: "
                             "item_id and *_id columns)")
    parser.add_argument("--no-images", action="store_true", help="refresh text only: ignore image_path, keep the image features already stored")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="encoder batch size")
    parser.add_argument("--chunk-size", type=positive_int, default=256, help="items committed per transaction")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help=f"{PRECISION_HELP}. With int8 the image encoder, which has no int8, runs at auto; "
                             "int8 needs --device auto or cpu and builds its model once into STORE/encoders/ "
                             "(default auto)")
    parser.add_argument("--device", type=device_type, default="auto",
                        help="auto (CUDA when available), cpu, cuda, cuda:1...")
    add_engine_arguments(parser, "encode items")
    add_id_key_argument(parser)
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def embed_command(args: argparse.Namespace) -> int:
    from ..embed import EmbedConfig, embed_catalog
    from ..encoders.image import ImageEncoder, ImageEncoderConfig
    from ..encoders.text import TextEncoder, TextEncoderConfig

    if (problem := engine_usage_error(args)) is not None:
        return fail(args, problem, EXIT_USAGE)
    engine = ray_config(args) if args.engine == "ray" else None
    require_file("catalog", args.catalog)
    require_folder_or_absent("--store", args.store)
    if not args.no_images:  # a mistyped folder would quietly make every item text-only
        require_folder("--images-root", args.images_root)
    sizes = {"batch_size": args.batch_size} if args.batch_size is not None else {}
    text = TextEncoderConfig(precision=args.precision, device=args.device, cache_dir=args.store / "encoders", **sizes)
    image_precision = "auto" if args.precision == "int8" else args.precision  # the image encoder has no int8
    image = ImageEncoderConfig(precision=image_precision, device=args.device, **sizes)
    config = EmbedConfig(
        text_columns=args.text_columns, images_root=args.images_root, use_images=not args.no_images,
        chunk_size=args.chunk_size, text=text, image=image, show_progress=None if sys.stderr.isatty() else False,
    )
    # Built here, before the store exists: a precision the device cannot run (int8 on CUDA, fp16 on a CPU) or a
    # missing ONNX Runtime fails (exit 1) before any write. Building loads no model.
    text_encoder = TextEncoder(text)
    image_encoder = ImageEncoder(image) if config.use_images else None
    if engine is not None:
        from ..distributed import embed_catalog_ray

        report = embed_catalog_ray(args.catalog, args.store, config, engine)
    else:
        report = embed_catalog(args.catalog, args.store, config, text_encoder, image_encoder)
    _bind_id_key(args)
    for warning in report.warnings:
        print(f"warning: item {warning['item_id']} (row {warning['row']}): {warning['reason']}", file=sys.stderr)
    for rejected in report.rejected:
        print(f"rejected: item {rejected['item_id']} (row {rejected['row']}): {rejected['reason']}", file=sys.stderr)
    print(
        f"embedded {report.embedded}, unchanged {report.unchanged}, text-only {report.text_only}, "
        f"image-only {report.image_only}, rejected {len(report.rejected)}, stored images kept {report.images_kept}, "
        f"removed {report.images_removed} -> {args.store}"
    )
    _update_index(args.store)
    if args.json:
        print_json_last(report.to_dict())
    return EXIT_REJECTED if report.rejected else EXIT_OK


def _bind_id_key(args: argparse.Namespace) -> None:
    """Embedding reads no users: a key given here marks a store without users as pseudonymised (so a later run
    without the key fails rather than storing raw ids), and a wrong one fails now."""
    from ..pseudonym import bind_id_key, resolve_id_key
    from ..store import Store

    key = resolve_id_key(args.id_key)
    if key is not None:
        with Store(args.store, create=False) as store:
            bind_id_key(store, key)


def _update_index(store: Path) -> None:
    """After train / embed: build the ANN index where ``retrieval="auto"`` will use it, or add new items to the
    one there is, so the first served request does not pay for it (mmrec.serve.retrieval)."""
    from ..serve.retrieval import update_index

    path = update_index(store)
    if path is not None:
        print(f"item index up to date: {path}", file=sys.stderr)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.config import EXPOSURES, TrainConfig

    defaults = TrainConfig()
    add_data_arguments(parser)
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs, help="maximum epochs (early stopping)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    parser.add_argument("--max-len", type=positive_int, default=defaults.model.max_len,
                        help="events of history the GRU reads")
    parser.add_argument("--learning-rate", type=positive_float, default=defaults.learning_rate)
    parser.add_argument("--patience", type=positive_int, default=defaults.patience)
    parser.add_argument("--seed", type=seed_int, default=defaults.seed)
    parser.add_argument("--modalities", type=names_list(lambda m: m in SIGNALS, ", ".join(SIGNALS)),
                        default=["text", "image", "id"],
                        help="item signals: any of text,image,id (id alone = a GRU4Rec-style baseline)")
    parser.add_argument("--device", type=device_type, default="auto", help="auto (CUDA when available), cpu, cuda...")
    parser.add_argument("--new-item-recall-ratio", type=non_negative_float, default=defaults.new_item_recall_ratio,
                        help=NEW_ITEM_RECALL_RATIO_HELP)
    parser.add_argument("--new-item-exposure", choices=EXPOSURES, default=defaults.new_item_exposure,
                        help=NEW_ITEM_EXPOSURE_HELP)
    parser.add_argument("--new-item-neighbours", type=non_negative_int, default=defaults.new_item_neighbours,
                        help=f"{NEW_ITEM_NEIGHBOURS_HELP[:-1]}; default {defaults.new_item_neighbours})")
    add_unknown_items_argument(parser)
    add_id_key_argument(parser)


def train_command(args: argparse.Namespace) -> int:
    from ..networks.model import ModelConfig
    from ..train import TrainConfig, train_store
    from ..train.distributed import is_main_process

    check_data_arguments(args)
    model = ModelConfig(max_len=args.max_len, use_text="text" in args.modalities,
                        use_image="image" in args.modalities, use_id="id" in args.modalities)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         patience=args.patience, seed=args.seed, device=args.device,
                         new_item_recall_ratio=args.new_item_recall_ratio, new_item_exposure=args.new_item_exposure,
                         new_item_neighbours=args.new_item_neighbours,
                         show_progress=None if sys.stderr.isatty() else False, model=model)
    summary = train_store(args.store, args.interactions, args.context_events, config,
                          unknown_items=args.unknown_items, id_key=args.id_key)
    if not is_main_process():  # under torchrun rank 0 writes the index and reports; the other processes only trained
        return EXIT_OK
    _update_index(args.store)
    valid = summary["valid"]
    print(f"best epoch {summary['best_epoch']}/{summary['epochs']}: valid ndcg@10 {valid['ndcg@10']:.4f}, "
          f"recall@10 {valid['recall@10']:.4f}; {summary['seconds_per_epoch']:.1f} s/epoch")
    if args.json:
        print_json_last(summary)
    return EXIT_OK


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_unknown_items_argument(parser)
    parser.add_argument("--device", type=device_type, default="cpu", help="cpu (default), auto (CUDA when available), cuda...")
    add_id_key_argument(parser)


def evaluate_command(args: argparse.Namespace) -> int:
    import math

    from ..evaluation import format_metrics
    from ..train import evaluate_store

    check_data_arguments(args)
    results = evaluate_store(args.store, args.interactions, args.context_events, unknown_items=args.unknown_items,
                             device=args.device, id_key=args.id_key)
    print(format_metrics(results))
    if args.json:
        flat = {}
        for stage, metrics in results.items():
            for key, value in metrics.items():
                value = None if isinstance(value, float) and math.isnan(value) else value
                flat[key if stage == "test" else f"valid_{key}"] = value
        print_json_last(flat)
    return EXIT_OK


REFRESH_BATCH_USERS = 2048
"""Default of ``mmrec refresh --batch-users``: :func:`mmrec.serve.refresh_store`'s ``batch_users``."""


def add_refresh_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="trained store")
    parser.add_argument("--events", type=Path, default=None,
                        help=f"new events ({TABLE_FORMATS}): user_id, item_id, timestamp[, event][, text|tag|review|query]")
    parser.add_argument("--rebuild", action="store_true", help="recompute every user from the event log")
    parser.add_argument("--batch-users", type=positive_int, default=REFRESH_BATCH_USERS,
                        help="--events: users whose events are applied and committed per transaction (a kill loses "
                             f"at most the batch in flight; default {REFRESH_BATCH_USERS})")
    add_engine_arguments(parser, "--events: fold users' events")
    add_id_key_argument(parser)
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def refresh_command(args: argparse.Namespace) -> int:
    from ..serve import refresh_store

    if args.events is None and not args.rebuild:
        return fail(args, "give --events FILE, --rebuild, or both", EXIT_USAGE)
    if (problem := engine_usage_error(args)) is not None:
        return fail(args, problem, EXIT_USAGE)
    engine = ray_config(args) if args.engine == "ray" else None
    require_store(args.store)
    require_file("--events", args.events)
    if engine is not None:
        from ..distributed import refresh_store_ray

        report = refresh_store_ray(args.store, args.events, rebuild=args.rebuild, batch_users=args.batch_users,
                                   ray_config=engine, id_key=args.id_key)
    else:
        report = refresh_store(args.store, args.events, rebuild=args.rebuild, batch_users=args.batch_users,
                               id_key=args.id_key)
    for rejected in report.rejected:
        print(f"rejected: row {rejected['row']} (user {rejected['user_id']}, item {rejected['item_id']}): "
              f"{rejected['reason']}", file=sys.stderr)
    print(f"refreshed {report.users_refreshed} users: {report.events_applied} events applied, "
          f"{report.events_duplicate} already applied, {report.users_recomputed} users recomputed from their log, "
          f"{len(report.rejected)} rejected")
    if args.json:
        print_json_last(report.to_dict())
    return EXIT_REJECTED if report.rejected else EXIT_OK


# -- demo: the README's main job ----------------------------------------------------------------------------
def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from ..demo import bundled_data

    parser.add_argument("--store", type=Path, default=Path("stores/demo"), help="store folder (default stores/demo)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with items.csv, interactions.csv, tags.csv (default: the bundled MovieLens, "
                             f"{bundled_data()})")
    parser.add_argument("--images-root", type=Path, default=None,
                        help="folder of <item_id>.jpg posters: run fully multimodal (default: text only)")
    parser.add_argument("--epochs", type=positive_int, default=30)
    parser.add_argument("--users", type=csv_list, default=["1", "42", "414"], help="users to recommend for")


def demo_command(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    require_folder("--images-root", args.images_root)
    require_folder("--data", args.data)
    run_demo(args.store, args.data, args.images_root, args.epochs, args.users)
    return EXIT_OK


def _our_variant(value: str) -> str:
    from ..report import OUR_VARIANTS, is_ours

    if not is_ours(value):
        raise argparse.ArgumentTypeError(f"unknown {value!r}; choose our model's item signals joined by '+', e.g. "
                                         f"{', '.join(OUR_VARIANTS)}")
    return value


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    from ..baselines import BASELINES
    from ..report import OUR_VARIANTS, PROTOCOLS, QualityConfig, is_ours
    from ..train.config import EXPOSURES

    defaults = QualityConfig()
    model_names = (f"{', '.join(BASELINES)} or our model's item signals joined by '+' "
                   f"({', '.join(OUR_VARIANTS)})")
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("report"), help="folder for report.md, results.json, PNGs")
    parser.add_argument("--models", type=names_list(lambda m: m in BASELINES or is_ours(m), model_names),
                        default=list(defaults.models),
                        help=f"baselines and our variants (default: all of {','.join(defaults.models)})")
    parser.add_argument("--seeds", type=seeds_list, default=list(defaults.seeds),
                        help=f"comma-separated integers (default {','.join(map(str, defaults.seeds))})")
    parser.add_argument("--protocols", type=names_list(lambda p: p in PROTOCOLS, ", ".join(PROTOCOLS)),
                        default=list(defaults.protocols), help=f"any of {','.join(PROTOCOLS)} (default: all)")
    parser.add_argument("--ours", default=defaults.ours, type=_our_variant,
                        help=f"our variant the win, bootstrap and cold checks are computed for (default {defaults.ours})")
    parser.add_argument("--epochs", type=positive_int, default=defaults.train.epochs, help="our model's maximum epochs")
    parser.add_argument("--patience", type=positive_int, default=defaults.train.patience)
    parser.add_argument("--new-item-recall-ratio", type=non_negative_float,
                        default=defaults.train.new_item_recall_ratio,
                        help=NEW_ITEM_RECALL_RATIO_HELP)
    parser.add_argument("--new-item-exposure", choices=EXPOSURES, default=defaults.train.new_item_exposure,
                        help=NEW_ITEM_EXPOSURE_HELP)
    parser.add_argument("--new-item-neighbours", type=non_negative_int, default=defaults.train.new_item_neighbours,
                        help=f"{NEW_ITEM_NEIGHBOURS_HELP[:-1]}; default {defaults.train.new_item_neighbours})")
    parser.add_argument("--exposure-ratio", type=non_negative_float, default=defaults.exposure_ratio,
                        help="cold protocol: also evaluate our model with no exposure target, and with the new-item "
                             "lift and new-item places chosen on validation for this cold/warm Recall@20 ratio "
                             f"(0: off; default {defaults.exposure_ratio:g})")
    parser.add_argument("--baseline-epochs", type=positive_int, default=defaults.baseline_epochs)
    parser.add_argument("--baseline-patience", type=positive_int, default=defaults.baseline_patience)
    parser.add_argument("--reference", type=Path, default=None,
                        help="reference results (markdown table with an NDCG@10 column), e.g. "
                             "../shared/baselines/ml-latest-small.md")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads per run (default: torch's; with --jobs, the cores shared out)")
    parser.add_argument("--jobs", type=positive_int, default=defaults.jobs,
                        help="runs trained at once in worker processes (default 1; one run uses a small part of a "
                             "GPU, so there several at once save time)")
    parser.add_argument("--device", type=device_type, default=defaults.device,
                        help="auto (CUDA when available), cpu, cuda...")
    parser.add_argument("--no-train", action="store_true",
                        help="only rebuild the report from the runs already in OUT/runs.jsonl")
    add_unknown_items_argument(parser)
    add_id_key_argument(parser)


def report_command(args: argparse.Namespace) -> int:
    import logging

    from ..report import QualityConfig, read_reference, run_report
    from ..store import Store
    from ..train import TrainConfig

    # Everything checkable is checked here: the first run_report reads only after hours of training.
    require_store(args.store)
    if not args.no_train:
        require_file("--interactions", args.interactions)
        require_file("--context-events", args.context_events)
    require_file("--reference", args.reference)
    if args.reference is not None:
        try:
            found = read_reference(args.reference)
        except ValueError as error:  # includes UnicodeDecodeError
            raise ValueError(f"--reference {args.reference}: {error}") from error
        if not found:
            raise ValueError(f"--reference {args.reference}: no markdown table with an NDCG@10 column and model rows")
    require_folder_or_absent("--out", args.out)
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
    summary = run_report(Store(args.store, create=False), args.interactions, args.out, config, args.context_events,
                         args.reference, command=command, train=not args.no_train, unknown_items=args.unknown_items,
                         id_key=args.id_key,
                         on_run=lambda r: print(f"{r['protocol']:>8} seed {r['seed']} {r['model']:<14} test ndcg@10 "
                                                f"{r['test']['all']['ndcg@10']:.4f}  ({r['wall_seconds']:.0f} s)",
                                                flush=True))
    print(summary.table)
    print("files: " + ", ".join(str(f) for f in summary.files))
    if args.json:
        print_json_last({"checks": summary.checks, "files": [str(f) for f in summary.files]})
    return EXIT_OK
