"""The learning-rate schedule of every training loop: linear warm-up, then decay.

One implementation for the three loops that had their own: the world decoder
(``failmap.decoders.training``: cosine to a floor of the peak), the world
CLIP (``failmap.clip_train``: cosine to zero) and the classifiers
(``failmap.train.fit`` and ``failmap.finetune``: the reference's one-cycle
triangle, a quarter of the steps up, the rest linearly down to zero).

Torch's ``LambdaLR`` applies the factor, so the schedule's state is the
optimiser's step count and resumes with ``state_dict``. Warm-up starts at
1 / warmup of the peak rather than at zero (diffusers' ``get_scheduler``
starts at zero): the first step already learns, and the figures of the
default world's trained models stay what they were.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

DECAYS = ("cosine", "linear")
TRIANGLE_PEAK = 0.25  # the one-cycle triangle peaks after this share of the steps


def warmup_then_decay(warmup: int, steps: int, decay: str = "cosine", floor: float = 0.0) -> Callable[[int], float]:
    """The factor of the peak learning rate at each step: (step + 1) / warmup
    for the first ``warmup`` steps, then ``decay`` ('cosine' or 'linear') from 1
    at step ``warmup`` to ``floor`` at step ``steps`` (and ``floor`` after)."""
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if int(steps) != steps or steps < 1 or int(warmup) != warmup or warmup < 0:
        raise ValueError(f"need whole numbers steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must lie in [0, 1) (a share of the peak learning rate), got {floor}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "linear":
            return floor + (1 - floor) * max(0.0, (steps - step) / max(1, steps - warmup))
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def lr_schedule(optimizer: torch.optim.Optimizer, *, steps: int, warmup: int, decay: str = "cosine",
                floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """``warmup_then_decay`` on ``optimizer``: call ``step()`` after each optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_decay(warmup, steps, decay, floor))


def triangle_schedule(optimizer: torch.optim.Optimizer, steps: int,
                      peak_fraction: float = TRIANGLE_PEAK) -> torch.optim.lr_scheduler.LambdaLR:
    """The reference's cyclic learning rate, one cycle: linear warm-up to the
    peak over the first ``peak_fraction`` of the steps, then linear decay to zero."""
    return lr_schedule(optimizer, steps=steps, warmup=max(1, int(steps * peak_fraction)), decay="linear")
