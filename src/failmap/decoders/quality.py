"""Does a decoder draw what a caption says? The decoder quality bars.

Images are decoded from caption embeddings (``decode_captions``: through the
modality bridge for the world decoder, text-to-image for unCLIP) and checked:

- class prompts ("a photo of a {class}"): recognised as that class by CLIP
  zero-shot and, when given, by a classifier (the baseline);
- colour prompts ("a photo of a {colour} {class}") and context prompts
  ("a photo of a {class} {context}"): CLIP zero-shot picks the named colour /
  context among all of them (and the class).

Shared by the pretrain_decoder stage and ``benchmarks/bench_decoder.py``; the
zero-shot scoring itself is ``failmap.evaluation.zero_shot_report``.
"""
from __future__ import annotations

import numpy as np

from failmap.captions import fill_caption
from failmap.evaluation import DEFAULT_TEMPLATE, Attribute, zero_shot_report
from failmap.train import predict_proba


def decode_prompts(decoder, embedder, prompts: list[str], **decode_kwargs) -> np.ndarray:
    """Images for each prompt, decoded from its caption embedding (or words)."""
    return decoder.decode_captions(list(prompts), embedder.embed_texts(list(prompts)), **decode_kwargs)


def decoder_report(decoder, embedder, class_names: list[str], colours: dict[str, str] | None = None,
                   contexts: dict[str, str] | None = None, classifier=None, *, n_per_class: int = 16,
                   n_per_value: int = 2, template: str = DEFAULT_TEMPLATE, device: str = "cpu",
                   **decode_kwargs) -> tuple[dict, dict[str, np.ndarray]]:
    """Quality figures and the decoded images they were computed on.

    colours / contexts: value -> the words naming it in a caption ("red" ->
    "red", "grass" -> "on the grass"). Colour and context prompts pair every
    value with every class, ``n_per_value`` images each. ``classifier``: a
    model with ``forward`` over images in [-1, 1] (``failmap.train``).
    Returns (report, images) with images under "class", "colour", "context"
    and the matching labels under "<name>_labels".
    """
    report, images = {}, {}
    labels = np.repeat(np.arange(len(class_names)), n_per_class)
    prompts = [fill_caption(template, class_names[k]) for k in labels]
    images["class"] = decode_prompts(decoder, embedder, prompts, **decode_kwargs)
    images["class_labels"] = labels
    zs = zero_shot_report(embedder, images["class"], labels, class_names, template=template)
    report["class_prompt"] = dict(clip_class_accuracy=zs["class_accuracy"],
                                  clip_class_accuracy_per_class=zs["class_accuracy_per_class"], n=len(labels))
    if classifier is not None:
        pred = predict_proba(classifier, images["class"], device).argmax(1)
        report["class_prompt"]["classifier_accuracy"] = float((pred == labels).mean())
        report["class_prompt"]["classifier_accuracy_per_class"] = {
            c: float((pred[labels == k] == k).mean()) for k, c in enumerate(class_names)}
    for name, phrases, slot in (("colour", colours, "adjective"), ("context", contexts, "context")):
        if not phrases:
            continue
        values = list(phrases)
        pairs = [(k, v) for v in values for k in range(len(class_names)) for _ in range(n_per_value)]
        prompts = [fill_caption(template, class_names[k], **{slot: phrases[v]}) for k, v in pairs]
        decoded = decode_prompts(decoder, embedder, prompts, **decode_kwargs)
        cls = np.array([k for k, _ in pairs])
        attribute = Attribute(values=np.array([v for _, v in pairs]), phrases=phrases, slot=slot)
        zs = zero_shot_report(embedder, decoded, cls, class_names, {name: attribute}, template=template)
        report[f"{name}_prompt"] = {f"clip_{name}_accuracy": zs[f"{name}_accuracy"],
                                    "clip_class_accuracy": zs["class_accuracy"], "n": len(pairs)}
        images[name], images[f"{name}_labels"] = decoded, np.array([values.index(v) for _, v in pairs])
    return report, images
