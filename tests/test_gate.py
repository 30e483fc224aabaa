"""The regression gate passes on unchanged metrics, fails on a regression
beyond its slack or a vanished metric, reads the workspace and a revision
through DVC, and round-trips the committed snapshot."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from failmap import gate
from failmap.io import flatten

GATE_YAML = """
checks:
  - file: metrics/baseline.json
    key: test.accuracy
    direction: higher
    slack: {abs: 0.02}
  - file: metrics/baseline.json
    key: subpop_gap.test
    direction: lower
    slack: {abs: 5.0}
  - file: metrics/evaluate.json
    key: arms.none.hard_acc.mean
    direction: higher
    slack: {abs: 0.2}
  - file: metrics/evaluate.json
    key: arms.*.hard_acc.mean
    direction: higher
    slack: {rel: 0.1}
"""

METRICS = {
    "metrics/baseline.json": {"test": {"accuracy": 0.90, "loss": 0.3}, "subpop_gap": {"test": 30.0}},
    "metrics/evaluate.json": {"arms": {"none": {"hard_acc": {"mean": 0.40}},
                                       "direction": {"hard_acc": {"mean": 0.70}}}},
}
RESOURCES = {"metrics/resources/train.json": {"wall_s": 1.5, "peak_rss_mb": 300.0}}
CHECKS = gate.GateConfig.model_validate(yaml.safe_load(GATE_YAML)).checks


def flat(metrics: dict) -> dict:
    return {file: flatten(content) for file, content in metrics.items()}


def judged(edit) -> dict[str, str]:
    """{key: verdict} of the gate.yaml above: METRICS as the baseline, METRICS after ``edit`` as new."""
    new = json.loads(json.dumps(METRICS))
    edit(new)
    rows = gate.compare(CHECKS, flat(METRICS), flat(new))
    return {row.key: row.verdict for row in rows}


# --- the comparison -----------------------------------------------------------

def test_identical_metrics_pass():
    assert judged(lambda m: None) == {"test.accuracy": "OK", "subpop_gap.test": "OK",
                                      "arms.none.hard_acc.mean": "OK", "arms.direction.hard_acc.mean": "OK"}


def test_regression_beyond_slack_fails():
    def drop_accuracy(m):
        m["metrics/baseline.json"]["test"]["accuracy"] = 0.85  # -0.05, slack 0.02
    out = judged(drop_accuracy)
    assert out["test.accuracy"] == "REGRESSED" and out["subpop_gap.test"] == "OK"


def test_change_of_exactly_the_slack_passes():
    def small_changes(m):
        m["metrics/baseline.json"]["test"]["accuracy"] = 0.88       # exactly the 0.02 slack
        m["metrics/baseline.json"]["subpop_gap"]["test"] = 34.0     # +4 points, slack 5
    assert set(judged(small_changes).values()) == {"OK"}


def test_lower_is_better_direction():
    def widen_gap(m):
        m["metrics/baseline.json"]["subpop_gap"]["test"] = 36.0     # +6 points, slack 5
    assert judged(widen_gap)["subpop_gap.test"] == "REGRESSED"

    def shrink_gap(m):  # an improvement far beyond the slack is fine
        m["metrics/baseline.json"]["subpop_gap"]["test"] = 2.0
    assert judged(shrink_gap)["subpop_gap.test"] == "OK"


def test_missing_metric_and_missing_file_fail():
    def drop_gap(m):
        del m["metrics/baseline.json"]["subpop_gap"]
    assert judged(drop_gap)["subpop_gap.test"] == "MISSING"

    def drop_file(m):
        del m["metrics/evaluate.json"]
    out = judged(drop_file)
    assert out["arms.none.hard_acc.mean"] == out["arms.direction.hard_acc.mean"] == "MISSING"


def test_metric_new_since_baseline_is_reported_not_failed():
    def add_arm(m):
        m["metrics/evaluate.json"]["arms"]["caption"] = {"hard_acc": {"mean": 0.1}}
    out = judged(add_arm)
    assert out["arms.caption.hard_acc.mean"] == "NEW"
    assert not set(out.values()) & set(gate.FAILING)


def test_glob_checks_every_arm_and_first_entry_wins():
    def drop_arms(m):
        arms = m["metrics/evaluate.json"]["arms"]
        arms["none"]["hard_acc"]["mean"] = 0.25       # -0.15: within its own abs 0.2
        arms["direction"]["hard_acc"]["mean"] = 0.60  # -0.10: beyond the glob's rel 0.1 * 0.7
    out = judged(drop_arms)
    assert out["arms.none.hard_acc.mean"] == "OK" and out["arms.direction.hard_acc.mean"] == "REGRESSED"


def test_glob_matching_nothing_is_missing():
    check = gate.Check(file="metrics/evaluate.json", key="arms.*.hard_acc.mean", direction="higher",
                       slack={"abs": 0.1})
    rows = gate.compare([check], old={}, new={"metrics/evaluate.json": {"arms.x.test_acc": 1.0}})
    assert [(r.key, r.verdict) for r in rows] == [("arms.*.hard_acc.mean", "MISSING")]


def test_slack_is_the_looser_of_abs_and_rel():
    check = gate.Check(file="m.json", key="k", direction="higher", slack={"abs": 0.01, "rel": 0.1})
    old = {"m.json": {"k": 0.5}}   # allowed: max(0.01, 0.1 * 0.5) = 0.05
    assert gate.compare([check], old, {"m.json": {"k": 0.46}})[0].verdict == "OK"
    assert gate.compare([check], old, {"m.json": {"k": 0.44}})[0].verdict == "REGRESSED"
    small = {"m.json": {"k": 0.05}}  # allowed: max(0.01, 0.005) = 0.01
    assert gate.compare([check], small, {"m.json": {"k": 0.041}})[0].verdict == "OK"
    assert gate.compare([check], small, {"m.json": {"k": 0.039}})[0].verdict == "REGRESSED"


@pytest.mark.parametrize("value", ["0.9", None, float("nan"), True])
def test_non_numeric_new_value_fails(value):
    check = gate.Check(file="m.json", key="k", direction="higher", slack={"abs": 0.1})
    row = gate.compare([check], {"m.json": {"k": 0.9}}, {"m.json": {"k": value}})[0]
    assert row.verdict == ("MISSING" if value is None else "INVALID")
    assert row.verdict in gate.FAILING


def test_table_is_markdown_with_one_row_per_check():
    rows = gate.compare(CHECKS, flat(METRICS), flat(METRICS))
    lines = gate.format_table(rows).splitlines()
    assert lines[0].startswith("| file") and set(lines[1]) <= {"|", "-", " "}
    assert len(lines) == 2 + len(rows) and all(line.endswith("|") for line in lines)


# --- gate.yaml ------------------------------------------------------------------

@pytest.mark.parametrize("yaml_text, message", [
    ("checks: []", "checks: List should have at least 1 item"),
    ("metrics: []", "checks: Field required; metrics: Extra inputs are not permitted"),
    ("checks:\n  - {file: m.json, key: a, direction: higher, slack: {abs: 0}}\nsmoke: []",
     "smoke: List should have at least 1 item"),
    ("checks:\n  - {file: m.json, key: acc, direction: up, slack: {abs: 0.1}}",
     r"checks\.0\.direction: Input should be 'higher' or 'lower'"),
    ("checks:\n  - {file: m.json, key: acc, direction: higher}", r"checks\.0\.slack: Field required"),
    ("checks:\n  - {file: m.json, key: acc, direction: higher, slack: {abs: -1}}",
     r"checks\.0\.slack\.abs: Input should be greater than or equal to 0"),
    ("checks:\n  - {file: m.json, key: acc, direction: higher, slack: {abs: .nan}}",
     r"checks\.0\.slack\.abs: Input should be a finite number"),
    ("checks:\n  - {file: m.json, key: acc, direction: higher, slack: {abs: '0.1'}}",
     r"checks\.0\.slack\.abs: Input should be a valid number"),
    ("checks:\n  - {file: m.json, key: acc, direction: higher, slack: {absolute: 1}}",
     r"checks\.0\.slack\.absolute.*Input should be 'abs' or 'rel'"),
    ("checks:\n  - {file: m.json, key: acc, direction: higher, slack: {}}",
     r"checks\.0\.slack: Dictionary should have at least 1 item"),
    ("checks:\n  - {file: m.json, key: a, direction: higher, slack: {abs: 0}}\n"
     "  - {file: m.json, key: b, direction: higher, slack: {abs: 0}, tolerance: 1}",
     r"checks\.1\.tolerance: Extra inputs are not permitted"),
    ("checks:\n  - {file: 'metrics/*.json', key: a, direction: higher, slack: {abs: 0}}",
     r"checks\.0\.file: String should match pattern"),
    ("checks:\n  - {file: m.json, key: ' ', direction: higher, slack: {abs: 0}}",
     r"checks\.0\.key: String should match pattern"),
    ("checks:\n  - just a string", r"checks\.0: Input should be a valid dictionary"),
    ("checks: [", "not valid YAML"),
])
def test_malformed_config_names_entry_and_problem(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "gate.yaml"
    config.write_text(yaml_text)
    section = "smoke" if message.startswith("smoke") else "checks"
    with pytest.raises(gate.GateError, match=message) as error:
        gate.load_checks(config, section)
    assert str(error.value).startswith(str(config))
    snapshot = tmp_path / "b.json"
    snapshot.write_text("{}")
    assert gate.main(["--config", str(config), "--baseline", str(snapshot), "--section", section]) == 2
    assert "gate: error:" in capsys.readouterr().err


def test_shipped_gate_yaml_is_valid():
    for section in gate.GateConfig.model_fields:
        checks = gate.load_checks(Path(__file__).resolve().parents[1] / "gate.yaml", section)
        assert {(c.file, c.key) for c in checks} >= {("metrics/baseline.json", "test.accuracy"),
                                                      ("metrics/evaluate.json", "arms.*.hard_acc_gt.mean")}


def test_section_that_is_absent_is_named(tmp_path):
    config = tmp_path / "gate.yaml"
    config.write_text("checks:\n  - {file: m.json, key: a, direction: higher, slack: {abs: 0}}\n")
    with pytest.raises(gate.GateError, match="no section 'smoke'"):
        gate.load_checks(config, "smoke")


def test_bad_baseline_file_is_a_configuration_error(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    for path in (tmp_path / "list.json", tmp_path / "absent.json"):
        with pytest.raises(gate.GateError, match="not a baseline"):
            gate.load_baseline_file(path)


# --- through DVC ----------------------------------------------------------------

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def write_metrics(root: Path, metrics: dict) -> None:
    for file, content in metrics.items():
        path = root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git + DVC repository whose dvc.yaml declares the metrics above (and a resources file), as the cwd."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    for name, value in GIT_ENV.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "gate.yaml").write_text(GATE_YAML)
    write_metrics(tmp_path, {**METRICS, **RESOURCES})
    (tmp_path / "dvc.yaml").write_text("metrics:\n" + "".join(f"  - {f}\n" for f in [*METRICS, *RESOURCES]))
    monkeypatch.chdir(tmp_path)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, check=True, capture_output=True, env=os.environ)
    return tmp_path


def verdicts(capsys) -> dict[str, str]:
    """{key: verdict} from the printed Markdown table."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| metrics/")]
    return {cells[1]: cells[-1] for cells in rows}


def test_snapshot_through_dvc_round_trips_without_resources(repo, capsys):
    """--write-baseline snapshots what DVC reads (not the per-stage timings); the gate against it
    passes unchanged and fails once a metric regresses in the workspace."""
    assert gate.main(["--write-baseline", "snap/baseline.json"]) == 0
    assert json.loads(Path("snap/baseline.json").read_text()) == METRICS
    assert gate.load_baseline_file("snap/baseline.json") == flat(METRICS)
    assert gate.main(["--baseline", "snap/baseline.json"]) == 0
    assert set(verdicts(capsys).values()) == {"OK"}

    write_metrics(repo, {"metrics/baseline.json": {"test": {"accuracy": 0.80}, "subpop_gap": {"test": 30.0}}})
    (repo / "metrics/evaluate.json").unlink()
    assert gate.main(["--baseline", "snap/baseline.json"]) == 1
    out = verdicts(capsys)
    assert out["test.accuracy"] == "REGRESSED" and out["arms.none.hard_acc.mean"] == "MISSING"


def test_unreadable_workspace_metrics_file_is_an_error(repo, capsys):
    (repo / "metrics/evaluate.json").write_text("{not json")
    with pytest.raises(gate.GateError, match="metrics/evaluate.json: DVC cannot read"):
        gate.workspace_metrics()
    assert gate.main(["--write-baseline", "x.json"]) == 2


def test_rev_baseline_through_dvc(repo, capsys):
    """End to end: commit the metrics, regress the workspace, gate --rev HEAD."""
    subprocess.run(["git", "add", "-A"], check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "metrics"], check=True, capture_output=True)
    assert gate.revision_metrics("HEAD") == flat({**METRICS, **RESOURCES})
    write_metrics(repo, {"metrics/baseline.json": {"test": {"accuracy": 0.80}, "subpop_gap": {"test": 30.0}}})
    assert gate.main(["--rev", "HEAD"]) == 1
    assert verdicts(capsys)["test.accuracy"] == "REGRESSED"
    assert gate.main(["--rev", "no-such-rev"]) == 2
    assert "unknown Git revision" in capsys.readouterr().err
