"""The real-model decoder: pretrained Stable unCLIP for vectors, Stable
Diffusion for captions (both through diffusers ``from_pretrained``, from a hub
id or a local folder).

How a bare vector goes in: ``StableUnCLIPImg2ImgPipeline.__call__`` takes
``image_embeds`` *instead of* ``image`` (it refuses both or neither), so no
picture is needed; the prompt is left empty, one per vector, so that the
batch sizes of prompt and image embeddings agree. The pipeline still reads
its image encoder's dtype, so the encoder stays loaded although unused.

Scale: Stable unCLIP was trained on *unnormalised* CLIP image embeddings,
while failmap hands around unit vectors. The pipeline's
``image_normalizer`` holds the per-dimension mean and std of the training
embeddings, so E|x|^2 = |mean|^2 + |std|^2: each unit vector is rescaled to
that norm before decoding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, StableUnCLIPImg2ImgPipeline
from tqdm.auto import tqdm

from failmap.decoders.bridge import ModalityBridge, sampling_for
from failmap.decoders.images import to_uint8_images
from failmap.decoders.samplers import sampling_scheduler
from failmap.decoders.sphere import check_embeds

# The CLIP space each public Stable unCLIP checkpoint conditions on, named as
# failmap.embedder names open_clip spaces. Local folders and other ids must
# declare theirs (``space``), or only the dimension can be checked.
KNOWN_SPACES = {
    "stabilityai/stable-diffusion-2-1-unclip-small": "open_clip:ViT-L-14:openai",
    "stabilityai/stable-diffusion-2-1-unclip": "open_clip:ViT-H-14:laion2b_s32b_b79k",
}


class UnclipDecoder:
    """Stable unCLIP (vectors) + Stable Diffusion (captions), outputs resized to ``image_size``.

    fp16 on CUDA (what these checkpoints are published and run in), fp32 on CPU.
    The text-to-image pipeline is loaded on first use: stages that decode only
    vectors never pay for it.
    """

    def __init__(self, pipe: StableUnCLIPImg2ImgPipeline, *, text_model: str | Path | None = None,
                 image_size: int | None = None, space: str | None = None, bridge: ModalityBridge | None = None,
                 noise_level: int = 0):
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        self.text_model = None if text_model is None else str(text_model)
        self.image_size = image_size
        self.space = space
        self.bridge = bridge
        self.noise_level = int(noise_level)
        self._text_pipe: StableDiffusionPipeline | None = None
        mean, std = pipe.image_normalizer.mean.detach().float(), pipe.image_normalizer.std.detach().float()
        self.embedding_norm = float(torch.sqrt((mean ** 2).sum() + (std ** 2).sum()))

    @classmethod
    def from_pretrained(cls, model: str | Path, *, text_model: str | Path | None = None, device: str = "cpu",
                        image_size: int | None = None, space: str | None = None, **kwargs) -> "UnclipDecoder":
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(str(model), dtype=dtype).to(device)
        return cls(pipe, text_model=text_model, image_size=image_size,
                   space=space if space is not None else KNOWN_SPACES.get(str(model)), **kwargs)

    def __repr__(self) -> str:
        return f"UnclipDecoder(space={self.space!r}, dim={self.dim}, text_model={self.text_model!r})"

    @property
    def dim(self) -> int:
        return int(self.pipe.image_normalizer.config.embedding_dim)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    # ------------------------------------------------------------- vectors
    def decode_images(self, embeds: np.ndarray, *, guidance_scale: float = 3.0, num_inference_steps: int = 25,
                      seed: int = 0, batch_size: int = 8, show_progress: bool = True,
                      sampler: str | None = None, text_sampler: str | None = None,
                      text_num_inference_steps: int | None = None,
                      text_guidance_scale: float | None = None) -> np.ndarray:
        """(N, D) vectors (normalised, then rescaled to the encoder's typical norm) -> uint8 images,
        at ``guidance_scale`` with ``sampler`` (``failmap.decoders.samplers``; None: the pipeline's own
        scheduler); the ``text_*`` settings are the text conditions' (``bridge.sampling_for``)."""
        embeds = torch.from_numpy(check_embeds(embeds, self.dim)) * self.embedding_norm

        def draw(pipe, batch: slice, latents: torch.Tensor) -> torch.Tensor:
            chunk = embeds[batch].to(self.device, self.dtype)
            return pipe(image_embeds=chunk, prompt=[""] * len(chunk), num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, noise_level=self.noise_level, latents=latents,
                        generator=torch.Generator().manual_seed(seed + batch.start), output_type="pt").images
        return self._decode_batches(self.pipe, draw, len(embeds), seed=seed, batch_size=batch_size,
                                    desc="decode (unCLIP)", show_progress=show_progress, sampler=sampler)

    def to_image_space(self, text_embeds: np.ndarray) -> np.ndarray:
        if self.bridge is None:
            raise ValueError("UnclipDecoder has no modality bridge: fit one with "
                             "ModalityBridge.fit(image_embeds, text_embeds) on embeddings of the embedder's space "
                             "and pass it as bridge=")
        return self.bridge(check_embeds(text_embeds, self.dim, "text_embeds"))

    def decode_texts(self, text_embeds: np.ndarray, **kwargs) -> np.ndarray:
        return self.decode_images(self.to_image_space(text_embeds), **sampling_for("text", kwargs))

    # ------------------------------------------------------------- captions
    def text_pipe(self) -> StableDiffusionPipeline:
        if self._text_pipe is None:
            if self.text_model is None:
                raise ValueError("no text-to-image model given (decoder.text_model): captions cannot be decoded")
            pipe = StableDiffusionPipeline.from_pretrained(self.text_model, dtype=self.dtype)
            pipe.set_progress_bar_config(disable=True)
            self._text_pipe = pipe.to(self.device)
        return self._text_pipe

    def decode_captions(self, captions: list[str], text_embeds: np.ndarray | None = None, *,
                        guidance_scale: float = 3.0, num_inference_steps: int = 25, seed: int = 0,
                        batch_size: int = 8, show_progress: bool = True,
                        sampler: str | None = None, text_sampler: str | None = None,
                        text_num_inference_steps: int | None = None,
                        text_guidance_scale: float | None = None) -> np.ndarray:
        """Text-to-image from the words themselves (``text_embeds`` is not needed here), at the text
        conditions' settings where given (``text_*``, ``bridge.sampling_for``), else ``guidance_scale``,
        ``num_inference_steps`` and ``sampler``."""
        text = sampling_for("text", dict(guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                                         sampler=sampler, text_sampler=text_sampler,
                                         text_num_inference_steps=text_num_inference_steps,
                                         text_guidance_scale=text_guidance_scale))
        guidance_scale, num_inference_steps, sampler = (text[k] for k in ("guidance_scale", "num_inference_steps",
                                                                          "sampler"))
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise ValueError("captions must be a list of strings")
        if text_embeds is not None and len(text_embeds) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(text_embeds)} text embeddings")

        def draw(pipe, batch: slice, latents: torch.Tensor) -> torch.Tensor:
            return pipe(prompt=list(captions[batch]), num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, latents=latents, output_type="pt").images
        return self._decode_batches(self.text_pipe(), draw, len(captions), seed=seed, batch_size=batch_size,
                                    desc="decode (text-to-image)", show_progress=show_progress, sampler=sampler)

    def _decode_batches(self, pipe, draw, n: int, *, seed: int, batch_size: int, desc: str,
                        show_progress: bool, sampler: str | None = None) -> np.ndarray:
        """``draw(pipe, batch, latents)`` -> images in [0, 1] for each batch (a slice of the n
        inputs), from starting latents drawn once for all n; -> uint8 (n, S, S, 3). ``sampler``
        replaces the pipeline's scheduler (built from its config: the pipeline's own is kept
        for None)."""
        pipe.scheduler = sampling_scheduler(pipe.scheduler, sampler)
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        latents = self._initial_latents(n, pipe.unet.config.in_channels, side // pipe.vae_scale_factor, seed)
        out = []
        for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not show_progress):
            batch = slice(start, start + batch_size)
            images = draw(pipe, batch, latents[batch].to(self.device, self.dtype))
            out.append(to_uint8_images(images * 2 - 1, self.image_size))
        return np.concatenate(out) if out else np.zeros((0, side, side, 3), np.uint8)

    @staticmethod
    def _initial_latents(n: int, channels: int, side: int, seed: int) -> torch.Tensor:
        """All starting latents drawn at once on the CPU: image i depends on the seed, not on batching."""
        return torch.randn((n, channels, side, side), generator=torch.Generator().manual_seed(int(seed)))
