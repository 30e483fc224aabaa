"""One CLIP embedder interface over both flavours the pipeline can use.

- ``open_clip``: a built-in open_clip architecture with weights from a hub tag
  (``openai``, ``laion2b_s34b_b79k``; needs a network) or a local weights file.
- ``world``: the small CLIP that ``failmap.clip_train.train_clip`` trained on
  the embedded world's corpus; its folder holds the open_clip config JSON and
  ``weights.pt``, loaded through the very same ``open_clip.create_model`` path.

Every later stage (SVMs, captioning, decoding) only sees ``Embedder``: unit
vectors for images and texts, the dimension, and ``space``, a string naming
the embedding space so that a decoder trained on another space is refused.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from failmap.device import resolve_device
from failmap.io import file_digest

SOURCES = ("open_clip", "world", "corpus")  # world: shipped; corpus: trained in the pipeline
WORLD_CLIP_NAME = "world-clip"          # config file stem = open_clip model name
WORLD_CLIP_WEIGHTS = "weights.pt"     # what pretrain_clip writes (float32)
SHIPPED_CLIP_WEIGHTS = "weights.safetensors"  # what the foundation pipeline ships (float16)


class Embedder:
    """CLIP image and text embeddings as L2-normalised float32 numpy arrays.

    Images are preprocessed as whole batches of tensors (resize of the shorter
    side + centre crop to the model's input size, then the model's mean/std)
    instead of per-image PIL transforms: for the small images this project
    works with, PIL preprocessing would cost more than the model itself.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, space: str, dim: int,
                 device: torch.device, batch_size: int = 256, show_progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.space = space
        self.dim = int(dim)
        self.device = device
        self.batch_size = int(batch_size)
        self.show_progress = show_progress
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"]
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self._mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # fp16 autocast keeps layer norms and softmax in fp32: safe for inference;
        # on CPU fp16 is slow and brings nothing, so stay in fp32 there.
        self._autocast = device.type == "cuda"

    def __repr__(self) -> str:
        return f"Embedder(space={self.space!r}, dim={self.dim}, device={self.device})"

    @property
    def logit_scale(self) -> float:
        """The factor CLIP multiplies image-text cosines by before a softmax (its learned temperature)."""
        return float(self.model.logit_scale.detach().exp())

    def preprocess(self, images_uint8: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float (B, 3, S, S) on the device."""
        x = torch.from_numpy(np.ascontiguousarray(images_uint8)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return normalise_batch(x, self.image_size, self._mean, self._std)

    def embed_images(self, images_uint8: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, dim) float32, each row of unit norm."""
        images_uint8 = np.asarray(images_uint8)
        if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3 or images_uint8.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images_uint8.dtype} {images_uint8.shape}")
        bs = batch_size or self.batch_size
        out = np.empty((len(images_uint8), self.dim), dtype=np.float32)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self._autocast):
            for start in tqdm(range(0, len(images_uint8), bs), desc="embed images", unit="batch",
                              disable=not self.show_progress or len(images_uint8) <= bs):
                x = self.preprocess(images_uint8[start:start + bs])
                feats = self.model.encode_image(x).float()
                out[start:start + bs] = F.normalize(feats, dim=-1).cpu().numpy()
        return out

    def embed_texts(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """list of N strings -> (N, dim) float32, each row of unit norm."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of strings (wrap a single text in a list)")
        texts = list(texts)
        bs = batch_size or self.batch_size
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self._autocast):
            for start in tqdm(range(0, len(texts), bs), desc="embed texts", unit="batch",
                              disable=not self.show_progress or len(texts) <= bs):
                tokens = self.tokenizer(texts[start:start + bs]).to(self.device)
                feats = self.model.encode_text(tokens).float()
                out[start:start + bs] = F.normalize(feats, dim=-1).cpu().numpy()
        return out

    def embed_texts_per_row(self, texts) -> np.ndarray:
        """One embedding per entry of ``texts`` (N, dim), each distinct text
        embedded once: a captioned corpus repeats its captions many times."""
        unique, inverse = np.unique(np.asarray(texts), return_inverse=True)
        return self.embed_texts(unique.tolist())[inverse]


def embed_slice(embedder: "Embedder", item: tuple[str, int, int],
                image_sets: dict[str, np.ndarray]) -> tuple[str, int, np.ndarray]:
    """One engine item, (name, start, stop): (space, dim, embeddings) of
    ``image_sets[name][start:stop]``. The images are the task's data (sent to
    each worker once) and items only name their rows; the space comes with
    every batch so that the caller can check all workers agree."""
    name, start, stop = item
    return embedder.space, embedder.dim, embedder.embed_images(image_sets[name][start:stop])


def embed_image_sets(engine, load: Callable[[], "Embedder"], image_sets: dict[str, np.ndarray], batch_size: int,
                     embedder: "Embedder | None" = None) -> tuple[dict[str, np.ndarray], str, int]:
    """Embed every named image array through ``engine`` (failmap.engine) in one job.

    Each item is one batch of ``batch_size`` images cut at the same offsets as
    ``Embedder.embed_images`` cuts them, so any engine gives the same bytes as
    the in-process loop. ``load`` builds the embedder (once per worker);
    ``embedder``, when given, is the one the local engine uses as is.
    Returns ({name: (N, dim) float32}, space, dim)."""
    from failmap.engine import Task

    image_sets = {name: np.ascontiguousarray(images) for name, images in image_sets.items()}
    items = [(name, start, min(start + batch_size, len(images)))
             for name, images in image_sets.items() for start in range(0, len(images), batch_size)]
    results = engine.map(Task(load, embed_slice, data=image_sets), items, desc="embed", model=embedder)
    spaces = sorted({(space, dim) for space, dim, _ in results})
    if len(spaces) != 1:
        raise RuntimeError(f"the workers embedded in different spaces {spaces}: they loaded different models")
    (space, dim), = spaces
    out = {}
    for name in image_sets:
        parts = [emb for (owner, _, _), (_, _, emb) in zip(items, results) if owner == name]
        out[name] = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return out, space, dim


def normalise_batch(x: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [0, 1] -> model input: resize the shorter side to
    the model size (bicubic, antialiased, as CLIP's own transform), centre-crop,
    subtract mean, divide by std. Shared with training so both see the same input."""
    th, tw = size
    h, w = x.shape[-2:]
    if (h, w) != (th, tw):
        # sizes and crop offsets rounded as torchvision's Resize + CenterCrop do
        if th == tw:
            nh, nw = (th, int(th * w / h)) if h <= w else (int(tw * h / w), tw)
        else:
            scale = max(th / h, tw / w)
            nh, nw = max(th, int(h * scale)), max(tw, int(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
        top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
        x = x[..., top:top + th, left:left + tw]
    return (x - mean) / std


def load_embedder(source: str, arch: str | None = None, pretrained: str | None = None,
                  model_dir: str | Path | None = None, device: str = "auto",
                  batch_size: int = 256) -> Embedder:
    """Build the embedder the params ask for.

    source 'open_clip': ``arch`` is a built-in open_clip architecture,
    ``pretrained`` a hub tag or a weights file; ``model_dir`` is unused.
    source 'world' (the shipped foundation CLIP) or 'corpus' (trained by the
    pretrain_clip stage): ``model_dir`` is a world-CLIP folder (open_clip
    config + weights); ``arch`` and ``pretrained`` are unused.
    """
    dev = torch.device(resolve_device(device))
    if source == "open_clip":
        model, tokenizer, space, dim = _load_open_clip(arch, pretrained)
    elif source in ("world", "corpus"):
        if model_dir is None:
            raise ValueError(f"source '{source}' needs model_dir (the folder written by the pretrain_clip stage)")
        model, tokenizer, space, dim = _load_world_clip(Path(model_dir))
    else:
        raise ValueError(f"unknown embedder source '{source}': expected one of {SOURCES}")
    return Embedder(model, tokenizer, space=space, dim=dim, device=dev, batch_size=batch_size)


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))


def _load_open_clip(arch: str | None, pretrained: str | None):
    if not arch:
        raise ValueError("source 'open_clip' needs arch (an open_clip model name such as 'ViT-L-14')")
    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5)
        raise ValueError(f"unknown open_clip arch '{arch}'" + (f"; did you mean one of {close}?" if close else
                         f"; open_clip.list_models() lists {len(known)} names"))
    if not pretrained:
        raise ValueError(f"source 'open_clip' needs pretrained (a hub tag such as 'openai' or a weights file) "
                         f"for {arch}; random weights would give meaningless embeddings")
    pretrained = str(pretrained)
    if Path(pretrained).is_file():
        space = f"open_clip:{arch}:file-sha1:{file_digest(pretrained, 'sha1')[:12]}"
    elif _looks_like_path(pretrained):
        raise FileNotFoundError(f"open_clip weights file not found: {pretrained}")
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            raise ValueError(f"'{pretrained}' is neither a weights file nor a pretrained tag of {arch} "
                             f"(known tags: {tags})")
        space = f"open_clip:{arch}:{pretrained}"
    try:
        model = open_clip.create_model(arch, pretrained=pretrained)
    except Exception as e:  # open_clip raises RuntimeError after its download retries fail
        if Path(pretrained).is_file():
            raise RuntimeError(f"could not load open_clip weights file {pretrained} into {arch}: {e}") from e
        raise RuntimeError(f"could not load open_clip pretrained '{pretrained}' for {arch}: "
                           f"no network? pass a weights file path ({e})") from e
    dim = int(open_clip.get_model_config(arch)["embed_dim"])
    return model, open_clip.get_tokenizer(arch), space, dim


def world_clip_paths(model_dir: str | Path) -> tuple[Path, Path]:
    """(config JSON, weights file) inside a world-CLIP folder: the shipped
    safetensors file where there is one, else the trained ``weights.pt``."""
    model_dir = Path(model_dir)
    shipped = model_dir / SHIPPED_CLIP_WEIGHTS
    return model_dir / f"{WORLD_CLIP_NAME}.json", shipped if shipped.is_file() else model_dir / WORLD_CLIP_WEIGHTS


def register_config(config_path: Path) -> str:
    """Make open_clip know this config under its file stem; return the name.

    open_clip keeps one registry keyed by file stem and later registrations win,
    so registering right before ``create_model`` picks this folder's config even
    when another world-CLIP folder was registered earlier in the process."""
    open_clip.add_model_config(config_path)
    return config_path.stem


def _load_world_clip(model_dir: Path):
    config_path, weights_path = world_clip_paths(model_dir)
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"world CLIP file missing: {path} (run the pretrain_clip stage first)")
    name = register_config(config_path)
    model = open_clip.create_model(name, pretrained=str(weights_path))
    space = f"world-clip:{file_digest(weights_path, 'sha1')[:12]}"
    dim = int(open_clip.get_model_config(name)["embed_dim"])
    return model, open_clip.get_tokenizer(name), space, dim
