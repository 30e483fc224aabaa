"""Benchmark the world CLIP's pre-training: wall time, peak memory, zero-shot quality.

Trains with params.yaml's clip.train.* (overridable with --set) on the
prepared world's corpus, then scores the saved model on the test split with
``zero_shot_report``: class accuracy ("a photo of a {class}") and colour /
context retrieval accuracy, against the quality bars of issue 3 (>= 0.95,
>= 0.90, >= 0.90). Uses the pipeline's prepared world (``--prepared``) when it
exists, otherwise generates the world from params.yaml into a temporary folder
(generation time is reported apart and not counted).

    OMP_NUM_THREADS=2 python benchmarks/bench_clip.py [--threads 2] [--set steps=1000 --set lr=0.002]

Prints progress, then one JSON object. The machine is shared: the load
average before and after is printed with the timings, and the process CPU
time beside the wall time. OMP_WAIT_POLICY defaults to PASSIVE here (see below).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

# With other processes on the cores, OpenMP's default spin-waiting makes 2
# threads many times slower than 1 (measured: 2.3 s vs 0.15 s per step);
# passive waiting removes that. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import yaml  # noqa: E402

BARS = {"class_accuracy": 0.95, "colour_accuracy": 0.90, "context_accuracy": 0.90}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _prepared_world(prepared: str, params: dict, tmp: str) -> tuple[str, float]:
    """A prepared world folder with corpus and test; generated when missing."""
    from failmap.data import write_prepared
    from failmap.world import generate_world

    if (Path(prepared) / "corpus.npz").is_file() and (Path(prepared) / "meta.json").is_file():
        return prepared, 0.0
    t0 = time.perf_counter()
    write_prepared(tmp, generate_world(seed=params["seed"], **params["world"]))
    return tmp, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", default="data/prepared", help="generated from params when missing")
    ap.add_argument("--out", default=None, help="where to save the CLIP (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a clip.train key; VALUE is parsed as YAML (e.g. layers=[1,1,1,1])")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from failmap.clip_train import train_clip
    from failmap.evaluation import zero_shot_report
    from failmap.foundation_eval import world_attributes
    from failmap.data import load_ground_truth, load_meta, load_split
    from failmap.embedder import load_embedder

    params = yaml.safe_load(open(args.params))
    train_kw = dict(params["clip"]["train"])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in train_kw:
            raise SystemExit(f"--set {item}: '{key}' is not a clip.train key ({sorted(train_kw)})")
        train_kw[key] = yaml.safe_load(value)

    with tempfile.TemporaryDirectory() as tmp:
        prepared, gen_seconds = _prepared_world(args.prepared, params, os.path.join(tmp, "world"))
        meta = load_meta(prepared)
        corpus, test = load_split(prepared, "corpus"), load_split(prepared, "test")
        truth = load_ground_truth(prepared)
        out = args.out or os.path.join(tmp, "clip")

        load_before = os.getloadavg()
        rss_before = _peak_rss_mb()
        t0 = time.perf_counter()
        metrics = train_clip(corpus.images, corpus.captions, out, **train_kw, seed=params["seed"], device="cpu")
        train_seconds = time.perf_counter() - t0
        rss_train = _peak_rss_mb()

        t0 = time.perf_counter()
        embedder = load_embedder("world", model_dir=out, device="cpu")
        attributes = world_attributes(truth, test.ids, params["world"]["colours"], params["world"]["contexts"])
        report = zero_shot_report(embedder, test.images, test.labels, meta["classes"], attributes)
        eval_seconds = time.perf_counter() - t0

    result = {
        "clip_train": train_kw,
        "threads": args.threads,
        "world_generation_seconds": round(gen_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": metrics["train_cpu_seconds"],
        "seconds_per_step": round(train_seconds / train_kw["steps"], 3),
        "eval_seconds": round(eval_seconds, 1),
        "peak_rss_mb_before_training": round(rss_before),
        "peak_rss_mb_after_training": round(rss_train),
        "n_params": metrics["n_params"],
        "final_loss": metrics["final_loss"],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "zero_shot_test": report,
        "bars_met": {k: report[k] >= v for k, v in BARS.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
