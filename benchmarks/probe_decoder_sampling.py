"""Probe: the built world decoder's barred figures on the report (odd) half of
the held-out foundation images at fixed (guidance, DDIM steps) pairs.

A probe, not a selection: the report half must not choose the sampling
(failmap.foundation_eval.select_sampling picks it on the even half). Run in
foundation/ (2 threads: ~2-3 min a pair):

    OMP_NUM_THREADS=2 python ../benchmarks/probe_decoder_sampling.py
"""
import time

from failmap.decoders.loader import load_decoder
from failmap.embedder import load_embedder
from failmap.foundation import (CLIP_NAME, CORPUS_DIR, DECODER_NAME, WORK_DIR, built_dir, corpus_spec, load_corpus,
                                load_foundation_params)
from failmap.foundation_eval import decoder_quality, decoder_summary, heldout_halves
from failmap.models import load_classifier

PAIRS = [(3.0, 10), (2.5, 15), (2.5, 10), (3.0, 15)]   # (guidance_scale, num_inference_steps)


def main():
    p = load_foundation_params()
    spec = corpus_spec(p)
    embedder = load_embedder("world", model_dir=built_dir(CLIP_NAME))
    judge, _ = load_classifier(f"{WORK_DIR}/judge.pt")
    _, report_half = heldout_halves(load_corpus(CORPUS_DIR, "heldout"))
    decoder = load_decoder("world", built_dir(DECODER_NAME), device="cpu")
    for guidance, steps in PAIRS:
        start = time.time()
        report, _ = decoder_quality(decoder, embedder, judge, report_half, spec, n_per_shape=p.report.n_per_shape,
                                    seed=p.seed, guidance_scale=guidance, num_inference_steps=steps,
                                    batch_size=p.report.batch_size, show_progress=False)
        figures = {k: round(v, 3) for k, v in decoder_summary(report).items()}
        per_shape = {k: round(v, 2) for k, v in report["shape_prompt"]["judge"]["per_shape"].items()}
        print(f"guidance {guidance} steps {steps}: {figures} judge per shape {per_shape} "
              f"({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
