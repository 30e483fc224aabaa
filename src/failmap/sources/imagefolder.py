"""Any labelled image collection laid out as ``<root>/<split>/<class>/<image>``.

Splits train, val and test are required, pool is optional; every split must
have exactly train's class folders, so a label index means the same class
everywhere. Images are converted to RGB and resized (bicubic) to a square
``image_size``. An image's id is its path relative to root (``val/cat/01.png``).

An optional captions CSV (columns ``id``, ``caption`` and optionally ``subpop``)
turns the captioned images into a ``corpus`` split and, when it has
``subpop``, gives the ground truth the method is scored against. A row with
an empty caption contributes ground truth only. An optional ``subtype`` column
names each image's sub-type ("tractor" in class "vehicles"): the names, per
class, become the data's sub-type vocabulary (``meta['subtypes']``) that the
caption stage's ``subtypes`` source puts in the noun slot; which sub-type
fails is never read from it.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from failmap.data import CORPUS, Prepared, Split
from failmap.sources.vocab import default_vocab

REQUIRED_SPLITS = ("train", "val", "test")
OPTIONAL_SPLITS = ("pool",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _check_classes(split: str, split_dir: Path, classes: list[str]) -> None:
    found = [p.name for p in _visible_dirs(split_dir)]
    missing = sorted(set(classes) - set(found))
    extra = sorted(set(found) - set(classes))
    if missing:
        raise ValueError(f"split '{split}' ({split_dir}) lacks class folder(s) {missing} that train has")
    if extra:
        raise ValueError(f"split '{split}' ({split_dir}) has class folder(s) {extra} that train does not have")


def list_images(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(class names, split -> [(image path, label)]), validating the layout before any image is read."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} does not exist (expected <root>/<split>/<class>/<image>)")
    for split in REQUIRED_SPLITS:
        if not (root / split).is_dir():
            raise FileNotFoundError(f"required split folder {root / split} does not exist "
                                    f"(expected {', '.join(REQUIRED_SPLITS)} under {root})")
    classes = [p.name for p in _visible_dirs(root / "train")]
    if not classes:
        raise ValueError(f"{root / 'train'} has no class folders (expected <root>/train/<class>/<image>)")
    splits = [s for s in REQUIRED_SPLITS + OPTIONAL_SPLITS if (root / s).is_dir()]
    listing = {}
    for split in splits:
        _check_classes(split, root / split, classes)
        listing[split] = []
        for label, name in enumerate(classes):
            files = _image_files(root / split / name)
            if not files:
                raise ValueError(f"empty class: {root / split / name} has no image files "
                                 f"(expected {', '.join(IMAGE_EXTENSIONS)})")
            listing[split] += [(f, label) for f in files]
    return classes, listing


def read_image(path: Path, image_size: int) -> np.ndarray:
    """uint8 (image_size, image_size, 3); a file PIL cannot decode is an error naming it."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")  # forces a full decode, so truncated files fail here
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return np.asarray(rgb.resize((image_size, image_size), Image.BICUBIC), dtype=np.uint8)


def read_captions(path: Path, known_ids: set[str]) -> tuple[dict[str, str], dict[str, int] | None]:
    """(id -> caption for non-empty captions, id -> subpop or None when the CSV has no subpop column)."""
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "id" not in columns or "caption" not in columns:
            raise ValueError(f"captions file {path} must have columns id, caption[, subpop]; found {columns}")
        has_subpop = "subpop" in columns
        captions, subpop = {}, ({} if has_subpop else None)
        seen = set()
        for line, row in enumerate(reader, start=2):
            image_id = row["id"]
            if image_id not in known_ids:
                raise ValueError(f"captions file {path} line {line}: unknown id '{image_id}' "
                                 f"(ids are image paths relative to the image folder root, e.g. train/cat/1.png)")
            if image_id in seen:
                raise ValueError(f"captions file {path} line {line}: id '{image_id}' appears twice")
            seen.add(image_id)
            if row["caption"]:
                captions[image_id] = row["caption"]
            if has_subpop:
                if row["subpop"] not in ("0", "1"):
                    raise ValueError(f"captions file {path} line {line}: subpop of '{image_id}' must be 0 or 1, "
                                     f"got {row['subpop']!r}")
                subpop[image_id] = int(row["subpop"])
    if has_subpop:
        uncovered = sorted(known_ids - subpop.keys())
        if uncovered:
            raise ValueError(f"captions file {path} has a subpop column but no row for {len(uncovered)} image(s), "
                             f"e.g. {uncovered[:3]}: ground truth must cover every image of every split")
    return captions, subpop


def read_subtypes(path: Path, label_of: dict[str, int], classes: list[str]) -> dict[str, list[str]] | None:
    """Per class, the distinct non-empty ``subtype`` values of its images in
    the order of ``label_of`` (split then file order, as the corpus: the CSV's
    row order changes nothing), or None when the CSV has no subtype column
    (ids were checked by ``read_captions``)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "subtype" not in (reader.fieldnames or []):
            return None
        subtype_of = {row["id"]: " ".join((row["subtype"] or "").split()) for row in reader}
    found: list[dict[str, None]] = [{} for _ in classes]
    for image_id, label in label_of.items():
        if subtype_of.get(image_id):
            found[label].setdefault(subtype_of[image_id])
    return {c: list(names) for c, names in zip(classes, found)}


def prepare_imagefolder(root: str | Path, image_size: int, captions_file: str | Path | None = None) -> Prepared:
    """Read ``<root>/<split>/<class>/<image>`` (see module docstring) into prepared splits."""
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    root = Path(root)
    if captions_file is not None and not Path(captions_file).is_file():
        raise FileNotFoundError(f"captions file {captions_file} does not exist")
    classes, listing = list_images(root)
    splits = {}
    progress = tqdm(total=sum(len(v) for v in listing.values()), desc="reading images", unit="img")
    for split, entries in listing.items():
        images = np.empty((len(entries), image_size, image_size, 3), dtype=np.uint8)
        for i, (path, _) in enumerate(entries):
            images[i] = read_image(path, image_size)
            progress.update()
        splits[split] = Split(images=images, labels=np.array([label for _, label in entries], dtype=np.int64),
                              ids=np.array([p.relative_to(root).as_posix() for p, _ in entries]))
    progress.close()

    ground_truth, subtypes = None, None
    if captions_file is not None:
        # (split, row) of every image, in split then file order: the corpus follows
        # this order rather than the CSV's, so reordering the CSV changes nothing.
        where = {str(image_id): (split, i) for split, s in splits.items() for i, image_id in enumerate(s.ids)}
        captions, subpop = read_captions(Path(captions_file), set(where))
        if subpop is not None:
            ground_truth = [{"id": image_id, "split": split, "label": int(splits[split].labels[i]),
                             "subpop": subpop[image_id]} for image_id, (split, i) in where.items()]
        chosen = [(image_id, split, i) for image_id, (split, i) in where.items() if image_id in captions]
        if chosen:
            splits[CORPUS] = Split(
                images=np.stack([splits[split].images[i] for _, split, i in chosen]),
                labels=np.array([splits[split].labels[i] for _, split, i in chosen], dtype=np.int64),
                ids=np.array([image_id for image_id, _, _ in chosen]),
                captions=np.array([captions[image_id] for image_id, _, _ in chosen]))
        subtypes = read_subtypes(Path(captions_file),
                                 {image_id: int(splits[split].labels[i]) for image_id, (split, i) in where.items()},
                                 classes)
    meta = {"source": "imagefolder", "classes": classes, "image_size": int(image_size), "vocab": default_vocab()}
    if subtypes is not None:
        meta["subtypes"] = subtypes
    return Prepared(splits=splits, meta=meta, ground_truth=ground_truth)

