"""How the synthetic arms' effect depends on alpha and on the number of images.

    python benchmarks/sweep_interventions.py                       # alphas 0.3 0.5 0.7, n 50 100 150 200
    python benchmarks/sweep_interventions.py --alphas 0.5 --n 100 150

Reads the outputs of a finished `dvc repro` (prepared data, baseline, world
CLIP, decoder, SVMs, captions) and the current params.yaml. For every arm
(`direction` at each alpha, `caption` with the params' n_captions and
caption_weight, `generic`) it decodes the largest n
per class once, with generate's sampling settings and seeds (the first n
images of a class are the ones `generate` would make with n_per_class = n),
fine-tunes copies of the baseline on train plus the first n per class with
the finetune params over its seeds, and prints the mean accuracy on the
planted subpopulation (ground truth) and overall, on **val** and on **test**.
Choose settings on val; test is what `evaluate` reports.

Per decoded set it also prints what the images carry, scored with the world's
ground truth only (never used to make them): the share whose CLIP zero-shot
value of the planted attribute is the class's planted one, and the baseline's accuracy on them.
Writes nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from failmap.captions import reference_caption  # noqa: E402
from failmap.data import load_ground_truth, load_meta, load_split, subpop_mask  # noqa: E402
from failmap.decoders.loader import sampling_settings  # noqa: E402
from failmap.evaluation import (Attribute, accuracy_on_generated, evaluate_predictions, predict_labels,  # noqa: E402
                                zero_shot_report)
from failmap.finetune import FrozenFeatures, finetune_arm  # noqa: E402
from failmap.generate import generate_caption, generate_direction, generate_generic, load_generation_inputs  # noqa: E402
from failmap.params import load_params  # noqa: E402
from failmap.stage import BASELINE_MODEL, PREPARED  # noqa: E402


def planted_value_share(embedder, images, labels, classes, meta, template) -> float:
    """Share of images whose CLIP zero-shot value of the planted attribute (context or colour; prompts
    averaged over class nouns, as ``zero_shot_report`` does) is their class's planted one."""
    attribute = meta["planted"][classes[0]]["attribute"]
    slot, vocab = ("context", "contexts") if attribute == "context" else ("adjective", "adjectives")
    planted = Attribute(values=np.array([meta["planted"][classes[k]]["phrase"] for k in labels]),
                        phrases={x: x for x in meta["vocab"][vocab]}, slot=slot)
    report = zero_shot_report(embedder, images, labels, classes, {"planted": planted}, template=template)
    return report["planted_accuracy"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--n", type=int, nargs="+", default=[50, 100, 150, 200], help="images per class")
    parser.add_argument("--arms", nargs="+", default=["direction", "caption", "generic"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.chdir(REPO)

    p = load_params("params.yaml")
    meta = load_meta(PREPARED)
    classes = meta["classes"]
    if "planted" not in meta:
        print("this source has no planted subpopulation to score against", file=sys.stderr)
        return 2
    truth = load_ground_truth(PREPARED)
    train = load_split(PREPARED, "train")
    evals = {name: load_split(PREPARED, name) for name in ("val", "test")}
    gt = {name: subpop_mask(truth, s.ids) for name, s in evals.items()}

    f = p.finetune
    inputs = load_generation_inputs(p, meta)
    embedder, decoder, svms, references = inputs.embedder, inputs.decoder, inputs.svms, inputs.references
    hard_captions = inputs.hard_captions
    features = FrozenFeatures(BASELINE_MODEL, "cpu")
    decode = sampling_settings(p.decoder)
    n_max = max(args.n)

    sets = {}
    for arm in args.arms:
        start = time.perf_counter()
        if arm == "direction":
            for a in args.alphas:
                sets[f"direction a={a:g}"] = generate_direction(decoder, classes, references, svms, a, n_max, p.seed,
                                                                **decode)
        elif arm == "caption":
            sets["caption"] = generate_caption(decoder, embedder.embed_texts, classes, hard_captions, svms, n_max,
                                               p.seed, n_captions=p.generate.n_captions, references=references,
                                               weight=p.generate.caption_weight, **decode)
        elif arm == "generic":
            refs = [reference_caption(p.caption.template, name) for name in classes]
            sets["generic"] = generate_generic(decoder, embedder.embed_texts, classes, refs, n_max, p.seed, **decode)
        else:
            parser.error(f"unknown arm {arm!r}")
        print(f"decoded {arm}: {time.perf_counter() - start:.0f} s", flush=True)

    baseline = features.model
    print(f"\n{'set':<18}{'planted value':>14}{'baseline acc':>14}")
    for name, s in sets.items():
        acc = accuracy_on_generated(baseline, s.images, s.labels, "cpu")["accuracy"]
        share = planted_value_share(embedder, s.images, s.labels, classes, meta, p.caption.template)
        print(f"{name:<18}{share:>14.2f}{acc:>14.3f}")

    def scores(images, labels) -> dict:
        rows = []
        for seed in f.seeds:
            model = finetune_arm(BASELINE_MODEL, train.images, train.labels, images, labels, last_layer_only=True,
                                 epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, momentum=f.momentum,
                                 weight_decay=f.weight_decay, seed=seed, device="cpu", features=features)
            row = []
            for name, s in evals.items():
                no_svm_mask = np.zeros(len(s.labels), bool)  # the SVM-defined hard / easy sets are not needed here
                r = evaluate_predictions(predict_labels(model, s.images, "cpu", features), s.labels, classes,
                                         gt[name], no_svm_mask, no_svm_mask)
                row += [r["hard_acc_gt"], r["test_acc"]]
            rows.append(row)
        return np.mean(rows, 0) * 100

    print(f"\nlast-layer fine-tune, mean over seeds {list(f.seeds)} (%); hard = planted subpopulation, mean over classes")
    print(f"{'arm':<18}{'n/class':>8}{'val hard':>10}{'val all':>9}{'test hard':>11}{'test all':>10}")
    none = scores(None, None)
    print(f"{'none':<18}{0:>8}" + "".join(f"{v:>{w}.1f}" for v, w in zip(none, (10, 9, 11, 10))), flush=True)
    for name, s in sets.items():
        for n in sorted(args.n):
            first = np.concatenate([np.flatnonzero(s.labels == k)[:n] for k in range(len(classes))])
            v = scores(s.images[first], s.labels[first])
            print(f"{name:<18}{n:>8}" + "".join(f"{x:>{w}.1f}" for x, w in zip(v, (10, 9, 11, 10))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
