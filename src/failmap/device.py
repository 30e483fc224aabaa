"""Device choice shared by every stage: ``auto`` means CUDA when present."""
from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; set device: auto or cpu")
    return name
