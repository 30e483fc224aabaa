"""CIFAR-10 and CIFAR-100 (20 superclasses, one planted minority subclass each).

Both read the official python pickles through torchvision, which downloads
them on request and verifies every file's md5 against the official release.
We keep that check rather than reading the pickles ourselves: a truncated or
hand-edited batch then fails loudly here instead of silently skewing every
later stage. (The tests build tiny fakes in the same on-disk format and
declare *their* md5s on torchvision's class, so the very same check runs on
them.) torchvision exposes only CIFAR-100's fine labels, so the coarse labels
and class names are read from the pickles it has just verified.

The official 50k train set is carved into train / val / pool by one seeded
permutation; the official 10k test set is the test split. Ids name the image's
index in its official file (``cifar10/train/00042``), so they stay stable
whatever the carve.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from failmap.data import Prepared, Split
from failmap.sources.vocab import default_vocab

CIFAR_IMAGE_SIZE = 32
CIFAR10_NAMES = ("CIFAR-10", "CIFAR-10 python batches")    # (dataset, what to put in place)
CIFAR100_NAMES = ("CIFAR-100", "CIFAR-100 python files")


def carve_train(n_total: int, n_val: int, n_pool: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Split indices 0..n_total-1 into val (n_val), pool (n_pool) and train (the rest).

    Each split's indices are sorted so that files list images in official order.
    """
    for name, value in (("n_val", n_val), ("n_pool", n_pool)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if n_val + n_pool >= n_total:
        raise ValueError(
            f"n_val + n_pool = {n_val} + {n_pool} = {n_val + n_pool} must be less than the "
            f"{n_total} images of the official train set, so that some remain for training")
    order = rng.permutation(n_total)
    return {
        "train": np.sort(order[n_val + n_pool:]),
        "val": np.sort(order[:n_val]),
        "pool": np.sort(order[n_val:n_val + n_pool]),
    }


def _verified_dataset(dataset_cls, root: Path, train: bool, download: bool, name: str, files: str):
    """torchvision's dataset (``name`` e.g. "CIFAR-10", ``files`` what the user must
    put in place), with errors that say how to fix a missing or bad download."""
    folder = root / dataset_cls.base_folder
    expected = [f for f, _ in dataset_cls.train_list + dataset_cls.test_list] + [dataset_cls.meta["filename"]]
    missing = [f for f in expected if not (folder / f).is_file()]
    if missing and not download:
        raise FileNotFoundError(f"{name} not found: set data.download: true or put the {files} at {folder} "
                                f"(missing: {', '.join(missing)})")
    try:
        return dataset_cls(str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision's "not found or corrupted": the md5 check failed
        raise RuntimeError(f"{name} files at {folder} fail torchvision's md5 check (corrupt, partial or not "
                           f"the official release): delete them and set data.download: true") from err
    except OSError as err:  # no network (URLError is an OSError)
        raise OSError(f"could not download {name} into {root} ({err}); put the {files} at {folder} "
                      f"and set data.download: false") from err


def _read_pickle(path: Path) -> dict:
    # The official files are Python 2 pickles; latin1 turns their str keys into
    # str (as torchvision does), and the bytes of numpy buffers survive intact.
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _readable(name: str) -> str:
    """'aquatic_mammals' -> 'aquatic mammals': class names end up in captions."""
    return name.replace("_", " ")


def _splits_from(train_images, train_labels, test_images, test_labels, carve, id_prefix) -> dict[str, Split]:
    def ids(kind, indices):
        return np.array([f"{id_prefix}/{kind}/{i:05d}" for i in indices])

    splits = {name: Split(images=train_images[idx], labels=train_labels[idx], ids=ids("train", idx))
              for name, idx in carve.items()}
    test_idx = np.arange(len(test_labels))
    splits["test"] = Split(images=test_images, labels=test_labels, ids=ids("test", test_idx))
    return {name: splits[name] for name in ("train", "val", "test", "pool")}


def prepare_cifar10(root: str | Path, download: bool, n_val: int, n_pool: int, seed: int) -> Prepared:
    """CIFAR-10: train/val/pool carved from the official train set, test = official test set."""
    root = Path(root)
    carve_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    import torchvision  # here, not at module level: importing it costs seconds in every stage

    train = _verified_dataset(torchvision.datasets.CIFAR10, root, True, download, *CIFAR10_NAMES)
    test = _verified_dataset(torchvision.datasets.CIFAR10, root, False, download, *CIFAR10_NAMES)
    train_labels = np.asarray(train.targets, dtype=np.int64)
    carve = carve_train(len(train_labels), n_val, n_pool, carve_rng)
    splits = _splits_from(np.asarray(train.data, dtype=np.uint8), train_labels,
                          np.asarray(test.data, dtype=np.uint8), np.asarray(test.targets, dtype=np.int64),
                          carve, "cifar10")
    meta = {"source": "cifar10", "classes": [_readable(c) for c in train.classes],
            "image_size": CIFAR_IMAGE_SIZE, "vocab": default_vocab()}
    return Prepared(splits=splits, meta=meta, ground_truth=None)


def _cifar100_labels(folder: Path, file_name: str, fine_from_torchvision) -> tuple[np.ndarray, np.ndarray]:
    """(coarse, fine) labels of one official file, checked against torchvision's fine labels."""
    entry = _read_pickle(folder / file_name)
    coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
    fine = np.asarray(entry["fine_labels"], dtype=np.int64)
    if not np.array_equal(fine, np.asarray(fine_from_torchvision, dtype=np.int64)):
        raise RuntimeError(f"{folder / file_name}: fine labels differ from what torchvision read from it")
    return coarse, fine


def choose_minorities(coarse: np.ndarray, fine: np.ndarray, rng: np.random.Generator) -> dict[int, int]:
    """superclass -> the one fine class (drawn by rng) that becomes its minority."""
    minority = {}
    for superclass in np.unique(coarse):
        members = np.unique(fine[coarse == superclass])
        minority[int(superclass)] = int(rng.choice(members))
    return minority


def cut_minority(train_idx: np.ndarray, is_minority: np.ndarray, keep: float, rng: np.random.Generator,
                 superclass: np.ndarray) -> np.ndarray:
    """Train indices after keeping round(keep * n) of each superclass's n minority images."""
    dropped = []
    for s in np.unique(superclass[train_idx]):
        candidates = train_idx[(superclass[train_idx] == s) & is_minority[train_idx]]
        n_keep = int(round(keep * len(candidates)))
        kept = rng.choice(candidates, size=n_keep, replace=False) if n_keep else np.empty(0, dtype=int)
        dropped.append(np.setdiff1d(candidates, kept))
    return np.setdiff1d(train_idx, np.concatenate(dropped) if dropped else np.empty(0, dtype=int))


def prepare_cifar100_superclass(root: str | Path, download: bool, n_val: int, n_pool: int,
                                minority_keep: float, seed: int) -> Prepared:
    """CIFAR-100 labelled by its 20 superclasses, with one fine subclass per superclass
    made rare in train: the planted hard subpopulation the method should find.

    Minority images cut from train are dropped, not moved to another split, so
    val / test / pool keep the natural subclass mix the method is scored on.
    """
    if not 0.0 <= minority_keep <= 1.0:
        raise ValueError(f"minority_keep must be in [0, 1] (the share of minority images kept in train), "
                         f"got {minority_keep!r}")
    root = Path(root)
    carve_rng, minority_rng, keep_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    import torchvision

    cls = torchvision.datasets.CIFAR100
    train = _verified_dataset(cls, root, True, download, *CIFAR100_NAMES)
    test = _verified_dataset(cls, root, False, download, *CIFAR100_NAMES)
    folder = root / cls.base_folder
    (train_file, _), (test_file, _) = cls.train_list[0], cls.test_list[0]
    train_coarse, train_fine = _cifar100_labels(folder, train_file, train.targets)
    test_coarse, test_fine = _cifar100_labels(folder, test_file, test.targets)
    names = _read_pickle(folder / cls.meta["filename"])
    coarse_names = [_readable(n) for n in names["coarse_label_names"]]
    fine_names = [_readable(n) for n in names["fine_label_names"]]

    minority = choose_minorities(train_coarse, train_fine, minority_rng)
    minority_fine = np.array(sorted(minority.values()))
    carve = carve_train(len(train_coarse), n_val, n_pool, carve_rng)
    carve["train"] = cut_minority(carve["train"], np.isin(train_fine, minority_fine), minority_keep,
                                  keep_rng, train_coarse)
    splits = _splits_from(np.asarray(train.data, dtype=np.uint8), train_coarse,
                          np.asarray(test.data, dtype=np.uint8), test_coarse, carve, "cifar100")

    fine_of = {}
    for kind, fine in (("train", train_fine), ("test", test_fine)):
        for i, f in enumerate(fine):
            fine_of[f"cifar100/{kind}/{i:05d}"] = int(f)
    ground_truth = [
        {"id": str(image_id), "split": name, "label": int(label),
         "subpop": int(fine_of[image_id] in minority_fine), "fine": fine_names[fine_of[image_id]]}
        for name, split in splits.items() for image_id, label in zip(split.ids, split.labels)
    ]
    # each superclass's fine label names: the sub-type vocabulary (caption source 'subtypes'), not which is rare
    subtypes = {coarse_names[s]: [fine_names[f] for f in np.unique(train_fine[train_coarse == s])]
                for s in range(len(coarse_names))}
    meta = {"source": "cifar100_superclass", "classes": coarse_names, "image_size": CIFAR_IMAGE_SIZE,
            "vocab": default_vocab(), "subtypes": subtypes,
            "planted": {coarse_names[s]: f"subclass {fine_names[f]}" for s, f in sorted(minority.items())}}
    return Prepared(splits=splits, meta=meta, ground_truth=ground_truth)
