"""Training loop and predictions for the classifiers in failmap.models."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from failmap.schedules import triangle_schedule

# Per-channel statistics are not worth a pass over the data: images are
# scaled to [-1, 1], which every architecture here handles with batch norm.


def to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with reflection padding and horizontal flip, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def fit(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int,
        lr: float, momentum: float, weight_decay: float, augment_data: bool, seed: int, device: str,
        params=None, desc: str = "train", mixed_precision: bool = False) -> list[float]:
    """SGD with a one-cycle triangular learning rate; returns the mean loss per epoch.

    ``params`` restricts what is trained (e.g. only the last layer); the rest is
    frozen and kept in eval mode so batch-norm statistics do not drift.
    Batches run channels-last (the CPU's convolution kernels are faster on
    it: a small_cnn step 0.196 -> 0.149 s on the 2-core Xeon) and, with
    ``mixed_precision``, the forward pass under bfloat16 autocast (0.082 s;
    ``failmap.device.resolve_mixed_precision`` says where bf16 is native).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all = to_tensor(images)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    trainable = list(model.parameters()) if params is None else list(params)
    opt = torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    steps_per_epoch = max(1, int(np.ceil(len(x_all) / batch_size)))
    sched = triangle_schedule(opt, epochs * steps_per_epoch)
    model.to(device, memory_format=torch.channels_last)
    losses = []
    bar = tqdm(range(epochs), desc=desc, mininterval=2)
    for _ in bar:
        model.train(params is None)
        order = torch.randperm(len(x_all), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = x_all[idx]
            if augment_data:
                x = augment(x, gen)
            x, y = x.to(device, memory_format=torch.channels_last), y_all[idx].to(device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=mixed_precision):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            count += len(idx)
        losses.append(total / count)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, images: np.ndarray, device: str, batch_size: int = 512) -> np.ndarray:
    model.eval().to(device)
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start:start + batch_size]).to(device)
        out.append(torch.softmax(model(x), dim=1).float().cpu())
    n_out = model.fc.out_features
    return torch.cat(out).numpy() if out else np.zeros((0, n_out), np.float32)


def predictions(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, device: str) -> dict[str, np.ndarray]:
    """label, predicted label, correctness and confidence in the true class."""
    proba = predict_proba(model, images, device)
    pred = proba.argmax(1)
    return dict(label=labels, pred=pred, correct=(pred == labels).astype(np.int64),
                confidence=proba[np.arange(len(labels)), labels])
