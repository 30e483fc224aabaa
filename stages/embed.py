"""Stage embed: CLIP image embeddings of train, val, test and pool, saved row
by row with each split's ids (data/embeddings/<split>.npz)."""
import numpy as np

from failmap.data import SPLITS, load_meta, load_split
from failmap.embedder import load_embedder
from failmap.io import atomic_path, write_json
from failmap.stage import CLIP_DIR, EMBEDDINGS, PREPARED, run_stage


def main():
    with run_stage("embed") as (p, run):
        c = p.clip
        embedder = load_embedder(c.source, c.arch, c.pretrained, CLIP_DIR, c.device, c.batch_size)
        meta = load_meta(PREPARED)
        for name in [s for s in SPLITS if s in meta["splits"]]:
            split = load_split(PREPARED, name)
            embeddings = embedder.embed_images(split.images)
            with atomic_path(f"{EMBEDDINGS}/{name}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, embeddings=embeddings, ids=split.ids)
        write_json(f"{EMBEDDINGS}/space.json", {"space": embedder.space, "dim": embedder.dim})
        run.log_metrics({"dim": embedder.dim})


if __name__ == "__main__":
    main()
