"""Stage fit_svms: per class, a linear SVM on val CLIP embeddings separating
the baseline's correct from wrong predictions (METHOD.md step 3), and the
class's several failure modes (failmap.modes). Scores the directions on
held-out test against confidence and random baselines, and each mode's share
of the val errors and (with ground truth) its AP of the subpopulation."""
import numpy as np

from failmap.data import load_ground_truth, load_meta, subpop_mask
from failmap.embeddings import load_embeddings
from failmap.io import atomic_path, write_json
from failmap.modes import ClassModes, fit_all_modes, mode_scores, modes_report, save_modes
from failmap.plots import write_plot_data
from failmap.predictions import load_predictions
from failmap.ranking import fit_threshold, mean_over_classes, ranking_report, roc_rows, to_jsonable
from failmap.stage import BASELINE_PREDICTIONS, EMBEDDINGS, METRICS, PLOTS, PREPARED, SVM_DIR, run_stage
from failmap.svm import ClassSVM, decision_values, fit_all, save_svms


def main():
    with run_stage("fit_svms") as p:
        meta, truth = load_meta(PREPARED), load_ground_truth(PREPARED)
        classes = meta["classes"]
        pred = {s: load_predictions(f"{BASELINE_PREDICTIONS}/{s}.csv") for s in ("train", "val", "test", "pool")
                if s in meta["splits"]}
        X = {s: load_embeddings(EMBEDDINGS, s, pred[s]["id"]) for s in pred}
        val, test = pred["val"], pred["test"]
        pre, svms = fit_all(X["val"], val["label"], val["correct"], X["train"], classes,
                            p.svm.c_grid, p.svm.folds, p.seed, p.svm.max_iter, p.svm.min_errors)
        save_svms(f"{SVM_DIR}/svms.npz", f"{SVM_DIR}/svms.json", pre, svms, classes)
        modes = fit_all_modes(X["val"], val["label"], val["correct"], pre, classes, p.modes.max_modes,
                              p.modes.min_mode_errors, p.modes.min_silhouette, p.seed, p.svm.min_errors,
                              p.modes.cluster, max_clusters=p.modes.max_clusters,
                              min_top_share=p.modes.min_top_share)
        save_modes(f"{SVM_DIR}/modes.npz", f"{SVM_DIR}/modes.json", pre, modes, classes, p.modes.max_modes)
        decisions = {s: decision_values(svms, X[s], pred[s]["label"]) for s in ("test", "pool") if s in pred}
        # (N, modes.max_modes) per split: the score of each row under each mode of its class, NaN where none
        by_mode = {s: mode_scores(modes, X[s], pred[s]["label"], p.modes.max_modes) for s in decisions}
        with atomic_path(f"{SVM_DIR}/decisions.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{f"{s}_decision": d for s, d in decisions.items()},
                         **{f"{s}_mode_scores": m for s, m in by_mode.items()},
                         **{f"{s}_ids": pred[s]["id"] for s in decisions})

        in_subpop = subpop_mask(truth, test["id"])
        per_class, skipped = {}, {}
        for k, name in enumerate(classes):
            svm = svms[k]
            if not isinstance(svm, ClassSVM):
                skipped[name] = svm.reason
                print(f"fit_svms: class '{name}' skipped: {svm.reason}")
                continue
            v, t = val["label"] == k, test["label"] == k
            report = ranking_report(decisions["test"][t], test["confidence"][t], test["correct"][t],
                                    fit_threshold(val["confidence"][v], val["correct"][v]),
                                    None if in_subpop is None else in_subpop[t])
            report["C"], report["cv_balanced_accuracy"] = svm.C, svm.cv_score
            per_class[name] = report
        metrics = to_jsonable({"per_class": per_class, "mean": mean_over_classes(per_class),
                               "n_classes_fitted": len(per_class), "skipped": skipped})
        write_json(f"{METRICS}/svm.json", metrics)

        modes_per_class, modes_skipped = {}, {}
        for k, name in enumerate(classes):
            if not isinstance(modes[k], ClassModes):
                modes_skipped[name] = modes[k].reason
                continue
            t = test["label"] == k
            modes_per_class[name] = modes_report(modes[k], by_mode["test"][t],
                                                 None if in_subpop is None else in_subpop[t])
        modes_metrics = to_jsonable({"per_class": modes_per_class, "mean": mean_over_classes(modes_per_class),
                                     "n_classes_fitted": len(modes_per_class), "skipped": modes_skipped})
        write_json(f"{METRICS}/modes.json", modes_metrics)

        # ROC of flagging test errors (and the planted subpopulation) by low score, pooled over fitted classes
        fitted = np.isfinite(decisions["test"])
        scores = {"svm": decisions["test"][fitted], "confidence": test["confidence"][fitted]}
        targets = {"roc_errors": test["correct"][fitted] == 0,
                   "roc_subpop": None if in_subpop is None else in_subpop[fitted]}
        for name, is_hard in targets.items():
            has_both = is_hard is not None and 0 < is_hard.sum() < len(is_hard)
            write_plot_data(roc_rows(scores, is_hard) if has_both else [], f"{PLOTS}/svm/{name}.json")


if __name__ == "__main__":
    main()
