"""What every stage script shares: validated params, the paths between
stages, and each stage's record of the time and memory it took."""
from __future__ import annotations

import os
import resource
import sys
import time
from contextlib import contextmanager

from failmap.io import write_json
from failmap.params import ParamsError, load_params

# Paths between stages, in one place (dvc.yaml names the same ones).
PREPARED = "data/prepared"
BASELINE_MODEL = "models/baseline.pt"
BASELINE_PREDICTIONS = "data/baseline"
CLIP_DIR = "models/clip"
DECODER_DIR = "models/decoder"
EMBEDDINGS = "data/embeddings"
SVM_DIR = "data/svm"
CAPTIONS_DIR = "data/captions"
GENERATED = "data/generated"
FINETUNED = "data/finetune"
METRICS = "metrics"
PLOTS = "plots"
# One JSON per stage (<stage>.json, a cache: false metric of that stage in
# dvc.yaml): wall time and peak memory, read by the track stage. They differ
# from run to run, so the gate's snapshots leave this folder out.
RESOURCES = f"{METRICS}/resources"


def stage_params(name: str, params_path: str = "params.yaml"):
    """The validated params, or exit 2 with the problem (key, value, expected) on stderr."""
    try:
        return load_params(params_path)
    except ParamsError as error:
        print(f"{name}: {error}", file=sys.stderr)
        raise SystemExit(2)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def peak_cuda_mb() -> float | None:
    """Peak CUDA memory torch allocated in this process (MiB), or None if CUDA was not used
    (a stage that never touched CUDA is not made to initialise it just to read a zero)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20


def resources(started: float) -> dict[str, float]:
    """``wall_s`` (the stage's work since ``started``, a perf_counter after params validation),
    ``peak_rss_mb`` and, when CUDA was used, ``cuda_peak_mb``."""
    used = {"wall_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}
    cuda = peak_cuda_mb()
    return used if cuda is None else {**used, "cuda_peak_mb": cuda}


@contextmanager
def run_stage(name: str, params_path: str = "params.yaml"):
    """Validate params before any work, then run the stage's body.

    Yields the params. When the body succeeds, its wall time and peak
    memory are written to ``metrics/resources/<name>.json``; a failed stage writes
    nothing. Threads follow OMP_NUM_THREADS when set (tests and CI pin it to 1:
    tiny models on a busy 2-core machine are far slower with two).
    """
    params = stage_params(name, params_path)
    if os.environ.get("OMP_NUM_THREADS"):
        import torch
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    started = time.perf_counter()
    yield params
    write_json(f"{RESOURCES}/{name}.json", resources(started))
