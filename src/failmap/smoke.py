"""The tiny end-to-end pipeline: a temporary copy of the repository with
``tests/tiny_params.yaml`` laid over ``params.yaml``, reproduced with
``dvc repro`` in about a minute on a CPU, then gated (``gate.yaml``, section
``smoke``) against the committed snapshot ``.ci/smoke_baseline.json``.

    python -m failmap.smoke                    # run + gate (what .ci/smoke does)
    python -m failmap.smoke --write-baseline   # run + refresh the committed snapshot
    python -m failmap.smoke --keep DIR         # run in DIR and leave it there

The end-to-end tests build their copies with the same functions. Exit status:
the gate's (0 pass, 1 regression, 2 configuration error), or 3 when the
pipeline itself failed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from failmap import gate
from failmap.dvc_cli import scripts_first_env
from failmap.params import effective

# What a copy needs to reproduce the pipeline: the DAG, the code, DVC's config
# (analytics off, offline plots template) and the shipped foundation models.
# Data, task models and metrics are made anew.
COPIED = ["dvc.yaml", "stages", "src", "models/pretrained", ".dvc/config", ".dvc/plots", ".dvcignore"]
TINY_PARAMS = "tests/tiny_params.yaml"
SMOKE_BASELINE = ".ci/smoke_baseline.json"


def repo_root() -> Path:
    """The repository this package is installed from (src layout, editable install)."""
    return Path(__file__).resolve().parents[2]


def tiny_params(repo: Path) -> dict:
    """params.yaml with the tiny overrides laid over it by ``failmap.params.overlay``
    (DVC wants every key present, and the schema keeps no defaults)."""
    return effective(repo / "params.yaml", [repo / TINY_PARAMS])


def copy_pipeline(repo: Path, dest: Path, names=COPIED) -> None:
    """Copy ``names`` (files or folders, by default what a copy needs to reproduce the
    pipeline) from ``repo`` into ``dest``, leaving caches and build metadata behind."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = repo / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)


def pipeline_repo(repo: Path, dest: Path, params: dict) -> Path:
    """A fresh git repository at ``dest`` holding the pipeline and ``params`` as its params.yaml."""
    copy_pipeline(repo, dest)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def tiny_copy(repo: Path, dest: Path) -> Path:
    """A fresh git repository at ``dest`` holding the pipeline and the tiny params."""
    return pipeline_repo(repo, dest, tiny_params(repo))


def pipeline_env() -> dict[str, str]:
    """One thread (tiny models are far slower with two on a busy machine), no
    tracking, no analytics, this interpreter's scripts (dvc) first on PATH."""
    return scripts_first_env(OMP_NUM_THREADS="1", FAILMAP_TRACKING="0", DVC_NO_ANALYTICS="1",
                             HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m failmap.smoke", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-baseline", action="store_true",
                        help=f"write the run's metrics to {SMOKE_BASELINE} instead of gating")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR (must not exist) and keep it")
    args = parser.parse_args(argv)
    repo = repo_root()
    if args.keep and Path(args.keep).exists():
        parser.error(f"--keep {args.keep}: already exists")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="failmap-smoke-"))
    caller_cwd = os.getcwd()
    try:
        tiny_copy(repo, work)
        print(f"smoke: dvc repro of the tiny pipeline in {work}", flush=True)
        result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=work, env=pipeline_env())
        if result.returncode != 0:
            print(f"smoke: dvc repro failed (exit {result.returncode})", file=sys.stderr)
            return 3
        os.chdir(work)  # the gate reads the metrics files relative to the working directory
        if args.write_baseline:
            return gate.main(["--write-baseline", str(repo / SMOKE_BASELINE)])
        return gate.main(["--config", str(repo / "gate.yaml"), "--section", "smoke",
                          "--baseline", str(repo / SMOKE_BASELINE)])
    finally:
        os.chdir(caller_cwd)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
