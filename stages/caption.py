"""Stage caption: name each class's failure direction in words (METHOD.md
step 4) and show its hardest and easiest test images, for the class's one
SVM direction and for each of its failure modes (failmap.modes).

The caption bank comes from ``caption.sources`` (failmap.caption_sources),
all of it read and checked before any model loads. The top hard captions go
to ``data/captions/hard_captions.json`` (what generate reads); the metrics add
each caption's source and the slot that carries its score. A mode's captions
are scored by the mode's decision function exactly as the SVM's are
(``describe_class`` takes either); both sets are written, whichever
``modes.drive`` steers generate. ``caption.score: retrieval`` scores them by
CLIP zero-shot retrieval on the class's val images instead
(``failmap.captions.retrieval_scorer``)."""
import numpy as np

from failmap.caption_sources import check_sources
from failmap.captions import (HARD_CAPTIONS_FILE, SummaryRow, cached_embed_texts, describe_class, mode_planted_hits,
                              planted_attribute_hits, write_hard_captions, write_summary_markdown)
from failmap.data import load_meta, load_split
from failmap.embedder import load_embedder
from failmap.embeddings import load_embeddings
from failmap.io import read_json, write_json
from failmap.modes import ClassModes, load_modes
from failmap.plots import image_grid
from failmap.predictions import load_predictions
from failmap.stage import (BASELINE_PREDICTIONS, CAPTIONS_DIR, CLIP_DIR, EMBEDDINGS, METRICS, PLOTS, PREPARED,
                           SVM_DIR, run_stage)
from failmap.svm import ClassSVM, load_svms

GRID = 16  # hardest / easiest test images shown per class (and per mode)


def main():
    with run_stage("caption") as p:
        c, cap = p.clip, p.caption
        meta = load_meta(PREPARED)
        classes = meta["classes"]
        adjectives = cap.adjectives if cap.adjectives is not None else meta["vocab"]["adjectives"]
        contexts = cap.contexts if cap.contexts is not None else meta["vocab"]["contexts"]
        has_corpus = "corpus" in cap.sources and "corpus" in meta.get("splits", {})
        corpus = load_split(PREPARED, "corpus") if has_corpus else None
        try:  # every source read and checked before any model loads
            sources = check_sources(cap.sources, template=cap.template, adjectives=adjectives, contexts=contexts,
                                    classes=classes, meta=meta, user_subtypes=cap.subtypes, caption_file=cap.file,
                                    corpus_split=corpus)
        except ValueError as error:
            raise SystemExit(f"caption: {error}")
        pre, svms, _ = load_svms(f"{SVM_DIR}/svms.npz")
        svm_metrics = read_json(f"{METRICS}/svm.json")["per_class"]
        embedder = load_embedder(c.source, c.arch, c.pretrained, CLIP_DIR, c.device, c.batch_size)
        embed_texts = cached_embed_texts(embedder.embed_texts)  # a class's bank: once for its SVM and its modes
        test = load_split(PREPARED, "test")
        modes, _ = load_modes(f"{SVM_DIR}/modes.npz")
        with np.load(f"{SVM_DIR}/decisions.npz") as z:
            decision, mode_scores = z["test_decision"], z["test_mode_scores"]
        if cap.score == "retrieval":  # captions scored on the val images the directions were fitted on
            val = load_predictions(f"{BASELINE_PREDICTIONS}/val.csv")
            val_embeds, logit_scale = load_embeddings(EMBEDDINGS, "val", val["id"]), embedder.logit_scale

        def retrieval(k: int):
            return (val_embeds[val["label"] == k], logit_scale) if cap.score == "retrieval" else None

        tops, ranked, rows, bank_sizes, mode_tops = {}, {}, [], {}, {}
        planted = {name: d["phrase"] for name, d in meta.get("planted", {}).items()
                   if isinstance(d, dict) and "phrase" in d}
        for k, name in enumerate(classes):
            svm = svms[k]
            bank = sources.bank(k, name)
            order = np.flatnonzero(test.labels == k)
            if isinstance(modes[k], ClassModes):  # a class's modes are captioned whether or not it has an SVM
                mode_tops[name] = []
                for j, mode in enumerate(modes[k].modes):
                    described = describe_class(bank, embed_texts, cap.template, name, pre, mode, cap.top_k,
                                               cap.diversity, retrieval(k))
                    described.pop("ranked_hard")
                    mode_tops[name].append({"share": mode.share, **described})
                    # hardest by mode score = most like the mode (the mode's decision value is minus the score)
                    by_mode = order[np.argsort(-mode_scores[order, j], kind="stable")]
                    image_grid(test.images[by_mode[:GRID]], f"{PLOTS}/captions/{name}_mode{j}_hard.png",
                               title=f"{name}, mode {j} ({mode.share:.0%} of val errors), most like it: "
                                     f"{described['hard'][0]['caption']}")
            if not isinstance(svm, ClassSVM):
                rows.append(SummaryRow(name, planted=planted.get(name), skip_reason=svm.reason))
                continue
            bank_sizes[name] = len(bank)
            top = describe_class(bank, embed_texts, cap.template, name, pre, svm, cap.top_k, cap.diversity,
                                 retrieval(k))
            ranked[name] = top.pop("ranked_hard")
            tops[name] = top
            hard = [t["caption"] for t in top["hard"]]
            easy = [t["caption"] for t in top["easy"]]
            quality = svm_metrics.get(name, {}).get("svm", {})
            rows.append(SummaryRow(name, quality.get("balanced_accuracy"), quality.get("auroc"),
                                   quality.get("subpop_ap"), hard, easy, planted.get(name),
                                   hard_carried_by=[t["carried_by"] for t in top["hard"]],
                                   easy_carried_by=[t["carried_by"] for t in top["easy"]]))
            order = order[np.argsort(decision[order], kind="stable")]
            image_grid(test.images[order[:GRID]], f"{PLOTS}/captions/{name}_hard.png",
                       title=f"{name}, hardest test images: {hard[0]}")
            image_grid(test.images[order[::-1][:GRID]], f"{PLOTS}/captions/{name}_easy.png",
                       title=f"{name}, easiest test images: {easy[0]}")

        metrics = {"top": tops, "ranked_hard": ranked, "sources": list(cap.sources), "diversity": cap.diversity,
                   "n_captions_per_class": max(bank_sizes.values(), default=0), "bank_size": bank_sizes,
                   "modes": mode_tops}
        if planted:
            hits = planted_attribute_hits({n: [t["caption"] for t in t_["hard"]] for n, t_ in tops.items()},
                                          planted, k=3)
            metrics["planted_in_top3_hard"] = hits
            metrics["planted_in_top3_ranked_hard"] = planted_attribute_hits(ranked, planted, k=3)  # diversity 0
            # top 1 too: the caption arm decodes the top generate.n_captions (default 1) of what drives it
            metrics["planted_in_top1_hard"] = planted_attribute_hits(
                {n: [t["caption"] for t in t_["hard"]] for n, t_ in tops.items()}, planted, k=1)
            mode_hard = {n: [[t["caption"] for t in m["hard"]] for m in ms] for n, ms in mode_tops.items()}
            metrics["modes_planted_in_top3_hard"] = mode_planted_hits(mode_hard, planted, k=3)
            metrics["modes_planted_in_top1_hard"] = mode_planted_hits(mode_hard, planted, k=1)
            # the captions the caption arm decodes (modes.drive): the SVM's, or the largest mode's (modes, top_mode)
            metrics["drive_planted_in_top3_hard"] = {
                "drive": p.modes.drive,
                **(hits if p.modes.drive == "svm" else metrics["modes_planted_in_top3_hard"]["top_mode"])}
        write_hard_captions(f"{CAPTIONS_DIR}/{HARD_CAPTIONS_FILE}", tops, mode_tops)
        write_json(f"{METRICS}/captions.json", metrics)
        write_summary_markdown(f"{CAPTIONS_DIR}/summary.md", rows)


if __name__ == "__main__":
    main()
