"""The failure report (failmap.report, stages/report.py) built from tiny fake
pipeline outputs written in the formats the stages write; one test renders it
in a headless Chromium (skipped where there is none)."""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from failmap.data import Split, save_ground_truth, save_meta, save_split
from failmap.finetune import aggregate, aggregate_by_mode
from failmap.evaluation import generator_check
from failmap.generate import DecodeCall, SetPlan
from failmap.generated import EVAL_SET, save_generated, write_manifest
from failmap.io import write_json
from failmap.predictions import save_predictions
from failmap.report import (INPUTS, PER_ROW, UPSCALE, MissingInputError, build_report, check_inputs,
                            load_report_inputs, write_report)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "star"]   # star: no SVM (skipped)
PLANTED = {"circle": "at night", "square": "on the grass", "star": "in the snow"}
SIDE = 8          # px of the fake images
N_TEST = 6        # test images per class
N_EVAL = 4        # evaluation images per (class, side, alpha)
ALPHAS = (0.5, 1.0)
SKIP_REASON = "only 1 wrong val prediction, fewer than svm.min_errors=2"


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, SIDE, SIDE, 3), dtype=np.uint8)


def _captions(name):
    hard = [{"caption": f"a photo of a {name} {PLANTED[name]}", "score": -1.25},
            {"caption": f"a photo of a red {name} <odd & caption>", "score": -0.5}]
    easy = [{"caption": f"a photo of a {name} indoors", "score": 1.5}]
    return {"hard": hard, "easy": easy}


MODE_SHARES = {"circle": (0.7, 0.3), "square": (1.0,)}   # the failure modes of the classes with an SVM


def write_fake_outputs(root: Path, drive: str = "svm") -> Path:
    """Every input of the report under ``root``, in the stages' own formats;
    ``drive`` as ``modes.drive``: what the decoded evaluation images walked along."""
    labels = np.repeat(np.arange(len(CLASSES)), N_TEST)
    ids = np.array([f"fake/test/{i:04d}" for i in range(len(labels))])
    prepared = root / "data/prepared"
    save_split(prepared, "test", Split(images=_images(len(labels), 0), labels=labels, ids=ids))
    save_meta(prepared, {"source": "fake", "classes": CLASSES, "image_size": SIDE,
                         "planted": {c: {"phrase": p} for c, p in PLANTED.items()}})
    subpop = (np.arange(len(labels)) % N_TEST) < 2
    save_ground_truth(prepared, [{"id": i, "split": "test", "label": int(y), "subpop": int(s)}
                                 for i, y, s in zip(ids, labels, subpop)])
    correct = (~subpop).astype(int)
    save_predictions(root / "data/baseline/test.csv", ids,
                     dict(label=labels, pred=np.where(correct == 1, labels, (labels + 1) % 3), correct=correct,
                          confidence=np.where(correct == 1, 0.9, 0.2)))
    decision = np.linspace(-2, 2, len(labels))
    decision[labels == 2] = np.nan
    (root / "data/svm").mkdir(parents=True)
    # mode j of a class scores its images in a known order: mode 0 rises with the index, mode 1 falls
    mode_scores = np.full((len(labels), 2), np.nan)
    for k, name in enumerate(CLASSES[:2]):
        rows = np.flatnonzero(labels == k)
        for j in range(len(MODE_SHARES[name])):
            mode_scores[rows, j] = np.arange(len(rows)) * (1.0 if j == 0 else -1.0) + 0.25
    np.savez(root / "data/svm/decisions.npz", test_ids=ids, test_decision=decision, test_mode_scores=mode_scores,
             pool_ids=ids[:0], pool_decision=decision[:0], pool_mode_scores=mode_scores[:0])

    plan = SetPlan(EVAL_SET)
    for k, name in enumerate(CLASSES[:2]):
        steers = [None] if drive == "svm" else list(range(len(MODE_SHARES[name])))
        jobs = [("neutral", 0.0, None)] + [(s, a, m) for m in steers for a in ALPHAS for s in ("hard", "easy")]
        for side, alpha, mode in jobs:
            plan.add(DecodeCall(np.zeros((N_EVAL, 2)), seed=k), class_name=name, label=k, side=side,
                     alpha=alpha, captions=[""] * N_EVAL, tag=f"m{mode}-{side}-{alpha:g}", mode=mode)
    plan.skip("star", f"no SVM: {SKIP_REASON}")
    eval_set = plan.build([_images(N_EVAL, 10 + j) for j in range(len(plan.calls))])
    save_generated(root / "data/generated", eval_set)
    write_manifest(root / "data/generated/manifest.csv", [eval_set])
    check = generator_check(eval_set.labels.copy(), eval_set, CLASSES, threshold=0.5,
                            arms={"generic": (np.zeros(4, int), np.ones(4, int))})   # generic arm: 0 % recognised

    metrics = root / "metrics"
    per_class_gap = {c: {"gap": 0.6, "n_subpop": 2, "rest_acc": 1.0, "subpop_acc": 0.4} for c in CLASSES}
    write_json(metrics / "baseline.json", {"test": {
        "accuracy": 0.667, "n": len(labels), "per_class": {c: 0.667 for c in CLASSES},
        "subpop": {"mean_gap": 0.6, "subpop_acc": 0.4, "rest_acc": 1.0, "per_class": per_class_gap}}})
    quality = {"auroc": 0.9, "balanced_accuracy": 0.8, "subpop_ap": 0.95}
    write_json(metrics / "svm.json", {
        "per_class": {c: {"svm": quality, "confidence": dict(quality, subpop_ap=0.7),
                          "random": dict(quality, subpop_ap=0.33)} for c in CLASSES[:2]},
        "skipped": {"star": SKIP_REASON}, "n_classes_fitted": 2})
    write_json(metrics / "modes.json", {
        "per_class": {c: {"n_modes": len(sh), "n_val_errors": 10, "silhouette": 0.4 if len(sh) > 1 else None,
                          "best_subpop_ap": 0.97,
                          **{f"mode_{j}": {"share": x, "n_errors": round(10 * x), "subpop_ap": 0.97 - 0.5 * j}
                             for j, x in enumerate(sh)}} for c, sh in MODE_SHARES.items()},
        "skipped": {"star": SKIP_REASON}, "n_classes_fitted": 2})
    mode_captions = {c: [{"share": x, "hard": [{"caption": f"a photo of a {c} mode{j} hard", "score": -1.0}],
                          "easy": [{"caption": f"a photo of a {c} mode{j} easy", "score": 1.0}]}
                         for j, x in enumerate(sh)] for c, sh in MODE_SHARES.items()}
    write_json(metrics / "captions.json", {"top": {c: _captions(c) for c in CLASSES[:2]}, "modes": mode_captions,
                                           "planted_in_top3_hard": {"fraction": 1.0,
                                                                    "per_class": {c: True for c in CLASSES[:2]}}})
    group = {"accuracy": 0.5, "confidence": 0.5, "n": 2 * N_EVAL, "per_class": {"circle": 0.25, "square": 0.75}}
    write_json(metrics / "generated.json", {
        "generator_check": check,
        "eval": {"neutral": group, "skipped": {"star": f"no SVM: {SKIP_REASON}"},
                 "alphas": {f"alpha_{a:g}": {"hard": group, "easy": group} for a in ALPHAS}},
        "eval_by_mode": {} if drive == "svm" else {
            c: {"neutral": 0.875, **{f"mode_{j}": {f"alpha_{a:g}": {"hard": 0.125 + 0.25 * j, "easy": 1.0}
                                                   for a in ALPHAS} for j in range(len(sh))}}
            for c, sh in MODE_SHARES.items()}})
    results = [{"arm": arm, "seed": seed, "n_extra": n_extra, "test_acc": 0.7 + 0.01 * seed + bonus,
                "hard_acc_gt": 0.3 + bonus, "easy_acc_gt": 0.9, "hard_acc_svm": 0.2 + bonus, "easy_acc_svm": 1.0}
               for arm, n_extra, bonus in [("none", 0, 0.0), ("generic", 8, 0.01), ("pool_svm", 6, 0.2)]
               for seed in (0, 1)]
    summary = aggregate(results)
    summary["synthetic_trusted"] = check["trusted"]
    summary["by_mode"] = aggregate_by_mode(
        [{"arm": r["arm"], "seed": r["seed"],
          "by_mode": {c: {f"mode_{j}": 0.25 + 0.125 * j + r["hard_acc_gt"] for j in range(len(sh))}
                      for c, sh in MODE_SHARES.items()}} for r in results])
    write_json(metrics / "evaluate.json", summary)
    return root


@pytest.fixture
def fake_root(tmp_path):
    return write_fake_outputs(tmp_path / "repo")


# one image per real strip (hard, easy) and per decoded row (neutral + hard / easy at each alpha), per class with an
# SVM, plus a real strip pair per failure mode
N_MODES = sum(len(sh) for sh in MODE_SHARES.values())
N_IMAGES = 2 * (2 + 1 + 2 * len(ALPHAS)) + 2 * N_MODES
# modes.drive: modes: no SVM-steered rows; per mode the neutral row and hard / easy at each alpha
N_IMAGES_MODES = 2 * 2 + N_MODES * (2 + 1 + 2 * len(ALPHAS))


def data_uris(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_page_has_every_class_the_captions_and_inline_images_only(fake_root):
    page = build_report(load_report_inputs(fake_root))
    for name in ("circle", "square"):
        assert f'<section id="class-{name}">' in page
        assert f"a photo of a {name} <mark>{PLANTED[name]}</mark>" in page      # top hard caption, phrase marked
        assert f"a photo of a {name} indoors" in page                          # easy caption
        assert "a photo of a red " + name + " &lt;odd &amp; caption&gt;" in page  # escaped
    assert 'id="class-star"' not in page and '<section id="skipped">' in page and SKIP_REASON in page
    assert "NOT trusted" in page and "generic 0 %" in page                    # the generator check verdict
    assert "synthetic_trusted" in page and "pool_svm" in page and "no per-class figures" in page
    assert page.count("<img ") == N_IMAGES
    uris = data_uris(page)
    assert len(uris) == N_IMAGES and all(u.startswith("data:image/png;base64,") for u in uris)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # the decoded rows: PER_ROW images at most, enlarged UPSCALE times by pixel repetition
    widths = sorted({Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).size[0] for u in uris})
    n_row = min(PER_ROW, N_EVAL)
    assert n_row * SIDE * UPSCALE + (n_row + 1) * 2 in widths


def test_per_class_arm_figures_go_into_each_class_section(fake_root):
    inputs = load_report_inputs(fake_root)
    for arm, entry in inputs.evaluate["arms"].items():
        entry["per_class"] = {c: {"hard_acc_gt": {"mean": 0.123 if c == "circle" else 0.456, "std": 0.01},
                                  "test_acc": {"mean": 0.8, "std": None}} for c in CLASSES[:2]}
    page = build_report(inputs)
    circle = page.split('<section id="class-circle">')[1].split("</section>")[0]
    square = page.split('<section id="class-square">')[1].split("</section>")[0]
    assert "Fine-tuning arms on this class" in circle and "12.3 % ± 1.0" in circle and "45.6" not in circle
    assert "45.6 % ± 1.0" in square
    assert "no per-class figures" not in page


def test_same_inputs_give_the_same_bytes(fake_root, tmp_path):
    a = write_report(build_report(load_report_inputs(fake_root)), tmp_path / "a.html").read_bytes()
    b = write_report(build_report(load_report_inputs(fake_root)), tmp_path / "b.html").read_bytes()
    assert a == b


@pytest.mark.parametrize("missing", ["metrics/evaluate.json", "data/generated/manifest.csv", "data/svm/decisions.npz"])
def test_a_missing_input_is_named_with_the_stage_that_writes_it(fake_root, missing):
    (fake_root / missing).unlink()
    with pytest.raises(MissingInputError) as error:
        load_report_inputs(fake_root)
    assert missing in str(error.value) and f"'{INPUTS[missing]}' stage" in str(error.value)
    assert INPUTS["metrics/evaluate.json"] == "evaluate" and INPUTS["data/svm/decisions.npz"] == "fit_svms"


def test_without_ground_truth_the_page_says_so(fake_root):
    (fake_root / "data/prepared/ground_truth.csv").unlink()
    check_inputs(fake_root)          # ground truth is optional
    page = build_report(load_report_inputs(fake_root))
    assert "P</b> it is in the planted subpopulation" not in page and page.count("<img ") == N_IMAGES


def _stage_env():
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), FAILMAP_TRACKING="0", OMP_NUM_THREADS="1")


def test_stage_writes_the_page_and_names_a_missing_input(fake_root):
    shutil.copy(REPO / "params.yaml", fake_root / "params.yaml")
    run = subprocess.run([sys.executable, str(REPO / "stages/report.py")], cwd=fake_root, env=_stage_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    page = (fake_root / "reports/failure_report.html").read_text()
    assert page.count("<img ") == N_IMAGES
    (fake_root / "metrics/captions.json").unlink()
    run = subprocess.run([sys.executable, str(REPO / "stages/report.py")], cwd=fake_root, env=_stage_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert "metrics/captions.json (written by the 'caption' stage" in run.stderr and "Traceback" not in run.stderr


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 3000) -> subprocess.CompletedProcess:
    """Render ``page`` with headless Chromium into ``png``."""
    return subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", f"--screenshot={png}", f"--window-size={width},{height}",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=180)


def test_headless_chromium_renders_the_page(fake_root, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    page = write_report(build_report(load_report_inputs(fake_root)), tmp_path / "page.html")
    png = tmp_path / "page.png"
    result = screenshot(page, png)
    assert png.exists(), f"chromium wrote no screenshot (rc {result.returncode}):\n{result.stderr[-2000:]}"
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1200)
    assert (pixels != 255).any(axis=2).mean() > 0.01        # text and images, not a blank page
    # the inline images were decoded: the fake images' saturated random colours appear
    assert (np.abs(pixels.astype(int) - pixels.mean(axis=2, keepdims=True)).max(axis=2) > 60).sum() > 5000


def test_each_mode_has_its_section_with_share_ap_captions_and_real_images(fake_root):
    page = build_report(load_report_inputs(fake_root))
    circle = page.split('<section id="class-circle">')[1].split("</section>")[0]
    for j, share in enumerate(MODE_SHARES["circle"]):
        mode = circle.split(f'id="class-circle-mode-{j}"')[1].split('<div class="mode"')[0]
        assert f"Mode {j}: {100 * share:.0f} %" in mode and f"a photo of a circle mode{j} hard" in mode
        assert f"<b>{0.97 - 0.5 * j:.3f}</b>" in mode                    # the mode's AP of the planted subpopulation
        assert "modes.drive: svm" in mode                                  # nothing decoded along it
    assert "best mode" in circle.split('id="class-circle-mode-0"')[1].split('id="class-circle-mode-1"')[0]
    assert 'id="class-square-mode-0"' in page and 'id="class-square-mode-1"' not in page
    assert "70 % / 30 %" in page                                           # the overview lists the shares
    # every test image of the class is scored by each mode (fewer than STRIP): both strips show all six
    assert circle.count("6 most like the mode (highest score)</b>: baseline wrong on 2, 2 planted") == 2


def test_decoded_images_of_each_mode_when_modes_drive(tmp_path):
    root = write_fake_outputs(tmp_path / "repo", drive="modes")
    page = build_report(load_report_inputs(root))
    assert page.count("<img ") == N_IMAGES_MODES
    circle = page.split('<section id="class-circle">')[1].split("</section>")[0]
    assert "decoded along each failure mode" in circle
    mode1 = circle.split('id="class-circle-mode-1"')[1]
    assert "decoded hard, α = 1 (mode 1)" in mode1 and "<b>38 %</b>" in mode1   # 0.125 + 0.25: mode 1's hard accuracy
    assert "<b>88 %</b>" in mode1                                                # the shared neutral row's accuracy


def test_each_mode_shows_every_arms_accuracy_on_the_test_images_most_like_it(fake_root):
    page = build_report(load_report_inputs(fake_root))
    for name, shares in MODE_SHARES.items():
        for j in range(len(shares)):
            section = re.split(r'<div class="mode"|</section>', page.split(f'id="class-{name}-mode-{j}"', 1)[1])[0]
            # none 0.25 + 0.125 j + 0.3; pool_svm 0.2 better on every seed: (+20.0) points over none
            assert f"{100 * (0.55 + 0.125 * j):.1f} %" in section and "(+20.0)" in section
            assert section.index("<th>none</th>") < section.index("<th>generic</th>") < section.index("<th>pool_svm</th>")
