"""Stage train_baseline: train the classifier on the (biased) train split,
save it and its predictions on every split, write metrics/baseline.json."""
from failmap.evaluation import accuracy_report
from failmap.data import SPLITS, load_ground_truth, load_meta, load_split, subpop_mask
from failmap.device import resolve_device, resolve_mixed_precision
from failmap.io import write_json
from failmap.models import build_classifier, save_classifier
from failmap.predictions import save_predictions
from failmap.stage import BASELINE_MODEL, BASELINE_PREDICTIONS, METRICS, PREPARED, run_stage
from failmap.train import fit, predictions


def main():
    with run_stage("train_baseline") as p:
        b = p.baseline
        meta, truth = load_meta(PREPARED), load_ground_truth(PREPARED)
        classes = meta["classes"]
        device = resolve_device(b.device)
        train = load_split(PREPARED, "train")
        model = build_classifier(b.arch, len(classes), b.width, seed=p.seed)
        losses = fit(model, train.images, train.labels, epochs=b.epochs, batch_size=b.batch_size, lr=b.lr,
                     momentum=b.momentum, weight_decay=b.weight_decay, augment_data=b.augment,
                     seed=p.seed, device=device, desc="train_baseline",
                     mixed_precision=resolve_mixed_precision(b.mixed_precision, device))
        metrics = {"final_train_loss": losses[-1]}
        for name in [s for s in SPLITS if s in meta["splits"]]:
            split = load_split(PREPARED, name)
            preds = predictions(model, split.images, split.labels, device)
            save_predictions(f"{BASELINE_PREDICTIONS}/{name}.csv", split.ids, preds)
            metrics[name] = accuracy_report(preds["correct"], split.labels, classes, subpop_mask(truth, split.ids))
        save_classifier(model, BASELINE_MODEL, arch=b.arch, n_classes=len(classes), width=b.width, classes=classes)
        write_json(f"{METRICS}/baseline.json", metrics)


if __name__ == "__main__":
    main()
