"""Scale-out engines for the batch jobs: catalogue embedding and batch refresh on a Ray cluster (Ray Data actor
pools), with the store written by the driver alone (docs/scale-out.md).

Ray is an optional dependency (``pip install 'mmrec[distributed]'``), imported only when a job runs: without it,
:func:`embed_catalog_ray` and :func:`refresh_store_ray` raise :class:`RayNotInstalledError` saying how to install it.
"""

from .ray_embed import embed_catalog_ray
from .ray_refresh import refresh_store_ray
from .ray_session import INSTALL_HINT, RayConfig, RayNotInstalledError

__all__ = ["INSTALL_HINT", "RayConfig", "RayNotInstalledError", "embed_catalog_ray", "refresh_store_ray"]
