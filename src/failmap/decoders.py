"""The decoder the params ask for: ``load_decoder`` picks one of the two
implementations (``failmap.decoder.EmbeddingDecoderPipeline``, the world
decoder, or ``failmap.decoder_unclip.UnclipDecoder``). A module of its own
because ``decoder_unclip`` builds on ``failmap.decoder``: the chooser in
``decoder`` would make the two import each other."""
from __future__ import annotations

from pathlib import Path

import torch

from failmap.decoder import EmbeddingDecoderPipeline, ModalityBridge

SOURCES = ("world", "corpus", "unclip")  # world: shipped; corpus: trained in the pipeline


def load_decoder(source: str, model_dir_or_id: str | Path, text_model: str | Path | None = None,
                 device: str = "auto", image_size: int | None = None, space: str | None = None,
                 bridge: ModalityBridge | None = None):
    """The decoder the params ask for.

    source 'world': the ``EmbeddingDecoderPipeline`` folder the pretrain_decoder
    stage saved (``text_model`` unused). source 'unclip': a Stable unCLIP
    pipeline (hub id or local folder) for vectors and a Stable Diffusion
    text-to-image pipeline (``text_model``) for captions, outputs resized to
    ``image_size``; ``space`` declares its CLIP space when the model is not a
    known hub id; ``bridge`` (``ModalityBridge.fit`` on embeddings of the
    embedder's space) lets it decode text embeddings. The world decoder
    carries its own bridge, fitted on its training corpus.
    """
    from failmap.device import resolve_device
    dev = resolve_device(device)
    if source in ("world", "corpus"):
        if bridge is not None:
            raise ValueError("the world decoder carries the bridge it was trained with; do not pass bridge=")
        folder = Path(model_dir_or_id)
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"no saved world decoder in {folder} (model_index.json missing): "
                                    f"run the pretrain_decoder stage first")
        pipe = EmbeddingDecoderPipeline.from_pretrained(folder, dtype=torch.float32).to(dev)  # shipped: float16
        if image_size is not None and image_size != pipe.image_size:
            raise ValueError(f"the world decoder in {folder} draws {pipe.image_size}px images but "
                             f"{image_size}px were asked for; re-train it on the data's image size")
        return pipe
    if source == "unclip":
        from failmap.decoder_unclip import UnclipDecoder
        return UnclipDecoder.from_pretrained(model_dir_or_id, text_model=text_model, device=dev,
                                             image_size=image_size, space=space, bridge=bridge)
    raise ValueError(f"unknown decoder source '{source}': expected one of {SOURCES}")
