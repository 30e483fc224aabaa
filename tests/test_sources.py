"""Real data sources, on tiny fakes written in the official on-disk formats."""
from __future__ import annotations

import csv
import hashlib
import pickle
import re
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from failmap.data import load_ground_truth, load_meta, load_split, write_prepared
from failmap.sources import default_vocab, prepare_cifar10, prepare_cifar100_superclass, prepare_imagefolder


# ---------------------------------------------------------------- CIFAR fakes

class _Py2Str(bytes):
    """A Python 2 ``str``. The official CIFAR files are Python 2 pickles whose keys
    and names are such strs; writing them the same way means a reader that
    assumed Python 3 pickles would fail here as it would on the real files."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table is extensible
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + bytes(obj))
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2_str


def _py2(obj):
    """Recursively turn str keys / values into Python 2 strs."""
    if isinstance(obj, str):
        return _Py2Str(obj.encode("latin1"))
    if isinstance(obj, dict):
        return {_py2(k): _py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_py2(v) for v in obj]
    return obj


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2(obj))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fake_pixels(n: int, offset: int) -> np.ndarray:
    """(n, 3072) uint8 rows in CIFAR's channel-planar layout; pixel 0 of red encodes the index."""
    rows = np.random.default_rng(offset).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    rows[:, 0] = (np.arange(n) + offset) % 256
    return rows


def _declare_md5s(monkeypatch, cls, folder: Path) -> None:
    """torchvision checks every file against the official release's md5s; declare
    the fakes' own md5s on its class so that the same check passes on them (and
    would still catch a fake altered after writing)."""
    monkeypatch.setattr(cls, "train_list", [[name, _md5(folder / name)] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, _md5(folder / name)] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 10


def _write_cifar10(root: Path) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    pixels = _fake_pixels(5 * PER_BATCH, 0)
    labels = np.arange(5 * PER_BATCH) % 10
    for b in range(5):
        rows = slice(b * PER_BATCH, (b + 1) * PER_BATCH)
        _dump(folder / f"data_batch_{b + 1}", {"batch_label": f"training batch {b + 1} of 5",
                                               "data": pixels[rows], "labels": labels[rows].tolist()})
    test_pixels, test_labels = _fake_pixels(PER_BATCH, 100), (np.arange(PER_BATCH) * 3) % 10
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": test_pixels,
                                  "labels": test_labels.tolist()})
    _dump(folder / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": PER_BATCH,
                                    "num_vis": 3072})
    return {"train": pixels, "train_labels": labels, "test": test_pixels, "test_labels": test_labels}


@pytest.fixture
def cifar10(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    arrays = _write_cifar10(root)
    _declare_md5s(monkeypatch, torchvision.datasets.CIFAR10, root / "cifar-10-batches-py")
    return root, arrays


COARSE = ["big_animals", "small_things", "trees"]
FINE = ["bear", "elephant", "lion", "ant", "bee", "mouse", "maple_tree", "oak_tree", "pine_tree"]
PER_FINE_TRAIN, PER_FINE_TEST = 20, 5


def _write_cifar100(root: Path) -> dict[str, np.ndarray]:
    """3 superclasses of 3 fine classes each; fine f belongs to superclass f // 3."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name, per, offset in (("train", PER_FINE_TRAIN, 0), ("test", PER_FINE_TEST, 500)):
        fine = np.tile(np.arange(len(FINE)), per)
        out[name + "_fine"] = fine
        _dump(folder / name, {"batch_label": name, "data": _fake_pixels(len(fine), offset),
                              "fine_labels": fine.tolist(), "coarse_labels": (fine // 3).tolist(),
                              "filenames": [f"{name}_{i}.png" for i in range(len(fine))]})
    _dump(folder / "meta", {"fine_label_names": FINE, "coarse_label_names": COARSE})
    return out


@pytest.fixture
def cifar100(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    arrays = _write_cifar100(root)
    _declare_md5s(monkeypatch, torchvision.datasets.CIFAR100, root / "cifar-100-python")
    return root, arrays


def _index(image_id: str) -> int:
    return int(image_id.rsplit("/", 1)[1])


# ---------------------------------------------------------------- CIFAR-10

def test_cifar10_carve_sizes_disjoint_and_images_match_ids(cifar10):
    root, arrays = cifar10
    prepared = prepare_cifar10(root, download=False, n_val=10, n_pool=15, seed=0)
    sizes = {name: len(split) for name, split in prepared.splits.items()}
    assert sizes == {"train": 25, "val": 10, "test": 10, "pool": 15}
    carved = [set(prepared.splits[s].ids) for s in ("train", "val", "pool")]
    assert not (carved[0] & carved[1] or carved[0] & carved[2] or carved[1] & carved[2])
    assert set.union(*carved) == {f"cifar10/train/{i:05d}" for i in range(50)}
    for name in ("train", "val", "pool", "test"):
        split = prepared.splits[name]
        kind = "test" if name == "test" else "train"
        for image, label, image_id in zip(split.images, split.labels, split.ids):
            assert image_id.startswith(f"cifar10/{kind}/")
            i = _index(image_id)
            # official rows are channel-planar: red plane, then green, then blue
            np.testing.assert_array_equal(image, arrays[kind][i].reshape(3, 32, 32).transpose(1, 2, 0))
            assert label == arrays[f"{kind}_labels"][i]
    assert prepared.ground_truth is None
    assert prepared.meta == {"source": "cifar10", "classes": CIFAR10_CLASSES, "image_size": 32,
                             "vocab": default_vocab()}


def test_cifar10_same_seed_same_carve_other_seed_other_carve(cifar10):
    root, _ = cifar10
    a, b, c = (prepare_cifar10(root, False, 10, 15, seed) for seed in (3, 3, 4))
    for name in ("train", "val", "pool", "test"):
        np.testing.assert_array_equal(a.splits[name].ids, b.splits[name].ids)
        np.testing.assert_array_equal(a.splits[name].images, b.splits[name].images)
    assert set(a.splits["val"].ids) != set(c.splits["val"].ids)


def test_cifar10_round_trips_through_write_prepared(cifar10, tmp_path):
    root, _ = cifar10
    prepared = prepare_cifar10(root, False, 10, 15, 0)
    write_prepared(tmp_path / "prepared", prepared)
    assert load_meta(tmp_path / "prepared")["splits"] == {"train": 25, "val": 10, "test": 10, "pool": 15}
    np.testing.assert_array_equal(load_split(tmp_path / "prepared", "val").ids, prepared.splits["val"].ids)


def test_cifar10_missing_data_without_download(tmp_path):
    expected = f"set data.download: true or put the CIFAR-10 python batches at {tmp_path / 'cifar-10-batches-py'}"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        prepare_cifar10(tmp_path, download=False, n_val=10, n_pool=10, seed=0)


def test_cifar10_files_failing_the_md5_check(tmp_path):
    _write_cifar10(tmp_path)  # fakes, but the official md5s are not declared for them
    with pytest.raises(RuntimeError, match="fail torchvision's md5 check"):
        prepare_cifar10(tmp_path, download=False, n_val=10, n_pool=10, seed=0)


@pytest.mark.parametrize("n_val, n_pool", [(30, 20), (50, 0), (-1, 5)])
def test_cifar10_rejects_a_carve_that_leaves_no_train(cifar10, n_val, n_pool):
    root, _ = cifar10
    with pytest.raises(ValueError, match="n_val|n_pool"):
        prepare_cifar10(root, False, n_val, n_pool, 0)


# ---------------------------------------------------------------- CIFAR-100 superclasses

def test_cifar100_superclass_minority_cut_and_ground_truth(cifar100):
    root, arrays = cifar100
    keep = 0.25
    prepared = prepare_cifar100_superclass(root, False, n_val=18, n_pool=27, minority_keep=keep, seed=1)
    splits = prepared.splits
    assert prepared.meta["classes"] == ["big animals", "small things", "trees"]
    planted = prepared.meta["planted"]
    assert set(planted) == set(prepared.meta["classes"])
    minority = {FINE.index(planted[c].removeprefix("subclass ").replace(" ", "_")) for c in planted}
    assert sorted(f // 3 for f in minority) == [0, 1, 2]  # one per superclass

    assert (len(splits["val"]), len(splits["pool"]), len(splits["test"])) == (18, 27, 45)
    train_fine = arrays["train_fine"]
    carved_out = {_index(i) for s in ("val", "pool") for i in splits[s].ids}
    candidates = [i for i in range(len(train_fine)) if i not in carved_out]
    kept = {_index(i) for i in splits["train"].ids}
    assert not kept & carved_out
    for superclass in range(3):
        mine = [i for i in candidates if train_fine[i] // 3 == superclass]
        minor = [i for i in mine if train_fine[i] in minority]
        assert len(minor) > 4
        assert sum(i in kept for i in minor) == round(keep * len(minor))
        assert all(i in kept for i in mine if i not in minor)  # only the minority is cut

    rows = prepared.ground_truth
    every_id = [i for split in splits.values() for i in split.ids]
    assert [r["id"] for r in rows] == every_id and len(set(every_id)) == len(every_id)
    for row in rows:
        kind = row["id"].split("/")[1]
        fine = arrays[f"{kind}_fine"][_index(row["id"])]
        assert row["fine"] == FINE[fine].replace("_", " ")
        assert row["label"] == fine // 3
        assert row["subpop"] == int(fine in minority)
    # each superclass's fine label names: the sub-type vocabulary the caption source 'subtypes' reads
    assert prepared.meta["subtypes"] == {c: [FINE[f].replace("_", " ") for f in range(3 * s, 3 * s + 3)]
                                         for s, c in enumerate(prepared.meta["classes"])}
    # the minority is rare in train but at its natural rate (1 in 3) in test
    assert np.mean([r["subpop"] for r in rows if r["split"] == "test"]) == pytest.approx(1 / 3)
    assert np.mean([r["subpop"] for r in rows if r["split"] == "train"]) < 0.2


def test_cifar100_superclass_is_deterministic_and_seed_moves_the_minority(cifar100, tmp_path):
    root, _ = cifar100
    a, b = (prepare_cifar100_superclass(root, False, 18, 27, 0.25, seed=5) for _ in range(2))
    assert a.meta["planted"] == b.meta["planted"] and a.ground_truth == b.ground_truth
    plantings = {tuple(sorted(prepare_cifar100_superclass(root, False, 18, 27, 0.25, s).meta["planted"].items()))
                 for s in range(6)}
    assert len(plantings) > 1
    write_prepared(tmp_path / "prepared", a)
    truth = load_ground_truth(tmp_path / "prepared")
    assert len(truth) == sum(len(s) for s in a.splits.values())


def test_cifar100_missing_data_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.download: true .*cifar-100-python"):
        prepare_cifar100_superclass(tmp_path, False, 10, 10, 0.25, 0)


def test_cifar100_rejects_minority_keep_outside_unit_interval(cifar100):
    root, _ = cifar100
    with pytest.raises(ValueError, match="minority_keep"):
        prepare_cifar100_superclass(root, False, 10, 10, 1.5, 0)


# ---------------------------------------------------------------- image folder

COLOURS = {"cat": (200, 30, 30), "dog": (30, 30, 200)}


def _write_folder(root: Path, splits=("train", "val", "test"), per_class: int = 2) -> None:
    for split in splits:
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 6), colour).save(root / split / name / f"{i}.png")


def test_imagefolder_reads_splits_labels_ids_and_resizes(tmp_path):
    _write_folder(tmp_path, splits=("train", "val", "test", "pool"))
    Image.new("L", (5, 5), 128).save(tmp_path / "val" / "dog" / "gray.png")  # greyscale -> RGB
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image: skipped by extension")
    prepared = prepare_imagefolder(tmp_path, image_size=4)
    assert prepared.meta == {"source": "imagefolder", "classes": ["cat", "dog"], "image_size": 4,
                             "vocab": default_vocab()}
    assert {n: len(s) for n, s in prepared.splits.items()} == {"train": 4, "val": 5, "test": 4, "pool": 4}
    train = prepared.splits["train"]
    assert list(train.ids) == ["train/cat/0.png", "train/cat/1.png", "train/dog/0.png", "train/dog/1.png"]
    assert list(train.labels) == [0, 0, 1, 1]
    assert train.images.shape == (4, 4, 4, 3)
    assert (train.images[0] == COLOURS["cat"]).all() and (train.images[3] == COLOURS["dog"]).all()
    val = prepared.splits["val"]
    assert (val.images[list(val.ids).index("val/dog/gray.png")] == 128).all()
    assert prepared.ground_truth is None


def test_imagefolder_pool_is_optional(tmp_path):
    _write_folder(tmp_path)
    assert set(prepare_imagefolder(tmp_path, 4).splits) == {"train", "val", "test"}


def test_imagefolder_missing_root_or_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_imagefolder(tmp_path / "nowhere", 4)
    _write_folder(tmp_path, splits=("train", "test"))
    with pytest.raises(FileNotFoundError, match=r"split folder .*val does not exist"):
        prepare_imagefolder(tmp_path, 4)


def test_imagefolder_empty_class(tmp_path):
    _write_folder(tmp_path)
    for f in (tmp_path / "test" / "dog").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"empty class: .*test/dog"):
        prepare_imagefolder(tmp_path, 4)


def test_imagefolder_corrupt_image_names_the_file(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "val" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"cannot read image .*val/cat/broken.png"):
        prepare_imagefolder(tmp_path, 4)


def test_imagefolder_truncated_image_names_the_file(tmp_path):
    _write_folder(tmp_path)
    good = tmp_path / "train" / "dog" / "1.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"cannot read image .*train/dog/1.png"):
        prepare_imagefolder(tmp_path, 4)


def test_imagefolder_mismatched_classes(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "val" / "bird").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "bird" / "0.png")
    with pytest.raises(ValueError, match=r"split 'val' .*has class folder\(s\) \['bird'\]"):
        prepare_imagefolder(tmp_path, 4)
    for f in (tmp_path / "val" / "bird").iterdir():
        f.unlink()
    (tmp_path / "val" / "bird").rmdir()
    (tmp_path / "test" / "dog").rename(tmp_path / "test_dog_elsewhere")
    with pytest.raises(ValueError, match=r"split 'test' .*lacks class folder\(s\) \['dog'\]"):
        prepare_imagefolder(tmp_path, 4)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_imagefolder_captions_make_a_corpus_and_ground_truth(tmp_path):
    root = tmp_path / "images"
    _write_folder(root)
    ids = [f"{s}/{c}/{i}.png" for s in ("train", "val", "test") for c in COLOURS for i in range(2)]
    rows = [{"id": i, "caption": f"a photo of {i.split('/')[1]} number {n}" if n % 3 else "",
             "subpop": int(i.endswith("1.png"))} for n, i in enumerate(ids)]
    captions = _write_csv(tmp_path / "captions.csv", list(reversed(rows)))
    prepared = prepare_imagefolder(root, 4, captions_file=captions)
    corpus = prepared.splits["corpus"]
    captioned = [r for r in rows if r["caption"]]
    assert list(corpus.ids) == [r["id"] for r in captioned]  # split/file order, not CSV order
    assert list(corpus.captions) == [r["caption"] for r in captioned]
    assert list(corpus.labels) == [0 if "/cat/" in r["id"] else 1 for r in captioned]
    assert [(g["id"], g["subpop"]) for g in prepared.ground_truth] == [(r["id"], r["subpop"]) for r in rows]
    assert {g["split"] for g in prepared.ground_truth} == {"train", "val", "test"}


def test_imagefolder_subtype_column_names_each_class_sub_types(tmp_path):
    root = tmp_path / "images"
    _write_folder(root)
    rows = [{"id": "val/dog/0.png", "caption": "a puppy", "subtype": "puppy"},
            {"id": "train/dog/1.png", "caption": "", "subtype": " hound "},
            {"id": "test/dog/0.png", "caption": "", "subtype": "puppy"},
            {"id": "train/cat/0.png", "caption": "a cat", "subtype": ""}]
    prepared = prepare_imagefolder(root, 4, captions_file=_write_csv(tmp_path / "c.csv", rows))
    assert prepared.meta["subtypes"] == {"cat": [], "dog": ["hound", "puppy"]}  # split then file order
    without = prepare_imagefolder(root, 4, captions_file=_write_csv(tmp_path / "d.csv", [
        {"id": "val/dog/0.png", "caption": "a dog"}]))
    assert "subtypes" not in without.meta


def test_imagefolder_captions_without_subpop_give_no_ground_truth(tmp_path):
    root = tmp_path / "images"
    _write_folder(root)
    captions = _write_csv(tmp_path / "c.csv", [{"id": "val/dog/0.png", "caption": "a dog in the snow"}])
    prepared = prepare_imagefolder(root, 4, captions_file=captions)
    assert list(prepared.splits["corpus"].ids) == ["val/dog/0.png"] and prepared.ground_truth is None


def test_imagefolder_unknown_caption_id(tmp_path):
    root = tmp_path / "images"
    _write_folder(root)
    captions = _write_csv(tmp_path / "c.csv", [{"id": "train/cat/0.png", "caption": "a cat"},
                                               {"id": "train/cat/9.png", "caption": "a ghost cat"}])
    with pytest.raises(ValueError, match=r"c\.csv line 3: unknown id 'train/cat/9.png'"):
        prepare_imagefolder(root, 4, captions_file=captions)


@pytest.mark.parametrize("rows, message", [
    ([{"id": "train/cat/0.png", "text": "a cat"}], "must have columns id, caption"),
    ([{"id": "train/cat/0.png", "caption": "a cat"}, {"id": "train/cat/0.png", "caption": "again"}], "twice"),
    ([{"id": "train/cat/0.png", "caption": "a cat", "subpop": "yes"}], "must be 0 or 1"),
    ([{"id": "train/cat/0.png", "caption": "a cat", "subpop": "1"}], "no row for 11 image"),
])
def test_imagefolder_bad_captions_file(tmp_path, rows, message):
    root = tmp_path / "images"
    _write_folder(root)
    with pytest.raises(ValueError, match=message):
        prepare_imagefolder(root, 4, captions_file=_write_csv(tmp_path / "c.csv", rows))


def test_cifar10_download_true_keeps_verified_files_and_explains_a_failed_download(cifar10, tmp_path, monkeypatch):
    root, _ = cifar10
    offline = urllib.error.URLError("no network")

    def no_network(*args, **kwargs):
        raise offline

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    # files already there and verified: torchvision does not try to download
    assert len(prepare_cifar10(root, download=True, n_val=10, n_pool=15, seed=0).splits["train"]) == 25
    with pytest.raises(OSError, match=r"could not download CIFAR-10 .*no network"):
        prepare_cifar10(tmp_path / "empty", download=True, n_val=10, n_pool=15, seed=0)
