"""What every stage script shares: validated params, the paths between
stages, and the MLflow run of this pipeline execution."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import torch

from failmap.params import ParamsError, as_dict, load_params

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


@contextmanager
def run_stage(name: str, params_path: str = "params.yaml"):
    """Validate params before any work, then open the tracking run.

    Yields (params, run). Threads follow OMP_NUM_THREADS when set (tests and
    CI pin it to 1: tiny models on a busy 2-core machine are far slower with two).
    """
    try:
        params = load_params(params_path)
    except ParamsError as error:
        print(f"{name}: {error}", file=sys.stderr)
        raise SystemExit(2)
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from failmap.tracking import track_stage  # mlflow import is slow; only after params are valid
    with track_stage(name, as_dict(params), params.tracking.uri, params.tracking.experiment) as run:
        yield params, run
