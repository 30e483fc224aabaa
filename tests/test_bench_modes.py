"""The benchmark's error-blind control (benchmarks/bench_modes.py): a check that it can score a cluster."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_modes  # noqa: E402

from failmap.ranking import average_precision  # noqa: E402


def test_cluster_control_finds_a_tight_member_without_errors():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0, 0, 0], [-10, 0, 0, 0], [10, 0, 0, 0]])  # the member blob lies between the others
    val = np.concatenate([c + rng.normal(size=(40, 4)) for c in centres])
    test = np.concatenate([c + rng.normal(size=(30, 4)) for c in centres])
    member = np.repeat([True, False, False], 30)  # the first blob is the "subpopulation"
    near = bench_modes.cluster_control(val, test, seed=0)
    assert near.shape == (90, bench_modes.CONTROL_CLUSTERS)
    best = max(average_precision(-near[:, j], member) for j in range(near.shape[1]))
    assert best > 0.99
    # no linear score isolates a blob between two others: the axis through them ranks it in the middle
    assert max(average_precision(test[:, 0], member), average_precision(-test[:, 0], member)) < 0.7
