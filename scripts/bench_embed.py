"""Catalogue embedding throughput: our pipeline vs the bare encoders, in one process.

    python scripts/bench_embed.py [--items 256] [--images-root ../shared/data/ml-latest-small/images]

Prints items/s for text-only, image-only and both through `embed_catalog` (reading the catalogue, cleaning,
hashing, decoding, encoding, committing to a fresh store) against sentence-transformers `encode` on the same texts
and the CNN forward on pre-decoded tensors, and the pipeline's overhead as a ratio of the bare time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from mmrec import EmbedConfig, embed_catalog
from mmrec.io.catalog import read_catalog
from mmrec.encoders import ImageEncoder, TextEncoder, load_image

REPO = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--images-root", type=Path, default=REPO.parent / "shared/data/ml-latest-small/images")
    parser.add_argument("--catalog", type=Path, default=REPO / "assets/ml-latest-small/items.csv")
    args = parser.parse_args()

    frame = pd.read_csv(args.catalog, dtype=str, keep_default_na=False)
    frame = frame[frame.image_path != ""].head(args.items)
    n = len(frame)
    text, image = TextEncoder(), ImageEncoder()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        both_csv = tmp / "both.csv"
        frame[["item_id", "title", "genres", "image_path"]].to_csv(both_csv, index=False)
        frame[["item_id", "title", "genres"]].to_csv(tmp / "text.csv", index=False)
        frame[["item_id", "image_path"]].to_csv(tmp / "image.csv", index=False)
        rows = read_catalog(both_csv, images_root=args.images_root)
        texts = [r.text for r in rows]
        decoded = torch.stack([load_image(r.image) for r in rows])
        # Warm-up: model loading and first-call allocations are not throughput.
        text.encode(texts[:64])
        image.encode_tensors(decoded[:32])

        bare_text = timed(lambda: text.encode(texts))
        bare_image = timed(lambda: [image.encode_tensors(decoded[i : i + 32]) for i in range(0, n, 32)])
        config = EmbedConfig(images_root=args.images_root, show_progress=False)
        runs = {
            "text-only": ("text.csv", bare_text),
            "image-only": ("image.csv", bare_image),
            "both": ("both.csv", bare_text + bare_image),
        }
        print(f"{n} items, torch threads {torch.get_num_threads()}, device {text.device}")
        print(f"{'mode':<11} {'pipeline items/s':>17} {'bare items/s':>13} {'overhead':>9}")
        for mode, (name, bare) in runs.items():
            store = tmp / f"store-{mode}"
            seconds = timed(lambda: embed_catalog(tmp / name, store, config, text_encoder=text, image_encoder=image))
            print(f"{mode:<11} {n / seconds:>17.1f} {n / bare:>13.1f} {seconds / bare:>8.2f}x")
        again = timed(lambda: embed_catalog(both_csv, tmp / "store-both", config, text_encoder=text,
                                            image_encoder=image))
        print(f"re-run over the unchanged catalogue: {again:.2f} s ({n / again:.0f} items/s)")


if __name__ == "__main__":
    main()
