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

from failmap.decoder import ModalityBridge, check_embeds, to_uint8_images

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
                      seed: int = 0, batch_size: int = 8, show_progress: bool = True) -> np.ndarray:
        """(N, D) vectors (normalised, then rescaled to the encoder's typical norm) -> uint8 images."""
        embeds = torch.from_numpy(check_embeds(embeds, self.dim)) * self.embedding_norm
        pipe = self.pipe
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        latents = self._initial_latents(len(embeds), pipe.unet.config.in_channels, side // pipe.vae_scale_factor,
                                        seed)
        out = []
        for start in tqdm(range(0, len(embeds), batch_size), desc="decode (unCLIP)", unit="batch",
                          disable=not show_progress):
            chunk = embeds[start:start + batch_size].to(self.device, self.dtype)
            images = pipe(image_embeds=chunk, prompt=[""] * len(chunk), num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, noise_level=self.noise_level,
                          latents=latents[start:start + batch_size].to(self.device, self.dtype),
                          generator=torch.Generator().manual_seed(seed + start), output_type="pt").images
            out.append(to_uint8_images(images * 2 - 1, self.image_size))
        return np.concatenate(out) if out else np.zeros((0, side, side, 3), np.uint8)

    def to_image_space(self, text_embeds: np.ndarray) -> np.ndarray:
        if self.bridge is None:
            raise ValueError("UnclipDecoder has no modality bridge: fit one with "
                             "ModalityBridge.fit(image_embeds, text_embeds) on embeddings of the embedder's space "
                             "and pass it as bridge=")
        return self.bridge(check_embeds(text_embeds, self.dim, "text_embeds"))

    def decode_texts(self, text_embeds: np.ndarray, **kwargs) -> np.ndarray:
        return self.decode_images(self.to_image_space(text_embeds), **kwargs)

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
                        batch_size: int = 8, show_progress: bool = True) -> np.ndarray:
        """Text-to-image from the words themselves (``text_embeds`` is not needed here)."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise ValueError("captions must be a list of strings")
        if text_embeds is not None and len(text_embeds) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(text_embeds)} text embeddings")
        pipe = self.text_pipe()
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        latents = self._initial_latents(len(captions), pipe.unet.config.in_channels, side // pipe.vae_scale_factor,
                                        seed)
        out = []
        for start in tqdm(range(0, len(captions), batch_size), desc="decode (text-to-image)", unit="batch",
                          disable=not show_progress):
            chunk = list(captions[start:start + batch_size])
            images = pipe(prompt=chunk, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          latents=latents[start:start + batch_size].to(self.device, self.dtype),
                          output_type="pt").images
            out.append(to_uint8_images(images * 2 - 1, self.image_size))
        return np.concatenate(out) if out else np.zeros((0, side, side, 3), np.uint8)

    @staticmethod
    def _initial_latents(n: int, channels: int, side: int, seed: int) -> torch.Tensor:
        """All starting latents drawn at once on the CPU: image i depends on the seed, not on batching."""
        return torch.randn((n, channels, side, side), generator=torch.Generator().manual_seed(int(seed)))
