"""Synthetic images per class for the interventions (METHOD.md step 5).

Three training arms, each decoded per class:

- ``generic``: the reference caption "a photo of a {class}" only;
- ``caption``: the class's top hard captions, cycled, each blended with the
  class reference embedding (``generate.caption_weight``);
- ``direction``: the class reference embedding moved along the great circle
  towards the hard pole of its SVM direction by ``alpha``;

and one evaluation set: for every alpha of a sweep, hard (towards the hard
pole) and easy (towards the easy pole) images, plus neutral ones (alpha 0).

The class reference embedding (image space). The direction is slerped from
the *normalised mean image embedding of the class* (``class_reference_
embeddings``; the stage passes the train split). Why not the bridged text
embedding of the reference caption: the decoder was trained on image
embeddings, and the mean image embedding of a class lies inside the image
cone by construction, where the decoder knows the class best; the modality
bridge only shifts text embeddings by one global offset, so how close a
bridged caption lands to its class's images varies from class to class. The
train split is the distribution the baseline learned, mostly the easy side
of every class, so alpha 0 draws a "typical" image of the class and moving
towards the hard pole adds what the model has seldom seen. Averaging over
colours, contexts and sizes leaves the mean without any attribute of its own:
the decoder's noise chooses those, which keeps the neutral images varied.
Where the CLIP space separates classes weakly, so that class means lie close
together, ``sample_reference_embeddings`` gives one real image embedding of
the class per decoded image instead (both shapes are accepted).

Seeds. A decoder draws all starting noise of one call from one seed, so
image i of a call depends only on the seed and its own conditioning vector.
Each (set, class) is one call, whose seed is ``derive_seed(base_seed, set,
class)``: the images of a class do not change when another class is skipped
or added. The evaluation set uses the same seed for hard, neutral and easy
images of a class at every alpha: image i of each differs only in its
conditioning, so the hard/neutral/easy comparison is paired. The manifest
stores each image's call seed and its position in that call
(``noise_index``), enough to redraw any single image.

Engines. ``plan_*`` lists a set's calls (``DecodeCall``) without decoding;
``decode_plans`` runs the calls of every set as one job of a
``failmap.engine`` engine and assembles the sets. A call is the smallest unit
of work, never split across workers: its noise is drawn for the whole call,
so a shard of it would need the same draw, and its images come out the same
bytes whichever worker decodes it. ``generate_*`` plan and decode in one go.

Classes whose SVM was skipped have no direction and no hard captions: they
get no ``caption`` / ``direction`` / evaluation images; the reason is
printed and recorded in ``GeneratedSet.skipped``.
"""
from __future__ import annotations

import csv
import hashlib
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from failmap.data import Split, save_split
from failmap.decoder import angles_towards, check_compatible, normalize, rotate_towards, slerp
from failmap.decoders import load_decoder
from failmap.io import atomic_path
from failmap.svm import ClassSVM, Skip, decision_values, load_svms

TRAIN_ARMS = ("generic", "caption", "direction")
EVAL_SET = "eval"
SIDES = ("hard", "neutral", "easy")
MANIFEST_FIELDS = ("id", "set", "class", "label", "side", "alpha", "caption", "seed", "noise_index", "file", "index")

EmbedTexts = Callable[[list[str]], np.ndarray]
EXTENT_QUANTILE = 0.95  # alpha 1 of ``walk: extent``: as far as all but 5 % of the class's own images reach


def derive_seed(base_seed: int, *parts) -> int:
    """A 31-bit seed that is a fixed function of ``base_seed`` and ``parts``
    (e.g. arm and class): stable across runs and Python versions, unlike hash()."""
    key = "|".join(str(p) for p in (int(base_seed),) + parts)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF


def _check_count(n: int, name: str) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n}")
    return int(n)


def class_reference_embeddings(image_embeds: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, D): per class, the mean of its image embeddings scaled to unit norm
    (see the module docstring for why this is the reference)."""
    X = np.asarray(image_embeds, dtype=np.float64)
    labels = np.asarray(labels)
    if X.ndim != 2 or labels.shape != (len(X),):
        raise ValueError(f"image_embeds must be (N, D) with labels (N,), got {X.shape} and {labels.shape}")
    out = np.zeros((n_classes, X.shape[1]))
    for k in range(n_classes):
        rows = X[labels == k]
        if not len(rows):
            raise ValueError(f"class {k} has no image embeddings to average: a reference embedding needs at least one")
        mean = rows.mean(0)
        norm = np.linalg.norm(mean)
        if norm < 1e-8:
            raise ValueError(f"the mean image embedding of class {k} is zero: it has no direction")
        out[k] = mean / norm
    return out.astype(np.float32)


def sample_reference_embeddings(image_embeds: np.ndarray, labels: np.ndarray, n_classes: int, m: int, seed: int,
                                keep: np.ndarray | None = None) -> np.ndarray:
    """(n_classes, m, D): m image embeddings per class drawn at random (without
    replacement while the class has enough), among the rows where ``keep`` is
    True (e.g. the train images the baseline gets right).

    The alternative to the class mean: each decoded image starts from one real
    image of the class, so it keeps that image's shape even where the CLIP
    space separates classes weakly and their means lie close together; the
    starts also bring their own colours and sizes, hence more varied images.
    """
    X = np.asarray(image_embeds, dtype=np.float32)
    labels = np.asarray(labels)
    if X.ndim != 2 or labels.shape != (len(X),):
        raise ValueError(f"image_embeds must be (N, D) with labels (N,), got {X.shape} and {labels.shape}")
    keep = np.ones(len(X), bool) if keep is None else np.asarray(keep, bool)
    if keep.shape != labels.shape:
        raise ValueError(f"keep must have shape {labels.shape}, got {keep.shape}")
    m = _check_count(m, "m")
    out = np.zeros((n_classes, m, X.shape[1]), np.float32)
    for k in range(n_classes):
        rows = np.flatnonzero((labels == k) & keep)
        if not len(rows):
            raise ValueError(f"class {k} has no image embeddings to sample references from")
        rng = np.random.default_rng([int(seed), k])
        out[k] = X[rng.choice(rows, m, replace=len(rows) < m)]
    return out


@dataclass
class GeneratedSet:
    """Decoded images of one set (a training arm or the evaluation set) and one
    manifest row per image; ``skipped``: class name -> why it has no images."""
    name: str
    images: np.ndarray          # uint8 (N, H, W, 3)
    labels: np.ndarray          # int64 (N,)
    rows: list[dict]
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.images) != len(self.labels) or len(self.rows) != len(self.labels):
            raise ValueError(f"set {self.name!r}: {len(self.images)} images, {len(self.labels)} labels and "
                             f"{len(self.rows)} manifest rows must match")
        for i, row in enumerate(self.rows):
            if row["index"] != i or row["label"] != int(self.labels[i]) or row["set"] != self.name:
                raise ValueError(f"set {self.name!r}: manifest row {i} ({row['id']}) does not describe image {i}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def ids(self) -> np.ndarray:
        return np.array([r["id"] for r in self.rows], dtype=str)

    def mask(self, **where) -> np.ndarray:
        """Boolean mask of the rows whose fields equal the given values (e.g. side="hard", alpha=0.3)."""
        out = np.ones(len(self), dtype=bool)
        for key, value in where.items():
            out &= np.array([r[key] == value for r in self.rows], dtype=bool)
        return out


@dataclass(frozen=True)
class DecodeCall:
    """One decoder call: every image of one (set, class[, side, alpha]) from one seed.

    The unit of work of the engine (``decode_plans``): a call is never split,
    so image i keeps the noise the decoder draws for position i of its call
    (see the module docstring) whichever worker runs it. ``captions`` set:
    ``decode_captions`` (the words reach a text-to-image decoder; ``conditions``
    are their text embeddings); else ``decode_images`` of ``conditions``."""
    conditions: np.ndarray
    seed: int
    captions: tuple[str, ...] | None = None


def decode_call(decoder, call: DecodeCall, **decode_kwargs) -> np.ndarray:
    """Run one ``DecodeCall`` (an engine item) on ``decoder``."""
    if call.captions is not None:
        return decoder.decode_captions(list(call.captions), call.conditions, seed=call.seed, **decode_kwargs)
    return decoder.decode_images(call.conditions, seed=call.seed, **decode_kwargs)


class SetPlan:
    """The decoder calls of one set, with what the manifest says of each image,
    and the classes skipped; ``build`` assembles the decoded images."""

    def __init__(self, name: str):
        self.name = name
        self.calls: list[DecodeCall] = []
        self._meta: list[dict] = []
        self.skipped: dict[str, str] = {}

    def add(self, call: DecodeCall, *, class_name: str, label: int, side: str, alpha: float | None,
            captions: Sequence[str], tag: str) -> None:
        if len(call.conditions) != len(captions):
            raise ValueError(f"{len(call.conditions)} conditions but {len(captions)} manifest captions")
        self.calls.append(call)
        self._meta.append(dict(class_name=class_name, label=int(label), side=side, alpha=alpha,
                               captions=list(captions), tag=tag))

    def skip(self, class_name: str, reason: str) -> None:
        self.skipped[class_name] = reason
        print(f"generate[{self.name}]: class {class_name!r} skipped: {reason}", file=sys.stderr)

    def build(self, decoded: Sequence[np.ndarray]) -> GeneratedSet:
        """The set from ``decoded[j]``, the images of ``calls[j]``."""
        if len(decoded) != len(self.calls):
            raise ValueError(f"set {self.name!r}: {len(decoded)} decoded calls for {len(self.calls)} planned")
        rows, parts = [], []
        for call, meta, images in zip(self.calls, self._meta, decoded):
            images = np.asarray(images)
            n = len(meta["captions"])
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) != n:
                raise ValueError(f"the decoder returned {images.dtype} {images.shape} for {n} conditions; "
                                 f"expected uint8 ({n}, H, W, 3)")
            for i, caption in enumerate(meta["captions"]):
                rows.append(dict(id=f"{self.name}-{meta['class_name']}-{meta['tag']}-{i:04d}", set=self.name,
                                 **{"class": meta["class_name"]}, label=meta["label"], side=meta["side"],
                                 alpha=meta["alpha"], caption=caption, seed=int(call.seed), noise_index=i,
                                 file=f"{self.name}.npz", index=len(rows)))
            parts.append(images)
        images = np.concatenate(parts) if parts else np.zeros((0, 1, 1, 3), np.uint8)
        labels = np.array([r["label"] for r in rows], dtype=np.int64)
        return GeneratedSet(self.name, images, labels, rows, self.skipped)


def decode_plans(plans: Sequence[SetPlan], engine=None, load: Callable[[], object] | None = None, decoder=None,
                 **decode_kwargs) -> list[GeneratedSet]:
    """Decode every call of ``plans`` in one engine job (failmap.engine; default:
    the local loop on ``decoder``) and build one set per plan. ``load`` builds
    the decoder on each worker of a ray engine."""
    from failmap.engine import LocalEngine, Task

    calls = [call for plan in plans for call in plan.calls]
    decoded = (engine or LocalEngine()).map(Task(load, partial(decode_call, **decode_kwargs)), calls,
                                            desc="decode", model=decoder)
    out, start = [], 0
    for plan in plans:
        out.append(plan.build(decoded[start:start + len(plan.calls)]))
        start += len(plan.calls)
    return out


def _hard_pole(class_svm: ClassSVM | Skip, dim: int, class_name: str) -> np.ndarray | str:
    """The unit vector at the hard end of the class's raw-space direction, or why there is none."""
    if isinstance(class_svm, Skip):
        return f"no SVM: {class_svm.reason}"
    if not isinstance(class_svm, ClassSVM):
        raise TypeError(f"svms[{class_name!r}] must be a ClassSVM or a Skip, got {type(class_svm).__name__}")
    direction = class_svm.direction_raw
    if direction.shape != (dim,):
        raise ValueError(f"the SVM direction of class {class_name!r} has dimension {direction.shape[-1]} but the "
                         f"decoder's space has {dim}: SVMs and decoder must use the same CLIP space")
    return -direction.astype(np.float32)  # direction_raw points to the easy side


def direction_extents(svms: Mapping[int, ClassSVM | Skip], references: np.ndarray, image_embeds: np.ndarray,
                      labels: np.ndarray, quantile: float = EXTENT_QUANTILE) -> dict[int, tuple[float, float]]:
    """Per class with an SVM: how far its own images reach along its direction.

    (hard, easy) angles in radians along the great circle from the class
    reference towards the hard pole and towards the easy pole: the
    ``quantile`` of the signed angles of the class's image embeddings (the
    stage passes the validation split, the one the SVM was fitted on). The
    walk of ``walk: extent`` ends there at alpha 1, inside the region of the
    space that real images of the class occupy, where the decoder has seen
    conditions; the SVM's unit normal itself lies far outside it (measured on
    the default world: the shipped decoder turns slerp weight 0.3 towards it
    into noise). A side no image reaches gets angle 0 (no walk)."""
    labels = np.asarray(labels)
    if not 0.5 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0.5, 1), got {quantile}")
    references = _check_references(references, len(references), np.asarray(image_embeds).shape[-1])
    out = {}
    for k, class_svm in svms.items():
        pole = _hard_pole(class_svm, references.shape[2], str(k))
        if isinstance(pole, str):
            continue
        rows = np.asarray(image_embeds)[labels == k]
        if not len(rows):
            raise ValueError(f"class {k} has an SVM but no image embeddings to measure its extent on")
        angles = angles_towards(rows, _mean_reference(references[k]), pole)
        out[k] = (max(0.0, float(np.quantile(angles, quantile))), max(0.0, float(-np.quantile(angles, 1 - quantile))))
    return out


def _mean_reference(references_k: np.ndarray) -> np.ndarray:
    return normalize(np.asarray(references_k).mean(0), "class reference")


def _poles(class_svm: ClassSVM | Skip, references_k: np.ndarray, extents: Mapping[int, tuple[float, float]] | None,
           k: int, dim: int, class_name: str) -> tuple[np.ndarray, np.ndarray] | str:
    """(hard pole, easy pole) of a class, or why it has none: the SVM's unit
    normal and its opposite (``extent`` None, the reference's walk), or the
    points its own images reach on either side (``direction_extents``)."""
    pole = _hard_pole(class_svm, dim, class_name)
    if isinstance(pole, str) or extents is None:
        return pole if isinstance(pole, str) else (pole, -pole)
    if k not in extents:
        raise ValueError(f"class {class_name!r} has an SVM but no entry in extents (direction_extents)")
    reference = _mean_reference(references_k)
    hard, easy = extents[k]
    return rotate_towards(reference, pole, hard), rotate_towards(reference, -pole, easy)


def _check_references(references: np.ndarray, n_classes: int, dim: int) -> np.ndarray:
    """(n_classes, m, dim) float32: m references per class (m = 1 for class means)."""
    references = np.asarray(references, dtype=np.float32)
    if references.ndim == 2:
        references = references[:, None, :]
    if references.ndim != 3 or references.shape[0] != n_classes or references.shape[2] != dim \
            or references.shape[1] < 1:
        raise ValueError(f"references must be ({n_classes}, {dim}) (one reference embedding per class) or "
                         f"({n_classes}, m, {dim}) (m per class) in the decoder's {dim}-dim space, got "
                         f"{references.shape}")
    return references


def _cycled(references_k: np.ndarray, n: int) -> np.ndarray:
    """n conditioning starts for one class: reference i mod m for image i."""
    return references_k[np.arange(n) % len(references_k)]


def _check_svms(svms: Mapping[int, ClassSVM | Skip], n_classes: int) -> None:
    missing = [k for k in range(n_classes) if k not in svms]
    if missing:
        raise ValueError(f"svms has no entry (ClassSVM or Skip) for class indices {missing}")


def plan_generic(embed_texts: EmbedTexts, class_names: Sequence[str], reference_captions: Sequence[str],
                 n_per_class: int, base_seed: int) -> SetPlan:
    """``n_per_class`` images per class from its reference caption alone; the
    images differ only by their starting noise."""
    n = _check_count(n_per_class, "n_per_class")
    if len(reference_captions) != len(class_names):
        raise ValueError(f"{len(reference_captions)} reference captions for {len(class_names)} classes")
    out = SetPlan("generic")
    for k, name in enumerate(class_names):
        captions = [reference_captions[k]] * n
        call = DecodeCall(embed_texts(captions), derive_seed(base_seed, "generic", name), tuple(captions))
        out.add(call, class_name=name, label=k, side="neutral", alpha=None, captions=captions, tag="g")
    return out


def plan_caption(decoder, embed_texts: EmbedTexts, class_names: Sequence[str],
                 hard_captions: Mapping[int, Sequence[str]], svms: Mapping[int, ClassSVM | Skip],
                 n_per_class: int, base_seed: int, *, n_captions: int | None = None,
                 references: np.ndarray | None = None, weight: float = 1.0) -> SetPlan:
    """``n_per_class`` images per class from its top ``n_captions`` hard
    captions (all when None; image i from caption i mod k, so each caption
    gets an equal share, hardest first).

    ``weight`` 1: the caption alone (``decode_captions``: the world decoder's
    bridge, unCLIP's text-to-image). ``weight`` < 1: the condition is
    slerp(class reference, caption in the decoder's image space, weight),
    with ``references`` as for ``plan_direction``: the caption's
    attributes on an anchor inside the class's image cone, where the decoder
    draws best (a bridged caption alone lands beside it; measured in
    benchmarks/intervention_experiments.md). ``decoder`` gives the dimension
    and the bridge (``to_image_space``); it decodes nothing here."""
    n = _check_count(n_per_class, "n_per_class")
    if n_captions is not None:
        n_captions = _check_count(n_captions, "n_captions")
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"weight must lie in (0, 1] (a slerp weight; 1 = the caption alone), got {weight}")
    if weight < 1.0:
        if references is None:
            raise ValueError("weight < 1 blends each caption with its class's reference embedding: pass references")
        references = _check_references(references, len(class_names), decoder.dim)
    _check_svms(svms, len(class_names))
    out = SetPlan("caption")
    for k, name in enumerate(class_names):
        if isinstance(svms[k], Skip):
            out.skip(name, f"no SVM, hence no hard captions: {svms[k].reason}")
            continue
        top = [c for c in hard_captions.get(k, []) if c][:n_captions]
        if not top:
            raise ValueError(f"class {name!r} has an SVM but no hard captions: the captions output is incomplete")
        captions = [top[i % len(top)] for i in range(n)]
        seed = derive_seed(base_seed, "caption", name)
        if weight < 1.0:
            conditions = slerp(_cycled(references[k], n), decoder.to_image_space(embed_texts(captions)), weight)
            call = DecodeCall(conditions, seed)
        else:
            call = DecodeCall(embed_texts(captions), seed, tuple(captions))
        out.add(call, class_name=name, label=k, side="hard", alpha=None, captions=captions, tag="c")
    return out


def plan_direction(decoder, class_names: Sequence[str], references: np.ndarray,
                   svms: Mapping[int, ClassSVM | Skip], alpha: float, n_per_class: int, base_seed: int,
                   extents: Mapping[int, tuple[float, float]] | None = None) -> SetPlan:
    """``n_per_class`` images per class from slerp(reference, hard pole, alpha).

    ``references``: (n_classes, D), one start per class (``class_reference_
    embeddings``), or (n_classes, m, D), image i starting from reference i mod m
    (``sample_reference_embeddings``). ``extents`` (``direction_extents``):
    the hard pole is the point the class's own images reach, so alpha is a
    share of their extent; None: the SVM's unit normal (the reference's walk)."""
    n = _check_count(n_per_class, "n_per_class")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (a slerp weight), got {alpha}")
    _check_svms(svms, len(class_names))
    references = _check_references(references, len(class_names), decoder.dim)
    out = SetPlan("direction")
    for k, name in enumerate(class_names):
        poles = _poles(svms[k], references[k], extents, k, decoder.dim, name)
        if isinstance(poles, str):
            out.skip(name, poles)
            continue
        call = DecodeCall(slerp(_cycled(references[k], n), poles[0], alpha), derive_seed(base_seed, "direction", name))
        out.add(call, class_name=name, label=k, side="hard", alpha=float(alpha), captions=[""] * n,
                tag=f"a{alpha:g}")
    return out


def plan_eval(decoder, class_names: Sequence[str], references: np.ndarray, svms: Mapping[int, ClassSVM | Skip],
              alphas: Sequence[float], n_per_class: int, base_seed: int,
              extents: Mapping[int, tuple[float, float]] | None = None) -> SetPlan:
    """Per class: ``n_per_class`` neutral images (alpha 0) and, for every alpha,
    as many hard (towards the hard pole) and easy (towards the easy pole) ones,
    all from the same noise (see the module docstring); ``extents`` as for
    ``plan_direction``."""
    n = _check_count(n_per_class, "n_per_class")
    alphas = [float(a) for a in alphas]
    if not alphas or any(not 0.0 < a <= 1.0 for a in alphas) or len(set(alphas)) != len(alphas):
        raise ValueError(f"alphas must be distinct slerp weights in (0, 1] (alpha 0 is the neutral set, always "
                         f"drawn), got {alphas}")
    _check_svms(svms, len(class_names))
    references = _check_references(references, len(class_names), decoder.dim)
    out = SetPlan(EVAL_SET)
    for k, name in enumerate(class_names):
        poles = _poles(svms[k], references[k], extents, k, decoder.dim, name)
        if isinstance(poles, str):
            out.skip(name, poles)
            continue
        hard_pole, easy_pole = poles
        seed = derive_seed(base_seed, EVAL_SET, name)
        starts = _cycled(references[k], n)
        jobs = [("neutral", 0.0, starts)]
        for a in alphas:
            jobs += [("hard", a, slerp(starts, hard_pole, a)), ("easy", a, slerp(starts, easy_pole, a))]
        for side, a, conditions in jobs:
            out.add(DecodeCall(conditions, seed), class_name=name, label=k, side=side, alpha=a, captions=[""] * n,
                    tag=f"{side}-a{a:g}")
    return out


# The same, decoded here and now on ``decoder`` (decode_kwargs: its sampling settings).
def generate_generic(decoder, embed_texts: EmbedTexts, class_names: Sequence[str], reference_captions: Sequence[str],
                     n_per_class: int, base_seed: int, **decode_kwargs) -> GeneratedSet:
    plan = plan_generic(embed_texts, class_names, reference_captions, n_per_class, base_seed)
    return decode_plans([plan], decoder=decoder, **decode_kwargs)[0]


def generate_caption(decoder, embed_texts: EmbedTexts, class_names: Sequence[str],
                     hard_captions: Mapping[int, Sequence[str]], svms: Mapping[int, ClassSVM | Skip],
                     n_per_class: int, base_seed: int, *, n_captions: int | None = None,
                     references: np.ndarray | None = None, weight: float = 1.0,
                     **decode_kwargs) -> GeneratedSet:
    plan = plan_caption(decoder, embed_texts, class_names, hard_captions, svms, n_per_class, base_seed,
                        n_captions=n_captions, references=references, weight=weight)
    return decode_plans([plan], decoder=decoder, **decode_kwargs)[0]


def generate_direction(decoder, class_names: Sequence[str], references: np.ndarray,
                       svms: Mapping[int, ClassSVM | Skip], alpha: float, n_per_class: int, base_seed: int,
                       extents: Mapping[int, tuple[float, float]] | None = None, **decode_kwargs) -> GeneratedSet:
    plan = plan_direction(decoder, class_names, references, svms, alpha, n_per_class, base_seed, extents)
    return decode_plans([plan], decoder=decoder, **decode_kwargs)[0]


def generate_eval(decoder, class_names: Sequence[str], references: np.ndarray, svms: Mapping[int, ClassSVM | Skip],
                  alphas: Sequence[float], n_per_class: int, base_seed: int,
                  extents: Mapping[int, tuple[float, float]] | None = None, **decode_kwargs) -> GeneratedSet:
    plan = plan_eval(decoder, class_names, references, svms, alphas, n_per_class, base_seed, extents)
    return decode_plans([plan], decoder=decoder, **decode_kwargs)[0]


# ------------------------------------------------------------ pipeline inputs

@dataclass
class GenerationInputs:
    """What decoding needs from the earlier stages' outputs."""
    embedder: object
    decoder: object
    svms: dict
    hard_captions: dict[int, list[str]]
    references: np.ndarray  # (n_classes, D) class reference embeddings (train split)
    extents: dict[int, tuple[float, float]] | None  # direction_extents on val (walk: extent), None (walk: normal)


def load_generation_inputs(p, meta: dict) -> GenerationInputs:
    """The embedder and decoder the params name (checked to share one space),
    the SVMs, each class's hard captions (hardest first), the class
    reference embeddings and, for ``generate.walk: extent``, how far each
    class's validation images reach along its direction, from the pipeline's
    output folders."""
    from failmap.embedder import load_embedder  # open_clip: seconds to import, only for this
    from failmap.embeddings import load_embeddings
    from failmap.predictions import load_predictions
    from failmap.captions import HARD_CAPTIONS_FILE, read_hard_captions
    from failmap.stage import BASELINE_PREDICTIONS, CAPTIONS_DIR, CLIP_DIR, EMBEDDINGS, SVM_DIR

    c = p.clip
    classes = meta["classes"]
    embedder = load_embedder(c.source, c.arch, c.pretrained, CLIP_DIR, c.device, c.batch_size)
    decoder = load_inputs_decoder(p, meta)()
    check_compatible(embedder.space, embedder.dim, decoder)  # before any decoding
    _, svms, _ = load_svms(f"{SVM_DIR}/svms.npz")
    hard_captions = read_hard_captions(f"{CAPTIONS_DIR}/{HARD_CAPTIONS_FILE}", classes)  # the caption stage's data out
    train_pred = load_predictions(f"{BASELINE_PREDICTIONS}/train.csv")
    references = class_reference_embeddings(load_embeddings(EMBEDDINGS, "train", train_pred["id"]),
                                            train_pred["label"], len(classes))
    extents = None
    if p.generate.walk == "extent":
        val_pred = load_predictions(f"{BASELINE_PREDICTIONS}/val.csv")
        extents = direction_extents(svms, references, load_embeddings(EMBEDDINGS, "val", val_pred["id"]),
                                    val_pred["label"])
    return GenerationInputs(embedder, decoder, svms, hard_captions, references, extents)


def load_inputs_decoder(p, meta: dict) -> Callable[[], object]:
    """What loads the decoder the params name (a picklable partial of ``load_decoder``,
    local folders made absolute): called here, and once on each worker of a ray engine."""
    from failmap.stage import DECODER_DIR

    d = p.decoder
    def absolute(path):
        return str(Path(path).resolve()) if Path(path).exists() else path
    folder = DECODER_DIR if d.source != "unclip" else d.model
    return partial(load_decoder, d.source, absolute(folder), absolute(d.text_model), d.device,
                   image_size=meta["image_size"])


# ------------------------------------------------------------ baseline check

def accuracy_on_generated(model, images: np.ndarray, labels: np.ndarray, device: str,
                          class_names: Sequence[str] | None = None) -> dict:
    """A classifier's accuracy and mean confidence in the true class on images
    (and per class, given ``class_names``). Confidence is reported because
    accuracy saturates: easy and neutral images can both be all correct."""
    from failmap.train import predictions

    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not len(labels):
        return {"accuracy": None, "confidence": None, "n": 0}
    p = predictions(model, images, labels, device)
    out = {"accuracy": float(p["correct"].mean()), "confidence": float(p["confidence"].mean()), "n": int(len(labels))}
    if class_names is not None:
        out["per_class"] = {c: float(p["correct"][labels == k].mean()) for k, c in enumerate(class_names)
                            if (labels == k).any()}
    return out


def hard_neutral_easy_report(model, eval_set: GeneratedSet, class_names: Sequence[str], device: str) -> dict:
    """The paper's check on the evaluation set: per alpha, the classifier's
    accuracy on hard, neutral and easy images; ``ordered`` is True when
    accuracy is hard < neutral < easy, ``hard_lowest`` when hard < both.
    Neutral images (alpha 0) are shared by all alphas and reported once."""
    neutral = accuracy_on_generated(model, eval_set.images[eval_set.mask(side="neutral")],
                                    eval_set.labels[eval_set.mask(side="neutral")], device, class_names)
    alphas = sorted({r["alpha"] for r in eval_set.rows if r["side"] != "neutral"})
    report = {"neutral": neutral, "alphas": {}, "skipped": dict(eval_set.skipped)}
    for a in alphas:
        row = {}
        for side in ("hard", "easy"):
            m = eval_set.mask(side=side, alpha=a)
            row[side] = accuracy_on_generated(model, eval_set.images[m], eval_set.labels[m], device, class_names)
        acc = {"hard": row["hard"]["accuracy"], "neutral": neutral["accuracy"], "easy": row["easy"]["accuracy"]}
        if None not in acc.values():
            row["ordered"] = bool(acc["hard"] < acc["neutral"] < acc["easy"])
            row["hard_lowest"] = bool(acc["hard"] < min(acc["neutral"], acc["easy"]))
        # "alpha_0.3", not "0.3": flattened metric names ("alphas.alpha_0.3.hard.accuracy") stay readable
        report["alphas"][f"alpha_{a:g}"] = row
    return report


def decoded_decision_report(embed_images: Callable[[np.ndarray], np.ndarray],
                            svms: Mapping[int, ClassSVM | Skip], eval_set: GeneratedSet) -> dict:
    """Did the decoder draw the direction it was given? Every evaluation image
    is embedded again (CLIP) and scored by its class's SVM: per alpha, the mean
    decision value of the hard, neutral and easy images (negative = the "will
    fail" side), and ``ordered`` when hard < neutral < easy. Unlike the
    classifier's accuracy this needs no recognisable object, so it tells a
    decoder that ignores its condition from one whose images the classifier
    cannot read. Classes without an SVM have no evaluation images."""
    if not len(eval_set):
        return {"neutral": None, "alphas": {}}
    decision = decision_values(dict(svms), embed_images(eval_set.images), eval_set.labels)

    def mean(mask):
        return float(np.nanmean(decision[mask])) if mask.any() else None

    report = {"neutral": mean(eval_set.mask(side="neutral")), "alphas": {}}
    for a in sorted({r["alpha"] for r in eval_set.rows if r["side"] != "neutral"}):
        row = {side: mean(eval_set.mask(side=side, alpha=a)) for side in ("hard", "easy")}
        row["ordered"] = bool(row["hard"] < report["neutral"] < row["easy"])
        report["alphas"][f"alpha_{a:g}"] = row
    return report


# ------------------------------------------------------------ generator check

def clip_class_predictions(embed_images: Callable[[np.ndarray], np.ndarray], embed_texts: EmbedTexts,
                           class_prompts: Sequence[str], images: np.ndarray) -> np.ndarray:
    """CLIP zero-shot class of each image: the nearest of the class prompts."""
    if not len(images):
        return np.zeros(0, dtype=np.int64)
    return (embed_images(images) @ embed_texts(list(class_prompts)).T).argmax(1)


def generator_check(predicted: np.ndarray, eval_set: GeneratedSet, class_names: Sequence[str],
                    threshold: float, arms: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Does the decoder draw the classes at all? The share of neutral evaluation
    images (decoded from each class's reference embedding) that CLIP zero-shot
    recognises as their class, against ``threshold``; and the same share for
    each training arm (``arms``: name -> (CLIP's classes, the labels)), whose
    conditions may lie where the decoder draws worse (a direction's pole).
    ``trusted`` is False when the neutral images or any arm fall below it:
    the synthetic arms then train on images that are not of their label."""
    neutral = eval_set.mask(side="neutral")
    labels = eval_set.labels[neutral]
    hits = predicted[neutral] == labels
    recognised = float(hits.mean()) if len(labels) else None
    per_arm = {name: float(np.mean(pred == lab)) if len(lab) else None for name, (pred, lab) in (arms or {}).items()}
    untrusted = sorted(name for name, v in per_arm.items() if v is None or v < threshold)
    return {"neutral_clip_class_accuracy": recognised, "threshold": float(threshold),
            "per_class": {c: float(hits[labels == k].mean()) for k, c in enumerate(class_names) if (labels == k).any()},
            "arms_clip_class_accuracy": per_arm, "untrusted_arms": untrusted,
            "trusted": bool(recognised is not None and recognised >= threshold and not untrusted),
            "n": int(len(labels))}


def keep_on_class(generated: GeneratedSet, predicted: np.ndarray) -> GeneratedSet:
    """The set without the images CLIP puts in another class (ALIA-style filter)."""
    keep = np.flatnonzero(predicted == generated.labels)
    rows = [dict(generated.rows[i], index=j) for j, i in enumerate(keep)]
    return GeneratedSet(generated.name, generated.images[keep], generated.labels[keep], rows, generated.skipped)


# ------------------------------------------------------------ saving

def save_generated(folder: str | Path, generated: GeneratedSet, allow_empty: bool = False) -> Path:
    """``<folder>/<name>.npz`` in the prepared-split format (images, labels,
    ids, conditioning captions), so later stages read it with ``load_split``.
    ``allow_empty``: a set the CLIP filter emptied is saved with no images
    (its arm then fine-tunes on train alone) instead of refused."""
    if not len(generated) and not allow_empty:
        raise ValueError(f"set {generated.name!r} has no images to save (every class skipped?)")
    split = Split(images=generated.images, labels=generated.labels, ids=generated.ids,
                  captions=np.array([r["caption"] for r in generated.rows], dtype=str))
    return save_split(folder, generated.name, split)


def write_manifest(path: str | Path, sets: Sequence[GeneratedSet]) -> Path:
    """One CSV row per generated image of every set (alpha empty where it does not apply)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            for s in sets:
                for row in s.rows:
                    writer.writerow({k: ("" if row[k] is None else row[k]) for k in MANIFEST_FIELDS})
    return path


def read_manifest(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (run the generate stage first)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("label", "seed", "noise_index", "index"):
            row[key] = int(row[key])
        row["alpha"] = float(row["alpha"]) if row["alpha"] != "" else None
    return rows


def save_grid(generated: GeneratedSet, path: str | Path, per_group: int = 8, alpha: float | None = None,
              upscale: int = 3) -> Path:
    """A PNG with one row of ``per_group`` images per class (per class and side
    for the evaluation set: hard, neutral, easy at ``alpha``, default the
    largest). Rows stay aligned: a short group is padded with blank cells."""
    from failmap.plots import image_grid

    if not len(generated):
        raise ValueError(f"set {generated.name!r} has no images to draw")
    per_group = _check_count(per_group, "per_group")
    groups: dict[tuple, list[int]] = {}
    if generated.name == EVAL_SET:
        alphas = sorted({r["alpha"] for r in generated.rows if r["side"] != "neutral"})
        alpha = alphas[-1] if alpha is None else float(alpha)
        if alpha not in alphas:
            raise ValueError(f"alpha {alpha} is not in the evaluation set (alphas {alphas})")
        wanted = {"hard": alpha, "neutral": 0.0, "easy": alpha}
        for i, r in enumerate(generated.rows):
            if wanted[r["side"]] == r["alpha"]:
                groups.setdefault((r["label"], SIDES.index(r["side"])), []).append(i)
        title = f"{generated.name}: hard / neutral / easy, alpha {alpha:g}"
    else:
        for i, r in enumerate(generated.rows):
            groups.setdefault((r["label"],), []).append(i)
        title = f"{generated.name}: one row per class"
    blank = np.full(generated.images.shape[1:], 255, np.uint8)
    cells, labels = [], []
    for key in sorted(groups):
        picked = groups[key][:per_group]
        for i in picked:
            r = generated.rows[i]
            cells.append(generated.images[i])
            text = r["caption"].removeprefix("a photo of a ") if r["caption"] else f"{r['side']} {r['alpha'] or 0:g}"
            labels.append(f"{r['class']}: {text}")
        cells += [blank] * (per_group - len(picked))
        labels += [""] * (per_group - len(picked))
    return image_grid(np.stack(cells), path, ncol=per_group, upscale=upscale, title=title, labels=labels)
