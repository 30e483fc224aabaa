"""Stage generate: decode synthetic images per class for the training arms
(generic, caption, direction) and the hard / neutral / easy evaluation sets,
and check that the baseline does worst on the hard ones (METHOD.md step 5)."""
import numpy as np

from failmap.captions import reference_caption
from failmap.data import load_meta
from failmap.decoder import check_compatible, load_decoder, sampling_settings
from failmap.device import resolve_device
from failmap.embedder import load_embedder
from failmap.embeddings import load_embeddings
from failmap.generate import (accuracy_on_generated, class_reference_embeddings, decoded_decision_report,
                              generate_caption, generate_direction, generate_eval, generate_generic,
                              hard_neutral_easy_report, save_generated, save_grid, write_manifest)
from failmap.io import read_json, write_json
from failmap.models import load_classifier
from failmap.predictions import load_predictions
from failmap.stage import (BASELINE_MODEL, BASELINE_PREDICTIONS, CLIP_DIR, DECODER_DIR, EMBEDDINGS, GENERATED,
                           METRICS, PLOTS, PREPARED, SVM_DIR, run_stage)
from failmap.svm import load_svms


def main():
    with run_stage("generate") as (p, run):
        c, d, g = p.clip, p.decoder, p.generate
        meta = load_meta(PREPARED)
        classes = meta["classes"]
        embedder = load_embedder(c.source, c.arch, c.pretrained, CLIP_DIR, c.device, c.batch_size)
        decoder = load_decoder(d.source, DECODER_DIR if d.source == "world" else d.model, d.text_model,
                               d.device, image_size=meta["image_size"])
        check_compatible(embedder.space, embedder.dim, decoder)  # before any decoding
        _, svms, _ = load_svms(f"{SVM_DIR}/svms.npz")
        top = read_json(f"{METRICS}/captions.json")["top"]
        hard_captions = {k: [t["caption"] for t in top[name]["hard"]] for k, name in enumerate(classes) if name in top}
        train_pred = load_predictions(f"{BASELINE_PREDICTIONS}/train.csv")
        references = class_reference_embeddings(load_embeddings(EMBEDDINGS, "train", train_pred["id"]),
                                                train_pred["label"], len(classes))
        decode = sampling_settings(d)
        n, seed = g.n_per_class, p.seed
        sets = []
        if "generic" in p.finetune.arms:
            refs = [reference_caption(p.caption.template, name) for name in classes]
            sets.append(generate_generic(decoder, embedder.embed_texts, classes, refs, n, seed, **decode))
        if "caption" in p.finetune.arms:
            sets.append(generate_caption(decoder, embedder.embed_texts, classes, hard_captions, svms, n, seed,
                                         n_captions=g.n_captions, references=references, weight=g.caption_weight,
                                         **decode))
        if "direction" in p.finetune.arms:
            sets.append(generate_direction(decoder, classes, references, svms, g.alpha, n, seed, **decode))
        eval_set = generate_eval(decoder, classes, references, svms, g.eval_alphas, g.n_eval_per_class, seed, **decode)
        sets.append(eval_set)
        for generated in sets:
            save_generated(GENERATED, generated)
            save_grid(generated, f"{PLOTS}/generate/{generated.name}.png")
        write_manifest(f"{GENERATED}/manifest.csv", sets)

        device = resolve_device(p.baseline.device)
        model, _ = load_classifier(BASELINE_MODEL, device)
        metrics = {"eval": hard_neutral_easy_report(model, eval_set, classes, device),
                   "eval_svm_decision": decoded_decision_report(embedder.embed_images, svms, eval_set),
                   "train_arms": {s.name: accuracy_on_generated(model, s.images, s.labels, device, classes)
                                  for s in sets if s is not eval_set},
                   "n_images": {s.name: int(len(s)) for s in sets}}
        write_json(f"{METRICS}/generated.json", metrics)
        run.log_metrics(metrics)
        run.log_artifact(f"{PLOTS}/generate", "generate")


if __name__ == "__main__":
    main()
