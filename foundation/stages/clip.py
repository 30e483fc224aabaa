"""Stage clip: train the world CLIP on the foundation corpus, export it as it
ships (float16 safetensors + open_clip config) and write its model card with
its zero-shot quality on the held-out images, measured on the shipped file."""
import time

from failmap.clip_train import train_clip
from failmap.embedder import load_embedder
from failmap.foundation import (CLIP_NAME, CORPUS_DIR, METRICS_DIR, WORK_DIR, corpus_card, corpus_spec,
                                built_dir, export_clip, hardware, load_corpus, load_foundation_params,
                                write_card)
from failmap.foundation_eval import clip_quality
from failmap.io import write_json
from failmap.params import as_dict


def main():
    p = load_foundation_params()
    spec = corpus_spec(p)
    corpus = load_corpus(CORPUS_DIR, "train")
    start = time.perf_counter()
    train = train_clip(corpus["images"], corpus["captions"], f"{WORK_DIR}/clip", **as_dict(p.clip), seed=p.seed)
    out = export_clip(f"{WORK_DIR}/clip", built_dir(CLIP_NAME))
    embedder = load_embedder("world", model_dir=out)
    quality = clip_quality(embedder, load_corpus(CORPUS_DIR, "heldout"), spec)
    history = train.pop("history")
    card = dict(model=CLIP_NAME, kind="open_clip CLIP (ModifiedResNet image tower), float16 safetensors",
                load="open_clip.create_model('world-clip', pretrained='weights.safetensors') after "
                     "open_clip.add_model_config('world-clip.json'); failmap: load_embedder('world', model_dir=...)",
                corpus=corpus_card(spec, len(corpus["images"]), p.seed), params=as_dict(p.clip), training=train,
                wall_seconds=round(time.perf_counter() - start, 1), hardware=hardware(),
                quality_heldout=quality, space=embedder.space)
    write_card(out, card)
    write_json(f"{METRICS_DIR}/clip.json", dict(quality_heldout=quality, final_loss=train["final_loss"],
                                                 train_seconds=train["train_seconds"]))
    write_json(f"{METRICS_DIR}/clip_loss.json", history)


if __name__ == "__main__":
    main()
