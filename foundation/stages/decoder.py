"""Stage decoder: train the world decoder on the foundation corpus, conditioned
on the shipped world CLIP's embeddings; export it as it ships (float16
safetensors, ``DiffusionPipeline.from_pretrained`` folder) with its model card.

Training is long on a CPU, so it checkpoints every ``decoder.checkpoint_every``
steps to work/decoder_checkpoint.pt and resumes from there; every
``decoder.eval_every`` steps it scores the averaged weights (a point of the
quality curve, kept beside the checkpoint, and a sample grid).

    python stages/decoder.py [--until-step N]   # pause at step N and export what there is
                                                # (N at or below the checkpoint's step: export the checkpoint)
"""
import argparse
import time
from pathlib import Path

import numpy as np

from failmap.decoders.loader import load_decoder
from failmap.decoders.training import train_decoder
from failmap.device import resolve_mixed_precision
from failmap.embedder import load_embedder
from failmap.foundation import (CLIP_NAME, CORPUS_DIR, DECODER_NAME, METRICS_DIR, PLOTS_DIR, WORK_DIR, corpus_card,
                                corpus_spec, export_decoder, hardware, load_corpus, load_foundation_params,
                                built_dir, verify_card, write_card)
from failmap.foundation_eval import (SELECTION_SAMPLES, SELECTION_SEED_OFFSET, decoder_quality, decoder_summary,
                                     heldout_halves, select_sampling, visible_mask)
from failmap.io import read_json, write_json
from failmap.models import load_classifier
from failmap.params import as_dict
from failmap.plots import image_grid, line_plot

CHECKPOINT = f"{WORK_DIR}/decoder_checkpoint.pt"
CURVE = f"{WORK_DIR}/decoder_curve.json"      # grows across resumed runs, like the checkpoint
RUNS = f"{WORK_DIR}/decoder_runs.json"        # one row per (resumed) run: its steps, seconds and hardware
CURVE_SAMPLES = dict(n_per_shape=8, n_heldout=96)
PER_ROW = 8                                     # real | decoded images per shape in real_vs_decoded.png


def real_beside_decoded(heldout, images, shapes) -> np.ndarray:
    """One row per shape: PER_ROW visible held-out images, then PER_ROW decoded from its prompt."""
    visible = visible_mask(heldout["colour"], heldout["context"])
    blank = np.full((PER_ROW,) + heldout["images"].shape[1:], 255, np.uint8)

    def padded(x):
        return np.concatenate([x[:PER_ROW], blank[len(x[:PER_ROW]):]])
    rows = []
    for k, shape in enumerate(shapes):
        rows += [padded(heldout["images"][(heldout["shape"] == shape) & visible]),
                 padded(images["shape_prompt"][images["shape_prompt_labels"] == k])]
    return np.concatenate(rows)


def curve_point(step, pipe, embedder, judge, heldout, spec, settings) -> dict:
    report, images = decoder_quality(pipe, embedder, judge, heldout, spec, **CURVE_SAMPLES, **settings)
    image_grid(images["shape_prompt"], f"{PLOTS_DIR}/decoder_progress/step_{step:06d}.png", ncol=8,
               title=f"step {step}: 'a photo of a {{shape}}', one row per shape")
    return dict(step=step, **decoder_summary(report))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--until-step", type=int, default=None, help="pause after this many steps")
    args = parser.parse_args()
    p = load_foundation_params()
    spec, d, r = corpus_spec(p), p.decoder, p.report
    verify_card(built_dir(CLIP_NAME))
    embedder = load_embedder("world", model_dir=built_dir(CLIP_NAME))
    judge, _ = load_classifier(f"{WORK_DIR}/judge.pt")
    corpus = load_corpus(CORPUS_DIR, "train")
    selection, heldout = heldout_halves(load_corpus(CORPUS_DIR, "heldout"))  # sampling chosen on one, scored on the other
    image_embeds = embedder.embed_images(corpus["images"])
    text_embeds = embedder.embed_texts_per_row(corpus["captions"])
    settings = dict(num_inference_steps=r.num_inference_steps, guidance_scale=r.guidance_scale,
                    batch_size=r.batch_size, show_progress=False, seed=p.seed)   # the curve's
    curve = read_json(CURVE) if Path(CURVE).is_file() else []
    runs = read_json(RUNS) if Path(RUNS).is_file() else []

    def on_snapshot(step, pipe):
        curve.append(curve_point(step, pipe, embedder, judge, heldout, spec, settings))
        write_json(CURVE, curve)
        print(f"quality at step {step}: {curve[-1]}", flush=True)

    train_params = {k: v for k, v in as_dict(d).items() if k not in ("checkpoint_every", "eval_every")}
    start = time.perf_counter()
    train = train_decoder(corpus["images"], image_embeds, text_embeds, f"{WORK_DIR}/decoder", space=embedder.space,
                          seed=p.seed, device="auto", **train_params, checkpoint_path=CHECKPOINT,
                          checkpoint_every=d.checkpoint_every, snapshot_every=d.eval_every,
                          on_snapshot=on_snapshot, stop_at=args.until_step)
    history = train.pop("history")
    from_step = runs[-1]["to_step"] if runs else 0
    if train["steps_done"] > from_step:
        runs.append(dict(from_step=from_step, to_step=train["steps_done"], seconds=round(time.perf_counter() - start, 1),
                         hardware=hardware(), bfloat16=resolve_mixed_precision(d.mixed_precision, train["device"])))
        write_json(RUNS, runs)

    out = export_decoder(load_decoder("world", f"{WORK_DIR}/decoder", device="cpu"), built_dir(DECODER_NAME))
    decoder = load_decoder("world", out, device="cpu")   # score what ships
    sampling, sampling_grid = select_sampling(decoder, embedder, judge, selection, spec, guidance_grid=r.guidance_grid,
                                              steps_grid=r.steps_grid, seed=p.seed + SELECTION_SEED_OFFSET,
                                              **SELECTION_SAMPLES, batch_size=r.batch_size, show_progress=False)
    print(f"sampling chosen on the selection half: {sampling}", flush=True)
    quality, images = decoder_quality(decoder, embedder, judge, heldout, spec, n_per_shape=r.n_per_shape,
                                      **{**settings, **sampling})
    if not curve or curve[-1]["step"] != train["steps_done"]:
        curve.append(curve_point(train["steps_done"], decoder, embedder, judge, heldout, spec, settings))
        write_json(CURVE, curve)
    image_grid(images["shape_prompt"], f"{PLOTS_DIR}/decoder/shape_prompts.png", ncol=16,
               title="decoded from 'a photo of a {shape}', two rows per shape")
    image_grid(real_beside_decoded(heldout, images, spec.shapes), f"{PLOTS_DIR}/decoder/real_vs_decoded.png",
               ncol=2 * PER_ROW, title=f"per shape: {PER_ROW} held-out real images | {PER_ROW} decoded from "
                                       f"'a photo of a {{shape}}'")
    image_grid(images["real"][:48], f"{PLOTS_DIR}/decoder/heldout_real.png", ncol=16,
               title="held-out corpus images (real)")
    image_grid(images["from_image_embedding"][:48], f"{PLOTS_DIR}/decoder/heldout_decoded.png", ncol=16,
               title="decoded from those images' CLIP embeddings")
    card = dict(model=DECODER_NAME, kind="failmap EmbeddingDecoderPipeline (diffusers UNet2DConditionModel + DDIM), "
                                         "float16 safetensors",
                load="diffusers DiffusionPipeline.from_pretrained(<folder>); failmap: load_decoder('world', <folder>)",
                corpus=corpus_card(spec, len(corpus["images"]), p.seed), params=as_dict(d),
                clip=dict(model=CLIP_NAME, space=embedder.space), training=train,
                complete=train["steps_done"] == d.steps, runs=runs,
                quality_heldout=quality, quality_curve=curve, sampling={**settings, **sampling},
                sampling_selection=dict(heldout="the even held-out images (the report scores the odd ones)",
                                        rule="per step count, each condition kind's (text prompts, image embeddings) "
                                             "guidance maximises its weakest figure / bar; then the step count "
                                             "whose weaker kind is best", grid=sampling_grid))
    write_card(out, card)
    write_json(f"{METRICS_DIR}/decoder_sampling.json", dict(chosen=sampling, grid=sampling_grid))
    write_json(f"{METRICS_DIR}/decoder.json", dict(quality_heldout=quality, sampling=sampling,
                                                    steps_done=train["steps_done"],
                                                    steps=d.steps, train_seconds=train["train_seconds"]))
    write_json(f"{METRICS_DIR}/decoder_curve.json", curve)
    line_plot(curve, "step", [k for k in curve[0] if k != "step"], f"{PLOTS_DIR}/decoder/quality_curve.png",
              title="world decoder: quality against training steps", ylabel="share recognised / shown",
              hlines={"bar 0.90 (shape)": 0.90, "bar 0.95 (colour, context)": 0.95})
    write_json(f"{METRICS_DIR}/decoder_loss.json", history)


if __name__ == "__main__":
    main()
