"""Where the shipped foundation models live and what they cover: the names
and folder of ``models/pretrained/``, and ``uncovered``, the check that a task
world asks for nothing their corpus lacked.

Split from ``failmap.foundation`` (which re-exports all of it) so that
``failmap.params`` can refuse a world the shipped models do not know without
importing ``failmap.foundation``, which itself loads ``failmap.params``.
"""
from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path("models/pretrained")     # relative to the repository root
CLIP_NAME = "world-clip"
DECODER_NAME = "world-decoder"
CARD = "card.json"


def repo_root() -> Path:
    """The repository root (this file is src/failmap/shipped.py)."""
    return Path(__file__).resolve().parents[2]


def shipped_dir(name: str) -> Path:
    """Absolute folder of a shipped foundation model (``CLIP_NAME`` / ``DECODER_NAME``)."""
    return repo_root() / PRETRAINED_DIR / name


def uncovered(card: dict, *, classes, colours, contexts, min_size: float, max_size: float, noise: float,
              image_size: int) -> list[str]:
    """What a task world asks for that the foundation corpus (``card['corpus']``)
    does not cover, one phrase each (empty: covered)."""
    corpus = card["corpus"]
    missing = []
    for key, values in (("classes", classes), ("colours", colours), ("contexts", contexts)):
        known = "shapes" if key == "classes" else key
        out = [v for v in values if v not in corpus[known]]
        if out:
            missing.append(f"world.{key} {out} (the corpus has {corpus[known]})")
    if min_size < corpus["min_size"] or max_size > corpus["max_size"]:
        missing.append(f"world.min_size / max_size {min_size}..{max_size} (the corpus covers "
                       f"{corpus['min_size']}..{corpus['max_size']})")
    if noise > corpus["max_noise"]:
        missing.append(f"world.noise {noise} (the corpus goes up to {corpus['max_noise']})")
    if image_size != corpus["image_size"]:
        missing.append(f"data.image_size {image_size} (the corpus is {corpus['image_size']}px)")
    return missing
