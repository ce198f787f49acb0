"""The demo pipeline behind ``mmrec demo`` and ``bash scripts/demo.sh``: embed, train, evaluate and recommend on the
bundled MovieLens data (or another folder of the same three files)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from .embed import EmbedConfig, embed_catalog
from .evaluation import format_metrics
from .networks.model import ModelConfig
from .serve import Recommender
from .train import TrainConfig, evaluate_store, train_store

__all__ = ["bundled_data", "run_demo"]


def bundled_data() -> Path:
    """The folder of the bundled ``ml-latest-small`` (``items.csv``, ``interactions.csv``, ``tags.csv``), wherever
    the package is installed."""
    return Path(str(resources.files("mmrec.assets") / "ml-latest-small"))


def run_demo(store: Path, data: Path | None = None, images_root: Path | None = None, epochs: int = 30,
             users: Sequence[str] = ("1", "42", "414"), out: Callable[[str], None] = print) -> None:
    """Embed ``data/items.csv`` into ``store`` (with posters from ``images_root``, else text only), train on
    ``interactions.csv`` with ``tags.csv`` as context events, evaluate, and print the top 10 for ``users``."""
    data = bundled_data() if data is None else Path(data)
    out(f"[1/4] embedding {data / 'items.csv'} into {store}"
        + (f" with posters from {images_root}" if images_root else " (text only)"))
    report = embed_catalog(data / "items.csv", store, EmbedConfig(
        text_columns=["title", "genres"], images_root=images_root, use_images=images_root is not None))
    out(f"      embedded {report.embedded}, unchanged {report.unchanged}, text-only {report.text_only}, "
        f"rejected {len(report.rejected)}")
    out("[2/4] training (early stopping on validation NDCG@10)")
    config = TrainConfig(epochs=epochs, model=ModelConfig(use_image=images_root is not None))
    summary = train_store(store, data / "interactions.csv", data / "tags.csv", config)
    out(f"      best epoch {summary['best_epoch']}, {summary['seconds_per_epoch']:.1f} s/epoch")
    out("[3/4] evaluation (chronological leave-one-out, full ranking over the catalogue)")
    out(format_metrics(evaluate_store(store, data / "interactions.csv", data / "tags.csv")))
    out("[4/4] top-10 recommendations")
    rec = Recommender.load(store)
    titles = rec.store.titles()
    for user in users:
        recent = [titles[r[1]] for r in rec.store.user_events([user])[user][-3:]]
        out(f"  user {user} (recently: {'; '.join(recent)})")
        for rank, (item_id, probability) in enumerate(rec.recommend(user, k=10), 1):
            out(f"    {rank:>2}. {titles[item_id]}  ({probability:.2f})")
