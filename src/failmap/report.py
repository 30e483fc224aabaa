"""The failure report: one offline HTML page that a person reads top to bottom
(issue 15, item 5).

Everything on it comes from outputs the pipeline already wrote; nothing is
recomputed but the order of the real test images by their SVM decision value
(``data/svm/decisions.npz``, ranked with ``failmap.finetune.svm_hard_easy_masks``
as the evaluate stage ranks them) and by each mode's score:

- a header: data source, classes, baseline test accuracy, the planted gap,
  the generator check (``metrics/generated.json``) and ``synthetic_trusted``
  (``metrics/evaluate.json``);
- one section per class with an SVM: its planted gap (ground truth, where the
  source has it), how well the SVM finds the planted subpopulation against
  the baseline's confidence, the top hard / easy captions with their scores,
  the hardest and easiest real test images, and the decoded hard / neutral /
  easy evaluation images at every alpha with the baseline's accuracy on them;
  classes without an SVM are listed with the reason;
- per class, one subsection per failure mode (``metrics/modes.json``,
  largest share first): its share of the class's val errors, its AP of the
  planted subpopulation (ground truth, where known), its own hard / easy
  captions (``metrics/captions.json`` ``modes``), the real test images most
  and least like it (by its score in ``data/svm/decisions.npz``
  ``test_mode_scores``), every fine-tuning arm's accuracy on the test images
  most like it (``metrics/evaluate.json`` ``by_mode``) and, when ``modes.drive:
  modes`` decoded them, its hard / neutral / easy evaluation images with the
  baseline's accuracy on them (``metrics/generated.json`` ``eval_by_mode``);
- the fine-tuning arms: per class where ``metrics/evaluate.json`` has per-class
  figures, else one table for all classes (mean ± std over seeds).

Images are inline PNG data URIs drawn by ``failmap.plots.image_grid``
(nearest-neighbour upscaling): the page needs no network, no JavaScript and
no other file. The same inputs give the same bytes.
"""
from __future__ import annotations

import base64
import html
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from failmap.data import Split, load_ground_truth, load_meta, load_split, subpop_mask
from failmap.evaluation import svm_hard_easy_masks
from failmap.finetune import ARMS, CONTROL_ARM, GENERATED_ARMS
from failmap.generated import EVAL_SET, GeneratedSet, read_manifest
from failmap.io import atomic_path, read_json
from failmap.plots import image_grid
from failmap.predictions import load_predictions
from failmap.stage import BASELINE_PREDICTIONS, GENERATED, METRICS, PREPARED, SVM_DIR

REPORT = "reports/failure_report.html"
STRIP = 8            # hardest / easiest real test images shown per class
PER_ROW = 8          # decoded evaluation images shown per (class, side, alpha)
UPSCALE = 3          # 32 px images drawn 96 px wide
TOP_CAPTIONS = 5     # hard / easy captions listed per class

# Every file the report reads (relative to the repository root) and the stage
# that writes it: a missing one is named with its stage. ground_truth.csv is
# optional (sources without ground truth have none).
INPUTS = {
    f"{PREPARED}/meta.json": "prepare",
    f"{PREPARED}/test.npz": "prepare",
    f"{BASELINE_PREDICTIONS}/test.csv": "train_baseline",
    f"{SVM_DIR}/decisions.npz": "fit_svms",
    f"{GENERATED}/manifest.csv": "generate",
    f"{GENERATED}/{EVAL_SET}.npz": "generate",
    f"{METRICS}/baseline.json": "train_baseline",
    f"{METRICS}/svm.json": "fit_svms",
    f"{METRICS}/modes.json": "fit_svms",
    f"{METRICS}/captions.json": "caption",
    f"{METRICS}/generated.json": "generate",
    f"{METRICS}/evaluate.json": "evaluate",
}

# The arm metrics of metrics/evaluate.json shown, with their column headings.
ARM_COLUMNS = (("hard_acc_gt", "planted subpopulation (ground truth)"),
               ("hard_acc_svm", "SVM-hardest test images"),
               ("test_acc", "overall test accuracy"))


class MissingInputError(FileNotFoundError):
    """An input of the report does not exist; the message names the file and its stage."""


@dataclass
class ReportInputs:
    """What the page is built from, already loaded (the unit tests build it in memory)."""
    meta: dict
    test: Split
    test_decision: np.ndarray       # (N_test,) baseline SVM decision value, NaN for classes without an SVM
    test_correct: np.ndarray        # (N_test,) 1 where the baseline is right
    test_subpop: np.ndarray | None  # (N_test,) planted subpopulation (ground truth), None without it
    test_mode_scores: np.ndarray    # (N_test, max_modes) each image's score under its class's modes, NaN where none
    eval_set: GeneratedSet
    baseline: dict                  # metrics/baseline.json
    svm: dict                       # metrics/svm.json
    captions: dict                  # metrics/captions.json
    generated: dict                 # metrics/generated.json
    evaluate: dict                  # metrics/evaluate.json
    modes: dict                     # metrics/modes.json


# ------------------------------------------------------------ loading

def check_inputs(root: str | Path = ".") -> None:
    """Raise ``MissingInputError`` naming every missing input and the stage that writes it."""
    root = Path(root)
    missing = [f"{path} (written by the '{stage}' stage: dvc repro {stage})"
               for path, stage in INPUTS.items() if not (root / path).exists()]
    if missing:
        raise MissingInputError("the report stage needs files that do not exist:\n  " + "\n  ".join(missing))


def load_report_inputs(root: str | Path = ".") -> ReportInputs:
    """Read every input from the stage paths under ``root`` (checked first, see ``check_inputs``)."""
    check_inputs(root)
    root = Path(root)
    prepared = root / PREPARED
    meta, test = load_meta(prepared), load_split(prepared, "test")
    with np.load(root / SVM_DIR / "decisions.npz") as z:
        if not np.array_equal(z["test_ids"], test.ids):
            raise SystemExit(f"{SVM_DIR}/decisions.npz does not match the test split: re-run fit_svms")
        decision, mode_scores = z["test_decision"], z["test_mode_scores"]
    predictions = load_predictions(root / BASELINE_PREDICTIONS / "test.csv")
    if not np.array_equal(predictions["id"], test.ids):
        raise SystemExit(f"{BASELINE_PREDICTIONS}/test.csv does not match the test split: re-run train_baseline")
    metrics = {name: read_json(root / METRICS / f"{name}.json")
               for name in ("baseline", "svm", "modes", "captions", "generated", "evaluate")}
    eval_split = load_split(root / GENERATED, EVAL_SET)
    rows = [r for r in read_manifest(root / GENERATED / "manifest.csv") if r["set"] == EVAL_SET]
    eval_set = GeneratedSet(EVAL_SET, eval_split.images, eval_split.labels, rows,
                            dict(metrics["generated"].get("eval", {}).get("skipped", {})))
    return ReportInputs(meta=meta, test=test, test_decision=decision, test_mode_scores=mode_scores,
                        test_correct=predictions["correct"],
                        test_subpop=subpop_mask(load_ground_truth(prepared), test.ids), eval_set=eval_set,
                        **metrics)


# ------------------------------------------------------------ formatting

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _pct(x, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f} %"


def _num(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _mean_std(entry: dict | None) -> str:
    if not entry or entry.get("mean") is None:
        return "—"
    std = entry.get("std")
    return _pct(entry["mean"]) + ("" if std is None else f" ± {100 * std:.1f}")


def _delta(x) -> str:
    return "" if x is None else f' <span class="delta">({100 * x:+.1f})</span>'


def png_data_uri(images: np.ndarray, labels: Sequence[str] | None = None, ncol: int = 8,
                 upscale: int = UPSCALE) -> str:
    """uint8 (N, H, W, 3) images as one ``image_grid`` PNG, base64 in a data URI."""
    with tempfile.TemporaryDirectory() as folder:
        path = image_grid(images, Path(folder) / "grid.png", ncol=ncol, upscale=upscale,
                          labels=None if labels is None else list(labels))
        data = path.read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(images: np.ndarray, alt: str, labels: Sequence[str] | None = None) -> str:
    return f'<img alt="{_e(alt)}" src="{png_data_uri(images, labels, ncol=len(images))}">'


def _mark_planted(caption: str, phrase: str | None) -> str:
    """The caption, escaped, with the planted phrase highlighted."""
    if not phrase or phrase not in caption:
        return _e(caption)
    before, _, after = caption.partition(phrase)
    return f"{_e(before)}<mark>{_e(phrase)}</mark>{_e(after)}"


# ------------------------------------------------------------ sections

CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222; margin: 24px auto;
       max-width: 1140px; padding: 0 16px; line-height: 1.4; background: #fff; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #ccc; padding-bottom: 4px; margin-top: 40px; }
h3 { margin: 22px 0 6px; font-size: 1.02em; } h4 { margin: 16px 0 4px; font-size: 0.96em; }
.mode { border-left: 3px solid #ccd; padding-left: 12px; margin: 10px 0 18px; }
.lede, .note { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { padding: 4px 10px; text-align: left; vertical-align: middle; border-bottom: 1px solid #e4e4e4; }
table.facts th { font-weight: normal; color: #555; width: 330px; }
table.arms td.num, table.arms th.num { text-align: right; white-space: nowrap; }
table.arms th.head { white-space: normal; max-width: 170px; } table.arms td.arm { white-space: nowrap; }
.verdict { font-weight: bold; padding: 1px 8px; border-radius: 3px; }
.good { background: #d9f2dd; color: #135c1f; } .bad { background: #fbdcdc; color: #8a1111; }
.warning { background: #fff3cd; border-left: 5px solid #e0a800; padding: 8px 12px; margin: 12px 0; }
.tag { font-size: 0.7em; font-weight: normal; background: #eef; color: #335; padding: 2px 8px;
       border-radius: 3px; vertical-align: middle; margin-left: 8px; }
.delta { color: #666; font-size: 0.9em; }
.captions { display: flex; gap: 40px; } .captions ol { margin: 4px 0; padding-left: 22px; }
.captions li { font-family: "DejaVu Sans Mono", monospace; font-size: 0.88em; }
.captions .score { color: #777; }
mark { background: #ffe58a; }
img { image-rendering: pixelated; display: block; }
table.walk td.side { white-space: nowrap; font-size: 0.9em; }
table.walk td.acc { white-space: nowrap; font-size: 0.9em; }
tr.neutral td { background: #f4f4f4; }
.hard-side { color: #8a1111; } .easy-side { color: #135c1f; }
nav a { margin-right: 12px; }
table.overview th { font-size: 0.8em; vertical-align: bottom; max-width: 120px; }
table.overview td { font-size: 0.9em; } table.overview td.num { text-align: right; }
"""


def _header(inp: ReportInputs) -> str:
    meta, classes = inp.meta, inp.meta["classes"]
    test = inp.baseline.get("test", {})
    subpop = test.get("subpop")
    check = inp.generated["generator_check"]
    trusted = check["trusted"]
    synthetic = inp.evaluate.get("synthetic_trusted")
    skipped = inp.svm.get("skipped", {})
    rows = [("data source", _e(meta.get("source", "?"))),
            ("classes", f"{len(classes)}: " + ", ".join(_e(c) for c in classes)),
            ("test images", _e(len(inp.test))),
            ("baseline test accuracy", _pct(test.get("accuracy")))]
    if subpop:
        rows.append(("planted subpopulations (ground truth, test)",
                     f"baseline accuracy {_pct(subpop['subpop_acc'])} inside vs {_pct(subpop['rest_acc'])} in the "
                     f"rest of each class: mean gap <b>{100 * subpop['mean_gap']:.1f} points</b>"))
    else:
        rows.append(("planted subpopulations", "none known (this source has no ground truth)"))
    rows.append(("classes with an SVM",
                 f"{len(classes) - len(skipped)} of {len(classes)}"
                 + (f" (skipped: {', '.join(_e(c) for c in skipped)})" if skipped else "")))
    arms = ", ".join(f"{_e(a)} {_pct(v, 0)}" for a, v in sorted(check.get("arms_clip_class_accuracy", {}).items()))
    verdict = ('<span class="verdict good">trusted</span>' if trusted
               else '<span class="verdict bad">NOT trusted</span>')
    rows.append(("generator check (metrics/generated.json)",
                 f"{verdict} CLIP recognises the class of {_pct(check.get('neutral_clip_class_accuracy'), 0)} of "
                 f"the {check.get('n', '?')} neutral decoded images (threshold {_pct(check['threshold'], 0)})"
                 + (f"; training arms: {arms}" if arms else "")
                 + (f"; below threshold: {', '.join(_e(a) for a in check['untrusted_arms'])}"
                    if check.get("untrusted_arms") else "")))
    rows.append(("synthetic_trusted (metrics/evaluate.json)",
                 "—" if synthetic is None else
                 ('<span class="verdict good">yes</span>' if synthetic else '<span class="verdict bad">no</span>')))
    out = ['<h1>Failure report</h1>',
           '<p class="lede">Where the baseline classifier fails, class by class: the planted failure (where the '
           'source knows it), whether the SVM failure direction finds it, the captions that name it, the real '
           'and decoded images on either side of it, and what each fine-tuning arm did about it.</p>',
           '<table class="facts">'] + [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows] + ["</table>"]
    if not trusted or synthetic is False:
        out.append('<div class="warning">The generator check failed: the decoder does not draw the classes '
                   'reliably, so the decoded images below may not show their class, and the figures of the '
                   f'synthetic arms ({", ".join(GENERATED_ARMS)}) are untrusted.</div>')
    links = [f'<a href="#class-{_e(c)}">{_e(c)}</a>' for c in classes if c not in skipped]
    if skipped:
        links.append('<a href="#skipped">skipped classes</a>')
    links.append('<a href="#arms">fine-tuning arms</a>')
    out.append("<nav>Contents: " + " ".join(links) + "</nav>")
    return "\n".join(out)


def _overview(inp: ReportInputs) -> str:
    """One row per class: the planted failure, whether the SVM finds it and the captions name it."""
    test = inp.baseline.get("test", {})
    gaps = (test.get("subpop") or {}).get("per_class", {})
    hits = inp.captions.get("planted_in_top3_hard", {}).get("per_class", {})
    skipped = inp.svm.get("skipped", {})
    recognised = inp.generated["generator_check"].get("per_class", {})
    rows = []
    for name in inp.meta["classes"]:
        planted = inp.meta.get("planted", {}).get(name, {}).get("phrase")
        gap = gaps.get(name)
        q = inp.svm.get("per_class", {}).get(name, {})
        ap_svm, ap_conf = q.get("svm", {}).get("subpop_ap"), q.get("confidence", {}).get("subpop_ap")
        top = inp.captions.get("top", {}).get(name, {}).get("hard", [])
        fitted = inp.modes.get("per_class", {}).get(name, {})
        shares = " / ".join(_pct(fitted[f"mode_{j}"]["share"], 0) for j in range(int(fitted.get("n_modes", 0))))
        link = (f'<a href="#skipped">{_e(name)}</a> (no SVM)' if name in skipped
                else f'<a href="#class-{_e(name)}">{_e(name)}</a>')
        cells = [link, _e(planted) if planted else "—", _pct(test.get("per_class", {}).get(name)),
                 "—" if not gap else f"{100 * gap['gap']:.1f}", _num(ap_svm), _num(fitted.get("best_subpop_ap")),
                 _num(ap_conf), shares or "—",
                 "—" if name not in hits else ("yes" if hits[name] else "<b>no</b>"),
                 _mark_planted(top[0]["caption"], planted) if top else "—", _pct(recognised.get(name), 0)]
        numeric = {2, 3, 4, 5, 6, 10}
        rows.append("<tr>" + "".join(f'<td class="num">{v}</td>' if i in numeric else f"<td>{v}</td>"
                                     for i, v in enumerate(cells)) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in (
        "class", "planted (ground truth)", "baseline test acc.", "planted gap (points)", "AP: SVM",
        "AP: best failure mode", "AP: confidence", "failure modes: share of val errors", "planted phrase in top 3 hard captions", "top hard caption",
        "neutral decoded images CLIP recognises"))
    return ('<h2 id="overview">At a glance</h2><p class="note">AP: average precision of the planted '
            'subpopulation when the class\'s test images are ranked hardest first (by SVM decision value, by the '
            'score of the class\'s best-matching failure mode, or by the baseline\'s confidence); random ranking scores about the subpopulation\'s share.</p>'
            f'<table class="overview"><tr>{head}</tr>{"".join(rows)}</table>')


def _facts(inp: ReportInputs, name: str) -> str:
    test = inp.baseline.get("test", {})
    rows = [("baseline test accuracy on the class", _pct(test.get("per_class", {}).get(name)))]
    gap = (test.get("subpop") or {}).get("per_class", {}).get(name)
    if gap:
        rows.append(("planted subpopulation (ground truth, test)",
                     f"accuracy {_pct(gap['subpop_acc'])} on its {gap['n_subpop']} images vs "
                     f"{_pct(gap['rest_acc'])} on the rest: gap <b>{100 * gap['gap']:.1f} points</b>"))
    quality = inp.svm.get("per_class", {}).get(name, {})
    svm, conf, rnd = (quality.get(k, {}) for k in ("svm", "confidence", "random"))
    if svm.get("subpop_ap") is not None:
        better = "" if conf.get("subpop_ap") is None else (
            ' <span class="verdict good">SVM ahead</span>' if svm["subpop_ap"] > conf["subpop_ap"]
            else ' <span class="verdict bad">confidence ahead</span>')
        rows.append(("finding it: average precision of the planted subpopulation, test images ranked hardest "
                     "first", f"SVM <b>{_num(svm['subpop_ap'])}</b> · baseline confidence "
                     f"{_num(conf.get('subpop_ap'))} · random {_num(rnd.get('subpop_ap'))}{better}"))
    if svm:
        rows.append(("SVM flags the baseline's test errors",
                     f"AUROC {_num(svm.get('auroc'))} (confidence {_num(conf.get('auroc'))}), balanced accuracy "
                     f"{_num(svm.get('balanced_accuracy'))}"))
    hits = inp.captions.get("planted_in_top3_hard", {}).get("per_class", {})
    if name in hits:
        rows.append(("naming it: planted phrase among the top 3 hard captions", "yes" if hits[name] else "<b>no</b>"))
    recognised = inp.generated["generator_check"].get("per_class", {}).get(name)
    if recognised is not None:
        rows.append(("generator check: neutral decoded images CLIP recognises as the class", _pct(recognised, 0)))
    return '<table class="facts">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _captions(inp: ReportInputs, name: str, planted: str | None) -> str:
    top = inp.captions.get("top", {}).get(name)
    if not top:
        return '<p class="note">No captions for this class in metrics/captions.json.</p>'
    note = (f' The planted phrase <mark>{_e(planted)}</mark> is highlighted.' if planted else "")
    return ('<h3>Captions that score hardest and easiest</h3><p class="note">Score: the SVM decision value of the '
            f'caption\'s text embedding minus the reference caption\'s.{note}</p>' + _caption_lists(top, planted))


def _real_strip(inp: ReportInputs, k: int) -> str:
    labels = inp.test.labels
    hard, easy = svm_hard_easy_masks(inp.test_decision, labels, STRIP)
    decision = inp.test_decision
    out = ['<h3>Real test images, ranked by the SVM decision value</h3>',
           '<p class="note">Under each image: its decision value; <b>✗</b> the baseline gets it wrong'
           + ('; <b>P</b> it is in the planted subpopulation (ground truth)' if inp.test_subpop is not None else "")
           + '.</p>']
    for side, mask, descending in (("hard", hard, False), ("easy", easy, True)):
        idx = np.flatnonzero(mask & (labels == k))
        if not len(idx):
            continue
        idx = idx[np.argsort(-decision[idx] if descending else decision[idx], kind="stable")]
        title = "hardest (lowest decision value)" if side == "hard" else "easiest (highest decision value)"
        out.append(_scored_images(inp, idx, decision, side, title, f"{side} real test images"))
    return "\n".join(out)


def _scored_images(inp: ReportInputs, idx: np.ndarray, scores: np.ndarray, side: str, title: str, alt: str) -> str:
    """A titled strip of test images ``idx``, each with its score, ✗ when the baseline is wrong and P
    when it is in the planted subpopulation."""
    cells = [f"{scores[i]:+.2f}" + (" ✗" if not inp.test_correct[i] else "")
             + (" P" if inp.test_subpop is not None and inp.test_subpop[i] else "") for i in idx]
    wrong = int((inp.test_correct[idx] == 0).sum())
    planted = "" if inp.test_subpop is None else f", {int(inp.test_subpop[idx].sum())} planted"
    return (f'<p><b class="{side}-side">{len(idx)} {title}</b>: baseline wrong on {wrong}{planted}</p>\n'
            + _img(inp.test.images[idx], alt, cells))


def _walk_table(inp: ReportInputs, name: str, k: int, mode: int | None, accuracy_of) -> str | None:
    """Rows hard (largest alpha first) / neutral / easy of the class's decoded
    evaluation images steered by ``mode`` (None: the class SVM; the neutral row
    is shared), each with ``accuracy_of(side, alpha)``; None when there are none."""
    ev = inp.eval_set
    steered = [r for r in ev.rows if r["label"] == k and r["side"] != "neutral" and r.get("mode") == mode]
    if not steered:
        return None
    alphas = sorted({r["alpha"] for r in steered})
    order = [("hard", a) for a in reversed(alphas)] + [("neutral", None)] + [("easy", a) for a in alphas]
    out = ['<table class="walk">']
    for side, alpha in order:
        where = dict(label=k, side=side) if alpha is None else dict(label=k, side=side, alpha=alpha, mode=mode)
        idx = np.flatnonzero(ev.mask(**where))
        if not len(idx):
            continue
        idx = idx[np.argsort([ev.rows[i]["noise_index"] for i in idx], kind="stable")]
        label = "neutral, α = 0" if side == "neutral" else f"{side}, α = {alpha:g}"
        alt = f"{name} decoded {label}" + ("" if mode is None else f" (mode {mode})")
        out.append(f'<tr class="{side}"><td class="side"><b class="{side}-side">{_e(label)}</b></td>'
                   f'<td>{_img(ev.images[idx[:PER_ROW]], alt)}</td>'
                   f'<td class="acc">baseline accuracy<br><b>{_pct(accuracy_of(side, alpha), 0)}</b> of '
                   f'{len(idx)}</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _eval_walk(inp: ReportInputs, name: str, k: int) -> str:
    ev, acc = inp.eval_set, inp.generated.get("eval", {})

    def accuracy_of(side, alpha):
        group = acc.get("neutral", {}) if side == "neutral" else \
            acc.get("alphas", {}).get(f"alpha_{alpha:g}", {}).get(side, {})
        return group.get("per_class", {}).get(name)

    table = _walk_table(inp, name, k, None, accuracy_of)
    if table is None:
        steered = any(r["label"] == k and r.get("mode") is not None for r in ev.rows)
        reason = ("decoded along each failure mode (modes.drive: modes): see the modes below" if steered
                  else ev.skipped.get(name, "no evaluation images for this class"))
        return f'<h3>Decoded evaluation images</h3><p class="note">{_e(reason)}</p>'
    return "\n".join(['<h3>Decoded evaluation images: from the hard side to the easy side</h3>',
                      f'<p class="note">Each row: the first {PER_ROW} images decoded from the class reference '
                      'embedding moved by α along the SVM direction towards its hard (failure) or easy side; neutral '
                      'is α = 0. Image i of every row starts from the same noise, so a column shows one draw walking '
                      'across the direction. Right: the baseline\'s accuracy on all images of the row.</p>', table])


def _caption_lists(top: dict, planted: str | None) -> str:
    lists = []
    for side, title in (("hard", "hardest (most negative score: the failure side)"),
                        ("easy", "easiest (most positive score)")):
        items = "".join(f'<li>{_mark_planted(t["caption"], planted)} <span class="score">{t["score"]:+.3f}</span></li>'
                        for t in top.get(side, [])[:TOP_CAPTIONS])
        lists.append(f'<div><b class="{side}-side">{title}</b><ol>{items}</ol></div>')
    return f'<div class="captions">{"".join(lists)}</div>'


def _mode_strip(inp: ReportInputs, k: int, j: int) -> str:
    """The class's real test images most and least like mode j (by its score)."""
    scores = inp.test_mode_scores[:, j] if inp.test_mode_scores.shape[1] > j else np.full(len(inp.test), np.nan)
    idx = np.flatnonzero((inp.test.labels == k) & np.isfinite(scores))
    if not len(idx):
        return '<p class="note">No test images scored by this mode.</p>'
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    out = []
    for side, chosen in (("hard", idx[:STRIP]), ("easy", idx[::-1][:STRIP])):
        title = "most like the mode (highest score)" if side == "hard" else "least like it (lowest score)"
        out.append(_scored_images(inp, chosen, scores, side, title, f"{side} real test images of mode {j}"))
    return "\n".join(out)


def _mode_arms(inp: ReportInputs, name: str, j: int) -> str:
    """Every arm's accuracy on the class's test images most like mode j (metrics/evaluate.json ``by_mode``)."""
    by_arm = inp.evaluate.get("by_mode", {}).get(name, {}).get(f"mode_{j}")
    if not by_arm:
        return '<p class="note">No fine-tuning figures for this mode in metrics/evaluate.json (by_mode).</p>'
    arms = _ordered_arms(by_arm)
    heads = "".join(f"<th>{_e(arm)}</th>" for arm in arms)
    cells = "".join(f'<td class="num">{_mean_std(by_arm[arm])}{_delta(by_arm[arm].get("delta_vs_none"))}</td>'
                    for arm in arms)
    return ('<p class="note">Every arm on the class\'s test images most like this mode (the evaluate stage\'s '
            '<code>evaluate.k</code> highest-scoring ones, fixed before fine-tuning): accuracy, mean ± std over '
            'fine-tuning seeds, (points over none):</p>'
            f'<table><tr>{heads}</tr><tr>{cells}</tr></table>')


def _modes_section(inp: ReportInputs, name: str, k: int, planted: str | None) -> str:
    """One subsection per failure mode of the class, largest share first."""
    fitted = inp.modes.get("per_class", {}).get(name)
    if not fitted:
        reason = inp.modes.get("skipped", {}).get(name, "not in metrics/modes.json")
        return f'<h3>Failure modes</h3><p class="note">No failure modes: {_e(reason)}</p>'
    n_modes = int(fitted["n_modes"])
    captions = inp.captions.get("modes", {}).get(name, [])
    by_mode = inp.generated.get("eval_by_mode", {}).get(name, {})
    best = fitted.get("best_subpop_ap")
    silhouette = fitted.get("silhouette")
    if fitted.get("clustering") == "images":
        how = (f'The class\'s val images clustered (k = {fitted.get("n_clusters")}, the k that tells its '
               f'{fitted["n_val_errors"]} wrong predictions best: adjusted mutual information '
               f'{_num(fitted.get("error_information"), 2)}), the clusters that err more than the class kept '
               '(failmap.modes), largest share of its errors first')
    else:
        how = (f'The class\'s {fitted["n_val_errors"]} wrong val predictions clustered by how they differ from its '
               'correct images (failmap.modes), largest share first')
    out = [f'<h3>Failure modes: {n_modes}</h3><p class="note">{how}'
           + ("" if silhouette is None else f"; silhouette {_num(silhouette, 2)}")
           + '. A mode\'s score: how much an image looks like the mode\'s errors; its captions are ranked by the '
           'same score of their text shift. Under each real image: its score, <b>✗</b> the baseline gets it wrong'
           + ('; <b>P</b> planted (ground truth)' if inp.test_subpop is not None else "") + '.</p>']
    for j in range(n_modes):
        entry = fitted.get(f"mode_{j}", {})
        ap = entry.get("subpop_ap")
        mark = ' <span class="verdict good">best mode</span>' if ap is not None and ap == best and n_modes > 1 else ""
        out.append(f'<div class="mode" id="class-{_e(name)}-mode-{j}"><h4>Mode {j}: {_pct(entry.get("share"), 0)} '
                   f'of the val errors ({_e(entry.get("n_errors", "?"))})'
                   + ("" if ap is None else f' · AP of the planted subpopulation <b>{_num(ap)}</b>{mark}') + "</h4>")
        if j < len(captions):
            out.append(_caption_lists(captions[j], planted))
        out.append(_mode_strip(inp, k, j))
        out.append(_mode_arms(inp, name, j))
        mode_acc = by_mode.get(f"mode_{j}", {})

        def accuracy_of(side, alpha, mode_acc=mode_acc):
            return by_mode.get("neutral") if side == "neutral" else \
                mode_acc.get(f"alpha_{alpha:g}", {}).get(side)

        table = _walk_table(inp, name, k, j, accuracy_of)
        out.append('<p class="note">Decoded along this mode\'s direction (hard = towards the mode), image i of '
                   'every row from the same noise:</p>' + table if table else
                   '<p class="note">No decoded images of this mode: the generate stage walked the class SVM '
                   '(modes.drive: svm).</p>')
        out.append("</div>")
    return "\n".join(out)


def _ordered_arms(arms: dict) -> list[str]:
    """The control first, then the synthetic and the pool arms (failmap.finetune.ARMS), then any other."""
    return [a for a in ARMS if a in arms] + [a for a in arms if a not in ARMS]


def _arm_rows(arms: dict, deltas: dict, untrusted: set[str], per_class: str | None = None) -> list[str]:
    figures = {arm: arms[arm] if per_class is None else arms[arm].get("per_class", {}).get(per_class, {})
               for arm in _ordered_arms(arms)}
    best = {}
    for metric, _ in ARM_COLUMNS:
        means = [f[metric]["mean"] for f in figures.values() if (f.get(metric) or {}).get("mean") is not None]
        best[metric] = max(means) if means else None
    rows = []
    for arm, fig in figures.items():
        cells = []
        for metric, _ in ARM_COLUMNS:
            delta = None if per_class is not None else deltas.get(arm, {}).get(metric)
            text = _mean_std(fig.get(metric))
            if best[metric] is not None and (fig.get(metric) or {}).get("mean") == best[metric]:
                text = f"<b>{text}</b>"
            cells.append(f'<td class="num">{text}{_delta(delta)}</td>')
        flag = ' <span class="verdict bad">untrusted</span>' if arm in untrusted else ""
        seeds = arms[arm].get("seeds")
        rows.append(f'<tr><td class="arm">{_e(arm)}{flag}</td><td class="num">{_e(arms[arm].get("n_extra", "—"))}</td>'
                    + "".join(cells) + f'<td class="num">{len(seeds) if seeds else "—"}</td></tr>')
    return rows


def _arms_table(inp: ReportInputs, per_class: str | None = None) -> str:
    arms = inp.evaluate.get("arms", {})
    check = inp.generated["generator_check"]
    untrusted = set() if check["trusted"] and inp.evaluate.get("synthetic_trusted", True) else \
        {a for a in arms if a in GENERATED_ARMS}
    head = ("<tr><th>arm</th><th class=\"num\">extra images</th>"
            + "".join(f'<th class="num head">{_e(title)}</th>' for _, title in ARM_COLUMNS)
            + '<th class="num">seeds</th></tr>')
    rows = _arm_rows(arms, inp.evaluate.get("delta_vs_none", {}), untrusted, per_class)
    return f'<table class="arms">{head}{"".join(rows)}</table>'


def _has_per_class_arms(inp: ReportInputs) -> bool:
    return any("per_class" in e for e in inp.evaluate.get("arms", {}).values())


def _class_section(inp: ReportInputs, name: str, k: int) -> str:
    planted = inp.meta.get("planted", {}).get(name, {}).get("phrase")
    tag = f'<span class="tag">planted: {_e(planted)}</span>' if planted else ""
    parts = [f'<section id="class-{_e(name)}"><h2>{_e(name)}{tag}</h2>', _facts(inp, name),
             _captions(inp, name, planted), _real_strip(inp, k), _eval_walk(inp, name, k),
             _modes_section(inp, name, k, planted)]
    if _has_per_class_arms(inp):
        parts += ["<h3>Fine-tuning arms on this class (mean ± std over seeds)</h3>", _arms_table(inp, name)]
    parts.append("</section>")
    return "\n".join(parts)


def _skipped_section(inp: ReportInputs, skipped: dict) -> str:
    test = inp.baseline.get("test", {})
    gaps = (test.get("subpop") or {}).get("per_class", {})
    items = []
    for name, reason in skipped.items():
        gap = gaps.get(name)
        extra = (f"; planted gap {100 * gap['gap']:.1f} points" if gap else "")
        items.append(f"<li><b>{_e(name)}</b>: {_e(reason)} (baseline test accuracy "
                     f"{_pct(test.get('per_class', {}).get(name))}{extra})</li>")
    return ('<section id="skipped"><h2>Skipped classes</h2><p class="note">No SVM was fitted for these classes, '
            'so they have no failure direction, captions or decoded evaluation images.</p>'
            f'<ul>{"".join(items)}</ul></section>')


def _arms_section(inp: ReportInputs) -> str:
    if not inp.evaluate.get("arms"):
        return '<section id="arms"><h2>Fine-tuning arms</h2><p class="note">No arms in metrics/evaluate.json.</p></section>'
    per_class = _has_per_class_arms(inp)
    return ('<section id="arms"><h2>Fine-tuning arms' + ("" if per_class else ": all classes together") + "</h2>"
            '<p class="note">Accuracy after fine-tuning the baseline on train plus each arm\'s extra images, '
            'mean ± std over seeds (std in points); in brackets the change from the <i>'
            f'{CONTROL_ARM}</i> arm (same schedule, no extra images), in points. Subpopulation accuracies are means '
            'over classes. The SVM-hardest images are each class\'s lowest baseline decision values, fixed before '
            'fine-tuning. Bold: the best arm of the column.' + ("" if per_class else " metrics/evaluate.json has no per-class figures, so the effect "
                              "of each arm is shown once for all classes.") + "</p>"
            + _arms_table(inp) + "</section>")


def build_report(inp: ReportInputs) -> str:
    """The whole page as one HTML string."""
    classes = inp.meta["classes"]
    skipped = dict(inp.svm.get("skipped", {}))
    body = [_header(inp), _overview(inp)]
    body += [_class_section(inp, name, k) for k, name in enumerate(classes) if name not in skipped]
    if skipped:
        body.append(_skipped_section(inp, skipped))
    body.append(_arms_section(inp))
    body.append('<p class="note">Written by the <code>report</code> stage (stages/report.py, failmap.report) from '
                + ", ".join(f"<code>{_e(p)}</code>" for p in INPUTS) + ".</p>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>failmap failure report: {_e(inp.meta.get("source", ""))}</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(html_text: str, path: str | Path = REPORT) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(html_text, encoding="utf-8")
    return path
