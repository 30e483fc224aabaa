"""Accuracy summaries: overall, per class, and on a hard subpopulation vs the rest."""
from __future__ import annotations

import numpy as np


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def accuracy_report(correct: np.ndarray, labels: np.ndarray, class_names: list[str],
                    in_subpop: np.ndarray | None = None) -> dict:
    """{"accuracy", "per_class": {name: acc}} plus, given a subpopulation mask,
    "subpop": per-class accuracy inside / outside it, the per-class gap
    (rest - subpop) and their means over classes that have both."""
    correct = np.asarray(correct, dtype=float)
    out = {"accuracy": _mean(correct), "n": int(len(correct)),
           "per_class": {c: _mean(correct[labels == k]) for k, c in enumerate(class_names)}}
    if in_subpop is not None:
        per_class, gaps, subs, rests = {}, [], [], []
        for k, c in enumerate(class_names):
            sub, rest = correct[(labels == k) & in_subpop], correct[(labels == k) & ~in_subpop]
            row = {"subpop_acc": _mean(sub), "rest_acc": _mean(rest), "n_subpop": int(len(sub))}
            if len(sub) and len(rest):
                row["gap"] = row["rest_acc"] - row["subpop_acc"]
                gaps.append(row["gap"]); subs.append(row["subpop_acc"]); rests.append(row["rest_acc"])
            per_class[c] = row
        out["subpop"] = {"per_class": per_class, "mean_gap": _mean(np.array(gaps)),
                         "subpop_acc": _mean(np.array(subs)), "rest_acc": _mean(np.array(rests))}
    return out
