"""Does prompt ensembling lift the shipped world CLIP's shape zero-shot to issue 13's bar (97 %)?

    python benchmarks/probe_clip_prompts.py

Renders the foundation corpus's held-out images exactly as the foundation
pipeline does (its params, seed and stream; no DVC data needed) and classifies
their shape against four prompt sets per shape: the plain "a photo of a
{shape}" (what the model card reports), and that prompt averaged over every
colour, over every context, and over both (CLIP's prompt ensembling: each
set's text embeddings averaged, as the attribute zero-shot already does).
Prints the accuracy over all images and over the visible ones (shape colour
distinct from its background), and per shape.
"""
from __future__ import annotations

import json

import numpy as np

from failmap.captions import fill_caption
from failmap.embedder import load_embedder
from failmap.evaluation import DEFAULT_TEMPLATE, _classify
from failmap.foundation import CORPUS_STREAMS, corpus_spec, load_foundation_params, render_corpus
from failmap.foundation_eval import visible_mask
from failmap.smoke import repo_root
from failmap.world import CONTEXT_PHRASE


def main() -> None:
    root = repo_root()
    p = load_foundation_params(root / "foundation" / "params.yaml")
    spec = corpus_spec(p)
    images, _, rows = render_corpus(spec, p.corpus.n_heldout, p.seed, CORPUS_STREAMS["heldout"], desc="held-out corpus")
    labels = np.array([spec.shapes.index(r["shape"]) for r in rows])
    visible = visible_mask([r["colour"] for r in rows], [r["context"] for r in rows])
    embedder = load_embedder("world", model_dir=root / "models" / "pretrained" / "world-clip")
    image_embeds = embedder.embed_images(images)
    colours = [None, *spec.colours]
    contexts = [None, *(CONTEXT_PHRASE[c] for c in spec.contexts)]
    slot_sets = {"plain": [(None, None)], "colours": [(c, None) for c in colours],
                 "contexts": [(None, x) for x in contexts], "colours x contexts": [(c, x) for c in colours for x in contexts]}
    results = {}
    for name, slots in slot_sets.items():
        prompt_sets = [[fill_caption(DEFAULT_TEMPLATE, shape, a, x) for a, x in slots] for shape in spec.shapes]
        pred = _classify(image_embeds, prompt_sets, embedder)
        results[name] = {"all": round(float((pred == labels).mean()), 4),
                         "visible": round(float((pred[visible] == labels[visible]).mean()), 4),
                         "per_shape": {s: round(float((pred[labels == k] == k).mean()), 3)
                                       for k, s in enumerate(spec.shapes)}}
        print(f"{name:>20}: all {results[name]['all']:.4f}  visible {results[name]['visible']:.4f}", flush=True)
    print(json.dumps({"n": len(labels), "n_visible": int(visible.sum()), "results": results}))


if __name__ == "__main__":
    main()
