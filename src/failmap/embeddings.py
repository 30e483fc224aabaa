"""Reading the embed stage's output: per-split embeddings aligned with ids."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load_embeddings(root: str | Path, split: str, ids: np.ndarray | None = None) -> np.ndarray:
    """(N, D) float32 embeddings of a split; checked row by row against ``ids`` when given."""
    path = Path(root) / f"{split}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (run the embed stage first)")
    with np.load(path) as z:
        if ids is not None and not np.array_equal(z["ids"], ids):
            raise ValueError(f"{path}: rows do not match the ids of split '{split}' (re-run the embed stage)")
        return z["embeddings"]
