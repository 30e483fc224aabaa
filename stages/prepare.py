"""Stage prepare: materialise the data source as data/prepared (see failmap.data)."""
from failmap.data import write_prepared
from failmap.plots import image_grid
from failmap.sources import prepare_cifar10, prepare_cifar100_superclass, prepare_imagefolder
from failmap.stage import PLOTS, PREPARED, run_stage
from failmap.world import generate_world


def build(p):
    d = p.data
    if d.source == "world":
        w = p.world
        return generate_world(classes=w.classes, colours=w.colours, contexts=w.contexts,
                              n_train=w.n_train, n_val=w.n_val, n_test=w.n_test, n_pool=w.n_pool,
                              n_corpus=w.n_corpus, planted_attribute=w.planted_attribute,
                              planted_values=w.planted_values, train_rate=w.train_rate,
                              eval_rate=w.eval_rate, confuser_rate=w.confuser_rate,
                              eval_confuser_rate=w.eval_confuser_rate, noise=w.noise,
                              min_size=w.min_size, max_size=w.max_size,
                              min_contrast=w.min_contrast, superclasses=w.superclasses,
                              rare_members=w.rare_members, seed=p.seed)
    if d.source == "cifar10":
        return prepare_cifar10(d.root, d.download, d.n_val, d.n_pool, p.seed)
    if d.source == "cifar100_superclass":
        return prepare_cifar100_superclass(d.root, d.download, d.n_val, d.n_pool, d.minority_keep, p.seed)
    return prepare_imagefolder(d.root, d.image_size, d.captions_file)


def main():
    with run_stage("prepare") as p:
        prepared = build(p)
        write_prepared(PREPARED, prepared)
        train = prepared.splits["train"]
        grid = image_grid(train.images[:64], f"{PLOTS}/prepare/train_examples.png", ncol=8,
                          title=f"{p.data.source}: first 64 train images")


if __name__ == "__main__":
    main()
