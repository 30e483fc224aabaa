"""Wall time of a full `dvc repro --force` and of each stage in it, plus peak memory.

    python benchmarks/bench_pipeline.py                          # the whole pipeline, as `dvc repro` runs it
    python benchmarks/bench_pipeline.py generate finetune evaluate   # only these stages (--single-item)

Runs one `dvc repro --force` (so the workspace and dvc.lock end up as after a
normal run) and times each stage from the moment DVC announces it ("Running
stage ...") to the next announcement or the end: the stage's own work plus
its process start-up, imports, MLflow logging and DVC's hashing of its
outputs. The total is the wall time of the whole command. Peak memory is the
largest resident set of any process in the tree (os.wait4's rusage).

Threads follow the environment, as in `dvc repro`: torch uses every core
unless OMP_NUM_THREADS is set. Prints a table; writes nothing else. Run it
on an otherwise idle machine.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from failmap.dvc_cli import scripts_first_env

REPO = Path(__file__).resolve().parents[1]
STAGE_START = re.compile(r"Running stage '([^']+)'")


def stage_names() -> list[str]:
    return list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def run_repro(stages: list[str]) -> tuple[float, list[tuple[str, float]], float, int]:
    """(total seconds, [(stage, seconds)] in run order, peak MB, exit code)."""
    env = scripts_first_env()
    cmd = [sys.executable, "-m", "dvc", "repro", "--force"] + (["--single-item"] + stages if stages else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    marks: list[tuple[str, float]] = []
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode(errors="replace")
        sys.stdout.write(line)
        sys.stdout.flush()
        found = STAGE_START.search(line)
        if found:
            marks.append((found.group(1), time.perf_counter()))
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    ends = [t for _, t in marks[1:]] + [end]
    per_stage = [(name, stop - begin) for (name, begin), stop in zip(marks, ends)]
    return end - start, per_stage, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    unknown = sorted(set(argv) - set(stage_names()))
    if unknown:
        print(f"unknown stage(s) {unknown}; dvc.yaml has {stage_names()}", file=sys.stderr)
        return 2
    total, per_stage, peak_mb, code = run_repro(argv)
    threads = os.environ.get("OMP_NUM_THREADS", f"torch default ({os.cpu_count()} CPUs)")
    print(f"\n{'stage':<18}{'wall s':>10}")
    for stage, wall in per_stage:
        print(f"{stage:<18}{wall:>10.1f}")
    print(f"{'before the first':<18}{(total - sum(w for _, w in per_stage)):>10.1f}")
    print(f"{'total':<18}{total:>10.1f}  ({total / 60:.1f} min; peak {peak_mb:.0f} MB; threads: {threads}; "
          f"exit {code})")
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
