"""Multi-seed studies: the pipeline over several seeds as DVC experiments,
aggregated into one table of means with 95 % intervals.

One figure from one run is a draw: the same params on another seed or
another CPU move the baseline, the failure directions and every arm's gain
(README "Results"). A study queues one DVC experiment per seed
(``dvc exp run --queue -S seed=N``), runs the queue (``dvc queue start``),
reads the finished experiments back from ``dvc exp show --json`` and
aggregates the figures of ``FIGURES`` over seeds: mean, standard deviation
and a Student-t 95 % interval of the mean.

    python scripts/seed_study.py --name context --seeds 0 1 2 3 4
    python scripts/seed_study.py --name colour --seeds 0 1 2 3 4 -S world.planted_attribute=colour
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from failmap.dvc_cli import run_dvc

ARMS = ("none", "generic", "caption", "direction", "pool_svm", "pool_random", "pool_confidence")
STUDY_METRICS = "metrics/study"   # <name>.json: the table
STUDY_PLOTS = "plots/study"       # <name>.png: the figures with their intervals
EVALUATE = "metrics/evaluate.json"  # the last stage's metrics: an experiment that has them finished


@dataclass(frozen=True)
class Figure:
    name: str
    file: str                          # metrics file the experiment's figure is read from
    read: Callable[[dict], float | None]


def _at(*path: str) -> Callable[[dict], float | None]:
    def read(d: dict):
        for key in path:
            if not isinstance(d, dict) or key not in d:
                return None
            d = d[key]
        return None if d is None else float(d)
    return read


def _min_class_gap(baseline: dict) -> float | None:
    per = (baseline.get("test") or {}).get("subpop", {}).get("per_class") or {}
    gaps = [v.get("gap") for v in per.values() if isinstance(v, dict) and v.get("gap") is not None]
    return float(min(gaps)) if gaps else None


def _n_skipped(svm: dict) -> float | None:
    """Classes without an SVM; DVC drops an empty ``skipped`` dict from what
    ``dvc exp show`` returns, so a written svm.json without it skipped none."""
    return float(len(svm.get("skipped") or {})) if svm else None


def largest_alpha(generated: dict) -> str | None:
    """The key ("alpha_<a>") of the largest alpha in generate's metrics, whose hard / easy images the bars read."""
    alphas = (generated.get("eval") or {}).get("alphas") or {}
    return max(alphas, key=lambda a: float(a.removeprefix("alpha_")), default=None)


def _decoded(side: str) -> Callable[[dict], float | None]:
    def read(generated: dict):
        if side == "neutral":
            return _at("eval", "neutral", "accuracy")(generated)
        alpha = largest_alpha(generated)
        return None if alpha is None else _at("eval", "alphas", alpha, side, "accuracy")(generated)
    return read


FIGURES: tuple[Figure, ...] = (
    Figure("baseline test accuracy", "metrics/baseline.json", _at("test", "accuracy")),
    Figure("planted gap, mean over classes", "metrics/baseline.json", _at("test", "subpop", "mean_gap")),
    Figure("planted gap, smallest class", "metrics/baseline.json", _min_class_gap),
    Figure("classes skipped (too few val errors)", "metrics/svm.json", _n_skipped),
    Figure("planted subpopulation AP: SVM", "metrics/svm.json", _at("mean", "svm", "subpop_ap")),
    Figure("planted subpopulation AP: confidence", "metrics/svm.json", _at("mean", "confidence", "subpop_ap")),
    Figure("planted subpopulation AP: random", "metrics/svm.json", _at("mean", "random", "subpop_ap")),
    # dcbench: the planted subpopulation matched with its class's best failure mode (failmap.modes)
    Figure("planted subpopulation AP: best failure mode", "metrics/modes.json", _at("mean", "best_subpop_ap")),
    # the largest failure mode (most of the class's val errors), chosen without ground truth: what
    # modes.drive top_mode steers the caption and direction arms, the evaluation images and pool_svm by
    Figure("planted subpopulation AP: largest failure mode", "metrics/modes.json",
           _at("mean", "mode_0", "subpop_ap")),
    Figure("top-3 hard captions name the planted value", "metrics/captions.json",
           _at("planted_in_top3_hard", "fraction")),  # the SVM's (a class's one direction)
    # those the caption arm decodes under modes.drive: the SVM's, or the largest failure mode's
    Figure("top-3 hard captions of the drive name the planted value", "metrics/captions.json",
           _at("drive_planted_in_top3_hard", "fraction")),
    *(Figure(f"{arm}: planted subpopulation accuracy", "metrics/evaluate.json",
             _at("arms", arm, "hard_acc_gt", "mean")) for arm in ARMS),
    *(Figure(f"{arm}: test accuracy", "metrics/evaluate.json", _at("arms", arm, "test_acc", "mean")) for arm in ARMS),
    # paired per seed: the gain of an arm over none within one world, then its interval over worlds
    *(Figure(f"{arm} minus none: planted subpopulation accuracy", "metrics/evaluate.json",
             _at("delta_vs_none", arm, "hard_acc_gt")) for arm in ARMS[1:]),
    *(Figure(f"{arm} minus none: test accuracy", "metrics/evaluate.json",
             _at("delta_vs_none", arm, "test_acc")) for arm in ARMS[1:]),
    Figure("decoded eval images, baseline accuracy: hard", "metrics/generated.json", _decoded("hard")),
    Figure("decoded eval images, baseline accuracy: neutral", "metrics/generated.json", _decoded("neutral")),
    Figure("decoded eval images, baseline accuracy: easy", "metrics/generated.json", _decoded("easy")),
)


# ------------------------------------------------------------------ reading
def experiments(exp_show: list, prefix: str) -> dict[str, dict]:
    """{experiment name: its entry} for the *finished* experiments of ``dvc exp
    show --json`` whose name starts with ``prefix``: a queued, running or
    failed one (its group's ``executor.state``) is left out, since DVC shows
    it with its parent commit's metrics. The workspace and commits are skipped.
    A name run on several commits (``--all-commits``) gives its newest run."""
    found: dict[str, dict] = {}

    def walk(node, state=None):
        if isinstance(node, list):
            for item in node:
                walk(item, state)
        elif isinstance(node, dict):
            if "revs" in node:
                state = (node.get("executor") or {}).get("state")
            name = node.get("name")
            if isinstance(name, str) and name.startswith(prefix) and isinstance(node.get("data"), dict) \
                    and state in (None, "success") and not node.get("error") \
                    and (name not in found or _timestamp(node) >= _timestamp(found[name])):
                found[name] = node  # a study re-run on a later commit: its experiments, not the older ones
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value, state)
    walk(exp_show)
    return found


def _timestamp(entry: dict) -> str:
    """When DVC ran the experiment (ISO 8601, so it sorts as text); '' when unknown."""
    return str(entry["data"].get("timestamp") or "")


def metrics_of(entry: dict) -> dict[str, dict]:
    """{metrics file: its content} of one ``dvc exp show --json`` entry."""
    out = {}
    for file, value in (entry["data"].get("metrics") or {}).items():
        if isinstance(value, dict) and isinstance(value.get("data"), dict):
            out[file] = value["data"]
    return out


def seed_of(entry: dict) -> int | None:
    for file in (entry["data"].get("params") or {}).values():
        data = file.get("data") if isinstance(file, dict) else None
        if isinstance(data, dict) and "seed" in data:
            return int(data["seed"])
    return None


# ------------------------------------------------------------------ statistics
def interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean, sample std and the Student-t interval of the mean of ``values``
    (NaN-free); the interval is None for fewer than two values."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    if not n:
        return dict(mean=None, std=None, low=None, high=None, n=0)
    mean = float(x.mean())
    if n < 2:
        return dict(mean=mean, std=None, low=None, high=None, n=1)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return dict(mean=mean, std=std, low=mean - half, high=mean + half, n=n)


def aggregate(runs: Mapping[str, dict[str, dict]], figures: Iterable[Figure] = FIGURES) -> dict:
    """{figure name: mean, std, 95 % interval, n, and the value of every run}
    from ``runs`` = {run name: {metrics file: content}}. A run that lacks a
    figure (e.g. an arm it did not train) is left out of that figure's n."""
    table = {}
    for fig in figures:
        values = {run: fig.read(files.get(fig.file) or {}) for run, files in runs.items()}
        kept = [v for v in values.values() if v is not None and not math.isnan(v)]
        table[fig.name] = dict(interval(kept), values=values)
    return table


def seed_in(run: str) -> int:
    """The seed of a study run's name (``run_name``)."""
    return int(run.rsplit("-seed", 1)[1])


def paired(before: Mapping[str, dict], after: Mapping[str, dict]) -> dict:
    """{figure: mean, std, 95 % interval and per-seed values of after minus
    before} over the seeds both tables (``aggregate``'s) have a value for.
    Two studies on the same seeds share each seed's world and draws; their
    per-seed differences resolve what the two intervals side by side cannot."""
    table = {}
    for name, row in after.items():
        if name not in before:
            continue
        old = {seed_in(r): v for r, v in before[name]["values"].items() if v is not None and not math.isnan(v)}
        new = {seed_in(r): v for r, v in row["values"].items() if v is not None and not math.isnan(v)}
        diffs = {seed: new[seed] - old[seed] for seed in sorted(old.keys() & new.keys())}
        table[name] = dict(interval(list(diffs.values())), values={f"seed{s}": d for s, d in diffs.items()})
    return table


def compare(before: str, after: str, metrics_dir: str = STUDY_METRICS) -> tuple[dict, Path]:
    """``paired`` of two written studies, written as ``<after>_minus_<before>.json``."""
    from failmap.io import write_json

    tables = {}
    for study in (before, after):
        path = Path(metrics_dir) / f"{study}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no written study {study!r} (run it first, or --aggregate-only)")
        tables[study] = json.loads(path.read_text())["figures"]
    table = paired(tables[before], tables[after])
    out = Path(metrics_dir) / f"{after}_minus_{before}.json"
    write_json(out, dict(before=before, after=after, figures=table))
    return table, out


def table_markdown(table: Mapping[str, dict], digits: int = 3) -> str:
    def f(v):
        return "-" if v is None else f"{v:.{digits}f}"
    lines = ["| figure | mean | std | 95 % interval | n |", "|---|---|---|---|---|"]
    for name, row in table.items():
        ci = "-" if row["low"] is None else f"{f(row['low'])} .. {f(row['high'])}"
        lines.append(f"| {name} | {f(row['mean'])} | {f(row['std'])} | {ci} | {row['n']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ running
# how long a study waits on Queued experiments (none Running) while no queue worker runs. A live worker takes the
# next experiment within seconds; a dead one never will: DVC's temporary worker stops itself when its monitor's
# check (every 10 s) finds no task, and a check that falls just as the worker receives one stops it after that
# experiment (measured: "Got shutdown from remote" at the second its first task arrived; 3.5 idle minutes of a
# study at the 180 s this was before)
WORKER_GONE_SECONDS = 60.0
# how often it then starts the queue again before giving up: a worker can die between experiments (measured:
# DVC's celery worker read an empty broker message, "JSONDecodeError: Expecting value", and exited with three
# experiments still queued)
WORKER_RESTARTS = 3


def run_name(study: str, seed: int) -> str:
    return f"{study}-seed{seed}"


def no_worker(status: str) -> bool:
    """``dvc queue status`` says no worker runs (nothing queued will ever start)."""
    return "Worker status: 0 active, 0 idle" in status


def queue_states(status: str, names: Sequence[str]) -> dict[str, str]:
    """{experiment name: state} from ``dvc queue status`` text (columns Task,
    Name, Created, Status; Created holds spaces, e.g. "01:24 PM", so the state
    is the last word of a row)."""
    out = {}
    for line in status.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in names:
            out[words[1]] = words[-1]
    return out


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_env(jobs: int, cores: int) -> dict[str, str]:
    """Threads per queue worker: the cores shared among ``jobs`` workers, unless
    the caller pinned ``OMP_NUM_THREADS``. Workers that each take every core
    oversubscribe the machine."""
    if os.environ.get("OMP_NUM_THREADS"):
        return {}
    return {"OMP_NUM_THREADS": str(max(1, cores // max(1, jobs)))}


def queue_and_run(study: str, seeds: Sequence[int], overrides: Sequence[str] = (), jobs: int | None = None,
                  poll_seconds: float = 15.0, force: bool = False) -> list[str]:
    """Queue one experiment per seed (``-S seed=N`` plus ``overrides``), run the
    queue with ``jobs`` workers (threads shared by ``worker_env``) and wait for
    it. One worker by default: beside a second one-thread worker on two cores a
    seed's generate took ~1,100 s and train_baseline ~315 s, alone with two
    threads 300-610 s and 136-170 s; with the overlap of DVC's own work the
    pair took 12.5 min a seed against 12 (README "Multi-seed studies").
    ``jobs`` is for machines with cores to spare. Experiments of an earlier study of the same name are removed
    first. ``force`` runs every stage (``dvc exp run --force``): without it DVC
    restores a stage whose command, deps and params it has run before from its
    run-cache, so a study repeating upstream settings only recomputes what
    changed. Returns the names that failed."""
    cores = available_cores()
    jobs = jobs or 1
    names = [run_name(study, s) for s in seeds]
    run_dvc("exp", "remove", *names, check=False)
    for seed, name in zip(seeds, names):
        sets = [arg for kv in (f"seed={seed}", *overrides) for arg in ("-S", kv)]
        run_dvc("exp", "run", "--queue", *(["--force"] if force else []), "-n", name, *sets)
        print(f"queued {name}", flush=True)
    run_dvc("queue", "start", "-j", str(jobs), env=worker_env(jobs, cores))
    start, idle_since, restarts = time.time(), None, 0
    while True:
        # a worker rewriting its info file while `queue status` reads it fails the read ("unexpected error -
        # Expecting value", measured on a study with two workers): read again
        status = run_dvc("queue", "status", retry_if="unexpected error", attempts=5).stdout
        rows = queue_states(status, names)
        waiting = [n for n, s in rows.items() if s in ("Queued", "Running")]
        print(f"[{time.time() - start:6.0f} s] " + ", ".join(f"{n}: {s}" for n, s in sorted(rows.items())), flush=True)
        if rows and not waiting:
            return sorted(n for n, s in rows.items() if s == "Failed")
        # `dvc queue status` reports no worker while the last experiment still runs (measured: 21 min of
        # "0 active" before a Running experiment ended in Success): only Queued experiments with none Running
        # and no worker are stuck, and then only after the grace a starting worker needs
        queued = [n for n, s in rows.items() if s == "Queued"]
        if not (queued and len(queued) == len(waiting) and no_worker(status)):
            idle_since = None
        elif idle_since is None:
            idle_since = time.time()
        if idle_since is not None and time.time() - idle_since > max(WORKER_GONE_SECONDS, 3 * poll_seconds):
            if restarts == WORKER_RESTARTS:
                raise RuntimeError(f"no DVC queue worker runs, {queued} still queued, after {restarts} restarts: "
                                   f"see .dvc/tmp/exps/celery/dvc-exp-worker-*.out, then `dvc queue start`")
            restarts, idle_since = restarts + 1, None
            print(f"no DVC queue worker runs with {queued} queued: starting the queue again "
                  f"({restarts} of {WORKER_RESTARTS})", flush=True)
            run_dvc("queue", "start", "-j", str(jobs), env=worker_env(jobs, cores))
        time.sleep(poll_seconds)


def collect(study: str) -> dict[str, dict[str, dict]]:
    """{experiment name: {metrics file: content}} of the study's finished
    experiments, on any commit (``--all-commits``: a study outlives the commit
    it was queued on); a queued, running or failed one has no metrics yet."""
    # an experiment starting meanwhile can remove its temp folder under `exp show`: retry that
    proc = run_dvc("exp", "show", "--json", "--all-commits", retry_if="does not exist", attempts=5)
    shown = json.loads(proc.stdout)
    runs = {name: metrics_of(entry) for name, entry in sorted(experiments(shown, f"{study}-seed").items())}
    return {name: files for name, files in runs.items() if EVALUATE in files}


def write_study(study: str, table: dict, runs: Mapping[str, dict], failed: Sequence[str], overrides: Sequence[str],
                metrics_dir: str = STUDY_METRICS, plots_dir: str = STUDY_PLOTS) -> Path:
    from failmap.io import write_json
    from failmap.plots import interval_plot

    out = Path(metrics_dir) / f"{study}.json"
    write_json(out, dict(study=study, runs=sorted(runs), failed=list(failed), overrides=list(overrides),
                         figures=table))
    interval_plot(table, f"{plots_dir}/{study}.png", title=f"study {study!r}: mean and 95 % interval over "
                                                           f"{len(runs)} seeds")
    return out


def log_study(study: str, table: dict, path: Path, tracking_uri: str, experiment: str) -> None:
    """One MLflow run per study: mean, std and interval of every figure."""
    from failmap.tracking import clean_key, tracking_enabled
    if not tracking_enabled():
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"study-{study}"):
        mlflow.set_tag("failmap.study", study)
        for name, row in table.items():
            for stat in ("mean", "std", "low", "high"):
                if row[stat] is not None:
                    mlflow.log_metric(clean_key(f"study.{name}.{stat}"), row[stat])
        mlflow.log_artifact(str(path), "study")
        png = Path(STUDY_PLOTS) / f"{study}.png"
        if png.is_file():
            mlflow.log_artifact(str(png), "study")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run the pipeline over several seeds as DVC experiments and "
                                                 "aggregate them (mean, std, 95 % interval)")
    parser.add_argument("--name", help="study name: experiments are <name>-seed<N>")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                        help="per-seed differences AFTER minus BEFORE of two written studies; runs nothing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[],
                        help="a params override for every experiment (as dvc exp run -S)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="queue workers, each with cores/jobs threads (default 1: on 2 cores two one-thread "
                             "workers were no faster than one with two threads)")
    parser.add_argument("--force", action="store_true",
                        help="run every stage, none restored from DVC's run-cache (a cold study: a speed figure)")
    parser.add_argument("--aggregate-only", action="store_true", help="read finished experiments, run nothing")
    args = parser.parse_args(argv)
    if args.compare:
        table, path = compare(*args.compare)
        print(f"{path}: {args.compare[1]} minus {args.compare[0]}, paired by seed\n{table_markdown(table)}")
        return 0
    if not args.name:
        parser.error("--name is required (or --compare BEFORE AFTER)")
    if len(set(args.seeds)) < 2:
        parser.error("a study needs at least two distinct seeds")
    failed = [] if args.aggregate_only else queue_and_run(args.name, args.seeds, args.overrides, args.jobs,
                                                          force=args.force)
    runs = collect(args.name)
    if not runs:
        print(f"no finished experiment named {args.name}-seed*: nothing to aggregate", file=sys.stderr)
        return 1
    table = aggregate(runs)
    path = write_study(args.name, table, runs, failed, args.overrides)
    from failmap.params import load_params
    t = load_params("params.yaml").tracking
    log_study(args.name, table, path, t.uri, t.experiment)
    print(table_markdown(table))
    if failed:
        print(f"WARNING: experiments failed: {failed} (see `dvc queue logs <name>`)", file=sys.stderr)
    return 1 if failed else 0
