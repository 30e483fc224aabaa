"""Running the ``dvc`` command line from Python (studies, benchmarks, the smoke run).

One fact lives here: a child process must find *this* interpreter's scripts
(the venv's ``dvc``) first on PATH, also when the venv is not activated; the
DVC queue's worker runs ``dvc`` from PATH and waits forever otherwise.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def scripts_first_env(**extra: str) -> dict[str, str]:
    """``os.environ`` with this interpreter's scripts folder first on PATH, plus ``extra``."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(extra)
    return env


def run_dvc(*args: str, check: bool = True, retry_if: str | None = None, attempts: int = 1,
            wait_seconds: float = 5.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``dvc *args`` with captured text output. Output goes through files, not
    pipes: a worker that ``dvc queue start`` leaves running inherits them, and a
    pipe would keep this call waiting until the whole queue is done. A failure
    whose stderr contains ``retry_if`` is retried up to ``attempts`` times in
    all; with ``check`` a final failure raises, naming the command. ``env``
    adds variables to the child's environment (and so to any worker it starts)."""
    for attempt in range(attempts):
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run([sys.executable, "-m", "dvc", *args], stdout=out, stderr=err, text=True,
                                  env=scripts_first_env(**(env or {})))
            out.seek(0), err.seek(0)
            proc.stdout, proc.stderr = out.read(), err.read()
        if proc.returncode == 0 or retry_if is None or retry_if not in proc.stderr or attempt == attempts - 1:
            break
        time.sleep(wait_seconds)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return proc
