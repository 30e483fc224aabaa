"""The modality bridge: CLIP text embeddings -> the image-embedding cone.

CLIP's image and text embeddings of the same content are close in angle
relative to other content, but the two modalities sit in different cones of
the sphere: every text embedding is far from every image embedding. A decoder
trained on image embeddings has never seen a vector from the text cone, so a
caption's embedding must first be moved into the image cone.
``ModalityBridge`` does the simplest thing that works (Liang et al. 2022,
"Mind the Gap"): subtract the mean text embedding, add the mean image
embedding, renormalise. It keeps the caption's *direction* relative to the
centre of its modality (what distinguishes "a red star" from "a blue circle")
and is fitted from any set of image embeddings and caption embeddings (the
corpus pairs for the world decoder; no pairing is needed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from failmap.decoders.sphere import normalize


@dataclass(frozen=True)
class ModalityBridge:
    """Move text embeddings into the image-embedding cone (see the module docstring)."""
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


# a text condition's own sampling setting (None or absent: the image conditions') -> the setting it replaces
TEXT_SETTINGS = {"text_guidance_scale": "guidance_scale", "text_num_inference_steps": "num_inference_steps",
                 "text_sampler": "sampler"}


def sampling_for(kind: str, settings: dict) -> dict:
    """A decoder's sampling keyword arguments for conditions of ``kind``:
    "image" (image embeddings and points between them and a direction) or
    "text" (caption embeddings through the bridge, or the words themselves).
    Text conditions take ``text_guidance_scale``, ``text_num_inference_steps``
    and ``text_sampler`` where given (absent or None: the image conditions'):
    measured on the world decoder, prompts want a stronger push than image
    embeddings, which over-saturate under it (benchmarks/foundation_models.md),
    and more steps than image embeddings need under DPM-Solver++
    (benchmarks/decoder_sampling.json)."""
    if kind not in ("image", "text"):
        raise ValueError(f"condition kind must be 'image' or 'text', got {kind!r}")
    settings = dict(settings)
    own = {base: settings.pop(key, None) for key, base in TEXT_SETTINGS.items()}
    if kind == "text":
        settings.update({base: value for base, value in own.items() if value is not None})
    return settings
