"""Serving: the :class:`Recommender` (score, recommend, explain, observe, forget), the batch refresh of interest
vectors, the ANN item index and the HTTP service (:mod:`mmrec.serve.app`). It loads what :mod:`mmrec.train` wrote
and never imports it."""

from .explain import Reason
from .index import IndexConfig, ItemIndex
from .recommender import Event, Recommender
from .refresh import RefreshReport, refresh_store

__all__ = ["Event", "IndexConfig", "ItemIndex", "Reason", "Recommender", "RefreshReport", "refresh_store"]
