"""mmrec: a multimodal, language-model-enhanced recommendation engine.

Data flows one way: catalogue -> encoders -> fusion -> item vectors -> interest model -> scorer.

- :func:`embed_catalog` / :class:`Store`: catalogue items -> stored text and image features.
- :func:`train_store`, :func:`evaluate_store`, :func:`refresh_store`: the training, evaluation and batch-refresh jobs.
- :class:`Recommender`: score, recommend and observe from Python.
"""

from .embed import EmbedConfig, EmbedReport, embed_catalog
from .jobs import RefreshReport, evaluate_store, refresh_store, train_store
from .model import ModelConfig, ModelLoadError
from .recommender import Recommender
from .store import Store, StoredItem, UserState
from .training import TrainConfig

__all__ = [
    "EmbedConfig", "EmbedReport", "ModelConfig", "ModelLoadError", "Recommender", "RefreshReport", "Store",
    "StoredItem", "TrainConfig", "UserState", "embed_catalog", "evaluate_store", "refresh_store", "train_store",
]
__version__ = "0.1.0"
