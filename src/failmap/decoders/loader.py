"""The decoder the params ask for: ``load_decoder`` picks one of the two
implementations (``failmap.decoders.world.EmbeddingDecoderPipeline``, the
world decoder, or ``failmap.decoders.unclip.UnclipDecoder``), imported only
when asked for (diffusers takes seconds to import); ``sampling_settings``
says how to call it and ``check_compatible`` refuses one of another
embedding space."""
from __future__ import annotations

from pathlib import Path

from failmap.decoders.bridge import ModalityBridge

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
        import torch

        from failmap.decoders.world import EmbeddingDecoderPipeline
        pipe = EmbeddingDecoderPipeline.from_pretrained(folder, dtype=torch.float32).to(dev)  # shipped: float16
        if image_size is not None and image_size != pipe.image_size:
            raise ValueError(f"the world decoder in {folder} draws {pipe.image_size}px images but "
                             f"{image_size}px were asked for; re-train it on the data's image size")
        return pipe
    if source == "unclip":
        from failmap.decoders.unclip import UnclipDecoder
        return UnclipDecoder.from_pretrained(model_dir_or_id, text_model=text_model, device=dev,
                                             image_size=image_size, space=space, bridge=bridge)
    raise ValueError(f"unknown decoder source '{source}': expected one of {SOURCES}")


def sampling_settings(decoder_params) -> dict:
    """The sampling keyword arguments of the ``decoder`` params section, for
    every stage that decodes (``mixed_precision`` only for the world decoder:
    an unCLIP pipeline runs in the dtype it was loaded with)."""
    d = decoder_params
    settings = dict(sampler=d.sampler, num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale,
                    text_sampler=d.text_sampler, text_num_inference_steps=d.text_num_inference_steps,
                    text_guidance_scale=d.text_guidance_scale, batch_size=d.batch_size)
    if d.source != "unclip":
        from failmap.device import resolve_device, resolve_mixed_precision
        settings["mixed_precision"] = resolve_mixed_precision(d.mixed_precision, resolve_device(d.device))
    return settings


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
