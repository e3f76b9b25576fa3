"""The one file-hash helper (provenance records: warm start, export, benchmark splits and payloads)."""
from __future__ import annotations

import hashlib
import os
from typing import Union


def sha256_of(path: Union[str, os.PathLike]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
