"""Pictures and plot data that every stage writes.

Two kinds of output:

- PNG pictures for people (and MLflow artifacts): ``image_grid`` for sample
  images, ``bar_plot`` for per-arm numbers. Drawn with PIL or with a bare
  matplotlib ``Figure`` (Agg canvas, no pyplot): no global backend to set, no
  figure left open between calls, works on headless machines.
- Data files for ``dvc plots``: ``write_plot_data`` writes rows as CSV or JSON
  in the long format DVC's ``linear`` / ``bar_horizontal`` templates take (one
  row per point; ROC curves come from ``failmap.ranking.roc_rows``). JSON is
  strict: NaN/Infinity are refused, unlike ``dvc plots show --json`` output
  that other JSON readers reject.

All writes go through ``atomic_path``: a crashed stage leaves no half file.
"""
from __future__ import annotations

import functools

import csv
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from failmap.io import atomic_path

GRID_PAD = 2          # px between cells and around the grid
LABEL_HEIGHT = 14     # px of the strip under each cell when labels are given
TITLE_HEIGHT = 20     # px of the strip above the grid when a title is given
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


@functools.lru_cache(maxsize=None)
def _font(size: int):
    """DejaVu Sans (shipped with matplotlib: dashes, arrows, Greek letters all
    have glyphs, unlike Pillow's default font, which drew a box for a dash),
    else Pillow's default."""
    try:
        from matplotlib import font_manager
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except (ImportError, OSError, ValueError):
        pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow without FreeType
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut (ending in '..') so that it is at most ``width`` px wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".." if text else ""


def grid_size(n: int, height: int, width: int, ncol: int = 8, upscale: int = 4,
              title: bool = False, labels: bool = False) -> tuple[int, int]:
    """(width, height) in px of the PNG ``image_grid`` writes for ``n`` images."""
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    cell_h = height * upscale + (LABEL_HEIGHT if labels else 0)
    return (ncol * width * upscale + (ncol + 1) * GRID_PAD,
            (TITLE_HEIGHT if title else 0) + nrow * cell_h + (nrow + 1) * GRID_PAD)


def image_grid(images: np.ndarray, path: str | Path, ncol: int = 8, upscale: int = 4,
               title: str | None = None, labels: list[str] | None = None) -> Path:
    """Write uint8 (N, H, W, 3) images as one PNG grid, row by row.

    Each image is enlarged ``upscale`` times by pixel repetition (nearest
    neighbour: 32x32 images stay sharp, no blur invents detail). ``labels``
    (one short string per image) are written under the cells, ``title``
    above the grid; both are cut to fit. Size: see ``grid_size``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"image_grid: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise ValueError("image_grid: no images to draw")
    if ncol < 1 or upscale < 1:
        raise ValueError(f"image_grid: ncol and upscale must be >= 1, got ncol={ncol}, upscale={upscale}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"image_grid: {len(labels)} labels for {len(images)} images")

    n, h, w, _ = images.shape
    ncol = min(ncol, n)
    big = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    cell_w, cell_h = w * upscale, h * upscale + (LABEL_HEIGHT if labels is not None else 0)
    top = TITLE_HEIGHT if title else 0
    size = grid_size(n, h, w, ncol, upscale, title=bool(title), labels=labels is not None)
    canvas = np.full((size[1], size[0], 3), BACKGROUND, dtype=np.uint8)
    for i, image in enumerate(big):
        row, col = divmod(i, ncol)
        y = top + GRID_PAD + row * (cell_h + GRID_PAD)
        x = GRID_PAD + col * (cell_w + GRID_PAD)
        canvas[y:y + h * upscale, x:x + cell_w] = image

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    if labels is not None:
        font = _font(LABEL_HEIGHT - 3)
        for i, label in enumerate(labels):
            row, col = divmod(i, ncol)
            y = top + GRID_PAD + row * (cell_h + GRID_PAD) + h * upscale + 1
            x = GRID_PAD + col * (cell_w + GRID_PAD)
            draw.text((x + 1, y), _fit(draw, str(label), font, cell_w - 2), fill=TEXT_COLOUR, font=font)
    if title:
        font = _font(TITLE_HEIGHT - 6)
        draw.text((GRID_PAD, 2), _fit(draw, title, font, size[0] - 2 * GRID_PAD), fill=TEXT_COLOUR, font=font)

    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def bar_plot(values: dict[str, float], errors: dict[str, float] | None, path: str | Path,
             title: str, ylabel: str) -> Path:
    """Write a PNG bar chart of ``values`` (in their order) with optional error
    bars (``errors``: same keys or a subset, e.g. std over seeds)."""
    from matplotlib.figure import Figure

    if not values:
        raise ValueError("bar_plot: values is empty")
    unknown = sorted(set(errors or {}) - set(values))
    if unknown:
        raise ValueError(f"bar_plot: errors has keys {unknown} that are not in values")
    names = list(values)
    heights = [float(values[k]) for k in names]
    # NaN draws no error bar (0 would draw a cap that claims "no spread").
    yerr = None if errors is None else [float(errors.get(k, math.nan)) for k in names]

    fig = Figure(figsize=(max(4.0, 0.7 * len(names) + 1.5), 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(range(len(names)), heights, yerr=yerr, capsize=3, color="#4c72b0")
    ax.bar_label(bars, fmt="%.3g", fontsize=7, label_type="center", color="white")  # clear of error bars
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def interval_plot(table: dict[str, dict], path: str | Path, title: str) -> Path:
    """A PNG with one row per figure of a study table ({name: mean, low, high,
    values}): each run's value as a dot, the mean as a tick and its 95 %
    interval as a line. Shares (0..1) on one axis, differences (names with
    " minus ") on a second one centred on 0; counts are left to the table."""
    from matplotlib.figure import Figure

    def kind(name, r):
        if r.get("mean") is None:
            return None
        if " minus " in name:
            return "difference"
        return "share" if 0.0 <= r["mean"] <= 1.0 else None
    panels = {k: [(n, r) for n, r in table.items() if kind(n, r) == k] for k in ("share", "difference")}
    panels = {k: rows for k, rows in panels.items() if rows}
    if not panels:
        raise ValueError("interval_plot: no figure with a mean in 0..1 or a difference")
    heights = [0.3 * len(rows) + 0.9 for rows in panels.values()]
    fig = Figure(figsize=(8.5, sum(heights) + 0.6), dpi=110, layout="constrained")
    axes = fig.subplots(len(panels), 1, height_ratios=heights, squeeze=False)[:, 0]
    for ax, (panel, rows) in zip(axes, panels.items()):
        for y, (name, r) in enumerate(rows):
            dots = [v for v in r.get("values", {}).values() if v is not None]
            ax.plot(dots, [y] * len(dots), "o", color="#999999", markersize=3, zorder=2)
            if r.get("low") is not None:
                ax.plot([r["low"], r["high"]], [y, y], color="#4c72b0", linewidth=3, zorder=3)
            ax.plot([r["mean"]], [y], "|", color="#c44e52", markersize=14, markeredgewidth=2, zorder=4)
        ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
        ax.invert_yaxis()
        if panel == "share":
            ax.set_xlim(0, 1)
        else:
            reach = max(0.05, *(abs(v) for _, r in rows for v in (r["low"], r["high"], r["mean"]) if v is not None))
            ax.set_xlim(-1.1 * reach, 1.1 * reach)
            ax.axvline(0, color="black", linewidth=0.8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_title(title, fontsize=9)
    axes[-1].set_xlabel("grey: one seed; red: mean; blue: 95 % interval of the mean")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def line_plot(rows: list[dict], x: str, ys: list[str], path: str | Path, title: str, ylabel: str,
              hlines: dict[str, float] | None = None) -> Path:
    """Write a PNG with one line per key of ``ys`` over ``x`` (e.g. a quality
    curve against training steps); ``hlines``: label -> level of a dashed bar."""
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("line_plot: rows is empty")
    fig = Figure(figsize=(6.4, 3.8), dpi=100, layout="constrained")
    ax = fig.subplots()
    xs = [r[x] for r in rows]
    for y in ys:
        ax.plot(xs, [r[y] for r in rows], marker="o", markersize=3, label=y)
    for label, level in (hlines or {}).items():
        ax.axhline(level, linestyle="--", color="grey", linewidth=1)
        ax.annotate(label, (xs[0], level), fontsize=7, color="grey", va="bottom")
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _plain(value, where: str):
    """A JSON/CSV-ready scalar: numpy scalars unwrapped, non-finite floats refused."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"write_plot_data: {where} is {value}; plot data must be finite "
                         "(strict JSON has no NaN/Infinity)")
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise TypeError(f"write_plot_data: {where} is a {type(value).__name__}; expected a number, string, bool or None")
    return value


def write_plot_data(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` (dicts with the same keys) for ``dvc plots``.

    ``.json``: a list of objects (an empty list is allowed: a stage whose
    plot has no data this time still writes its declared output); ``.csv``: a
    header plus one line per row (None -> empty cell). Any other suffix is an error.
    """
    path = Path(path)
    if path.suffix not in (".json", ".csv"):
        raise ValueError(f"write_plot_data: {path} must end in .json or .csv")
    if not rows and path.suffix == ".csv":
        raise ValueError(f"write_plot_data: no rows to write to {path} (a CSV needs a header)")
    fields = list(rows[0]) if rows else []
    clean = []
    for i, row in enumerate(rows):
        if list(row) != fields:
            raise ValueError(f"write_plot_data: row {i} has keys {list(row)}, row 0 has {fields}")
        clean.append({k: _plain(v, f"row {i} key {k!r}") for k, v in row.items()})

    with atomic_path(path) as tmp:
        if path.suffix == ".json":
            tmp.write_text(json.dumps(clean, indent=1, allow_nan=False) + "\n")
        else:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(clean)
    return path
