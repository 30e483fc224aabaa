"""One MLflow run per pipeline execution, logged from one place.

The pipeline's last stage, ``track`` (stages/track.py), depends on every
metrics file, plot folder and the failure report, so DVC runs it once after
any stage ran, and not at all when nothing changed. It opens one MLflow run
and logs what the stages left on disk (no process is inspected):

- params: all of the validated params.yaml, flattened with '.' (``baseline.lr``);
- metrics: every finite number of every metrics JSON, flattened with '/' under
  the file's path in ``metrics/`` (``baseline/test/accuracy``), each stage's
  wall time and peak memory included (``resources/embed/wall_s``, written by
  ``failmap.stage.run_stage``);
- tags: the bools and strings of those files, the DVC experiment name
  (``DVC_EXP_NAME``, also the run name), the git revision
  (``DVC_EXP_BASELINE_REV`` during ``dvc exp run``, as HEAD of a ``--temp``
  clone is not the user's commit; else ``git rev-parse HEAD``), the params hash;
- artifacts: the plot folders and the report, under their repository paths.

Tracking never loses computed work: any MLflow failure (locked sqlite file,
bad URI, ...) prints a warning on stderr and the stage still succeeds.
``FAILMAP_TRACKING=0`` turns tracking off (mlflow is not even imported).
A relative sqlite path (``sqlite:///mlflow.db``) is resolved against
``DVC_ROOT`` when set: ``dvc exp run --temp`` runs stages in a temporary
clone, whose database would otherwise be thrown away with it. Artifacts go to
``mlartifacts/<experiment>`` beside the database for the same reason.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from failmap.io import flatten

# MLflow reads this when it is imported; set before any import of mlflow.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

TRACKING_ENV = "FAILMAP_TRACKING"
TAG_PREFIX = "failmap."
SQLITE = "sqlite:///"
# MLflow limits (mlflow.utils.validation), copied so that flattening needs no slow mlflow import.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
_INVALID_KEY_CHARS = re.compile(r"[^\w./\- ]")


def tracking_enabled() -> bool:
    """False when ``FAILMAP_TRACKING`` is 0/false/no/off."""
    return os.environ.get(TRACKING_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def clean_key(key: str) -> str:
    """A key MLflow accepts: characters other than word characters, '.', '/', '-'
    and space become '_' (a DVC foreach stage is named ``stage@item``)."""
    return _INVALID_KEY_CHARS.sub("_", key)[:MAX_KEY_LENGTH]


def metric_values(values: Mapping, prefix: str = "") -> dict[str, float]:
    """Flatten ``values`` with '/' and keep finite real numbers only (strings, lists,
    None, NaN, infinities and bools, which MLflow rejects as metrics, are skipped)."""
    return {clean_key(k): float(v) for k, v in flatten(values, sep="/", prefix=prefix).items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)}


def tag_values(values: Mapping, prefix: str = "") -> dict[str, str]:
    """The bools and strings of ``values``, flattened with '/', as tag strings."""
    return {clean_key(k): str(v)[:MAX_TAG_VALUE_LENGTH] for k, v in flatten(values, sep="/", prefix=prefix).items()
            if isinstance(v, (bool, str))}


def param_strings(params: Mapping) -> dict[str, str]:
    """Flatten ``params`` with '.' into MLflow param strings: strings as they are,
    the rest as JSON (``None`` -> ``null``); too long values are cut, ending '...'."""
    texts = {clean_key(k): v if isinstance(v, str) else json.dumps(v, default=str)
             for k, v in flatten(params, sep=".").items()}
    cut = MAX_PARAM_VALUE_LENGTH - len("...")
    return {k: v if len(v) <= MAX_PARAM_VALUE_LENGTH else v[:cut] + "..." for k, v in texts.items()}


def params_hash(params: Mapping) -> str:
    """A short, order-independent hash of a params dict."""
    canonical = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def resolve_uri(uri: str, root: str | Path | None = None) -> str:
    """Make a relative sqlite path absolute against ``root`` (default: ``DVC_ROOT`` or cwd)."""
    path = uri[len(SQLITE):]
    if not uri.startswith(SQLITE) or path.startswith("/") or path == ":memory:":
        return uri
    base = Path(root if root is not None else os.environ.get("DVC_ROOT") or os.getcwd())
    return SQLITE + str((base / path).resolve())


def git_revision(root: str | Path) -> str:
    """The commit the pipeline ran on: DVC's experiment baseline, else HEAD, else 'none'."""
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else "none"
    except OSError:  # no git
        return "none"


def read_metrics(paths: Sequence[str | Path], metrics_dir: str | Path) -> dict[str, dict]:
    """{name: content} of each JSON file given or under a folder given; the name is the
    path without '.json', inside ``metrics_dir`` if there (``resources/embed``)."""
    files = sorted({f for p in map(Path, paths) for f in (sorted(p.rglob("*.json")) if p.is_dir() else [p])})
    found = {}
    for file in files:
        try:
            content = json.loads(file.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{file}: not a readable JSON metrics file ({error})") from error
        if not isinstance(content, dict):
            raise ValueError(f"{file}: a metrics file must hold a JSON object, got {type(content).__name__}")
        inside = file.is_relative_to(metrics_dir)
        found[(file.relative_to(metrics_dir) if inside else file).with_suffix("").as_posix()] = content
    return found


def import_mlflow():
    """Import mlflow quietly: SQLAlchemy deprecation warnings and the alembic /
    table-creation INFO logs of a new sqlite store say nothing useful."""
    warnings.filterwarnings("ignore", module=r"mlflow\.store\..*")
    warnings.filterwarnings("ignore", message=r".*[Dd]eprecat.*", module=r"sqlalchemy.*")
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow
    return mlflow


def open_run(uri: str, experiment: str, run_name: str, root: str | Path | None = None):
    """(client, run id) of a new run in ``experiment`` (made, artifacts beside a sqlite store, if new)."""
    import_mlflow()
    from mlflow import MlflowClient, MlflowException
    uri = resolve_uri(uri, root)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        db = uri[len(SQLITE):] if uri.startswith(SQLITE) else None
        location = (Path(db).parent / "mlartifacts" / experiment).as_uri() if db else None
        try:
            client.create_experiment(experiment, artifact_location=location)
        except MlflowException:  # another process made it in the meantime
            pass
        found = client.get_experiment_by_name(experiment)
    return client, client.create_run(found.experiment_id, run_name=run_name).info.run_id


def log_pipeline(params: Mapping, metrics: Mapping[str, Mapping], artifacts: Sequence[str | Path],
                 uri: str, experiment: str, tags: Mapping[str, object] | None = None,
                 root: str | Path | None = None) -> str | None:
    """Log one pipeline execution as one run: ``metrics`` as ``read_metrics`` gives them,
    ``artifacts`` (files, folders) under their relative paths, ``tags`` beside the
    module's. Returns the run id, or None when tracking is off or MLflow failed (warned)."""
    if not tracking_enabled():
        print(f"tracking: {TRACKING_ENV}=0, nothing logged to MLflow", flush=True)
        return None
    root = root if root is not None else os.environ.get("DVC_ROOT") or os.getcwd()
    revision, digest = git_revision(root), params_hash(params)
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    tags = {**{k: str(v) for k, v in (tags or {}).items()}, f"{TAG_PREFIX}git_commit": revision,
            "mlflow.source.git.commit": revision, f"{TAG_PREFIX}params_hash": digest,
            f"{TAG_PREFIX}dvc_exp_name": exp_name}
    flat = {}
    for name, values in metrics.items():
        tags.update(tag_values(values, prefix=name))
        flat.update(metric_values(values, prefix=name))
    run_id = None
    try:
        client, run_id = open_run(uri, experiment, exp_name or f"{revision[:7]}-{digest[:7]}", root)
        from mlflow.entities import Metric, Param, RunTag
        now = int(time.time() * 1000)  # log_batch sends them in chunks of MLflow's batch limits
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in flat.items()],
                         params=[Param(k, v) for k, v in param_strings(params).items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        for path in map(Path, artifacts):
            into = path.as_posix() if path.is_dir() else (path.parent.as_posix() if path.parent.parts else None)
            (client.log_artifacts if path.is_dir() else client.log_artifact)(run_id, str(path), into)
        client.set_terminated(run_id, "FINISHED")
        print(f"tracking: MLflow run {run_id} in {experiment!r}: {len(flat)} metrics, {len(artifacts)} artifacts")
        return run_id
    except Exception as error:  # tracking must never fail the pipeline
        print(f"WARNING failmap.tracking: logging to MLflow at {uri!r} failed ({type(error).__name__}: "
              f"{error}); the pipeline's outputs are kept, this execution is not tracked"
              + (f" (run {run_id} left incomplete)" if run_id else ""), file=sys.stderr, flush=True)
        return None
