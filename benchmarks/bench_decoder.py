"""Benchmark the world decoder's pre-training: wall time, peak memory, quality.

Trains with params.yaml's decoder.train.* on the prepared world's corpus,
conditioned on the world CLIP's image embeddings, then decodes caption
prompts and scores them (failmap.decoders.quality): class prompts by CLIP
zero-shot and the baseline classifier, colour / context prompts by CLIP
zero-shot attribute accuracy. Needs the prepare, pretrain_clip and (for the
classifier figure) train_baseline outputs; paths default to the pipeline's.

    OMP_NUM_THREADS=1 python benchmarks/bench_decoder.py [--threads 1] [--steps N] [--out DIR]
        [--set KEY=VALUE ...] [--guidance 3.0 ...] [--inference-steps 25 ...] [--eval-every N]

``--set`` overrides any decoder.train key (the value is parsed as YAML:
``--set text_cond_prob=0.5 --set channels=[32,64,64]``); ``--guidance`` and
``--inference-steps`` score the trained decoder at every listed combination
(the first pair is the headline ``quality``); ``--eval-every N`` also scores
the averaged weights every N steps during training (first combination; that
time is excluded from ``train_seconds``).

Prints one JSON object; the machine is shared, so also note the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--clip", default="models/clip", help="world CLIP folder (pretrain_clip output)")
    ap.add_argument("--classifier", default="models/baseline.pt", help="skipped when missing")
    ap.add_argument("--out", default=None, help="where to save the decoder (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="override decoder.train.steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override decoder.train.KEY (value parsed as YAML); repeatable")
    ap.add_argument("--guidance", type=float, nargs="+", default=None, help="default decoder.guidance_scale")
    ap.add_argument("--inference-steps", type=int, nargs="+", default=None,
                    help="default decoder.num_inference_steps")
    ap.add_argument("--spacing", nargs="+", default=None, choices=["leading", "trailing", "linspace"],
                    help="also score with the DDIM timestep_spacing overridden (default: as saved)")
    ap.add_argument("--eval-every", type=int, default=0, help="score snapshots every N training steps")
    ap.add_argument("--n-per-class", type=int, default=16)
    ap.add_argument("--grid", default=None, help="write a PNG grid of class-prompt samples here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from failmap.data import load_meta, load_split
    from failmap.decoders.loader import check_compatible, load_decoder
    from failmap.decoders.quality import decoder_report
    from failmap.decoders.training import train_decoder
    from failmap.embedder import load_embedder
    from failmap.world import CONTEXT_PHRASE

    params = yaml.safe_load(open(args.params))
    dec, world = params["decoder"], params["world"]
    train_kw = dict(dec["train"])
    if args.steps is not None:
        train_kw["steps"] = args.steps
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set needs KEY=VALUE, got {item!r}")
        train_kw[key] = yaml.safe_load(value)
    guidances = args.guidance or [dec["guidance_scale"]]
    inference_steps = args.inference_steps or [dec["num_inference_steps"]]
    combos = [(g, k, sp) for sp in (args.spacing or [None]) for k in inference_steps for g in guidances]
    meta = load_meta(args.prepared)
    corpus = load_split(args.prepared, "corpus")
    embedder = load_embedder("world", model_dir=args.clip, device="cpu")

    t0 = time.perf_counter()
    image_embeds = embedder.embed_images(corpus.images)
    # every corpus caption, so the bridge's text mean follows the same pairs as its image mean
    text_embeds = embedder.embed_texts_per_row(corpus.captions)
    embed_seconds = time.perf_counter() - t0

    classifier = None
    if Path(args.classifier).is_file():
        from failmap.models import load_classifier
        classifier = load_classifier(args.classifier)[0]

    # decoding the image embeddings of held-out corpus images separates "cannot draw the shapes" from
    # "the bridged caption points at the wrong image": the classifier's accuracy on those is the ceiling
    rng = np.random.default_rng(0)
    recon_idx = rng.choice(len(corpus.images), size=min(96, len(corpus.images)), replace=False)

    def score(decoder, guidance, n_steps, spacing=None):
        if spacing is not None:
            from diffusers import DDIMScheduler
            decoder.scheduler = DDIMScheduler.from_config(decoder.scheduler.config, timestep_spacing=spacing)
        report, images = decoder_report(
            decoder, embedder, meta["classes"], colours={c: c for c in world["colours"]},
            contexts={c: CONTEXT_PHRASE[c] for c in world["contexts"]}, classifier=classifier,
            n_per_class=args.n_per_class, guidance_scale=guidance,
            num_inference_steps=n_steps, batch_size=dec["batch_size"], seed=params["seed"],
            mixed_precision=dec["mixed_precision"], show_progress=False)
        if classifier is not None:
            from failmap.train import predict_proba
            recon = decoder.decode_images(image_embeds[recon_idx], guidance_scale=guidance,
                                          num_inference_steps=n_steps, batch_size=dec["batch_size"],
                                          seed=params["seed"], mixed_precision=dec["mixed_precision"],
                                          show_progress=False)
            pred = predict_proba(classifier, recon, "cpu").argmax(1)
            report["image_embedding_recon"] = dict(
                classifier_accuracy=float((pred == corpus.labels[recon_idx]).mean()), n=len(recon_idx))
        return report, images

    snapshots, snapshot_seconds = [], [0.0]

    def on_snapshot(step, decoder):
        t = time.perf_counter()
        snapshots.append(dict(step=step, **summary(score(decoder, *combos[0])[0])))
        snapshot_seconds[0] += time.perf_counter() - t
        print(json.dumps(snapshots[-1]), file=sys.stderr, flush=True)

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_decoder_")) / "decoder"
    t0 = time.perf_counter()
    metrics = train_decoder(corpus.images, image_embeds, text_embeds, out, space=embedder.space,
                            seed=params["seed"], device="cpu", snapshot_every=args.eval_every,
                            on_snapshot=on_snapshot if args.eval_every else None, **train_kw)
    train_seconds = time.perf_counter() - t0 - snapshot_seconds[0]
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    decoder = load_decoder("world", out, device="cpu")
    check_compatible(embedder.space, embedder.dim, decoder)
    results = []
    for guidance, n_steps, spacing in combos:
        t0 = time.perf_counter()
        rep, imgs = score(decoder, guidance, n_steps, spacing)
        results.append(dict(guidance_scale=guidance, num_inference_steps=n_steps,
                            timestep_spacing=decoder.scheduler.config.timestep_spacing,
                            decode_and_score_seconds=round(time.perf_counter() - t0, 1), **summary(rep)))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        if len(results) == 1:
            report, images, decode_seconds = rep, imgs, time.perf_counter() - t0
    if args.grid:
        from failmap.plots import image_grid
        image_grid(images["class"], args.grid, ncol=args.n_per_class,
                   title="decoded from 'a photo of a {class}', one row per class")

    print(json.dumps(dict(
        train=dict(train_kw, seed=params["seed"]), threads=args.threads, load_average=os.getloadavg(),
        embed_corpus_seconds=round(embed_seconds, 1), train_seconds=round(train_seconds, 1),
        decode_and_score_seconds=round(decode_seconds, 1), peak_rss_mb=round(peak_rss_mb),
        final_loss=metrics["final_loss"], n_parameters=metrics["n_parameters"],
        snapshots=snapshots, grid=results, quality=report, python=sys.version.split()[0]), indent=2))


def summary(report: dict) -> dict:
    """The headline figures of a decoder_report."""
    c = report["class_prompt"]
    return dict(clip_class=round(c["clip_class_accuracy"], 3),
                classifier_class=round(c.get("classifier_accuracy", float("nan")), 3),
                colour=round(report["colour_prompt"]["clip_colour_accuracy"], 3),
                context=round(report["context_prompt"]["clip_context_accuracy"], 3),
                recon_classifier=round(report.get("image_embedding_recon", {}).get("classifier_accuracy",
                                                                                   float("nan")), 3))


if __name__ == "__main__":
    main()
