"""Decoders: vectors of a CLIP embedding space -> images.

Every decoder the pipeline can use answers the same calls:

- ``decode_images(embeds)``: vectors of the *image*-embedding region of the
  space (image embeddings, or interpolations between them and an SVM
  direction, see ``slerp``) -> uint8 images (N, H, W, 3).
- ``decode_texts(text_embeds)``: CLIP *text* embeddings -> images, through
  ``to_image_space`` (the modality bridge below).
- ``decode_captions(captions, text_embeds)``: the caption arm; a decoder with
  a text-to-image model (unCLIP's Stable Diffusion) uses the words, the world
  decoder the embeddings.
- ``space`` and ``dim``: which embedding space it was trained on, so that
  ``check_compatible`` refuses a decoder from another space before any work.

Two implementations: ``EmbeddingDecoderPipeline`` (this module), the small
diffusion model the embedded world trains for itself (``failmap.decoder_train``),
and ``failmap.decoder_unclip.UnclipDecoder`` around pretrained Stable unCLIP,
which builds on the helpers here. ``failmap.decoders.load_decoder`` picks one
(it lives there, not here, so that this module does not import its own user).

The modality gap. CLIP's image and text embeddings of the same content are
close in angle relative to other content, but the two modalities sit in
different cones of the sphere: every text embedding is far from every image
embedding. A decoder trained on image embeddings has never seen a vector from
the text cone, so a caption's embedding must first be moved into the image
cone. ``ModalityBridge`` does the simplest thing that works (Liang et al.
2022, "Mind the Gap"): subtract the mean text embedding, add the mean image
embedding, renormalise. It keeps the caption's *direction* relative to the
centre of its modality (what distinguishes "a red star" from "a blue circle")
and is fitted from any set of image embeddings and caption embeddings (the
corpus pairs for the world decoder; no pairing is needed).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from tqdm.auto import tqdm


# ------------------------------------------------------------- sphere helpers
def normalize(x: np.ndarray, name: str = "embeds") -> np.ndarray:
    """Rows of a (N, D) or (D,) float array scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms < 1e-12):
        raise ValueError(f"{name} has an all-zero vector: it has no direction to normalise")
    return x / norms


def slerp(a: np.ndarray, b: np.ndarray, alpha) -> np.ndarray:
    """Spherical interpolation from ``a`` (alpha 0) to ``b`` (alpha 1).

    ``a`` and ``b`` are normalised first; shapes (D,) or (N, D) broadcast, and
    ``alpha`` is a scalar or one value per row. Moving along the great circle
    keeps every intermediate vector at unit norm, the norm the decoders were
    trained on (a straight line would cut through the sphere's inside). Used
    to walk from a class's reference embedding towards an SVM direction.
    """
    a, b = normalize(a, "a"), normalize(b, "b")
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.ndim == 1:
        alpha = alpha[:, None]
    cos = np.clip(np.sum(a * b, axis=-1, keepdims=True), -1.0, 1.0)
    if np.any(cos < -1.0 + 1e-6):
        raise ValueError("slerp between opposite vectors is undefined (every great circle joins them)")
    omega = np.arccos(cos)
    sin = np.sin(omega)
    # nearly parallel: the great-circle weights are 0/0; a straight line is exact enough there
    tiny = sin < 1e-6
    safe = np.where(tiny, 1.0, sin)
    wa = np.where(tiny, 1.0 - alpha, np.sin((1.0 - alpha) * omega) / safe)
    wb = np.where(tiny, alpha, np.sin(alpha * omega) / safe)
    return normalize(wa * a + wb * b, "slerp result")


def rotate_towards(a: np.ndarray, b: np.ndarray, angle) -> np.ndarray:
    """Unit ``a`` turned by ``angle`` radians along the great circle towards ``b``.

    Unlike ``slerp``, the distance travelled is given in radians, not as a
    share of the angle between ``a`` and ``b``: a direction far from every
    image embedding (an SVM normal) still takes ``a`` only as far as asked.
    ``a`` (N, D) or (D,), ``b`` (D,) or (N, D), ``angle`` a scalar or one per row."""
    a, b = normalize(a, "a"), normalize(b, "b")
    tangent = b - np.sum(a * b, axis=-1, keepdims=True) * a
    if np.any(np.linalg.norm(tangent, axis=-1) < 1e-6):
        raise ValueError("rotate_towards a parallel vector is undefined (no great circle is singled out)")
    tangent = normalize(tangent, "tangent")
    angle = np.asarray(angle, dtype=np.float32)
    if angle.ndim == 1:
        angle = angle[:, None]
    return normalize(np.cos(angle) * a + np.sin(angle) * tangent, "rotated")


def angles_towards(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) signed angle (radians) of each row of ``x`` along the great circle
    from ``a`` towards ``b``: positive on ``b``'s side of ``a``, measured in
    the plane of ``a`` and ``b`` (the other components of ``x`` ignored)."""
    x, a, b = normalize(x, "x"), normalize(a, "a"), normalize(b, "b")
    tangent = normalize(b - float(a @ b) * a, "tangent")
    return np.arctan2(x @ tangent, x @ a)


@dataclass(frozen=True)
class ModalityBridge:
    """Move text embeddings into the image-embedding cone (see module docstring)."""
    mean_image: np.ndarray  # (D,) mean of unit image embeddings
    mean_text: np.ndarray   # (D,) mean of unit text embeddings

    @classmethod
    def fit(cls, image_embeds: np.ndarray, text_embeds: np.ndarray) -> "ModalityBridge":
        image_embeds = normalize(image_embeds, "image_embeds")
        text_embeds = normalize(text_embeds, "text_embeds")
        if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[1] != text_embeds.shape[1]:
            raise ValueError(f"image_embeds {image_embeds.shape} and text_embeds {text_embeds.shape} must be "
                             f"(N, D) and (M, D) with the same D")
        return cls(image_embeds.mean(0), text_embeds.mean(0))

    @property
    def dim(self) -> int:
        return int(len(self.mean_image))

    def __call__(self, text_embeds: np.ndarray) -> np.ndarray:
        text_embeds = normalize(text_embeds, "text_embeds")
        if text_embeds.shape[-1] != self.dim:
            raise ValueError(f"text_embeds have dimension {text_embeds.shape[-1]}, the bridge {self.dim}")
        return normalize(text_embeds - self.mean_text + self.mean_image, "bridged text_embeds")


def check_embeds(embeds: np.ndarray, dim: int, name: str = "embeds") -> np.ndarray:
    """(N, dim) finite float array with no zero rows, returned unit-normalised."""
    embeds = np.asarray(embeds)
    if embeds.ndim != 2 or embeds.shape[1] != dim:
        raise ValueError(f"{name} must be (N, {dim}) vectors of the decoder's space, got shape {embeds.shape}")
    return normalize(embeds, name)


def to_uint8_images(x: torch.Tensor, image_size: int | None = None) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, S, S, 3), resized (antialiased) when S differs."""
    x = x.float().clamp(-1, 1)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True,
                          align_corners=False).clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ------------------------------------------------------------ world decoder
class EmbeddingDecoderPipeline(DiffusionPipeline):
    """Pixel-space diffusion decoder conditioned on one unit CLIP image embedding.

    The condition enters the UNet as a single cross-attention token
    (``cross_attention_dim`` = embedding dim) and, when the UNet has a
    ``projection`` class embedding, also added to its timestep embedding
    (the way Stable unCLIP conditions on image embeddings); the all-zero
    vector is the unconditional input of classifier-free guidance. With
    ``patch_size`` p > 1 the UNet works on space-to-depth images
    (``pixel_unshuffle``: (3, H, W) -> (3 p^2, H/p, W/p)): same pixels at a
    quarter of the spatial positions for p = 2, hence ~3x cheaper steps.

    Config (saved in ``model_index.json``): ``space`` (the embedding space the
    conditions came from), ``patch_size``, the modality bridge's
    ``mean_image`` / ``mean_text`` and ``cond_scale`` (unit conditions are
    multiplied by it before they enter the UNet; sqrt(D) gives them entries of
    unit variance like the network's other inputs).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDIMScheduler, space: str = "",
                 patch_size: int = 1, mean_image: list[float] | None = None,
                 mean_text: list[float] | None = None, cond_scale: float = 1.0):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(space=space, patch_size=int(patch_size), cond_scale=float(cond_scale),
                                mean_image=None if mean_image is None else [float(v) for v in mean_image],
                                mean_text=None if mean_text is None else [float(v) for v in mean_text])

    # -- what the rest of failmap asks a decoder
    @property
    def space(self) -> str:
        return self.config.space

    @property
    def dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size) * int(self.config.patch_size)

    @property
    def bridge(self) -> ModalityBridge | None:
        if self.config.mean_image is None or self.config.mean_text is None:
            return None
        return ModalityBridge(np.asarray(self.config.mean_image, np.float32),
                              np.asarray(self.config.mean_text, np.float32))

    def to_image_space(self, text_embeds: np.ndarray) -> np.ndarray:
        """Text embeddings -> vectors of the image cone this decoder was trained on."""
        if self.bridge is None:
            raise ValueError("this decoder was saved without a modality bridge (mean_image / mean_text); "
                             "re-train it with text embeddings for the bridge")
        return self.bridge(check_embeds(text_embeds, self.dim, "text_embeds"))

    def decode_images(self, embeds: np.ndarray, **kwargs) -> np.ndarray:
        return self(embeds, **kwargs)

    def decode_texts(self, text_embeds: np.ndarray, **kwargs) -> np.ndarray:
        return self(self.to_image_space(text_embeds), **kwargs)

    def decode_captions(self, captions: list[str], text_embeds: np.ndarray, **kwargs) -> np.ndarray:
        """The world decoder has no text model: it decodes the captions' embeddings."""
        if len(captions) != len(text_embeds):
            raise ValueError(f"{len(captions)} captions but {len(text_embeds)} text embeddings")
        return self.decode_texts(text_embeds, **kwargs)

    # -- sampling
    def _condition_kwargs(self, cond: torch.Tensor) -> dict:
        """The UNet's inputs for unit conditions ``cond`` (zero rows: unconditional), scaled by
        ``cond_scale`` (the factor the decoder was trained with)."""
        cond = cond * float(self.config.get("cond_scale", 1.0))
        kwargs = dict(encoder_hidden_states=cond[:, None, :])
        if self.unet.config.class_embed_type == "projection":
            kwargs["class_labels"] = cond
        return kwargs

    @torch.no_grad()
    def __call__(self, embeds: np.ndarray, guidance_scale: float = 3.0, num_inference_steps: int = 25,
                 generator: torch.Generator | None = None, seed: int = 0, batch_size: int = 64,
                 show_progress: bool = True, mixed_precision: bool = False) -> np.ndarray:
        """Decode (N, D) vectors (normalised here) -> uint8 images (N, H, W, 3).

        DDIM (eta 0) from Gaussian noise drawn on the CPU for all N images up
        front, from ``generator`` or else from ``seed``: image i depends only
        on its vector and the seed, not on ``batch_size`` or the device.
        ``guidance_scale`` w: eps = eps(0) + w (eps(c) - eps(0)); 1 disables it.
        ``mixed_precision``: the UNet runs under bfloat16 autocast (as it was
        trained with ``decoder.train.mixed_precision``); the DDIM update stays
        float32. About 2x faster on this CPU; images differ from float32 ones
        by ~3/255 on average (same seed).
        """
        cond_all = torch.from_numpy(check_embeds(embeds, self.dim))
        if num_inference_steps < 1 or batch_size < 1:
            raise ValueError(f"num_inference_steps and batch_size must be >= 1, "
                             f"got {num_inference_steps} and {batch_size}")
        p = int(self.config.patch_size)
        size = int(self.unet.config.sample_size)
        channels = int(self.unet.config.in_channels)
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        noise_all = torch.randn((len(cond_all), channels, size, size), generator=generator)
        device, dtype = self.unet.device, self.unet.dtype
        guided = guidance_scale != 1.0
        precision = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if mixed_precision
                     else contextlib.nullcontext())
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        out = []
        starts = range(0, len(cond_all), batch_size)
        for start in tqdm(starts, desc="decode", unit="batch", disable=not show_progress or len(starts) < 2):
            cond = cond_all[start:start + batch_size].to(device, dtype)
            x = noise_all[start:start + batch_size].to(device, dtype) * self.scheduler.init_noise_sigma
            if guided:
                cond = torch.cat([torch.zeros_like(cond), cond])
            for t in self.scheduler.timesteps:
                model_in = torch.cat([x, x]) if guided else x
                model_in = self.scheduler.scale_model_input(model_in, t)
                with precision:
                    pred = self.unet(model_in, t, **self._condition_kwargs(cond)).sample.to(x.dtype)
                if guided:
                    uncond, conditional = pred.chunk(2)
                    pred = uncond + guidance_scale * (conditional - uncond)
                x = self.scheduler.step(pred, t, x).prev_sample
            if p > 1:
                x = F.pixel_shuffle(x, p)
            out.append(to_uint8_images(x))
        return np.concatenate(out) if out else np.zeros((0, size * p, size * p, 3), np.uint8)


def sampling_settings(decoder_params) -> dict:
    """The sampling keyword arguments of the ``decoder`` params section, for
    every stage that decodes (``mixed_precision`` only for the world decoder:
    an unCLIP pipeline runs in the dtype it was loaded with)."""
    d = decoder_params
    settings = dict(guidance_scale=d.guidance_scale, num_inference_steps=d.num_inference_steps,
                    batch_size=d.batch_size)
    if d.source != "unclip":
        from failmap.device import resolve_device, resolve_mixed_precision
        settings["mixed_precision"] = resolve_mixed_precision(d.mixed_precision, resolve_device(d.device))
    return settings


# --------------------------------------------------------------- compatibility
def check_compatible(embedder_space: str, embedder_dim: int, decoder) -> None:
    """Refuse a decoder whose embedding space differs from the embedder's.

    Called by every stage that decodes, before any work: a decoder fed vectors
    of another space would run without complaint and draw nonsense.
    A decoder whose ``space`` is None (an unCLIP model not in the table of
    known ones) can only be checked for its dimension.
    """
    hint = ("change clip.* (clip.source, clip.arch / clip.pretrained, or clip.train.embed_dim for the world "
            "CLIP) or decoder.* (decoder.source, decoder.model) so that both name the same space; a world "
            "decoder must be re-trained (pretrain_decoder stage) after its CLIP changes")
    if int(decoder.dim) != int(embedder_dim):
        raise ValueError(f"embedding dimension mismatch: the embedder ({embedder_space}) gives {embedder_dim}-dim "
                         f"vectors but the decoder expects {decoder.dim}-dim vectors of space "
                         f"{decoder.space!r}; {hint}")
    if decoder.space is not None and decoder.space != embedder_space:
        raise ValueError(f"embedding space mismatch: the embedder's space is {embedder_space!r} but the decoder "
                         f"was trained on {decoder.space!r} (both {embedder_dim}-dim); {hint}")
