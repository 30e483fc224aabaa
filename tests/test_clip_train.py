"""Pre-training a tiny CLIP: files written, loadable, deterministic, learns an
easy task; the zero-shot report; clear errors."""
import numpy as np
import pytest
import torch

from failmap.captions import fill_caption
from failmap.clip_train import clip_model_config, train_clip
from failmap.evaluation import Attribute, zero_shot_report
from failmap.embedder import load_embedder, world_clip_paths

TINY = dict(embed_dim=16, width=32, layers=1, patch_size=8, text_width=32, text_layers=1, context_length=12,
            batch_size=32, lr=3e-3, warmup=5, device="cpu")
CLASSES = ["circle", "square"]
COLOURS = ["red", "blue"]


def easy_data(n=128, seed=0):
    """16x16 images whose class is the brightness and whose colour is the tint:
    learnable in a few dozen steps by a tiny model."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    colours = rng.integers(0, 2, n)
    base = np.where(labels == 0, 40, 200)[:, None, None, None] * np.ones((n, 16, 16, 3))
    base[..., 0] += np.where(colours == 0, 50, -30)[:, None, None]
    base[..., 2] += np.where(colours == 1, 50, -30)[:, None, None]
    images = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    captions = [f"a photo of a {COLOURS[c]} {CLASSES[k]}" for k, c in zip(labels, colours)]
    return images, labels, np.array(COLOURS)[colours], captions


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    images, labels, colours, captions = easy_data()
    out = tmp_path_factory.mktemp("clip")
    metrics = train_clip(images, captions, out, steps=80, seed=0, **TINY)
    return out, metrics


def test_writes_a_folder_the_embedder_loads(trained):
    out, metrics = trained
    config_path, weights_path = world_clip_paths(out)
    assert config_path.is_file() and weights_path.is_file()
    emb = load_embedder("world", model_dir=out, device="cpu")
    assert emb.dim == 16 and emb.space.startswith("world-clip:")
    assert emb.embed_images(easy_data(4)[0]).shape == (4, 16)
    assert metrics["steps"] == 80 and metrics["n_unique_captions"] == 4
    assert metrics["history"][0]["step"] == 0 and metrics["history"][-1]["step"] == 79


def test_learns_an_easy_task_and_reports_it(trained):
    out, metrics = trained
    assert metrics["final_loss"] < metrics["history"][0]["loss"]
    images, labels, colours, _ = easy_data(64, seed=1)
    emb = load_embedder("world", model_dir=out, device="cpu")
    attrs = {"colour": Attribute(values=colours, phrases={c: c for c in COLOURS}, slot="adjective")}
    report = zero_shot_report(emb, images, labels, CLASSES, attrs)
    assert report["n"] == 64
    assert report["class_accuracy"] >= 0.9, report
    assert report["colour_accuracy"] >= 0.9, report
    assert set(report["class_accuracy_per_class"]) == set(CLASSES)


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    images, _, _, captions = easy_data(64)
    weights = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train_clip(images, captions, tmp_path / name, steps=3, seed=seed, **TINY)
        weights.append(torch.load(world_clip_paths(tmp_path / name)[1]))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_resnet_image_tower_trains_and_loads(tmp_path):
    # layers as a list of 4 block counts = open_clip's ModifiedResNet image tower
    images, _, _, captions = easy_data(32)
    images = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 32x32: the ResNet downsamples 32x
    train_clip(images, captions, tmp_path, steps=2, seed=0, **{**TINY, "layers": [1, 1, 1, 1], "width": 8})
    emb = load_embedder("world", model_dir=tmp_path, device="cpu")
    out = emb.embed_images(images[:3])
    assert out.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_bad_input_fails_clearly(tmp_path):
    images, _, _, captions = easy_data(8)
    with pytest.raises(ValueError, match="8 images but 7 captions"):
        train_clip(images, captions[:7], tmp_path, steps=1, **TINY)
    with pytest.raises(ValueError, match="uint8"):
        train_clip(images.astype(np.float32), captions, tmp_path, steps=1, **TINY)
    with pytest.raises(ValueError, match="patch_size 5 must divide"):
        train_clip(images, captions, tmp_path, steps=1, **{**TINY, "patch_size": 5})
    with pytest.raises(ValueError, match="context_length 6 is too short"):
        train_clip(images, captions, tmp_path, steps=1, **{**TINY, "context_length": 6})
    with pytest.raises(ValueError, match="multiple of 32"):
        train_clip(images, captions, tmp_path, steps=1, **{**TINY, "layers": [1, 1, 1, 1]})  # 16x16 images
    with pytest.raises(ValueError, match="4 block counts"):
        train_clip(images, captions, tmp_path, steps=1, **{**TINY, "layers": [1, 1]})
    with pytest.raises(ValueError, match="init_temperature"):
        train_clip(images, captions, tmp_path, steps=1, init_temperature=0, **TINY)
    with pytest.raises(ValueError, match="text_width must be a multiple of 32"):
        clip_model_config((16, 16), embed_dim=8, width=32, layers=1, patch_size=8, text_width=48,
                          text_layers=1, context_length=8)


def test_template():
    t = "a photo of a {adjective} {noun} {context}"
    assert fill_caption(t, "star") == "a photo of a star"
    assert fill_caption(t, "star", "red", "on the grass") == "a photo of a red star on the grass"
    assert fill_caption(t, "star", context="at night") == "a photo of a star at night"
