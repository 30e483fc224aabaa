"""Benchmark the engines of the embed and generate stages side by side: local,
ray with 1 worker, ray with 2 workers (throughput in images/s), with Ray's
start-up printed apart.

``--job embed`` (default): the shipped world CLIP (models/pretrained/world-clip,
a 32px ModifiedResNet of width 16: the embed stage's default model) embeds
random 32px images (the cost does not depend on what they show) through
``failmap.embedder.embed_image_sets``, as the stage does.

``--job generate``: the shipped world decoder (models/pretrained/world-decoder,
the generate stage's default model, 15 DDIM steps, guidance 5 as in
params.yaml) decodes ``--calls`` decoder calls of ``--call-size`` random unit
embeddings each through ``failmap.generate.decode_plans``, as the stage does
(a call is the engine's item: one (set, class, side) of the stage).

Either way the ray results are checked byte for byte against local.

Start-up, two parts: ``ray.init`` (once per stage process; a cluster given by
``compute.address`` is joined instead) and, per job, starting the actor pool
and loading the model in every actor, measured by a job of one batch per
worker. "steady" throughput leaves the latter out: what a long job tends to.

    OMP_NUM_THREADS=1 python benchmarks/bench_engine.py                 # 200,000 images, ~2 minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_engine.py --n 20000 --workers 1 2 4
    OMP_NUM_THREADS=1 python benchmarks/bench_engine.py --job generate            # 4,096 images, ~9 minutes

200,000 images by default: with this model 20,000 take 4 s, less than the
start-up of one ray job. 256 decoder calls (4,096 images, 3.5 minutes on one core)
by default for generate, for the same reason. Figures measured: docs/scaling.md.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from failmap.decoders.loader import load_decoder
from failmap.embedder import embed_image_sets, load_embedder
from failmap.engine import LocalEngine, RayEngine
from failmap.generate import DecodeCall, SetPlan, decode_plans


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def steady(n_images: int, job_s: float, startup_s: float) -> float:
    """Throughput without the job's start-up; NaN where the job is too short to tell (under twice its start-up)."""
    return n_images / (job_s - startup_s) if job_s > 2 * startup_s else float("nan")


class Job(NamedTuple):
    """One stage's engine job: ``run(engine, n, model)`` does its first n engine items and returns the
    results' bytes; ``warm`` items make the one-item-per-worker start-up job."""
    load: Callable
    run: Callable
    n_items: int
    warm: int
    n_images: int
    label: str


def embed_job(args) -> Job:
    """The embed stage's job: one engine item is one batch of ``args.batch_size`` images."""
    images = np.random.default_rng(0).integers(0, 256, (args.n, args.size, args.size, 3), np.uint8)
    load = partial(load_embedder, "world", None, None, str(Path(args.clip).resolve()), "cpu", args.batch_size)

    def run(engine, n, model=None):
        got, _, _ = embed_image_sets(engine, load, {"bench": images[:n]}, args.batch_size, model)
        return got["bench"].tobytes()
    return Job(load, run, args.n, args.batch_size, args.n,
               f"embed: {args.n} images of {args.size}px, batch {args.batch_size}, world CLIP ({args.clip})")


def generate_job(args) -> Job:
    """The generate stage's job: ``args.calls`` decoder calls of ``args.call_size`` images, one
    engine item per call."""
    rng = np.random.default_rng(0)
    load = partial(load_decoder, "world", str(Path(args.decoder).resolve()), None, "cpu")
    conditions = rng.standard_normal((args.calls, args.call_size, 64)).astype(np.float32)
    conditions /= np.linalg.norm(conditions, axis=-1, keepdims=True)
    decode = dict(guidance_scale=5.0, num_inference_steps=15, batch_size=64, mixed_precision="no")

    def run(engine, n_calls, model=None):
        plan = SetPlan("bench")
        for j in range(n_calls):
            plan.add(DecodeCall(conditions[j], seed=j), class_name="c", label=0, side="neutral", alpha=None,
                     captions=[""] * args.call_size, tag=f"call{j}")
        (built,) = decode_plans([plan], engine, load, model, **decode)
        return built.images.tobytes()
    n_images = args.calls * args.call_size
    return Job(load, run, args.calls, 1, n_images,
               f"generate: {args.calls} decoder calls of {args.call_size} images ({n_images} images of 32px), "
               f"world decoder ({args.decoder}), 15 DDIM steps, guidance 5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", choices=["embed", "generate"], default="embed")
    ap.add_argument("--clip", default="models/pretrained/world-clip", help="world CLIP folder (embed)")
    ap.add_argument("--decoder", default="models/pretrained/world-decoder", help="world decoder folder (generate)")
    ap.add_argument("--n", type=int, default=200000, help="images to embed")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--batch-size", type=int, default=256, help="embed batch")
    ap.add_argument("--calls", type=int, default=256, help="decoder calls (generate)")
    ap.add_argument("--call-size", type=int, default=16, help="images per decoder call (generate; the stage's "
                    "evaluation calls hold 16)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--items-per-batch", type=int, default=None, help="engine items per Ray batch (default: the "
                    "engine's own choice)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)

    load_before = os.getloadavg()[0]
    job = (embed_job if args.job == "embed" else generate_job)(args)
    n_images = job.n_images
    model, load_s = timed(job.load)
    local, local_s = timed(lambda: job.run(LocalEngine(), job.n_items, model))
    rows = [dict(engine="local", workers=1, job_s=local_s, images_per_s=n_images / local_s,
                 steady_images_per_s=n_images / local_s, job_startup_s=load_s)]

    import ray
    _, init_s = timed(lambda: ray.init(num_cpus=max(args.workers), include_dashboard=False, configure_logging=False,
                                       log_to_driver=False))
    try:
        for workers in args.workers:
            engine = RayEngine(workers, **({} if args.items_per_batch is None else
                                           {"items_per_batch": args.items_per_batch}))
            # start-up: a job of one item per actor (embed: one batch of images), then the whole job
            _, startup_s = timed(lambda: job.run(engine, workers * job.warm))
            got, job_s = timed(lambda: job.run(engine, job.n_items))
            if got != local:
                raise SystemExit(f"ray with {workers} workers gave other results than local")
            rows.append(dict(engine="ray", workers=workers, job_s=job_s, images_per_s=n_images / job_s,
                             steady_images_per_s=steady(n_images, job_s, startup_s), job_startup_s=startup_s))
    finally:
        ray.shutdown()

    print(f"{job.label}; {threads} thread(s) per worker, {os.cpu_count()} CPUs on this machine")
    print(f"1-minute load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work on the "
          f"machine competes with the workers when it exceeds the CPU count)")
    print(f"ray start-up (ray.init, once per stage): {init_s:.1f} s; local model load: {load_s:.2f} s")
    print(f"{'engine':<8}{'workers':>8}{'job s':>9}{'images/s':>11}{'steady/s':>11}{'job start-up s':>16}")
    for r in rows:
        print(f"{r['engine']:<8}{r['workers']:>8}{r['job_s']:>9.1f}{r['images_per_s']:>11.1f}"
              f"{r['steady_images_per_s']:>11.1f}{r['job_startup_s']:>16.1f}")
    one = next((r for r in rows if r["engine"] == "ray" and r["workers"] == 1), None)
    for r in rows:
        if one and r["engine"] == "ray" and r["workers"] > 1:
            print(f"ray {r['workers']} workers / 1 worker: {r['images_per_s'] / one['images_per_s']:.2f}x "
                  f"(steady {r['steady_images_per_s'] / one['steady_images_per_s']:.2f}x)")
    print("ray results byte-identical to local: yes")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(job=args.job, images=n_images, ray_init_s=init_s, rows=rows),
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
