"""Stage finetune: for every arm and seed, fine-tune a copy of the baseline on
train plus the arm's extra images (synthetic, or selected from the pool) and
save its test predictions for the evaluate stage (METHOD.md step 6). The
``pool_svm`` arm picks by the class SVM, or with ``modes.drive: modes`` by the
failure modes' scores, spread over each class's modes by share (``top_mode``:
all by its largest mode)."""
import numpy as np

from failmap.data import load_meta, load_split
from failmap.device import resolve_device
from failmap.evaluation import predict_labels
from failmap.finetune import GENERATED_ARMS, FrozenFeatures, finetune_arm, select_pool
from failmap.io import atomic_path, write_json
from failmap.modes import drive_shares, load_modes
from failmap.predictions import load_predictions
from failmap.stage import BASELINE_MODEL, BASELINE_PREDICTIONS, FINETUNED, GENERATED, PREPARED, SVM_DIR, run_stage



def extra_data(arm, seed, p, pool, pool_decision, pool_confidence, pool_modes=(None, None)):
    """(images, labels, notes) the arm adds to train; ``pool_modes``: (pool mode
    scores, mode shares per class) when modes drive pool_svm, else (None, None)."""
    if arm == "none":
        return None, None, []
    if arm in GENERATED_ARMS:
        synthetic = load_split(GENERATED, arm)
        return synthetic.images, synthetic.labels, []
    if pool is None or len(pool) == 0:
        raise SystemExit(f"finetune.arms has '{arm}' but the source has no pool split "
                         f"(set world.n_pool / data.n_pool > 0, or drop the pool_* arms)")
    chosen = select_pool(arm, pool.labels, pool_decision, pool_confidence, p.finetune.pool_k, seed, *pool_modes)
    return pool.images[chosen.indices], pool.labels[chosen.indices], chosen.notes


def main():
    with run_stage("finetune") as p:
        f = p.finetune
        meta = load_meta(PREPARED)
        device = resolve_device(p.baseline.device)
        train, test = load_split(PREPARED, "train"), load_split(PREPARED, "test")
        pool = load_split(PREPARED, "pool") if meta["splits"].get("pool") else None
        pool_decision = pool_confidence = None
        pool_modes = (None, None)
        if pool is not None:
            with np.load(f"{SVM_DIR}/decisions.npz") as z:
                pool_decision, pool_mode_scores = z["pool_decision"], z["pool_mode_scores"]
            pool_confidence = load_predictions(f"{BASELINE_PREDICTIONS}/pool.csv")["confidence"]
            if p.modes.drive != "svm":
                modes, _ = load_modes(f"{SVM_DIR}/modes.npz")
                pool_modes = (pool_mode_scores, drive_shares(modes, top_only=p.modes.drive == "top_mode"))
        features = FrozenFeatures(BASELINE_MODEL, device)
        predictions, runs = {}, []
        for arm in f.arms:
            for seed in f.seeds:
                images, labels, notes = extra_data(arm, seed, p, pool, pool_decision, pool_confidence, pool_modes)
                model = finetune_arm(BASELINE_MODEL, train.images, train.labels, images, labels,
                                     last_layer_only=f.last_layer_only, epochs=f.epochs, batch_size=f.batch_size,
                                     lr=f.lr, momentum=f.momentum, weight_decay=f.weight_decay, seed=seed,
                                     device=device, features=features if f.last_layer_only else None)
                predictions[f"{arm}/{seed}"] = predict_labels(model, test.images, device, features)
                runs.append({"arm": arm, "seed": seed, "n_extra": 0 if images is None else len(images),
                             "notes": notes})
        with atomic_path(f"{FINETUNED}/test_predictions.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=test.ids, **predictions)
        write_json(f"{FINETUNED}/runs.json", runs)


if __name__ == "__main__":
    main()
