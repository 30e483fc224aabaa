"""What decoding itself costs the baseline's accuracy on generate's evaluation images (issue 14's bar
"decoded evaluation images: hard < neutral < easy").

The generate stage's *neutral* images decode each class's mean train image embedding (a prototype,
``failmap.conditions``); at alpha 1 its *easy* and *hard* images decode real val image embeddings (the
class's 5 % easiest / hardest by its direction: ``generate.walk: images``). A decoder redraws one real
embedding less faithfully than a class mean, so the easy images pay for that whatever the direction does.
This probe measures it on the workspace's pipeline outputs (after ``dvc repro``, or ``dvc exp apply
<experiment>``): per class ``--n`` val images the baseline gets right, drawn at random (no direction
involved), decoded with params.yaml's sampling, and the baseline's accuracy on them beside its accuracy on
the stage's neutral and alpha-1 easy images (``metrics/generated.json``). Prints one JSON line.

    python benchmarks/probe_decoded_controls.py [--n 16] [--seed 0]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from failmap.data import load_meta
from failmap.decoders.loader import load_decoder, sampling_settings
from failmap.embeddings import load_embeddings
from failmap.evaluation import accuracy_on_generated
from failmap.generate import derive_seed
from failmap.io import read_json
from failmap.models import load_classifier
from failmap.params import load_params
from failmap.predictions import load_predictions
from failmap.stage import BASELINE_MODEL, BASELINE_PREDICTIONS, DECODER_DIR, EMBEDDINGS, METRICS, PREPARED
from failmap.study import largest_alpha


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="decoded val images per class (generate: n_eval_per_class)")
    ap.add_argument("--seed", type=int, default=0, help="which val images are drawn")
    args = ap.parse_args()
    p = load_params("params.yaml")
    classes = load_meta(PREPARED)["classes"]
    val = load_predictions(f"{BASELINE_PREDICTIONS}/val.csv")
    embeds = load_embeddings(EMBEDDINGS, "val", val["id"])
    rng = np.random.default_rng(args.seed)
    decoder = load_decoder(p.decoder.source, DECODER_DIR, device="cpu")
    settings = sampling_settings(p.decoder)
    images, labels = [], []
    for k, name in enumerate(classes):
        right = np.flatnonzero((val["label"] == k) & (val["correct"] == 1))
        rows = rng.choice(right, size=min(args.n, len(right)), replace=False)
        images.append(decoder.decode_images(embeds[rows], seed=derive_seed(p.seed, "control", name),
                                            show_progress=False, **settings))
        labels.append(np.full(len(rows), k))
    model, _ = load_classifier(BASELINE_MODEL, "cpu")
    control = accuracy_on_generated(model, np.concatenate(images), np.concatenate(labels), "cpu", classes)
    generated = read_json(f"{METRICS}/generated.json")
    stage, largest = generated["eval"], largest_alpha(generated)  # the alpha the study's decoded figures read
    print(json.dumps({"seed": p.seed, "planted_attribute": p.world.planted_attribute if p.world else None,
                      "decoded_right_val_images": round(control["accuracy"], 4),
                      "neutral_class_means": round(stage["neutral"]["accuracy"], 4),
                      f"easy_{largest}": round(stage["alphas"][largest]["easy"]["accuracy"], 4),
                      f"hard_{largest}": round(stage["alphas"][largest]["hard"]["accuracy"], 4),
                      "per_class_decoded_right_val_images": {c: round(v, 3) for c, v in control["per_class"].items()}}))


if __name__ == "__main__":
    main()
