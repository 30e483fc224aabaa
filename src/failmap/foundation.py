"""The world's foundation models: the corpus they learn from, the folder the
shipped ones live in, their model cards, and the checks that guard loading them.

Real users load CLIP and Stable Diffusion weights that someone trained once on
a broad corpus; the embedded world works the same way. ``foundation/`` is a
DVC pipeline of its own (corpus -> CLIP -> decoder -> quality report) that
writes both models under ``models/pretrained/``; the main pipeline only loads
them (``clip.source: world``, ``decoder.source: world``).

The corpus covers everything ``failmap.world`` can draw: every shape, colour
and context, uniform and independent (no planted bias, every colour over every
context, whatever its contrast), object sizes and pixel noise over ranges wider
than the task defaults, any position and rotation. A task world that asks for
something outside it is refused before any work (``uncovered``).

Each model folder has ``card.json``: what it was trained on and how, its
quality figures, and the sha256 of every file. ``verify_card`` refuses a folder
whose files do not match their card.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from failmap.io import atomic_path, file_digest, read_json, write_json
# the shipped models' names, folder and coverage check (their own module, so that failmap.params needs not this one)
from failmap.shipped import (CARD, CLIP_NAME, DECODER_NAME, PRETRAINED_DIR, repo_root, shipped_dir,  # noqa: F401
                             uncovered)


@dataclass(frozen=True)
class CorpusSpec:
    """What the foundation corpus covers (every value drawn uniformly)."""
    shapes: list[str] = field(default_factory=list)
    colours: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    min_size: float = 0.3
    max_size: float = 0.9
    max_noise: float = 0.1
    image_size: int = 32

    @classmethod
    def everything(cls, **kwargs) -> "CorpusSpec":
        """Every shape, colour and context the renderer knows."""
        from failmap.world import COLOUR_RGB, CONTEXT_PHRASE, SHAPES
        return cls(shapes=list(SHAPES), colours=list(COLOUR_RGB), contexts=list(CONTEXT_PHRASE), **kwargs)


def render_corpus(spec: CorpusSpec, n: int, seed: int, stream: int = 0, desc: str = "foundation corpus"):
    """n images with every attribute uniform and independent (``stream``: an
    independent draw for the same seed, e.g. 0 train, 1 held out).

    Returns (images uint8 (n, S, S, 3), captions (n,), rows): one dict per
    image with its shape, colour, context, size and noise."""
    from failmap.world import random_caption, render
    if n < 1:
        raise ValueError(f"corpus size must be >= 1, got {n}")
    if not (spec.shapes and spec.colours and spec.contexts):
        raise ValueError("a corpus needs at least one shape, colour and context")
    if not 0 < spec.min_size <= spec.max_size <= 1:
        raise ValueError(f"need 0 < min_size <= max_size <= 1, got {spec.min_size}, {spec.max_size}")
    rng = np.random.default_rng([seed, 4242, stream])
    side = spec.image_size
    images = np.empty((n, side, side, 3), dtype=np.uint8)
    captions, rows = [], []
    mid = (spec.min_size + spec.max_size) / 2
    for i in tqdm(range(n), desc=desc, mininterval=5):
        shape = spec.shapes[rng.integers(len(spec.shapes))]
        colour = spec.colours[rng.integers(len(spec.colours))]
        context = spec.contexts[rng.integers(len(spec.contexts))]
        size = float(rng.uniform(spec.min_size, spec.max_size))
        margin = size / 2
        cx, cy = rng.uniform(margin, 1 - margin, 2) if margin < 0.5 else (0.5, 0.5)
        angle = float(rng.uniform(0, 2 * np.pi))
        noise = float(rng.uniform(0, spec.max_noise))
        images[i] = render(shape, colour, context, size, cx, cy, angle, noise, rng, side)
        captions.append(random_caption(shape, colour, context, "small" if size < mid else "large", rng))
        rows.append(dict(shape=shape, colour=colour, context=context, size=round(size, 3), noise=round(noise, 3)))
    return images, np.array(captions), rows


# ------------------------------------------------------------------ model cards
def model_files(folder: str | Path) -> list[str]:
    """Every file of a model folder except its card, as sorted relative paths."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != CARD)


def write_card(folder: str | Path, card: dict) -> dict:
    """Write ``card.json``: ``card`` plus the sha256 of every file in the folder."""
    folder = Path(folder)
    card = dict(card, files={f: file_digest(folder / f) for f in model_files(folder)})
    write_json(folder / CARD, card)
    return card


class CardMismatch(ValueError):
    """A shipped model folder whose files are not the ones its card names."""


def verify_card(folder: str | Path) -> dict:
    """The folder's card, after checking every file against its sha256.

    Refuses (``CardMismatch``) a folder with a file whose hash differs from its
    card, a file the card names that is missing, or a file the card does not
    name; each message names the file."""
    folder = Path(folder)
    card_path = folder / CARD
    if not card_path.is_file():
        raise FileNotFoundError(f"{card_path} not found: {folder} is not a shipped foundation model "
                                f"(rebuild it with `dvc repro` in foundation/)")
    card = read_json(card_path)
    expected = card.get("files") or {}
    present = set(model_files(folder))
    for name, digest in sorted(expected.items()):
        if name not in present:
            raise CardMismatch(f"{folder / name} is missing: {card_path} lists it")
        actual = file_digest(folder / name)
        if actual != digest:
            raise CardMismatch(f"{folder / name} does not match its model card: sha256 {actual[:16]}... but "
                               f"{card_path} says {digest[:16]}...; the file was changed or corrupted "
                               f"(restore it with git, or rebuild with `dvc repro` in foundation/)")
    extra = sorted(present - set(expected))
    if extra:
        raise CardMismatch(f"{folder / extra[0]} is not in {card_path}: a shipped model folder holds only the "
                           f"files its card lists")
    return card


def corpus_card(spec: CorpusSpec, n: int, seed: int) -> dict:
    return dict(asdict(spec), n_images=int(n), seed=int(seed))


# ----------------------------------------------------------------- corpus files
ATTRIBUTES = ("shape", "colour", "context", "size", "noise")


def save_corpus(folder: str | Path, part: str, images: np.ndarray, captions: np.ndarray, rows: list[dict]) -> Path:
    """``<folder>/<part>.npz``: images, captions and one array per attribute."""
    path = Path(folder) / f"{part}.npz"
    arrays = {a: np.array([r[a] for r in rows]) for a in ATTRIBUTES}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, captions=captions.astype(str), **arrays)
    return path


def load_corpus(folder: str | Path, part: str) -> dict[str, np.ndarray]:
    path = Path(folder) / f"{part}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run the corpus stage of foundation/dvc.yaml first)")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# --------------------------------------------------------------------- export
def export_clip(trained_dir: str | Path, out_dir: str | Path) -> Path:
    """The trained world CLIP as it ships: its open_clip config and float16
    safetensors weights (``create_model(name, pretrained=<file>)`` loads them)."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from failmap.embedder import SHIPPED_CLIP_WEIGHTS, WORLD_CLIP_WEIGHTS, world_clip_paths
    trained_dir, out_dir = Path(trained_dir), Path(out_dir)
    config = world_clip_paths(trained_dir)[0]
    state = torch.load(trained_dir / WORLD_CLIP_WEIGHTS, map_location="cpu", weights_only=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    shutil.copy(config, out_dir / config.name)
    save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in state.items()},
              str(out_dir / SHIPPED_CLIP_WEIGHTS))
    return out_dir


def export_decoder(pipe, out_dir: str | Path) -> Path:
    """The world decoder as it ships: ``save_pretrained`` with float16
    safetensors (``load_decoder`` reads it back as float32)."""
    import torch

    from failmap.decoders.training import save_pipeline
    pipe.unet.to(torch.float16)
    try:
        return save_pipeline(pipe, out_dir)
    finally:
        pipe.unet.to(torch.float32)


def hardware() -> dict:
    """Where a model was trained, for its card."""
    import platform

    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return dict(cpu=cpu, threads=torch.get_num_threads(), gpu=gpu, torch=torch.__version__)


# ------------------------------------------------- the foundation pipeline's stages
CORPUS_DIR = "data/corpus"       # relative to foundation/, where its stages run
CORPUS_STREAMS = {"train": 0, "heldout": 1}  # render_corpus stream of each part: independent draws
WORK_DIR = "work"                # trained models before export, the decoder's checkpoint
BUILD_DIR = "build"              # the exported models with their cards; the publish stage copies them to
                                 # models/pretrained/ (not a DVC output there: see foundation/dvc.yaml)
METRICS_DIR = "metrics"
PLOTS_DIR = "plots"


def load_foundation_params(path: str | Path = "params.yaml"):
    """foundation/params.yaml, validated; a bad key stops the stage before any work."""
    import os

    import torch

    from failmap.params import FoundationParams, ParamsError, load_params
    try:
        params = load_params(path, FoundationParams)
    except ParamsError as error:
        raise SystemExit(f"foundation: {error}")
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return params


def corpus_spec(params) -> CorpusSpec:
    c = params.corpus
    if c.min_size > c.max_size:
        raise SystemExit(f"foundation: corpus.min_size {c.min_size} > corpus.max_size {c.max_size}")
    return CorpusSpec.everything(min_size=c.min_size, max_size=c.max_size, max_noise=c.max_noise)


def built_dir(name: str) -> Path:
    """Where the foundation pipeline exports a model (relative to foundation/)."""
    return Path(BUILD_DIR) / name


def _copy_checked(source: Path, dest: str | Path) -> dict:
    """Replace ``dest`` with ``source`` after checking ``source`` against its card; returns the card."""
    import shutil
    card = verify_card(source)
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    return card


def publish(name: str) -> dict:
    """Copy a built model (checked against its card) to models/pretrained/; returns the card."""
    card = _copy_checked(built_dir(name), shipped_dir(name))
    verify_card(shipped_dir(name))
    return card


def install_shipped(name: str, dest: str | Path) -> dict:
    """Copy a shipped foundation model into a pipeline folder (as a hub client
    fills its cache) after checking it against its card; returns the card."""
    return _copy_checked(shipped_dir(name), dest)
