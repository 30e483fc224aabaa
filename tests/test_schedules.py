"""The one learning-rate schedule of every training loop (failmap.schedules).

The three hand-written schedules it replaced are kept here, verbatim, as the
reference: the factors must be the same floats, so that the default world's
baseline (trained with the triangle) keeps its figures to the bit."""
from __future__ import annotations

import math

import pytest
import torch

from failmap.schedules import lr_schedule, triangle_schedule, warmup_then_decay


def old_decoder_factor(step, warmup, steps, floor=0.1):   # decoder_train._lr_factor
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def old_clip_factor(step, warmup, steps):                 # clip_train._lr_factor
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def old_triangle_factor(total_steps, peak_fraction=0.25):  # train.triangular_schedule
    peak = max(1, int(total_steps * peak_fraction))

    def factor(step):
        if step < peak:
            return (step + 1) / peak
        return max(0.0, (total_steps - step) / max(1, total_steps - peak))
    return factor


@pytest.mark.parametrize("warmup, steps", [(0, 1), (10, 100), (100, 1800), (7, 5), (3, 4)])
def test_the_same_floats_as_the_three_schedules_it_replaced(warmup, steps):
    decoder = warmup_then_decay(warmup, steps, "cosine", floor=0.1)
    clip = warmup_then_decay(warmup, steps, "cosine")
    for step in range(steps + 2):
        assert clip(step) == old_clip_factor(step, warmup, steps)
    for step in range(steps + 1):  # past its end the old decoder cosine rose again; training never got there
        assert decoder(step) == old_decoder_factor(step, warmup, steps)
    for total in (1, 3, 4, 10, 97, 400):
        old = old_triangle_factor(total)
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        factor = triangle_schedule(opt, total).lr_lambdas[0]
        assert [factor(s) for s in range(total + 2)] == [old(s) for s in range(total + 2)]


def test_shape_of_warmup_and_decays():
    cosine = warmup_then_decay(10, 100)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0) == cosine(10)
    assert cosine(55) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0, abs=1e-12)
    floored = warmup_then_decay(0, 100, floor=0.1)
    assert floored(0) == 1.0 and floored(100) == pytest.approx(0.1) and floored(500) == pytest.approx(0.1)
    linear = warmup_then_decay(25, 100, "linear")
    assert linear(24) == 1.0 and linear(25) == 1.0 and linear(50) == pytest.approx(2 / 3) and linear(200) == 0.0


def test_lr_schedule_drives_the_optimiser_and_resumes_from_its_state():
    def run(stop=None, state=None):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
        sched = lr_schedule(opt, steps=20, warmup=4, floor=0.1)
        if state is not None:
            opt.load_state_dict(state[0])
            sched.load_state_dict(state[1])
        lrs = []
        for _ in range(stop if stop is not None else 20 - sched.last_epoch):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        return lrs, (opt.state_dict(), sched.state_dict())
    straight, _ = run()
    first, state = run(stop=7)
    rest, _ = run(state=state)
    assert first + rest == straight
    assert straight[2] == pytest.approx(0.5) and straight[-1] == pytest.approx(0.05)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="decay must be one of"):
        warmup_then_decay(1, 10, "step")
    with pytest.raises(ValueError, match="steps >= 1"):
        warmup_then_decay(1, 0)
    with pytest.raises(ValueError, match="warmup >= 0"):
        warmup_then_decay(-1, 10)
    with pytest.raises(ValueError, match="floor must lie in"):
        warmup_then_decay(1, 10, floor=1.0)
