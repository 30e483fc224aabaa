"""Benchmark the world decoder's pre-training: wall time, peak memory, quality.

Trains with params.yaml's decoder.train.* on the prepared world's corpus,
conditioned on the world CLIP's image embeddings, then decodes caption
prompts and scores them (failmap.decoder_eval): class prompts by CLIP
zero-shot and the baseline classifier, colour / context prompts by CLIP
zero-shot attribute accuracy. Needs the prepare, pretrain_clip and (for the
classifier figure) train_baseline outputs; paths default to the pipeline's.

    OMP_NUM_THREADS=2 python benchmarks/bench_decoder.py [--threads 2] [--steps N] [--out DIR]

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
    ap.add_argument("--n-per-class", type=int, default=16)
    ap.add_argument("--grid", default=None, help="write a PNG grid of class-prompt samples here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from failmap.data import load_meta, load_split
    from failmap.decoder import check_compatible, load_decoder
    from failmap.decoder_eval import decoder_report
    from failmap.decoder_train import train_decoder
    from failmap.embedder import load_embedder
    from failmap.world import CONTEXT_PHRASE

    params = yaml.safe_load(open(args.params))
    dec, world = params["decoder"], params["world"]
    train_kw = dict(dec["train"])
    if args.steps is not None:
        train_kw["steps"] = args.steps
    meta = load_meta(args.prepared)
    corpus = load_split(args.prepared, "corpus")
    embedder = load_embedder("world", model_dir=args.clip, device="cpu")

    t0 = time.perf_counter()
    image_embeds = embedder.embed_images(corpus.images)
    # every corpus caption, so the bridge's text mean follows the same pairs as its image mean;
    # each distinct caption is embedded once
    unique, inverse = np.unique(corpus.captions, return_inverse=True)
    text_embeds = embedder.embed_texts(unique.tolist())[inverse]
    embed_seconds = time.perf_counter() - t0

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_decoder_")) / "decoder"
    t0 = time.perf_counter()
    metrics = train_decoder(corpus.images, image_embeds, text_embeds, out, space=embedder.space,
                            seed=params["seed"], device="cpu", **train_kw)
    train_seconds = time.perf_counter() - t0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    decoder = load_decoder("world", out, device="cpu")
    check_compatible(embedder.space, embedder.dim, decoder)
    classifier = None
    if Path(args.classifier).is_file():
        from failmap.models import load_classifier
        classifier = load_classifier(args.classifier)[0]
    t0 = time.perf_counter()
    report, images = decoder_report(
        decoder, embedder, meta["classes"], colours={c: c for c in world["colours"]},
        contexts={c: CONTEXT_PHRASE[c] for c in world["contexts"]}, classifier=classifier,
        n_per_class=args.n_per_class, guidance_scale=dec["guidance_scale"],
        num_inference_steps=dec["num_inference_steps"], batch_size=dec["batch_size"], seed=params["seed"],
        show_progress=False)
    decode_seconds = time.perf_counter() - t0
    if args.grid:
        from failmap.plots import image_grid
        image_grid(images["class"], args.grid, ncol=args.n_per_class,
                   title="decoded from 'a photo of a {class}', one row per class")

    print(json.dumps(dict(
        train=dict(train_kw, seed=params["seed"]), threads=args.threads, load_average=os.getloadavg(),
        embed_corpus_seconds=round(embed_seconds, 1), train_seconds=round(train_seconds, 1),
        decode_and_score_seconds=round(decode_seconds, 1), peak_rss_mb=round(peak_rss_mb),
        final_loss=metrics["final_loss"], n_parameters=metrics["n_parameters"],
        quality=report, python=sys.version.split()[0]), indent=2))


if __name__ == "__main__":
    main()
