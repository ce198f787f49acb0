"""Text encoder throughput and accuracy: fp32 (PyTorch) vs int8 (ONNX Runtime), in one run, on the CPU.

    python scripts/bench_int8.py [--texts 2000] [--batch-size 64] [--threads N] [--repeats 3] [--cache-dir DIR]

Encodes the same MovieLens item texts (title + genres, as `mmrec embed` composes them) with
``TextEncoder(precision="fp32")`` and ``TextEncoder(precision="int8")`` on the CPU, same batch size, both with
``--threads`` intra-op threads (PyTorch's and ONNX Runtime's). The two are timed alternately ``--repeats`` times
after a warm-up (best and median items/s, and the ratio within each back-to-back pair, which other load on the
machine hits alike). Then prints the
int8/fp32 ratio and the cosine (mean, min, 1st percentile) of every int8 vector to its fp32 one. The int8 model's
one-off build (export + quantisation) is timed separately; ``--cache-dir`` reuses a built one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mmrec.encoders import TextEncoder, TextEncoderConfig  # noqa: E402
from mmrec.io.catalog import compose_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def movielens_texts(catalog: Path, n: int, seed: int) -> list[str]:
    items = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    items = items.sample(min(n, len(items)), random_state=seed)
    return [compose_text({"title": row.title, "genres": row.genres}) for row in items.itertuples()]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000, help="MovieLens item texts encoded per timing")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads for both (default: torch's, %(default)s here)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--catalog", type=Path, default=REPO / "assets/ml-latest-small/items.csv")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="int8 model cache (default: a temporary folder, so the build is timed too)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # TextEncoder(int8) gives ONNX Runtime torch.get_num_threads() threads
    texts = movielens_texts(args.catalog, args.texts, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        fp32 = TextEncoder(TextEncoderConfig(precision="fp32", device="cpu", batch_size=args.batch_size,
                                             show_progress=False))
        int8 = TextEncoder(TextEncoderConfig(precision="int8", device="cpu", batch_size=args.batch_size,
                                             show_progress=False, cache_dir=cache_dir))
        start = time.perf_counter()
        fp32.encode(texts[: args.batch_size])  # warm-up, and loads the fp32 model
        int8.__dict__["model"] = fp32.model  # a build exports these weights; no second load
        int8.encode(texts[: args.batch_size])  # warm-up, and builds (or loads) the int8 model
        setup = time.perf_counter() - start

        speeds: dict[str, list[float]] = {"fp32": [], "int8": []}
        vectors = {}
        for _ in range(args.repeats):
            for name, encoder in (("fp32", fp32), ("int8", int8)):
                start = time.perf_counter()
                vectors[name] = encoder.encode(texts)
                speeds[name].append(len(texts) / (time.perf_counter() - start))

    cosine = (vectors["fp32"] * vectors["int8"]).sum(axis=1)
    best = {name: max(values) for name, values in speeds.items()}
    median = {name: statistics.median(values) for name, values in speeds.items()}
    import onnxruntime

    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; threads: {args.threads} (torch and ONNX Runtime); "
          f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {len(texts)} MovieLens texts "
          f"(title + genres), batch size {args.batch_size}, {args.repeats} alternating repeats")
    print(f"fp32 version {fp32.version}; int8 version {int8.version}")
    print(f"setup (model loads + int8 build or cache load + warm-up): {setup:.1f} s")
    for name in ("fp32", "int8"):
        print(f"{name}: best {best[name]:7.1f} items/s, median {median[name]:7.1f} items/s "
              f"(runs: {', '.join(f'{v:.1f}' for v in speeds[name])})")
    pairs = [i / f for f, i in zip(speeds["fp32"], speeds["int8"])]  # back-to-back runs: the same load on both
    print(f"int8 / fp32: best {best['int8'] / best['fp32']:.2f}x, median {median['int8'] / median['fp32']:.2f}x, "
          f"median of back-to-back pairs {statistics.median(pairs):.2f}x "
          f"(pairs: {', '.join(f'{r:.2f}' for r in pairs)})")
    print(f"cosine int8 vs fp32: mean {cosine.mean():.4f}, min {cosine.min():.4f}, "
          f"1st percentile {np.percentile(cosine, 1):.4f}")


if __name__ == "__main__":
    main()
