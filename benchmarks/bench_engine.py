"""Benchmark the embed stage's engines side by side: local, ray with 1 worker,
ray with 2 workers (throughput in images/s), with Ray's start-up printed apart.

The model is the shipped world CLIP (models/pretrained/world-clip, a 32px
ModifiedResNet of width 16: the embed stage's default model); the images are
random 32px ones (the cost does not depend on what they show). Every run
embeds the same images through ``failmap.embedder.embed_image_sets``, as the
stage does, and the ray results are checked byte for byte against local.

Start-up, two parts: ``ray.init`` (once per stage process; a cluster given by
``compute.address`` is joined instead) and, per job, starting the actor pool
and loading the model in every actor, measured by a job of one batch per
worker. "steady" throughput leaves the latter out: what a long job tends to.

    OMP_NUM_THREADS=1 python benchmarks/bench_engine.py                 # 200,000 images, ~2 minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_engine.py --n 20000 --workers 1 2 4

200,000 images by default: with this model 20,000 take 4 s, less than the
start-up of one ray job. Figures measured: docs/scaling.md.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from failmap.embedder import embed_image_sets, load_embedder
from failmap.engine import LocalEngine, RayEngine


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default="models/pretrained/world-clip", help="world CLIP folder")
    ap.add_argument("--n", type=int, default=200000, help="images to embed")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--items-per-batch", type=int, default=None, help="engine items per Ray batch (default: the "
                    "engine's own choice)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)

    load_before = os.getloadavg()[0]
    images = {"bench": np.random.default_rng(0).integers(0, 256, (args.n, args.size, args.size, 3), np.uint8)}
    load = partial(load_embedder, "world", None, None, str(Path(args.clip).resolve()), "cpu", args.batch_size)
    embedder, load_s = timed(load)
    (local, _, _), local_s = timed(lambda: embed_image_sets(LocalEngine(), load, images, args.batch_size, embedder))
    rows = [dict(engine="local", workers=1, job_s=local_s, images_per_s=args.n / local_s,
                 steady_images_per_s=args.n / local_s, job_startup_s=load_s)]

    import ray
    _, init_s = timed(lambda: ray.init(num_cpus=max(args.workers), include_dashboard=False, configure_logging=False,
                                       log_to_driver=False))
    try:
        for workers in args.workers:
            engine = RayEngine(workers, **({} if args.items_per_batch is None else
                                           {"items_per_batch": args.items_per_batch}))
            warm = {"bench": images["bench"][:workers * args.batch_size]}  # one batch per actor
            _, startup_s = timed(lambda: embed_image_sets(engine, load, warm, args.batch_size))
            (got, _, _), job_s = timed(lambda: embed_image_sets(engine, load, images, args.batch_size))
            if got["bench"].tobytes() != local["bench"].tobytes():
                raise SystemExit(f"ray with {workers} workers gave other embeddings than local")
            rows.append(dict(engine="ray", workers=workers, job_s=job_s, images_per_s=args.n / job_s,
                             steady_images_per_s=args.n / max(job_s - startup_s, 1e-9), job_startup_s=startup_s))
    finally:
        ray.shutdown()

    print(f"embed throughput: {args.n} images of {args.size}px, batch {args.batch_size}, world CLIP "
          f"({args.clip}), {threads} thread(s) per worker, {os.cpu_count()} CPUs on this machine")
    print(f"1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work on the "
          f"machine competes with the workers when it exceeds the CPU count)")
    print(f"ray start-up (ray.init, once per stage): {init_s:.1f} s; local model load: {load_s:.2f} s")
    print(f"{'engine':<8}{'workers':>8}{'job s':>9}{'images/s':>11}{'steady/s':>11}{'job start-up s':>16}")
    for r in rows:
        print(f"{r['engine']:<8}{r['workers']:>8}{r['job_s']:>9.1f}{r['images_per_s']:>11.0f}"
              f"{r['steady_images_per_s']:>11.0f}{r['job_startup_s']:>16.1f}")
    one = next((r for r in rows if r["engine"] == "ray" and r["workers"] == 1), None)
    for r in rows:
        if one and r["engine"] == "ray" and r["workers"] > 1:
            print(f"ray {r['workers']} workers / 1 worker: {r['images_per_s'] / one['images_per_s']:.2f}x "
                  f"(steady {r['steady_images_per_s'] / one['steady_images_per_s']:.2f}x)")
    print("ray results byte-identical to local: yes")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(n=args.n, ray_init_s=init_s, rows=rows), indent=2) + "\n")


if __name__ == "__main__":
    main()
