"""Stage evaluate: for every arm, mean and std over seeds of overall test
accuracy and of accuracy on the hard and easy subpopulations — by ground truth
where known, and by the baseline SVM's decision values (bottom / top
evaluate.k test images per class, fixed before fine-tuning); and per class and
failure mode, every arm's accuracy on the evaluate.k test images most like the
mode (``by_mode``)."""
from pathlib import Path

import numpy as np

from failmap.data import load_ground_truth, load_meta, load_split, subpop_mask
from failmap.evaluation import evaluate_predictions, mode_accuracies, mode_hard_masks, svm_hard_easy_masks
from failmap.finetune import METRICS as ARM_METRICS, aggregate, aggregate_by_mode, plot_rows
from failmap.io import read_json, write_json
from failmap.plots import bar_plot, write_plot_data
from failmap.stage import FINETUNED, METRICS, PLOTS, PREPARED, SVM_DIR, run_stage


def main():
    with run_stage("evaluate") as p:
        meta, truth = load_meta(PREPARED), load_ground_truth(PREPARED)
        test = load_split(PREPARED, "test")
        with np.load(f"{SVM_DIR}/decisions.npz") as z:
            hard, easy = svm_hard_easy_masks(z["test_decision"], test.labels, p.evaluate.k)
            by_mode = mode_hard_masks(z["test_mode_scores"], test.labels, p.evaluate.k)  # each mode's hard side
        gt = subpop_mask(truth, test.ids)
        results, mode_results = [], []
        with np.load(f"{FINETUNED}/test_predictions.npz") as preds:
            if not np.array_equal(preds["ids"], test.ids):
                raise SystemExit(f"{FINETUNED}/test_predictions.npz does not match the test split: re-run finetune")
            for r in read_json(f"{FINETUNED}/runs.json"):
                pred = preds[f"{r['arm']}/{r['seed']}"]
                scores = evaluate_predictions(pred, test.labels, meta["classes"], gt, hard, easy)
                results.append({**scores, "arm": r["arm"], "seed": r["seed"], "n_extra": r["n_extra"]})
                mode_results.append({"arm": r["arm"], "seed": r["seed"],
                                     "by_mode": mode_accuracies(pred, test.labels, meta["classes"], by_mode)})
        summary = aggregate(results)
        # per class and failure mode: every arm's accuracy on the k test images most like the mode
        summary["by_mode"] = aggregate_by_mode(mode_results)
        # the generator check of the generate stage travels with the figures it qualifies
        check = read_json(f"{METRICS}/generated.json")["generator_check"]
        summary["synthetic_trusted"] = check["trusted"]
        if not check["trusted"]:
            print("WARNING evaluate: the generic / caption / direction arms trained on images the generator check "
                  f"failed (CLIP recognised {check['neutral_clip_class_accuracy']:.0%} of the neutral images, "
                  f"threshold {check['threshold']:.0%}): their figures are untrusted", flush=True)
        write_json(f"{METRICS}/evaluate.json", summary)
        Path(f"{PLOTS}/evaluate/bars").mkdir(parents=True, exist_ok=True)
        for metric in ARM_METRICS:  # every declared plot file is written, empty without data
            rows = plot_rows(summary, metric)
            write_plot_data(rows, f"{PLOTS}/evaluate/{metric}.json")
            if rows:
                bar_plot({r["arm"]: r["mean"] for r in rows}, {r["arm"]: r["std"] for r in rows},
                         f"{PLOTS}/evaluate/bars/{metric}.png", title=f"{metric} by arm (mean ± std over seeds)",
                         ylabel=metric)


if __name__ == "__main__":
    main()
