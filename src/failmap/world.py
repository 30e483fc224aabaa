"""The embedded default world: procedural 32x32 images with known attributes
and one planted failure mode per class.

Every image shows one object (its *kind* is the class: circle, square, ...)
with a colour, a size, a position and a rotation, drawn over a textured
*context* (grass, indoors, snow, ...), plus pixel noise. Each image gets a
caption built from its attributes ("a photo of a small red star on the grass").

The planted failure: for each class ``k`` one value ``v_k`` of the planted
attribute (a context by default) is rare among the class's *train* images
(``train_rate``) and common in val/test/pool (``eval_rate``). To make that
rarity bite the way real dataset bias does, the class's *confuser* (the next
class) carries ``v_k`` in ``confuser_rate`` of its train images, so in train
``v_k`` is evidence for the confuser; a classifier that leans on it fails on
class ``k`` in context ``v_k``. ``eval_confuser_rate`` carries that
co-occurrence into val, test and pool (as in CelebA, where test follows the
training distribution), so that what the classifier gets wrong there is the
planted subpopulation, not every image whose context breaks the train
correlation; null draws the confuser's value there like any other. In the
colour world a drawn planted colour is kept ``min_planted_distance`` (RGB)
away from the colour its class wears in train (the previous class's planted
one): a class whose planted orange sits next to its own red does not fail
(``benchmarks/world_probe.md``). No object is drawn in a colour too close to
its background's (``min_contrast``), so that the errors the world causes are
the planted ones, not invisible objects. The corpus (what the world's own CLIP and
decoder pre-train on) is unbiased: every attribute uniform and independent.

The superclass world (``superclasses``): each class is a group of shapes
(class "round" = circle, heart, moon), the way a CIFAR-100 superclass groups
fine classes. One member of each group (``rare_members``, or drawn from the
seed) is rare among the class's train images (``train_rate``) and common in
val/test/pool (``eval_rate``); the other members share the rest evenly. Colours
and contexts are uniform there (no planted context, no confuser), so what a
classifier gets wrong is the rare member: the CIFAR-100-superclass shift,
offline. The members are the class's sub-type vocabulary (``meta['subtypes']``,
like CIFAR-100's fine label names); which of them is rare is ground truth.

Ground truth (attributes, ``subpop``; the superclass world's ``member``) is
written beside the images for scoring only; the method never reads it.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from failmap.data import CORPUS, Prepared, Split

COLOUR_RGB = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.96, 0.55, 0.10),
    "yellow": (0.96, 0.90, 0.18),
    "green": (0.18, 0.72, 0.22),
    "blue": (0.15, 0.30, 0.92),
    "purple": (0.56, 0.20, 0.76),
    "white": (0.97, 0.97, 0.97),
    "pink": (0.97, 0.55, 0.75),
    "black": (0.08, 0.08, 0.08),
}

CONTEXT_PHRASE = {
    "grass": "on the grass",
    "indoors": "indoors",
    "snow": "in the snow",
    "water": "on the water",
    "night": "at night",
    "sand": "on the sand",
    "road": "on the road",
}

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "moon")

SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges

# Contrast rule (``min_contrast``): a colour is never drawn over a context whose
# mean colour is closer than this (Euclidean distance in RGB, 0..1 scale) to it.
# At the default 0.35 that excludes exactly white in the snow, green on the
# grass and blue on the water: objects nearly invisible at 32x32, whose errors
# have nothing to do with the planted failure and drown it (measured: with them,
# 206 of 383 baseline test errors were not planted).
MIN_CONTRAST = 0.35


# ----------------------------------------------------------------- backgrounds
def _texture(context: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) float image in [0, 1] with the context's texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    noise = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if context == "grass":
        blades = rng.normal(0.0, 1.0, size).astype(np.float32)[None, :]  # vertical streaks
        shade = 0.5 + 0.12 * blades + 0.06 * noise + 0.1 * (yy - 0.5)
        base = np.stack([0.35 * shade, 1.0 * shade, 0.25 * shade], -1)
    elif context == "indoors":
        floor = yy > 0.68 + 0.04 * np.sin(phase)
        planks = 0.5 + 0.5 * np.sin(yy * 60 + phase) * floor
        wall = np.stack([0.80 + 0 * xx, 0.74 + 0 * xx, 0.62 + 0 * xx], -1) + 0.02 * noise[..., None]
        wood = np.stack([0.45 + 0.08 * planks, 0.28 + 0.05 * planks, 0.14 + 0 * xx], -1)
        base = np.where(floor[..., None], wood, wall)
    elif context == "snow":
        speck = (rng.random((size, size)) < 0.08).astype(np.float32)
        v = 0.90 + 0.04 * noise - 0.10 * speck - 0.06 * yy
        base = np.stack([v, v + 0.02, v + 0.06], -1)
    elif context == "water":
        waves = np.sin(yy * 40 + 3 * np.sin(xx * 6 + phase) + phase)
        base = np.stack([0.10 + 0.05 * waves, 0.32 + 0.08 * waves, 0.62 + 0.10 * waves], -1)
        base = base + 0.02 * noise[..., None]
    elif context == "night":
        stars = (rng.random((size, size)) < 0.025).astype(np.float32)
        v = 0.05 + 0.02 * noise + 0.05 * yy
        base = np.stack([v, v, 2.2 * v], -1) + 0.8 * stars[..., None]
    elif context == "sand":
        dunes = np.sin((xx + yy) * 14 + phase)
        v = 0.82 + 0.05 * dunes + 0.05 * noise
        base = np.stack([v, 0.86 * v, 0.58 * v], -1)
    elif context == "road":
        stripe = (np.abs(yy - 0.5) < 0.04) & (np.sin(xx * 25 + phase) > 0)
        v = 0.33 + 0.04 * noise
        base = np.stack([v, v, v], -1) + 0.55 * stripe[..., None]
    else:
        raise ValueError(f"unknown context '{context}'; known: {sorted(CONTEXT_PHRASE)}")
    return np.clip(base, 0.0, 1.0)


# ---------------------------------------------------------------------- shapes
def _outline(shape: str) -> np.ndarray:
    """Polygon vertices of a shape in unit coordinates (radius ~1 around 0)."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    if shape == "circle":
        pts = np.stack([np.cos(t), np.sin(t)], -1)
    elif shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.8
    elif shape == "triangle":
        a = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(a), -np.sin(a)], -1) * 1.05
        pts[:, 1] += 0.2
    elif shape == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.05, 0.45)
        pts = np.stack([r * np.cos(a), r * np.sin(a)], -1)
    elif shape == "cross":
        w = 0.33
        pts = np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w],
                        [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]])
    elif shape == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y + 2.5], -1) / 16.5
    elif shape == "diamond":
        pts = np.array([[0, -1.05], [0.7, 0], [0, 1.05], [-0.7, 0]])
    elif shape == "moon":
        outer = np.stack([np.cos(t[:33] * 1.0 - np.pi / 2), np.sin(t[:33] - np.pi / 2)], -1)
        inner = np.stack([0.45 + 0.75 * np.cos(-t[:33] + np.pi / 2), 0.9 * np.sin(-t[:33] + np.pi / 2)], -1)
        pts = np.concatenate([outer, inner])
    else:
        raise ValueError(f"unknown shape '{shape}'; known: {list(SHAPES)}")
    return np.asarray(pts, dtype=np.float64)


def _alpha_mask(shape: str, size_frac: float, cx: float, cy: float, angle: float, side: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the shape on a (side, side) grid."""
    big = side * SUPERSAMPLE
    pts = _outline(shape)
    c, s = np.cos(angle), np.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    pts = pts * (size_frac * big / 2) + np.array([cx * big, cy * big])
    canvas = Image.new("L", (big, big), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts], fill=255)
    return np.asarray(canvas.resize((side, side), Image.BOX), dtype=np.float32) / 255.0


def render(shape: str, colour: str, context: str, size_frac: float, cx: float, cy: float,
           angle: float, noise: float, rng: np.random.Generator, side: int = 32) -> np.ndarray:
    """One uint8 (side, side, 3) image."""
    bg = _texture(context, side, rng)
    rgb = np.array(COLOUR_RGB[colour], dtype=np.float32) * rng.uniform(0.88, 1.05)
    alpha = _alpha_mask(shape, size_frac, cx, cy, angle, side)[..., None]
    img = bg * (1 - alpha) + rgb * alpha
    img = img + rng.normal(0.0, noise, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# -------------------------------------------------------------------- sampling
@functools.cache
def context_mean_rgb(context: str) -> tuple[float, float, float]:
    """Mean colour of a context's texture (a fixed-seed average of 16 draws)."""
    rng = np.random.default_rng(0)
    return tuple(float(x) for x in np.mean([_texture(context, 32, rng).reshape(-1, 3).mean(0)
                                            for _ in range(16)], 0))


def contrast(colour: str, context: str) -> float:
    """RGB distance (0..1 scale) between a colour and a context's mean colour."""
    return float(np.linalg.norm(np.subtract(COLOUR_RGB[colour], context_mean_rgb(context))))


def allowed(options: list[str], fixed: str, *, fixed_is_context: bool,
            min_contrast: float = MIN_CONTRAST) -> list[str]:
    """The options (colours for a fixed context, or contexts for a fixed colour)
    with at least ``min_contrast`` against it; all of them if none would be left."""
    ok = [o for o in options
          if (contrast(o, fixed) if fixed_is_context else contrast(fixed, o)) >= min_contrast]
    return ok or list(options)


def caption_for(shape: str, colour: str | None, context: str | None, size_word: str | None) -> str:
    words = ["a photo of a"] + [w for w in (size_word, colour, shape) if w]
    if context:
        words.append(CONTEXT_PHRASE[context])
    return " ".join(words)


def random_caption(shape: str, colour: str, context: str, size_word: str, rng: np.random.Generator) -> str:
    """A corpus caption with words dropped at random (size half the time, colour
    and context a fifth), so that short prompts ("a photo of a star") are in the
    distribution CLIP and the decoder learn."""
    drop = rng.random(3)
    return caption_for(shape, None if drop[1] < 0.2 else colour, None if drop[2] < 0.2 else context,
                       None if drop[0] < 0.5 else size_word)


def choose_planted(classes: list[str], values: list[str], seed: int, *,
                   distance: Callable[[str, str], float] | None = None, min_distance: float = 0.0,
                   tries: int = 1000) -> list[str]:
    """One planted value per class drawn from the seed, distinct while values last.

    With ``distance`` and ``min_distance`` > 0 the draw is repeated (same seed,
    next draws of its stream) until every class's planted value is at least
    ``min_distance`` from the value the class co-occurs with in train (the
    previous class's planted value: the class is that class's confuser); if no
    draw of ``tries`` gets there, the draw whose closest such pair is farthest.
    The first draw is the plain one, so a draw that already passes is unchanged."""
    rng = np.random.default_rng([seed, 7])

    def draw() -> list[str]:
        order = list(rng.permutation(len(values)))
        while len(order) < len(classes):
            order += list(rng.permutation(len(values)))
        return [values[i] for i in order[: len(classes)]]

    def closest_pair(planted: list[str]) -> float:
        pairs = [(planted[k], planted[k - 1]) for k in range(len(planted)) if planted[k] != planted[k - 1]]
        return min((distance(a, b) for a, b in pairs), default=float("inf"))

    best = draw()
    if distance is None or min_distance <= 0:
        return best
    best_gap = closest_pair(best)
    for _ in range(tries - 1):
        if best_gap >= min_distance:
            break
        planted = draw()
        gap = closest_pair(planted)
        if gap > best_gap:
            best, best_gap = planted, gap
    return best


def shared_planted_values(planted: Mapping[str, str]) -> dict[str, list[str]]:
    """{value: its classes} for every value planted in more than one class (``planted``: class -> value).
    Drawn values repeat once a world has more classes than values, and so do the values classes wear in
    train (each its previous class's planted one): classes that share one may not fail on it (README,
    "Worlds and seeds the defaults were not chosen on")."""
    by_value: dict[str, list[str]] = {}
    for cls, value in planted.items():
        by_value.setdefault(value, []).append(cls)
    return {value: classes for value, classes in by_value.items() if len(classes) > 1}


def colour_distance(a: str, b: str) -> float:
    """RGB distance (0..1 scale) between two colours of ``COLOUR_RGB``."""
    return float(np.linalg.norm(np.subtract(COLOUR_RGB[a], COLOUR_RGB[b])))


def _attribute_probs(n_values: int, planted: int, rate: float, confuser_value: int | None,
                     confuser_rate: float) -> np.ndarray:
    """Distribution over the planted attribute's values for one class and split."""
    p = np.zeros(n_values)
    p[planted] = rate
    rest = [i for i in range(n_values) if i != planted and i != confuser_value]
    if confuser_value is not None and confuser_value != planted:
        p[confuser_value] = confuser_rate
    remaining = 1.0 - p.sum()
    p[rest] += remaining / len(rest)
    return p


def member_probs(name: str, n_members: int, rare: int, train_rate: float, eval_rate: float) -> np.ndarray:
    """Superclass world: distribution over one class's member shapes in split
    ``name``: the rare member at the split's rate, the others evenly (corpus: uniform)."""
    if name == CORPUS:
        return np.full(n_members, 1.0 / n_members)
    rate = train_rate if name == "train" else eval_rate
    p = np.full(n_members, (1.0 - rate) / (n_members - 1))
    p[rare] = rate
    return p


def _split_probs(name: str, k: int, n_values: int, planted_idx: list[int], train_rate: float, eval_rate: float,
                 confuser_rate: float, eval_confuser_rate: float | None) -> np.ndarray:
    """Distribution over the planted attribute's values for class ``k`` in split ``name``."""
    if name == CORPUS:
        return np.full(n_values, 1.0 / n_values)
    # the class whose confuser is k: class k carries that class's planted value often
    confused = (k - 1) % len(planted_idx)
    conf_value = planted_idx[confused] if planted_idx[confused] != planted_idx[k] else None
    if name == "train":
        return _attribute_probs(n_values, planted_idx[k], train_rate, conf_value, confuser_rate)
    # eval_confuser_rate None: the confuser's value gets the same share as every other value
    return _attribute_probs(n_values, planted_idx[k], eval_rate,
                            None if eval_confuser_rate is None else conf_value, eval_confuser_rate or 0.0)


def sample_split(name: str, n: int, *, classes, colours, contexts, planted_attribute, planted,
                 train_rate, eval_rate, confuser_rate, noise, min_size, max_size, seed,
                 split_index: int, min_contrast: float = MIN_CONTRAST, side: int = 32,
                 eval_confuser_rate: float | None = None, superclasses=None,
                 rare_members=None) -> tuple[Split, list[dict]]:
    """Render one split. Classes are balanced; the planted attribute follows
    the split's bias (see module docstring); everything else is uniform.
    With ``superclasses`` (one member list per class, ``rare_members`` one of
    each) the shape is a member drawn by ``member_probs`` and the planted
    attribute is uniform."""
    rng = np.random.default_rng([seed, 1000 + split_index])
    n_cls = len(classes)
    by_context = planted_attribute == "context"
    values = contexts if by_context else colours
    planted_idx = [values.index(v) for v in planted]
    # per value of the planted attribute, the values of the other one it may be drawn with (contrast rule)
    others = {v: allowed(colours if by_context else contexts, v, fixed_is_context=by_context,
                         min_contrast=min_contrast) for v in values}
    labels = np.arange(n) % n_cls
    rng.shuffle(labels)
    images = np.empty((n, side, side, 3), dtype=np.uint8)
    captions, rows = [], []
    if superclasses is None:
        probs = [_split_probs(name, k, len(values), planted_idx, train_rate, eval_rate, confuser_rate,
                              eval_confuser_rate) for k in range(n_cls)]
    else:
        probs = [np.full(len(values), 1.0 / len(values))] * n_cls
        rare_idx = [list(g).index(r) for g, r in zip(superclasses, rare_members)]
        shape_probs = [member_probs(name, len(g), rare_idx[k], train_rate, eval_rate)
                       for k, g in enumerate(superclasses)]
    for i in tqdm(range(n), desc=f"world {name}", leave=False, mininterval=2):
        k = int(labels[i])
        v = int(rng.choice(len(values), p=probs[k]))
        options = others[values[v]]  # the other attribute: uniform over the pairs with contrast
        other = options[int(rng.integers(len(options)))]
        colour, context = (other, values[v]) if by_context else (values[v], other)
        size_frac = float(rng.uniform(min_size, max_size))
        margin = size_frac / 2
        cx, cy = rng.uniform(margin, 1 - margin, 2) if margin < 0.5 else (0.5, 0.5)
        angle = float(rng.uniform(0, 2 * np.pi))
        if superclasses is None:
            shape, subpop, extra = classes[k], int(v == planted_idx[k]), {}
        else:
            m = int(rng.choice(len(superclasses[k]), p=shape_probs[k]))
            shape, subpop = superclasses[k][m], int(m == rare_idx[k])
            extra = {"member": shape}
        images[i] = render(shape, colour, context, size_frac, cx, cy, angle, noise, rng, side)
        size_word = "small" if size_frac < (min_size + max_size) / 2 else "large"
        if name == CORPUS:
            captions.append(random_caption(shape, colour, context, size_word, rng))
        else:
            captions.append(caption_for(shape, colour, context, size_word))
        rows.append(dict(id=f"world/{name}/{i:06d}", split=name, label=k, class_name=classes[k],
                         colour=colour, context=context, size=round(size_frac, 3), subpop=subpop, **extra))
    ids = np.array([r["id"] for r in rows])
    split = Split(images=images, labels=labels.astype(np.int64), ids=ids,
                  captions=np.array(captions) if name == CORPUS else None)
    return split, rows


def generate_world(*, classes, colours, contexts, n_train, n_val, n_test, n_pool, n_corpus,
                   planted_attribute, planted_values, train_rate, eval_rate, confuser_rate,
                   noise, min_size, max_size, seed, min_contrast: float = MIN_CONTRAST,
                   eval_confuser_rate: float | None = None, superclasses=None, rare_members=None,
                   min_planted_distance: float = 0.0) -> Prepared:
    """The whole world: train/val/test/pool/corpus splits, meta and ground truth
    (``n_corpus`` 0: no corpus split, for a run whose stages read none).
    ``superclasses`` (one list of member shapes per class) makes it the
    superclass world (module docstring); ``rare_members`` null draws them."""
    if superclasses is None:
        if rare_members is not None:
            raise WorldSettingError("world.rare_members", rare_members, "null unless world.superclasses is set")
        for c in classes:
            if c not in SHAPES:
                raise ValueError(f"world.classes: unknown shape '{c}'; known: {list(SHAPES)}")
    else:
        superclasses = [list(g) for g in superclasses]
        check_superclasses(list(classes), superclasses, rare_members)
        rare_members = list(rare_members) if rare_members else choose_rare_members(superclasses, seed)
    for c in colours:
        if c not in COLOUR_RGB:
            raise ValueError(f"world.colours: unknown colour '{c}'; known: {sorted(COLOUR_RGB)}")
    for c in contexts:
        if c not in CONTEXT_PHRASE:
            raise ValueError(f"world.contexts: unknown context '{c}'; known: {sorted(CONTEXT_PHRASE)}")
    values = list(contexts if planted_attribute == "context" else colours)
    if superclasses is not None:  # the planted attribute is uniform; each class still needs a value to index
        planted = [values[0]] * len(classes)
    else:
        # a drawn planted colour is told apart from the one its class carries in train (min_planted_distance);
        # contexts differ by texture as well as colour, so they are drawn freely
        planted = list(planted_values) if planted_values else choose_planted(
            list(classes), values, seed, distance=colour_distance if planted_attribute == "colour" else None,
            min_distance=min_planted_distance)
    common = dict(classes=list(classes), colours=list(colours), contexts=list(contexts),
                  planted_attribute=planted_attribute, planted=planted, train_rate=train_rate,
                  eval_rate=eval_rate, confuser_rate=confuser_rate, noise=noise,
                  min_size=min_size, max_size=max_size, seed=seed, min_contrast=min_contrast,
                  eval_confuser_rate=eval_confuser_rate, superclasses=superclasses, rare_members=rare_members)
    splits, truth = {}, []
    sizes = dict(train=n_train, val=n_val, test=n_test, pool=n_pool, corpus=n_corpus)
    for index, (name, n) in enumerate(sizes.items()):  # each split its own random stream (split_index)
        if name == CORPUS and n == 0:  # no corpus split: the others are drawn as they are with one
            continue
        splits[name], rows = sample_split(name, n, split_index=index, **common)
        truth += rows
    phrase = (lambda v: CONTEXT_PHRASE[v]) if planted_attribute == "context" else (lambda v: v)
    meta = dict(
        source="world", classes=list(classes), image_size=32,
        vocab=dict(adjectives=list(colours), contexts=[CONTEXT_PHRASE[c] for c in contexts]),
        planted={c: dict(attribute=planted_attribute, value=v, phrase=phrase(v))
                 for c, v in zip(classes, planted)},
    )
    if superclasses is not None:
        meta["planted"] = {c: dict(attribute="member", value=r, phrase=r) for c, r in zip(classes, rare_members)}
        meta["subtypes"] = {c: list(g) for c, g in zip(classes, superclasses)}  # the vocabulary, not which fails
    return Prepared(splits=splits, meta=meta, ground_truth=truth)


class WorldSettingError(ValueError):
    """A world setting that cannot be drawn: its dotted ``key``, ``value`` and what was ``expected``
    (failmap.params reports it as any params error)."""

    def __init__(self, key: str, value, expected: str):
        super().__init__(f"{key} = {value!r}: expected {expected}")
        self.key, self.value, self.expected = key, value, expected


def check_superclasses(classes: list[str], superclasses: list[list[str]], rare_members) -> None:
    """One group of at least two known, distinct shapes per class, each shape in
    one group; ``rare_members`` (if given) one member of each group."""
    if len(superclasses) != len(classes):
        raise WorldSettingError("world.superclasses", superclasses, f"one list of member shapes per entry of "
                                f"world.classes ({len(classes)}), got {len(superclasses)}")
    seen: dict[str, str] = {}
    for i, (name, members) in enumerate(zip(classes, superclasses)):
        if len(members) < 2:
            raise WorldSettingError(f"world.superclasses[{i}]", members, f"at least 2 member shapes for class "
                                    f"{name} (one is the rare one)")
        for m in members:
            if m not in SHAPES:
                raise WorldSettingError(f"world.superclasses[{i}]", members, f"shapes the world draws "
                                        f"({' | '.join(SHAPES)}); class {name} has unknown shape '{m}'")
            if m in seen:
                raise WorldSettingError("world.superclasses", superclasses, f"each shape in one group only: "
                                        f"'{m}' is in both {seen[m]} and {name}")
            seen[m] = name
    if rare_members is not None and len(rare_members) != len(classes):
        raise WorldSettingError("world.rare_members", rare_members, f"null or one member per entry of "
                                f"world.classes ({len(classes)}), got {len(rare_members)}")
    for i, (name, members, rare) in enumerate(zip(classes, superclasses, rare_members or [])):
        if rare not in members:
            raise WorldSettingError(f"world.rare_members[{i}]", rare, f"one of world.superclasses[{i}] "
                                    f"({' | '.join(members)}): '{rare}' is not a member of {name}")


def choose_rare_members(superclasses: list[list[str]], seed: int) -> list[str]:
    """One member of each group, drawn from the seed."""
    rng = np.random.default_rng([seed, 11])
    return [g[int(rng.integers(len(g)))] for g in superclasses]
