"""Stage track, the last: log this pipeline execution to MLflow as one run
(failmap.tracking). What it logs is what its deps in dvc.yaml name, the one
list of it: every JSON file or metrics folder as metrics (each stage's wall
time and peak memory included), every other data dep (plot folders, the
failure report) as artifacts, and all of params.yaml as params. Code deps
(``.py``) are there only so that DVC re-runs this stage when they change."""
from pathlib import Path

import yaml

from failmap.params import as_dict
from failmap.stage import METRICS, stage_params
from failmap.tracking import log_pipeline, read_metrics

STAGE = "track"


def logged_deps(dvc_yaml: str = "dvc.yaml") -> tuple[list[str], list[str]]:
    """(metrics files and folders, artifacts) among this stage's deps in ``dvc_yaml``."""
    deps = [d for d in yaml.safe_load(Path(dvc_yaml).read_text())["stages"][STAGE]["deps"] if not d.endswith(".py")]
    is_metrics = [d.endswith(".json") or Path(d).parts[0] == METRICS for d in deps]
    return [d for d, m in zip(deps, is_metrics) if m], [d for d, m in zip(deps, is_metrics) if not m]


def main():
    p = stage_params(STAGE)
    metrics_paths, artifacts = logged_deps()
    metrics = read_metrics(metrics_paths, METRICS)
    trusted = metrics.get("evaluate", {}).get("synthetic_trusted")  # the generator check, one tag to filter runs by
    log_pipeline(as_dict(p), metrics, artifacts, p.tracking.uri, p.tracking.experiment,
                 tags={} if trusted is None else {"failmap.synthetic_trusted": trusted})


if __name__ == "__main__":
    main()
