"""Synthetic images per class for the interventions (METHOD.md step 5).

Three training arms, each decoded per class:

- ``generic``: the reference caption "a photo of a {class}" only;
- ``caption``: the class's top hard captions, cycled, each blended with the
  class reference embedding (``generate.caption_weight``);
- ``direction``: the class reference embedding moved along the great circle
  towards the hard pole of its SVM direction by ``alpha``;

and one evaluation set: for every alpha of a sweep, hard (towards the hard
pole) and easy (towards the easy pole) images, plus neutral ones (alpha 0).

The conditioning vectors (class reference embeddings, poles, how far a
class's images reach along its direction) come from ``failmap.conditions``;
the decoded sets, their manifest and grids are ``failmap.generated``; the
figures on them are ``failmap.evaluation``'s.

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

Modes (``modes.drive: modes``). What steers a class is a list of ``Steer`` s:
its one SVM (share 1, ``svm_steers``), or each of its failure modes
(``failmap.modes``) with its share of the class's val errors
(``mode_steers``; ``modes.drive: top_mode``: its largest mode alone). The
``caption`` and ``direction`` arms spread a class's
``n_per_class`` images over its steers by share (``spread``, largest
remainder), one decoder call per (class, mode) with seed
``derive_seed(base_seed, set, class, "mode<j>")`` and the mode's own
captions or its own extents. The evaluation set is drawn *per mode*: the
class's neutral images once, and for every mode and alpha
``n_per_class`` hard and easy ones, all from the class's one evaluation seed,
so mode j's hard image i and the neutral image i differ only in their
conditioning. Each manifest row records its ``mode`` (empty for the SVM).
Steered by the SVM, every call, seed and tag is what it was before modes
existed (the same bytes).
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from failmap.conditions import (check_count, check_references, class_poles, class_reference_embeddings, cycled,
                                per_image, tail_images,
                                direction_extents)
from failmap.decoders.loader import check_compatible, load_decoder
from failmap.decoders.sphere import slerp
from failmap.generated import EVAL_SET, GeneratedSet
from failmap.modes import ClassModes, Mode, drive_shares, spread
from failmap.svm import ClassSVM, Skip, load_svms

TRAIN_ARMS = ("generic", "caption", "direction")

EmbedTexts = Callable[[list[str]], np.ndarray]


def derive_seed(base_seed: int, *parts) -> int:
    """A 31-bit seed that is a fixed function of ``base_seed`` and ``parts``
    (e.g. arm and class): stable across runs and Python versions, unlike hash()."""
    key = "|".join(str(p) for p in (int(base_seed),) + parts)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class Steer:
    """One direction a class's steered images walk along and its share of them:
    the class SVM (``mode`` None, share 1) or its failure mode ``mode``."""
    direction: ClassSVM | Mode
    share: float
    mode: int | None = None


Steers = Mapping[int, "ClassSVM | Skip | Sequence[Steer]"]


def svm_steers(svms: Mapping[int, ClassSVM | Skip]) -> dict[int, list[Steer] | Skip]:
    """Each class steered by its one SVM (a ``Skip`` stays a skip)."""
    return {k: v if isinstance(v, Skip) else [Steer(v, 1.0)] for k, v in svms.items()}


def mode_steers(modes: Mapping[int, ClassModes | Skip], top_only: bool = False) -> dict[int, list[Steer] | Skip]:
    """Each class steered by its failure modes, largest share first, each
    taking the share ``failmap.modes.drive_shares`` gives it (``top_only``:
    the largest mode takes all); a ``Skip`` stays a skip."""
    shares = drive_shares(modes, top_only)
    return {k: v if isinstance(v, Skip) else [Steer(m, s, j) for j, (m, s) in enumerate(zip(v.modes, shares[k]))]
            for k, v in modes.items()}


def _steers_of(value, class_name: str) -> list[Steer] | Skip:
    """A class's steers from what a plan was given: a ClassSVM, a Skip or a list of ``Steer``."""
    if isinstance(value, (Skip, ClassSVM)):
        return value if isinstance(value, Skip) else [Steer(value, 1.0)]
    steers = list(value)
    if not steers or not all(isinstance(s, Steer) for s in steers):
        raise TypeError(f"class {class_name!r} must be steered by a ClassSVM, a Skip or a non-empty list of "
                        f"Steer, got {value!r}")
    return steers


def _call_seed(base_seed: int, set_name: str, class_name: str, steer: Steer) -> int:
    parts = (set_name, class_name) if steer.mode is None else (set_name, class_name, f"mode{steer.mode}")
    return derive_seed(base_seed, *parts)


def _mode_tag(steer: Steer, tag: str) -> str:
    return tag if steer.mode is None else f"m{steer.mode}-{tag}"


def _extent_key(k: int, steer: Steer):
    return k if steer.mode is None else (k, steer.mode)


def steer_extents(steers: Steers, references: np.ndarray, image_embeds: np.ndarray,
                  labels: np.ndarray, walk: str = "extent") -> dict:
    """``direction_extents`` (``walk`` extent) or ``tail_images`` (``walk``
    images) of every steer: keyed by class index for an SVM steer (as those
    functions) and by (class, mode) for a mode."""
    if walk not in ("extent", "images"):
        raise ValueError(f"walk must be 'extent' or 'images' to have extents, got {walk!r}")
    out = {}
    for k, value in steers.items():
        class_steers = _steers_of(value, str(k))
        if isinstance(class_steers, Skip):
            continue
        for steer in class_steers:
            out[_extent_key(k, steer)] = (
                direction_extents({k: steer.direction}, references, image_embeds, labels)[k] if walk == "extent"
                else tail_images({k: steer.direction}, image_embeds, labels)[k])
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
            captions: Sequence[str], tag: str, mode: int | None = None) -> None:
        if len(call.conditions) != len(captions):
            raise ValueError(f"{len(call.conditions)} conditions but {len(captions)} manifest captions")
        self.calls.append(call)
        self._meta.append(dict(class_name=class_name, label=int(label), side=side, alpha=alpha,
                               captions=list(captions), tag=tag, mode=mode))

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
                                 alpha=meta["alpha"], mode=meta["mode"], caption=caption, seed=int(call.seed),
                                 noise_index=i, file=f"{self.name}.npz", index=len(rows)))
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


def _check_svms(svms: Steers, n_classes: int) -> None:
    missing = [k for k in range(n_classes) if k not in svms]
    if missing:
        raise ValueError(f"svms has no entry (ClassSVM, Skip or steers) for class indices {missing}")


def _steered_counts(out: SetPlan, class_names: Sequence[str], svms: Steers, n: int, skip_why: str):
    """(class index, name, steer, count) for every steer of every class, ``count``
    its ``spread`` share of the class's ``n`` images (0 included, so callers still
    validate it); a class with nothing to steer by is recorded as skipped on ``out``
    (``skip_why``: its reason's prefix)."""
    for k, name in enumerate(class_names):
        steers = _steers_of(svms[k], name)
        if isinstance(steers, Skip):
            out.skip(name, f"{skip_why}: {steers.reason}")
            continue
        for steer, count in zip(steers, spread(n, [s.share for s in steers])):
            yield k, name, steer, count


def plan_generic(embed_texts: EmbedTexts, class_names: Sequence[str], reference_captions: Sequence[str],
                 n_per_class: int, base_seed: int) -> SetPlan:
    """``n_per_class`` images per class from its reference caption alone; the
    images differ only by their starting noise."""
    n = check_count(n_per_class, "n_per_class")
    if len(reference_captions) != len(class_names):
        raise ValueError(f"{len(reference_captions)} reference captions for {len(class_names)} classes")
    out = SetPlan("generic")
    for k, name in enumerate(class_names):
        captions = [reference_captions[k]] * n
        call = DecodeCall(embed_texts(captions), derive_seed(base_seed, "generic", name), tuple(captions))
        out.add(call, class_name=name, label=k, side="neutral", alpha=None, captions=captions, tag="g")
    return out


def plan_caption(decoder, embed_texts: EmbedTexts, class_names: Sequence[str],
                 hard_captions: Mapping[int, Sequence[str]], svms: Steers,
                 n_per_class: int, base_seed: int, *, n_captions: int | None = None,
                 references: np.ndarray | None = None, weight: float = 1.0,
                 mode_captions: Mapping[int, Sequence[tuple[float, Sequence[str]]]] | None = None) -> SetPlan:
    """``n_per_class`` images per class from its top ``n_captions`` hard
    captions (all when None; image i from caption i mod k, so each caption
    gets an equal share, hardest first).

    ``svms``: per class a ClassSVM, a Skip or its ``Steer`` s. Steered by
    modes, the class's images are ``spread`` over its modes by share, mode j's
    from its own hard captions (``mode_captions[k][j]``: (share, captions),
    ``failmap.captions.read_mode_captions``), each mode one call.

    ``weight`` 1: the caption alone (``decode_captions``: the world decoder's
    bridge, unCLIP's text-to-image). ``weight`` < 1: the condition is
    slerp(class reference, caption in the decoder's image space, weight),
    with ``references`` as for ``plan_direction``: the caption's
    attributes on an anchor inside the class's image cone, where the decoder
    draws best (a bridged caption alone lands beside it; measured in
    benchmarks/intervention_experiments.md). ``decoder`` gives the dimension
    and the bridge (``to_image_space``); it decodes nothing here."""
    n = check_count(n_per_class, "n_per_class")
    if n_captions is not None:
        n_captions = check_count(n_captions, "n_captions")
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"weight must lie in (0, 1] (a slerp weight; 1 = the caption alone), got {weight}")
    if weight < 1.0:
        if references is None:
            raise ValueError("weight < 1 blends each caption with its class's reference embedding: pass references")
        references = check_references(references, len(class_names), decoder.dim)
    _check_svms(svms, len(class_names))
    out = SetPlan("caption")
    for k, name, steer, count in _steered_counts(out, class_names, svms, n, "no SVM, hence no hard captions"):
        if steer.mode is None:
            written = hard_captions.get(k, [])
        else:
            by_mode = (mode_captions or {}).get(k, [])
            if len(by_mode) <= steer.mode:
                raise ValueError(f"class {name!r} has a mode {steer.mode} but no hard captions for it: the "
                                 f"captions output is incomplete (re-run the caption stage)")
            written = by_mode[steer.mode][1]
        top = [c for c in written if c][:n_captions]
        if not top:
            what = "an SVM" if steer.mode is None else f"a mode {steer.mode}"
            raise ValueError(f"class {name!r} has {what} but no hard captions: the captions output is incomplete")
        if count == 0:
            continue
        captions = [top[i % len(top)] for i in range(count)]
        seed = _call_seed(base_seed, "caption", name, steer)
        if weight < 1.0:
            conditions = slerp(cycled(references[k], count), decoder.to_image_space(embed_texts(captions)), weight)
            call = DecodeCall(conditions, seed)
        else:
            call = DecodeCall(embed_texts(captions), seed, tuple(captions))
        out.add(call, class_name=name, label=k, side="hard", alpha=None, captions=captions,
                tag=_mode_tag(steer, "c"), mode=steer.mode)
    return out


def plan_direction(decoder, class_names: Sequence[str], references: np.ndarray, svms: Steers, alpha: float,
                   n_per_class: int, base_seed: int, extents: Mapping | None = None) -> SetPlan:
    """``n_per_class`` images per class from slerp(reference, hard pole, alpha).

    ``references``: (n_classes, D), one start per class (``class_reference_
    embeddings``), or (n_classes, m, D), image i starting from reference i mod m
    (``sample_reference_embeddings``). ``extents`` (``direction_extents``, or
    ``steer_extents`` for modes): the hard pole is the point the class's own
    images reach, so alpha is a share of their extent; None: the direction's
    unit normal (the reference's walk). ``svms`` as for ``plan_caption``: a
    class steered by modes has its images ``spread`` over them by share, each
    walking along its own mode's direction."""
    n = check_count(n_per_class, "n_per_class")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (a slerp weight), got {alpha}")
    _check_svms(svms, len(class_names))
    references = check_references(references, len(class_names), decoder.dim)
    out = SetPlan("direction")
    for k, name, steer, count in _steered_counts(out, class_names, svms, n, "no SVM"):
        poles = class_poles(steer.direction, references[k], extents, _extent_key(k, steer), decoder.dim, name)
        if count == 0:
            continue
        call = DecodeCall(slerp(cycled(references[k], count), per_image(poles[0], count), alpha),
                          _call_seed(base_seed, "direction", name, steer))
        out.add(call, class_name=name, label=k, side="hard", alpha=float(alpha), captions=[""] * count,
                tag=_mode_tag(steer, f"a{alpha:g}"), mode=steer.mode)
    return out


def plan_eval(decoder, class_names: Sequence[str], references: np.ndarray, svms: Steers,
              alphas: Sequence[float], n_per_class: int, base_seed: int, extents: Mapping | None = None) -> SetPlan:
    """Per class: ``n_per_class`` neutral images (alpha 0) and, for every alpha
    and every steer (the SVM, or each mode), as many hard (towards the hard
    pole) and easy (towards the easy pole) ones, all from the same noise (see
    the module docstring); ``extents`` as for ``plan_direction``."""
    n = check_count(n_per_class, "n_per_class")
    alphas = [float(a) for a in alphas]
    if not alphas or any(not 0.0 < a <= 1.0 for a in alphas) or len(set(alphas)) != len(alphas):
        raise ValueError(f"alphas must be distinct slerp weights in (0, 1] (alpha 0 is the neutral set, always "
                         f"drawn), got {alphas}")
    _check_svms(svms, len(class_names))
    references = check_references(references, len(class_names), decoder.dim)
    out = SetPlan(EVAL_SET)
    for k, name in enumerate(class_names):
        steers = _steers_of(svms[k], name)
        if isinstance(steers, Skip):
            out.skip(name, f"no SVM: {steers.reason}")
            continue
        seed = derive_seed(base_seed, EVAL_SET, name)
        starts = cycled(references[k], n)
        jobs = [("neutral", 0.0, None, starts)]
        for steer in steers:
            hard_pole, easy_pole = class_poles(steer.direction, references[k], extents, _extent_key(k, steer),
                                               decoder.dim, name)
            for a in alphas:
                jobs += [("hard", a, steer, slerp(starts, per_image(hard_pole, n), a)),
                         ("easy", a, steer, slerp(starts, per_image(easy_pole, n), a))]
        for side, a, steer, conditions in jobs:
            tag = f"{side}-a{a:g}"
            out.add(DecodeCall(conditions, seed), class_name=name, label=k, side=side, alpha=a, captions=[""] * n,
                    tag=tag if steer is None else _mode_tag(steer, tag), mode=None if steer is None else steer.mode)
    return out


def mode_eval_report(model, eval_set: GeneratedSet, class_names: Sequence[str], device: str) -> dict:
    """The baseline's accuracy on each mode's decoded evaluation images:
    {class: {"mode_<j>": {"alpha_<a>": {"hard", "easy"}}}}, per class the
    neutral accuracy beside them; empty when no image was steered by a mode."""
    from failmap.train import predictions  # torch: only for this

    if not any(r.get("mode") is not None for r in eval_set.rows):
        return {}
    correct = predictions(model, eval_set.images, eval_set.labels, device)["correct"].astype(bool)
    out: dict = {}
    for k, name in enumerate(class_names):
        rows = [r for r in eval_set.rows if r["label"] == k]
        if not rows:
            continue
        neutral = eval_set.mask(label=k, side="neutral")
        entry: dict = {"neutral": float(correct[neutral].mean()) if neutral.any() else None}
        for j in sorted({r["mode"] for r in rows if r.get("mode") is not None}):
            entry[f"mode_{j}"] = {
                f"alpha_{a:g}": {side: float(correct[eval_set.mask(label=k, side=side, alpha=a, mode=j)].mean())
                                 for side in ("hard", "easy")}
                for a in sorted({r["alpha"] for r in rows if r.get("mode") == j})}
        out[name] = entry
    return out


# The same, decoded here and now on ``decoder`` (decode_kwargs: its sampling settings).
def generate_generic(decoder, embed_texts: EmbedTexts, class_names: Sequence[str], reference_captions: Sequence[str],
                     n_per_class: int, base_seed: int, **decode_kwargs) -> GeneratedSet:
    plan = plan_generic(embed_texts, class_names, reference_captions, n_per_class, base_seed)
    return decode_plans([plan], decoder=decoder, **decode_kwargs)[0]


def generate_caption(decoder, embed_texts: EmbedTexts, class_names: Sequence[str],
                     hard_captions: Mapping[int, Sequence[str]], svms: Steers,
                     n_per_class: int, base_seed: int, *, n_captions: int | None = None,
                     references: np.ndarray | None = None, weight: float = 1.0,
                     mode_captions: Mapping[int, Sequence[tuple[float, Sequence[str]]]] | None = None,
                     **decode_kwargs) -> GeneratedSet:
    plan = plan_caption(decoder, embed_texts, class_names, hard_captions, svms, n_per_class, base_seed,
                        n_captions=n_captions, references=references, weight=weight, mode_captions=mode_captions)
    return decode_plans([plan], decoder=decoder, **decode_kwargs)[0]


def generate_direction(decoder, class_names: Sequence[str], references: np.ndarray, svms: Steers, alpha: float,
                       n_per_class: int, base_seed: int, extents: Mapping | None = None,
                       **decode_kwargs) -> GeneratedSet:
    plan = plan_direction(decoder, class_names, references, svms, alpha, n_per_class, base_seed, extents)
    return decode_plans([plan], decoder=decoder, **decode_kwargs)[0]


def generate_eval(decoder, class_names: Sequence[str], references: np.ndarray, svms: Steers,
                  alphas: Sequence[float], n_per_class: int, base_seed: int, extents: Mapping | None = None,
                  **decode_kwargs) -> GeneratedSet:
    plan = plan_eval(decoder, class_names, references, svms, alphas, n_per_class, base_seed, extents)
    return decode_plans([plan], decoder=decoder, **decode_kwargs)[0]


# ------------------------------------------------------------ pipeline inputs

@dataclass
class GenerationInputs:
    """What decoding needs from the earlier stages' outputs."""
    embedder: object
    decoder: object
    svms: dict                              # class index -> ClassSVM | Skip (the class SVMs, whatever drives)
    hard_captions: dict[int, list[str]]     # the class SVMs' hard captions
    references: np.ndarray  # (n_classes, D) class reference embeddings (train split)
    extents: dict | None    # steer_extents on val (walk: extent), None (walk: normal)
    steers: dict = None     # class index -> [Steer] | Skip: what ``modes.drive`` steers the arms by
    mode_captions: dict = None  # class index -> [(share, hard captions)] per mode (read_mode_captions)


def load_generation_inputs(p, meta: dict) -> GenerationInputs:
    """The embedder and decoder the params name (checked to share one space),
    the SVMs, each class's hard captions (hardest first, per mode too), the
    steers ``modes.drive`` names (the SVMs, or the modes of
    ``data/svm/modes.npz``), the class reference embeddings and, for
    ``generate.walk: extent``, how far each class's validation images reach
    along each steer's direction, from the pipeline's output folders."""
    from failmap.embedder import load_embedder  # open_clip: seconds to import, only for this
    from failmap.embeddings import load_embeddings
    from failmap.modes import load_modes
    from failmap.predictions import load_predictions
    from failmap.captions import HARD_CAPTIONS_FILE, read_hard_captions, read_mode_captions
    from failmap.stage import BASELINE_PREDICTIONS, CAPTIONS_DIR, CLIP_DIR, EMBEDDINGS, SVM_DIR

    c = p.clip
    classes = meta["classes"]
    embedder = load_embedder(c.source, c.arch, c.pretrained, CLIP_DIR, c.device, c.batch_size)
    decoder = load_inputs_decoder(p, meta)()
    check_compatible(embedder.space, embedder.dim, decoder)  # before any decoding
    _, svms, _ = load_svms(f"{SVM_DIR}/svms.npz")
    captions_file = f"{CAPTIONS_DIR}/{HARD_CAPTIONS_FILE}"  # the caption stage's data out
    hard_captions = read_hard_captions(captions_file, classes)
    mode_captions = read_mode_captions(captions_file, classes)
    steers = svm_steers(svms) if p.modes.drive == "svm" else \
        mode_steers(load_modes(f"{SVM_DIR}/modes.npz")[0], top_only=p.modes.drive == "top_mode")
    train_pred = load_predictions(f"{BASELINE_PREDICTIONS}/train.csv")
    references = class_reference_embeddings(load_embeddings(EMBEDDINGS, "train", train_pred["id"]),
                                            train_pred["label"], len(classes))
    extents = None
    if p.generate.walk != "normal":
        val_pred = load_predictions(f"{BASELINE_PREDICTIONS}/val.csv")
        extents = steer_extents(steers, references, load_embeddings(EMBEDDINGS, "val", val_pred["id"]),
                                val_pred["label"], walk=p.generate.walk)
    return GenerationInputs(embedder, decoder, svms, hard_captions, references, extents, steers, mode_captions)


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


