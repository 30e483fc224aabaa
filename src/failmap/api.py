"""failmap as a library: find, caption and decode failure directions from arrays.

The pipeline (``dvc repro``) runs these steps on files; here they take numpy
arrays and the models themselves, and write nothing:

1. ``find_failure_directions``: per class, a linear SVM on validation CLIP
   embeddings separating the classifier's correct from its wrong predictions
   (``failmap.svm``), plus what decoding needs (each class's reference
   embedding from the train split and how far its validation images reach
   along its direction, ``failmap.conditions``);
2. ``caption_directions``: the captions of a bank that name each SVM's
   hard and easy side, from any text-embedding function of the same CLIP
   space (``failmap.captions``);
3. ``decode_directions``: images of each class walked towards the hard side
   of its direction by a loaded decoder (``failmap.generate``, e.g.
   ``failmap.decoders.loader.load_decoder``).

Settings left out (None) take their value from the repository's params.yaml
(sections ``svm``, ``caption``, ``generate``): the defaults live there only.
Importing this module loads numpy alone; each function imports what it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

EmbedTexts = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class FailureDirections:
    """What ``find_failure_directions`` found: ``svms[k]`` a ``failmap.svm.ClassSVM``
    (or a ``Skip`` saying why class k has none), the train-split ``preprocessor``
    they were fitted after, each class's ``references`` (unit mean train image
    embedding, (n_classes, D)), ``extents`` (``conditions.direction_extents``
    on the validation embeddings), ``tails`` (``conditions.tail_images``:
    each class's hardest and easiest validation embeddings) and the validation
    embeddings and labels themselves (what retrieval captioning reads)."""
    class_names: list[str]
    preprocessor: object
    svms: dict
    references: np.ndarray
    extents: dict[int, tuple[float, float]]
    tails: dict[int, tuple[np.ndarray, np.ndarray]]
    val_embeds: np.ndarray
    val_labels: np.ndarray

    def fitted(self) -> list[str]:
        """The classes that got a direction."""
        from failmap.svm import ClassSVM
        return [c for k, c in enumerate(self.class_names) if isinstance(self.svms[k], ClassSVM)]


def default_settings(section: str):
    """The ``section`` of the repository's params.yaml (validated), where every default lives."""
    from failmap.params import load_params
    from failmap.shipped import repo_root
    path = repo_root() / "params.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: failmap.api takes its defaults from the repository's "
                                f"params.yaml; pass every {section} setting explicitly instead")
    return getattr(load_params(path), section)


def _settings(section: str, **given):
    """``given`` with each None replaced by the params.yaml default of ``section``."""
    missing = [k for k, v in given.items() if v is None]
    defaults = default_settings(section) if missing else None
    return {k: getattr(defaults, k) if v is None else v for k, v in given.items()}


def find_failure_directions(train_embeds: np.ndarray, train_labels: np.ndarray, val_embeds: np.ndarray,
                            val_labels: np.ndarray, val_predictions: np.ndarray, class_names: Sequence[str], *,
                            seed: int = 0, c_grid: Sequence[float] | None = None, folds: int | None = None,
                            max_iter: int | None = None, min_errors: int | None = None,
                            progress: bool = False) -> FailureDirections:
    """Per class, the SVM direction of the classifier's validation errors.

    ``*_embeds``: (N, D) CLIP image embeddings; ``*_labels``: true classes
    (indices into ``class_names``); ``val_predictions``: the classifier's
    predicted classes on the validation images. Train embeddings set the
    preprocessing (centring, scaling) and the class references; the SVMs are
    fitted on validation. ``c_grid``, ``folds``, ``max_iter``, ``min_errors``:
    params.yaml ``svm`` when None.
    """
    from failmap.conditions import class_reference_embeddings, direction_extents, tail_images
    from failmap.svm import fit_all

    s = _settings("svm", c_grid=c_grid, folds=folds, max_iter=max_iter, min_errors=min_errors)
    val_labels, val_predictions = np.asarray(val_labels), np.asarray(val_predictions)
    if val_predictions.shape != val_labels.shape:
        raise ValueError(f"val_predictions must have the shape of val_labels {val_labels.shape}, "
                         f"got {val_predictions.shape}")
    correct = (val_predictions == val_labels).astype(np.int64)
    class_names = [str(c) for c in class_names]
    preprocessor, svms = fit_all(val_embeds, val_labels, correct, train_embeds, class_names, s["c_grid"],
                                 s["folds"], seed, s["max_iter"], s["min_errors"], progress=progress)
    references = class_reference_embeddings(train_embeds, train_labels, len(class_names))
    extents = direction_extents(svms, references, val_embeds, val_labels)
    return FailureDirections(class_names, preprocessor, svms, references, extents,
                             tail_images(svms, val_embeds, val_labels), np.asarray(val_embeds), val_labels)


def caption_directions(found: FailureDirections, embed_texts: EmbedTexts, *,
                       adjectives: Sequence[str] | None = None, contexts: Sequence[str] | None = None,
                       bank: Mapping[str, Sequence[str]] | None = None, template: str | None = None,
                       top_k: int | None = None, score: str | None = None,
                       logit_scale: float = 100.0) -> dict[str, dict[str, list[dict]]]:
    """Per class with a direction: its ``top_k`` hardest and easiest captions
    ({"hard": [{"caption", "score"}, ...], "easy": [...]}, hardest first).

    The bank of a class: ``bank[class]`` when given, else every caption
    ``template`` makes of the class name with the ``adjectives`` and
    ``contexts`` (``failmap.captions.caption_bank``). ``embed_texts`` must
    embed into the space the directions were found in. ``score``: how a
    caption is scored (``caption.score``): 'retrieval', CLIP's zero-shot
    reading of the class's validation images at temperature ``logit_scale``
    (your CLIP's ``logit_scale.exp()``; ``failmap.embedder.Embedder.logit_scale``),
    or 'direction', the SVM on the caption's text shift. ``template``,
    ``top_k``, ``score``: params.yaml ``caption`` when None.
    """
    from failmap.captions import CAPTION_SCORES, caption_bank, caption_scorer, reference_caption, top_captions

    s = _settings("caption", template=template, top_k=top_k, score=score)
    if s["score"] not in CAPTION_SCORES:
        raise ValueError(f"score must be one of {CAPTION_SCORES}, got {s['score']!r}")
    out = {}
    for k, name in enumerate(found.class_names):
        if name not in found.fitted():
            continue
        captions = list(bank[name]) if bank is not None else caption_bank(s["template"], name, adjectives, contexts)
        retrieval = (found.val_embeds[found.val_labels == k], logit_scale) if s["score"] == "retrieval" else None
        scores = caption_scorer(captions, embed_texts, reference_caption(s["template"], name), found.preprocessor,
                                found.svms[k], retrieval)(captions)
        out[name] = top_captions(captions, scores, s["top_k"])
    return out


def decode_directions(found: FailureDirections, decoder, *, n_per_class: int = 8, alpha: float | None = None,
                      walk: str | None = None, seed: int = 0, **sampling):
    """Images of every class with a direction, each started at the class
    reference and walked ``alpha`` of the way towards the hard side of its
    direction (``walk`` 'extent': as far as the class's own validation images
    reach; 'images': towards those hardest validation images themselves;
    'normal': towards the SVM's unit normal). Returns a
    ``failmap.generated.GeneratedSet`` (``images``, ``labels``, one manifest
    row per image with its seed). ``sampling``: the decoder's keyword
    arguments (``guidance_scale``, ``num_inference_steps``, ...).
    ``alpha``, ``walk``: params.yaml ``generate`` when None.
    """
    from failmap.generate import generate_direction

    s = _settings("generate", alpha=alpha, walk=walk)
    if s["walk"] not in ("extent", "images", "normal"):
        raise ValueError(f"walk must be 'extent', 'images' or 'normal', got {s['walk']!r}")
    extents = {"extent": found.extents, "images": found.tails, "normal": None}[s["walk"]]
    return generate_direction(decoder, found.class_names, found.references, found.svms, s["alpha"], n_per_class,
                              seed, extents, **sampling)
