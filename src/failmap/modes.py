"""Several failure modes per class: the class's val errors clustered by how
they differ from its correct images (``cluster: errors``), or the class's val
images clustered and the clusters that err more than the class kept
(``cluster: images``), one direction per cluster.

One SVM per class (``failmap.svm``) separates right from wrong; when a class's
errors have more than one cause its normal mixes them, and because it ranks by
"likely to be wrong" the members of a failing sub-type that the model still
gets right rank as easy. Here, per class, on its val images:

1. Preprocess as the SVM does (train-split standardisation, L2 rows), then
   whiten by the class's *correct* images: subtract their mean ``center`` and
   multiply by the inverse square root of their Ledoit-Wolf shrunk covariance.
   Variation the class shows anyway (its nuisances) becomes unit noise; what
   makes an error unusual for its class stands out.
2. Cluster the errors' whitened deviations, each scaled to unit length (so a
   cluster gathers errors that deviate the same *way*, however far),
   with k-means for k = 2 .. ``max_modes``; keep the k with the best
   silhouette when that silhouette reaches ``min_silhouette``, else one mode.
3. Each cluster is a mode. Its weight is ``Sigma^-1/2 (mean_mode - center)``
   in the preprocessed space (``mean_mode`` the mean of the mode's errors):
   the mode's centroid in the whitened space where it was found, read as a
   direction. It follows what the mode's members share, not a max-margin
   normal, which would also learn what splits the mode's wrong members from
   its right ones and rank the right ones easy. It sits halfway between the
   plain mean difference (``Sigma`` ignored) and the linear discriminant
   ``Sigma^-1 (mean_mode - center)``, whose full inverse magnifies the
   directions in which the correct images hardly vary, where the mean of a
   few dozen errors is mostly noise. Over the five benchmark datasets of
   ``benchmarks/modes.md`` the mean best-mode AP was 0.990 for this weight,
   0.982 for the mean difference and 0.928 for the discriminant.

``cluster: images`` finds modes the way a slicer over the whole class does
(Domino's mixture, dcbench's slices): k-means on *all* of the class's
preprocessed val images, right and wrong, for k = ``max_modes`` ..
``max_clusters``, keeping the k whose clusters tell its errors best (the
adjusted mutual information between cluster and right/wrong; a class's
images also split by nuisances, and a fixed k can cut the failing sub-type
across clusters; fewer clusters than ``max_modes`` would merge sub-types
that fail apart). A
cluster whose error rate is above the class's and that holds at least
``min_mode_errors`` errors is a mode (the ``max_modes`` holding most errors),
weighted by ``mean_cluster - center`` (its members' mean, right ones
included, minus the correct images' mean). On the unit-norm preprocessed
rows, ranking by that coordinate is ranking by closeness to the cluster's
centroid, so a failing sub-type's members rank together whether the model
gets them wrong or right. Optionally (``min_top_share`` > 0) a class whose
largest mode holds less than that share of its val errors falls back to
``cluster: errors``: its clusters follow something other than the failure
(on a colour world a class's images split by context, and the planted
colour's errors can scatter over many small clusters), and the largest mode
is the one that drives the arms by default (``modes.drive: top_mode``). Off
by default: it also drops the smaller image modes that match a sub-type
failing beside a larger failure (benchmarks/modes.md, "Choosing k"). The
silhouette gate does not apply: in CLIP's
dimensions a class's sub-types separate cleanly but score low silhouettes.

A mode's *score* of an image is its coordinate along that direction from the
class's correct mean (higher = more like the mode). Like the SVM, a mode also
has a ``decision_function`` whose *negative* side is hard (minus the score), a
unit ``direction`` pointing to the easy side in the preprocessed space and a
``direction_raw`` in raw CLIP space for decoding, so captioning and decoding
can take a mode where they take a class SVM. Modes are ranked by their share
of the class's val errors. Nothing here reads ground truth.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_mutual_info_score, silhouette_score

from failmap.io import write_json
from failmap.ranking import average_precision, to_jsonable
from failmap.svm import Preprocessor, Skip, _as_matrix, _unit, _write_npz, check_class_split, check_val_split, read_npz

# k-means restarts per k: the best of these (lowest inertia) is kept.
KMEANS_RESTARTS = 10
# Eigenvalues of the shrunk covariance are floored at this fraction of the
# largest before the inverse square root, so a near-flat dimension cannot blow up.
MIN_EIGEN_RATIO = 1e-6


@dataclass(eq=False)
class Mode:
    """One failure mode of one class."""
    weight: np.ndarray        # (D,) score = weight . (z - center); cluster errors: Sigma^-1/2 (mean of the
                              # mode's errors - center), cluster images: mean of the cluster - center
    center: np.ndarray        # (D,) mean of the class's correct val images, preprocessed
    preprocessor: Preprocessor
    n_errors: int             # val errors assigned to this mode
    share: float              # n_errors / the class's val errors

    @property
    def direction(self) -> np.ndarray:
        """Unit direction in the preprocessed space, pointing to the easy side (away from the mode)."""
        return -_unit(self.weight)

    @property
    def direction_raw(self) -> np.ndarray:
        """Unit direction in raw CLIP space, pointing to the easy side; the weight
        maps back through the standardisation as the SVM's does (``ClassSVM.direction_raw``)."""
        return -_unit(self.weight / self.preprocessor.std)

    def score_preprocessed(self, Z) -> np.ndarray:
        return (np.asarray(Z, dtype=np.float64) - self.center) @ self.weight

    def score(self, X_raw) -> np.ndarray:
        """How much each raw embedding (N, D) looks like this mode (higher = more), (N,)."""
        return self.score_preprocessed(self.preprocessor.transform(X_raw))

    def decision_function_preprocessed(self, Z) -> np.ndarray:
        """Minus the score of preprocessed rows, as ``ClassSVM.decision_function_preprocessed``
        (what caption scoring calls on its preprocessed text-embedding differences)."""
        return -self.score_preprocessed(Z)

    def decision_function(self, X_raw) -> np.ndarray:
        """Minus the score: negative = hard, as for ``ClassSVM.decision_function``."""
        return -self.score(X_raw)


@dataclass(eq=False)
class ClassModes:
    """A class's modes, largest share of errors first."""
    modes: list[Mode]
    n_val: int
    n_errors: int
    silhouette: float         # of the chosen clustering; NaN when one mode was kept without a split
    clustering: str = "errors"  # what produced the modes (CLUSTERINGS): "errors" also where images fell back
    n_clusters: int = 0       # cluster images: the k chosen (0 otherwise)
    error_information: float = float("nan")  # cluster images: its adjusted mutual information with right/wrong


CLUSTERINGS = ("errors", "images")  # what k-means clusters: the class's val errors | all of its val images


def _validate(max_modes, min_mode_errors, min_silhouette, cluster="errors", max_clusters=None,
              min_top_share=0.0) -> None:
    if not 0 <= min_top_share <= 1:
        raise ValueError(f"min_top_share must lie in [0, 1] (a share of the class's errors), got {min_top_share!r}")
    if cluster not in CLUSTERINGS:
        raise ValueError(f"cluster must be one of {list(CLUSTERINGS)}, got {cluster!r}")
    if int(max_modes) != max_modes or max_modes < 1:
        raise ValueError(f"max_modes must be a positive integer, got {max_modes!r}")
    if max_clusters is not None and (int(max_clusters) != max_clusters or max_clusters < max(2, max_modes)):
        raise ValueError(f"max_clusters must be an integer >= max(2, max_modes) ({max(2, max_modes)}): the "
                         f"clusterings tried have max_modes .. max_clusters clusters, got {max_clusters!r}")
    if int(min_mode_errors) != min_mode_errors or min_mode_errors < 1:
        raise ValueError(f"min_mode_errors must be a positive integer, got {min_mode_errors!r}")
    if not -1 <= min_silhouette <= 1:
        raise ValueError(f"min_silhouette must lie in [-1, 1] (a silhouette's range), got {min_silhouette!r}")


def _whitener(Z_correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(center, Sigma^-1/2): the correct images' mean and the inverse square root
    of their Ledoit-Wolf shrunk covariance."""
    center = Z_correct.mean(axis=0)
    cov = LedoitWolf(assume_centered=False).fit(Z_correct).covariance_
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.maximum(eigval, eigval.max() * MIN_EIGEN_RATIO)
    return center, (eigvec / np.sqrt(eigval)) @ eigvec.T


def _cluster(D_unit: np.ndarray, max_modes: int, min_mode_errors: int, min_silhouette: float,
             seed: int) -> tuple[np.ndarray, float]:
    """(cluster label of each error, silhouette of the chosen k or NaN for one cluster)."""
    best_labels, best_sil = np.zeros(len(D_unit), dtype=np.int64), np.nan
    # k clusters need at least min_mode_errors errors each
    for k in range(2, min(max_modes, len(D_unit) // min_mode_errors) + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points: fewer distinct clusters
            labels = KMeans(n_clusters=k, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(D_unit)
        if np.bincount(labels, minlength=k).min() < min_mode_errors or len(set(labels)) < 2:
            continue
        sil = float(silhouette_score(D_unit, labels, metric="cosine"))
        if sil >= min_silhouette and not sil <= best_sil:
            best_labels, best_sil = labels, sil
    return best_labels, best_sil


def _image_clusters(Z: np.ndarray, wrong: np.ndarray, max_modes: int, min_mode_errors: int, max_clusters: int,
                    min_top_share: float, seed: int) -> tuple[list[np.ndarray], float, int, float]:
    """(member masks of the clusters of all the class's images that are modes, the clustering's silhouette,
    its k, its adjusted mutual information with ``wrong``): ``cluster: images`` of the module docstring; no
    masks when no cluster qualifies or the largest holds less than ``min_top_share`` of the errors."""
    best = None  # (information, k, labels); ties keep the smaller k
    for k in range(max(2, min(max_modes, len(Z))), min(max_clusters, len(Z)) + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = KMeans(n_clusters=k, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(Z)
        if len(set(labels)) < 2:
            continue
        information = float(adjusted_mutual_info_score(wrong, labels))
        if best is None or information > best[0]:
            best = (information, k, labels)
    if best is None:
        return [], float("nan"), 0, float("nan")
    information, k, labels = best
    rate = wrong.mean()
    masks = [labels == j for j in range(k)]
    masks = [m for m in masks if wrong[m].sum() >= min_mode_errors and wrong[m].mean() > rate]
    masks = sorted(masks, key=lambda m: -int(wrong[m].sum()))[:max_modes]  # stable: ties keep cluster order
    if masks and wrong[masks[0]].sum() < min_top_share * wrong.sum():
        masks = []
    return masks, float(silhouette_score(Z, labels, metric="cosine")), k, information


def fit_class_modes(X_val_raw, correct_val, preprocessor: Preprocessor, max_modes: int, min_mode_errors: int,
                    min_silhouette: float, seed: int, min_errors: int = 1, cluster: str = "errors", *,
                    max_clusters: int | None = None, min_top_share: float = 0.0) -> ClassModes | Skip:
    """One class's failure modes from its val images (see the module docstring);
    ``cluster: images`` tries k = ``max_modes`` .. ``max_clusters`` (None:
    ``max_modes`` alone) and needs its largest mode to hold ``min_top_share``
    of the errors.

    A ``Skip`` (not an exception) when the class has fewer wrong predictions
    than ``min_errors`` or than ``min_mode_errors``, or fewer than two correct
    ones (no mean and covariance to measure the errors against).
    """
    _validate(max_modes, min_mode_errors, min_silhouette, cluster, max_clusters, min_top_share)
    X, correct = check_class_split(X_val_raw, correct_val, preprocessor, min_errors)
    wrong = correct == 0
    n_errors, n_correct = int(wrong.sum()), int((~wrong).sum())
    needed = max(min_errors, min_mode_errors)
    if n_errors < needed or n_correct < 2:
        return Skip(reason=(f"{n_errors} wrong and {n_correct} correct predictions among {len(X)} val images; "
                            f"modes need at least {needed} wrong (modes.min_mode_errors={min_mode_errors}, "
                            f"svm.min_errors={min_errors}) and 2 correct"),
                    n_val=len(X), n_errors=n_errors)

    Z = preprocessor.transform(X)
    if cluster == "images":
        masks, silhouette, n_clusters, information = _image_clusters(
            Z, wrong, max_modes, min_mode_errors, max(2, max_modes) if max_clusters is None else max_clusters,
            min_top_share, seed)
        center = Z[~wrong].mean(axis=0)
        modes = [Mode(weight=Z[m].mean(axis=0) - center, center=center, preprocessor=preprocessor,
                      n_errors=int(wrong[m].sum()), share=int(wrong[m].sum()) / n_errors) for m in masks]
        modes = [m for m in modes if np.any(m.weight)]
        if modes:
            modes.sort(key=lambda m: -m.n_errors)
            return ClassModes(modes=modes, n_val=len(X), n_errors=n_errors, silhouette=silhouette,
                              clustering="images", n_clusters=n_clusters, error_information=information)
        # no cluster of the class's images errs more than the class, or its largest mode holds less than
        # min_top_share of the errors: cluster its errors instead
    center, inv_sqrt = _whitener(Z[~wrong])
    deviations = (Z[wrong] - center) @ inv_sqrt
    norms = np.linalg.norm(deviations, axis=1, keepdims=True)
    labels, silhouette = _cluster(deviations / np.where(norms == 0, 1.0, norms), max_modes, min_mode_errors,
                                  min_silhouette, seed)
    modes = []
    for j in range(labels.max() + 1):
        members = Z[wrong][labels == j]
        weight = inv_sqrt @ (members.mean(axis=0) - center)
        if not np.any(weight):
            continue
        modes.append(Mode(weight=weight, center=center, preprocessor=preprocessor, n_errors=len(members),
                          share=len(members) / n_errors))
    if not modes:
        return Skip(reason="the class's errors have the mean of its correct images: no direction found",
                    n_val=len(X), n_errors=n_errors)
    # largest share first; ties keep cluster order, itself a function of the seed
    modes.sort(key=lambda m: -m.n_errors)
    return ClassModes(modes=modes, n_val=len(X), n_errors=n_errors, silhouette=silhouette)


def fit_all_modes(X_val, labels_val, correct_val, preprocessor: Preprocessor, class_names: Sequence[str],
                  max_modes: int, min_mode_errors: int, min_silhouette: float, seed: int,
                  min_errors: int = 1, cluster: str = "errors", *, max_clusters: int | None = None,
                  min_top_share: float = 0.0) -> dict[int, ClassModes | Skip]:
    """Every class's modes on the val split; class ``k`` clusters with seed ``seed + k``."""
    _validate(max_modes, min_mode_errors, min_silhouette, cluster, max_clusters, min_top_share)
    X_val = _as_matrix(X_val, "X_val", preprocessor.dim)
    labels, correct, n_classes = check_val_split(X_val, labels_val, correct_val, class_names)
    results: dict[int, ClassModes | Skip] = {}
    for k in range(n_classes):
        mask = labels == k
        if not mask.any():
            results[k] = Skip(reason="no val images of this class", n_val=0, n_errors=0)
            continue
        results[k] = fit_class_modes(X_val[mask], correct[mask], preprocessor, max_modes, min_mode_errors,
                                     min_silhouette, seed + k, min_errors, cluster, max_clusters=max_clusters,
                                     min_top_share=min_top_share)
    return results


def mode_scores(results: dict[int, ClassModes | Skip], X_raw, labels, max_modes: int) -> np.ndarray:
    """(N, max_modes): each row's score under each mode of its own class (column
    j = the class's j-th largest mode); NaN where the class has no such mode."""
    X = np.asarray(X_raw, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape != (len(X),):
        raise ValueError(f"labels must have shape ({len(X)},) to match X_raw, got {labels.shape}")
    unknown = ~np.isin(labels, list(results))
    if unknown.any():
        raise ValueError(f"labels contain classes with no modes result: {sorted(set(labels[unknown].tolist()))}")
    out = np.full((len(X), max_modes), np.nan)
    for k, fitted in results.items():
        mask = labels == k
        if isinstance(fitted, ClassModes) and mask.any():
            if len(fitted.modes) > max_modes:
                raise ValueError(f"class {k} has {len(fitted.modes)} modes, more than max_modes={max_modes}")
            for j, mode in enumerate(fitted.modes):
                out[mask, j] = mode.score(X[mask])
    return out


def drive_shares(results: dict[int, ClassModes | Skip], top_only: bool = False) -> dict[int, list[float]]:
    """Per class with modes, the share of the steered images (or pool picks)
    each of its modes takes, largest first: the modes' own shares of the
    class's val errors, or with ``top_only`` (``modes.drive: top_mode``) all to
    the largest mode."""
    return {k: [1.0] + [0.0] * (len(v.modes) - 1) if top_only else [m.share for m in v.modes]
            for k, v in results.items() if isinstance(v, ClassModes)}


def spread(n: int, shares: Sequence[float]) -> list[int]:
    """``n`` images (or pool picks) split into whole counts proportional to a
    class's mode ``shares`` (largest remainder: floors first, then one more to
    the largest remainders, ties to the earlier mode); the counts sum to ``n``."""
    shares = np.asarray(shares, dtype=np.float64)
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not len(shares) or np.any(~np.isfinite(shares)) or np.any(shares < 0) or not shares.sum() > 0:
        raise ValueError(f"shares must be finite, non-negative and sum to more than 0, got {shares.tolist()}")
    exact = int(n) * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(shares)), key=lambda j: (-(exact[j] - counts[j]), j))
    for j in order[:int(n) - int(counts.sum())]:
        counts[j] += 1
    return [int(c) for c in counts]


def modes_report(fitted: ClassModes, test_scores, in_subpop=None) -> dict:
    """One class's modes for the metrics file: per mode (``mode_0`` = the largest)
    its share and count of the class's val errors and, with ground truth
    (``in_subpop`` for the class's test rows), the AP of the subpopulation on
    test; ``best_subpop_ap`` matches the subpopulation with its best mode (dcbench)."""
    scores = np.asarray(test_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < len(fitted.modes):
        raise ValueError(f"test_scores must be (N, >= {len(fitted.modes)}) mode scores, got shape {scores.shape}")
    report = {"n_modes": len(fitted.modes), "n_val_errors": fitted.n_errors, "clustering": fitted.clustering,
              "silhouette": None if np.isnan(fitted.silhouette) else fitted.silhouette}
    if fitted.clustering == "images":
        report.update(n_clusters=fitted.n_clusters, error_information=fitted.error_information)
    aps = []
    for j, mode in enumerate(fitted.modes):
        entry = {"share": mode.share, "n_errors": mode.n_errors}
        if in_subpop is not None:
            # hardest = lowest, as for the SVM: minus the score is the mode's decision value
            entry["subpop_ap"] = average_precision(-scores[:, j], in_subpop)
            aps.append(entry["subpop_ap"])
        report[f"mode_{j}"] = entry
    if in_subpop is not None:
        finite = [a for a in aps if np.isfinite(a)]
        report["best_subpop_ap"] = max(finite) if finite else float("nan")
    return report


# ---------------------------------------------------------------- save / load

def save_modes(npz_path: str | Path, json_path: str | Path, preprocessor: Preprocessor,
               results: dict[int, ClassModes | Skip], class_names: Sequence[str], max_modes: int) -> None:
    """Every class's modes in one npz (mode j of class k at [k, j], largest share
    first; ``n_modes[k]`` of them are real), a human-readable JSON summary beside it."""
    n_classes, dim = len(class_names), preprocessor.dim
    if sorted(results) != list(range(n_classes)):
        raise ValueError(f"results must have one entry per class 0..{n_classes - 1}, got keys {sorted(results)}")
    arrays = dict(
        mean=preprocessor.mean, std=preprocessor.std, class_names=np.asarray(list(class_names), dtype=str),
        n_modes=np.zeros(n_classes, np.int64), weight=np.zeros((n_classes, max_modes, dim)),
        direction=np.zeros((n_classes, max_modes, dim)), direction_raw=np.zeros((n_classes, max_modes, dim)),
        center=np.zeros((n_classes, dim)), mode_errors=np.zeros((n_classes, max_modes), np.int64),
        share=np.zeros((n_classes, max_modes)), silhouette=np.full(n_classes, np.nan),
        n_clusters=np.zeros(n_classes, np.int64), error_information=np.full(n_classes, np.nan),
        clustering=np.asarray([""] * n_classes, dtype=object),
        n_val=np.zeros(n_classes, np.int64), n_errors=np.zeros(n_classes, np.int64),
        skip_reason=np.asarray([""] * n_classes, dtype=object),
    )
    summary = {"dim": dim, "max_modes": max_modes, "classes": {}}
    for k, name in enumerate(class_names):
        r = results[k]
        arrays["n_val"][k], arrays["n_errors"][k] = r.n_val, r.n_errors
        if isinstance(r, Skip):
            arrays["skip_reason"][k] = r.reason
            summary["classes"][name] = {"fitted": False, "skip_reason": r.reason, "n_val": r.n_val,
                                        "n_errors": r.n_errors}
            continue
        if len(r.modes) > max_modes:
            raise ValueError(f"class '{name}' has {len(r.modes)} modes, more than max_modes={max_modes}")
        arrays["n_modes"][k], arrays["silhouette"][k] = len(r.modes), r.silhouette
        arrays["clustering"][k] = r.clustering
        arrays["n_clusters"][k], arrays["error_information"][k] = r.n_clusters, r.error_information
        arrays["center"][k] = r.modes[0].center
        for j, mode in enumerate(r.modes):
            arrays["weight"][k, j], arrays["direction"][k, j] = mode.weight, mode.direction
            arrays["direction_raw"][k, j] = mode.direction_raw
            arrays["mode_errors"][k, j], arrays["share"][k, j] = mode.n_errors, mode.share
        summary["classes"][name] = {"fitted": True, "n_val": r.n_val, "n_errors": r.n_errors,
                                    "silhouette": None if np.isnan(r.silhouette) else r.silhouette,
                                    "clustering": r.clustering,
                                    **({"n_clusters": r.n_clusters, "error_information": r.error_information}
                                       if r.clustering == "images" else {}),
                                    "modes": [{"n_errors": m.n_errors, "share": m.share} for m in r.modes]}
    arrays["skip_reason"] = arrays["skip_reason"].astype(str)
    arrays["clustering"] = arrays["clustering"].astype(str)
    summary["n_fitted"] = int((arrays["n_modes"] > 0).sum())
    _write_npz(npz_path, arrays)
    write_json(json_path, to_jsonable(summary))


def load_modes(npz_path: str | Path) -> tuple[dict[int, ClassModes | Skip], list[str]]:
    """Inverse of ``save_modes``: (modes by class index, class names)."""
    a = read_npz(npz_path)
    preprocessor = Preprocessor(mean=a["mean"], std=a["std"])
    results: dict[int, ClassModes | Skip] = {}
    for k in range(len(a["class_names"])):
        n_val, n_errors = int(a["n_val"][k]), int(a["n_errors"][k])
        if a["n_modes"][k] == 0:
            results[k] = Skip(reason=str(a["skip_reason"][k]), n_val=n_val, n_errors=n_errors)
            continue
        modes = [Mode(weight=a["weight"][k, j].copy(), center=a["center"][k].copy(), preprocessor=preprocessor,
                      n_errors=int(a["mode_errors"][k, j]), share=float(a["share"][k, j]))
                 for j in range(int(a["n_modes"][k]))]
        results[k] = ClassModes(modes=modes, n_val=n_val, n_errors=n_errors, silhouette=float(a["silhouette"][k]),
                                clustering=str(a["clustering"][k]),
                                # files saved before k was chosen per class hold neither
                                n_clusters=int(a["n_clusters"][k]) if "n_clusters" in a else 0,
                                error_information=float(a["error_information"][k]) if "error_information" in a
                                else float("nan"))
    return results, [str(n) for n in a["class_names"]]
