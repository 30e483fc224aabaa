"""Small file helpers: writes are atomic so a failed stage never leaves a
half-written output that a later run could take as complete."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from collections.abc import Mapping
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(obj, path: str | Path) -> None:
    """``torch.save`` atomically, through a file handle: torch names the archive
    inside after a path's file name, which for the random temporary name would
    make two identical saves differ byte for byte."""
    import torch
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes, read in chunks (model weights can be large)."""
    import hashlib
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (has the stage that writes it run?)")
    return json.loads(path.read_text())


def flatten(tree: Mapping, sep: str = ".", prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, the key naming of ``dvc metrics diff``
    and ``dvc exp run -S``; leaves (lists included) are kept as they are."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"expected a mapping to flatten, got {type(tree).__name__}")
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, sep, name))
        else:
            flat[name] = value
    return flat
