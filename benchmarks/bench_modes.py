"""Several failure modes per class (failmap.modes) against one SVM direction,
confidence, random and Domino, on the same embeddings and predictions.

    python benchmarks/bench_modes.py build two_cause /tmp/modes-two_cause   # pipeline copy, dvc repro fit_svms
    python benchmarks/bench_modes.py build digits /tmp/modes-digits
    python benchmarks/bench_modes.py build superclass /tmp/modes-superclass [--seed 1]
    python benchmarks/bench_modes.py build context /tmp/modes-context --seed 1   # the default world; or colour
    python benchmarks/bench_modes.py score default=data two_cause=/tmp/modes-two_cause/data \\
        digits=/tmp/modes-digits/data superclass=/tmp/modes-superclass/data \\
        [--domino /work/venv-domino/bin/python]

``build`` makes a temporary copy of the repository (the files the tiny
end-to-end test copies, ``failmap.smoke.COPIED``) with the dataset's overrides
laid over ``params.yaml`` and reproduces the pipeline up to ``fit_svms``
(prepare -> train_baseline -> pretrain_clip -> embed -> fit_svms): the
embeddings and predictions are the pipeline's own.

- ``two_cause``: the procedural world whose classes come in confusable shape
  pairs (square / diamond, circle / moon, star / cross) and whose planted
  attribute is a colour: each class's errors have two causes, the shape it
  is confused with and its planted colour (its confuser, the next class,
  carries that colour in train).
- ``digits``: a real-pixel image folder from scikit-learn's handwritten digits
  (8x8, upscaled), grouped into superclasses; one member digit of each
  superclass is rare in train (``DIGITS_RARE_KEEP`` of its images), the
  failing sub-type and the ground truth. Every source image lands in exactly
  one split; each is written ``DIGITS_COPIES`` times, upscaled and placed
  at a random offset. Captions ("a photo of the digit seven") of train and pool images make
  the corpus on which ``clip.source: corpus`` trains the CLIP.
- ``superclass``: the superclass world of ``benchmarks/bench_superclass.py``
  (its ``OVERRIDES`` and first caption setting, so the two benchmarks build
  byte-identical params.yaml files): classes are groups of shapes, one member
  of each group rare in train, the ground truth. A folder kept by
  ``bench_superclass.py --keep DIR`` (reproduced up to ``caption``) is scored
  as it is (``superclass=DIR/data``), and a folder built here can be given to
  ``bench_superclass.py --reuse DIR`` (only its caption stages then run).

``score`` reads each data folder (``prepared``, ``baseline``, ``embeddings``),
fits every method on val and scores test, with the ``svm:``, ``modes:`` and
``seed`` of the params.yaml beside the data folder (the pipeline that built
it; ``--params`` overrides, e.g. to vary the fitting seed): per class with ground truth, the
average precision of the planted subpopulation (dcbench's matching: a method
with several slices or modes gets its best one per class). Domino runs in its
own Python 3.9 venv (``/work/shared/PEERS.md``) as a subprocess on .npz files.
Without ``--params``, where the data folder's pipeline wrote
``metrics/svm.json``, the refitted SVM's AP must equal the pipeline's own (a
check that the scored embeddings, params and seed are the pipeline's).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from failmap import smoke  # noqa: E402
from failmap.params import overlay, params_from_dict  # noqa: E402

import bench_superclass  # noqa: E402  (this folder is on sys.path when a script here runs)

SEED = 0

# Overrides laid over params.yaml for each built dataset; sizes keep each
# build to a few minutes of one CPU core.
TWO_CAUSE = {
    "world": {"classes": ["square", "diamond", "circle", "moon", "star", "cross"],
              "planted_attribute": "colour"},
}
DIGITS_ROOT = "data/raw/digits"
DIGITS_CAPTIONS = "data/raw/digits_captions.csv"
# Superclasses of the digits folder: name -> member digits.
DIGIT_SUPERCLASSES = {"low": [0, 1, 2], "middle": [3, 4, 5], "high": [6, 7, 8, 9]}
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGITS_SPLIT_SHARES = {"train": 0.4, "val": 0.2, "test": 0.2, "pool": 0.2}
DIGITS_RARE_KEEP = 0.05  # share of the rare member's train images that stay in train
DIGITS_COPIES = 3        # shifted copies written of each source image
DIGITS_SIDE = 32         # pixels of the written image (data.image_size: the shipped models' side)
DIGITS_SCALE = 3         # the 8x8 digit is upscaled (nearest neighbour) by this, then placed at a random offset
DIGITS = {
    "world": None,  # no procedural world; the world's data keys mean nothing to an image folder:
    "~data": None,  # data replaced, not merged (failmap.params.overlay)
    "data": {"source": "imagefolder", "root": DIGITS_ROOT, "image_size": DIGITS_SIDE,
             "captions_file": DIGITS_CAPTIONS},
    "clip": {"source": "corpus", "train": {"steps": 600}},
    "decoder": {"source": "corpus"},  # not run up to fit_svms; the shipped world decoder is refused here
}
# the superclass world exactly as bench_superclass.py builds it (its first caption setting, which fit_svms ignores)
SUPERCLASS = bench_superclass.with_caption(next(iter(bench_superclass.SETTINGS.values())))
# the default world (params.yaml as it is) and its colour twin: the worlds of the README's seed studies
OVERRIDES = {"two_cause": TWO_CAUSE, "digits": DIGITS, "superclass": SUPERCLASS, "context": {},
             "colour": {"world": {"planted_attribute": "colour"}}}


# ---------------------------------------------------------------------- build

def write_digits_folder(dest: Path, seed: int) -> dict:
    """The digits image folder and its captions CSV under ``dest``; returns what was made."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng([seed, 15])
    superclass_of = {d: name for name, members in DIGIT_SUPERCLASSES.items() for d in members}
    rare = {name: int(rng.choice(members)) for name, members in DIGIT_SUPERCLASSES.items()}
    order = rng.permutation(len(digits.target))
    bounds = np.cumsum([0] + [int(round(s * len(order))) for s in DIGITS_SPLIT_SHARES.values()])
    bounds[-1] = len(order)
    rows, counts = [], {}
    drawn = 8 * DIGITS_SCALE
    for split, lo, hi in zip(DIGITS_SPLIT_SHARES, bounds[:-1], bounds[1:]):
        for i in order[lo:hi]:
            digit = int(digits.target[i])
            superclass = superclass_of[digit]
            is_rare = digit == rare[superclass]
            if split == "train" and is_rare and rng.random() >= DIGITS_RARE_KEEP:
                continue
            base = (digits.images[i] / 16.0 * 255).astype(np.uint8).repeat(DIGITS_SCALE, 0).repeat(DIGITS_SCALE, 1)
            for copy in range(DIGITS_COPIES):
                dy, dx = rng.integers(0, DIGITS_SIDE - drawn + 1, 2)
                img = np.zeros((DIGITS_SIDE, DIGITS_SIDE), np.uint8)
                img[dy:dy + drawn, dx:dx + drawn] = base
                image_id = f"{split}/{superclass}/{i:04d}_{copy}.png"
                path = dest / DIGITS_ROOT / image_id
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).convert("RGB").save(path)
                caption = f"a photo of the digit {DIGIT_WORDS[digit]}" if split in ("train", "pool") else ""
                rows.append({"id": image_id, "caption": caption, "subpop": int(is_rare)})
                counts[f"{split}/{superclass}"] = counts.get(f"{split}/{superclass}", 0) + 1
    with open(dest / DIGITS_CAPTIONS, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "caption", "subpop"])
        writer.writeheader()
        writer.writerows(rows)
    return {"rare": {k: DIGIT_WORDS[v] for k, v in rare.items()}, "counts": counts}


def build(name: str, dest: Path, seed: int | None = None) -> None:
    if name not in OVERRIDES:
        raise SystemExit(f"unknown dataset '{name}'; known: {sorted(OVERRIDES)}")
    if dest.exists():
        raise SystemExit(f"{dest} already exists: pick a new folder")
    params = overlay(yaml.safe_load((REPO / "params.yaml").read_text()), OVERRIDES[name])
    if seed is not None:
        params["seed"] = seed
    params_from_dict(params)  # a bad override is refused here, naming its key, before any work
    smoke.pipeline_repo(REPO, dest, params)
    if name == "digits":
        print(json.dumps(write_digits_folder(dest, params["seed"])), flush=True)
    start = time.time()
    subprocess.run([sys.executable, "-m", "dvc", "repro", "fit_svms"], cwd=dest, env=smoke.pipeline_env(),
                   check=True)
    print(f"build {name}: dvc repro fit_svms in {time.time() - start:.0f} s", flush=True)


# ---------------------------------------------------------------------- score

# Domino, run by its own interpreter: only its slicer module is loaded (the
# package's __init__ wants meerkat and torch, which its slicer uses only in
# type hints); PEERS.md's call, per class, every slice's membership on test.
DOMINO_RUNNER = textwrap.dedent("""
    import sys, types
    from pathlib import Path
    import numpy as np
    import sklearn
    site = Path(sklearn.__file__).parents[1] / "domino"
    mk = types.ModuleType("meerkat"); mk.DataPanel = object; sys.modules["meerkat"] = mk
    torch = types.ModuleType("torch"); nn = types.ModuleType("torch.nn"); nn.Module = object
    torch.nn = nn; sys.modules["torch"] = torch; sys.modules["torch.nn"] = nn
    for name, path in (("domino", site), ("domino._slice", site / "_slice")):
        pkg = types.ModuleType(name); pkg.__path__ = [str(path)]; sys.modules[name] = pkg
    import domino._slice.domino as dm
    src, dst, w, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    data, out = np.load(src), {}
    for k in sorted({key.split("_")[1] for key in data.files}, key=int):
        Xv, cv, Xt, ct = (data[f"c_{k}_{part}"] for part in ("Xval", "cval", "Xtest", "ctest"))
        slicer = dm.DominoSlicer(n_slices=5, n_mixture_components=25,
                                 n_pca_components=min(128, Xv.shape[1], len(Xv) - 1),
                                 y_log_likelihood_weight=w, y_hat_log_likelihood_weight=w, random_state=seed)
        slicer.fit(embeddings=Xv, targets=np.ones(len(Xv)), pred_probs=cv)
        out[f"c_{k}"] = slicer.predict_proba(embeddings=Xt, targets=np.ones(len(Xt)), pred_probs=ct)
    np.savez(dst, **out)
""")
DOMINO_WEIGHTS = {"domino_w1": 1.0, "domino_w10": 10.0}  # defaults; the README quick start's gamma = 10
# An error-blind control: k-means with Domino's number of slices on the class's val embeddings (preprocessed as
# the SVM's), test images scored by closeness to each centroid, the best cluster matched as dcbench matches a
# slice. Where it scores as high as a slicer, best-slice AP credits slicing by look, not finding what fails.
CONTROL_CLUSTERS = 5
# A planted subpopulation counts as a failure of the baseline when its test accuracy is this far below the
# rest of its class's (issue 14's planted-gap bar, 20 points).
FAILING_GAP = 0.2


def cluster_control(Z_val: np.ndarray, Z_test: np.ndarray, seed: int) -> np.ndarray:
    """(n_test, CONTROL_CLUSTERS) minus the distance of each test row to each k-means centroid of the val rows."""
    from sklearn.cluster import KMeans
    km = KMeans(n_clusters=min(CONTROL_CLUSTERS, len(Z_val)), n_init=10, random_state=seed).fit(Z_val)
    return -np.linalg.norm(Z_test[:, None, :] - km.cluster_centers_[None], axis=2)


def load_dataset(data_dir: Path) -> dict:
    """val/test/train embeddings, predictions and test ground truth of one pipeline data folder."""
    from failmap.data import load_ground_truth, load_meta, subpop_mask
    from failmap.embeddings import load_embeddings
    from failmap.predictions import load_predictions

    prepared = data_dir / "prepared"
    meta, truth = load_meta(prepared), load_ground_truth(prepared)
    if truth is None:
        raise SystemExit(f"{prepared} has no ground truth: the benchmark scores against it")
    pred = {s: load_predictions(data_dir / "baseline" / f"{s}.csv") for s in ("train", "val", "test")}
    X = {s: load_embeddings(data_dir / "embeddings", s, pred[s]["id"]) for s in pred}
    return {"classes": meta["classes"], "pred": pred, "X": X, "subpop_test": subpop_mask(truth, pred["test"]["id"])}


def run_domino(python: str, ds: dict, classes: list[int], seed: int) -> dict[str, dict[int, np.ndarray]]:
    """method -> class -> (n_test_of_class, n_slices) slice memberships, from Domino's venv."""
    val, test = ds["pred"]["val"], ds["pred"]["test"]
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-modes-domino-") as tmp:
        tmp = Path(tmp)
        arrays = {}
        for k in classes:
            v, t = val["label"] == k, test["label"] == k
            arrays.update({f"c_{k}_Xval": ds["X"]["val"][v], f"c_{k}_cval": val["confidence"][v],
                           f"c_{k}_Xtest": ds["X"]["test"][t], f"c_{k}_ctest": test["confidence"][t]})
        np.savez(tmp / "in.npz", **arrays)
        (tmp / "runner.py").write_text(DOMINO_RUNNER)
        for method, w in DOMINO_WEIGHTS.items():
            done = subprocess.run([python, str(tmp / "runner.py"), str(tmp / "in.npz"),
                                   str(tmp / f"{method}.npz"), str(w), str(seed)], capture_output=True, text=True)
            if done.returncode != 0:  # its progress bars are noise; its traceback is not
                raise SystemExit(f"Domino ({python}, w={w}) failed:\n{done.stderr[-4000:]}")
            with np.load(tmp / f"{method}.npz") as z:
                out[method] = {k: z[f"c_{k}"] for k in classes}
    return out


def score_dataset(name: str, data_dir: Path, params: dict, domino_python: str | None, seed: int,
                  own_params: bool = True) -> dict:
    """Per class AP of the planted subpopulation on test for every method, and their means. With
    ``own_params`` (the params of the pipeline that built ``data_dir``) the refitted SVM must match the
    pipeline's ``metrics/svm.json`` where it exists."""
    from failmap.modes import CLUSTERINGS, ClassModes, fit_all_modes, mode_scores
    from failmap.ranking import average_precision, expected_random_ap
    from failmap.svm import ClassSVM, decision_values, fit_all

    ds = load_dataset(data_dir)
    val, test, X = ds["pred"]["val"], ds["pred"]["test"], ds["X"]
    svm_p, modes_p = params["svm"], params["modes"]
    timings = {}
    start = time.time()
    pre, svms = fit_all(X["val"], val["label"], val["correct"], X["train"], ds["classes"], svm_p["c_grid"],
                        svm_p["folds"], seed, svm_p["max_iter"], svm_p["min_errors"], progress=False)
    timings["svm_s"] = time.time() - start
    by_clustering, modes_test = {}, {}
    for clustering in CLUSTERINGS:  # both, side by side, whatever the params choose
        start = time.time()
        by_clustering[clustering] = fit_all_modes(
            X["val"], val["label"], val["correct"], pre, ds["classes"], modes_p["max_modes"],
            modes_p["min_mode_errors"], modes_p["min_silhouette"], seed, svm_p["min_errors"], clustering,
            max_clusters=modes_p.get("max_clusters"), min_top_share=modes_p.get("min_top_share", 0.0))
        timings[f"modes_{clustering}_s"] = time.time() - start
        modes_test[clustering] = mode_scores(by_clustering[clustering], X["test"], test["label"], modes_p["max_modes"])
    svm_test = decision_values(svms, X["test"], test["label"])
    subpop = ds["subpop_test"]
    # the classes every method analyses and whose test split has both members and non-members of the subpopulation
    classes = [k for k in range(len(ds["classes"]))
               if isinstance(svms[k], ClassSVM) and all(isinstance(m[k], ClassModes) for m in by_clustering.values())
               and 0 < subpop[test["label"] == k].sum() < (test["label"] == k).sum()]
    domino = {}
    if domino_python:
        start = time.time()
        domino = run_domino(domino_python, ds, classes, seed)
        timings["domino_s"] = time.time() - start
    rows = {}
    for k in classes:
        t = test["label"] == k
        y = subpop[t]
        # every score here is "hardest = lowest", the project's AP convention (failmap.ranking)
        row = {"svm": average_precision(svm_test[t], y)}
        for clustering, fitted in by_clustering.items():
            aps = [average_precision(-modes_test[clustering][t, j], y) for j in range(len(fitted[k].modes))]
            row[f"{clustering}_best"], row[f"{clustering}_top"] = max(aps), aps[0]
        row.update(confidence=average_precision(test["confidence"][t], y),
                   random=expected_random_ap(len(y), int(y.sum())))
        for method, memberships in domino.items():  # dcbench: the subpopulation's best slice
            row[method] = max(average_precision(-memberships[k][:, j], y) for j in range(memberships[k].shape[1]))
        near = cluster_control(pre.transform(X["val"][val["label"] == k]), pre.transform(X["test"][t]), seed)
        row["kmeans_best"] = max(average_precision(-near[:, j], y) for j in range(near.shape[1]))
        # is the planted subpopulation a failure at all? the baseline's test accuracy in it / in the rest
        right, inside = test["correct"][t].astype(bool), y.astype(bool)
        row["accuracy_in_out"] = [round(float(right[inside].mean()), 3), round(float(right[~inside].mean()), 3)]
        for clustering, fitted in by_clustering.items():
            row[f"{clustering}_shares"] = [round(m.share, 3) for m in fitted[k].modes]
        row["n_val_errors"] = by_clustering["errors"][k].n_errors
        rows[ds["classes"][k]] = row
    pipeline_svm = data_dir.resolve().parent / "metrics" / "svm.json"
    if own_params and pipeline_svm.is_file():  # the refit must be the pipeline's own: same embeddings, params, seed
        own = json.loads(pipeline_svm.read_text())["per_class"]
        for cls, row in rows.items():
            theirs = own.get(cls, {}).get("svm", {}).get("subpop_ap")
            if theirs is not None and abs(theirs - row["svm"]) > 5e-4:  # svm.json rounds to 4 decimals
                raise SystemExit(f"{name}: class {cls}: refitted SVM AP {row['svm']:.4f} but the pipeline's "
                                 f"{pipeline_svm} says {theirs}: other params or seed than the pipeline's?")
    methods = [m for m in ("svm", *(f"{c}_{w}" for c in CLUSTERINGS for w in ("best", "top")), "confidence", "random",
                           *DOMINO_WEIGHTS, "kmeans_best")
               if rows and m in next(iter(rows.values()))]
    mean = {m: float(np.mean([r[m] for r in rows.values()])) for m in methods}
    # the classes whose planted subpopulation the baseline fails on: accuracy in it FAILING_GAP below the rest
    failing = [r for r in rows.values() if r["accuracy_in_out"][0] <= r["accuracy_in_out"][1] - FAILING_GAP]
    mean_failing = {m: float(np.mean([r[m] for r in failing])) for m in methods} if failing else {}
    return {"dataset": name, "data": str(data_dir), "per_class": rows, "mean": mean,
            "mean_failing": mean_failing, "n_failing": len(failing),
            "n_classes_scored": len(rows), "n_classes": len(ds["classes"]), "timings": timings}


def print_table(results: list[dict]) -> None:
    methods = list(results[0]["mean"])
    print("| dataset | class | " + " | ".join(methods)
          + " | modes' val error shares: errors / images | baseline accuracy in / out |")
    print("|---|---|" + "---|" * len(methods) + "---|---|")
    for res in results:
        for cls, row in res["per_class"].items():
            print(f"| {res['dataset']} | {cls} | " + " | ".join(f"{row[m]:.3f}" for m in methods)
                  + f" | {row['errors_shares']} / {row['images_shares']} | "
                  f"{row['accuracy_in_out'][0]:.2f} / {row['accuracy_in_out'][1]:.2f} |")
        print(f"| **{res['dataset']}** | **mean of {res['n_classes_scored']}** | "
              + " | ".join(f"**{res['mean'][m]:.3f}**" for m in methods) + " | | |")
        if res["n_failing"] and res["n_failing"] < res["n_classes_scored"]:
            print(f"| {res['dataset']} | mean of the {res['n_failing']} failing (in >= {FAILING_GAP:.0%} below out) | "
                  + " | ".join(f"{res['mean_failing'][m]:.3f}" for m in methods) + " | | |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="a pipeline copy of one dataset, reproduced up to fit_svms")
    b.add_argument("name", choices=sorted(OVERRIDES))
    b.add_argument("dest", type=Path)
    b.add_argument("--seed", type=int, help="the master seed of the copy (default: params.yaml's)")
    sc = sub.add_parser("score", help="AP of the planted subpopulation per method, side by side")
    sc.add_argument("datasets", nargs="+", metavar="NAME=DATA_DIR",
                    help="a name and a pipeline data folder (with prepared/, baseline/, embeddings/)")
    sc.add_argument("--domino", metavar="PYTHON", help="the Domino venv's python (omit: no Domino columns)")
    sc.add_argument("--params", type=Path, help="params file whose seed, svm: and modes: the methods use "
                    "(default: each data folder's own, the params.yaml beside it)")
    sc.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.name, args.dest, args.seed)
        return
    results = []
    for spec in args.datasets:
        name, _, data_dir = spec.partition("=")
        if not data_dir:
            raise SystemExit(f"'{spec}': expected NAME=DATA_DIR")
        params_file = args.params or Path(data_dir).resolve().parent / "params.yaml"
        if not params_file.is_file():
            raise SystemExit(f"'{spec}': no params file {params_file} (the pipeline's beside the data folder); "
                             "give one with --params")
        params = yaml.safe_load(params_file.read_text())
        start = time.time()
        results.append(score_dataset(name, Path(data_dir), params, args.domino, params.get("seed", SEED),
                                     own_params=args.params is None))
        results[-1]["params"] = str(params_file)
        results[-1]["timings"]["total_s"] = time.time() - start
        print(f"{name}: scored in {results[-1]['timings']['total_s']:.0f} s", file=sys.stderr, flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
