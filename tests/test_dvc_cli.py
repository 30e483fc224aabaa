import subprocess
import sys
from pathlib import Path

import pytest

from failmap import dvc_cli


def test_scripts_first_env_puts_this_interpreters_scripts_first(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    env = dvc_cli.scripts_first_env(EXTRA="1")
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["PATH"].endswith("/usr/bin") and env["EXTRA"] == "1"


def fake_runs(monkeypatch, results):
    """subprocess.run replaced: each call writes the next (returncode, stderr) to the given files."""
    calls = []

    def run(cmd, stdout, stderr, **kw):
        code, message = results[len(calls)]
        calls.append(cmd)
        stderr.write(message)
        return subprocess.CompletedProcess(cmd, code)
    monkeypatch.setattr(dvc_cli.subprocess, "run", run)
    return calls


def test_run_dvc_retries_only_the_named_failure(monkeypatch):
    calls = fake_runs(monkeypatch, [(1, "tmp folder does not exist"), (1, "tmp folder does not exist"), (0, "")])
    proc = dvc_cli.run_dvc("exp", "show", retry_if="does not exist", attempts=5, wait_seconds=0)
    assert proc.returncode == 0 and len(calls) == 3

    calls = fake_runs(monkeypatch, [(1, "bad params")])
    with pytest.raises(RuntimeError, match=r"`dvc exp show` failed \(1\):\nbad params"):
        dvc_cli.run_dvc("exp", "show", retry_if="does not exist", attempts=5, wait_seconds=0)
    assert len(calls) == 1


def test_run_dvc_gives_up_after_attempts_and_check_false_returns(monkeypatch):
    calls = fake_runs(monkeypatch, [(1, "does not exist")] * 3)
    proc = dvc_cli.run_dvc("exp", "show", check=False, retry_if="does not exist", attempts=3, wait_seconds=0)
    assert proc.returncode == 1 and proc.stderr == "does not exist" and len(calls) == 3


def test_run_dvc_runs_the_real_cli():
    assert dvc_cli.run_dvc("--version").stdout.strip()[0].isdigit()
