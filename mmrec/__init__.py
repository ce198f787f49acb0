"""mmrec: a multimodal, language-model-enhanced recommendation engine.

Data flows one way (docs/architecture.md): files -> rows (:mod:`mmrec.io`) -> interactions, split and batches
(:mod:`mmrec.data`) -> features (:mod:`mmrec.features`) -> networks (:mod:`mmrec.networks`, :mod:`mmrec.fusion`,
:mod:`mmrec.baselines`) -> :mod:`mmrec.train` | :mod:`mmrec.serve`.

- :func:`embed_catalog` / :class:`Store`: catalogue items -> stored text and image features.
- :func:`train_store`, :func:`evaluate_store`, :func:`refresh_store`: the training, evaluation and batch-refresh jobs.
- :func:`embed_catalog_ray`, :func:`refresh_store_ray` (:class:`RayConfig`): embedding and refresh on a Ray cluster
  (``pip install 'mmrec[distributed]'``; Ray is imported only when they run).
- :class:`Recommender`: score, recommend (exact or ANN, diverse, explained), observe and forget from Python;
  ``mmrec serve`` puts it behind HTTP.
"""

from .distributed import RayConfig, RayNotInstalledError, embed_catalog_ray, refresh_store_ray
from .embed import EmbedConfig, EmbedReport, embed_catalog
from .forget import forget_users
from .pseudonym import IdKey, IdKeyError
from .networks.model import ModelConfig, NewItemPolicy
from .serve import IndexConfig, Reason, Recommender, RefreshReport, refresh_store
from .store import StaleModelError, Store, UserState
from .train import TrainConfig, evaluate_store, train_store
from .trained import ModelLoadError, TrainedModel

__all__ = [
    "EmbedConfig", "EmbedReport", "IdKey", "IdKeyError", "IndexConfig", "ModelConfig", "ModelLoadError",
    "NewItemPolicy", "RayConfig", "RayNotInstalledError", "Reason",
    "Recommender", "RefreshReport", "StaleModelError", "Store", "TrainConfig", "TrainedModel", "UserState",
    "embed_catalog", "embed_catalog_ray", "evaluate_store", "forget_users", "refresh_store", "refresh_store_ray",
    "train_store",
]
__version__ = "0.1.0"
