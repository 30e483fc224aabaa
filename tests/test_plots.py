import csv
import json

import numpy as np
import pytest
from PIL import Image

from failmap import plots


def random_images(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_image_grid_size_and_nearest_upscaling(tmp_path):
    images = random_images(5)
    path = plots.image_grid(images, tmp_path / "grid.png", ncol=3, upscale=4)
    picture = np.asarray(Image.open(path).convert("RGB"))
    pad = plots.GRID_PAD
    assert picture.shape == (2 * 32 + 3 * pad, 3 * 32 + 4 * pad, 3)
    assert (picture.shape[1], picture.shape[0]) == plots.grid_size(5, 8, 8, ncol=3, upscale=4)
    # image 4 sits at row 1, col 1; every source pixel became a 4x4 block
    y, x = pad + 32 + pad, pad + 32 + pad
    np.testing.assert_array_equal(picture[y:y + 32:4, x:x + 32:4], images[4])
    np.testing.assert_array_equal(picture[y + 3:y + 32:4, x + 3:x + 32:4], images[4])
    assert not list(tmp_path.glob(".*.tmp"))


def test_image_grid_with_title_and_labels_adds_text_strips(tmp_path):
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    path = plots.image_grid(images, tmp_path / "g.png", ncol=8, upscale=2, title="planted: snow",
                            labels=["circle", "a label far too long for a 16 px cell"])
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[:2] == (plots.TITLE_HEIGHT + 16 + plots.LABEL_HEIGHT + 2 * plots.GRID_PAD,
                                 2 * 16 + 3 * plots.GRID_PAD)
    title_strip = picture[:plots.TITLE_HEIGHT]
    label_strip = picture[plots.TITLE_HEIGHT + plots.GRID_PAD + 16:][:plots.LABEL_HEIGHT]
    assert (title_strip < 128).any() and (label_strip < 128).any()  # text was drawn


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 8, 8), np.uint8), "uint8 \\(N, H, W, 3\\)"),
    (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((0, 8, 8, 3), np.uint8), "no images"),
])
def test_image_grid_rejects_bad_images(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        plots.image_grid(bad, tmp_path / "x.png")


def test_image_grid_rejects_wrong_label_count(tmp_path):
    with pytest.raises(ValueError, match="1 labels for 2 images"):
        plots.image_grid(random_images(2), tmp_path / "x.png", labels=["a"])


def test_bar_plot_writes_png(tmp_path):
    path = plots.bar_plot({"none": 0.6, "caption": 0.7, "direction": 0.8}, {"none": 0.01, "direction": 0.02},
                          tmp_path / "bars.png", title="hard-subpopulation accuracy", ylabel="accuracy")
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] >= 400
    with pytest.raises(ValueError, match="'other'"):
        plots.bar_plot({"a": 1.0}, {"other": 0.1}, tmp_path / "bad.png", title="t", ylabel="y")


def test_write_plot_data_json_and_csv(tmp_path):
    rows = [{"arm": "none", "accuracy": np.float32(0.5), "n": np.int64(3), "note": None},
            {"arm": "caption", "accuracy": 0.75, "n": 4, "note": "x"}]
    json_path = plots.write_plot_data(rows, tmp_path / "arms.json")
    assert json.loads(json_path.read_text()) == [
        {"arm": "none", "accuracy": 0.5, "n": 3, "note": None},
        {"arm": "caption", "accuracy": 0.75, "n": 4, "note": "x"}]
    csv_path = plots.write_plot_data(rows, tmp_path / "arms.csv")
    with open(csv_path) as f:
        assert list(csv.DictReader(f))[1] == {"arm": "caption", "accuracy": "0.75", "n": "4", "note": "x"}


@pytest.mark.parametrize("rows, name, match", [
    ([{"a": float("nan")}], "x.json", "row 0 key 'a' is nan"),
    ([{"a": 1}, {"b": 2}], "x.json", "row 1 has keys"),
    ([{"a": [1, 2]}], "x.csv", "is a list"),
    ([], "x.csv", "no rows"),
    ([{"a": 1}], "x.yaml", "must end in .json or .csv"),
])
def test_write_plot_data_rejects_bad_rows(tmp_path, rows, name, match):
    with pytest.raises((ValueError, TypeError), match=match):
        plots.write_plot_data(rows, tmp_path / name)
    assert not (tmp_path / name).exists()
