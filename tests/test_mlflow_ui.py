"""The README's MLflow UI command serves the project's store: start it on a
free loopback port, read the latest run's params and metrics through its REST
API, stop the process we started."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("FAILMAP_TRACKING", "1")
    monkeypatch.chdir(tmp_path)
    from failmap.tracking import track_stage
    params = {"seed": 3, "baseline": {"epochs": 2}}
    with track_stage("train_baseline", params, "sqlite:///mlflow.db", "failmap", root=tmp_path) as run:
        run.log_metrics({"test": {"accuracy": 0.75}})
    assert run.run_id
    return tmp_path / "mlflow.db"


def test_ui_serves_latest_run(store):
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    mlflow = Path(sys.executable).parent / "mlflow"
    # the README command, on a free port
    proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{store}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline, experiments = time.time() + 120, None
        while time.time() < deadline:
            assert proc.poll() is None, f"mlflow ui exited: {proc.stderr.read().decode()[-2000:]}"
            try:
                experiments = _post(f"{base}/experiments/search", {"max_results": 10})
                break
            except OSError:
                time.sleep(1)
        assert experiments is not None, "mlflow ui did not answer within 120 s"
        ids = [e["experiment_id"] for e in experiments["experiments"] if e["name"] == "failmap"]
        runs = _post(f"{base}/runs/search", {"experiment_ids": ids, "max_results": 1,
                                             "order_by": ["attributes.start_time DESC"]})["runs"]
        data = runs[0]["data"]
        params = {p["key"]: p["value"] for p in data["params"]}
        metrics = {m["key"]: m["value"] for m in data["metrics"]}
        assert params["seed"] == "3" and params["baseline.epochs"] == "2"
        assert metrics["train_baseline/test/accuracy"] == pytest.approx(0.75)
        assert "time/train_baseline_s" in metrics
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
