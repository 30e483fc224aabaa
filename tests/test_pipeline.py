"""End-to-end: `dvc repro` of the whole pipeline on tests/tiny_params.yaml in a
temporary copy of the repository."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from failmap.smoke import pipeline_env, repo_root, tiny_copy

REPO = repo_root()
UPSTREAM = ["prepare", "train_baseline", "pretrain_clip", "embed", "fit_svms", "pretrain_decoder"]


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    work = tiny_copy(REPO, tmp_path_factory.mktemp("repo"))
    env = pipeline_env()
    first = _run([sys.executable, "-m", "dvc", "repro"], work, env)
    return work, env, first


def test_repro_writes_metrics(repro):
    work, _, _ = repro
    baseline = json.loads((work / "metrics" / "baseline.json").read_text())
    assert 0.0 <= baseline["test"]["accuracy"] <= 1.0
    assert set(baseline["test"]["per_class"]) == {"circle", "square", "triangle", "star", "cross", "heart"}
    assert "mean_gap" in baseline["test"]["subpop"]
    assert (work / "models" / "baseline.pt").exists()
    assert (work / "data" / "baseline" / "test.csv").exists()


def test_second_repro_is_a_noop(repro):
    work, env, _ = repro
    again = _run([sys.executable, "-m", "dvc", "repro"], work, env)
    assert "didn't change" in again.stdout or "up to date" in again.stdout


def test_bad_params_fail_before_work_and_keep_outputs(repro):
    work, env, _ = repro
    before = (work / "metrics" / "baseline.json").read_text()
    params = (work / "params.yaml").read_text()
    (work / "params.yaml").write_text(params.replace("epochs: 4", "epochs: -3", 1))
    try:
        result = subprocess.run([sys.executable, "stages/train_baseline.py"], cwd=work, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 2
        assert "baseline.epochs" in result.stderr and "-3" in result.stderr
        assert (work / "metrics" / "baseline.json").read_text() == before
    finally:
        (work / "params.yaml").write_text(params)


def test_killed_run_resumes_to_identical_metrics(repro, tmp_path):
    """A second run from scratch, killed in the middle of a stage and resumed
    with `dvc repro`, ends with metrics byte-identical to the first run's:
    the pipeline is deterministic and no partial output is taken as complete."""
    work, env, _ = repro
    other = tiny_copy(REPO, tmp_path / "again")
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=other, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    for line in proc.stdout:
        if "Running stage 'train_baseline'" in line:
            time.sleep(1.0)  # the stage is importing torch or training: nothing written yet
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (other / "metrics" / "baseline.json").exists()
    _run([sys.executable, "-m", "dvc", "repro"], other, env)
    first = sorted(p.name for p in (work / "metrics").glob("*.json"))
    assert first == sorted(p.name for p in (other / "metrics").glob("*.json"))
    for name in first:
        assert (work / "metrics" / name).read_bytes() == (other / "metrics" / name).read_bytes(), name
    for model in ["baseline.pt", "clip/weights.pt"]:
        assert (work / "models" / model).read_bytes() == (other / "models" / model).read_bytes(), model


def _committed_copy(repro, dest):
    """A copy of the reproduced tiny repository with everything committed (DVC
    experiments start from a commit), and the environment git needs for it."""
    work, env, _ = repro
    shutil.copytree(work, dest, symlinks=True)
    git_env = dict(env, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                   GIT_COMMITTER_EMAIL="t@t")
    _run(["git", "add", "-A"], dest, git_env)
    _run(["git", "commit", "-qm", "tiny pipeline"], dest, git_env)
    return dest, git_env


def test_method_param_experiment_reruns_only_downstream_stages(repro, tmp_path):
    """`dvc exp run -S caption.top_k=2` re-runs caption and what follows it;
    the baseline, both foundation models, embeddings and SVMs come from the run cache."""
    exp_repo, git_env = _committed_copy(repro, tmp_path / "exp")
    result = _run([sys.executable, "-m", "dvc", "exp", "run", "-n", "topk2", "-S", "caption.top_k=2"],
                  exp_repo, git_env)
    ran = set(re.findall(r"Running stage '(\w+)'", result.stdout))
    # caption and generate must run, and report (it reads metrics/captions.json), and track (it logs the
    # execution); finetune and evaluate run when their inputs changed (DVC skips a stage whose inputs came
    # out byte-identical)
    assert {"caption", "generate", "report", "track"} <= ran <= {"caption", "generate", "finetune", "evaluate",
                                                                  "report", "track"}, result.stdout
    for stage in UPSTREAM:
        assert f"Stage '{stage}' didn't change, skipping" in result.stdout, stage
    captions = json.loads((exp_repo / "metrics" / "captions.json").read_text())
    assert all(len(top["hard"]) == 2 for top in captions["top"].values())
    shown = json.loads(_run([sys.executable, "-m", "dvc", "exp", "show", "--json"], exp_repo, git_env).stdout)
    assert "topk2" in json.dumps(shown)


def test_two_seed_study_queues_experiments_and_aggregates_them(repro, tmp_path):
    """scripts/seed_study.py: one queued DVC experiment per seed, run by `dvc queue
    start`, read back from `dvc exp show --json` into the study table and plot."""
    study_repo, git_env = _committed_copy(repro, tmp_path / "study")
    _run([sys.executable, str(REPO / "scripts" / "seed_study.py"), "--name", "tiny", "--seeds", "0", "1"],
         study_repo, git_env)
    study = json.loads((study_repo / "metrics" / "study" / "tiny.json").read_text())
    assert study["runs"] == ["tiny-seed0", "tiny-seed1"] and study["failed"] == []
    gap = study["figures"]["planted gap, mean over classes"]
    assert gap["n"] == 2 and set(gap["values"]) == {"tiny-seed0", "tiny-seed1"}
    assert gap["low"] <= gap["mean"] <= gap["high"]
    # each value is that experiment's own metric, not the workspace's
    shown = json.loads(_run([sys.executable, "-m", "dvc", "exp", "show", "--json"], study_repo, git_env).stdout)
    assert "tiny-seed1" in json.dumps(shown)
    assert (study_repo / "plots" / "study" / "tiny.png").stat().st_size > 1000


def test_default_path_runs_on_the_shipped_foundation_models(tmp_path):
    """clip.source / decoder.source world (the defaults): the pipeline trains no
    foundation model, installs the shipped ones and runs the generator check."""
    import yaml
    work = tiny_copy(REPO, tmp_path / "shipped")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["clip"]["source"] = params["decoder"]["source"] = "world"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([sys.executable, "-m", "dvc", "repro"], work, pipeline_env())
    clip = json.loads((work / "metrics" / "clip.json").read_text())
    decoder = json.loads((work / "metrics" / "decoder.json").read_text())
    assert clip["source"] == decoder["source"] == "world" and not clip["trained"] and not decoder["trained"]
    shipped = json.loads((REPO / "models" / "pretrained" / "world-clip" / "card.json").read_text())
    assert clip["space"] == shipped["space"]
    assert (work / "models" / "clip" / "weights.safetensors").read_bytes() == \
        (REPO / "models" / "pretrained" / "world-clip" / "weights.safetensors").read_bytes()
    generated = json.loads((work / "metrics" / "generated.json").read_text())
    check = generated["generator_check"]
    assert 0.0 <= check["neutral_clip_class_accuracy"] <= 1.0 and check["trusted"] == (
        check["neutral_clip_class_accuracy"] >= check["threshold"])
    evaluate = json.loads((work / "metrics" / "evaluate.json").read_text())
    assert evaluate["synthetic_trusted"] == check["trusted"]
    # every failure mode of every class gets every arm's accuracy on the test images most like it
    modes = json.loads((work / "metrics" / "modes.json").read_text())["per_class"]
    assert {c: sorted(v) for c, v in evaluate["by_mode"].items()} == \
        {c: [f"mode_{j}" for j in range(m["n_modes"])] for c, m in modes.items()}
    arms = set(evaluate["arms"])
    assert all(set(by_arm) == arms for v in evaluate["by_mode"].values() for by_arm in v.values())
