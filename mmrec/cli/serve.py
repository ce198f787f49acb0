"""``mmrec serve``: the HTTP service of a trained store (:mod:`mmrec.serve.app`) under uvicorn."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from .options import EXIT_OK, add_id_key_argument, device_type, positive_int, require_store

__all__ = ["add_serve_arguments", "serve_command"]


def port_number(value: str) -> int:
    """argparse type of ``--port``: an integer from 1 to 65535."""
    try:
        number = int(value.strip())
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {value!r}")
    return number


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="trained store folder (`mmrec train`)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=port_number, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="server processes, each with its own copy of the model (default 1)")
    parser.add_argument("--device", type=device_type, default="cpu", help="cpu (default), auto, cuda...")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads per process (default 1: scale with --workers instead)")
    parser.add_argument("--durability", choices=["normal", "full"], default="normal",
                        help="normal (default): events survive a crash of the process, a power cut may lose the "
                             "last ones; full: also a power cut (an fsync per commit). docs/serving.md")
    parser.add_argument("--retrieval", choices=["auto", "exact", "ann"], default="auto",
                        help="how /recommend finds candidates: exact (every item), ann (FAISS index), auto "
                             "(default: exact below 15,000 items)")
    add_id_key_argument(parser)


def _check_address(host: str, port: int) -> None:
    """Fail before the model loads when ``host:port`` cannot be listened on (in use, or no such address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        with socket.create_server(address[:2], family=family):
            pass
    except OSError as error:
        raise OSError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})") from None


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from ..pseudonym import ENV_VAR as ENV_ID_KEY
    from ..serve.app import ENV_DEVICE, ENV_DURABILITY, ENV_RETRIEVAL, ENV_STORE, ENV_THREADS, create_app
    from ..serve.recommender import Recommender

    require_store(args.store)
    _check_address(args.host, args.port)
    if args.workers == 1:
        app = create_app(args.store, device=args.device, threads=args.threads, durability=args.durability,
                         retrieval=args.retrieval, id_key=args.id_key)
        uvicorn.run(app, host=args.host, port=args.port)
        return EXIT_OK
    # Each worker process imports the app factory and loads the model itself; loading it once here first turns a
    # store without a usable model into one error message instead of a failure in every worker.
    # (it also builds the ANN index once, rather than once per worker)
    Recommender.load(args.store, device=args.device, threads=None, retrieval=args.retrieval, id_key=args.id_key).close()
    if args.id_key is not None:  # the workers read the key file the variable names
        os.environ[ENV_ID_KEY] = str(args.id_key.resolve())
    os.environ.update({ENV_STORE: str(args.store.resolve()), ENV_DEVICE: args.device, ENV_THREADS: str(args.threads),
                       ENV_DURABILITY: args.durability, ENV_RETRIEVAL: args.retrieval})
    uvicorn.run("mmrec.serve.app:app_from_environment", factory=True, host=args.host, port=args.port,
                workers=args.workers)
    return EXIT_OK
