"""A two-stage DVC project for the tracking tests: a toy stage that goes
through ``failmap.stage.run_stage`` (so it writes its resources file) and
writes a metrics file and a PNG, then the project's real ``stages/track.py``.
``dvc repro`` of it takes seconds, where the tiny pipeline takes minutes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
EXPERIMENT = "toy"

TOY_STAGE = '''
from pathlib import Path

import numpy as np
from PIL import Image
from failmap.io import write_json
from failmap.stage import run_stage

with run_stage("toy") as p:
    write_json("metrics/toy.json", {"test": {"accuracy": p.seed / 100}, "name": "toy", "trusted": True,
                                    "skipped": float("nan")})
    Path("plots/toy").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), p.seed % 256, np.uint8)).save("plots/toy/grid.png")
'''

DVC_YAML = {"stages": {
    "toy": {"cmd": "python toy.py", "deps": ["toy.py"], "params": ["seed"],
            "metrics": [{"metrics/toy.json": {"cache": False}}, {"metrics/resources/toy.json": {"cache": False}}],
            "plots": [{"plots/toy": {"cache": False}}]},
    "track": {"cmd": "python stages/track.py", "deps": ["stages/track.py", "metrics/toy.json", "metrics/resources",
                                                       "plots/toy"],
              "params": [{"params.yaml": None}]},
}}


def env(tracking: bool = True) -> dict[str, str]:
    """This interpreter's dvc first on PATH, one thread, tracking on or off."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **GIT_ENV,
                OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1", FAILMAP_TRACKING="1" if tracking else "0")


def run(args, cwd, tracking: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env(tracking), capture_output=True, text=True)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def set_params(root: Path, **changes) -> None:
    """Change top-level or dotted (``tracking.uri``) params in params.yaml."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in changes.items():
        *path, leaf = key.split("__")
        node = params
        for part in path:
            node = node[part]
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def toy_project(root: Path) -> Path:
    """The project at ``root``, committed (git HEAD is what the runs are tagged with)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stages").mkdir()
    shutil.copy(REPO / "stages" / "track.py", root / "stages" / "track.py")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    set_params(root, tracking__experiment=EXPERIMENT, tracking__uri="sqlite:///mlflow.db")
    (root / "toy.py").write_text(TOY_STAGE)
    (root / "plots" / "toy").mkdir(parents=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "toy"], root)
    return root


def head(root: Path) -> str:
    return run(["git", "rev-parse", "HEAD"], root).stdout.strip()
