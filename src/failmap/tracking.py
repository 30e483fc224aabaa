"""Log every DVC stage to MLflow, one MLflow run per pipeline execution.

Usage in a stage script::

    params = yaml.safe_load(open("params.yaml"))       # the WHOLE file
    with track_stage("baseline", params, params["tracking"]["uri"],
                     params["tracking"]["experiment"]) as run:
        ...train...
        run.log_metrics({"val": {"accuracy": 0.91}})    # -> baseline/val/accuracy
        run.log_artifact("metrics/baseline.json")

On exit the wall time of the ``with`` body (``time/<stage>_s``; MLflow's own
start-up, seconds on a new store, is left out) and peak memory
(``memory/<stage>_peak_mb``, max RSS of the process; plus
``memory/<stage>_cuda_peak_mb`` when CUDA was used) go to MLflow only, never to
DVC metrics files: they vary from run to run and would make every
``dvc metrics diff`` noisy.

Why one run per pipeline execution, and how stages find it
-----------------------------------------------------------
``dvc repro`` / ``dvc exp run`` start each stage as a separate process, one
after the other, so the stages cannot share an in-memory run. Each stage
computes a *group key* and joins the most recent MLflow run tagged with it,
or creates one. The key hashes:

- the git commit the pipeline runs on: ``DVC_EXP_BASELINE_REV`` during
  ``dvc exp run`` (DVC sets it for stage commands; in ``--temp``/queued runs
  HEAD of the temporary clone is not the user's commit), else ``git HEAD``;
- the hash of the params dict the stage was given (every stage passes the whole
  params.yaml, so all stages of one execution agree, and ``dvc exp run -S``
  variants never share a run);
- the experiment name ``DVC_EXP_NAME``, which DVC sets for stage commands of
  ``dvc exp run`` (a random one such as ``exp-1a2b3`` when ``-n`` is not given);
  it also becomes the MLflow run name;
- the identity of the DVC process that launched the stage. DVC exports
  ``DVC_STAGE`` to every stage command (and ``DVC_ROOT``), but not to itself,
  so the nearest ancestor process without ``DVC_STAGE`` in its environment is
  the ``dvc repro``/``dvc exp run`` process; its pid, start time and the boot
  id name this execution exactly. Two ``dvc repro`` calls on the same commit
  and params (say, after an uncommitted code change) thus get two runs, and a
  stage that took hours still finds its run.

When no launcher can be found (a stage script started by hand, or no Linux
``/proc``), the key lacks it and a run is joined only if a stage of it was
active within ``join_window_s`` (default 15 min); stages started by hand one
after the other land in one run, a re-run the next day gets a new one.

Tags on the run: ``failmap.git_commit`` (also ``mlflow.source.git.commit``),
``failmap.params_hash``, ``failmap.dvc_exp_name``, ``failmap.group_key``,
``failmap.launcher``, ``failmap.stage.<stage>`` (running/finished/failed).
Params are logged once per run as flattened dotted keys with string values;
logging them again with identical values is a no-op.

Tracking never loses computed work: any MLflow failure (locked sqlite file,
bad URI, ...) prints a warning on stderr and the stage carries on untracked.
``FAILMAP_TRACKING=0`` turns tracking off entirely (mlflow is not even
imported); tests of other modules use it.

A relative sqlite path (``sqlite:///mlflow.db``) is resolved against
``DVC_ROOT`` when set: ``dvc exp run --temp`` runs stages in a temporary
clone, whose database would otherwise be thrown away with it. Artifacts go to
``mlartifacts/`` beside the database for the same reason.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import re
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# MLflow reads this when it is imported; set before any import of mlflow.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

TRACKING_ENV = "FAILMAP_TRACKING"
DEFAULT_JOIN_WINDOW_S = 15 * 60.0
TAG_PREFIX = "failmap."

# MLflow limits (mlflow.utils.validation); copied so that flattening does not
# need the slow mlflow import.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
_INVALID_KEY_CHARS = re.compile(r"[^\w./\- ]")


def tracking_enabled() -> bool:
    """False when ``FAILMAP_TRACKING`` is 0/false/no/off."""
    return os.environ.get(TRACKING_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def clean_key(key: str) -> str:
    """A key MLflow accepts: characters other than word characters, '.', '/',
    '-' and space become '_' (DVC foreach stages are named ``stage@item``)."""
    return _INVALID_KEY_CHARS.sub("_", key)[:MAX_KEY_LENGTH]


def flatten(tree: Mapping, sep: str = ".", prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (leaves of any type are kept as they are)."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"expected a dict to flatten, got {type(tree).__name__}")
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, sep, name))
        else:
            flat[name] = value
    return flat


def metric_values(values: Mapping, prefix: str = "") -> dict[str, float]:
    """Flatten ``values`` with '/' and keep finite real numbers only.

    Strings, lists, None and bools (MLflow rejects bool metrics) are skipped,
    as are NaN and infinities, so a stage can pass its whole metrics dict.
    """
    flat = flatten(values, sep="/", prefix=prefix)
    return {
        clean_key(key): float(value)
        for key, value in flat.items()
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    }


def param_strings(params: Mapping) -> dict[str, str]:
    """Flatten ``params`` with '.' into MLflow param strings.

    Strings are kept as they are; everything else is written as JSON (lists
    stay readable, ``None`` -> ``null``). Values longer than MLflow's limit
    are cut and end with '...'.
    """
    out = {}
    for key, value in flatten(params, sep=".").items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            text = text[: MAX_PARAM_VALUE_LENGTH - 3] + "..."
        out[clean_key(key)] = text
    return out


def params_hash(params: Mapping) -> str:
    """A short, order-independent hash of a params dict."""
    canonical = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def resolve_uri(uri: str, root: str | Path | None = None) -> str:
    """Make a relative sqlite path absolute against ``root`` (default: ``DVC_ROOT`` or cwd)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path = uri[len(prefix):]
    if path.startswith("/") or path == ":memory:":
        return uri
    base = Path(root if root is not None else os.environ.get("DVC_ROOT") or os.getcwd())
    return prefix + str((base / path).resolve())


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and uri[len(prefix):] not in ("", ":memory:"):
        return Path(uri[len(prefix):])
    return None


def git_commit(root: str | Path) -> str:
    """The commit the pipeline runs on: DVC's experiment baseline, else HEAD, else 'none'."""
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    if baseline:
        return baseline
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "none"
    return out.stdout.strip() if out.returncode == 0 else "none"


def _proc_stat(pid: int) -> tuple[int, str]:
    """(parent pid, start time in clock ticks since boot) of ``pid`` from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[19]


def dvc_launcher_id(max_depth: int = 32) -> str | None:
    """Identity of the DVC process that started this stage, or None.

    DVC puts ``DVC_STAGE`` into every stage command's environment, not into
    its own; the first ancestor without it is the DVC process. Returns
    ``"<boot id>:<pid>:<start ticks>"``, unique for the machine's uptime and
    across reboots. None outside DVC or where /proc is not readable.
    """
    if "DVC_STAGE" not in os.environ:
        return None
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid = os.getppid()
        for _ in range(max_depth):
            if pid <= 1:
                return None
            environ = b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
            parent, start = _proc_stat(pid)
            if b"\0DVC_STAGE=" not in environ:
                return f"{boot_id}:{pid}:{start}"
            pid = parent
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class PipelineIdentity:
    """What decides which MLflow run a stage joins (see the module docstring)."""
    git_commit: str
    params_hash: str
    exp_name: str | None
    launcher: str | None

    @property
    def group_key(self) -> str:
        parts = [self.git_commit, self.params_hash, self.exp_name or "", self.launcher or ""]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def run_name(self) -> str:
        return self.exp_name or f"{self.git_commit[:7]}-{self.params_hash[:7]}"


def pipeline_identity(params: Mapping, root: str | Path | None = None) -> PipelineIdentity:
    root = root if root is not None else os.environ.get("DVC_ROOT") or os.getcwd()
    return PipelineIdentity(
        git_commit=git_commit(root),
        params_hash=params_hash(params),
        exp_name=os.environ.get("DVC_EXP_NAME") or None,
        launcher=dvc_launcher_id(),
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def peak_cuda_mb() -> float | None:
    """Peak CUDA memory allocated by torch in this process (MiB), if CUDA was used.

    torch is not imported here: a stage that never imported it used no CUDA,
    and initialising CUDA just to read a zero would cost seconds.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20


def _warn(what: str, error: BaseException) -> None:
    print(f"WARNING failmap.tracking: {what} failed ({type(error).__name__}: {error}); "
          "the stage goes on without MLflow tracking.", file=sys.stderr, flush=True)


def import_mlflow():
    """Import mlflow quietly: SQLAlchemy deprecation warnings and the alembic /
    table-creation INFO logs of a new sqlite store say nothing useful."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    warnings.filterwarnings("ignore", module=r"mlflow\.store\..*")
    try:
        from sqlalchemy.exc import SADeprecationWarning
        warnings.filterwarnings("ignore", category=SADeprecationWarning)
    except ImportError:
        pass
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow
    return mlflow


class StageRun:
    """The handle ``track_stage`` yields. Every method is a no-op when
    tracking is off or has failed; argument errors are raised either way so
    that tests run with ``FAILMAP_TRACKING=0`` still catch them."""

    def __init__(self, stage: str, client=None, run_id: str | None = None):
        self.stage = stage
        self._client = client
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return self._client is not None

    def _call(self, what: str, fn, *args, **kwargs) -> bool:
        if self._client is None:
            return False
        try:
            fn(*args, **kwargs)
            return True
        except Exception as error:  # tracking must never fail the stage
            _warn(what, error)
            self._client = None
            return False

    def log_metrics(self, values: Mapping, step: int | None = None,
                    prefix: str | None = None) -> dict[str, float]:
        """Log the finite numbers of a (nested) dict; returns what was logged.

        Keys are flattened with '/' under ``prefix`` (default: the stage
        name, so stages cannot overwrite each other's metrics; '' for none).
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"log_metrics: values must be a dict, got {type(values).__name__}")
        flat = metric_values(values, prefix=self.stage if prefix is None else prefix)
        if flat and self.active:
            from mlflow.entities import Metric
            now = int(time.time() * 1000)
            metrics = [Metric(key, value, now, step or 0) for key, value in flat.items()]
            self._call("logging metrics", self._client.log_batch, self.run_id, metrics=metrics)
        return flat

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        """Copy a file, or a folder (as ``<subdir>/<folder name>/...``), into the
        run's artifacts under ``subdir`` (default: the stage name)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"log_artifact: {path} does not exist")
        if not self.active:
            return
        subdir = self.stage if subdir is None else subdir
        if path.is_dir():
            target = f"{subdir}/{path.name}" if subdir else path.name
            self._call(f"logging artifact folder {path}", self._client.log_artifacts,
                       self.run_id, str(path), target)
        else:
            self._call(f"logging artifact {path}", self._client.log_artifact,
                       self.run_id, str(path), subdir or None)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        """Set free-form run tags (values converted to strings)."""
        if self.active:
            self._call("setting tags", _set_tags, self._client, self.run_id, tags)


def _set_tags(client, run_id: str, tags: Mapping[str, object]) -> None:
    from mlflow.entities import RunTag
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def _get_or_create_experiment(client, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    db = _sqlite_path(uri)
    location = (db.parent / "mlartifacts" / name).as_uri() if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another stage process created it in the meantime.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _find_run(client, experiment_id: str, identity: PipelineIdentity, join_window_s: float):
    """The run this stage joins, or None when a new one must be made."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PREFIX}group_key` = '{identity.group_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    if identity.launcher is not None:
        return run  # the key names this very DVC execution
    last_active = float(run.data.tags.get(f"{TAG_PREFIX}last_active", 0.0))
    return run if time.time() - last_active <= join_window_s else None


def _log_params(client, run, params: Mapping) -> None:
    """Log the params the run does not have yet; warn about changed values
    (MLflow refuses to change a logged param)."""
    from mlflow.entities import Param
    logged = run.data.params
    wanted = param_strings(params)
    changed = sorted(k for k, v in wanted.items() if k in logged and logged[k] != v)
    if changed:
        print(f"WARNING failmap.tracking: params {changed} differ from those already in "
              f"MLflow run {run.info.run_id}; keeping the logged values.", file=sys.stderr, flush=True)
    missing = [Param(k, v) for k, v in wanted.items() if k not in logged]
    if missing:
        client.log_batch(run.info.run_id, params=missing)


def _open_run(stage: str, params: Mapping, uri: str, experiment: str,
              root: str | Path | None, join_window_s: float) -> StageRun:
    import_mlflow()
    from mlflow import MlflowClient

    uri = resolve_uri(uri, root)
    client = MlflowClient(tracking_uri=uri)
    identity = pipeline_identity(params, root)
    experiment_id = _get_or_create_experiment(client, experiment, uri)
    run = _find_run(client, experiment_id, identity, join_window_s)
    if run is None:
        tags = {
            f"{TAG_PREFIX}group_key": identity.group_key,
            f"{TAG_PREFIX}git_commit": identity.git_commit,
            "mlflow.source.git.commit": identity.git_commit,
            f"{TAG_PREFIX}params_hash": identity.params_hash,
            f"{TAG_PREFIX}dvc_exp_name": identity.exp_name or "",
            f"{TAG_PREFIX}launcher": identity.launcher or "",
        }
        run = client.create_run(experiment_id, tags=tags, run_name=identity.run_name)
    else:
        client.update_run(run.info.run_id, status="RUNNING")
    _log_params(client, run, params)
    _set_tags(client, run.info.run_id, {
        f"{TAG_PREFIX}stage.{clean_key(stage)}": "running",
        f"{TAG_PREFIX}last_active": f"{time.time():.3f}",
    })
    return StageRun(stage, client, run.info.run_id)


def _close_run(handle: StageRun, wall_s: float, failed: bool) -> None:
    stage = clean_key(handle.stage)
    resources = {f"time/{stage}_s": wall_s, f"memory/{stage}_peak_mb": peak_rss_mb()}
    cuda = peak_cuda_mb()
    if cuda is not None:
        resources[f"memory/{stage}_cuda_peak_mb"] = cuda
    handle.log_metrics(resources, prefix="")
    handle.set_tags({f"{TAG_PREFIX}stage.{stage}": "failed" if failed else "finished",
                     f"{TAG_PREFIX}last_active": f"{time.time():.3f}"})
    if handle.active:
        handle._call("ending the run", handle._client.set_terminated, handle.run_id,
                     "FAILED" if failed else "FINISHED")


@contextmanager
def track_stage(stage: str, params: Mapping, uri: str, experiment: str, *,
                root: str | Path | None = None,
                join_window_s: float = DEFAULT_JOIN_WINDOW_S):
    """Run a stage inside the pipeline execution's MLflow run.

    ``params`` must be the whole params.yaml dict (its hash is part of the
    group key, and all of it is logged). ``uri``: tracking URI (relative
    sqlite paths resolve against ``root``, default ``DVC_ROOT`` or cwd).
    Yields a ``StageRun``; on exit logs wall time and peak memory and marks the
    stage finished, or failed if the body raised (the exception propagates).
    """
    if not isinstance(stage, str) or not stage:
        raise ValueError(f"track_stage: stage must be a non-empty name, got {stage!r}")
    if not isinstance(params, Mapping):
        raise TypeError(f"track_stage: params must be a dict, got {type(params).__name__}")
    handle = StageRun(stage)
    if tracking_enabled():
        try:
            handle = _open_run(stage, params, uri, experiment, root, join_window_s)
        except Exception as error:
            _warn(f"opening the MLflow run at {uri!r}", error)
    start = time.perf_counter()
    failed = True
    try:
        yield handle
        failed = False
    finally:
        if handle.active:
            _close_run(handle, time.perf_counter() - start, failed)
