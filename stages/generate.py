"""Stage generate: decode synthetic images per class for the training arms
(generic, caption, direction) and the hard / neutral / easy evaluation sets,
and check that the baseline does worst on the hard ones (METHOD.md step 5).

Before anything is saved, the generator check: CLIP must recognise the class
of the neutral evaluation images at least ``generate.min_class_recognition``
of the time, or the synthetic arms are marked untrusted (stderr, metrics,
MLflow tag ``failmap.synthetic_trusted``). ``generate.filter`` drops the
training-arm images CLIP puts in another class. The decoder calls run on the
engine ``compute`` names (failmap.engine); every image keeps its seed.
``modes.drive`` names what steers the caption and direction arms and the
evaluation images: each class's SVM, or its failure modes with the images
spread over them by share (failmap.generate); with modes, the metrics add the
baseline's accuracy on each mode's decoded images."""
import sys

from failmap.captions import reference_caption
from failmap.data import load_meta
from failmap.decoders.loader import sampling_settings
from failmap.device import resolve_device
from failmap.engine import open_engine
from failmap.evaluation import (accuracy_on_generated, clip_class_predictions, decoded_decision_report,
                                generator_check, hard_neutral_easy_report)
from failmap.generate import (decode_plans, load_generation_inputs, load_inputs_decoder, mode_eval_report,
                              plan_caption, plan_direction, plan_eval, plan_generic)
from failmap.generated import keep_on_class, save_generated, save_grid, write_manifest
from failmap.io import write_json
from failmap.models import load_classifier
from failmap.stage import BASELINE_MODEL, GENERATED, METRICS, PLOTS, PREPARED, run_stage


def main():
    with run_stage("generate") as p:
        g = p.generate
        meta = load_meta(PREPARED)
        classes = meta["classes"]
        inputs = load_generation_inputs(p, meta)
        decoder, embedder, steers, references = inputs.decoder, inputs.embedder, inputs.steers, inputs.references
        decode = sampling_settings(p.decoder)
        n, seed = g.n_per_class, p.seed
        plans = []
        refs = [reference_caption(p.caption.template, name) for name in classes]
        if "generic" in p.finetune.arms:
            plans.append(plan_generic(embedder.embed_texts, classes, refs, n, seed))
        if "caption" in p.finetune.arms:
            plans.append(plan_caption(decoder, embedder.embed_texts, classes, inputs.hard_captions, steers, n, seed,
                                      n_captions=g.n_captions, references=references, weight=g.caption_weight,
                                      mode_captions=inputs.mode_captions))
        if "direction" in p.finetune.arms:
            plans.append(plan_direction(decoder, classes, references, steers, g.alpha, n, seed, inputs.extents))
        plans.append(plan_eval(decoder, classes, references, steers, g.eval_alphas, g.n_eval_per_class, seed,
                               inputs.extents))
        with open_engine(p.compute) as engine:  # every decoder call of every set: one job
            *sets, eval_set = decode_plans(plans, engine, load_inputs_decoder(p, meta), decoder, **decode)

        predicted = {s.name: clip_class_predictions(embedder.embed_images, embedder.embed_texts, refs, s.images)
                     for s in sets + [eval_set]}
        check = generator_check(predicted[eval_set.name], eval_set, classes, g.min_class_recognition,
                                arms={s.name: (predicted[s.name], s.labels) for s in sets})
        if not check["trusted"]:
            arms = {a: round(v, 2) for a, v in check["arms_clip_class_accuracy"].items()}
            print(f"WARNING generate: the decoder's images are not of their class. CLIP recognises the class of "
                  f"{check['neutral_clip_class_accuracy']:.0%} of the neutral evaluation images (per class: "
                  f"{ {c: round(v, 2) for c, v in check['per_class'].items()} }) and, per arm, {arms}; "
                  f"generate.min_class_recognition is {g.min_class_recognition:.0%}. The synthetic arms "
                  f"(generic, caption, direction) are marked untrusted; generate.filter: true drops off-class "
                  f"images.", file=sys.stderr, flush=True)
        decoded = {s.name: int(len(s)) for s in sets}
        if g.filter:
            sets = [keep_on_class(s, predicted[s.name]) for s in sets]
        sets.append(eval_set)
        for generated in sets:
            save_generated(GENERATED, generated, allow_empty=g.filter and generated is not eval_set)
            if len(generated):
                save_grid(generated, f"{PLOTS}/generate/{generated.name}.png")
            else:
                print(f"WARNING generate: generate.filter dropped every image of the {generated.name!r} arm: it "
                      f"fine-tunes on train alone", file=sys.stderr, flush=True)
        write_manifest(f"{GENERATED}/manifest.csv", sets)

        device = resolve_device(p.baseline.device)
        model, _ = load_classifier(BASELINE_MODEL, device)
        metrics = {"drive": p.modes.drive,
                   "eval": hard_neutral_easy_report(model, eval_set, classes, device),
                   "eval_by_mode": mode_eval_report(model, eval_set, classes, device),
                   "eval_svm_decision": decoded_decision_report(embedder.embed_images, inputs.svms, eval_set),
                   "train_arms": {s.name: accuracy_on_generated(model, s.images, s.labels, device, classes)
                                  for s in sets if s is not eval_set},
                   "n_images": {s.name: int(len(s)) for s in sets}, "generator_check": check,
                   "filter": {"enabled": g.filter, "decoded": decoded,
                              "kept": {s.name: int(len(s)) for s in sets if s is not eval_set}}}
        write_json(f"{METRICS}/generated.json", metrics)


if __name__ == "__main__":
    main()
