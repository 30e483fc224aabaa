"""Decoders: sphere helpers, the world decoder (train, save, load, sample),
the unCLIP / Stable Diffusion wrappers on tiny random-weight pipelines, and
the embedder/decoder compatibility check. Tiny configs: seconds each."""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # everything below loads from local folders

from failmap.decoders.bridge import ModalityBridge  # noqa: E402
from failmap.decoders.loader import check_compatible, load_decoder  # noqa: E402
from failmap.decoders.sphere import normalize, slerp  # noqa: E402
from failmap.decoders.training import build_unet, train_decoder  # noqa: E402
from failmap.decoders.world import EmbeddingDecoderPipeline  # noqa: E402

torch.set_num_threads(1)
DIM = 8


# ------------------------------------------------------------------ helpers
def unit(rng, n, d=DIM):
    return normalize(rng.normal(size=(n, d)))


def test_slerp_endpoints_norm_and_even_angles():
    rng = np.random.default_rng(0)
    a, b = unit(rng, 1)[0], unit(rng, 1)[0]
    np.testing.assert_allclose(slerp(a, b, 0.0), a, atol=1e-6)
    np.testing.assert_allclose(slerp(a, b, 1.0), b, atol=1e-6)
    alphas = np.linspace(0, 1, 5, dtype=np.float32)
    path = slerp(np.tile(a, (5, 1)), b, alphas)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-6)
    total = np.arccos(a @ b)
    np.testing.assert_allclose(np.arccos(np.clip(path @ a, -1, 1)), alphas * total, atol=1e-4)
    np.testing.assert_allclose(slerp(a, a * 3, 0.5), a, atol=1e-6)  # parallel: no 0/0
    with pytest.raises(ValueError, match="opposite"):
        slerp(a, -a, 0.5)
    with pytest.raises(ValueError, match="all-zero"):
        slerp(a, np.zeros(DIM), 0.5)


def test_bridge_moves_text_centre_onto_image_centre():
    rng = np.random.default_rng(1)
    shared = unit(rng, 50)
    image_gap, text_gap = np.eye(DIM)[0] * 2, np.eye(DIM)[1] * 2  # two cones
    images, texts = normalize(shared + image_gap), normalize(shared + text_gap)
    bridge = ModalityBridge.fit(images, texts)
    bridged = bridge(texts)
    # bridged captions sit in the image cone: closer to their own image than the raw text is
    assert (np.sum(bridged * images, 1) > np.sum(texts * images, 1)).all()
    assert np.mean(np.sum(bridged * images, 1)) > 0.95
    with pytest.raises(ValueError, match="dimension"):
        bridge(unit(rng, 2, DIM + 1))


# ------------------------------------------------------------- world decoder
def two_colour_world(n=64, side=8):
    """Half the images solid red, half solid blue; the embedding says which."""
    rng = np.random.default_rng(0)
    which = np.arange(n) % 2
    images = np.zeros((n, side, side, 3), np.uint8)
    images[which == 0, ..., 0] = 230
    images[which == 1, ..., 2] = 230
    centres = np.eye(DIM)[[0, 1]]
    image_embeds = normalize(centres[which] + 0.05 * rng.normal(size=(n, DIM)))
    text_embeds = normalize(centres[which] + np.eye(DIM)[2])  # captions in another cone
    return images, image_embeds, text_embeds, which


# v-prediction with the plain loss: on this toy it learns the condition in a few dozen steps
# (epsilon, or min-SNR weighting, which mutes the high-noise steps where colour is decided, need more)
TINY = dict(channels=[8, 16], batch_size=16, lr=1e-2, train_timesteps=100, warmup=5, device="cpu",
            prediction_type="v_prediction", snr_gamma=None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    images, image_embeds, text_embeds, which = two_colour_world()
    out = tmp_path_factory.mktemp("decoder") / "world_decoder"
    metrics = train_decoder(images, image_embeds, text_embeds, out, space="test-space", steps=60, seed=0, **TINY)
    return out, metrics, (images, image_embeds, text_embeds, which)


def test_train_decoder_learns_the_condition_and_round_trips(trained):
    out, metrics, (_, image_embeds, text_embeds, which) = trained
    assert metrics["steps"] == 60 and metrics["n_parameters"] > 0
    pipe = load_decoder("world", out, device="cpu")
    assert isinstance(pipe, EmbeddingDecoderPipeline)
    assert (pipe.space, pipe.dim, pipe.image_size) == ("test-space", DIM, 8)
    assert pipe.scheduler.config.steps_offset == 1
    kwargs = dict(guidance_scale=2.0, num_inference_steps=10, seed=0, show_progress=False)
    red_blue = np.eye(DIM)[[0, 1, 0, 1]]
    images = pipe.decode_images(red_blue, **kwargs).astype(float)
    assert images.shape == (4, 8, 8, 3) and pipe.decode_images(red_blue, **kwargs).dtype == np.uint8
    red, blue = images[..., 0].mean((1, 2)), images[..., 2].mean((1, 2))
    assert (red[[0, 2]] > blue[[0, 2]] + 40).all() and (blue[[1, 3]] > red[[1, 3]] + 40).all()
    # captions go through the bridge and land on the right colour too
    from_text = pipe.decode_texts(text_embeds[:4], **kwargs).astype(float)
    red, blue = from_text[..., 0].mean((1, 2)), from_text[..., 2].mean((1, 2))
    assert ((red > blue) == (which[:4] == 0)).all()


def test_text_guidance_reaches_text_conditions_only(trained):
    """``text_guidance_scale`` is the guidance of decode_texts / decode_captions; decode_images keeps
    ``guidance_scale``; None falls back to it."""
    from failmap.decoders.bridge import sampling_for
    pipe = load_decoder("world", trained[0], device="cpu")
    _, image_embeds, text_embeds, _ = trained[2]
    kwargs = dict(num_inference_steps=3, seed=0, show_progress=False)
    at = {g: (pipe.decode_images(image_embeds[:3], guidance_scale=g, **kwargs),
              pipe.decode_texts(text_embeds[:3], guidance_scale=g, **kwargs)) for g in (1.5, 4.0)}
    assert not np.array_equal(at[1.5][1], at[4.0][1])
    both = dict(guidance_scale=1.5, text_guidance_scale=4.0, **kwargs)
    np.testing.assert_array_equal(pipe.decode_images(image_embeds[:3], **both), at[1.5][0])
    np.testing.assert_array_equal(pipe.decode_texts(text_embeds[:3], **both), at[4.0][1])
    np.testing.assert_array_equal(pipe.decode_captions(["a", "b", "c"], text_embeds[:3], **both), at[4.0][1])
    np.testing.assert_array_equal(pipe.decode_texts(text_embeds[:3], **{**both, "text_guidance_scale": None}),
                                  at[1.5][1])
    with pytest.raises(ValueError, match="condition kind"):
        sampling_for("audio", both)
    # steps and sampler too: text conditions take theirs, image conditions ignore them
    own = dict(sampler="dpm_solver", num_inference_steps=2, text_sampler="ddim", text_num_inference_steps=3)
    assert sampling_for("text", own) == dict(sampler="ddim", num_inference_steps=3)
    assert sampling_for("image", own) == dict(sampler="dpm_solver", num_inference_steps=2)
    texts = dict(seed=0, show_progress=False, guidance_scale=1.5, **own)
    np.testing.assert_array_equal(pipe.decode_texts(text_embeds[:3], **texts),
                                  pipe.decode_texts(text_embeds[:3], **sampling_for("text", texts)))
    assert not np.array_equal(pipe.decode_texts(text_embeds[:3], **texts),
                              pipe.decode_texts(text_embeds[:3], **{**texts, "text_sampler": None}))


@pytest.mark.parametrize("sampler", [None, "ddim", "dpm_solver"])
def test_decoding_is_seeded_and_independent_of_batch_size(trained, sampler):
    """Also with a multistep solver, whose state must not leak from one batch into the next."""
    pipe = load_decoder("world", trained[0], device="cpu")
    embeds = unit(np.random.default_rng(2), 5)
    kwargs = dict(num_inference_steps=3, show_progress=False, sampler=sampler)
    a = pipe(embeds, seed=7, batch_size=5, **kwargs)
    np.testing.assert_array_equal(a, pipe(embeds, seed=7, batch_size=2, **kwargs))
    assert not np.array_equal(a, pipe(embeds, seed=8, batch_size=5, **kwargs))
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        pipe(embeds[:, :4], **kwargs)
    with pytest.raises(ValueError, match="NaN"):
        pipe(np.full((1, DIM), np.nan), **kwargs)


def test_mixed_precision_sampling_draws_the_same_images_within_rounding(trained):
    pipe = load_decoder("world", trained[0], device="cpu")
    kwargs = dict(guidance_scale=2.0, num_inference_steps=10, seed=0, show_progress=False)
    red_blue = np.eye(DIM)[[0, 1, 0, 1]]
    full = pipe.decode_images(red_blue, **kwargs).astype(float)
    half = pipe.decode_images(red_blue, mixed_precision=True, **kwargs)
    np.testing.assert_array_equal(half, pipe.decode_images(red_blue, mixed_precision=True, **kwargs))
    assert half.dtype == np.uint8 and 0 < np.abs(half - full).mean() < 8  # bfloat16, not float32, yet close
    red, blue = half[..., 0].mean((1, 2)), half[..., 2].mean((1, 2))
    assert (red[[0, 2]] > blue[[0, 2]] + 40).all() and (blue[[1, 3]] > red[[1, 3]] + 40).all()


def test_sampling_settings_pass_mixed_precision_to_the_world_decoder_only():
    from failmap.decoders.loader import sampling_settings
    from failmap.params import load_params
    from failmap.smoke import repo_root
    decoder = load_params(repo_root() / "params.yaml").decoder
    world = sampling_settings(decoder.model_copy(update=dict(mixed_precision=False)))
    assert world == dict(sampler=decoder.sampler, num_inference_steps=decoder.num_inference_steps,
                         guidance_scale=decoder.guidance_scale, text_sampler=decoder.text_sampler,
                         text_num_inference_steps=decoder.text_num_inference_steps,
                         text_guidance_scale=decoder.text_guidance_scale, batch_size=decoder.batch_size,
                         mixed_precision=False)
    assert "mixed_precision" not in sampling_settings(decoder.model_copy(update=dict(source="unclip")))


def test_default_sampling_is_what_the_selection_rule_picks_over_samplers():
    """params.yaml samples as benchmarks/select_decoder_sampler.py chose on the shipped decoder's selection
    half over DDIM and DPM-Solver++ (its rows re-picked here by the rule): the card's own choice."""
    from failmap.foundation_eval import pick_sampling
    from failmap.params import load_params
    from failmap.smoke import repo_root
    decoder = load_params(repo_root() / "params.yaml").decoder
    selection = json.loads((repo_root() / "benchmarks" / "decoder_sampling.json").read_text())
    assert pick_sampling(selection["rows"]) == selection["pick"]
    assert {k: getattr(decoder, k) for k in selection["pick"]} == selection["pick"]
    assert decoder.text_sampler is None and decoder.text_num_inference_steps is None
    card = json.loads((repo_root() / "models" / "pretrained" / "world-decoder" / "card.json").read_text())
    assert {k: card["sampling"][k] for k in ("num_inference_steps", "guidance_scale", "text_guidance_scale")} == \
        {k: selection["pick"][k] for k in ("num_inference_steps", "guidance_scale", "text_guidance_scale")}


def test_sampling_scheduler_keeps_the_models_noise_schedule():
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from failmap.decoders.samplers import sampling_scheduler
    own = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", steps_offset=1)
    assert sampling_scheduler(own, None) is own
    dpm = sampling_scheduler(own, "dpm_solver")
    assert isinstance(dpm, DPMSolverMultistepScheduler) and dpm.config.algorithm_type == "dpmsolver++"
    assert dpm.config.prediction_type == "v_prediction" and dpm.config.beta_schedule == "squaredcos_cap_v2"
    assert isinstance(sampling_scheduler(dpm, "ddim"), DDIMScheduler)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sampling_scheduler(own, "euler")


def test_save_pretrained_from_pretrained_same_images(trained, tmp_path):
    pipe = EmbeddingDecoderPipeline.from_pretrained(trained[0])
    pipe.save_pretrained(tmp_path / "copy")
    again = EmbeddingDecoderPipeline.from_pretrained(tmp_path / "copy")
    assert again.config.space == "test-space" and again.bridge is not None
    np.testing.assert_allclose(again.bridge.mean_text, pipe.bridge.mean_text)
    embeds = unit(np.random.default_rng(3), 2)
    kwargs = dict(num_inference_steps=2, seed=0, show_progress=False)
    np.testing.assert_array_equal(pipe(embeds, **kwargs), again(embeds, **kwargs))


def test_train_decoder_is_deterministic(tmp_path):
    images, image_embeds, text_embeds, _ = two_colour_world(n=16)
    runs = []
    for name in ("a", "b"):
        train_decoder(images, image_embeds, text_embeds, tmp_path / name, space="s", steps=3, seed=5, **TINY)
        runs.append(EmbeddingDecoderPipeline.from_pretrained(tmp_path / name).unet.state_dict())
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=0, atol=0)


def test_snapshots_and_caption_conditioning(tmp_path):
    images, image_embeds, text_embeds, _ = two_colour_world(n=16)
    seen = []
    train_decoder(images, image_embeds, text_embeds, tmp_path / "d", space="s", steps=4, seed=0,
                  text_cond_prob=0.5, snapshot_every=2, on_snapshot=lambda step, pipe: seen.append((step, pipe)),
                  **TINY)
    assert [step for step, _ in seen] == [2]  # not at the end: the saved decoder is the last state
    snapshot = seen[0][1]
    assert isinstance(snapshot, EmbeddingDecoderPipeline) and snapshot.space == "s"
    final = EmbeddingDecoderPipeline.from_pretrained(tmp_path / "d")
    differs = [not torch.equal(a, b) for a, b in zip(snapshot.unet.parameters(), final.unet.parameters())]
    assert any(differs)  # the snapshot was a copy, not the model still being trained


def test_caption_conditioning_learns_captions_the_bridge_alone_cannot_place(tmp_path):
    """Captions whose directions say nothing about the image directions (red captions along e3, blue
    along e4, images along e0 / e1): bridged, a red and a blue caption differ only along e3 - e4, which
    no image embedding has. Trained on its captions too (text_cond_prob), the decoder still draws them."""
    images, image_embeds, _, which = two_colour_world()
    text_embeds = normalize(np.eye(DIM)[[3, 4]][which] + 0.05 * np.random.default_rng(1).normal(size=(len(which), DIM)))
    kwargs = dict(guidance_scale=2.0, num_inference_steps=10, seed=0, show_progress=False)
    train_decoder(images, image_embeds, text_embeds, tmp_path / "d", space="s", steps=120, seed=0,
                  text_cond_prob=0.5, mixed_precision=True, cond_scale=DIM ** 0.5, **TINY)
    pipe = load_decoder("world", tmp_path / "d", device="cpu")
    assert pipe.config.cond_scale == DIM ** 0.5  # saved: sampling scales the conditions as training did
    drawn = pipe.decode_texts(np.eye(DIM)[[3, 4, 3, 4]], **kwargs).astype(float)
    red, blue = drawn[..., 0].mean((1, 2)), drawn[..., 2].mean((1, 2))
    assert (red[[0, 2]] > blue[[0, 2]] + 40).all() and (blue[[1, 3]] > red[[1, 3]] + 40).all()
    # the image arm still works: half of the batches were conditioned on image embeddings
    drawn = pipe.decode_images(np.eye(DIM)[[0, 1]], **kwargs).astype(float)
    assert drawn[0, ..., 0].mean() > drawn[0, ..., 2].mean() + 40 and drawn[1, ..., 2].mean() > drawn[1, ..., 0].mean() + 40


def test_train_decoder_rejects_bad_input(tmp_path):
    images, image_embeds, text_embeds, _ = two_colour_world(n=8)
    with pytest.raises(ValueError, match="uint8"):
        train_decoder(images.astype(np.float32), image_embeds, text_embeds, tmp_path, space="s", steps=1)
    with pytest.raises(ValueError, match=r"image_embeds must be \(N=8"):
        train_decoder(images, image_embeds[:5], text_embeds, tmp_path, space="s", steps=1)
    with pytest.raises(ValueError, match="same D"):
        train_decoder(images, image_embeds, text_embeds[:, :4], tmp_path, space="s", steps=1)
    with pytest.raises(ValueError, match="cond_dropout"):
        train_decoder(images, image_embeds, text_embeds, tmp_path, space="s", steps=1, cond_dropout=1.0)
    with pytest.raises(ValueError, match="text_cond_prob"):
        train_decoder(images, image_embeds, text_embeds, tmp_path, space="s", steps=1, text_cond_prob=1.5)
    with pytest.raises(ValueError, match="cond_scale"):
        train_decoder(images, image_embeds, text_embeds, tmp_path, space="s", steps=1, cond_scale=0.0)
    with pytest.raises(ValueError, match="one caption embedding per image"):
        train_decoder(images, image_embeds, text_embeds[:3], tmp_path, space="s", steps=1, text_cond_prob=0.5)
    with pytest.raises(ValueError, match="divisible"):
        build_unet(DIM, [8, 16, 16, 16], image_size=8, patch_size=2)


def test_load_decoder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain_decoder"):
        load_decoder("world", tmp_path / "missing", device="cpu")
    with pytest.raises(ValueError, match="unknown decoder source"):
        load_decoder("dalle", tmp_path, device="cpu")


# ------------------------------------------------------------- compatibility
class _Decoder:
    def __init__(self, space, dim):
        self.space, self.dim = space, dim


def test_check_compatible_refuses_mismatches_with_params_hint():
    check_compatible("world-clip:abc", 64, _Decoder("world-clip:abc", 64))
    check_compatible("open_clip:X:file", 64, _Decoder(None, 64))  # unknown space: dimension only
    with pytest.raises(ValueError, match=r"gives 64-dim .* expects 768-dim.*clip\.\*.*decoder\.\*"):
        check_compatible("world-clip:abc", 64, _Decoder("open_clip:ViT-L-14:openai", 768))
    with pytest.raises(ValueError, match=r"space mismatch.*'world-clip:abc'.*'world-clip:def'.*pretrain_decoder"):
        check_compatible("world-clip:abc", 64, _Decoder("world-clip:def", 64))


# ---------------------------------------------------------- real-model paths
def open_clip_tokenizer():
    """A transformers CLIPTokenizer on open_clip's bundled BPE file (offline)."""
    import open_clip
    from transformers import CLIPTokenizer
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)
    reference = open_clip.get_tokenizer("ViT-B-32")(["a photo of a red star"])[0]
    ids = tok("a photo of a red star")["input_ids"]
    assert ids == reference[:len(ids)].tolist()  # same ids as open_clip's own tokenizer
    return tok


def tiny_sd_parts(class_embed_dim=None):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=class_embed_dim) \
        if class_embed_dim else {}
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
                                attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **extra)
    vae = AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4, in_channels=3,
                        out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, vocab_size=49408,
                                                max_position_embeddings=77, projection_dim=16))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=open_clip_tokenizer(),
                scheduler=DDIMScheduler(steps_offset=1, clip_sample=False))


@pytest.fixture(scope="module")
def tiny_real_models(tmp_path_factory):
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    root = tmp_path_factory.mktemp("real")
    unclip = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=16, size=16),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            patch_size=8, projection_dim=DIM)),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=DIM),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        **tiny_sd_parts(class_embed_dim=2 * DIM))  # embedding + its noise-level embedding
    unclip.save_pretrained(root / "unclip")
    text = StableDiffusionPipeline(safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False, **tiny_sd_parts())
    text.save_pretrained(root / "sd")
    return root / "unclip", root / "sd"


def test_unclip_decoder_decodes_custom_vectors_and_captions(tiny_real_models):
    unclip_dir, sd_dir = tiny_real_models
    decoder = load_decoder("unclip", unclip_dir, text_model=sd_dir, device="cpu", image_size=32,
                           space="tiny-space")
    assert (decoder.dim, decoder.space) == (DIM, "tiny-space")
    assert decoder.embedding_norm == pytest.approx(np.sqrt(DIM))  # normaliser std 1, mean 0
    check_compatible("tiny-space", DIM, decoder)
    vectors = unit(np.random.default_rng(4), 3)
    kwargs = dict(num_inference_steps=2, guidance_scale=3.0, seed=0, batch_size=2, show_progress=False)
    images = decoder.decode_images(vectors, **kwargs)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    # the same image alone as in a batch (up to float rounding of batched kernels)
    alone = decoder.decode_images(vectors[:1], **kwargs)
    np.testing.assert_allclose(images[:1].astype(int), alone.astype(int), atol=2)
    captions = decoder.decode_captions(["a photo of a red star", "a photo of a blue circle"], **kwargs)
    assert captions.shape == (2, 32, 32, 3) and captions.dtype == np.uint8
    # decoder.sampler swaps the pipelines' schedulers, keeping their noise schedules
    solved = decoder.decode_images(vectors, **kwargs, sampler="dpm_solver")
    assert type(decoder.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert solved.shape == images.shape and not np.array_equal(solved, images)
    decoder.decode_captions(["a photo of a red star"], **kwargs, sampler="dpm_solver")
    assert type(decoder.text_pipe().scheduler).__name__ == "DPMSolverMultistepScheduler"
    with pytest.raises(ValueError, match="bridge"):
        decoder.decode_texts(vectors, **kwargs)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        decoder.decode_images(unit(np.random.default_rng(5), 2, DIM * 2), **kwargs)


def test_unclip_with_bridge_decodes_texts_and_without_text_model_refuses_captions(tiny_real_models):
    rng = np.random.default_rng(6)
    bridge = ModalityBridge.fit(unit(rng, 10), unit(rng, 10))
    decoder = load_decoder("unclip", tiny_real_models[0], device="cpu", bridge=bridge)
    assert decoder.space is None  # a local folder of unknown provenance: dimension check only
    images = decoder.decode_texts(unit(rng, 2), num_inference_steps=1, show_progress=False)
    assert images.shape == (2, 16, 16, 3)  # no image_size given: the pipeline's own size
    with pytest.raises(ValueError, match="decoder.text_model"):
        decoder.decode_captions(["a photo of a star"], num_inference_steps=1)
    with pytest.raises(ValueError, match="carries the bridge"):
        load_decoder("world", tiny_real_models[0], device="cpu", bridge=bridge)


def test_loss_against_predicting_zero_tells_a_decoder_that_learnt_nothing(trained, tmp_path, capsys):
    _, metrics, (images, image_embeds, text_embeds, _) = trained
    assert 0 < metrics["final_loss_vs_zero_prediction"] < 0.9  # the fixture's decoder learnt the colours
    untrained = train_decoder(images, image_embeds, text_embeds, tmp_path / "d", space="s", steps=1, seed=0,
                              **{**TINY, "lr": 1e-9})
    assert untrained["final_loss_vs_zero_prediction"] > 0.9
    assert "learnt almost nothing" in capsys.readouterr().err
