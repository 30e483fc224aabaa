"""Tracking from one place: each stage records its own wall time and peak
memory (failmap.stage), and the last stage logs one MLflow run per pipeline
execution (failmap.tracking, stages/track.py), with no look at other processes.
The end-to-end tests run real ``dvc repro`` / ``dvc exp run`` on the toy
project of tests/toy_pipeline.py."""
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import toy_pipeline as toy
from failmap import stage, tracking

DVC_VARS = ("DVC_STAGE", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")
PARAMS = {"seed": 0, "baseline": {"lr": 0.05, "epochs": 2}, "finetune": {"arms": ["none", "caption"]},
          "data": {"captions_file": None}}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.setenv(tracking.TRACKING_ENV, "1")
    for name in DVC_VARS:
        monkeypatch.delenv(name, raising=False)


def client_for(uri: str):
    tracking.import_mlflow()
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri)


def runs_of(uri: str, experiment: str):
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    return client, ([] if found is None else client.search_runs([found.experiment_id],
                                                                 order_by=["attributes.start_time ASC"]))


# --- pure helpers (no mlflow) -------------------------------------------------

def test_metric_values_flattens_and_skips_non_numbers():
    values = {"val": {"acc": 0.9, "n": np.int64(3), "auroc": np.float32(0.5)}, "name": "x",
              "nan": math.nan, "inf": math.inf, "flag": True, "none": None, "list": [1, 2]}
    assert tracking.metric_values(values, prefix="st@1") == {
        "st_1/val/acc": 0.9, "st_1/val/n": 3.0, "st_1/val/auroc": 0.5}


def test_tag_values_keep_bools_and_strings():
    assert tracking.tag_values({"check": {"trusted": False, "space": "world-clip:1"}, "n": 3, "l": ["a"]},
                               prefix="gen") == {"gen/check/trusted": "False", "gen/check/space": "world-clip:1"}


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


def test_git_revision_prefers_dvc_baseline(monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    assert tracking.git_revision(tmp_path) == "abc123"
    monkeypatch.delenv("DVC_EXP_BASELINE_REV")
    assert tracking.git_revision(tmp_path) == "none"  # not a git repository


def test_read_metrics_names_files_and_refuses_bad_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path, content in {"metrics/a.json": {"x": 1}, "metrics/resources/s.json": {"wall_s": 2.0},
                          "data/meta.json": {"splits": {"train": 3}}}.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(content))
    assert tracking.read_metrics(["metrics/a.json", "metrics/resources", "data/meta.json"], "metrics") == {
        "a": {"x": 1}, "resources/s": {"wall_s": 2.0}, "data/meta": {"splits": {"train": 3}}}
    Path("metrics/bad.json").write_text("[1]")
    with pytest.raises(ValueError, match="metrics/bad.json: a metrics file must hold a JSON object"):
        tracking.read_metrics(["metrics/bad.json"], "metrics")
    Path("metrics/bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="metrics/bad.json: not a readable JSON"):
        tracking.read_metrics(["metrics"], "metrics")


# --- each stage's own resources -----------------------------------------------

def test_run_stage_records_resources_only_when_the_stage_succeeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((toy.REPO / "params.yaml").read_text())
    path = Path(f"{stage.RESOURCES}/ok.json")
    with stage.run_stage("ok") as params:
        assert params.seed == yaml.safe_load((toy.REPO / "params.yaml").read_text())["seed"]
        assert not path.exists()
        np.ones(4 * 2**20)  # 32 MiB: the peak is at least that over the interpreter
    used = json.loads(path.read_text())
    assert set(used) == {"wall_s", "peak_rss_mb"} and used["wall_s"] >= 0 and used["peak_rss_mb"] > 32
    with pytest.raises(RuntimeError, match="boom"):
        with stage.run_stage("broken"):
            raise RuntimeError("boom")
    assert not Path(f"{stage.RESOURCES}/broken.json").exists()


def test_bad_params_stop_the_stage_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: -1\n")
    ran = False
    with pytest.raises(SystemExit) as stop:
        with stage.run_stage("early"):
            ran = True
    assert stop.value.code == 2 and not ran and "seed" in capsys.readouterr().err
    assert not (tmp_path / stage.RESOURCES).exists()


# --- logging one run -----------------------------------------------------------

def test_log_pipeline_makes_one_complete_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "c0ffee" * 6 + "abcd")
    (tmp_path / "plots" / "x").mkdir(parents=True)
    (tmp_path / "plots" / "x" / "g.png").write_bytes(b"png")
    (tmp_path / "report.html").write_text("<html/>")
    uri = f"sqlite:///{tmp_path}/m.db"
    metrics = {"baseline": {"test": {"accuracy": 0.75, "loss": math.nan}, "source": "world"},
               "resources/prepare": {"wall_s": 1.5, "peak_rss_mb": 200.0}}
    run_id = tracking.log_pipeline(PARAMS, metrics, ["plots/x", "report.html"], uri, "one",
                                   tags={"failmap.synthetic_trusted": True})
    client, runs = runs_of(uri, "one")
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "c0ffeec-" + tracking.params_hash(PARAMS)[:7]
    assert run.data.params["baseline.lr"] == "0.05" and run.data.params["seed"] == "0"
    assert run.data.metrics == {"baseline/test/accuracy": 0.75, "resources/prepare/wall_s": 1.5,
                                "resources/prepare/peak_rss_mb": 200.0}
    tags = run.data.tags
    assert tags["failmap.git_commit"] == os.environ["DVC_EXP_BASELINE_REV"] == tags["mlflow.source.git.commit"]
    assert tags["failmap.params_hash"] == tracking.params_hash(PARAMS)
    assert tags["baseline/source"] == "world" and tags["failmap.synthetic_trusted"] == "True"
    assert {a.path for a in client.list_artifacts(run_id)} == {"plots", "report.html"}
    assert [a.path for a in client.list_artifacts(run_id, "plots/x")] == ["plots/x/g.png"]
    assert client.get_experiment_by_name("one").artifact_location == (tmp_path / "mlartifacts" / "one").as_uri()


def test_tracking_off_logs_nothing_and_never_imports_mlflow(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from failmap.tracking import log_pipeline
        assert log_pipeline({{"seed": 0}}, {{"a": {{"x": 1}}}}, [], "sqlite:///{tmp_path}/off.db", "off") is None
        assert "mlflow" not in sys.modules
    """)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, tracking.TRACKING_ENV: "0"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "nothing logged" in out.stdout and not (tmp_path / "off.db").exists()


def test_mlflow_failure_warns_and_returns(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert tracking.log_pipeline(PARAMS, {"a": {"x": 1.0}}, [], f"sqlite:///{blocker}/mlflow.db", "broken") is None
    assert "WARNING failmap.tracking" in capsys.readouterr().err


# --- the pipeline: one run per execution -----------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return toy.toy_project(tmp_path_factory.mktemp("toy") / "project")


def test_one_run_per_pipeline_execution(project):
    """Two `dvc repro`s with a params change between them give two runs, each with params,
    metrics, the stage's wall time and memory, tags and the image; a `dvc repro` that runs
    nothing adds none; `dvc exp run -n` names its run after the experiment."""
    uri = f"sqlite:///{project}/mlflow.db"
    toy.run([sys.executable, "-m", "dvc", "repro"], project)
    toy.set_params(project, seed=7)
    toy.run([sys.executable, "-m", "dvc", "repro"], project)
    nothing = toy.run([sys.executable, "-m", "dvc", "repro"], project)
    assert "Running stage" not in nothing.stdout
    client, runs = runs_of(uri, toy.EXPERIMENT)
    assert len(runs) == 2
    for run, seed in zip(runs, (0, 7)):
        assert run.info.status == "FINISHED"
        assert run.data.params["seed"] == str(seed) and "tracking.uri" in run.data.params
        metrics = run.data.metrics
        assert metrics["toy/test/accuracy"] == pytest.approx(seed / 100)
        assert metrics["resources/toy/wall_s"] >= 0 and metrics["resources/toy/peak_rss_mb"] > 10
        assert "toy/skipped" not in metrics  # NaN: not a metric
        assert run.data.tags["toy/trusted"] == "True" and run.data.tags["toy/name"] == "toy"
        assert run.data.tags["failmap.git_commit"] == toy.head(project)
        assert [a.path for a in client.list_artifacts(run.info.run_id, "plots/toy")] == ["plots/toy/grid.png"]
    assert runs[0].data.tags["failmap.params_hash"] != runs[1].data.tags["failmap.params_hash"]

    toy.run(["git", "add", "-A"], project)
    toy.run(["git", "commit", "-qm", "seed 7"], project)
    toy.run([sys.executable, "-m", "dvc", "exp", "run", "-n", "seed9", "-S", "seed=9"], project)
    _, runs = runs_of(uri, toy.EXPERIMENT)
    assert len(runs) == 3
    named = runs[-1]
    assert named.info.run_name == "seed9" == named.data.tags["failmap.dvc_exp_name"]
    assert named.data.tags["failmap.git_commit"] == toy.head(project)  # the experiment's baseline commit
    assert named.data.params["seed"] == "9"


def test_tracking_off_and_broken_uri_keep_the_pipeline_green(project, tmp_path):
    uri = f"sqlite:///{project}/mlflow.db"
    _, before = runs_of(uri, toy.EXPERIMENT)
    toy.set_params(project, seed=11)
    off = toy.run([sys.executable, "-m", "dvc", "repro"], project, tracking=False)
    assert "nothing logged to MLflow" in off.stdout
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    toy.set_params(project, tracking__uri=f"sqlite:///{blocker}/mlflow.db")
    broken = toy.run([sys.executable, "-m", "dvc", "repro"], project)
    assert "Running stage 'track'" in broken.stdout and "WARNING failmap.tracking" in broken.stderr
    assert json.loads((project / "metrics" / "toy.json").read_text())["test"]["accuracy"] == pytest.approx(0.11)
    _, after = runs_of(uri, toy.EXPERIMENT)
    assert len(after) == len(before)


PROC_GUARD = textwrap.dedent("""
    # Run the track stage with an audit hook that records each /proc access whose caller (the
    # innermost frame outside the standard library) is failmap's code or the stage script;
    # libraries such as mlflow's dependencies may read /proc, tracking itself must not.
    import os, runpy, sys, sysconfig
    ours = (os.path.realpath(sys.argv[1]), os.path.realpath(sys.argv[2]))
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    seen = []
    def hook(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and str(args[0]).startswith("/proc"):
            frame = sys._getframe(1)
            while frame is not None and (frame.f_code.co_filename.startswith("<frozen")
                                         or os.path.realpath(frame.f_code.co_filename).startswith(stdlib)):
                frame = frame.f_back
            if frame is not None and os.path.realpath(frame.f_code.co_filename).startswith(ours):
                seen.append((str(args[0]), frame.f_code.co_filename, frame.f_lineno))
    sys.addaudithook(hook)
    runpy.run_path("stages/track.py", run_name="__main__")
    print("PROC ACCESS:", seen)
""")


def test_tracking_never_reads_proc(tmp_path):
    """The track stage, run with an audit hook: no /proc access comes from failmap's code."""
    project = toy.toy_project(tmp_path / "project")
    toy.run([sys.executable, "-m", "dvc", "repro"], project, tracking=False)  # the files track logs
    (tmp_path / "guard.py").write_text(PROC_GUARD)
    src = Path(tracking.__file__).resolve().parent
    out = toy.run([sys.executable, str(tmp_path / "guard.py"), str(src), str(project / "stages")], project)
    assert "tracking: MLflow run" in out.stdout, out.stdout
    assert "PROC ACCESS: []" in out.stdout, out.stdout
    # the hook does see a /proc read that our code makes, through pathlib too
    (tmp_path / "reader.py").write_text("from pathlib import Path\nPath('/proc/self/stat').read_text()\n")
    probe = subprocess.run([sys.executable, "-c", PROC_GUARD.replace('"stages/track.py"', '"reader.py"'),
                            str(tmp_path), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert "PROC ACCESS: [('/proc/self/stat'" in probe.stdout, probe.stdout + probe.stderr


def test_track_stage_logs_every_metrics_file_the_pipeline_declares():
    """A stage's metrics reach MLflow only through the track stage's deps: a metrics file
    declared by a stage but missing there would never be logged."""
    stages = yaml.safe_load((toy.REPO / "dvc.yaml").read_text())["stages"]
    declared = {next(iter(m)) if isinstance(m, dict) else m
                for name, s in stages.items() for m in s.get("metrics", []) if name != "track"}
    logged = set(stages["track"]["deps"])
    missing = sorted(m for m in declared if m not in logged and not any(m.startswith(d + "/") for d in logged))
    assert not missing, f"metrics files not among the track stage's deps in dvc.yaml: {missing}"
