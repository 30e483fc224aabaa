"""Stage pretrain_decoder: put the world decoder the params ask for in
models/decoder, then check it draws what captions say of this task's classes.

- decoder.source world: the shipped foundation decoder
  (models/pretrained/world-decoder), checked against its model card; nothing
  is trained.
- decoder.source corpus: train one on the corpus's CLIP image embeddings.
- decoder.source unclip: nothing to do here (generate loads the pretrained one)."""

from failmap.data import load_meta, load_split
from failmap.decoders.loader import check_compatible, load_decoder, sampling_settings
from failmap.decoders.quality import decoder_report
from failmap.decoders.training import train_decoder
from failmap.device import resolve_device
from failmap.embedder import load_embedder
from failmap.foundation import DECODER_NAME, install_shipped
from failmap.io import write_json
from failmap.models import load_classifier
from failmap.params import as_dict
from failmap.plots import image_grid
from failmap.stage import BASELINE_MODEL, CLIP_DIR, DECODER_DIR, METRICS, PLOTS, PREPARED, run_stage

N_PER_CLASS = 16  # decoded class-prompt images per class for the quality report


def main():
    with run_stage("pretrain_decoder") as p:
        c, d = p.clip, p.decoder
        meta = load_meta(PREPARED)
        if d.source == "unclip":
            write_json(f"{DECODER_DIR}/external.json", {"source": d.source, "model": d.model,
                                                       "text_model": d.text_model})
            write_json(f"{METRICS}/decoder.json", {"source": d.source, "trained": False})
            return
        embedder = load_embedder(c.source, c.arch, c.pretrained, CLIP_DIR, c.device, c.batch_size)
        if d.source == "world":
            card = install_shipped(DECODER_NAME, DECODER_DIR)
            metrics = {"source": "world", "trained": False, "steps_done": card["training"]["steps_done"],
                       "foundation_heldout": card["quality_heldout"]}
        else:
            if "corpus" not in meta["splits"]:
                raise SystemExit(f"decoder.source: corpus needs a captioned corpus split, but data.source "
                                 f"'{p.data.source}' has none — or set decoder.source: unclip")
            corpus = load_split(PREPARED, "corpus")
            image_embeds = embedder.embed_images(corpus.images)
            text_embeds = embedder.embed_texts_per_row(corpus.captions)
            train_metrics = train_decoder(corpus.images, image_embeds, text_embeds, DECODER_DIR,
                                          space=embedder.space, seed=p.seed, device=d.device, **as_dict(d.train))
            metrics = {"source": "corpus", "trained": True, "final_loss": train_metrics["final_loss"],
                       "final_loss_vs_zero_prediction": train_metrics["final_loss_vs_zero_prediction"],
                       "n_parameters": train_metrics["n_parameters"]}

        decoder = load_decoder(d.source, DECODER_DIR, device=d.device)
        check_compatible(embedder.space, embedder.dim, decoder)
        device = resolve_device(p.baseline.device)
        classifier, _ = load_classifier(BASELINE_MODEL, device)
        vocab = meta["vocab"]
        report, images = decoder_report(
            decoder, embedder, meta["classes"], colours={a: a for a in vocab["adjectives"]},
            contexts={x: x for x in vocab["contexts"]}, classifier=classifier, device=device,
            n_per_class=N_PER_CLASS, seed=p.seed, **sampling_settings(d))
        image_grid(images["class"], f"{PLOTS}/decoder/class_prompts.png", ncol=N_PER_CLASS,
                   title="decoded from 'a photo of a {class}', one row per class")
        if "context" in images:
            image_grid(images["context"], f"{PLOTS}/decoder/context_prompts.png", ncol=2 * len(meta["classes"]),
                       title="decoded from 'a photo of a {class} {context}', one row per context")
        metrics["quality"] = report
        write_json(f"{METRICS}/decoder.json", metrics)


if __name__ == "__main__":
    main()
