"""Serving: the :class:`Recommender` (score, recommend, observe) and the batch refresh of interest vectors. It loads
what :mod:`mmrec.train` wrote and never imports it."""

from .recommender import Event, Recommender
from .refresh import RefreshReport, refresh_store

__all__ = ["Event", "Recommender", "RefreshReport", "refresh_store"]
