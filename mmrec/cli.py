"""``mmrec`` command line: one subcommand per job. Scripts in ``scripts/`` call into the same functions.

Exit status of every subcommand: 0 success; 1 failed (invalid input or a runtime error: the message names the
field/row; nothing partial is committed beyond completed batches); 2 usage error; 3 finished, but some rows were
rejected (listed in the output).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


def _csv_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _print_json_last(payload: dict) -> None:
    sys.stdout.flush()
    print(json.dumps(payload, default=str))


# -- embed ----------------------------------------------------------------------------------------------------
def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("catalog", type=Path, help="CSV, JSONL or Parquet with item_id, text columns, image_path")
    parser.add_argument("--store", type=Path, required=True, help="store folder (created when absent)")
    parser.add_argument("--images-root", type=Path, default=None,
                        help="folder image_path is relative to (default: the catalogue's folder)")
    parser.add_argument("--text-columns", type=_csv_list, default=None,
                        help="comma-separated columns joined into item text (default: all but item_id/image_path)")
    parser.add_argument("--no-images", action="store_true", help="embed text only, ignore image_path")
    parser.add_argument("--batch-size", type=int, default=None, help="encoder batch size")
    parser.add_argument("--chunk-size", type=int, default=256, help="items committed per transaction")
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    parser.add_argument("--json", action="store_true", help="print one JSON summary as the last stdout line")


def run_embed(args: argparse.Namespace) -> int:
    from .embed import EmbedConfig, embed_catalog
    from .encoders.image import ImageEncoderConfig
    from .encoders.text import TextEncoderConfig

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
        f"image-only {report.image_only}, rejected {len(report.rejected)} -> {args.store}"
    )
    if args.json:
        _print_json_last(report.to_dict())
    return EXIT_REJECTED if report.rejected else EXIT_OK


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "embed": ("embed new or changed catalogue items into a store", add_embed_arguments, run_embed),
}


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmrec", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in commands or COMMANDS:
        help_text, add_arguments, _ = COMMANDS[name]
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def run_command(name: str, argv: Sequence[str] | None = None) -> int:
    """Entry point for ``scripts/<name>.py``: the same arguments as ``mmrec <name>``."""
    help_text, add_arguments, run = COMMANDS[name]
    parser = argparse.ArgumentParser(description=help_text)
    add_arguments(parser)
    return _guarded(run, parser.parse_args(argv))


def _guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return run(args)
    except (ValueError, KeyError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _guarded(COMMANDS[args.command][2], args)


if __name__ == "__main__":
    sys.exit(main())
