"""What every decoder returns: float image tensors in [-1, 1] -> uint8 arrays."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_uint8_images(x: torch.Tensor, image_size: int | None = None) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, S, S, 3), resized (antialiased) when S differs."""
    x = x.float().clamp(-1, 1)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True,
                          align_corners=False).clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
