"""Benchmark the shipped world decoder's sampling speed against its batch size.

Decodes the same random unit vectors at each batch size with params.yaml's
image-condition sampling (decoder.sampler, num_inference_steps,
guidance_scale), prints seconds and milliseconds per image and UNet step, and
checks that every batch size gives the images of the first (image i depends
on its vector and the seed only). The machine is shared: run it alone.

    python benchmarks/bench_decode_batch.py [--threads 2] [--n 450] [--batch-sizes 64 16 32 128 8]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from failmap.decoders.loader import load_decoder, sampling_settings
from failmap.decoders.sphere import normalize
from failmap.params import load_params
from failmap.shipped import DECODER_NAME, shipped_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=450, help="vectors decoded at each batch size")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 16, 32, 128, 8])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = {k: v for k, v in sampling_settings(load_params(args.params).decoder).items() if k != "batch_size"}
    decoder = load_decoder("world", shipped_dir(DECODER_NAME), device="cpu")
    vectors = normalize(np.random.default_rng(0).normal(size=(args.n, decoder.dim)))
    first, rows = None, []
    for batch_size in args.batch_sizes:
        start = time.perf_counter()
        images = decoder.decode_images(vectors, seed=0, batch_size=batch_size, show_progress=False, **settings)
        seconds = time.perf_counter() - start
        first = images if first is None else first
        rows.append(dict(batch_size=batch_size, seconds=round(seconds, 1),
                         ms_per_image_step=round(1000 * seconds / args.n / settings["num_inference_steps"], 2),
                         same_images_as_first=bool(np.array_equal(images, first))))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(dict(sampling=settings, threads=args.threads, n=args.n, rows=rows)))


if __name__ == "__main__":
    main()
