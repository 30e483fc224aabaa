"""Per-split prediction tables (id, label, pred, correct, confidence) as CSV."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from failmap.io import atomic_path

COLUMNS = ("id", "label", "pred", "correct", "confidence")


def save_predictions(path: str | Path, ids: np.ndarray, preds: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for i, row_id in enumerate(ids):
                w.writerow([row_id, int(preds["label"][i]), int(preds["pred"][i]), int(preds["correct"][i]),
                            f"{float(preds['confidence'][i]):.6f}"])


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (run the train_baseline stage first)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return dict(id=np.array([r["id"] for r in rows]),
                label=np.array([int(r["label"]) for r in rows], dtype=np.int64),
                pred=np.array([int(r["pred"]) for r in rows], dtype=np.int64),
                correct=np.array([int(r["correct"]) for r in rows], dtype=np.int64),
                confidence=np.array([float(r["confidence"]) for r in rows], dtype=np.float64))
