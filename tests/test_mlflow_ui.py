"""The README's MLflow UI command serves what one `dvc repro` logged: start it
on a free loopback port on the toy project's store (tests/toy_pipeline.py),
read through its REST API that the execution is one run with params, metrics,
the stage's wall time and memory, and an image, then stop the process we started."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import toy_pipeline as toy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _get(url: str, **query) -> bytes:
    with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(query)}", timeout=10) as r:
        return r.read()


@pytest.fixture
def store(tmp_path):
    pytest.importorskip("mlflow")
    project = toy.toy_project(tmp_path / "project")
    toy.run([sys.executable, "-m", "dvc", "repro"], project)
    return project / "mlflow.db"


def test_ui_serves_the_pipeline_run(store):
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    mlflow = Path(sys.executable).parent / "mlflow"
    # the README command, on a free port, from the project folder (artifacts resolve beside the store)
    proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{store}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=store.parent,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/api/2.0/mlflow"
    try:
        deadline, experiments = time.time() + 120, None
        while time.time() < deadline:
            assert proc.poll() is None, f"mlflow ui exited: {proc.stderr.read().decode()[-2000:]}"
            try:
                experiments = _post(f"{api}/experiments/search", {"max_results": 10})
                break
            except OSError:
                time.sleep(1)
        assert experiments is not None, "mlflow ui did not answer within 120 s"
        ids = [e["experiment_id"] for e in experiments["experiments"] if e["name"] == toy.EXPERIMENT]
        runs = _post(f"{api}/runs/search", {"experiment_ids": ids, "max_results": 10})["runs"]
        assert len(runs) == 1, "one dvc repro, one run"
        run_id, data = runs[0]["info"]["run_id"], runs[0]["data"]
        params = {p["key"]: p["value"] for p in data["params"]}
        metrics = {m["key"]: m["value"] for m in data["metrics"]}
        tags = {t["key"]: t["value"] for t in data["tags"]}
        assert params["seed"] == "0" and params["tracking.experiment"] == toy.EXPERIMENT
        assert metrics["toy/test/accuracy"] == pytest.approx(0.0)
        assert metrics["resources/toy/wall_s"] >= 0 and metrics["resources/toy/peak_rss_mb"] > 10
        assert tags["failmap.git_commit"] == toy.head(store.parent)
        listed = json.loads(_get(f"{api}/artifacts/list", run_id=run_id, path="plots/toy"))
        assert [f["path"] for f in listed["files"]] == ["plots/toy/grid.png"]
        image = _get(f"{base}/get-artifact", path="plots/toy/grid.png", run_uuid=run_id)
        assert image.startswith(b"\x89PNG")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
