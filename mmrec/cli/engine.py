"""``--engine``, ``--ray-address`` and ``--ray-workers`` of the batch jobs (``mmrec embed``, ``mmrec refresh``): run
in this process, or on a Ray cluster (:mod:`mmrec.distributed`, docs/scale-out.md)."""

from __future__ import annotations

import argparse

from .options import positive_int

ENGINES = ("local", "ray")


def add_engine_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    """The engine options; ``work`` names what the Ray actors do (``"encode items"``...)."""
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help=f"local (default): this process; ray: {work} on a Ray Data actor pool, each actor "
                             "loading the model once, this process writing the store (pip install "
                             "'mmrec[distributed]')")
    parser.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                        help="--engine ray: the cluster to join (auto: the one running here or named by "
                             "RAY_ADDRESS; default: start Ray on this machine for the job)")
    parser.add_argument("--ray-workers", type=positive_int, default=None,
                        help="--engine ray: actors in the pool (default: one per GPU when the cluster has GPUs, "
                             "else one per two CPUs)")


def engine_usage_error(args: argparse.Namespace) -> str | None:
    """Why the engine options do not fit together (a usage error), or ``None``."""
    if args.engine != "ray":
        given = [name for name, value in (("--ray-address", args.ray_address), ("--ray-workers", args.ray_workers))
                 if value is not None]
        if given:
            return f"{' and '.join(given)} need --engine ray"
    elif args.ray_address is not None and not args.ray_address.strip():
        return "--ray-address: expected auto or HOST:PORT, got an empty value"
    return None


def ray_config(args: argparse.Namespace):
    """The :class:`~mmrec.distributed.RayConfig` of ``--engine ray``; fails (exit 1) with how to install Ray when it
    is not installed, before any work."""
    from ..distributed.ray_session import RayConfig, require_ray

    require_ray()
    return RayConfig(address=args.ray_address.strip() if args.ray_address else None, workers=args.ray_workers)
