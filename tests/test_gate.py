"""The regression gate passes on unchanged metrics, fails on a regression
beyond its slack or a vanished metric, and reads both kinds of baseline."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from failmap import gate

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

# Real output of `dvc metrics diff --json --all HEAD` (DVC 3.67.1) in a scratch
# repo: test.accuracy changed, subpop_gap.test unchanged, test.loss added in the
# workspace, metrics/svm.json deleted from the workspace.
DVC_DIFF_SAMPLE = (
    '{"metrics/baseline.json": {"test.accuracy": {"old": 0.912, "new": 0.897, '
    '"diff": -0.015000000000000013}, "subpop_gap.test": {"old": 31.5, "new": 31.5, '
    '"diff": 0.0}, "test.loss": {"old": null, "new": 0.31}}, '
    '"metrics/svm.json": {"mean.auroc": {"old": 0.84, "new": null}}}'
)


def write_metrics(root: Path, metrics: dict) -> None:
    for file, content in metrics.items():
        path = root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A repository root holding gate.yaml and the metrics above, as the cwd."""
    (tmp_path / "gate.yaml").write_text(GATE_YAML)
    write_metrics(tmp_path, METRICS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot_then_edit(workspace: Path, edit) -> int:
    """Snapshot the current metrics as the baseline, apply ``edit`` to the workspace
    metrics, run the gate against the snapshot; return its exit status."""
    assert gate.main(["--write-baseline", "baseline.json"]) == 0
    metrics = json.loads(json.dumps(METRICS))
    edit(metrics)
    for file in METRICS:
        (workspace / file).unlink()
    write_metrics(workspace, metrics)
    return gate.main(["--baseline", "baseline.json"])


def verdicts(capsys) -> dict[str, str]:
    """{key: verdict} from the printed table."""
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("metrics/")]
    return {cells[1]: cells[-1] for cells in rows}


def test_identical_metrics_pass(workspace, capsys):
    assert snapshot_then_edit(workspace, lambda m: None) == 0
    assert verdicts(capsys) == {"test.accuracy": "OK", "subpop_gap.test": "OK",
                                "arms.none.hard_acc.mean": "OK",
                                "arms.direction.hard_acc.mean": "OK"}


def test_regression_beyond_slack_fails(workspace, capsys):
    def drop_accuracy(m):
        m["metrics/baseline.json"]["test"]["accuracy"] = 0.85  # -0.05, slack 0.02
    assert snapshot_then_edit(workspace, drop_accuracy) == 1
    out = verdicts(capsys)
    assert out["test.accuracy"] == "REGRESSED"
    assert out["subpop_gap.test"] == "OK"


def test_change_within_slack_passes(workspace, capsys):
    def small_changes(m):
        m["metrics/baseline.json"]["test"]["accuracy"] = 0.88       # exactly the 0.02 slack
        m["metrics/baseline.json"]["subpop_gap"]["test"] = 34.0     # +4 points, slack 5
    assert snapshot_then_edit(workspace, small_changes) == 0
    assert set(verdicts(capsys).values()) == {"OK"}


def test_lower_is_better_direction(workspace, capsys):
    def widen_gap(m):
        m["metrics/baseline.json"]["subpop_gap"]["test"] = 36.0     # +6 points, slack 5
    assert snapshot_then_edit(workspace, widen_gap) == 1
    assert verdicts(capsys)["subpop_gap.test"] == "REGRESSED"

    def shrink_gap(m):  # an improvement far beyond the slack is fine
        m["metrics/baseline.json"]["subpop_gap"]["test"] = 2.0
    assert snapshot_then_edit(workspace, shrink_gap) == 0


def test_missing_metric_fails(workspace, capsys):
    def drop_gap(m):
        del m["metrics/baseline.json"]["subpop_gap"]
    assert snapshot_then_edit(workspace, drop_gap) == 1
    assert verdicts(capsys)["subpop_gap.test"] == "MISSING"


def test_missing_metrics_file_fails(workspace, capsys):
    assert gate.main(["--write-baseline", "baseline.json"]) == 0
    (workspace / "metrics/evaluate.json").unlink()
    assert gate.main(["--baseline", "baseline.json"]) == 1
    out = verdicts(capsys)
    assert out["arms.none.hard_acc.mean"] == "MISSING"
    assert out["arms.direction.hard_acc.mean"] == "MISSING"


def test_metric_new_since_baseline_is_reported_not_failed(workspace, capsys):
    def add_arm(m):
        m["metrics/evaluate.json"]["arms"]["caption"] = {"hard_acc": {"mean": 0.1}}
    assert snapshot_then_edit(workspace, add_arm) == 0
    assert verdicts(capsys)["arms.caption.hard_acc.mean"] == "NEW"


def test_glob_checks_every_arm_and_first_entry_wins(workspace, capsys):
    def drop_arms(m):
        arms = m["metrics/evaluate.json"]["arms"]
        arms["none"]["hard_acc"]["mean"] = 0.25       # -0.15: within its own abs 0.2
        arms["direction"]["hard_acc"]["mean"] = 0.60  # -0.10: beyond the glob's rel 0.1 * 0.7
    assert snapshot_then_edit(workspace, drop_arms) == 1
    out = verdicts(capsys)
    assert out["arms.none.hard_acc.mean"] == "OK"
    assert out["arms.direction.hard_acc.mean"] == "REGRESSED"


def test_glob_matching_nothing_is_missing():
    check = gate.Check("metrics/evaluate.json", "arms.*.hard_acc.mean", "higher", abs_slack=0.1)
    rows = gate.compare([check], old={}, new={"metrics/evaluate.json": {"arms.x.test_acc": 1.0}})
    assert [(r.key, r.verdict) for r in rows] == [("arms.*.hard_acc.mean", "MISSING")]


def test_slack_is_the_looser_of_abs_and_rel():
    check = gate.Check("m.json", "k", "higher", abs_slack=0.01, rel_slack=0.1)
    assert check.allowed(0.5) == pytest.approx(0.05)
    assert check.allowed(0.05) == pytest.approx(0.01)
    old = {"m.json": {"k": 0.5}}
    assert gate.compare([check], old, {"m.json": {"k": 0.46}})[0].verdict == "OK"
    assert gate.compare([check], old, {"m.json": {"k": 0.44}})[0].verdict == "REGRESSED"


@pytest.mark.parametrize("value", ["0.9", None, float("nan"), True])
def test_non_numeric_new_value_fails(value):
    check = gate.Check("m.json", "k", "higher", abs_slack=0.1)
    row = gate.compare([check], {"m.json": {"k": 0.9}}, {"m.json": {"k": value}})[0]
    assert row.verdict == ("MISSING" if value is None else "INVALID")
    assert row.verdict in gate.FAILING


def test_snapshot_round_trip(workspace):
    snapshot = gate.write_baseline("snap/baseline.json", "metrics")
    assert snapshot == METRICS
    assert json.loads(Path("snap/baseline.json").read_text()) == METRICS
    assert gate.load_baseline_file("snap/baseline.json") == {
        file: gate.flatten(content) for file, content in METRICS.items()}
    assert gate.load_baseline_file("snap/baseline.json")["metrics/baseline.json"] == {
        "test.accuracy": 0.90, "test.loss": 0.3, "subpop_gap.test": 30.0}


def test_parse_real_dvc_metrics_diff_output():
    diff = json.loads(DVC_DIFF_SAMPLE)
    assert gate.parse_dvc_metrics_diff(diff, "old") == {
        "metrics/baseline.json": {"test.accuracy": 0.912, "subpop_gap.test": 31.5},
        "metrics/svm.json": {"mean.auroc": 0.84}}
    assert gate.parse_dvc_metrics_diff(diff, "new") == {
        "metrics/baseline.json": {"test.accuracy": 0.897, "subpop_gap.test": 31.5,
                                  "test.loss": 0.31}}


def test_parse_dvc_metrics_diff_rejects_other_shapes():
    with pytest.raises(gate.GateError, match="metrics/a.json: acc"):
        gate.parse_dvc_metrics_diff({"metrics/a.json": {"acc": 0.9}})


@pytest.mark.parametrize("yaml_text, message", [
    ("checks: []", "non-empty list"),
    ("metrics: []", "top-level key 'checks'"),
    ("checks:\n  - {file: m.json, key: a, direction: higher, slack: {abs: 0}}\nsmoke: []",
     "'smoke' must be a non-empty list"),
    ("checks:\n  - file: m.json\n    key: acc\n    direction: up\n    slack: {abs: 0.1}",
     r"checks\[0\] \(m.json: acc\): 'direction' must be one of"),
    ("checks:\n  - file: m.json\n    key: acc\n    direction: higher",
     r"checks\[0\] \(m.json: acc\): missing field\(s\) \['slack'\]"),
    ("checks:\n  - file: m.json\n    key: acc\n    direction: higher\n    slack: {abs: -1}",
     r"checks\[0\] \(m.json: acc\): slack 'abs' must be a finite number >= 0"),
    ("checks:\n  - file: m.json\n    key: acc\n    direction: higher\n    slack: {absolute: 1}",
     r"checks\[0\] \(m.json: acc\): 'slack' must be a mapping with 'abs' and/or 'rel'"),
    ("checks:\n  - {file: m.json, key: a, direction: higher, slack: {abs: 0}}\n"
     "  - {file: m.json, key: b, direction: higher, slack: {abs: 0}, tolerance: 1}",
     r"checks\[1\] \(m.json: b\): unknown field\(s\) \['tolerance'\]"),
    ("checks:\n  - {file: 'metrics/*.json', key: a, direction: higher, slack: {abs: 0}}",
     "'file' must be a plain path"),
    ("checks:\n  - just a string", r"checks\[0\]: expected a mapping"),
    ("checks: [", "not valid YAML"),
])
def test_malformed_config_names_entry_and_problem(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "gate.yaml"
    config.write_text(yaml_text)
    with pytest.raises(gate.GateError, match=message):
        gate.load_checks(config, "smoke" if "'smoke'" in message else "checks")
    snapshot = tmp_path / "b.json"
    snapshot.write_text("{}")
    section = ["--section", "smoke"] if "'smoke'" in message else []
    assert gate.main(["--config", str(config), "--baseline", str(snapshot), *section]) == 2
    assert "gate: error:" in capsys.readouterr().err


def test_shipped_gate_yaml_is_valid():
    for section in gate.SECTIONS:
        checks = gate.load_checks(Path(__file__).resolve().parents[1] / "gate.yaml", section)
        assert {(c.file, c.key) for c in checks} >= {("metrics/baseline.json", "test.accuracy"),
                                                      ("metrics/evaluate.json", "arms.*.hard_acc_gt.mean")}


def test_section_that_is_absent_is_named(tmp_path):
    config = tmp_path / "gate.yaml"
    config.write_text("checks:\n  - {file: m.json, key: a, direction: higher, slack: {abs: 0}}\n")
    with pytest.raises(gate.GateError, match="no section 'smoke'"):
        gate.load_checks(config, "smoke")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_rev_baseline_through_dvc(workspace, capsys, monkeypatch):
    """End to end: commit metrics in a git+DVC repo, regress the workspace, gate --rev HEAD."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def run(*cmd):
        subprocess.run(cmd, check=True, capture_output=True, env=env)

    (workspace / "dvc.yaml").write_text("metrics:\n  - metrics/baseline.json\n  - metrics/evaluate.json\n")
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "metrics")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")

    write_metrics(workspace, {"metrics/baseline.json": {"test": {"accuracy": 0.80},
                                                         "subpop_gap": {"test": 30.0}}})
    assert gate.main(["--rev", "HEAD"]) == 1
    assert verdicts(capsys)["test.accuracy"] == "REGRESSED"
    assert gate.main(["--rev", "no-such-rev"]) == 2
    assert "unknown Git revision" in capsys.readouterr().err
