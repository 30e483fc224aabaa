"""Name a failure direction in words (METHOD.md step 4).

CLIP embeds text in the same space as images, so a class's SVM can score
sentences: build a bank of candidate captions from a template, embed each,
and rank them by the SVM decision value of their shift away from the plain
class caption. The lowest are the hard captions, the highest the easy ones.
The top k of each side are chosen greedily so that they are not paraphrases
of one another (``select_diverse``), and each is told apart by which of its
slots carries its score (``slot_effects``). Where the candidates come from is
``failmap.caption_sources``. Text embedding is passed in as a callable, so
nothing here loads a model.

That is ``caption.score: direction``, the reference's scoring. The default,
``caption.score: retrieval``, scores a caption by what CLIP reads in the
class's own images instead (``retrieval_scorer``): how closely the caption's
zero-shot probability among the bank follows the direction over the class's
val images. It asks of the words only what CLIP is trained for, matching
text to images, not that a text shift point the way an image direction does.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from failmap.io import atomic_path, read_json, write_json
from failmap.svm import ClassSVM, Preprocessor

EmbedTexts = Callable[[list[str]], np.ndarray]
CAPTION_SCORES = ("direction", "retrieval")  # caption.score
HARD_CAPTIONS_FILE = "hard_captions.json"  # in the caption stage's data folder (failmap.stage.CAPTIONS_DIR)


def _clean(text: str) -> str:
    return " ".join(text.split())


# English picks the indefinite article by the next word's first *sound*; the
# first letter is right but for these openings (a "u" read "you", a silent "h").
_A_BEFORE = ("uni", "use", "usu", "uti", "ute", "ure", "eu", "ewe", "one", "once")
_AN_BEFORE = ("hour", "honest", "honour", "honor", "heir")
_ARTICLE = re.compile(r"\b([Aa]n?)(\s+)([A-Za-z][\w-]*)")


def _article_for(word: str) -> str:
    w = word.lower()
    if w.startswith(_AN_BEFORE):
        return "an"
    if w.startswith(_A_BEFORE):
        return "a"
    return "an" if w[0] in "aeiou" else "a"


def agree_articles(text: str) -> str:
    """Every indefinite article made to agree with the word after it:
    "a orange star" -> "an orange star", "an square" -> "a square"."""
    def fix(m: re.Match) -> str:
        article = _article_for(m.group(3))
        return (article.capitalize() if m.group(1)[0] == "A" else article) + m.group(2) + m.group(3)
    return _ARTICLE.sub(fix, text)


def fill_caption(template: str, noun: str, adjective: str | None = None, context: str | None = None) -> str:
    """The template with its slots filled; an empty slot (None) is dropped with
    its spaces, and the indefinite articles agree with the words that follow
    (the slot values decide between "a" and "an")."""
    try:
        text = template.format(noun=noun, adjective=adjective or "", context=context or "")
    except (KeyError, IndexError) as err:
        raise ValueError(f"caption template {template!r} may only use the slots {{adjective}}, {{noun}} and "
                         f"{{context}}; it failed with {err!r}") from None
    return agree_articles(_clean(text))


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


def caption_shifts(captions: Sequence[str], embed_texts: EmbedTexts, reference_caption: str, dim: int) -> np.ndarray:
    """Each caption's text embedding minus the reference caption's, (n, dim)."""
    captions = list(captions)
    if not captions:
        raise ValueError("captions is empty")
    texts = captions + [reference_caption]
    embeddings = np.asarray(embed_texts(texts), dtype=np.float64)
    if embeddings.shape != (len(texts), dim):
        raise ValueError(f"embed_texts returned shape {embeddings.shape} for {len(texts)} texts; expected "
                         f"({len(texts)}, {dim}): the text embedder must be the CLIP model whose "
                         f"image embeddings the SVMs were fitted on")
    return embeddings[:-1] - embeddings[-1]


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
    if preprocessor.dim != len(class_svm.weight):
        raise ValueError(f"preprocessor has dimension {preprocessor.dim} but the SVM weight has {len(class_svm.weight)}")
    shifts = caption_shifts(captions, embed_texts, reference_caption, preprocessor.dim)
    return class_svm.decision_function_preprocessed(preprocessor.transform(shifts, subtract_mean=subtract_mean))


def retrieval_scorer(image_embeds: np.ndarray, bank_embeds: np.ndarray, decision: np.ndarray,
                     logit_scale: float) -> Callable[[np.ndarray], np.ndarray]:
    """A scorer of text embeddings (m, D) -> (m,) against one failure direction, by retrieval.

    ``image_embeds`` (n, D): the class's val images; ``decision`` (n,): the
    direction's decision value on them (negative = hard); ``bank_embeds``: the
    caption bank, the candidates CLIP chooses among. A caption's score is the
    Pearson correlation, over the images, between its zero-shot probability
    p(c | x) = exp(s x.t_c) / sum over the bank of exp(s x.t_b) (s the CLIP's
    ``logit_scale``) and the decision value: negative when the caption is the
    likelier the harder the image, as a decision value is. A caption outside
    the bank (``slot_effects``' variants) is scored against the bank's
    normaliser. Correlation is scale-free, so a rare caption that tracks the
    direction closely outranks a common one that tracks it loosely.
    """
    images = np.asarray(image_embeds, dtype=np.float64)
    decision = np.asarray(decision, dtype=np.float64)
    if images.ndim != 2 or len(images) != len(decision) or len(images) < 2:
        raise ValueError(f"need (n, D) image embeddings with one decision value each, n >= 2; got "
                         f"{images.shape} and {decision.shape}")
    from scipy.special import logsumexp
    log_norm = logsumexp(logit_scale * images @ np.asarray(bank_embeds, dtype=np.float64).T, axis=1)
    centred = decision - decision.mean()
    spread = np.linalg.norm(centred)

    def score(text_embeds: np.ndarray) -> np.ndarray:
        prob = np.exp(logit_scale * images @ np.asarray(text_embeds, dtype=np.float64).T - log_norm[:, None])
        prob -= prob.mean(0)
        denom = np.linalg.norm(prob, axis=0) * spread
        return np.divide(prob.T @ centred, denom, out=np.zeros(prob.shape[1]), where=denom > 0)

    return score


def cached_embed_texts(embed_texts: EmbedTexts) -> EmbedTexts:
    """``embed_texts`` that embeds each distinct text once: a class's bank is
    scored against its SVM and every mode, and by retrieval also read for the
    diversity rule; with a large CLIP on CPU each pass costs seconds. An
    embedder this returned comes back as it is (one cache, not two)."""
    if getattr(embed_texts, "embeds_each_text_once", False):
        return embed_texts
    cache: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, np.asarray(embed_texts(missing))))
        return np.stack([cache[t] for t in texts]) if texts else np.asarray(embed_texts([]))

    embed.embeds_each_text_once = True
    return embed


def caption_scorer(bank: Sequence[str], embed_texts: EmbedTexts, reference: str, preprocessor: Preprocessor,
                   direction: ClassSVM, retrieval: tuple[np.ndarray, float] | None = None
                   ) -> Callable[[list[str]], np.ndarray]:
    """A scorer of caption texts against one direction (a ``ClassSVM`` or a
    ``modes.Mode``; negative = hard): by default the direction's decision value
    on the caption's text shift from ``reference`` (``score_captions``);
    with ``retrieval`` = (the class's val image embeddings, the CLIP's logit
    scale), ``retrieval_scorer`` among ``bank``."""
    if retrieval is None:
        return lambda texts: score_captions(texts, embed_texts, reference, preprocessor, direction)
    images, logit_scale = retrieval
    score_embeds = retrieval_scorer(images, np.asarray(embed_texts(list(bank))), direction.decision_function(images),
                                    logit_scale)
    return lambda texts: score_embeds(np.asarray(embed_texts(list(texts))))


def _check_scores(n: int, scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) to match captions, got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    return scores


def select_diverse(scores, shifts: np.ndarray | None, k: int, diversity: float, side: str = "hard") -> list[int]:
    """Indices of ``k`` captions, greedily, each the best trade-off between
    how far it lies on ``side`` and how unlike the captions already chosen it
    is (maximal marginal relevance). A caption's value is
    ``(1 - diversity) * relevance - diversity * max cosine to a chosen one``,
    with relevance its score rescaled to [0, 1] (1 = the hardest, or easiest)
    and the cosine taken between caption shifts (what each caption adds to the
    reference), so "a red X at night" and "a blue X at night" count as one
    idea. A caption whose shift is zero (the plain class caption itself)
    adds nothing to the class and is unlike nothing, so with diversity it
    comes last. The first pick is always the top-scoring caption; ``diversity``
    0 is the plain ranking (ties keep bank order)."""
    scores = np.asarray(scores, dtype=np.float64)
    if side not in ("hard", "easy"):
        raise ValueError(f"side must be 'hard' or 'easy', got {side!r}")
    if not 0 <= diversity < 1:
        raise ValueError(f"diversity must be in [0, 1), got {diversity}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    signed = -scores if side == "hard" else scores
    if diversity == 0 or shifts is None:
        return [int(i) for i in np.argsort(-signed, kind="stable")[:k]]
    shifts = np.asarray(shifts, dtype=np.float64)
    if shifts.shape[0] != len(scores):
        raise ValueError(f"shifts has {shifts.shape[0]} rows for {len(scores)} scores")
    span = signed.max() - signed.min()
    relevance = (signed - signed.min()) / span if span > 0 else np.zeros_like(signed)
    norms = np.linalg.norm(shifts, axis=1)
    unit = np.divide(shifts, norms[:, None], out=np.zeros_like(shifts), where=norms[:, None] > 0)
    redundancy = np.zeros(len(scores))
    chosen: list[int] = []
    available = np.ones(len(scores), dtype=bool)
    empty = norms == 0
    first = int(np.argmax(relevance))  # the top caption, empty or not, as with diversity 0
    for step in range(min(int(k), len(scores))):
        value = (1 - diversity) * relevance - diversity * redundancy
        value = np.where(empty, value - 2.0, value)  # below every caption with content (value is in [-1, 1])
        if step == 0:
            value = np.where(np.arange(len(scores)) == first, np.inf, value)
        value = np.where(available, value, -np.inf)
        best = int(np.argmax(value))  # the first of equal values: bank order
        chosen.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, unit @ unit[best])
    return chosen


def top_captions(captions: Sequence[str], scores, k: int, shifts: np.ndarray | None = None,
                 diversity: float = 0.0) -> dict[str, list[dict]]:
    """The k hardest (lowest score first) and k easiest (highest first)
    captions as [{"caption", "score"}], chosen by ``select_diverse`` (with
    ``diversity`` 0, the default, the plain ranking; ties keep bank order)."""
    captions = list(captions)
    scores = _check_scores(len(captions), scores)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    return {side: [{"caption": captions[i], "score": float(scores[i])}
                   for i in select_diverse(scores, shifts, k, diversity, side)]
            for side in ("hard", "easy")}


def slot_effects(candidates: Sequence, scores, side: str, template: str, class_name: str,
                 score_texts: Callable[[list[str]], np.ndarray]) -> list[dict]:
    """Which slot carries each template-made caption's score: per filled slot,
    how much less hard (``side`` hard) or easy the caption becomes when that
    slot is put back to the class's plain reference (the noun to the class
    name, an adjective or context to nothing), as the reference method splits
    captions into noun / adjective / preposition. Returns, per candidate,
    {"carried_by": the slot with the largest positive effect or None,
    "slot_effect": {slot: effect}}; free-text captions (no slots) get
    {"carried_by": None, "slot_effect": {}}. ``score_texts`` scores captions
    with the class SVM (``score_captions`` bound to the class)."""
    sign = {"hard": 1.0, "easy": -1.0}[side]
    variants: list[tuple[int, str, str]] = []
    for i, c in enumerate(candidates):
        slots = c.slots
        if "noun" in slots and c.noun != class_name:
            variants.append((i, "noun", fill_caption(template, class_name, c.adjective, c.context)))
        if "adjective" in slots:
            variants.append((i, "adjective", fill_caption(template, c.noun, None, c.context)))
        if "context" in slots:
            variants.append((i, "context", fill_caption(template, c.noun, c.adjective, None)))
    varied = np.asarray(score_texts([v for _, _, v in variants]), dtype=np.float64) if variants else []
    out = [{"carried_by": None, "slot_effect": {}} for _ in candidates]
    for (i, slot, _), value in zip(variants, varied):
        out[i]["slot_effect"][slot] = float(sign * (value - float(scores[i])))
    for entry in out:
        if entry["slot_effect"]:
            slot, effect = max(entry["slot_effect"].items(), key=lambda kv: kv[1])
            entry["carried_by"] = slot if effect > 0 else None
    return out


def describe_class(bank: Sequence, embed_texts: EmbedTexts, template: str, class_name: str,
                   preprocessor: Preprocessor, class_svm: ClassSVM, k: int, diversity: float,
                   retrieval: tuple[np.ndarray, float] | None = None) -> dict:
    """One class's captions: the ``k`` hard and easy ones (``top_captions`` with
    ``diversity``), each with its ``source`` and the slot carrying its score
    (``slot_effects``), plus ``ranked_hard``, the plain top-k hard ranking.
    ``bank`` holds ``caption_sources.Candidate`` s (text, source and slots).
    ``class_svm`` is the direction (a ``ClassSVM`` or a ``modes.Mode``);
    ``retrieval`` = (the class's val image embeddings, the CLIP's logit scale)
    scores the captions by ``retrieval_scorer`` instead of by the direction's
    decision value on their text shifts (which still set the diversity)."""
    texts = [b.text for b in bank]
    reference = reference_caption(template, class_name)
    embed_texts = cached_embed_texts(embed_texts)
    shifts = caption_shifts(texts, embed_texts, reference, preprocessor.dim)
    score_texts = caption_scorer(texts, embed_texts, reference, preprocessor, class_svm, retrieval)
    scores = score_texts(texts)
    top = top_captions(texts, scores, k, shifts=shifts, diversity=diversity)
    index = {t: i for i, t in enumerate(texts)}

    for side, chosen in top.items():
        picked = [bank[index[t["caption"]]] for t in chosen]
        effects = slot_effects(picked, [t["score"] for t in chosen], side, template, class_name, score_texts)
        for entry, candidate, effect in zip(chosen, picked, effects):
            entry.update(source=candidate.source, **effect)
    return {**top, "ranked_hard": [texts[i] for i in select_diverse(scores, None, k, 0.0, "hard")]}


def write_hard_captions(path: str | Path, tops: Mapping[str, Mapping],
                        mode_tops: Mapping[str, Sequence[Mapping]] | None = None) -> None:
    """The hard captions generate decodes: ``{"svm": {class: [caption, ...]},
    "modes": {class: [{"share", "hard": [caption, ...]}, ...]}}``, hardest
    first; a class's modes largest share first (``mode_tops``: per class, one
    ``describe_class`` result per mode with its ``share``)."""
    write_json(path, {"svm": {name: [t["caption"] for t in top["hard"]] for name, top in tops.items()},
                      "modes": {name: [{"share": float(m["share"]), "hard": [t["caption"] for t in m["hard"]]}
                                       for m in modes] for name, modes in (mode_tops or {}).items()}})


def _read_written(path: str | Path, classes: Sequence[str]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hard captions {path} not found (run the caption stage first)")
    written = read_json(path)
    if not isinstance(written, dict) or set(written) != {"svm", "modes"}:
        raise ValueError(f"{path} must hold the keys 'svm' and 'modes' (failmap.captions.write_hard_captions): "
                         f"re-run the caption stage")
    unknown = sorted((set(written["svm"]) | set(written["modes"])) - set(classes))
    if unknown:
        raise ValueError(f"{path} has captions for {unknown}, which are not classes of the prepared data "
                         f"({', '.join(classes)}): re-run the caption stage")
    return written


def read_hard_captions(path: str | Path, classes: Sequence[str]) -> dict[int, list[str]]:
    """{label: hard captions of the class SVM} of the classes ``write_hard_captions``
    wrote (a class without an SVM has none); refuses a class the data lack."""
    written = _read_written(path, classes)["svm"]
    return {k: list(written[name]) for k, name in enumerate(classes) if name in written}


def read_mode_captions(path: str | Path, classes: Sequence[str]) -> dict[int, list[tuple[float, list[str]]]]:
    """{label: [(share, hard captions), ...] per mode, largest share first} of the
    classes with modes (``write_hard_captions``); refuses a class the data lack."""
    written = _read_written(path, classes)["modes"]
    return {k: [(float(m["share"]), list(m["hard"])) for m in written[name]]
            for k, name in enumerate(classes) if name in written}


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


def mode_planted_hits(mode_hard: Mapping[str, Sequence[Sequence[str]]], planted: Mapping[str, str],
                      k: int = 3) -> dict:
    """``planted_attribute_hits`` for classes with several modes (``mode_hard``:
    per class, each mode's hard captions, largest share first): ``top_mode``
    asks the largest mode's top-k, ``any_mode`` whether some mode's top-k name
    the value (a planted subpopulation matched with its best mode, as dcbench does)."""
    top = planted_attribute_hits({n: m[0] for n, m in mode_hard.items() if m}, planted, k)
    per_class = {name: any(bool(names_attribute(list(hard)[:k], planted[name]).any()) for hard in modes)
                 for name, modes in mode_hard.items() if name in planted and modes}
    fraction = float(np.mean(list(per_class.values()))) if per_class else math.nan
    return {"top_mode": top, "any_mode": {"per_class": per_class, "fraction": fraction}}


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
    hard_carried_by: Sequence[str | None] = ()  # per hard caption, the slot carrying its score (slot_effects)
    easy_carried_by: Sequence[str | None] = ()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(x) -> str:
    return "—" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"


def _captions_cell(captions: Sequence[str], carried_by: Sequence[str | None], n: int) -> str:
    """The first n captions, one per line, each followed by the slot that carries it, where known."""
    carried = list(carried_by) + [None] * len(captions)
    return "<br>".join(_cell(c) + (f" *({carried[i]})*" if carried[i] else "")
                       for i, c in enumerate(list(captions)[:n])) or "—"


def summary_markdown(rows: Sequence[SummaryRow], n_captions: int = 3, title: str = "Failure directions") -> str:
    """A markdown table: per class, direction quality on test and the top hard / easy captions,
    each marked with the slot (noun / adjective / context) that carries its score where known."""
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
            cells += [_captions_cell(r.hard, r.hard_carried_by, n_captions),
                      _captions_cell(r.easy, r.easy_carried_by, n_captions)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary_markdown(path: str | Path, rows: Sequence[SummaryRow], n_captions: int = 3,
                           title: str = "Failure directions") -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(summary_markdown(rows, n_captions, title))
