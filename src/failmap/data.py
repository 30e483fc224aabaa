"""The on-disk format every source writes and every stage reads.

A prepared dataset is a folder (``data/prepared``) with:

- ``<split>.npz`` per split (train, val, test, pool, and corpus where the source
  has captions): ``images`` uint8 (N, H, W, 3), ``labels`` int64 (N,),
  ``ids`` str (N,), and ``captions`` str (N,) when the split has them.
- ``meta.json``: ``source`` name, ``classes`` (names, index = label),
  ``image_size``, ``splits`` (sizes), ``vocab`` = {"adjectives": [...],
  "contexts": [...]} (words / phrases such as "on the grass" that caption
  banks are built from) and, where known, ``planted`` = {class name:
  description of its hard subpopulation}.
- ``ground_truth.csv``: one row per image id of every split with its
  attributes and ``subpop`` (1 = in its class's hard subpopulation). Used only
  to *score* the method, never by it.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from failmap.io import atomic_path, write_json

SPLITS = ("train", "val", "test", "pool")
CORPUS = "corpus"


@dataclass
class Split:
    images: np.ndarray          # uint8 (N, H, W, 3)
    labels: np.ndarray          # int64 (N,)
    ids: np.ndarray             # str (N,)
    captions: np.ndarray | None = None  # str (N,) or None

    def __len__(self) -> int:
        return len(self.ids)

    def __post_init__(self):
        n = len(self.ids)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != n or len(self.labels) != n:
            raise ValueError(f"images ({len(self.images)}), labels ({len(self.labels)}) and ids ({n}) differ in length")
        if self.captions is not None and len(self.captions) != n:
            raise ValueError(f"captions ({len(self.captions)}) and ids ({n}) differ in length")


@dataclass
class Prepared:
    """What a source produces: the splits, meta.json content and ground-truth rows."""
    splits: dict[str, Split]
    meta: dict
    ground_truth: list[dict] | None = None


def write_prepared(root: str | Path, prepared: Prepared) -> None:
    """Write every split, then meta and ground truth (meta last: it marks completion)."""
    for name, split in prepared.splits.items():
        save_split(root, name, split)
    if prepared.ground_truth is not None:
        save_ground_truth(root, prepared.ground_truth)
    meta = dict(prepared.meta)
    meta["splits"] = {name: len(split) for name, split in prepared.splits.items()}
    save_meta(root, meta)


def save_split(root: str | Path, name: str, split: Split) -> Path:
    path = Path(root) / f"{name}.npz"
    arrays = dict(images=split.images, labels=split.labels.astype(np.int64), ids=split.ids.astype(str))
    if split.captions is not None:
        arrays["captions"] = split.captions.astype(str)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def load_split(root: str | Path, name: str) -> Split:
    path = Path(root) / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"split '{name}' not found: {path} (run the prepare stage first)")
    with np.load(path, allow_pickle=False) as z:
        return Split(images=z["images"], labels=z["labels"], ids=z["ids"],
                     captions=z["captions"] if "captions" in z.files else None)


def save_meta(root: str | Path, meta: dict) -> None:
    write_json(Path(root) / "meta.json", meta)


def load_meta(root: str | Path) -> dict:
    path = Path(root) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (run the prepare stage first)")
    return json.loads(path.read_text())


def save_ground_truth(root: str | Path, rows: list[dict]) -> None:
    """rows: dicts with at least id, split, label, subpop; other keys are attributes."""
    path = Path(root) / "ground_truth.csv"
    fields = list(rows[0].keys()) if rows else ["id", "split", "label", "subpop"]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)


def load_ground_truth(root: str | Path) -> dict[str, dict] | None:
    """id -> row (strings, except label/subpop as int); None when the source has none."""
    path = Path(root) / "ground_truth.csv"
    if not path.exists():
        return None
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            row["label"] = int(row["label"])
            row["subpop"] = int(row["subpop"])
            out[row["id"]] = row
    return out


def subpop_mask(ground_truth: dict[str, dict] | None, ids: np.ndarray) -> np.ndarray | None:
    """Boolean mask of the planted subpopulation for these ids (None without ground truth)."""
    if ground_truth is None:
        return None
    return np.array([ground_truth[i]["subpop"] == 1 for i in ids], dtype=bool)
