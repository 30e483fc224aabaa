"""Stage embed: CLIP image embeddings of train, val, test and pool, saved row
by row with each split's ids (data/embeddings/<split>.npz). The batches run
on the engine ``compute`` names (failmap.engine; same bytes either way); all
splits are embedded before any file is written."""
from functools import partial
from pathlib import Path

import numpy as np

from failmap.data import SPLITS, load_meta, load_split
from failmap.embedder import embed_image_sets, load_embedder
from failmap.engine import open_engine
from failmap.io import atomic_path, write_json
from failmap.stage import CLIP_DIR, EMBEDDINGS, PREPARED, run_stage


def main():
    with run_stage("embed") as p:
        c = p.clip
        # absolute: a Ray worker need not start in this folder (a cluster must see the same path)
        pretrained = str(Path(c.pretrained).resolve()) if Path(c.pretrained).is_file() else c.pretrained
        load = partial(load_embedder, c.source, c.arch, pretrained, str(Path(CLIP_DIR).resolve()), c.device,
                       c.batch_size)
        meta = load_meta(PREPARED)
        splits = {name: load_split(PREPARED, name) for name in SPLITS if name in meta["splits"]}
        with open_engine(p.compute) as engine:
            embedded, space, dim = embed_image_sets(engine, load, {n: s.images for n, s in splits.items()},
                                                    c.batch_size)
        for name, split in splits.items():
            with atomic_path(f"{EMBEDDINGS}/{name}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, embeddings=embedded[name], ids=split.ids)
        write_json(f"{EMBEDDINGS}/space.json", {"space": space, "dim": dim})


if __name__ == "__main__":
    main()
