"""Stage prepare: materialise the data source as data/prepared (see failmap.data)."""
import sys

from failmap.data import write_prepared
from failmap.plots import image_grid
from failmap.sources import prepare_cifar10, prepare_cifar100_superclass, prepare_imagefolder
from failmap.stage import PLOTS, PREPARED, run_stage
from failmap.world import generate_world, shared_planted_values


def build(p):
    d = p.data
    if d.source == "world":
        world = p.world.model_dump()  # every world: key is an argument
        if not p.uses_corpus:  # no stage would read the corpus split: not drawn (the other splits are the same)
            world["n_corpus"] = 0
        return generate_world(seed=p.seed, **world)
    if d.source == "cifar10":
        return prepare_cifar10(d.root, d.download, d.n_val, d.n_pool, p.seed)
    if d.source == "cifar100_superclass":
        return prepare_cifar100_superclass(d.root, d.download, d.n_val, d.n_pool, d.minority_keep, p.seed)
    return prepare_imagefolder(d.root, d.image_size, d.captions_file)


def main():
    with run_stage("prepare") as p:
        prepared = build(p)
        write_prepared(PREPARED, prepared)
        if p.data.source == "world":  # a superclass world's planted values (its rare members) are distinct
            shared = shared_planted_values({c: v["value"] for c, v in prepared.meta["planted"].items()})
            if shared:
                listed = "; ".join(f"{value}: {', '.join(classes)}" for value, classes in shared.items())
                print(f"prepare: warning: planted values shared by classes ({listed}); classes that share one may "
                      f"not fail on it (README \"Worlds and seeds the defaults were not chosen on\")", file=sys.stderr)
        train = prepared.splits["train"]
        grid = image_grid(train.images[:64], f"{PLOTS}/prepare/train_examples.png", ncol=8,
                          title=f"{p.data.source}: first 64 train images")


if __name__ == "__main__":
    main()
