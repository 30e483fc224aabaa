"""Caption scoring on finished experiments: does each class's failure direction get named?

    python benchmarks/bench_captions.py context_kchoice colour_kchoice [--repo .] [--out FILE]
    python benchmarks/bench_captions.py /tmp/mb/superclass0 ... --sources template subtypes

Each argument is a seed study's name (``scripts/seed_study.py --name``), whose
experiments ``<name>-seed<N>`` are read from the DVC experiments and cache of
``--repo`` (``dvc.api``; nothing is re-run), or a folder a pipeline ran in
(``benchmarks/bench_modes.py build``), read with its own CLIP. For every class, the
captions of its SVM and of its largest failure mode are ranked as the caption
stage ranks them (the experiment's own ``caption`` params and caption bank),
once per ``caption.score`` (``failmap.captions.CAPTION_SCORES``), and scored
against the world's planted value: the share of classes whose top-3 hard
captions name it (issue 14's bar: 90 %), and the same for the top-1 caption
(what the caption arm decodes with ``generate.n_captions: 1``). The ground
truth only scores; no scoring reads it.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import dvc.api
import numpy as np
import yaml

from failmap.caption_sources import check_sources
from failmap.captions import CAPTION_SCORES, describe_class, planted_attribute_hits
from failmap.data import load_meta
from failmap.embedder import load_embedder
from failmap.embeddings import load_embeddings
from failmap.modes import ClassModes, fit_all_modes, load_modes
from failmap.predictions import load_predictions
from failmap.smoke import repo_root
from failmap.stage import BASELINE_PREDICTIONS, CLIP_DIR, EMBEDDINGS, PREPARED, SVM_DIR
from failmap.svm import ClassSVM, load_svms

# what the caption stage reads, besides the CLIP
FILES = ["params.yaml", f"{PREPARED}/meta.json", f"{BASELINE_PREDICTIONS}/val.csv", f"{EMBEDDINGS}/val.npz",
         f"{SVM_DIR}/svms.npz", f"{SVM_DIR}/modes.npz"]
DIRECTIONS = ("svm", "top_mode")


def experiment_refs(repo: Path, study: str) -> dict[str, str]:
    """``<study>-seed<N>`` -> its git ref, from the repository's experiment refs."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo, check=True,
                         capture_output=True, text=True).stdout.split()
    refs = {ref.rsplit("/", 1)[1]: ref for ref in out if ref.rsplit("/", 1)[1].startswith(f"{study}-seed")}
    if not refs:
        raise SystemExit(f"no experiments named {study}-seed<N> in {repo} (git for-each-ref refs/exps)")
    return dict(sorted(refs.items()))


def materialise(repo: Path, ref: str, dest: Path) -> None:
    """The experiment's FILES under ``dest``; refused unless it ran on the shipped world CLIP."""
    for name in FILES:
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with dvc.api.open(name, repo=str(repo), rev=ref, mode="rb") as f:
            path.write_bytes(f.read())
    source = yaml.safe_load((dest / "params.yaml").read_text())["clip"]["source"]
    if source != "world":
        raise SystemExit(f"{ref}: clip.source {source!r}; an experiment is scored with the shipped world CLIP only")


def score_experiment(folder: Path, embedder, caption_sources: list[str] | None = None,
                     modes_params: dict | None = None) -> dict:
    """Hit rates of the folder's classes (its ``caption`` params; ``caption_sources`` replaces their sources;
    ``modes_params``, a params dict, refits the modes with its ``modes`` settings instead of reading them)."""
    params = yaml.safe_load((folder / "params.yaml").read_text())
    cap = params["caption"]
    meta = load_meta(folder / PREPARED)
    classes = meta["classes"]
    if not meta.get("planted"):
        raise SystemExit(f"{folder}: its data has no planted value per class to score captions against")
    planted = {name: d["phrase"] for name, d in meta["planted"].items()}
    sources = check_sources(caption_sources or cap["sources"], template=cap["template"],
                            adjectives=cap["adjectives"] or meta["vocab"]["adjectives"],
                            contexts=cap["contexts"] or meta["vocab"]["contexts"], classes=classes, meta=meta,
                            user_subtypes=cap["subtypes"], caption_file=cap["file"], corpus_split=None)
    val = load_predictions(folder / BASELINE_PREDICTIONS / "val.csv")
    X = load_embeddings(folder / EMBEDDINGS, "val", val["id"])
    pre, svms, _ = load_svms(folder / SVM_DIR / "svms.npz")
    if modes_params is None:
        modes, _ = load_modes(folder / SVM_DIR / "modes.npz")
    else:
        m = modes_params["modes"]
        modes = fit_all_modes(X, val["label"], val["correct"], pre, classes, m["max_modes"], m["min_mode_errors"],
                              m["min_silhouette"], params["seed"], params["svm"]["min_errors"], m["cluster"],
                              max_clusters=m["max_clusters"], min_top_share=m["min_top_share"])
    hard = {(d, s): {} for d in DIRECTIONS for s in CAPTION_SCORES}
    for k, name in enumerate(classes):
        directions = {"svm": svms[k] if isinstance(svms[k], ClassSVM) else None,
                      "top_mode": modes[k].modes[0] if isinstance(modes[k], ClassModes) else None}
        for direction, obj in directions.items():
            if obj is None:
                continue
            for score in CAPTION_SCORES:
                retrieval = (X[val["label"] == k], embedder.logit_scale) if score == "retrieval" else None
                out = describe_class(sources.bank(k, name), embedder.embed_texts, cap["template"], name, pre, obj,
                                     cap["top_k"], cap["diversity"], retrieval)
                hard[direction, score][name] = [t["caption"] for t in out["hard"]]
    result = {}
    for (direction, score), tops in hard.items():
        top3, top1 = planted_attribute_hits(tops, planted, k=3), planted_attribute_hits(tops, planted, k=1)
        result[f"{direction}/{score}"] = {"top3": top3["fraction"], "top1": top1["fraction"],
                                          "missed": [n for n, hit in top3["per_class"].items() if not hit],
                                          "hard_top3": {n: tops[n][:3] for n in tops}}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="+", help="seed study names, or folders a pipeline ran in")
    ap.add_argument("--repo", type=Path, default=repo_root(), help="the repository holding the studies")
    ap.add_argument("--sources", nargs="+", default=None, help="caption.sources for every target")
    ap.add_argument("--refit-modes", type=Path, default=None, metavar="PARAMS",
                    help="refit each target's modes with this params file's modes settings (e.g. params.yaml)")
    ap.add_argument("--out", type=Path, default=None, help="write every figure here as JSON")
    args = ap.parse_args()
    modes_params = yaml.safe_load(args.refit_modes.read_text()) if args.refit_modes else None
    shipped = load_embedder("world", model_dir=repo_root() / "models" / "pretrained" / "world-clip")
    shipped.show_progress = False
    results = {}
    for target in args.targets:
        folder = Path(target)
        if folder.is_dir():  # a pipeline folder: its own CLIP, as its caption stage loaded it
            c = yaml.safe_load((folder / "params.yaml").read_text())["clip"]
            embedder = load_embedder(c["source"], c["arch"], c["pretrained"], folder / CLIP_DIR, "cpu")
            embedder.show_progress = False
            group = re.sub(r"\d+$", "", folder.name)  # colour0 .. colour4: one row of the summary
            scored = {folder.name: score_experiment(folder, embedder, args.sources, modes_params)}
        else:  # a seed study: the experiments ran on the shipped world CLIP (checked in materialise)
            group, scored = target, {}
            for name, ref in experiment_refs(args.repo, target).items():
                with tempfile.TemporaryDirectory() as tmp:
                    materialise(args.repo, ref, Path(tmp))
                    scored[name] = score_experiment(Path(tmp), shipped, args.sources, modes_params)
        for name, result in scored.items():
            print(name, {key: (r["top3"], r["top1"]) for key, r in result.items()}, flush=True)
        results.setdefault(group, {}).update(scored)
    print(f"\n{'target':<18} {'direction/score':<22} {'top-3 hit':>9} {'top-1 hit':>9}  (mean over seeds)")
    summary = {}
    for study, runs in results.items():
        for key in next(iter(runs.values())):
            top3 = float(np.mean([r[key]["top3"] for r in runs.values()]))
            top1 = float(np.mean([r[key]["top1"] for r in runs.values()]))
            summary[f"{study} {key}"] = {"top3": round(top3, 3), "top1": round(top1, 3), "n_seeds": len(runs)}
            print(f"{study:<18} {key:<22} {top3:>9.3f} {top1:>9.3f}")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "per_experiment": results}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
