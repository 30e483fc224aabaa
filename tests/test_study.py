"""The multi-seed study's reading and aggregation: known inputs give a known table."""
import json
import math

from pathlib import Path

import numpy as np
import pytest

from failmap.study import FIGURES, aggregate, experiments, interval, metrics_of, seed_of, table_markdown


def entry(name, seed, gap, ap_svm, none_sub, direction_sub, hard=0.2, neutral=0.5, easy=0.7, skipped=None):
    """One experiment as `dvc exp show --json` writes it (DVC 3)."""
    metrics = {
        "metrics/baseline.json": {"test": {"accuracy": 0.9, "subpop": {
            "mean_gap": gap, "per_class": {"a": {"gap": gap - 0.05}, "b": {"gap": gap + 0.05}}}}},
        "metrics/svm.json": {"mean": {"svm": {"subpop_ap": ap_svm}, "confidence": {"subpop_ap": 0.6},
                                      "random": {"subpop_ap": 0.2}}, **({"skipped": skipped} if skipped else {})},
        "metrics/captions.json": {"planted_in_top3_hard": {"fraction": 1.0}},
        "metrics/modes.json": {"mean": {"best_subpop_ap": ap_svm + 0.1, "mode_0": {"subpop_ap": ap_svm + 0.05}}},
        "metrics/evaluate.json": {"arms": {"none": {"hard_acc_gt": {"mean": none_sub}, "test_acc": {"mean": 0.9}},
                                           "direction": {"hard_acc_gt": {"mean": direction_sub},
                                                         "test_acc": {"mean": 0.91}}}},
        "metrics/generated.json": {"eval": {"neutral": {"accuracy": neutral}, "alphas": {
            "alpha_0.5": {"hard": {"accuracy": 0.4}, "easy": {"accuracy": 0.6}},
            "alpha_1": {"hard": {"accuracy": hard}, "easy": {"accuracy": easy}}}}},
    }
    return {"rev": f"{seed:040d}", "name": name, "data": {
        "params": {"params.yaml": {"data": {"seed": seed, "world": {"n_train": 10}}}},
        "metrics": {f: {"data": d} for f, d in metrics.items()}}}


SHOW = [
    {"rev": "workspace", "name": None, "data": {"metrics": {}, "params": {}}, "experiments": None},
    {"rev": "abc", "name": "main", "data": {"metrics": {}, "params": {}}, "experiments": [
        {"name": "s-seed0", "revs": [entry("s-seed0", 0, 0.20, 0.80, 0.60, 0.70)]},
        {"name": "s-seed1", "revs": [entry("s-seed1", 1, 0.30, 0.90, 0.50, 0.70, skipped={"a": "few"})]},
        {"name": "s-seed2", "revs": [entry("s-seed2", 2, 0.25, 0.85, 0.55, 0.64)]},
        {"name": "other-seed0", "revs": [entry("other-seed0", 0, 0.9, 0.1, 0.1, 0.1)]},
        # still running: DVC shows it with its parent's metrics
        {"name": "s-seed3", "executor": {"state": "running"}, "revs": [entry("s-seed3", 3, 0.9, 0.9, 0.9, 0.9)]},
        {"name": "s-seed4", "executor": {"state": "success"}, "revs": [entry("s-seed4", 4, 0.25, 0.85, 0.55, 0.64)]},
    ]},
]


def test_experiments_are_found_by_name_prefix_with_their_metrics_and_seed():
    found = experiments(json.loads(json.dumps(SHOW)), "s-seed")
    assert sorted(found) == ["s-seed0", "s-seed1", "s-seed2", "s-seed4"]
    assert seed_of(found["s-seed1"]) == 1
    assert metrics_of(found["s-seed2"])["metrics/baseline.json"]["test"]["subpop"]["mean_gap"] == 0.25


def test_interval_is_the_student_t_interval_of_the_mean():
    r = interval([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["std"] == pytest.approx(1.0) and r["n"] == 3
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2)
    assert r["low"] == pytest.approx(2.0 - half) and r["high"] == pytest.approx(2.0 + half)
    assert interval([5.0]) == dict(mean=5.0, std=None, low=None, high=None, n=1)
    assert interval([])["mean"] is None


def test_aggregate_gives_the_known_table():
    runs = {name: metrics_of(e) for name, e in experiments(SHOW, "s-seed").items() if name != "s-seed4"}
    table = aggregate(runs)
    assert list(table) == [f.name for f in FIGURES]
    gap = table["planted gap, mean over classes"]
    assert gap["mean"] == pytest.approx(0.25) and gap["std"] == pytest.approx(0.05) and gap["n"] == 3
    assert table["planted gap, smallest class"]["mean"] == pytest.approx(0.20)
    assert table["classes skipped (too few val errors)"]["values"] == {"s-seed0": 0.0, "s-seed1": 1.0, "s-seed2": 0.0}
    assert table["planted subpopulation AP: SVM"]["mean"] == pytest.approx(0.85)
    assert table["planted subpopulation AP: best failure mode"]["mean"] == pytest.approx(0.95)
    assert table["planted subpopulation AP: largest failure mode"]["mean"] == pytest.approx(0.90)
    assert table["direction: planted subpopulation accuracy"]["mean"] == pytest.approx(0.68)
    # the largest alpha of the evaluation set, not the first one listed
    assert table["decoded eval images, baseline accuracy: hard"]["mean"] == pytest.approx(0.2)
    # an arm no run trained has no values, not zeros
    assert table["generic: test accuracy"]["n"] == 0 and table["generic: test accuracy"]["mean"] is None
    text = table_markdown(table)
    assert "| planted gap, mean over classes | 0.250 | 0.050 |" in text


def test_aggregate_leaves_a_missing_file_out_of_n():
    runs = {name: metrics_of(e) for name, e in experiments(SHOW, "s-seed").items() if name != "s-seed4"}
    del runs["s-seed2"]["metrics/evaluate.json"]
    table = aggregate(runs)
    assert table["none: planted subpopulation accuracy"]["n"] == 2
    assert table["planted gap, mean over classes"]["n"] == 3
    np.testing.assert_allclose(table["none: planted subpopulation accuracy"]["mean"], 0.55)


def test_queue_states_read_the_last_column_whatever_the_date_holds():
    from failmap.study import queue_states
    text = """Task     Name           Created    Status
722ad61  s-seed1  01:24 PM   Running
c671a3f  s-seed2  Dec 01, 2026   Queued
4c1376c  s-seed0  01:24 PM   Success
9999999  other    01:24 PM   Failed

Worker status: 1 active, 0 idle"""
    assert queue_states(text, ["s-seed0", "s-seed1", "s-seed2"]) == {
        "s-seed1": "Running", "s-seed2": "Queued", "s-seed0": "Success"}


def test_a_queue_whose_worker_never_starts_is_reported_after_its_restarts(monkeypatch):
    from failmap import study
    status = "Task     Name     Created    Status\n722ad61  s-seed0  01:24 PM   Queued\n\nWorker status: 0 active, 0 idle"
    assert study.no_worker(status) and not study.no_worker(status.replace("0 active", "1 active"))
    calls = []
    monkeypatch.setattr(study, "run_dvc", lambda *a, **k: calls.append(a) or type("P", (), {"stdout": status})())
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(study.time, "time", lambda: next(clock))
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    with pytest.raises(RuntimeError, match=r"no DVC queue worker runs, \['s-seed0'\] still queued, after 3 restarts"):
        study.queue_and_run("s", [0], poll_seconds=1)
    assert sum(c[:2] == ("queue", "start") for c in calls) == 1 + study.WORKER_RESTARTS


def test_a_worker_that_died_between_experiments_is_started_again(monkeypatch):
    """Seed 0 done, seed 1 queued, no worker (DVC's worker died reading its broker): the queue is started again
    and the study goes on."""
    from failmap import study
    head = "Task     Name     Created    Status\n4c1376c  s-seed0  01:24 PM   Success\n"
    stuck = head + "722ad61  s-seed1  01:24 PM   Queued\n\nWorker status: 0 active, 0 idle"
    done = head + "722ad61  s-seed1  01:24 PM   Success\n\nWorker status: 0 active, 0 idle"
    calls, state = [], {"status": stuck}

    def fake_dvc(*args, **kwargs):
        calls.append(args)
        if args[:2] == ("queue", "start") and sum(c[:2] == ("queue", "start") for c in calls) == 2:
            state["status"] = done  # the restarted worker runs seed 1
        return type("P", (), {"stdout": state["status"]})()
    monkeypatch.setattr(study, "run_dvc", fake_dvc)
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(study.time, "time", lambda: next(clock))
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    assert study.queue_and_run("s", [0, 1], poll_seconds=1) == []
    assert sum(c[:2] == ("queue", "start") for c in calls) == 2


def test_the_last_experiment_finishing_after_its_worker_exits_is_waited_on(monkeypatch):
    """DVC's status shows no worker while the last experiment still runs (21 min measured): keep waiting."""
    from failmap import study
    running = "Task     Name     Created    Status\n722ad61  s-seed0  01:24 PM   Running\n\nWorker status: 0 active, 0 idle"
    # 3 calls queue the experiment, then 100 polls (25 min) find it Running with no worker
    statuses = iter([running] * (3 + 100) + [running.replace("Running", "Success")])
    monkeypatch.setattr(study, "run_dvc", lambda *a, **k: type("P", (), {"stdout": next(statuses, "")})())
    clock = iter(range(0, 10_000, 15))
    monkeypatch.setattr(study.time, "time", lambda: next(clock))
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    assert study.queue_and_run("s", [0], poll_seconds=15) == []


def test_workers_share_the_cores_unless_the_caller_pinned_threads(monkeypatch):
    from failmap import study
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert study.worker_env(2, 2) == {"OMP_NUM_THREADS": "1"}
    assert study.worker_env(2, 16) == {"OMP_NUM_THREADS": "8"}
    assert study.worker_env(4, 2) == {"OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert study.worker_env(2, 2) == {}


def test_the_queue_workers_share_the_cores_one_worker_by_default(monkeypatch):
    from failmap import study
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(study, "available_cores", lambda: 2)
    done = "Task     Name     Created    Status\n1  s-seed0  01:24 PM   Success\n2  s-seed1  01:24 PM   Success\n"
    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return type("P", (), {"stdout": done})()
    monkeypatch.setattr(study, "run_dvc", fake)
    assert study.queue_and_run("s", [0, 1], poll_seconds=0) == []
    start = [(a, k) for a, k in calls if a[:2] == ("queue", "start")]
    assert start == [(("queue", "start", "-j", "1"), {"env": {"OMP_NUM_THREADS": "2"}})]  # one worker, every core
    calls.clear()
    study.queue_and_run("s", [0, 1], jobs=2, poll_seconds=0)
    start = [(a, k) for a, k in calls if a[:2] == ("queue", "start")]
    assert start == [(("queue", "start", "-j", "2"), {"env": {"OMP_NUM_THREADS": "1"}})]
    queued = [a for a, _ in calls if a[:2] == ("exp", "run")]
    assert len(queued) == 2 and not any("--force" in a for a in queued)
    calls.clear()
    study.queue_and_run("s", [0, 1], poll_seconds=0, force=True)  # a cold study: no stage from the run-cache
    assert all("--force" in a for a, _ in calls if a[:2] == ("exp", "run"))


def test_a_written_study_is_logged_to_mlflow_with_its_table_and_plot(tmp_path, monkeypatch):
    from failmap import study, tracking
    monkeypatch.setenv(tracking.TRACKING_ENV, "1")
    monkeypatch.chdir(tmp_path)
    runs = {name: metrics_of(e) for name, e in experiments(SHOW, "s-seed").items()}
    table = aggregate(runs)
    path = study.write_study("s", table, runs, [], ["seed=0"])
    assert path == Path(study.STUDY_METRICS) / "s.json" and json.loads(path.read_text())["runs"] == sorted(runs)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study.log_study("s", table, path, uri, "failmap-test")
    tracking.import_mlflow()
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("failmap-test").experiment_id])
    assert run.info.run_name == "study-s" and run.data.tags["failmap.study"] == "s"
    assert run.data.metrics[tracking.clean_key("study.planted gap, mean over classes.mean")] == pytest.approx(0.25)
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "study")) == ["study/s.json", "study/s.png"]


def test_a_study_re_run_on_a_later_commit_gives_its_newer_experiments():
    old, new = entry("s-seed0", 0, 0.9, 0.9, 0.9, 0.9), entry("s-seed0", 0, 0.2, 0.8, 0.6, 0.7)
    old["data"]["timestamp"], new["data"]["timestamp"] = "2026-12-01T13:39:00", "2026-12-01T19:32:04"
    for commits in ([new], [old]), ([old], [new]):
        show = [{"rev": f"c{i}", "name": None, "data": {"metrics": {}, "params": {}},
                 "experiments": [{"name": "s-seed0", "revs": revs}]} for i, revs in enumerate(commits)]
        found = experiments(show, "s-seed")
        assert metrics_of(found["s-seed0"])["metrics/baseline.json"]["test"]["subpop"]["mean_gap"] == 0.2


def test_paired_differences_match_seeds_by_name_and_skip_missing_ones(tmp_path):
    from failmap import study
    before = {"gain": {"values": {"a-seed0": 0.10, "a-seed1": 0.20, "a-seed2": 0.30}},
              "only before": {"values": {"a-seed0": 1.0}}}
    after = {"gain": {"values": {"b-seed1": 0.25, "b-seed0": 0.20, "b-seed2": None, "b-seed3": 0.9}}}
    table = study.paired(before, after)
    assert list(table) == ["gain"]
    row = table["gain"]
    assert row["values"] == pytest.approx({"seed0": 0.10, "seed1": 0.05}) and row["n"] == 2
    assert row["mean"] == pytest.approx(0.075)
    # the paired interval is the interval of the differences, not of either study
    assert (row["low"], row["high"]) == pytest.approx((interval([0.10, 0.05])["low"], interval([0.10, 0.05])["high"]))
    for name, figures in (("a", before), ("b", after)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"figures": figures}))
    table2, path = study.compare("a", "b", metrics_dir=str(tmp_path))
    assert path.name == "b_minus_a.json" and json.loads(path.read_text())["figures"]["gain"]["n"] == 2
    with pytest.raises(FileNotFoundError, match="no written study 'c'"):
        study.compare("a", "c", metrics_dir=str(tmp_path))
