"""The conditioning vectors of the synthetic sets: where on the sphere each
decoded image starts (a class reference embedding) and where it walks to (a
pole of the class's SVM direction).

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

Poles. The SVM's direction points to the easy side; its opposite is the hard
pole. A failure mode (``failmap.modes.Mode``) has a direction of the same
kind and takes the SVM's place wherever a class's direction is asked for. With ``generate.walk: extent`` a pole is instead the point the class's
own validation images reach along that direction (``direction_extents``),
so that alpha 1 stays where the decoder has seen conditions. With
``generate.walk: images`` a pole is not one point but the class's own
validation images beyond that point (``tail_images``: the 5 % hardest, or
easiest, by the direction's decision value): image i walks towards tail
image i mod m, so alpha 1 decodes real hard (easy) embeddings, as varied as
the images themselves, where one rotated class mean draws one attribute
combination over and over.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from failmap.decoders.sphere import angles_towards, normalize, rotate_towards
from failmap.modes import Mode
from failmap.svm import ClassSVM, Skip

EXTENT_QUANTILE = 0.95  # alpha 1 of ``walk: extent``: as far as all but 5 % of the class's own images reach


def check_count(n: int, name: str) -> int:
    """``n`` as an int, refused unless a positive whole number (``name`` in the message)."""
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
    m = check_count(m, "m")
    out = np.zeros((n_classes, m, X.shape[1]), np.float32)
    for k in range(n_classes):
        rows = np.flatnonzero((labels == k) & keep)
        if not len(rows):
            raise ValueError(f"class {k} has no image embeddings to sample references from")
        rng = np.random.default_rng([int(seed), k])
        out[k] = X[rng.choice(rows, m, replace=len(rows) < m)]
    return out


def _hard_pole(class_svm: ClassSVM | Skip, dim: int, class_name: str) -> np.ndarray | str:
    """The unit vector at the hard end of the class's raw-space direction, or why there is none."""
    if isinstance(class_svm, Skip):
        return f"no SVM: {class_svm.reason}"
    if not isinstance(class_svm, (ClassSVM, Mode)):
        raise TypeError(f"svms[{class_name!r}] must be a ClassSVM, a Mode or a Skip, got {type(class_svm).__name__}")
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
    references = check_references(references, len(references), np.asarray(image_embeds).shape[-1])
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


def tail_images(svms: Mapping[int, ClassSVM | Skip], image_embeds: np.ndarray, labels: np.ndarray,
                quantile: float = EXTENT_QUANTILE) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class with an SVM (or mode): (hard, easy), the embeddings (m, D) of its
    own images beyond ``quantile`` on each side of the direction's decision
    value, the most extreme first; m = ceil((1 - quantile) * the class's images)."""
    labels = np.asarray(labels)
    if not 0.5 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0.5, 1), got {quantile}")
    out = {}
    for k, class_svm in svms.items():
        if isinstance(class_svm, Skip):
            continue
        rows = np.asarray(image_embeds, dtype=np.float32)[labels == k]
        if not len(rows):
            raise ValueError(f"class {k} has an SVM but no image embeddings to take its tails from")
        order = np.argsort(class_svm.decision_function(rows), kind="stable")  # hardest (most negative) first
        m = max(1, int(np.ceil((1.0 - quantile) * len(rows))))
        out[k] = (normalize(rows[order[:m]], "hard tail"), normalize(rows[order[::-1][:m]], "easy tail"))
    return out


def class_poles(class_svm: ClassSVM | Skip, references_k: np.ndarray, extents: Mapping[int, tuple[float, float]] | None,
           k: int, dim: int, class_name: str) -> tuple[np.ndarray, np.ndarray] | str:
    """(hard pole, easy pole) of a class, or why it has none: the SVM's unit
    normal and its opposite (``extent`` None, the reference's walk), or the
    points its own images reach on either side (``direction_extents``)."""
    pole = _hard_pole(class_svm, dim, class_name)
    if isinstance(pole, str) or extents is None:
        return pole if isinstance(pole, str) else (pole, -pole)
    if k not in extents:
        raise ValueError(f"class {class_name!r} has an SVM but no entry in extents (direction_extents)")
    hard, easy = extents[k]
    if np.ndim(hard) == 2:   # tail_images: one real embedding per image, cycled
        return np.asarray(hard, np.float32), np.asarray(easy, np.float32)
    reference = _mean_reference(references_k)
    return rotate_towards(reference, pole, hard), rotate_towards(reference, -pole, easy)


def check_references(references: np.ndarray, n_classes: int, dim: int) -> np.ndarray:
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


def cycled(references_k: np.ndarray, n: int) -> np.ndarray:
    """n conditioning starts for one class: reference i mod m for image i."""
    return references_k[np.arange(n) % len(references_k)]


def per_image(pole: np.ndarray, n: int) -> np.ndarray:
    """A pole for n images: one (D,) vector as it is (every image walks to it),
    (m, D) tail images cycled (image i walks to tail image i mod m)."""
    return cycled(pole, n) if np.ndim(pole) == 2 else pole
