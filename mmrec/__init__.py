"""mmrec: a multimodal, language-model-enhanced recommendation engine.

Data flows one way: catalogue -> encoders -> fusion -> item vectors -> interest model -> scorer.
"""

from .embed import EmbedConfig, EmbedReport, embed_catalog
from .store import Store, StoredItem

__all__ = ["EmbedConfig", "EmbedReport", "Store", "StoredItem", "embed_catalog"]
__version__ = "0.1.0"
