"""The foundation models: the corpus, model cards and their refusals, resumable
decoder training, the coverage check on task worlds, and the shipped models
loading through open_clip's and diffusers' own calls."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import yaml

from failmap import foundation, shipped
from failmap.decoders.loader import load_decoder
from failmap.decoders.training import train_decoder
from failmap.decoders.world import EmbeddingDecoderPipeline
from failmap.embedder import SHIPPED_CLIP_WEIGHTS, load_embedder, register_config, world_clip_paths
from failmap.foundation import (CLIP_NAME, DECODER_NAME, CardMismatch, CorpusSpec, install_shipped,
                                render_corpus, shipped_dir, uncovered, verify_card, write_card)
from failmap.params import FoundationParams, ParamsError, load_params, overlay, params_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_corpus_covers_every_shape_colour_and_context_uniformly():
    spec = CorpusSpec.everything()
    images, captions, rows = render_corpus(spec, 3000, seed=0)
    assert images.shape == (3000, 32, 32, 3) and images.dtype == np.uint8 and len(captions) == 3000
    for key, values in (("shape", spec.shapes), ("colour", spec.colours), ("context", spec.contexts)):
        counts = {v: sum(r[key] == v for r in rows) for v in values}
        expected = 3000 / len(values)
        assert min(counts.values()) > 0.75 * expected and max(counts.values()) < 1.25 * expected, (key, counts)
    sizes = np.array([r["size"] for r in rows])
    assert sizes.min() < spec.min_size + 0.02 and sizes.max() > spec.max_size - 0.02
    # every caption names its own shape; streams are independent draws
    assert all(r["shape"] in c for r, c in zip(rows, captions))
    other, _, _ = render_corpus(spec, 50, seed=0, stream=1)
    assert not np.array_equal(other, images[:50])
    again, _, _ = render_corpus(spec, 50, seed=0)
    np.testing.assert_array_equal(again, images[:50])


def test_card_lists_every_file_and_refuses_a_changed_missing_or_extra_file(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "weights.bin").write_bytes(b"abc")
    (folder / "config.json").write_text("{}")
    card = write_card(folder, {"model": "m"})
    assert set(card["files"]) == {"config.json", "unet/weights.bin"}
    assert verify_card(folder)["model"] == "m"

    (folder / "unet" / "weights.bin").write_bytes(b"abd")
    with pytest.raises(CardMismatch, match=r"unet/weights.bin does not match its model card"):
        verify_card(folder)
    (folder / "unet" / "weights.bin").write_bytes(b"abc")
    (folder / "stray.txt").write_text("x")
    with pytest.raises(CardMismatch, match="stray.txt is not in"):
        verify_card(folder)
    (folder / "stray.txt").unlink()
    (folder / "config.json").unlink()
    with pytest.raises(CardMismatch, match="config.json is missing"):
        verify_card(folder)
    with pytest.raises(FileNotFoundError, match="card.json not found"):
        verify_card(tmp_path)


def test_uncovered_names_each_missing_value():
    card = {"corpus": dict(shapes=["circle", "star"], colours=["red"], contexts=["snow"], min_size=0.3,
                           max_size=0.9, max_noise=0.1, image_size=32)}
    ok = dict(classes=["circle"], colours=["red"], contexts=["snow"], min_size=0.45, max_size=0.8, noise=0.06,
              image_size=32)
    assert uncovered(card, **ok) == []
    missing = uncovered(card, **dict(ok, classes=["circle", "hexagon"], max_size=0.95, noise=0.2, image_size=64))
    text = " | ".join(missing)
    assert "hexagon" in text and "0.95" in text and "world.noise 0.2" in text and "data.image_size 64" in text
    assert len(missing) == 4


def test_resumed_decoder_training_equals_an_uninterrupted_run(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 8, 8, 3), dtype=np.uint8)
    embeds = rng.normal(size=(24, 8)).astype(np.float32)
    kwargs = dict(space="test", channels=[8, 16], steps=6, batch_size=4, lr=1e-3, warmup=1, train_timesteps=50,
                  patch_size=1, seed=3, device="cpu", text_cond_prob=0.5, scale_shift=True, checkpoint_every=2)
    straight = train_decoder(images, embeds, embeds, tmp_path / "a", checkpoint_path=tmp_path / "a.pt", **kwargs)
    paused = train_decoder(images, embeds, embeds, tmp_path / "b", checkpoint_path=tmp_path / "b.pt",
                           stop_at=3, **kwargs)
    assert paused["steps_done"] == 3 and straight["steps_done"] == 6
    resumed = train_decoder(images, embeds, embeds, tmp_path / "b", checkpoint_path=tmp_path / "b.pt", **kwargs)
    assert resumed["steps_done"] == 6 and resumed["history"] == straight["history"]
    a = EmbeddingDecoderPipeline.from_pretrained(tmp_path / "a").unet.state_dict()
    b = EmbeddingDecoderPipeline.from_pretrained(tmp_path / "b").unet.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="decays over 6 steps, this one's over 8"):
        train_decoder(images, embeds, embeds, tmp_path / "c", checkpoint_path=tmp_path / "b.pt",
                      **dict(kwargs, steps=8))
    with pytest.raises(ValueError, match="at step 6, past this run's 4 steps"):
        train_decoder(images, embeds, embeds, tmp_path / "c", checkpoint_path=tmp_path / "b.pt",
                      **dict(kwargs, steps=4, decay_steps=6))
    with pytest.raises(ValueError, match="space 'test'.*the CLIP changed"):
        train_decoder(images, embeds, embeds, tmp_path / "c", checkpoint_path=tmp_path / "b.pt",
                      **dict(kwargs, space="another"))
    with pytest.raises(ValueError, match="another network design: channels \\[8, 16\\] there, \\[8, 8\\] here"):
        train_decoder(images, embeds, embeds, tmp_path / "c", checkpoint_path=tmp_path / "b.pt",
                      **dict(kwargs, channels=[8, 8]))


def test_a_finished_decoder_run_extends_at_the_floor_learning_rate(tmp_path):
    from failmap.decoders.training import LR_FLOOR
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 8, 8, 3), dtype=np.uint8)
    embeds = rng.normal(size=(24, 8)).astype(np.float32)
    kwargs = dict(space="test", channels=[8, 16], batch_size=4, lr=1e-3, warmup=1, train_timesteps=50,
                  patch_size=1, seed=3, device="cpu", scale_shift=True, log_every=1)
    train_decoder(images, embeds, embeds, tmp_path / "a", checkpoint_path=tmp_path / "a.pt", steps=6, **kwargs)
    extended = train_decoder(images, embeds, embeds, tmp_path / "a", checkpoint_path=tmp_path / "a.pt",
                             steps=9, decay_steps=6, **kwargs)
    assert extended["steps_done"] == 9 and extended["decay_steps"] == 6
    lrs = {h["step"]: h["lr"] for h in extended["history"]}
    assert lrs[1] > lrs[6]   # the first run decayed
    # after the decay the rate is the floor (logged after the step's scheduler update)
    assert lrs[6] == lrs[7] == lrs[8] == pytest.approx(1e-3 * LR_FLOOR)
    # the history goes on from the first run's: steps 0..8 once each
    assert sorted(lrs) == list(range(9))


def test_foundation_params_validate_their_own_schema(tmp_path):
    params = load_params(REPO / "foundation" / "params.yaml", FoundationParams)
    assert params.decoder.checkpoint_every >= 1 and params.corpus.n_heldout >= 1
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"decoder": {"chekpoint_every": 5}}))
    with pytest.raises(ParamsError, match="decoder.chekpoint_every"):
        load_params(bad, FoundationParams)


# ---------------------------------------------------------------- shipped models
def test_task_world_outside_the_foundation_corpus_is_refused_before_any_work():
    default = yaml.safe_load((REPO / "params.yaml").read_text())

    def params_over_default(over):
        return params_from_dict(overlay(default, over))
    with pytest.raises(ParamsError, match=r"does not cover world.noise 0.5"):
        params_over_default({"world": {"noise": 0.5}})
    cifar = {"source": "cifar10", "root": "data/raw", "download": False, "n_val": 10, "n_pool": 10}
    with pytest.raises(ParamsError, match=r"clip.source = 'world'.*data.source cifar10"):
        params_over_default({"~data": None, "data": cifar, "world": None})
    with pytest.raises(ParamsError, match=r"decoder.source = 'world'.*clip.source corpus"):
        params_over_default({"clip": {"source": "corpus"}})
    # every world the corpus covers runs on the shipped models unchanged
    params_over_default({"world": {"classes": ["moon", "diamond", "star"], "colours": ["pink", "black"],
                                   "contexts": ["road", "night"], "planted_attribute": "colour"}, "seed": 7})
    params_over_default({"clip": {"source": "corpus"}, "decoder": {"source": "corpus"}, "world": {"noise": 0.5}})


def test_shipped_models_match_their_cards_and_fit_the_size_budget():
    total = 0
    for name in (CLIP_NAME, DECODER_NAME):
        card = verify_card(shipped_dir(name))
        assert card["corpus"]["shapes"] == list(CorpusSpec.everything().shapes)
        for key in ("params", "training", "quality_heldout"):
            assert key in card, (name, key)
        # where it trained: one machine (CLIP), or each resumed run's (the decoder's `runs`)
        runs = card.get("runs", [card])
        assert runs and all("hardware" in r for r in runs), name
        if "runs" in card:
            assert runs[0]["from_step"] == 0 and runs[-1]["to_step"] == card["training"]["steps_done"]
            assert all(a["to_step"] == b["from_step"] for a, b in zip(runs, runs[1:])), "the runs leave a gap"
        total += sum((shipped_dir(name) / f).stat().st_size for f in card["files"])
    assert total <= 40 * 2 ** 20
    decoder_card = json.loads((shipped_dir(DECODER_NAME) / foundation.CARD).read_text())
    clip_card = json.loads((shipped_dir(CLIP_NAME) / foundation.CARD).read_text())
    assert decoder_card["clip"]["space"] == clip_card["space"]


def test_shipped_clip_loads_through_open_clip_create_model():
    folder = shipped_dir(CLIP_NAME)
    config, weights = world_clip_paths(folder)
    assert weights.name == SHIPPED_CLIP_WEIGHTS
    model = open_clip.create_model(register_config(config), pretrained=str(weights))
    emb = load_embedder("world", model_dir=folder, device="cpu")
    tokens = open_clip.get_tokenizer(config.stem)(["a photo of a star"])
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(direct, emb.embed_texts(["a photo of a star"]), atol=1e-5)


def test_shipped_decoder_loads_through_from_pretrained_and_draws(tmp_path):
    folder = shipped_dir(DECODER_NAME)
    pipe = EmbeddingDecoderPipeline.from_pretrained(folder, dtype=torch.float32)
    decoder = load_decoder("world", folder, device="cpu")
    assert pipe.unet.dtype == decoder.unet.dtype == torch.float32
    emb = load_embedder("world", model_dir=shipped_dir(CLIP_NAME), device="cpu")
    images = decoder.decode_texts(emb.embed_texts(["a photo of a red star", "a photo of a blue circle"]),
                                  num_inference_steps=2, show_progress=False)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


def test_install_refuses_a_tampered_shipped_model(tmp_path, monkeypatch):
    fake_root = tmp_path / "repo"
    shutil.copytree(shipped_dir(CLIP_NAME), fake_root / foundation.PRETRAINED_DIR / CLIP_NAME)
    monkeypatch.setattr(shipped, "repo_root", lambda: fake_root)
    install_shipped(CLIP_NAME, tmp_path / "ok")
    weights = fake_root / foundation.PRETRAINED_DIR / CLIP_NAME / SHIPPED_CLIP_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CardMismatch, match=r"world-clip/weights.safetensors does not match its model card"):
        install_shipped(CLIP_NAME, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_publish_copies_a_built_model_checked_against_its_card(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the foundation pipeline's stages run in foundation/
    monkeypatch.setattr(shipped, "repo_root", lambda: tmp_path / "repo")
    built = foundation.built_dir("m")
    built.mkdir(parents=True)
    (built / "weights.bin").write_bytes(b"w")
    write_card(built, {"model": "m"})
    assert foundation.publish("m")["model"] == "m"
    assert (shipped_dir("m") / "weights.bin").read_bytes() == b"w"
    (built / "weights.bin").write_bytes(b"x")
    with pytest.raises(CardMismatch, match="weights.bin does not match"):
        foundation.publish("m")
    assert (shipped_dir("m") / "weights.bin").read_bytes() == b"w"  # what was published stays


def test_sampling_is_chosen_on_one_heldout_half_by_the_weakest_figure(monkeypatch):
    from failmap import foundation_eval
    heldout = {"images": np.arange(10)[:, None], "shape": np.array(list("abcdeabcde"))}
    selection, report = foundation_eval.heldout_halves(heldout)
    assert set(selection["images"].ravel()).isdisjoint(report["images"].ravel())
    assert len(selection["shape"]) + len(report["shape"]) == 10

    def fake_quality(decoder, embedder, judge, part, spec, *, guidance_scale, num_inference_steps, **_):
        assert part is selection
        # guidance sharpens prompts and spoils images decoded from embeddings; steps change nothing
        prompt, image = min(1.0, 0.6 + 0.15 * guidance_scale), max(0.0, 1.2 - 0.2 * guidance_scale)
        return {"shape_prompt": {"clip_accuracy": prompt, "judge": {"accuracy": prompt}},
                "colour_prompt": {"clip_accuracy": 1.0}, "context_prompt": {"clip_accuracy": 1.0},
                "from_image_embedding": {"judge": {"accuracy": image}}}, {}
    monkeypatch.setattr(foundation_eval, "decoder_quality", fake_quality)
    chosen, rows = foundation_eval.select_sampling(None, None, None, selection, None, guidance_grid=[1, 2, 3],
                                                   steps_grid=[20, 10], seed=0)
    # a guidance per kind: prompts' weakest figure / bar is best at g3 (colour 1.0 / 0.95), images' at g1
    # (1.0 / 0.9); one guidance for both would have had to take g2 (0.89); the fewer steps on a tie
    assert chosen == {"guidance_scale": 1.0, "text_guidance_scale": 3.0, "num_inference_steps": 10}
    assert len(rows) == 6 and {r["num_inference_steps"] for r in rows} == {10, 20}
    assert [round(r["weakest_text_vs_bar"], 3) for r in rows[::2]] == [0.833, 1.0, 1.053]
    # over samplers: the (sampler, steps) whose weaker kind is best; a sampler better on images alone loses
    rows = [dict(r, sampler="ddim") for r in rows]
    better = [dict(r, sampler="dpm_solver", num_inference_steps=5,
                   weakest_image_vs_bar=r["weakest_image_vs_bar"] + 0.01) for r in rows]
    assert foundation_eval.pick_sampling(rows + better) == {"sampler": "dpm_solver", "guidance_scale": 1.0,
                                                            "text_guidance_scale": 3.0, "num_inference_steps": 5}
    images_only = [dict(r, weakest_text_vs_bar=r["weakest_text_vs_bar"] - 0.2) for r in better]
    assert foundation_eval.pick_sampling(rows + images_only)["sampler"] == "ddim"
