"""Stage caption: name each class's failure direction in words (METHOD.md
step 4) and show its hardest and easiest test images."""
import numpy as np

from failmap.captions import (SummaryRow, caption_bank, planted_attribute_hits, reference_caption,
                              score_captions, top_captions, write_summary_markdown)
from failmap.data import load_meta, load_split
from failmap.embedder import load_embedder
from failmap.io import read_json, write_json
from failmap.plots import image_grid
from failmap.stage import CAPTIONS_DIR, CLIP_DIR, METRICS, PLOTS, PREPARED, SVM_DIR, run_stage
from failmap.svm import ClassSVM, load_svms

GRID = 16  # hardest / easiest test images shown per class


def main():
    with run_stage("caption") as (p, run):
        c, cap = p.clip, p.caption
        meta = load_meta(PREPARED)
        classes = meta["classes"]
        pre, svms, _ = load_svms(f"{SVM_DIR}/svms.npz")
        svm_metrics = read_json(f"{METRICS}/svm.json")["per_class"]
        embedder = load_embedder(c.source, c.arch, c.pretrained, CLIP_DIR, c.device, c.batch_size)
        adjectives = cap.adjectives if cap.adjectives is not None else meta["vocab"]["adjectives"]
        contexts = cap.contexts if cap.contexts is not None else meta["vocab"]["contexts"]
        test = load_split(PREPARED, "test")
        with np.load(f"{SVM_DIR}/decisions.npz") as z:
            decision = z["test_decision"]

        tops, rows = {}, []
        planted = {name: d["phrase"] for name, d in meta.get("planted", {}).items() if "phrase" in d}
        for k, name in enumerate(classes):
            svm = svms[k]
            if not isinstance(svm, ClassSVM):
                rows.append(SummaryRow(name, planted=planted.get(name), skip_reason=svm.reason))
                continue
            bank = caption_bank(cap.template, name, adjectives, contexts)
            scores = score_captions(bank, embedder.embed_texts, reference_caption(cap.template, name), pre, svm)
            tops[name] = top_captions(bank, scores, cap.top_k)
            hard = [t["caption"] for t in tops[name]["hard"]]
            easy = [t["caption"] for t in tops[name]["easy"]]
            quality = svm_metrics.get(name, {}).get("svm", {})
            rows.append(SummaryRow(name, quality.get("balanced_accuracy"), quality.get("auroc"),
                                   quality.get("subpop_ap"), hard, easy, planted.get(name)))
            order = np.flatnonzero(test.labels == k)
            order = order[np.argsort(decision[order], kind="stable")]
            image_grid(test.images[order[:GRID]], f"{PLOTS}/captions/{name}_hard.png",
                       title=f"{name}, hardest test images — {hard[0]}")
            image_grid(test.images[order[::-1][:GRID]], f"{PLOTS}/captions/{name}_easy.png",
                       title=f"{name}, easiest test images — {easy[0]}")

        metrics = {"top": tops, "n_captions_per_class": len(caption_bank(cap.template, "x", adjectives, contexts))}
        if planted:
            hits = planted_attribute_hits({n: [t["caption"] for t in t_["hard"]] for n, t_ in tops.items()},
                                          planted, k=3)
            metrics["planted_in_top3_hard"] = hits
        write_json(f"{METRICS}/captions.json", metrics)
        write_summary_markdown(f"{CAPTIONS_DIR}/summary.md", rows)


if __name__ == "__main__":
    main()
