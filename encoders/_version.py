"""Fingerprints that tie stored features to the exact weights that produced them."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_fingerprint(paths: list[Path], extra: str = "") -> str:
    """Short hex digest over each file's name, size and its first and last MiB.

    Reading the whole of a 90 MB weights file at every start would cost more than the check is worth; size plus
    head and tail changes whenever a different checkpoint is dropped in.
    """
    digest = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_CHUNK))
            if size > 2 * _CHUNK:
                handle.seek(-_CHUNK, 2)
                digest.update(handle.read(_CHUNK))
    return digest.hexdigest()[:12]
