"""Stage pretrain_clip: put the world CLIP the params ask for in models/clip and
report its zero-shot quality on test.

- clip.source world: the shipped foundation CLIP (models/pretrained/world-clip),
  checked against its model card; nothing is trained.
- clip.source corpus: train one on the data's captioned corpus split.
- clip.source open_clip: nothing to do here (embed loads the pretrained model)."""

from failmap.clip_train import train_clip
from failmap.evaluation import zero_shot_report
from failmap.foundation_eval import world_attributes
from failmap.data import load_ground_truth, load_meta, load_split
from failmap.embedder import load_embedder
from failmap.foundation import CLIP_NAME, install_shipped
from failmap.io import write_json
from failmap.params import as_dict
from failmap.stage import CLIP_DIR, METRICS, PREPARED, run_stage


def main():
    with run_stage("pretrain_clip") as p:
        meta = load_meta(PREPARED)
        if p.clip.source == "open_clip":
            write_json(f"{CLIP_DIR}/external.json", {"source": p.clip.source, "arch": p.clip.arch,
                                                    "pretrained": p.clip.pretrained})
            write_json(f"{METRICS}/clip.json", {"source": p.clip.source, "trained": False})
            return
        if p.clip.source == "world":
            card = install_shipped(CLIP_NAME, CLIP_DIR)
            metrics = {"source": "world", "trained": False, "space": card["space"],
                       "foundation_heldout": card["quality_heldout"]["visible"]}
        else:
            if "corpus" not in meta["splits"]:
                raise SystemExit(f"clip.source: corpus needs a captioned corpus split, but data.source "
                                 f"'{p.data.source}' has none (use data.source: world, or imagefolder with "
                                 f"data.captions_file) — or set clip.source: open_clip")
            corpus = load_split(PREPARED, "corpus")
            train_metrics = train_clip(corpus.images, corpus.captions, CLIP_DIR, **as_dict(p.clip.train),
                                       seed=p.seed, device=p.clip.device)
            metrics = {"source": "corpus", "trained": True, "final_loss": train_metrics.get("final_loss"),
                       "params_m": train_metrics.get("n_params", 0) / 1e6}
        embedder = load_embedder(p.clip.source, model_dir=CLIP_DIR, device=p.clip.device,
                                 batch_size=p.clip.batch_size)
        test, truth = load_split(PREPARED, "test"), load_ground_truth(PREPARED)
        attributes = None
        if p.data.source == "world":
            attributes = world_attributes(truth, test.ids, p.world.colours, p.world.contexts)
        metrics["zero_shot_test"] = zero_shot_report(embedder, test.images, test.labels, meta["classes"], attributes)
        write_json(f"{METRICS}/clip.json", metrics)


if __name__ == "__main__":
    main()
