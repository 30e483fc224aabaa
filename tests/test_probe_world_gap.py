"""benchmarks/probe_world_gap.py on a tiny world: overrides reach the world, the gaps are the baseline report's."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import probe_world_gap  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_a_tiny_probe_reports_every_class_gap_and_val_errors():
    p = probe_world_gap.with_overrides(str(REPO / "params.yaml"), [
        "world.n_train=60", "world.n_val=60", "world.n_test=60", "baseline.epochs=1",
        "world.planted_attribute=colour", "world.train_rate=0.0"])
    assert p.world.train_rate == 0.0 and p.world.planted_attribute == "colour"
    r = probe_world_gap.probe(p, seed=0)
    classes = list(p.world.classes)
    assert list(r["gap"]) == classes and list(r["val_errors"]) == classes
    assert set(r["planted"].values()) <= set(p.world.colours)
    assert r["min_val_errors"] == min(r["val_errors"].values()) and sum(r["val_errors"].values()) <= 60
    assert r["min_gap"] == min(g for g in r["gap"].values() if g is not None)


def test_a_bad_override_names_itself():
    with pytest.raises(SystemExit, match="nope.x=1"):
        probe_world_gap.with_overrides(str(REPO / "params.yaml"), ["nope.x=1"])
    with pytest.raises(Exception, match="did you mean world.train_rate"):
        probe_world_gap.with_overrides(str(REPO / "params.yaml"), ["world.train_ratee=0.1"])


def test_the_ap_probe_scores_the_planted_subpopulation_by_svm_and_confidence():
    p = probe_world_gap.with_overrides(str(REPO / "params.yaml"), [
        "world.n_train=300", "world.n_val=240", "world.n_test=120", "baseline.epochs=3", "svm.min_errors=2"])
    r = probe_world_gap.probe(p, seed=0, with_ap=True)
    fitted = list(r["ap_per_class"]["svm"])
    assert fitted and fitted == list(r["ap_per_class"]["confidence"])
    assert set(fitted) <= set(p.world.classes)
    for method in ("svm", "confidence"):
        values = list(r["ap_per_class"][method].values())
        assert all(0.0 <= v <= 1.0 for v in values if v == v)  # NaN: no planted test image of that class
        finite = [v for v in values if v == v]
        assert finite and r[f"ap_{method}"] == pytest.approx(float(np.mean(finite)))
    assert r["ap_svm_minus_confidence"] == pytest.approx(r["ap_svm"] - r["ap_confidence"], nan_ok=True)
