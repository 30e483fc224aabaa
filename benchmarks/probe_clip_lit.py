"""Can the shipped world CLIP reach issue 13's shape bar (97 % zero-shot over
all held-out images) without changing its image embeddings?

    python benchmarks/probe_clip_lit.py [--steps 3000] [--eval-every 500]

The world decoder is conditioned on the world CLIP's *image* embeddings, so
a CLIP trained again from scratch means a decoder trained again (hours of
CPU). Locked-image tuning (LiT, Zhai et al. 2022) keeps the image tower
frozen and trains only the text tower: every image embedding, and so every
SVM, failure mode and decoded image embedding, stays as it is.

1. The ceiling: a multinomial logistic regression on the frozen image
   embeddings of the 60,000 corpus images (shape labels), scored on the
   2,000 held-out ones. Zero-shot classification is a linear classifier on
   the same unit vectors (one weight vector per prompt), so no text tower
   can beat this by much.
2. LiT: the text tower (token and positional embeddings, transformer,
   final norm, projection) and the temperature trained on the corpus's
   (image embedding, caption) pairs with CLIP's loss (captions that repeat in
   a batch are positives of each other, as ``failmap.clip_train``), scored
   every ``--eval-every`` steps as the model card scores the CLIP
   (``failmap.foundation_eval.clip_quality``: shape, colour and context
   zero-shot, all and visible).

Renders the corpus as the foundation pipeline does (its params, seed and
streams; no DVC data needed). Prints one JSON line per evaluation and a
summary; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from failmap.embedder import load_embedder
from failmap.foundation import CORPUS_STREAMS, corpus_spec, load_foundation_params, render_corpus
from failmap.foundation_eval import clip_quality, visible_mask
from failmap.smoke import repo_root


def corpus_part(spec, n: int, seed: int, part: str) -> dict:
    images, captions, rows = render_corpus(spec, n, seed, CORPUS_STREAMS[part], desc=f"{part} corpus")
    return {"images": images, "captions": captions, **{a: np.array([r[a] for r in rows]) for a in rows[0]}}


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 visible: np.ndarray, c_grid=(0.1, 1.0, 10.0, 100.0)) -> list[dict]:
    out = []
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y)
        pred = clf.predict(test_x)
        out.append({"C": c, "all": round(float((pred == test_y).mean()), 4),
                    "visible": round(float((pred[visible] == test_y[visible]).mean()), 4)})
        print("linear probe", json.dumps(out[-1]), flush=True)
    return out


def text_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Everything but the image tower: open_clip's text tower and the temperature."""
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("visual."))
    return [p for p in model.parameters() if p.requires_grad]


def lit(embedder, image_embeds: np.ndarray, captions: np.ndarray, heldout: dict, spec, *, steps: int,
        batch_size: int, lr: float, eval_every: int, seed: int) -> list[dict]:
    model = embedder.model.train()
    params = text_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    unique, caption_ids = np.unique(captions, return_inverse=True)
    tokens = embedder.tokenizer(list(unique))
    caption_ids = torch.from_numpy(caption_ids.astype(np.int64))
    feats = torch.from_numpy(image_embeds).float()
    generator = torch.Generator().manual_seed(seed)
    curve, start = [], time.time()

    def evaluate(step: int) -> None:
        model.eval()
        q = clip_quality(embedder, heldout, spec)
        model.train()
        row = {"step": step, "seconds": round(time.time() - start, 1),
               **{f"{k}_{part}": round(q[part][f"{k}_accuracy"], 4)
                  for part in ("all", "visible") for k in ("shape", "colour", "context")},
               "per_shape_all": {s: round(v, 3) for s, v in q["all"]["shape_accuracy_per_shape"].items()}}
        curve.append(row)
        print(json.dumps(row), flush=True)

    evaluate(0)
    for step in range(1, steps + 1):
        lr_now = lr * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        idx = torch.randint(0, len(caption_ids), (batch_size,), generator=generator)
        cid = caption_ids[idx]
        text = model.encode_text(tokens[cid], normalize=True)
        logits = model.logit_scale.exp() * feats[idx] @ text.T
        same = (cid[:, None] == cid[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100.0))
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    model.eval()
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-every", type=int, default=500)
    args = ap.parse_args()
    torch.manual_seed(0)
    root = repo_root()
    p = load_foundation_params(root / "foundation" / "params.yaml")
    spec = corpus_spec(p)
    train = corpus_part(spec, p.corpus.n_train, p.seed, "train")
    heldout = corpus_part(spec, p.corpus.n_heldout, p.seed, "heldout")
    embedder = load_embedder("world", model_dir=root / "models" / "pretrained" / "world-clip")
    start = time.time()
    train_x = embedder.embed_images(train["images"])
    test_x = embedder.embed_images(heldout["images"])
    print(f"embedded {len(train_x) + len(test_x)} images in {time.time() - start:.0f} s", flush=True)
    labels = {part: np.array([spec.shapes.index(s) for s in d["shape"]]) for part, d in
              (("train", train), ("heldout", heldout))}
    visible = visible_mask(heldout["colour"], heldout["context"])
    probe = linear_probe(train_x, labels["train"], test_x, labels["heldout"], visible)
    curve = lit(embedder, train_x, train["captions"], heldout, spec, steps=args.steps, batch_size=args.batch_size,
                lr=args.lr, eval_every=args.eval_every, seed=p.seed)
    with torch.no_grad():  # the image tower was frozen: its embeddings must not have moved
        moved = float(np.abs(embedder.embed_images(heldout["images"][:256]) - test_x[:256]).max())
    print(json.dumps({"linear_probe": probe, "lit": curve, "image_embeds_max_change": moved,
                      "args": vars(args)}))


if __name__ == "__main__":
    main()
