"""The embedder: open_clip weights-file round trip, shapes, normalisation,
determinism, preprocessing that matches open_clip's own, and clear errors."""
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from failmap.embedder import Embedder, load_embedder, world_clip_paths
from failmap.io import write_json

TINY_ARCH = "failmap-test-tiny"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny open_clip architecture registered under TINY_ARCH, random weights saved to a file."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny_arch")
    write_json(folder / f"{TINY_ARCH}.json", TINY_CONFIG)
    open_clip.add_model_config(folder / f"{TINY_ARCH}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH, pretrained=None).eval()
    weights = folder / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return model, weights


def _images(n, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_weights_file_round_trip_gives_identical_embeddings(tiny):
    model, weights = tiny
    loaded = load_embedder("open_clip", arch=TINY_ARCH, pretrained=str(weights), device="cpu", batch_size=4)
    in_memory = Embedder(model, open_clip.get_tokenizer(TINY_ARCH), space="x", dim=16, device=torch.device("cpu"))
    images, texts = _images(10), ["a photo of a red star", "a photo of a circle at night"]
    # the file holds exactly the weights; the two instances may still round differently
    # (~1e-7: vector kernels depend on memory alignment, measured on an AMD EPYC)
    saved, reloaded = model.state_dict(), loaded.model.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    np.testing.assert_allclose(loaded.embed_images(images), in_memory.embed_images(images), rtol=0, atol=1e-6)
    np.testing.assert_allclose(loaded.embed_texts(texts), in_memory.embed_texts(texts), rtol=0, atol=1e-6)
    assert loaded.space.startswith(f"open_clip:{TINY_ARCH}:file-sha1:")
    assert loaded.dim == 16 and loaded.device.type == "cpu"


def test_tensor_preprocessing_matches_open_clip_transform(tiny):
    model, weights = tiny
    emb = load_embedder("open_clip", arch=TINY_ARCH, pretrained=str(weights), device="cpu")
    pp = open_clip.image_transform(16, is_train=False)  # open_clip's own per-image PIL pipeline
    images = _images(3, size=16)
    ref = torch.stack([pp(Image.fromarray(im)) for im in images])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_image(ref), dim=-1).numpy()
    np.testing.assert_allclose(emb.embed_images(images), expected, atol=1e-5)
    # other sizes, non-square too: resize of the shorter side + centre crop, as open_clip does
    # (PIL resizes in uint8, so allow its rounding: ~1/255 divided by the std)
    rng = np.random.default_rng(0)
    for h, w in [(24, 24), (48, 40), (40, 48), (8, 8), (50, 33)]:
        coarse = rng.integers(0, 256, (2, h // 4, w // 4, 3), dtype=np.uint8)  # smooth images: bicubic
        images = np.stack([np.asarray(Image.fromarray(c).resize((w, h), Image.BILINEAR)) for c in coarse])
        ref = torch.stack([pp(Image.fromarray(im)) for im in images])
        np.testing.assert_allclose(emb.preprocess(images).numpy(), ref.numpy(), atol=0.03)


def test_shapes_normalisation_determinism(tiny):
    _, weights = tiny
    emb = load_embedder("open_clip", arch=TINY_ARCH, pretrained=str(weights), device="cpu", batch_size=3)
    images = _images(7, size=32)  # larger than the model input: resized on the fly
    a = emb.embed_images(images)
    assert a.shape == (7, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a, emb.embed_images(images))
    np.testing.assert_allclose(a, emb.embed_images(images, batch_size=100), atol=1e-5)
    t = emb.embed_texts(["a photo of a heart", "a photo of a cross", "a photo of a heart"])
    assert t.shape == (3, 16) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(t[0], t[2]) and not np.allclose(t[0], t[1])
    rows = ["a photo of a heart", "a photo of a cross", "a photo of a heart", "a photo of a star"]
    per_row = emb.embed_texts_per_row(np.array(rows))  # each distinct caption embedded once
    assert per_row.shape == (4, 16)
    np.testing.assert_allclose(per_row, emb.embed_texts(rows), atol=1e-5)
    assert emb.embed_images(np.zeros((0, 16, 16, 3), np.uint8)).shape == (0, 16)


def test_bad_arguments_fail_clearly(tiny, tmp_path, monkeypatch):
    _, weights = tiny
    with pytest.raises(ValueError, match="unknown open_clip arch 'ViT-B-3'.*ViT-B-32"):
        load_embedder("open_clip", arch="ViT-B-3", pretrained="openai")
    with pytest.raises(ValueError, match="unknown embedder source"):
        load_embedder("clip", arch=TINY_ARCH, pretrained=str(weights))
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_embedder("open_clip", arch=TINY_ARCH, pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="neither a weights file nor a pretrained tag"):
        load_embedder("open_clip", arch="ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="needs pretrained"):
        load_embedder("open_clip", arch=TINY_ARCH, pretrained=None)
    with pytest.raises(FileNotFoundError, match="pretrain_clip"):
        load_embedder("world", model_dir=tmp_path)
    emb = load_embedder("open_clip", arch=TINY_ARCH, pretrained=str(weights), device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        emb.embed_images(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="list of strings"):
        emb.embed_texts("a photo of a star")


def test_hub_tag_without_network_says_so(monkeypatch):
    # Simulate the offline download failure quickly (the real one retries for ~45 s).
    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download file: Name or service not known")
    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(RuntimeError, match="could not load open_clip pretrained 'openai' for ViT-B-32: no network"):
        load_embedder("open_clip", arch="ViT-B-32", pretrained="openai", device="cpu")


def test_world_folder_with_config_and_weights_loads(tmp_path):
    config_path, weights_path = world_clip_paths(tmp_path)
    write_json(config_path, TINY_CONFIG)
    open_clip.add_model_config(config_path)
    torch.manual_seed(1)
    torch.save(open_clip.create_model(config_path.stem).state_dict(), weights_path)
    emb = load_embedder("world", model_dir=tmp_path, device="cpu")
    assert emb.dim == 16 and emb.space.startswith("world-clip:") and len(emb.space) == len("world-clip:") + 12
    assert emb.embed_texts(["a photo of a star"]).shape == (1, 16)
