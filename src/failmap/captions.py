"""Name a failure direction in words (METHOD.md step 4).

CLIP embeds text in the same space as images, so a class's SVM can score
sentences: build a bank of candidate captions from a template, embed each,
and rank them by the SVM decision value of their shift away from the plain
class caption. The lowest are the hard captions, the highest the easy ones.
Text embedding is passed in as a callable, so nothing here loads a model.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from failmap.io import atomic_path
from failmap.svm import ClassSVM, Preprocessor

EmbedTexts = Callable[[list[str]], np.ndarray]


def _clean(text: str) -> str:
    return " ".join(text.split())


def fill_caption(template: str, noun: str, adjective: str | None = None, context: str | None = None) -> str:
    """The template with its slots filled; an empty slot (None) is dropped with its spaces."""
    try:
        text = template.format(noun=noun, adjective=adjective or "", context=context or "")
    except (KeyError, IndexError) as err:
        raise ValueError(f"caption template {template!r} may only use the slots {{adjective}}, {{noun}} and "
                         f"{{context}}; it failed with {err!r}") from None
    return _clean(text)


def caption_bank(template: str, noun: str, adjectives: Sequence[str | None] | None,
                 contexts: Sequence[str | None] | None) -> list[str]:
    """Every caption the template yields for one class.

    Each slot always also takes the empty value (None), so the bank holds the
    plain class caption (both slots empty), every single-attribute caption and
    every combination: (len(adjectives)+1) * (len(contexts)+1) captions when
    the values are distinct. Whitespace is collapsed; duplicates are dropped,
    keeping the first, and the order is fixed by the input order
    (adjective-major, empty value first).
    """
    if "{noun}" not in template:
        raise ValueError(f"caption template {template!r} has no {{noun}} slot")
    if not noun or not noun.strip():
        raise ValueError("noun must be a non-empty string")
    adjective_options = [None] + [a for a in (adjectives or []) if a is not None]
    context_options = [None] + [c for c in (contexts or []) if c is not None]
    bank: dict[str, None] = {}  # an ordered set
    for adjective in adjective_options:
        for context in context_options:
            bank.setdefault(fill_caption(template, noun, adjective, context))
    return list(bank)


def reference_caption(template: str, noun: str) -> str:
    """The plain class caption: the template with both attribute slots empty."""
    return caption_bank(template, noun, None, None)[0]


def score_captions(captions: Sequence[str], embed_texts: EmbedTexts, reference_caption: str,
                   preprocessor: Preprocessor, class_svm: ClassSVM, subtract_mean: bool = True) -> np.ndarray:
    """SVM decision value of each caption's text embedding minus the reference caption's.

    The difference cancels what every caption of the class shares (the noun,
    the "a photo of" frame, the offset between text and image embeddings) and
    keeps what the caption adds. METHOD.md says to pass it through *the same*
    preprocessing, and that is the default. Note what the mean subtraction
    does to a difference vector: -mean/std is the same for every caption, so
    before the L2 normalisation it only adds one constant to all decision
    values; the normalisation then divides each caption by its own norm,
    which can reorder captions with close scores. ``subtract_mean=False``
    skips the subtraction, making the score the cosine between the caption's
    standardised shift and the SVM weight (plus the intercept), a purely
    directional reading; it is there for comparison, not the default.

    ``embed_texts`` must return embeddings normalised the way the image
    embeddings the SVM was fitted on were (same CLIP model, same L2 norm).
    """
    captions = list(captions)
    if not captions:
        raise ValueError("captions is empty")
    if preprocessor.dim != len(class_svm.weight):
        raise ValueError(f"preprocessor has dimension {preprocessor.dim} but the SVM weight has {len(class_svm.weight)}")
    texts = captions + [reference_caption]
    embeddings = np.asarray(embed_texts(texts), dtype=np.float64)
    if embeddings.shape != (len(texts), preprocessor.dim):
        raise ValueError(f"embed_texts returned shape {embeddings.shape} for {len(texts)} texts; expected "
                         f"({len(texts)}, {preprocessor.dim}): the text embedder must be the CLIP model whose "
                         f"image embeddings the SVMs were fitted on")
    shifts = embeddings[:-1] - embeddings[-1]
    return class_svm.decision_function_preprocessed(preprocessor.transform(shifts, subtract_mean=subtract_mean))


def top_captions(captions: Sequence[str], scores, k: int) -> dict[str, list[dict]]:
    """The k hardest (lowest score, ascending) and k easiest (highest, descending)
    captions as [{"caption", "score"}]. Ties keep bank order."""
    captions = list(captions)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(captions),):
        raise ValueError(f"scores must have shape ({len(captions)},) to match captions, got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    hard = np.argsort(scores, kind="stable")[:k]
    easy = np.argsort(-scores, kind="stable")[:k]
    return {side: [{"caption": captions[i], "score": float(scores[i])} for i in order]
            for side, order in (("hard", hard), ("easy", easy))}


def names_attribute(captions: Sequence[str] | str, value: str) -> np.ndarray:
    """Whether each caption mentions ``value`` as whole words (case-insensitive):
    "grass" matches "on the grass" but not "grassland"."""
    if not value or not value.strip():
        raise ValueError("value must be a non-empty string")
    if isinstance(captions, str):
        captions = [captions]
    pattern = re.compile(rf"(?<!\w){re.escape(_clean(value))}(?!\w)", re.IGNORECASE)
    return np.array([bool(pattern.search(_clean(c))) for c in captions], dtype=bool)


def planted_attribute_hits(top_hard: Mapping[str, Sequence[str]], planted: Mapping[str, str],
                           k: int = 3) -> dict:
    """For each class with a known planted value: do its top-k hard captions name it?
    Returns {"per_class": {class: bool}, "fraction": share of those classes}."""
    per_class = {name: bool(names_attribute(list(top_hard[name])[:k], value).any())
                 for name, value in planted.items() if name in top_hard}
    fraction = float(np.mean(list(per_class.values()))) if per_class else math.nan
    return {"per_class": per_class, "fraction": fraction}


# ------------------------------------------------------------ markdown summary

@dataclass
class SummaryRow:
    """One class in the human-readable summary."""
    name: str
    balanced_accuracy: float | None = None  # test, SVM
    auroc: float | None = None              # test, SVM
    subpop_ap: float | None = None          # test, SVM, where ground truth exists
    hard: Sequence[str] = ()
    easy: Sequence[str] = ()
    planted: str | None = None              # ground-truth planted value, where known
    skip_reason: str | None = None          # set for classes without an SVM


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(x) -> str:
    return "—" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"


def summary_markdown(rows: Sequence[SummaryRow], n_captions: int = 3, title: str = "Failure directions") -> str:
    """A markdown table: per class, direction quality on test and the top hard / easy captions."""
    show_planted = any(r.planted for r in rows)
    show_ap = any(r.subpop_ap is not None for r in rows)
    header = ["class"] + (["planted"] if show_planted else []) + ["test bal. acc", "test AUROC"] \
        + (["subpop AP"] if show_ap else []) + [f"top {n_captions} hard captions", f"top {n_captions} easy captions"]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_cell(r.name)] + ([_cell(r.planted or "—")] if show_planted else [])
        cells += [_number(r.balanced_accuracy), _number(r.auroc)] + ([_number(r.subpop_ap)] if show_ap else [])
        if r.skip_reason:
            cells += [_cell(f"skipped: {r.skip_reason}"), "—"]
        else:
            cells += ["<br>".join(_cell(c) for c in list(r.hard)[:n_captions]) or "—",
                      "<br>".join(_cell(c) for c in list(r.easy)[:n_captions]) or "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary_markdown(path: str | Path, rows: Sequence[SummaryRow], n_captions: int = 3,
                           title: str = "Failure directions") -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(summary_markdown(rows, n_captions, title))
