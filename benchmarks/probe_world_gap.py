"""Probe a world setting's planted failure before spending a study on it (issue 14).

The study's first bar is about the world, not the method: every class must
fail on its planted subpopulation (test gap >= 20 points) and give the SVM
at least ``svm.min_errors`` wrong val predictions. This renders the train,
val and test splits of params.yaml's world with ``-S world.key=value``
overrides, trains the baseline with params.yaml's ``baseline`` settings, and
prints per seed and class the test gap (rest minus planted accuracy) and the
number of wrong val predictions, then the smallest gap over classes (mean and
95 % interval over seeds) and one JSON line. With ``--ap`` it also embeds
train / val / test with the shipped world CLIP, fits the class SVMs as the
fit_svms stage does (params.yaml's ``svm``) and reports the mean over classes
of the planted subpopulation's test AP under the SVM and under the baseline's
confidence (issue 14's "SVM AP >= confidence AP + 0.15"). It runs no DVC
stage: a few minutes per seed on one core.

    OMP_NUM_THREADS=1 python benchmarks/probe_world_gap.py --seeds 0 1 2 3 4 \
        -S world.planted_attribute=colour -S world.train_rate=0.005 --ap
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from failmap.data import subpop_mask  # noqa: E402
from failmap.device import resolve_mixed_precision  # noqa: E402
from failmap.embedder import load_embedder  # noqa: E402
from failmap.evaluation import accuracy_report  # noqa: E402
from failmap.models import build_classifier  # noqa: E402
from failmap.params import as_dict, load_params, params_from_dict  # noqa: E402
from failmap.ranking import average_precision, mean_over_classes  # noqa: E402
from failmap.shipped import CLIP_NAME, shipped_dir  # noqa: E402
from failmap.study import interval  # noqa: E402
from failmap.svm import ClassSVM, decision_values, fit_all  # noqa: E402
from failmap.train import fit, predictions  # noqa: E402
from failmap.world import generate_world  # noqa: E402


def with_overrides(params_file: str, overrides: list[str]):
    """params_file's params with ``section.key=value`` overrides (YAML values), validated as the pipeline's."""
    raw = as_dict(load_params(params_file))
    for kv in overrides:
        key, eq, value = kv.partition("=")
        *path, last = key.split(".")
        target = raw
        for part in path:
            target = target.get(part) if isinstance(target, dict) else None
        if not eq or not path or not isinstance(target, dict):
            raise SystemExit(f"-S {kv!r}: expected section.key=value with a section of {params_file}")
        target[last] = yaml.safe_load(value)
    return params_from_dict(raw)  # an unknown key or a bad value is refused here, naming it


def planted_ap(p, world, preds: dict, truth: dict) -> dict:
    """Mean over fitted classes of the planted subpopulation's test AP: SVM decision value and baseline
    confidence, each ranking the hardest first (the fit_svms stage's recipe); classes the SVM skips are left out."""
    embedder = load_embedder("world", model_dir=shipped_dir(CLIP_NAME), device="cpu")
    X = {s: embedder.embed_images(world.splits[s].images) for s in ("train", "val", "test")}
    val, test = preds["val"], preds["test"]
    _, svms = fit_all(X["val"], val["label"], val["correct"], X["train"], list(p.world.classes), p.svm.c_grid,
                      p.svm.folds, p.seed, p.svm.max_iter, p.svm.min_errors, progress=False)
    decision = decision_values(svms, X["test"], test["label"])
    in_subpop = subpop_mask(truth, world.splits["test"].ids)
    ap = {"svm": {}, "confidence": {}}
    for k, name in enumerate(p.world.classes):
        if isinstance(svms[k], ClassSVM):
            t = test["label"] == k
            ap["svm"][name] = average_precision(decision[t], in_subpop[t])
            ap["confidence"][name] = average_precision(test["confidence"][t], in_subpop[t])
    means = mean_over_classes({name: {m: ap[m][name] for m in ap} for name in ap["svm"]})  # NaN-free, as fit_svms
    return {f"ap_{m}": means.get(m, float("nan")) for m in ap} | {"ap_per_class": ap}


def probe(p, seed: int, with_ap: bool = False) -> dict:
    w, b = p.world, p.baseline
    world = generate_world(seed=seed, **dict(w.model_dump(), n_pool=0, n_corpus=0))
    truth = {row["id"]: row for row in world.ground_truth}
    train = world.splits["train"]
    model = build_classifier(b.arch, len(w.classes), b.width, seed=seed)
    fit(model, train.images, train.labels, epochs=b.epochs, batch_size=b.batch_size, lr=b.lr,
        momentum=b.momentum, weight_decay=b.weight_decay, augment_data=b.augment, seed=seed, device="cpu",
        desc=f"seed {seed}", mixed_precision=resolve_mixed_precision(b.mixed_precision, "cpu"))
    out, preds = {}, {}
    for name in ("val", "test"):
        split = world.splits[name]
        preds[name] = predictions(model, split.images, split.labels, "cpu")
        out[name] = accuracy_report(preds[name]["correct"], split.labels, list(w.classes),
                                    subpop_mask(truth, split.ids))
        out[name]["errors"] = {c: int((~preds[name]["correct"].astype(bool) & (split.labels == k)).sum())
                               for k, c in enumerate(w.classes)}
    gaps = {c: r.get("gap") for c, r in out["test"]["subpop"]["per_class"].items()}
    row = dict(seed=seed, planted={c: v["value"] for c, v in world.meta["planted"].items()},
               test_accuracy=out["test"]["accuracy"], gap=gaps, val_errors=out["val"]["errors"],
               min_gap=min(g for g in gaps.values() if g is not None),
               mean_gap=float(np.mean([g for g in gaps.values() if g is not None])),
               min_val_errors=min(out["val"]["errors"].values()))
    if with_ap:
        row |= planted_ap(p.model_copy(update={"seed": seed}), world, preds, truth)
        row["ap_svm_minus_confidence"] = row["ap_svm"] - row["ap_confidence"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="world.key=value (YAML value)")
    parser.add_argument("--ap", action="store_true", help="also the planted subpopulation's AP: SVM and confidence")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    p = with_overrides(args.params, args.overrides)
    rows = []
    for seed in args.seeds:
        r = probe(p, seed, args.ap)
        rows.append(r)
        ap = (f"; AP SVM {r['ap_svm']:.3f}, confidence {r['ap_confidence']:.3f}" if args.ap else "")
        print(f"seed {seed}: test acc {r['test_accuracy']:.3f}, smallest gap {r['min_gap']:.2f}, fewest val errors "
              f"{r['min_val_errors']}{ap}; " + ", ".join(f"{c} {g:.2f}/{r['val_errors'][c]} ({r['planted'][c]})"
                                                         for c, g in r["gap"].items()), flush=True)
    keys = ["min_gap", "mean_gap", "min_val_errors", "test_accuracy"]
    keys += ["ap_svm", "ap_confidence", "ap_svm_minus_confidence"] if args.ap else []
    summary = {key: interval([r[key] for r in rows]) for key in keys}
    for key, row in summary.items():
        spread = f" [{row['low']:.3f}, {row['high']:.3f}]" if row["low"] is not None else ""
        print(f"{key}: mean {row['mean']:.3f}{spread} over {len(rows)} seeds")
    result = dict(overrides=args.overrides, seeds=rows, summary=summary)
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
