"""Pre-train a small CLIP on (image, caption) pairs with open_clip's own model code.

Users without a network have no pretrained CLIP, so the embedded world trains
its own on its captioned ``corpus`` split. Everything goes through open_clip:
a custom model config (an image tower sized for the data's small images,
open_clip's ModifiedResNet or a ViT; a small text transformer on open_clip's
bundled BPE vocabulary, so it works offline) is
written as JSON, registered with ``open_clip.add_model_config`` and built with
``open_clip.create_model``; the saved folder then loads through the same
``create_model(name, pretrained=<weights file>)`` path as any open_clip model
(see ``failmap.embedder.load_embedder(source="world", ...)``).

``failmap.evaluation.zero_shot_report`` measures what the rest of the
pipeline needs from the space: images must land near the captions that
describe their class, colour and context.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from failmap.device import resolve_device
from failmap.embedder import WORLD_CLIP_WEIGHTS, normalise_batch, register_config, world_clip_paths
from failmap.io import save_torch, write_json
from failmap.schedules import lr_schedule

HEAD_WIDTH = 32          # attention head width for both towers: 128-wide towers get 4 heads
TRANSLATE_PIXELS = 2     # augmentation: random shift (reflect-padded) of up to this many pixels


def clip_model_config(image_size: tuple[int, int], *, embed_dim: int, width: int, layers: int | list[int],
                      patch_size: int, text_width: int, text_layers: int, context_length: int) -> dict:
    """An open_clip model config (the JSON open_clip reads) for a small CLIP.

    The image tower follows open_clip's own convention: ``layers`` an int is a
    ViT (``width`` wide, ``patch_size`` patches); ``layers`` a list of 4 block
    counts is open_clip's ModifiedResNet (CLIP's RN50 design; ``width`` is the
    stem width, ``patch_size`` is unused). On the world's 32x32 shapes the
    ResNet learns shape far faster per CPU second: after 1500 contrastive
    steps a ViT (width 64, patch 8) reached 31% zero-shot class accuracy and
    the ResNet (width 16) 86-91%; as a supervised probe over 1000 steps, 39%
    against 84%.
    """
    h, w = image_size
    if text_width % HEAD_WIDTH:
        raise ValueError(f"text_width must be a multiple of {HEAD_WIDTH} (the attention head width), got {text_width}")
    if isinstance(layers, (list, tuple)):
        if len(layers) != 4 or not all(int(n) >= 1 for n in layers):
            raise ValueError(f"a ResNet image tower needs layers = 4 block counts >= 1, got {layers}")
        if h % 32 or w % 32:
            raise ValueError(f"a ResNet image tower downsamples 32x: image size {h}x{w} must be a multiple of 32")
        vision = {"image_size": [h, w] if h != w else h, "layers": [int(n) for n in layers], "width": width}
    else:
        if width % HEAD_WIDTH:
            raise ValueError(f"a ViT's width must be a multiple of {HEAD_WIDTH} (the attention head width), got {width}")
        if h % patch_size or w % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide the image size {h}x{w}")
        vision = {"image_size": [h, w] if h != w else h, "layers": int(layers), "width": width,
                  "head_width": HEAD_WIDTH, "patch_size": patch_size}
    return {
        "embed_dim": embed_dim,
        "vision_cfg": vision,
        # vocab_size: open_clip's bundled BPE tokenizer, the default for non-HF text towers
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                     "heads": text_width // HEAD_WIDTH, "layers": text_layers},
    }


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and small shift of a float (B, 3, H, W) batch.

    Both keep every captioned attribute (shape, colour, size, context) true;
    crops or colour jitter would not."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1).to(x.device), x.flip(-1), x)
    p = TRANSLATE_PIXELS
    if p:
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]     # (B, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]     # (B, 1, w)
        batch = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # one gather, no loop
    return x


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay only weight matrices: gains, biases and the temperature stay free."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "logit_scale" in name or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_clip(images_uint8: np.ndarray, captions, out_dir: str | Path, *, embed_dim: int = 64,
               width: int = 128, layers: int | list[int] = 4, patch_size: int = 4, text_width: int = 128,
               text_layers: int = 3, context_length: int = 16, steps: int = 1500, batch_size: int = 128,
               lr: float = 1e-3, warmup: int = 100, weight_decay: float = 0.1, init_temperature: float = 0.07,
               augment: bool = True,
               seed: int = 0, device: str = "auto", log_every: int = 50) -> dict:
    """Train a CLIP contrastively on (image, caption) pairs; save it under ``out_dir``.

    Writes ``out_dir/world-clip.json`` (the open_clip config) and
    ``out_dir/weights.pt`` (the state dict). Returns metrics: final loss,
    wall and CPU time (on a shared machine the CPU time of a 1-thread run is
    the steadier figure), parameter count, and the loss history every
    ``log_every`` steps.

    The loss is CLIP's symmetric cross-entropy over the batch's image-text
    logits, except that identical captions in a batch count as positives of
    each other: a corpus built from a few attributes repeats captions
    ("a photo of a star"), and plain InfoNCE would push an image away from a
    caption that describes it correctly.
    """
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3 or images_uint8.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images_uint8.dtype} {images_uint8.shape}")
    captions = [str(c) for c in captions]
    if len(captions) != len(images_uint8):
        raise ValueError(f"{len(images_uint8)} images but {len(captions)} captions")
    if len(captions) < 2:
        raise ValueError("contrastive training needs at least 2 (image, caption) pairs")
    if steps < 1 or batch_size < 2 or warmup < 0 or not 0 < init_temperature <= 1:
        raise ValueError(f"need steps >= 1, batch_size >= 2, warmup >= 0, 0 < init_temperature <= 1; "
                         f"got {steps}, {batch_size}, {warmup}, {init_temperature}")
    batch_size = min(batch_size, len(captions))
    dev = torch.device(resolve_device(device))
    start_time, start_cpu = time.perf_counter(), time.process_time()

    out_dir = Path(out_dir)
    config = clip_model_config(images_uint8.shape[1:3], embed_dim=embed_dim, width=width, layers=layers,
                               patch_size=patch_size, text_width=text_width, text_layers=text_layers,
                               context_length=context_length)
    config_path, weights_path = world_clip_paths(out_dir)[0], out_dir / WORLD_CLIP_WEIGHTS
    write_json(config_path, config)
    name = register_config(config_path)

    torch.manual_seed(seed)  # model initialisation
    model = open_clip.create_model(name, pretrained=None).to(dev).train()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1.0 / init_temperature))
    tokenizer = open_clip.get_tokenizer(name)
    pp = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(pp["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(pp["std"], device=dev).view(1, 3, 1, 1)
    image_hw = tuple(images_uint8.shape[1:3])

    # Tokenise each distinct caption once; a caption id per image also tells
    # which pairs of a batch share a caption.
    unique, caption_ids = np.unique(np.array(captions), return_inverse=True)
    too_long = [c for c in unique if len(tokenizer.encode(c)) + 2 > context_length]
    if too_long:
        raise ValueError(f"context_length {context_length} is too short for caption '{too_long[0]}' "
                         f"({len(tokenizer.encode(too_long[0])) + 2} tokens with start/end)")
    tokens = tokenizer(list(unique)).to(dev)
    caption_ids = torch.from_numpy(caption_ids.astype(np.int64)).to(dev)
    images = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).contiguous().to(dev)

    # fused: one kernel for all parameters; the for-loop AdamW spends a third of
    # a CPU step on the (mostly unused) 49408-row token embedding.
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6,
                                  fused=True)
    schedule = lr_schedule(optimizer, steps=steps, warmup=warmup, decay="cosine")  # to zero
    generator = torch.Generator().manual_seed(seed)  # batches and augmentation
    max_logit_scale = math.log(100.0)

    history, running = [], None
    bar = tqdm(range(steps), desc="pretrain clip", unit="step", mininterval=2)
    for step in bar:
        idx = torch.randint(0, len(captions), (batch_size,), generator=generator).to(dev)
        x = images[idx].float().div_(255.0)
        if augment:
            x = _augment(x, generator)
        x = normalise_batch(x, image_hw, mean, std)
        cid = caption_ids[idx]
        image_features = model.encode_image(x, normalize=True)
        text_features = model.encode_text(tokens[cid], normalize=True)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        same = (cid[:, None] == cid[None, :]).float()
        target = same / same.sum(1, keepdim=True)  # symmetric: the same for rows and columns
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # as CLIP: a temperature above 100 makes training unstable
            model.logit_scale.clamp_(0, max_logit_scale)

        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        if step % log_every == 0 or step == steps - 1:
            history.append(dict(step=step, loss=round(value, 5), lr=optimizer.param_groups[0]["lr"],
                                logit_scale=round(model.logit_scale.exp().item(), 3)))
            bar.set_postfix(loss=f"{running:.3f}")

    model.eval()
    save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights_path)
    return dict(
        final_loss=round(running, 5), steps=steps, batch_size=batch_size, n_pairs=len(captions),
        n_unique_captions=len(unique), n_params=sum(p.numel() for p in model.parameters()),
        train_seconds=round(time.perf_counter() - start_time, 2),
        train_cpu_seconds=round(time.process_time() - start_cpu, 2), device=str(dev), history=history,
    )
