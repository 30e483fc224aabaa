"""Every evaluation of failmap's models, in one place: what is scored, on which
images, and how the figures are summarised.

- Accuracy (the baseline's splits, ``accuracy_report``): overall, per class,
  and inside / outside a hard subpopulation.
- Fine-tuned classifiers on the test split (``evaluate_model`` /
  ``evaluate_predictions``): overall, and on the hard and easy
  subpopulations by ground truth and by the baseline's SVM
  (``svm_hard_easy_masks``); ``predict_labels`` goes through cached frozen
  features (``failmap.finetune.FrozenFeatures``) for a last-layer fine-tune.
- Decoded sets (``failmap.generated.GeneratedSet``): the baseline's accuracy
  on them (``accuracy_on_generated``), hard < neutral < easy on the
  evaluation set (``hard_neutral_easy_report``), whether the decoder drew
  the direction it was given (``decoded_decision_report``) and the class at
  all (``clip_class_predictions``, ``generator_check``).
- Zero-shot retrieval with a CLIP (``zero_shot_report``): class, colour and
  context named by a caption (the CLIP and decoder quality bars).

Models and sets are duck-typed (a classifier with ``forward`` over images in
[-1, 1] and ``fc``, an embedder with ``embed_images`` / ``embed_texts``, a
set with ``images``, ``labels``, ``rows`` and ``mask``): the failmap modules
imported here are only those whose functions it calls, so that a stage that
evaluates does not depend on the code that made what it evaluates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from failmap.captions import fill_caption
from failmap.svm import ClassSVM, Skip, decision_values
from failmap.train import predictions, to_tensor

DEFAULT_TEMPLATE = "a photo of a {adjective} {noun} {context}"


# ------------------------------------------------------------ accuracy of a classifier

def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def accuracy_report(correct: np.ndarray, labels: np.ndarray, class_names: list[str],
                    in_subpop: np.ndarray | None = None) -> dict:
    """{"accuracy", "per_class": {name: acc}} plus, given a subpopulation mask,
    "subpop": per-class accuracy inside / outside it, the per-class gap
    (rest - subpop) and their means over classes that have both."""
    correct = np.asarray(correct, dtype=float)
    out = {"accuracy": _mean(correct), "n": int(len(correct)),
           "per_class": {c: _mean(correct[labels == k]) for k, c in enumerate(class_names)}}
    if in_subpop is not None:
        per_class, gaps, subs, rests = {}, [], [], []
        for k, c in enumerate(class_names):
            sub, rest = correct[(labels == k) & in_subpop], correct[(labels == k) & ~in_subpop]
            row = {"subpop_acc": _mean(sub), "rest_acc": _mean(rest), "n_subpop": int(len(sub))}
            if len(sub) and len(rest):
                row["gap"] = row["rest_acc"] - row["subpop_acc"]
                gaps.append(row["gap"]); subs.append(row["subpop_acc"]); rests.append(row["rest_acc"])
            per_class[c] = row
        out["subpop"] = {"per_class": per_class, "mean_gap": _mean(np.array(gaps)),
                         "subpop_acc": _mean(np.array(subs)), "rest_acc": _mean(np.array(rests))}
    return out


# ------------------------------------------------------------ fine-tuned classifiers on the test split

@torch.inference_mode()
def predict_labels(model: torch.nn.Module, images: np.ndarray, device: str,
                   features=None, batch_size: int = 512) -> np.ndarray:
    """Predicted class per image; through cached features when ``features``
    holds this model's body (a last-layer fine-tune), else a full forward pass."""
    model.eval()
    if features is not None and features.body_matches(model):
        return model.fc(features(images).to(device)).argmax(1).cpu().numpy()
    out = [model(to_tensor(images[s:s + batch_size]).to(device)).argmax(1).cpu()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def svm_hard_easy_masks(decision_test: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the k test images with the lowest (hard) and highest (easy)
    baseline SVM decision value. Classes without an SVM (NaN) are in neither;
    a class with fewer than 2k images gives n // 2 to each so they never overlap."""
    decision = np.asarray(decision_test, dtype=np.float64)
    labels = np.asarray(labels)
    if decision.shape != labels.shape or decision.ndim != 1:
        raise ValueError(f"decision_test {decision.shape} and labels {labels.shape} must be 1-D of one length")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    hard, easy = np.zeros(len(labels), bool), np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero((labels == c) & np.isfinite(decision))
        take = min(int(k), len(members) // 2)
        order = members[np.argsort(decision[members], kind="stable")]
        hard[order[:take]] = True
        easy[order[len(order) - take:]] = True
    return hard, easy


def _class_mean_accuracy(correct: np.ndarray, labels: np.ndarray, mask: np.ndarray | None) -> float | None:
    """Mean over classes of the per-class accuracy inside ``mask`` (classes with
    no image in it are left out): every class weighs the same."""
    if mask is None:
        return None
    accs = [correct[(labels == c) & mask].mean() for c in np.unique(labels) if ((labels == c) & mask).any()]
    return float(np.mean(accs)) if accs else None


def evaluate_predictions(pred: np.ndarray, test_labels: np.ndarray, class_names: Sequence[str],
                         gt_subpop_mask: np.ndarray | None, svm_hard_mask: np.ndarray,
                         svm_easy_mask: np.ndarray) -> dict:
    """Test accuracy overall and on hard / easy subpopulations, from predicted labels.

    By ground truth (None without it): hard = each class's planted
    subpopulation, easy = the rest of that class. By SVM: the masks from
    ``svm_hard_easy_masks`` on the *baseline's* decision values. Subpopulation
    accuracies are means over classes (each class weighs the same).
    """
    labels = np.asarray(test_labels, dtype=np.int64)
    masks = {"pred": pred, "gt_subpop_mask": gt_subpop_mask, "svm_hard_mask": svm_hard_mask,
             "svm_easy_mask": svm_easy_mask}
    for name, m in masks.items():
        if m is not None and np.asarray(m).shape != labels.shape:
            raise ValueError(f"{name} must have shape {labels.shape} to match test_labels, got {np.asarray(m).shape}")
    gt = None if gt_subpop_mask is None else np.asarray(gt_subpop_mask, bool)
    correct = (np.asarray(pred) == labels).astype(float)
    return {
        "test_acc": float(correct.mean()),
        "per_class_acc": {c: float(correct[labels == k].mean()) for k, c in enumerate(class_names)
                          if (labels == k).any()},
        "hard_acc_gt": _class_mean_accuracy(correct, labels, gt),
        "easy_acc_gt": _class_mean_accuracy(correct, labels, None if gt is None else ~gt),
        "hard_acc_svm": _class_mean_accuracy(correct, labels, np.asarray(svm_hard_mask, bool)),
        "easy_acc_svm": _class_mean_accuracy(correct, labels, np.asarray(svm_easy_mask, bool)),
    }


def mode_hard_masks(mode_scores_test: np.ndarray, labels: np.ndarray, k: int) -> list[np.ndarray]:
    """Per mode column j (``fit_svms``'s ``test_mode_scores``: the class's j-th
    largest mode), the k test images of each class most like that mode (highest
    score); classes without a j-th mode are in none. Fixed before fine-tuning,
    like ``svm_hard_easy_masks``."""
    scores = np.asarray(mode_scores_test, dtype=np.float64)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"mode_scores_test must be (N, max_modes) with N = {len(labels)}, got {scores.shape}")
    return [svm_hard_easy_masks(-scores[:, j], labels, k)[0] for j in range(scores.shape[1])]


def mode_accuracies(pred: np.ndarray, test_labels: np.ndarray, class_names: Sequence[str],
                    hard_masks: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """Per class, per mode (``mode_0`` the largest): the accuracy of ``pred`` on
    the class's test images most like the mode (``mode_hard_masks``)."""
    labels = np.asarray(test_labels, dtype=np.int64)
    correct = np.asarray(pred) == labels
    out: dict[str, dict[str, float]] = {}
    for j, mask in enumerate(hard_masks):
        for k, name in enumerate(class_names):
            inside = (labels == k) & mask
            if inside.any():
                out.setdefault(name, {})[f"mode_{j}"] = float(correct[inside].mean())
    return out


def evaluate_model(model: torch.nn.Module, test_images: np.ndarray, test_labels: np.ndarray,
                   class_names: Sequence[str], gt_subpop_mask: np.ndarray | None, svm_hard_mask: np.ndarray,
                   svm_easy_mask: np.ndarray, device: str, features=None) -> dict:
    """``evaluate_predictions`` of the model's predictions on the test images."""
    pred = predict_labels(model, test_images, device, features)
    return evaluate_predictions(pred, test_labels, class_names, gt_subpop_mask, svm_hard_mask, svm_easy_mask)


# ------------------------------------------------------------ decoded sets: the baseline on them

def accuracy_on_generated(model, images: np.ndarray, labels: np.ndarray, device: str,
                          class_names: Sequence[str] | None = None) -> dict:
    """A classifier's accuracy and mean confidence in the true class on images
    (and per class, given ``class_names``). Confidence is reported because
    accuracy saturates: easy and neutral images can both be all correct."""
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


def hard_neutral_easy_report(model, eval_set, class_names: Sequence[str], device: str) -> dict:
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
                            svms: Mapping[int, ClassSVM | Skip], eval_set) -> dict:
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


# ------------------------------------------------------------ decoded sets: does the decoder draw the classes?

def clip_class_predictions(embed_images: Callable[[np.ndarray], np.ndarray],
                           embed_texts: Callable[[list[str]], np.ndarray],
                           class_prompts: Sequence[str], images: np.ndarray) -> np.ndarray:
    """CLIP zero-shot class of each image: the nearest of the class prompts."""
    if not len(images):
        return np.zeros(0, dtype=np.int64)
    return (embed_images(images) @ embed_texts(list(class_prompts)).T).argmax(1)


def generator_check(predicted: np.ndarray, eval_set, class_names: Sequence[str],
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


# ------------------------------------------------------------ zero-shot retrieval with a CLIP

@dataclass
class Attribute:
    """One captioned attribute of a set of images, for zero-shot retrieval.

    values: each image's value (str, (N,)); phrases: value -> the words that
    name it in a caption ("red", "on the grass"); slot: where those words go
    in the caption template ("adjective" before the noun, "context" after)."""
    values: np.ndarray
    phrases: dict[str, str]
    slot: str


def _classify(image_embeds: np.ndarray, prompt_sets: list[list[str]], embedder) -> np.ndarray:
    """Index of the best prompt set per image; a set's embedding is the
    normalised mean of its prompts' embeddings (prompt ensembling)."""
    flat = [p for prompts in prompt_sets for p in prompts]
    text = embedder.embed_texts(flat)
    bounds = np.cumsum([0] + [len(p) for p in prompt_sets])
    centres = np.stack([text[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return (image_embeds @ centres.T).argmax(1)


def zero_shot_report(embedder, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                     attributes: dict[str, Attribute] | None = None,
                     template: str = DEFAULT_TEMPLATE) -> dict:
    """Zero-shot accuracy of an embedder on labelled images.

    - class: each image against "a photo of a {class}" (the template with only
      the noun), the reference prompt the caption stage also uses.
    - each attribute (e.g. colour, context): pick the right value among all of
      the attribute's values. A value's prompt is the template with that value
      in its slot, averaged over every class noun ("a photo of a red circle",
      "a photo of a red square", ...), so that the class neither helps nor
      hurts; these are the phrasings the world's corpus captions use.
    Returns {class_accuracy, class_accuracy_per_class, <attr>_accuracy, n}.
    """
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    image_embeds = embedder.embed_images(images)
    report: dict = {"n": int(len(labels))}
    pred = _classify(image_embeds, [[fill_caption(template, c)] for c in class_names], embedder)
    report["class_accuracy"] = float((pred == labels).mean())
    report["class_accuracy_per_class"] = {c: float((pred[labels == k] == k).mean()) if (labels == k).any() else None
                                          for k, c in enumerate(class_names)}
    for name, attr in (attributes or {}).items():
        if attr.slot not in ("adjective", "context"):
            raise ValueError(f"attribute '{name}': slot must be 'adjective' or 'context', got '{attr.slot}'")
        values = list(attr.phrases)
        unknown = sorted(set(np.asarray(attr.values).tolist()) - set(values))
        if unknown:
            raise ValueError(f"attribute '{name}': values {unknown} have no phrase (known: {values})")
        prompt_sets = [[fill_caption(template, c, **{attr.slot: attr.phrases[v]}) for c in class_names]
                       for v in values]
        pred = _classify(image_embeds, prompt_sets, embedder)
        truth = np.array([values.index(v) for v in attr.values])
        report[f"{name}_accuracy"] = float((pred == truth).mean())
    return report
