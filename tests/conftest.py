"""Test-wide environment: one thread (tiny models on a busy 2-core machine run
far slower with two), no tracking unless a test turns it on, nothing online."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FAILMAP_TRACKING", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
