"""Quality figures of the foundation models, on held-out foundation images
(scored with ``failmap.evaluation``).

- CLIP: zero-shot shape, colour and context over every value the corpus has.
- The shape judge: a small CNN trained on the unbiased corpus to name the
  shape, independent of CLIP and of any task's biased baseline.
- The decoder: images decoded from "a photo of a {shape}" recognised as that
  shape (CLIP zero-shot and the judge); colour and context named in a caption
  shown (CLIP zero-shot); images decoded from held-out image embeddings keep
  their shape (the judge) and colour / context (CLIP).
- Sampling: guidance and DDIM steps change every decoder figure (a guidance
  that sharpens text prompts over-saturates images decoded from image
  embeddings), so ``select_sampling`` picks them, a guidance per condition
  kind, on one half of the held-out images and the report scores the other
  half (``heldout_halves``).

"Visible" figures leave out the objects drawn in a colour within
``world.MIN_CONTRAST`` of their background (white in the snow, black at
night, ...): the task worlds never draw those by default.
"""
from __future__ import annotations

import numpy as np

from failmap.captions import fill_caption
from failmap.evaluation import DEFAULT_TEMPLATE, Attribute, zero_shot_report


def visible_mask(colours, contexts) -> np.ndarray:
    from failmap.world import MIN_CONTRAST, contrast
    return np.array([contrast(c, x) >= MIN_CONTRAST for c, x in zip(colours, contexts)])


def corpus_attributes(colours, contexts, colour_names: list[str], context_names: list[str]) -> dict[str, Attribute]:
    from failmap.world import CONTEXT_PHRASE
    return {"colour": Attribute(values=np.asarray(colours), phrases={c: c for c in colour_names}, slot="adjective"),
            "context": Attribute(values=np.asarray(contexts), phrases={c: CONTEXT_PHRASE[c] for c in context_names},
                                 slot="context")}


def world_attributes(ground_truth: dict[str, dict], ids: np.ndarray, colours: list[str],
                     contexts: list[str]) -> dict[str, Attribute]:
    """``corpus_attributes`` of a task world's images, from their ground_truth.csv rows."""
    missing = [i for i in ids if i not in ground_truth]
    if missing:
        raise KeyError(f"{len(missing)} ids have no ground-truth row (first: {missing[0]})")
    return corpus_attributes([ground_truth[i]["colour"] for i in ids], [ground_truth[i]["context"] for i in ids],
                             colours, contexts)


def clip_quality(embedder, heldout: dict, spec) -> dict:
    """Zero-shot accuracy of shape, colour and context on the held-out corpus,
    over all images and over the visible ones."""
    labels = np.array([spec.shapes.index(s) for s in heldout["shape"]])
    out = {}
    for name, mask in (("all", np.ones(len(labels), bool)), ("visible", visible_mask(heldout["colour"],
                                                                                       heldout["context"]))):
        attrs = corpus_attributes(heldout["colour"][mask], heldout["context"][mask], spec.colours, spec.contexts)
        zs = zero_shot_report(embedder, heldout["images"][mask], labels[mask], spec.shapes, attrs)
        out[name] = dict(shape_accuracy=zs["class_accuracy"], shape_accuracy_per_shape=zs["class_accuracy_per_class"],
                         colour_accuracy=zs["colour_accuracy"], context_accuracy=zs["context_accuracy"], n=zs["n"])
    return out


# ----------------------------------------------------------------- shape judge
def train_judge(corpus: dict, shapes: list[str], *, epochs: int = 4, seed: int = 0, device: str = "cpu"):
    """A SmallCNN that names the shape, trained on the (unbiased) corpus."""
    from failmap.models import build_classifier
    from failmap.train import fit
    labels = np.array([shapes.index(s) for s in corpus["shape"]])
    model = build_classifier("small_cnn", len(shapes), 32, seed=seed)
    fit(model, corpus["images"], labels, epochs=epochs, batch_size=128, lr=0.05, momentum=0.9,
        weight_decay=5e-4, augment_data=True, seed=seed, device=device, desc="shape judge")
    return model


def judge_accuracy(judge, images: np.ndarray, labels: np.ndarray, shapes: list[str], device: str = "cpu") -> dict:
    from failmap.train import predict_proba
    pred = predict_proba(judge, images, device).argmax(1)
    return dict(accuracy=float((pred == labels).mean()),
                per_shape={s: float((pred[labels == k] == k).mean()) for k, s in enumerate(shapes)
                           if (labels == k).any()})


# -------------------------------------------------------------------- decoder
def decoder_quality(decoder, embedder, judge, heldout: dict, spec, *, n_per_shape: int = 32,
                    n_heldout: int = 256, seed: int = 0, device: str = "cpu",
                    **decode_kwargs) -> tuple[dict, dict[str, np.ndarray]]:
    """The decoder bars (module docstring). Returns (figures, decoded images)."""
    from failmap.world import CONTEXT_PHRASE
    shapes = spec.shapes
    rng = np.random.default_rng(seed)
    report, images = {}, {}

    labels = np.repeat(np.arange(len(shapes)), n_per_shape)
    prompts = [fill_caption(DEFAULT_TEMPLATE, shapes[k]) for k in labels]
    decoded = decoder.decode_captions(prompts, embedder.embed_texts(prompts), seed=seed, **decode_kwargs)
    zs = zero_shot_report(embedder, decoded, labels, shapes)
    report["shape_prompt"] = dict(clip_accuracy=zs["class_accuracy"], clip_per_shape=zs["class_accuracy_per_class"],
                                  judge=judge_accuracy(judge, decoded, labels, shapes, device), n=len(labels))
    images["shape_prompt"], images["shape_prompt_labels"] = decoded, labels

    # every colour and every context with a random shape, one prompt each
    for name, values, slot, phrase in (("colour", spec.colours, "adjective", lambda v: v),
                                       ("context", spec.contexts, "context", lambda v: CONTEXT_PHRASE[v])):
        pairs = [(int(rng.integers(len(shapes))), v) for v in values for _ in range(max(2, n_per_shape // 4))]
        prompts = [fill_caption(DEFAULT_TEMPLATE, shapes[k], **{slot: phrase(v)}) for k, v in pairs]
        decoded = decoder.decode_captions(prompts, embedder.embed_texts(prompts), seed=seed + 1, **decode_kwargs)
        cls = np.array([k for k, _ in pairs])
        attr = Attribute(values=np.array([v for _, v in pairs]), phrases={v: phrase(v) for v in values}, slot=slot)
        zs = zero_shot_report(embedder, decoded, cls, shapes, {name: attr})
        report[f"{name}_prompt"] = dict(clip_accuracy=zs[f"{name}_accuracy"], n=len(pairs))
        images[f"{name}_prompt"] = decoded

    # decoded from held-out image embeddings: the shape kept?
    pick = rng.choice(len(heldout["images"]), size=min(n_heldout, len(heldout["images"])), replace=False)
    pick = pick[visible_mask(heldout["colour"][pick], heldout["context"][pick])]
    real = heldout["images"][pick]
    truth = np.array([shapes.index(s) for s in heldout["shape"][pick]])
    decoded = decoder.decode_images(embedder.embed_images(real), seed=seed + 2, **decode_kwargs)
    attrs = corpus_attributes(heldout["colour"][pick], heldout["context"][pick], spec.colours, spec.contexts)
    zs = zero_shot_report(embedder, decoded, truth, shapes, attrs)
    report["from_image_embedding"] = dict(judge=judge_accuracy(judge, decoded, truth, shapes, device),
                                          judge_on_the_real_images=judge_accuracy(judge, real, truth, shapes, device),
                                          clip_shape_accuracy=zs["class_accuracy"],
                                          clip_colour_accuracy=zs["colour_accuracy"],
                                          clip_context_accuracy=zs["context_accuracy"], n=len(pick))
    images["real"], images["from_image_embedding"] = real, decoded
    return report, images


# -------------------------------------------------------------- sampling choice
DECODER_BARS = {"shape_prompt_clip": 0.90, "shape_prompt_judge": 0.90, "colour_prompt_clip": 0.95,
                "context_prompt_clip": 0.95, "from_image_judge": 0.90}  # foundation-models issue
TEXT_BARS = ("shape_prompt_clip", "shape_prompt_judge", "colour_prompt_clip", "context_prompt_clip")  # from captions
IMAGE_BARS = ("from_image_judge",)                                                  # from image embeddings


def decoder_summary(report: dict) -> dict[str, float]:
    """The five barred figures of a ``decoder_quality`` report."""
    return dict(shape_prompt_clip=report["shape_prompt"]["clip_accuracy"],
                shape_prompt_judge=report["shape_prompt"]["judge"]["accuracy"],
                from_image_judge=report["from_image_embedding"]["judge"]["accuracy"],
                colour_prompt_clip=report["colour_prompt"]["clip_accuracy"],
                context_prompt_clip=report["context_prompt"]["clip_accuracy"])


def heldout_halves(heldout: dict) -> tuple[dict, dict]:
    """(selection, report): the even and the odd held-out images, disjoint."""
    n = len(heldout["images"])
    return tuple({k: np.asarray(v)[start::2] for k, v in heldout.items() if len(v) == n} for start in (0, 1))


SELECTION_SAMPLES = dict(n_per_shape=16, n_heldout=192)  # what each grid point of the selection decodes
SELECTION_SEED_OFFSET = 1000                             # the selection's seed: the report's + this


def select_sampling(decoder, embedder, judge, heldout: dict, spec, *, guidance_grid, steps_grid, seed: int,
                    samplers=(None,), **quality_kwargs) -> tuple[dict, list[dict]]:
    """Every (sampler, guidance, steps) of the grids scored with
    ``decoder_quality`` on ``heldout`` (the selection half); ``samplers``:
    ``failmap.decoders.samplers`` names, None for the decoder's own scheduler.
    Returns (``pick_sampling`` of the rows, one row per grid point)."""
    from tqdm import tqdm
    rows = []
    points = [(m, float(g), int(s)) for m in samplers for g in guidance_grid for s in steps_grid]
    for m, g, s in tqdm(points, desc="select sampling", unit="setting"):
        report, _ = decoder_quality(decoder, embedder, judge, heldout, spec, seed=seed, guidance_scale=g,
                                    num_inference_steps=s, sampler=m, **quality_kwargs)
        rows.append(sampling_row(decoder_summary(report), guidance_scale=g, num_inference_steps=s, sampler=m))
    return pick_sampling(rows), rows


def sampling_row(figures: dict, **setting) -> dict:
    """One grid point's figures and, per condition kind, its weakest figure relative to its bar."""
    return dict(**setting, **figures,
                **{f"weakest_{kind}_vs_bar": min(figures[k] / DECODER_BARS[k] for k in bars)
                   for kind, bars in (("text", TEXT_BARS), ("image", IMAGE_BARS))})


def pick_sampling(rows: list[dict]) -> dict:
    """The sampling settings the rows (``select_sampling``'s) choose. A
    guidance per condition kind (``bridge.sampling_for``): at each (sampler,
    step count), ``text_guidance_scale`` maximises the weakest prompt figure
    relative to its bar (min over ``TEXT_BARS`` of figure / bar) and
    ``guidance_scale`` the weakest image-embedding figure (``IMAGE_BARS``);
    the two kinds are decoded apart, so the pair's figures are those rows'
    own. The (sampler, step count) maximises the weaker kind, fewer steps on a
    tie (and lower guidance). A row without ``sampler`` used the decoder's own
    scheduler; the pick names its sampler only when the rows name one."""
    def best(candidates: list[dict], kind: str) -> dict:
        return max(candidates, key=lambda r: (r[f"weakest_{kind}_vs_bar"], -r["guidance_scale"]))

    picks = []
    for m, s in sorted({(r.get("sampler"), r["num_inference_steps"]) for r in rows}, key=lambda k: (k[1], str(k[0]))):
        at = [r for r in rows if (r.get("sampler"), r["num_inference_steps"]) == (m, s)]
        text, image = best(at, "text"), best(at, "image")
        picks.append(dict(sampler=m, num_inference_steps=s, guidance_scale=image["guidance_scale"],
                          text_guidance_scale=text["guidance_scale"],
                          weakest=min(text["weakest_text_vs_bar"], image["weakest_image_vs_bar"])))
    pick = max(picks, key=lambda r: (r["weakest"], -r["num_inference_steps"]))
    return {k: v for k, v in pick.items() if k != "weakest" and not (k == "sampler" and v is None)}
