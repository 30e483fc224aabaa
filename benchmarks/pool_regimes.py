"""The pool arms under each fine-tuning regime: does the SVM's choice beat confidence's?

    python benchmarks/pool_regimes.py                         # last layer, all seeds of params.yaml
    python benchmarks/pool_regimes.py --regime whole --seeds 0 1 2
    python benchmarks/pool_regimes.py --repo /tmp/variant     # another finished pipeline (e.g. a world variant)

Reads a finished `dvc repro` (prepared data, baseline, SVM decision values of
the pool, baseline pool confidences) and that repository's params.yaml. For
`none` and every pool arm it fine-tunes copies of the baseline with the
finetune params, in the chosen regime:

- `last`: the last layer on cached features (the finetune stage's default);
- `whole`: the whole network with augmentation (`finetune.last_layer_only:
  false`; the reference's pool experiment retrains the whole network). About
  2 minutes per arm and seed on one CPU thread.

Prints the mean (and std) over seeds of the planted-subpopulation accuracy
(ground truth, mean over classes) and of overall accuracy, on **val** and
**test**, plus what each arm picked: planted images and baseline errors among
its K x classes pool images (mean over seeds: only pool_random's picks depend on the seed). Writes nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from failmap.data import load_ground_truth, load_meta, load_split, subpop_mask  # noqa: E402
from failmap.evaluation import evaluate_predictions, predict_labels  # noqa: E402
from failmap.finetune import CONTROL_ARM, POOL_ARMS, FrozenFeatures, finetune_arm, select_pool  # noqa: E402
from failmap.params import load_params  # noqa: E402
from failmap.predictions import load_predictions  # noqa: E402
from failmap.stage import BASELINE_MODEL, BASELINE_PREDICTIONS, PREPARED, SVM_DIR  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regime", choices=["last", "whole"], default="last")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: finetune.seeds")
    parser.add_argument("--k", type=int, help="pool images per class; default: finetune.pool_k")
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.chdir(args.repo)

    p = load_params("params.yaml")
    f = p.finetune
    seeds = args.seeds if args.seeds is not None else list(f.seeds)
    k = args.k if args.k is not None else f.pool_k
    meta = load_meta(PREPARED)
    truth = load_ground_truth(PREPARED)
    if truth is None:
        print("this source has no planted subpopulation to score against", file=sys.stderr)
        return 2
    classes = meta["classes"]
    train, pool = load_split(PREPARED, "train"), load_split(PREPARED, "pool")
    evals = {name: load_split(PREPARED, name) for name in ("val", "test")}
    gt = {name: subpop_mask(truth, s.ids) for name, s in evals.items()}
    with np.load(f"{SVM_DIR}/decisions.npz") as z:
        pool_decision = z["pool_decision"]
    pool_pred = load_predictions(f"{BASELINE_PREDICTIONS}/pool.csv")
    if not np.array_equal(pool_pred["id"], pool.ids):
        raise SystemExit(f"{BASELINE_PREDICTIONS}/pool.csv does not match the pool split: re-run train_baseline")
    pool_planted = subpop_mask(truth, pool.ids)
    pool_wrong = pool_pred["pred"] != pool_pred["label"]
    last = args.regime == "last"
    features = FrozenFeatures(BASELINE_MODEL, "cpu") if last else None

    print(f"regime {args.regime}, K = {k} per class, seeds {seeds}; hard = planted subpopulation (mean over classes)")
    print(f"{'arm':<17}{'planted':>8}{'errors':>8}{'val hard':>15}{'val all':>9}{'test hard':>15}{'test all':>9}"
          f"{'s/run':>7}")
    for arm in (CONTROL_ARM,) + POOL_ARMS:
        rows, picked = [], []
        start = time.perf_counter()
        for seed in seeds:
            images = labels = None
            if arm != CONTROL_ARM:
                chosen = select_pool(arm, pool.labels, pool_decision, pool_pred["confidence"], k, seed).indices
                images, labels = pool.images[chosen], pool.labels[chosen]
                picked.append((pool_planted[chosen].sum(), pool_wrong[chosen].sum()))
            model = finetune_arm(BASELINE_MODEL, train.images, train.labels, images, labels, last_layer_only=last,
                                 epochs=f.epochs, batch_size=f.batch_size, lr=f.lr, momentum=f.momentum,
                                 weight_decay=f.weight_decay, seed=seed, device="cpu", augment_data=not last,
                                 features=features)
            row = []
            for name, s in evals.items():
                none_mask = np.zeros(len(s.labels), bool)  # the SVM-defined sets are not needed here
                r = evaluate_predictions(predict_labels(model, s.images, "cpu", features), s.labels, classes,
                                         gt[name], none_mask, none_mask)
                row += [r["hard_acc_gt"] * 100, r["test_acc"] * 100]
            rows.append(row)
        rows = np.asarray(rows)
        mean, std = rows.mean(0), rows.std(0, ddof=1) if len(rows) > 1 else np.zeros(rows.shape[1])
        cells = [f"{mean[0]:>9.2f} ±{std[0]:>4.2f}", f"{mean[1]:>9.2f}", f"{mean[2]:>9.2f} ±{std[2]:>4.2f}",
                 f"{mean[3]:>9.2f}"]
        planted, errors = ("", "") if arm == CONTROL_ARM else np.mean(picked, 0).round().astype(int)
        print(f"{arm:<17}{planted:>8}{errors:>8}" + "".join(cells)
              + f"{(time.perf_counter() - start) / len(seeds):>7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
