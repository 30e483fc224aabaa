"""Decoded sets: the images of one training arm or of the evaluation set, one
manifest row per image (its class, side, alpha, caption, seed and position in
its decoder call: enough to redraw it), and how they are saved (a
prepared-split ``.npz`` that later stages read with ``load_split``, the
manifest CSV, a PNG grid per set). ``failmap.generate`` makes them."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from failmap.data import Split, save_split
from failmap.io import atomic_path

EVAL_SET = "eval"
SIDES = ("hard", "neutral", "easy")
MANIFEST_FIELDS = ("id", "set", "class", "label", "side", "alpha", "mode", "caption", "seed", "noise_index", "file",
                   "index")  # mode: the failure mode that steered the image (failmap.generate), empty for the SVM


@dataclass
class GeneratedSet:
    """Decoded images of one set (a training arm or the evaluation set) and one
    manifest row per image; ``skipped``: class name -> why it has no images."""
    name: str
    images: np.ndarray          # uint8 (N, H, W, 3)
    labels: np.ndarray          # int64 (N,)
    rows: list[dict]
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.images) != len(self.labels) or len(self.rows) != len(self.labels):
            raise ValueError(f"set {self.name!r}: {len(self.images)} images, {len(self.labels)} labels and "
                             f"{len(self.rows)} manifest rows must match")
        for i, row in enumerate(self.rows):
            if row["index"] != i or row["label"] != int(self.labels[i]) or row["set"] != self.name:
                raise ValueError(f"set {self.name!r}: manifest row {i} ({row['id']}) does not describe image {i}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def ids(self) -> np.ndarray:
        return np.array([r["id"] for r in self.rows], dtype=str)

    def mask(self, **where) -> np.ndarray:
        """Boolean mask of the rows whose fields equal the given values (e.g. side="hard", alpha=0.3)."""
        out = np.ones(len(self), dtype=bool)
        for key, value in where.items():
            out &= np.array([r[key] == value for r in self.rows], dtype=bool)
        return out


def keep_on_class(generated: GeneratedSet, predicted: np.ndarray) -> GeneratedSet:
    """The set without the images CLIP puts in another class (ALIA-style filter)."""
    keep = np.flatnonzero(predicted == generated.labels)
    rows = [dict(generated.rows[i], index=j) for j, i in enumerate(keep)]
    return GeneratedSet(generated.name, generated.images[keep], generated.labels[keep], rows, generated.skipped)


def save_generated(folder: str | Path, generated: GeneratedSet, allow_empty: bool = False) -> Path:
    """``<folder>/<name>.npz`` in the prepared-split format (images, labels,
    ids, conditioning captions), so later stages read it with ``load_split``.
    ``allow_empty``: a set the CLIP filter emptied is saved with no images
    (its arm then fine-tunes on train alone) instead of refused."""
    if not len(generated) and not allow_empty:
        raise ValueError(f"set {generated.name!r} has no images to save (every class skipped?)")
    split = Split(images=generated.images, labels=generated.labels, ids=generated.ids,
                  captions=np.array([r["caption"] for r in generated.rows], dtype=str))
    return save_split(folder, generated.name, split)


def write_manifest(path: str | Path, sets: Sequence[GeneratedSet]) -> Path:
    """One CSV row per generated image of every set (alpha empty where it does not apply)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            for s in sets:
                for row in s.rows:
                    writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in MANIFEST_FIELDS})
    return path


def read_manifest(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (run the generate stage first)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("label", "seed", "noise_index", "index"):
            row[key] = int(row[key])
        row["alpha"] = float(row["alpha"]) if row["alpha"] != "" else None
        row["mode"] = int(row["mode"]) if row.get("mode", "") != "" else None
    return rows


def save_grid(generated: GeneratedSet, path: str | Path, per_group: int = 8, alpha: float | None = None,
              upscale: int = 3) -> Path:
    """A PNG with one row of ``per_group`` images per class (per class and side
    for the evaluation set: hard, neutral, easy at ``alpha``, default the
    largest). Rows stay aligned: a short group is padded with blank cells."""
    from failmap.plots import image_grid

    if not len(generated):
        raise ValueError(f"set {generated.name!r} has no images to draw")
    if int(per_group) != per_group or per_group < 1:
        raise ValueError(f"per_group must be a positive integer, got {per_group}")
    per_group = int(per_group)
    groups: dict[tuple, list[int]] = {}
    if generated.name == EVAL_SET:
        alphas = sorted({r["alpha"] for r in generated.rows if r["side"] != "neutral"})
        alpha = alphas[-1] if alpha is None else float(alpha)
        if alpha not in alphas:
            raise ValueError(f"alpha {alpha} is not in the evaluation set (alphas {alphas})")
        wanted = {"hard": alpha, "neutral": 0.0, "easy": alpha}
        for i, r in enumerate(generated.rows):
            if wanted[r["side"]] == r["alpha"]:
                groups.setdefault((r["label"], SIDES.index(r["side"])), []).append(i)
        title = f"{generated.name}: hard / neutral / easy, alpha {alpha:g}"
    else:
        for i, r in enumerate(generated.rows):
            groups.setdefault((r["label"],), []).append(i)
        title = f"{generated.name}: one row per class"
    blank = np.full(generated.images.shape[1:], 255, np.uint8)
    cells, labels = [], []
    for key in sorted(groups):
        picked = groups[key][:per_group]
        for i in picked:
            r = generated.rows[i]
            cells.append(generated.images[i])
            text = r["caption"].removeprefix("a photo of a ") if r["caption"] else f"{r['side']} {r['alpha'] or 0:g}"
            labels.append(f"{r['class']}: {text}")
        cells += [blank] * (per_group - len(picked))
        labels += [""] * (per_group - len(picked))
    return image_grid(np.stack(cells), path, ncol=per_group, upscale=upscale, title=title, labels=labels)
