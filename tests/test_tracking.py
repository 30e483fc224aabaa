"""Tests for failmap.tracking. One sqlite store is shared by the whole module
(creating one costs seconds of schema migrations); each test uses its own
MLflow experiment so that runs do not mix."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from failmap import tracking

DVC_VARS = ("DVC_STAGE", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")
PARAMS = {"seed": 0, "baseline": {"lr": 0.05, "epochs": 2}, "finetune": {"arms": ["none", "caption"]},
          "data": {"captions_file": None}}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.setenv(tracking.TRACKING_ENV, "1")
    for name in DVC_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "c0ffee" * 6 + "abcd")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    pytest.importorskip("mlflow")
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{db}"


@pytest.fixture(scope="module")
def client(store):
    tracking.import_mlflow()  # quietly, as stages do
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=store)


def runs_of(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


# --- pure helpers (no mlflow) -------------------------------------------------

def test_metric_values_flattens_and_skips_non_numbers():
    values = {"val": {"acc": 0.9, "n": np.int64(3), "auroc": np.float32(0.5)}, "name": "x",
              "nan": math.nan, "inf": math.inf, "flag": True, "none": None, "list": [1, 2]}
    assert tracking.metric_values(values, prefix="st@1") == {
        "st_1/val/acc": 0.9, "st_1/val/n": 3.0, "st_1/val/auroc": 0.5}


def test_param_strings_dotted_and_truncated():
    out = tracking.param_strings({**PARAMS, "long": list(range(5000))})
    assert out["baseline.lr"] == "0.05"
    assert out["finetune.arms"] == '["none", "caption"]'
    assert out["data.captions_file"] == "null"
    assert len(out["long"]) == tracking.MAX_PARAM_VALUE_LENGTH and out["long"].endswith("...")


def test_params_hash_ignores_key_order_but_not_values():
    assert tracking.params_hash({"a": 1, "b": 2}) == tracking.params_hash({"b": 2, "a": 1})
    assert tracking.params_hash({"a": 1}) != tracking.params_hash({"a": 2})


def test_resolve_uri_uses_dvc_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert tracking.resolve_uri("http://host:5000") == "http://host:5000"


def test_git_commit_prefers_dvc_baseline(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    assert tracking.git_commit(tmp_path) == "abc123"
    monkeypatch.delenv("DVC_EXP_BASELINE_REV")
    assert tracking.git_commit(tmp_path) == "none"  # not a git repository


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_dvc_launcher_is_first_ancestor_without_dvc_stage():
    # sh (with DVC_STAGE, like DVC's stage shell) -> python: the launcher is this process.
    code = "from failmap.tracking import dvc_launcher_id; print(dvc_launcher_id())"
    env = {**os.environ, "DVC_STAGE": "train"}
    out = subprocess.run(["sh", "-c", f"{sys.executable} -c '{code}'; true"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    boot, pid, start = out.split(":")
    assert int(pid) == os.getpid() and start.isdigit() and boot
    assert tracking.dvc_launcher_id() is None  # not inside a DVC stage


def test_disabled_does_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(tracking.TRACKING_ENV, "0")
    db = tmp_path / "off.db"
    with tracking.track_stage("a", PARAMS, f"sqlite:///{db}", "off") as run:
        assert not run.active
        assert run.log_metrics({"x": 1.0, "y": "no"}) == {"a/x": 1.0}
        with pytest.raises(FileNotFoundError, match="missing.png"):
            run.log_artifact(tmp_path / "missing.png")
        with pytest.raises(TypeError, match="must be a dict"):
            run.log_metrics([1.0])
    assert not db.exists()


def test_disabled_never_imports_mlflow(tmp_path):
    code = ("import sys; from failmap.tracking import track_stage\n"
            f"with track_stage('a', {{}}, 'sqlite:///{tmp_path}/x.db', 'e') as run: run.log_metrics({{'x': 1}})\n"
            "assert 'mlflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, tracking.TRACKING_ENV: "0"}, check=True)


# --- against a real sqlite store ---------------------------------------------

def test_stages_with_same_key_share_one_run(store, client, tmp_path):
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "g.png").write_bytes(b"png")
    with tracking.track_stage("prepare", PARAMS, store, "shared") as first:
        first.log_metrics({"n": {"train": 10}})
    with tracking.track_stage("baseline", PARAMS, store, "shared") as second:
        logged = second.log_metrics({"val": {"accuracy": 0.75, "loss": math.nan}}, step=2)
        second.log_artifact(tmp_path / "report.json")
        second.log_artifact(tmp_path / "grids")
    assert logged == {"baseline/val/accuracy": 0.75}
    assert first.run_id == second.run_id
    assert len(runs_of(client, "shared")) == 1

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["baseline.lr"] == "0.05" and run.data.params["seed"] == "0"
    metrics = run.data.metrics
    assert metrics["prepare/n/train"] == 10 and metrics["baseline/val/accuracy"] == 0.75
    assert "baseline/val/loss" not in metrics
    for stage in ("prepare", "baseline"):
        assert metrics[f"time/{stage}_s"] >= 0
        assert metrics[f"memory/{stage}_peak_mb"] > 10  # a Python process with mlflow loaded
        assert run.data.tags[f"failmap.stage.{stage}"] == "finished"
    assert run.data.tags["failmap.params_hash"] == tracking.params_hash(PARAMS)
    assert run.data.tags["failmap.git_commit"] == os.environ["DVC_EXP_BASELINE_REV"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "baseline")}
    assert artifacts == {"baseline/report.json", "baseline/grids"}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "baseline/val/accuracy")] == [2]


def test_other_params_or_experiment_name_make_new_runs(store, client, monkeypatch):
    with tracking.track_stage("a", PARAMS, store, "split") as base:
        pass
    with tracking.track_stage("a", {**PARAMS, "seed": 1}, store, "split") as other_params:
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1a2b3")
    with tracking.track_stage("a", PARAMS, store, "split") as named:
        pass
    assert len({base.run_id, other_params.run_id, named.run_id}) == 3
    run = client.get_run(named.run_id)
    assert run.info.run_name == "exp-1a2b3" and run.data.tags["failmap.dvc_exp_name"] == "exp-1a2b3"
    assert client.get_run(other_params.run_id).data.params["seed"] == "1"


def test_join_window_without_launcher_and_exact_join_with_one(store, client, monkeypatch):
    with tracking.track_stage("a", PARAMS, store, "window", join_window_s=0) as first:
        pass
    with tracking.track_stage("b", PARAMS, store, "window", join_window_s=0) as late:
        pass
    assert first.run_id != late.run_id  # by hand, too long after: a new run

    monkeypatch.setattr(tracking, "dvc_launcher_id", lambda: "boot:4242:99")
    with tracking.track_stage("a", PARAMS, store, "window", join_window_s=0) as launched_a:
        pass
    with tracking.track_stage("b", PARAMS, store, "window", join_window_s=0) as launched_b:
        pass
    assert launched_a.run_id == launched_b.run_id  # same DVC process: same run at any gap
    assert launched_a.run_id not in (first.run_id, late.run_id)
    assert client.get_run(launched_a.run_id).data.tags["failmap.launcher"] == "boot:4242:99"


def test_failed_stage_is_marked_and_exception_propagates(store, client):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.track_stage("train", PARAMS, store, "fail") as run:
            raise RuntimeError("boom")
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags["failmap.stage.train"] == "failed"
    assert "time/train_s" in logged.data.metrics


def test_changed_param_value_warns_instead_of_failing(store, client, capsys):
    with tracking.track_stage("a", PARAMS, store, "conflict") as run:
        pass
    tracking._log_params(client, client.get_run(run.run_id), {**PARAMS, "seed": 5, "new": 1})
    params = client.get_run(run.run_id).data.params
    assert params["seed"] == "0" and params["new"] == "1"
    assert "['seed']" in capsys.readouterr().err


def test_mlflow_failure_warns_and_stage_finishes(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = False
    with tracking.track_stage("a", PARAMS, f"sqlite:///{blocker}/mlflow.db", "broken") as run:
        run.log_metrics({"x": 1.0})
        done = True
    assert done and not run.active
    assert "WARNING failmap.tracking" in capsys.readouterr().err
