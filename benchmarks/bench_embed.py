"""Benchmark the embed stage's throughput against a raw open_clip forward loop.

Both sides embed the same images at the same batch size with the same model:

- failmap: ``Embedder.embed_images`` on the uint8 images as the stage calls it
  (preprocessing on the fly, fp32 on CPU, unit vectors copied into a numpy array);
- raw: ``model.encode_image`` + L2 normalisation over tensors preprocessed
  beforehand (its preprocessing is not timed), under ``torch.inference_mode``.

Runs alternate (raw, failmap, raw, failmap, ...) so both see the same machine
load, and the best of ``--repeats`` is kept for each. Prints one JSON object
with images per second for both and the ratio failmap / raw (target >= 0.9).

    OMP_NUM_THREADS=1 python benchmarks/bench_embed.py                    # the world CLIP (models/clip)
    OMP_NUM_THREADS=1 python benchmarks/bench_embed.py --arch ViT-B-32 --n 256   # random-weight open_clip model
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="models/clip", help="world CLIP folder (pretrain_clip output)")
    ap.add_argument("--arch", default=None, help="an open_clip architecture with random weights instead")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=3000, help="images to embed (from the split)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from failmap.data import load_split
    from failmap.embedder import load_embedder

    images = load_split(args.prepared, args.split).images[:args.n]
    with tempfile.TemporaryDirectory() as tmp:
        if args.arch:
            import open_clip
            weights = Path(tmp) / "weights.pt"
            torch.save(open_clip.create_model(args.arch, pretrained=None).state_dict(), weights)
            embedder = load_embedder("open_clip", args.arch, str(weights), device="cpu", batch_size=args.batch_size)
        else:
            embedder = load_embedder("world", model_dir=args.clip, device="cpu", batch_size=args.batch_size)
    embedder.show_progress = False
    model, bs = embedder.model, args.batch_size
    tensors = [embedder.preprocess(images[i:i + bs]) for i in range(0, len(images), bs)]

    def raw() -> np.ndarray:
        out = []
        with torch.inference_mode():
            for x in tensors:
                out.append(F.normalize(model.encode_image(x).float(), dim=-1))
        return torch.cat(out).numpy()

    def ours() -> np.ndarray:
        return embedder.embed_images(images)

    raw(), ours()  # warm-up (allocator, kernels)
    times = {"raw": [], "failmap": []}
    for _ in range(args.repeats):
        for name, fn in (("raw", raw), ("failmap", ours)):
            t0 = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t0)
    assert np.allclose(raw(), result, atol=1e-5), "the two loops disagree"
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({
        "model": args.arch or f"world CLIP ({args.clip})", "n_images": len(images), "batch_size": bs,
        "threads": args.threads, "input_size": list(embedder.image_size),
        "raw_images_per_s": round(len(images) / best["raw"], 1),
        "failmap_images_per_s": round(len(images) / best["failmap"], 1),
        "ratio_failmap_over_raw": round(best["raw"] / best["failmap"], 3),
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
