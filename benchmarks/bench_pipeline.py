"""Wall time and peak memory of each pipeline stage on the current params.yaml.

    python benchmarks/bench_pipeline.py                 # every stage, in dvc.yaml order
    python benchmarks/bench_pipeline.py prepare train_baseline

Each stage is re-run with `dvc repro --force --single-item <stage>` (so the
workspace and dvc.lock end up as after a normal run); peak memory is the
largest resident set of the stage's process tree (os.wait4's rusage).
Prints a table; writes nothing else. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def stage_names() -> list[str]:
    return list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def run_stage(stage: str) -> tuple[float, float, int]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", stage],
                            cwd=REPO, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, proc.returncode


def main(argv: list[str]) -> int:
    stages = argv or stage_names()
    unknown = sorted(set(stages) - set(stage_names()))
    if unknown:
        print(f"unknown stage(s) {unknown}; dvc.yaml has {stage_names()}", file=sys.stderr)
        return 2
    rows = []
    for stage in stages:
        wall, peak_mb, code = run_stage(stage)
        rows.append((stage, wall, peak_mb, code))
        if code != 0:
            break
    print(f"\n{'stage':<18}{'wall s':>10}{'peak MB':>10}  exit")
    for stage, wall, peak_mb, code in rows:
        print(f"{stage:<18}{wall:>10.1f}{peak_mb:>10.0f}  {code}")
    print(f"{'total':<18}{sum(r[1] for r in rows):>10.1f}")
    return max(r[3] for r in rows)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
