"""Pre-train the world decoder: a small pixel-space diffusion model that draws
an image from a unit CLIP image embedding (``failmap.decoders.world.EmbeddingDecoderPipeline``).

Objective: DDPM noise prediction (or v-prediction) on (image, its CLIP image
embedding) pairs; with probability ``cond_dropout`` the condition is replaced
by the zero vector so that the same network also learns the unconditional
model that classifier-free guidance needs. Sampling is DDIM.

What makes it fit the CPU budget (measured in benchmarks/bench_decoder.py):
- space-to-depth (``patch_size`` 2): the UNet sees 12 x 16 x 16 instead of
  3 x 32 x 32, every pixel kept, ~3x cheaper per step;
- an exponential moving average of the weights (``ema_decay``, diffusers'
  ``EMAModel``), which gives clean samples long before the raw weights stop
  jittering;
- linear warm-up then cosine decay of a high learning rate (to
  ``LR_FLOOR`` of the peak; ``failmap.schedules``, shared with every loop);
- ``mixed_precision``: bfloat16 autocast (AMX / AVX512-BF16 CPUs, GPUs), and
  channels-last convolutions.

The diffusion arithmetic is diffusers' own: ``DDPMScheduler.add_noise`` and
``get_velocity`` (the v target), ``training_utils.compute_snr`` for min-SNR
weighting, ``EMAModel`` for the average (its state is in the checkpoint).

What makes it learn in that budget: the condition enters scaled to
unit-variance entries (``cond_scale`` sqrt(D)), and ``text_cond_prob`` trains
on the images' own (bridged) captions as well as on their image embeddings.
"""
from __future__ import annotations

import collections
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm

from failmap.decoders.bridge import ModalityBridge
from failmap.decoders.sphere import normalize
from failmap.decoders.world import EmbeddingDecoderPipeline
from failmap.device import resolve_device, resolve_mixed_precision
from failmap.io import save_torch
from failmap.schedules import lr_schedule

GROUP_NORM_GROUPS = 8   # channel widths down to 8 stay valid
HEAD_DIM = 32           # attention head width
# final loss above this share of the loss of predicting zero: the network learnt (almost) nothing.
# The world decoder ends near 0.05 where predicting zero scores 0.82 (epsilon, min-SNR 5): a share of
# ~6 %; a diverged one (lr 0.004 on the contrast-rule world) ended at 0.819, ~99 %.
LEARNT_NOTHING = 0.9
LAST_STEPS = 20  # steps the final loss ratio averages over
LR_FLOOR = 0.1   # the cosine decays to this share of the peak learning rate, not to zero


def build_unet(embed_dim: int, channels: list[int] | tuple[int, ...], image_size: int, patch_size: int = 2,
               time_conditioning: bool = True, attention_levels: int = 0,
               scale_shift: bool = False) -> UNet2DConditionModel:
    """A small conditional UNet: one block per entry of ``channels`` (the
    first at full resolution without attention, the lower ones with
    self-attention + one-token cross-attention), one ResNet layer per block.

    ``time_conditioning`` also adds a learned projection of the embedding to
    the timestep embedding, which every ResNet layer sees (scale and shift of
    its features); with a single token, cross-attention alone reduces to a
    per-layer constant bias, a weak handle on the image. ``scale_shift``: the
    timestep + condition embedding scales and shifts each ResNet layer's
    normalised features (FiLM, as in ADM) instead of only adding a bias.
    """
    channels = [int(c) for c in channels]
    if len(channels) < 2:
        raise ValueError(f"channels needs at least 2 entries (one per resolution), got {channels}")
    if any(c % GROUP_NORM_GROUPS for c in channels):
        raise ValueError(f"every entry of channels must be a multiple of {GROUP_NORM_GROUPS}, got {channels}")
    if image_size % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
    size = image_size // patch_size
    if size % 2 ** (len(channels) - 1):
        raise ValueError(f"{len(channels)} resolutions need the UNet input side ({size} = image_size / "
                         f"patch_size) divisible by {2 ** (len(channels) - 1)}")
    attn = [i >= len(channels) - attention_levels for i in range(len(channels))]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=embed_dim) \
        if time_conditioning else {}
    return UNet2DConditionModel(
        sample_size=size, in_channels=3 * patch_size ** 2, out_channels=3 * patch_size ** 2,
        block_out_channels=tuple(channels), layers_per_block=1, down_block_types=down, up_block_types=up,
        cross_attention_dim=embed_dim, norm_num_groups=GROUP_NORM_GROUPS,
        resnet_time_scale_shift="scale_shift" if scale_shift else "default",
        # diffusers quirk: this argument is the number of heads per block, not their width
        attention_head_dim=tuple(max(1, c // HEAD_DIM) for c in channels),
        **extra)


def _min_snr_weights(noise_scheduler: DDPMScheduler, prediction_type: str, gamma: float | None):
    """Per-timestep loss weights min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v),
    from diffusers' ``compute_snr``.

    Min-SNR weighting (Hang et al. 2023): the nearly clean timesteps get
    little weight. Here that matters doubly: world images carry their own
    pixel noise, which at small t cannot be told from diffusion noise, so
    those timesteps add irreducible loss and gradient noise, while shape,
    colour and context are decided at mid and high noise.
    """
    if gamma is None:
        return lambda t: torch.ones_like(t, dtype=torch.float32)
    if gamma <= 0:
        raise ValueError(f"snr_gamma must be > 0 (or None to disable the weighting), got {gamma}")

    def weights(t: torch.Tensor) -> torch.Tensor:
        snr = compute_snr(noise_scheduler, t)
        clipped = snr.clamp(max=gamma)
        return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)
    return weights


def train_decoder(images_uint8: np.ndarray, image_embeds: np.ndarray, text_embeds_for_bridge: np.ndarray,
                  out_dir: str | Path, *, space: str, channels=(32, 64, 64), steps: int = 1800,
                  batch_size: int = 64, lr: float = 1e-3, cond_dropout: float = 0.1,
                  train_timesteps: int = 1000, seed: int = 0, device: str = "auto", patch_size: int = 2,
                  time_conditioning: bool = True, ema_decay: float = 0.999, warmup: int = 100,
                  prediction_type: str = "epsilon", beta_schedule: str = "squaredcos_cap_v2", attention_levels: int = 0,
                  snr_gamma: float | None = 5.0, text_cond_prob: float = 0.0, mixed_precision: bool | str = False,
                  cond_scale: float = 1.0, scale_shift: bool = False,
                  log_every: int = 50, snapshot_every: int = 0, on_snapshot=None,
                  checkpoint_path: str | Path | None = None, checkpoint_every: int = 500,
                  stop_at: int | None = None, decay_steps: int | None = None) -> dict:
    """Train the world decoder on (image, image embedding) pairs; save it to ``out_dir``.

    ``text_embeds_for_bridge``: caption embeddings of the same space (e.g. the
    corpus captions) from which, with ``image_embeds``, the modality bridge is
    fitted and stored in the pipeline config. When they are the captions *of
    these images* (one per image, same order), ``text_cond_prob`` > 0 also
    trains on them: with that probability an image's condition is its
    caption's bridged embedding instead of its image embedding. The decoder
    then learns p(image | caption) as well, and a caption that leaves
    attributes open ("a photo of a star") is drawn with varied colours and
    contexts instead of as the blend of all of them that its embedding, a
    centroid of many images, would otherwise decode to.
    ``space``: the embedder's space string, stored so that a decoder is never
    fed another space's vectors.
    ``on_snapshot(step, pipeline)``, when given, is called every
    ``snapshot_every`` steps with a decoder holding the current averaged
    weights (to log sample grids or learning curves while training).
    ``checkpoint_path``: every ``checkpoint_every`` steps the whole training
    state (weights, average, optimiser, schedule, random generator, history)
    is saved there atomically, and a run that finds one resumes from it: an
    interrupted run loses at most ``checkpoint_every`` steps. ``stop_at``:
    pause after that many steps (checkpoint saved, the decoder so far written,
    ``steps_done`` says where); the learning-rate schedule stays the one of
    ``decay_steps``, so a later run resumes it unchanged. ``decay_steps`` (default
    ``steps``): the cosine decays over that many steps and the learning rate
    stays at its floor after them, so a finished run's checkpoint can be
    extended: the same ``decay_steps``, more ``steps``.
    Returns metrics (final loss, wall time, parameter count, loss history).
    Same inputs and seed give the same weights (on the same device).
    """
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3 or images_uint8.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images_uint8.dtype} {images_uint8.shape}")
    n, h, w, _ = images_uint8.shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    image_embeds = np.asarray(image_embeds)
    if image_embeds.ndim != 2 or len(image_embeds) != n:
        raise ValueError(f"image_embeds must be (N={n}, D), got {image_embeds.shape}")
    image_embeds = normalize(image_embeds, "image_embeds")
    bridge = ModalityBridge.fit(image_embeds, text_embeds_for_bridge)
    if not 0.0 <= cond_dropout < 1.0:
        raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
    if not 0.0 <= text_cond_prob <= 1.0:
        raise ValueError(f"text_cond_prob must be in [0, 1], got {text_cond_prob}")
    if text_cond_prob > 0 and len(text_embeds_for_bridge) != n:
        raise ValueError(f"text_cond_prob > 0 trains on each image's caption, so text_embeds_for_bridge must hold "
                         f"one caption embedding per image ({n}), got {len(text_embeds_for_bridge)}")
    horizon = steps if decay_steps is None else int(decay_steps)  # what the learning-rate schedule decays over
    if horizon < 1:
        raise ValueError(f"decay_steps must be >= 1 (or None: steps), got {decay_steps}")
    if steps < 1 or batch_size < 1 or lr <= 0 or train_timesteps < 2 or warmup < 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0, train_timesteps >= 2, warmup >= 0; got "
                         f"{steps}, {batch_size}, {lr}, {train_timesteps}, {warmup}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0 disables the average), got {ema_decay}")
    if not cond_scale > 0:
        raise ValueError(f"cond_scale must be > 0, got {cond_scale}")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got '{prediction_type}'")
    dev = torch.device(resolve_device(device))
    mixed_precision = resolve_mixed_precision(mixed_precision, dev.type)
    start_time = time.perf_counter()

    torch.manual_seed(seed)  # weight initialisation
    dim = image_embeds.shape[1]
    unet = build_unet(dim, channels, h, patch_size, time_conditioning, attention_levels,
                      scale_shift).to(dev).train()
    unet = unet.to(memory_format=torch.channels_last)  # faster convolutions on CPU (oneDNN), same results
    noise_scheduler = DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule=beta_schedule,
                                    prediction_type=prediction_type, clip_sample=True)
    weights_of = _min_snr_weights(noise_scheduler, prediction_type, snr_gamma)
    # diffusers' average: its decay warms up as min(ema_decay, (1 + k) / (10 + k)) over step k
    ema = EMAModel(unet.parameters(), decay=ema_decay) if ema_decay > 0 else None

    images = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).contiguous().to(dev)  # uint8, 4x less than float
    conds = torch.from_numpy(image_embeds).to(dev)
    caption_conds = torch.from_numpy(bridge(text_embeds_for_bridge)).to(dev) if text_cond_prob > 0 else None
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    schedule = lr_schedule(optimizer, steps=horizon, warmup=warmup, decay="cosine", floor=LR_FLOOR)
    generator = torch.Generator().manual_seed(seed)  # batches, timesteps, noise, condition dropout

    def pipeline(model: UNet2DConditionModel) -> EmbeddingDecoderPipeline:
        """A decoder with the averaged weights (the raw ones without averaging)."""
        if ema is not None:
            ema.copy_to(model.parameters())
        sampler = DDIMScheduler.from_config(noise_scheduler.config, steps_offset=1)
        return EmbeddingDecoderPipeline(unet=model.eval().cpu(), scheduler=sampler, space=space,
                                        patch_size=patch_size, mean_image=bridge.mean_image.tolist(),
                                        mean_text=bridge.mean_text.tolist(), cond_scale=cond_scale)

    history, running, first, elapsed_before = [], None, 0, 0.0
    # what fixes the network's shape and objective: a checkpoint of another design is refused by name
    design = dict(channels=[int(c) for c in channels], image_size=h, patch_size=patch_size, embed_dim=dim,
                  time_conditioning=time_conditioning, attention_levels=attention_levels, scale_shift=scale_shift,
                  prediction_type=prediction_type, beta_schedule=beta_schedule, train_timesteps=train_timesteps)
    recent = collections.deque(maxlen=LAST_STEPS)       # (loss, loss of predicting zero) of the last steps
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = torch.load(checkpoint_path, map_location=dev, weights_only=False)
        decayed_over = state.get("decay_steps", state["steps"])  # checkpoints before decay_steps: their steps
        if decayed_over != horizon:
            raise ValueError(f"checkpoint {checkpoint_path} is of a run whose learning rate decays over "
                             f"{decayed_over} steps, this one's over {horizon}: to "
                             f"extend a finished run keep its decay_steps and raise steps; else delete it to "
                             f"start afresh")
        if state["step"] > steps:
            raise ValueError(f"checkpoint {checkpoint_path} is at step {state['step']}, past this run's {steps} "
                             f"steps: raise steps or delete it to start afresh")
        changed = {k: (v, design.get(k)) for k, v in state.get("design", {}).items() if design.get(k) != v}
        if changed:
            raise ValueError(f"checkpoint {checkpoint_path} is of another network design: " + ", ".join(
                f"{k} {old} there, {new} here" for k, (old, new) in changed.items()) + ": delete it to start afresh")
        if state.get("space", space) != space:
            raise ValueError(f"checkpoint {checkpoint_path} was trained on embeddings of space {state['space']!r}, "
                             f"this run's are {space!r} (the CLIP changed): delete it to start afresh")
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history, running, first = state["history"], state["running"], state["step"]
        elapsed_before = state["elapsed"]
        recent.extend(state["recent"])
        print(f"resuming decoder training at step {first} of {steps} from {checkpoint_path}", flush=True)

    def save_checkpoint(step: int) -> None:
        save_torch(dict(step=step, steps=steps, decay_steps=horizon, space=space, design=design, unet=unet.state_dict(),
                        optimizer=optimizer.state_dict(), schedule=schedule.state_dict(),
                        generator=generator.get_state(), ema=ema.state_dict() if ema is not None else None,
                        history=history, running=running, recent=list(recent),
                        elapsed=elapsed_before + time.perf_counter() - start_time), checkpoint_path)

    last = steps if stop_at is None else max(first, min(steps, int(stop_at)))
    bar = tqdm(range(first, last), desc="pretrain decoder", unit="step", mininterval=2,
               initial=first, total=steps)
    for step in bar:
        idx = torch.randint(0, n, (batch_size,), generator=generator).to(dev)
        x0 = images[idx].float().div_(127.5).sub_(1.0)
        if patch_size > 1:
            x0 = F.pixel_unshuffle(x0, patch_size)
        cond = conds[idx]
        if caption_conds is not None:
            use_caption = (torch.rand(batch_size, generator=generator) < text_cond_prob).to(dev)
            cond = torch.where(use_caption[:, None], caption_conds[idx], cond)
        keep = (torch.rand(batch_size, generator=generator) >= cond_dropout).float().to(dev)
        cond = cond * keep[:, None] * cond_scale
        t = torch.randint(0, train_timesteps, (batch_size,), generator=generator).to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(x0, noise, t)
        kwargs = dict(class_labels=cond) if time_conditioning else {}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=mixed_precision):
            pred = unet(noisy.contiguous(memory_format=torch.channels_last), t,
                        encoder_hidden_states=cond[:, None, :], **kwargs).sample
        per_image = F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_image * weights_of(t)).mean()
        # the same loss for a network that predicts 0 everywhere: what "learnt nothing" scores
        zero_loss = (target.pow(2).mean(dim=(1, 2, 3)) * weights_of(t)).mean().item()

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if ema is not None:
            ema.step(unet.parameters())

        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        recent.append((value, zero_loss))
        if step % log_every == 0 or step == steps - 1:
            history.append(dict(step=step, loss=round(value, 5), lr=optimizer.param_groups[0]["lr"]))
            bar.set_postfix(loss=f"{running:.4f}")

        if checkpoint_path is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(step + 1)
        if on_snapshot is not None and snapshot_every > 0 and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            on_snapshot(step + 1, pipeline(copy.deepcopy(unet)))

    if checkpoint_path is not None:
        save_checkpoint(last)
    pipe = pipeline(unet)
    save_pipeline(pipe, out_dir)
    last_loss, last_zero = np.mean(recent, axis=0)
    loss_vs_zero = float(last_loss / last_zero)
    if loss_vs_zero > LEARNT_NOTHING:
        print(f"WARNING: the decoder learnt almost nothing: its loss over the last {len(recent)} steps, "
              f"{last_loss:.4f}, is {loss_vs_zero:.0%} of the {last_zero:.4f} of predicting zero. "
              f"Training diverged (lower decoder.train.lr) or was far too short (raise decoder.train.steps); "
              f"its images will be noise.", file=sys.stderr, flush=True)
    return dict(
        final_loss=round(running, 5), final_loss_vs_zero_prediction=round(loss_vs_zero, 4),
        steps=steps, decay_steps=horizon, steps_done=last, batch_size=batch_size, n_images=n,
        n_parameters=sum(p.numel() for p in unet.parameters()), image_size=h, patch_size=patch_size,
        embed_dim=dim, space=space, train_seconds=round(elapsed_before + time.perf_counter() - start_time, 2),
        device=str(dev), history=history,
    )


def save_pipeline(pipe: EmbeddingDecoderPipeline, out_dir: str | Path) -> Path:
    """save_pretrained into a sibling temporary folder, then swap it in: an
    interrupted save never leaves a half-written decoder behind."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        pipe.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir
