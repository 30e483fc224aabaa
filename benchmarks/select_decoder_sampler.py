"""Select the shipped world decoder's sampler, steps and guidance on the
selection half of the held-out foundation images, by the foundation's own
rule (``failmap.foundation_eval.select_sampling``: the same half, seed and
sample counts as foundation/stages/decoder.py), over the samplers of
``failmap.decoders.samplers`` as well as the steps and guidances. The card's
``sampling`` was chosen over DDIM alone; params.yaml's ``decoder`` sampling
is this file's pick (tests/test_decoder.py checks it). Writes
benchmarks/decoder_sampling.json. Run in foundation/ (2 threads: ~10 min):

    OMP_NUM_THREADS=2 python ../benchmarks/select_decoder_sampler.py
"""
import tempfile
import time
from pathlib import Path

from failmap.decoders.loader import load_decoder
from failmap.embedder import load_embedder
from failmap.foundation import (CLIP_NAME, CORPUS_DIR, CORPUS_STREAMS, DECODER_NAME, WORK_DIR, built_dir, corpus_spec,
                                hardware, load_corpus, load_foundation_params, render_corpus, save_corpus)
from failmap.foundation_eval import SELECTION_SAMPLES, SELECTION_SEED_OFFSET, heldout_halves, select_sampling
from failmap.io import write_json
from failmap.models import load_classifier

SAMPLERS = ["ddim", "dpm_solver"]
STEPS = [5, 10]
OUT = Path(__file__).resolve().parent / "decoder_sampling.json"


def heldout_images(p, spec) -> dict:
    """The corpus stage's held-out part: its file where built, else rendered alike (same seed and stream)."""
    if (Path(CORPUS_DIR) / "heldout.npz").is_file():
        return load_corpus(CORPUS_DIR, "heldout")
    with tempfile.TemporaryDirectory() as tmp:
        save_corpus(tmp, "heldout", *render_corpus(spec, p.corpus.n_heldout, p.seed, CORPUS_STREAMS["heldout"],
                                                   desc="held-out corpus"))
        return load_corpus(tmp, "heldout")


def main():
    p = load_foundation_params()
    spec, r = corpus_spec(p), p.report
    selection, _ = heldout_halves(heldout_images(p, spec))
    embedder = load_embedder("world", model_dir=built_dir(CLIP_NAME))
    judge, _ = load_classifier(f"{WORK_DIR}/judge.pt")
    decoder = load_decoder("world", built_dir(DECODER_NAME), device="cpu")
    start = time.time()
    pick, rows = select_sampling(decoder, embedder, judge, selection, spec, guidance_grid=r.guidance_grid,
                                 steps_grid=STEPS, samplers=SAMPLERS, seed=p.seed + SELECTION_SEED_OFFSET,
                                 **SELECTION_SAMPLES, batch_size=r.batch_size, show_progress=False)
    for row in rows:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    print(f"pick: {pick} ({time.time() - start:.0f} s)")
    write_json(OUT, dict(pick=pick, rows=rows, samplers=SAMPLERS, steps=STEPS, guidance=list(r.guidance_grid),
                         seconds=round(time.time() - start), hardware=hardware()))


if __name__ == "__main__":
    main()
