"""Generation of the intervention images with a fake decoder whose pixels spell
out the conditioning vector: what was asked for is what can be read back."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from failmap.data import load_split
from failmap.decoders.sphere import angles_towards, normalize, rotate_towards, slerp
from failmap.evaluation import clip_class_predictions, decoded_decision_report, generator_check, hard_neutral_easy_report
from failmap.conditions import class_reference_embeddings, direction_extents, sample_reference_embeddings, tail_images
from failmap.generate import derive_seed, generate_caption, generate_direction, generate_eval, generate_generic
from failmap.generated import keep_on_class, read_manifest, save_generated, save_grid, write_manifest
from failmap.svm import ClassSVM, Preprocessor, Skip

D = 4
SIDE = 6
NOISE = 0.3  # per-image shift of every channel, drawn from the call's seed
CLASSES = ["circle", "square"]


class FakeDecoder:
    """Image i of a call is filled with (v[0], v[1], v[2]) + u_i (u_i from the
    seed) mapped from [-1, 1] to 0..255, where v is its unit conditioning vector."""
    dim = D

    def __init__(self):
        self.calls = []

    def decode_images(self, embeds, seed=0, **kwargs):
        v = normalize(np.asarray(embeds))
        u = np.random.default_rng(seed).uniform(-NOISE, NOISE, size=(len(v), 1))
        self.calls.append(dict(kind="images", n=len(v), seed=seed, kwargs=kwargs))
        colour = np.clip(v[:, :3] + u, -1, 1)
        pixels = np.round((colour + 1) * 127.5).astype(np.uint8)
        return np.broadcast_to(pixels[:, None, None, :], (len(v), SIDE, SIDE, 3)).copy()

    def decode_captions(self, captions, text_embeds, seed=0, **kwargs):
        assert len(captions) == len(text_embeds)
        return self.decode_images(text_embeds, seed=seed, **kwargs)  # identity bridge

    def to_image_space(self, text_embeds):
        return normalize(np.asarray(text_embeds))  # identity bridge


def embed_texts(texts):
    """A fixed unit vector per text."""
    rows = [np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)).normal(size=D) for t in texts]
    return normalize(np.array(rows))


def colour_of(images):
    """Back from pixels to the (noisy) first three coordinates."""
    return images[:, 0, 0, :].astype(float) / 127.5 - 1


def make_svm(weight):
    pre = Preprocessor(mean=np.zeros(len(weight)), std=np.ones(len(weight)))
    return ClassSVM(C=1.0, cv_score=0.7, cv_scores={1.0: 0.7}, weight=np.asarray(weight, float), intercept=0.0,
                    preprocessor=pre, n_val=50, n_errors=10, converged=True)


SKIP = Skip(reason="1 wrong and 49 correct predictions", n_val=50, n_errors=1)
# class 0: the easy side is +e0, so the hard pole is -e0; class 1 has no SVM
SVMS = {0: make_svm([1.0, 0.0, 0.0, 0.0]), 1: SKIP}
REFS = normalize(np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]))


def noise(seed, n):
    return np.random.default_rng(seed).uniform(-NOISE, NOISE, size=(n, 1))


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "generic", "circle") == derive_seed(0, "generic", "circle")
    seeds = {derive_seed(b, arm, c) for b in (0, 1) for arm in ("generic", "caption") for c in CLASSES}
    assert len(seeds) == 8
    assert all(0 <= s < 2 ** 31 for s in seeds)


def test_class_reference_embeddings_are_normalised_class_means():
    X = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    refs = class_reference_embeddings(X, np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(refs[0], [2 ** -0.5, 2 ** -0.5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(refs[1], [0, 0, 1, 0])
    with pytest.raises(ValueError, match="class 2 has no image embeddings"):
        class_reference_embeddings(X, np.array([0, 0, 1]), 3)


def test_generic_decodes_the_reference_caption_of_every_class():
    dec = FakeDecoder()
    refs = [f"a photo of a {c}" for c in CLASSES]
    out = generate_generic(dec, embed_texts, CLASSES, refs, n_per_class=5, base_seed=3, num_inference_steps=7)
    assert len(out) == 10 and out.images.shape == (10, SIDE, SIDE, 3)
    assert out.labels.tolist() == [0] * 5 + [1] * 5
    assert all(c["kwargs"] == {"num_inference_steps": 7} for c in dec.calls)
    for k, name in enumerate(CLASSES):
        m = out.labels == k
        seed = derive_seed(3, "generic", name)
        expected = np.clip(embed_texts([refs[k]])[0, :3] + noise(seed, 5), -1, 1)
        np.testing.assert_allclose(colour_of(out.images[m]), expected, atol=0.01)
        rows = [r for r in out.rows if r["label"] == k]
        assert {r["caption"] for r in rows} == {refs[k]} and {r["seed"] for r in rows} == {seed}
        assert [r["noise_index"] for r in rows] == list(range(5))
    assert [r["index"] for r in out.rows] == list(range(10))
    assert len(set(out.ids)) == 10 and out.skipped == {}


def test_caption_cycles_the_hard_captions_and_skips_classes_without_svm():
    dec = FakeDecoder()
    hard = {0: ["a photo of a circle on the grass", "a photo of a red circle", "a photo of a circle at night"]}
    out = generate_caption(dec, embed_texts, CLASSES, hard, SVMS, n_per_class=7, base_seed=0)
    assert out.labels.tolist() == [0] * 7
    assert [r["caption"] for r in out.rows] == [hard[0][i % 3] for i in range(7)]
    expected = np.clip(embed_texts([r["caption"] for r in out.rows])[:, :3]
                       + noise(derive_seed(0, "caption", "circle"), 7), -1, 1)
    np.testing.assert_allclose(colour_of(out.images), expected, atol=0.01)
    assert list(out.skipped) == ["square"] and SKIP.reason in out.skipped["square"]
    with pytest.raises(ValueError, match="no hard captions"):
        generate_caption(dec, embed_texts, CLASSES, {}, SVMS, n_per_class=2, base_seed=0)


def test_caption_keeps_the_top_captions_and_blends_them_with_the_class_reference():
    hard = {0: ["a photo of a circle on the grass", "a photo of a red circle", "a photo of a circle at night"]}
    out = generate_caption(FakeDecoder(), embed_texts, CLASSES, hard, SVMS, n_per_class=5, base_seed=0,
                           n_captions=2, references=REFS, weight=0.5)
    assert [r["caption"] for r in out.rows] == [hard[0][i % 2] for i in range(5)]
    blended = slerp(np.repeat(REFS[:1], 5, 0), embed_texts([r["caption"] for r in out.rows]), 0.5)
    expected = np.clip(blended[:, :3] + noise(derive_seed(0, "caption", "circle"), 5), -1, 1)
    np.testing.assert_allclose(colour_of(out.images), expected, atol=0.01)
    # weight 1 is the caption alone, whatever the references
    alone = generate_caption(FakeDecoder(), embed_texts, CLASSES, hard, SVMS, n_per_class=5, base_seed=0,
                             n_captions=2, references=REFS, weight=1.0)
    plain = generate_caption(FakeDecoder(), embed_texts, CLASSES, {0: hard[0][:2]}, SVMS, n_per_class=5, base_seed=0)
    np.testing.assert_array_equal(alone.images, plain.images)
    with pytest.raises(ValueError, match="pass references"):
        generate_caption(FakeDecoder(), embed_texts, CLASSES, hard, SVMS, n_per_class=2, base_seed=0, weight=0.5)
    with pytest.raises(ValueError, match="weight must lie"):
        generate_caption(FakeDecoder(), embed_texts, CLASSES, hard, SVMS, n_per_class=2, base_seed=0, weight=0.0)


def test_direction_moves_the_reference_towards_the_hard_pole():
    dec = FakeDecoder()
    out = generate_direction(dec, CLASSES, REFS, SVMS, alpha=0.4, n_per_class=6, base_seed=1)
    assert out.labels.tolist() == [0] * 6 and list(out.skipped) == ["square"]
    condition = slerp(REFS[0], -SVMS[0].direction_raw, 0.4)
    assert condition[0] < REFS[0][0]  # towards -e0, the hard side
    expected = np.clip(condition[:3] + noise(derive_seed(1, "direction", "circle"), 6), -1, 1)
    np.testing.assert_allclose(colour_of(out.images), expected, atol=0.01)
    assert {r["alpha"] for r in out.rows} == {0.4} and {r["side"] for r in out.rows} == {"hard"}
    with pytest.raises(ValueError, match=r"references must be \(2, 4\)"):
        generate_direction(dec, CLASSES, REFS[:1], SVMS, alpha=0.4, n_per_class=2, base_seed=1)
    with pytest.raises(ValueError, match="alpha"):
        generate_direction(dec, CLASSES, REFS, SVMS, alpha=1.5, n_per_class=2, base_seed=1)


def test_extents_measure_how_far_the_class_images_reach_along_the_direction():
    # class 0: reference between e0 and e1, hard pole -e0; its images lie at known angles along that great circle
    ref = REFS[0]
    hard_pole = -SVMS[0].direction_raw
    angles = np.radians(np.linspace(-10, 30, 41))      # -10 deg (easy side) .. +30 deg (hard side)
    images = rotate_towards(np.tile(ref, (len(angles), 1)), hard_pole, np.abs(angles))
    images[angles < 0] = rotate_towards(np.tile(ref, ((angles < 0).sum(), 1)), -hard_pole, -angles[angles < 0])
    np.testing.assert_allclose(angles_towards(images, ref, hard_pole), angles, atol=1e-5)
    labels = np.zeros(len(angles), int)
    extents = direction_extents(SVMS, REFS, np.vstack([images, REFS[1:]]), np.append(labels, 1), quantile=0.9)
    assert list(extents) == [0]  # class 1 has no SVM
    hard, easy = extents[0]
    np.testing.assert_allclose([np.degrees(hard), np.degrees(easy)], [26.0, 6.0], atol=0.01)
    with pytest.raises(ValueError, match="quantile"):
        direction_extents(SVMS, REFS, images, labels, quantile=0.4)
    with pytest.raises(ValueError, match="no image embeddings"):
        direction_extents(SVMS, REFS, images[:0], labels[:0])


def test_extent_walk_stops_where_the_class_images_end():
    extents = {0: (np.radians(20.0), np.radians(5.0))}
    dec = FakeDecoder()
    out = generate_direction(dec, CLASSES, REFS, SVMS, alpha=1.0, n_per_class=3, base_seed=1, extents=extents)
    hard_end = rotate_towards(REFS[0], -SVMS[0].direction_raw, np.radians(20.0))
    expected = np.clip(hard_end[:3] + noise(derive_seed(1, "direction", "circle"), 3), -1, 1)
    np.testing.assert_allclose(colour_of(out.images), expected, atol=0.01)
    assert np.degrees(np.arccos(hard_end @ REFS[0])) == pytest.approx(20.0, abs=1e-3)
    ev = generate_eval(FakeDecoder(), CLASSES, REFS, SVMS, alphas=[0.5], n_per_class=2, base_seed=2, extents=extents)
    for side, deg in (("hard", 10.0), ("easy", 2.5)):
        v = slerp(REFS[0], rotate_towards(REFS[0], (1 if side == "hard" else -1) * -SVMS[0].direction_raw,
                                          np.radians(2 * deg)), 0.5)
        assert np.degrees(np.arccos(np.clip(v @ REFS[0], -1, 1))) == pytest.approx(deg, abs=1e-3)
        u = noise(derive_seed(2, "eval", "circle"), 2)
        np.testing.assert_allclose(colour_of(ev.images[ev.mask(side=side, alpha=0.5)]),
                                   np.clip(v[:3] + u, -1, 1), atol=0.01)
    with pytest.raises(ValueError, match="no entry in extents"):
        generate_direction(FakeDecoder(), CLASSES, REFS, SVMS, alpha=1.0, n_per_class=1, base_seed=1, extents={})


def test_images_walk_decodes_the_class_own_hardest_and_easiest_val_images():
    # class 0's images along e0: decision value = x0, so the hardest have the most negative e0
    rng = np.random.default_rng(0)
    rows = normalize(np.column_stack([np.linspace(-1, 1, 40), rng.normal(size=(40, 3)) * 0.3]))
    labels = np.zeros(40, int)
    tails = tail_images(SVMS, np.vstack([rows, REFS[1:]]), np.append(labels, 1), quantile=0.9)
    assert list(tails) == [0]  # class 1 has no SVM
    hard, easy = tails[0]
    assert hard.shape == easy.shape == (4, D)  # ceil(0.1 * 40)
    order = np.argsort(rows[:, 0])
    np.testing.assert_allclose(hard, rows[order[:4]], atol=1e-6)     # most negative decision value first
    np.testing.assert_allclose(easy, rows[order[::-1][:4]], atol=1e-6)
    out = generate_direction(FakeDecoder(), CLASSES, REFS, SVMS, alpha=1.0, n_per_class=6, base_seed=1, extents=tails)
    u = noise(derive_seed(1, "direction", "circle"), 6)
    # alpha 1: image i is tail image i mod 4 itself (plus its noise)
    np.testing.assert_allclose(colour_of(out.images), np.clip(hard[np.arange(6) % 4, :3] + u, -1, 1), atol=0.01)
    ev = generate_eval(FakeDecoder(), CLASSES, REFS, SVMS, alphas=[0.5], n_per_class=5, base_seed=2, extents=tails)
    u = noise(derive_seed(2, "eval", "circle"), 5)
    for side, tail in (("hard", hard), ("easy", easy)):
        expected = slerp(np.tile(REFS[0], (5, 1)), tail[np.arange(5) % 4], 0.5)
        np.testing.assert_allclose(colour_of(ev.images[ev.mask(side=side, alpha=0.5)]),
                                   np.clip(expected[:, :3] + u, -1, 1), atol=0.01)
    with pytest.raises(ValueError, match="no image embeddings"):
        tail_images(SVMS, rows[:0], labels[:0])


def test_direction_refuses_an_svm_of_another_space():
    svms = {0: make_svm(np.ones(D + 1)), 1: SKIP}
    with pytest.raises(ValueError, match="same CLIP space"):
        generate_direction(FakeDecoder(), CLASSES, REFS, svms, alpha=0.3, n_per_class=2, base_seed=0)


def test_eval_set_is_paired_and_covers_every_side_and_alpha():
    dec = FakeDecoder()
    out = generate_eval(dec, CLASSES, REFS, SVMS, alphas=[0.2, 0.5], n_per_class=4, base_seed=2)
    assert len(out) == 4 * (1 + 2 * 2) and list(out.skipped) == ["square"]
    assert out.mask(side="neutral").sum() == 4 and out.mask(side="hard", alpha=0.5).sum() == 4
    u = noise(derive_seed(2, "eval", "circle"), 4)
    np.testing.assert_allclose(colour_of(out.images[out.mask(side="neutral")]),
                               np.clip(REFS[0][:3] + u, -1, 1), atol=0.01)
    for a in (0.2, 0.5):
        for side, pole in (("hard", np.array([-1.0, 0, 0, 0])), ("easy", np.array([1.0, 0, 0, 0]))):
            got = colour_of(out.images[out.mask(side=side, alpha=a)])
            np.testing.assert_allclose(got, np.clip(slerp(REFS[0], pole, a)[:3] + u, -1, 1), atol=0.01)
    assert len({c["seed"] for c in dec.calls}) == 1  # same noise for every side and alpha
    with pytest.raises(ValueError, match="alphas"):
        generate_eval(dec, CLASSES, REFS, SVMS, alphas=[0.0, 0.3], n_per_class=2, base_seed=2)


def test_same_base_seed_same_images_other_seed_other_noise():
    a = generate_eval(FakeDecoder(), CLASSES, REFS, SVMS, alphas=[0.3], n_per_class=3, base_seed=5)
    b = generate_eval(FakeDecoder(), CLASSES, REFS, SVMS, alphas=[0.3], n_per_class=3, base_seed=5)
    c = generate_eval(FakeDecoder(), CLASSES, REFS, SVMS, alphas=[0.3], n_per_class=3, base_seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.rows == b.rows
    assert not np.array_equal(a.images, c.images)


class RedThreshold(torch.nn.Module):
    """Class 0 when the mean red value (in [-1, 1]) exceeds 0.75, else class 1."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[10.0], [-10.0]]))
            self.fc.bias.copy_(torch.tensor([-7.5, 7.5]))

    def forward(self, x):
        return self.fc(x[:, :1].mean((2, 3)))


def test_hard_neutral_easy_report_orders_a_classifier_that_leans_on_the_direction():
    out = generate_eval(FakeDecoder(), CLASSES, REFS, SVMS, alphas=[0.3], n_per_class=200, base_seed=0)
    report = hard_neutral_easy_report(RedThreshold(), out, CLASSES, "cpu")
    row = report["alphas"]["alpha_0.3"]
    acc = {"hard": row["hard"]["accuracy"], "neutral": report["neutral"]["accuracy"], "easy": row["easy"]["accuracy"]}
    # red of neutral 0.71, hard 0.08, easy 0.85, each +- 0.3: threshold 0.75
    assert acc["hard"] == 0.0 and 0.3 < acc["neutral"] < 0.6 and acc["easy"] > 0.6
    assert row["ordered"] and row["hard_lowest"]
    assert row["hard"]["confidence"] < report["neutral"]["confidence"] < row["easy"]["confidence"]
    assert report["neutral"]["n"] == 200 and "square" in report["skipped"]


def test_decoded_decision_report_reads_the_direction_back_from_the_images():
    out = generate_eval(FakeDecoder(), CLASSES, REFS, SVMS, alphas=[0.3, 0.6], n_per_class=50, base_seed=0)
    report = decoded_decision_report(colour_of_padded, SVMS, out)
    # the circle SVM's weight is the first coordinate, which the fake decoder writes as red
    for a in ("alpha_0.3", "alpha_0.6"):
        row = report["alphas"][a]
        assert row["hard"] < report["neutral"] < row["easy"] and row["ordered"]
    assert report["alphas"]["alpha_0.6"]["hard"] < report["alphas"]["alpha_0.3"]["hard"]
    # a decoder that ignores its condition: every side looks the same, nothing is ordered
    ignored = generate_eval(ConstantDecoder(), CLASSES, REFS, SVMS, alphas=[0.3], n_per_class=10, base_seed=0)
    flat = decoded_decision_report(colour_of_padded, SVMS, ignored)
    assert not flat["alphas"]["alpha_0.3"]["ordered"]
    assert flat["alphas"]["alpha_0.3"]["hard"] == flat["neutral"] == flat["alphas"]["alpha_0.3"]["easy"]


def colour_of_padded(images):
    """A stand-in CLIP image embedder for the fake decoder: its colour, padded to D."""
    return np.hstack([colour_of(images), np.zeros((len(images), D - 3))])


class ConstantDecoder(FakeDecoder):
    def decode_images(self, embeds, seed=0, **kwargs):
        return np.full((len(embeds), SIDE, SIDE, 3), 128, np.uint8)


def test_save_manifest_and_grid_round_trip(tmp_path):
    dec = FakeDecoder()
    sets = [generate_generic(dec, embed_texts, CLASSES, [f"a photo of a {c}" for c in CLASSES], 3, 0),
            generate_eval(dec, CLASSES, REFS, SVMS, alphas=[0.1, 0.3], n_per_class=2, base_seed=0)]
    for s in sets:
        save_generated(tmp_path, s)
        split = load_split(tmp_path, s.name)
        np.testing.assert_array_equal(split.images, s.images)
        np.testing.assert_array_equal(split.labels, s.labels)
        assert split.ids.tolist() == s.ids.tolist()
    rows = read_manifest(write_manifest(tmp_path / "manifest.csv", sets))
    assert rows == [r for s in sets for r in s.rows]
    for r in rows:  # each row points at its image
        split = load_split(tmp_path, r["file"].removesuffix(".npz"))
        assert split.ids[r["index"]] == r["id"] and split.labels[r["index"]] == r["label"]

    grid = Image.open(save_grid(sets[1], tmp_path / "eval.png", per_group=4, alpha=0.3, upscale=2))
    # one class with an SVM x 3 sides = 3 rows of 4 cells (2 images + 2 blanks)
    from failmap.plots import grid_size
    assert grid.size == grid_size(12, SIDE, SIDE, ncol=4, upscale=2, title=True, labels=True)
    with pytest.raises(ValueError, match="alpha 0.7"):
        save_grid(sets[1], tmp_path / "x.png", alpha=0.7)
    save_grid(sets[0], tmp_path / "generic.png", per_group=3)
    assert (tmp_path / "generic.png").exists()


def test_per_image_references_are_sampled_per_class_and_cycled():
    X = normalize(np.random.default_rng(0).normal(size=(20, D)))
    labels = np.arange(20) % 2
    keep = np.arange(20) < 16
    refs = sample_reference_embeddings(X, labels, 2, m=3, seed=0, keep=keep)
    assert refs.shape == (2, 3, D)
    for k in range(2):  # each reference is a kept row of its class, no repeats
        rows = [int(np.flatnonzero(np.all(np.isclose(X, r), axis=1))[0]) for r in refs[k]]
        assert all(labels[i] == k and keep[i] for i in rows) and len(set(rows)) == 3
    np.testing.assert_array_equal(refs, sample_reference_embeddings(X, labels, 2, m=3, seed=0, keep=keep))
    with pytest.raises(ValueError, match="class 2 has no image embeddings"):
        sample_reference_embeddings(X, labels, 3, m=3, seed=0)

    dec = FakeDecoder()
    out = generate_direction(dec, CLASSES, refs, SVMS, alpha=0.25, n_per_class=5, base_seed=0)
    starts = refs[0][np.arange(5) % 3]
    expected = np.clip(slerp(starts, -SVMS[0].direction_raw, 0.25)[:, :3]
                       + noise(derive_seed(0, "direction", "circle"), 5), -1, 1)
    np.testing.assert_allclose(colour_of(out.images), expected, atol=0.01)
    ev = generate_eval(dec, CLASSES, refs, SVMS, alphas=[0.5], n_per_class=4, base_seed=0)
    np.testing.assert_allclose(colour_of(ev.images[ev.mask(side="neutral")]),
                               np.clip(refs[0][np.arange(4) % 3][:, :3] + noise(derive_seed(0, "eval", "circle"), 4),
                                       -1, 1), atol=0.01)


def test_generator_check_trusts_a_decoder_whose_neutral_images_are_of_their_class():
    out = generate_eval(FakeDecoder(), CLASSES, REFS, SVMS, alphas=[0.3], n_per_class=6, base_seed=0)
    neutral = out.mask(side="neutral")
    right = out.labels.copy()
    check = generator_check(right, out, CLASSES, threshold=0.5)
    assert check["trusted"] and check["neutral_clip_class_accuracy"] == 1.0 and check["n"] == neutral.sum()
    wrong = np.where(neutral, 1 - out.labels, out.labels)  # every neutral image read as the other class
    check = generator_check(wrong, out, CLASSES, threshold=0.5)
    assert not check["trusted"] and check["neutral_clip_class_accuracy"] == 0.0
    assert check["per_class"] == {"circle": 0.0}  # square has no SVM, hence no evaluation images
    # an arm the decoder draws as noise is untrusted even when the neutral images are fine
    labels = np.array([0, 0, 1, 1])
    arms = {"generic": (labels, labels), "direction": (np.array([1, 1, 0, 1]), labels)}
    check = generator_check(right, out, CLASSES, threshold=0.5, arms=arms)
    assert check["arms_clip_class_accuracy"] == {"generic": 1.0, "direction": 0.25}
    assert check["untrusted_arms"] == ["direction"] and not check["trusted"]


def test_keep_on_class_drops_off_class_images_and_renumbers_the_manifest():
    dec = FakeDecoder()
    arm = generate_generic(dec, embed_texts, CLASSES, ["a photo of a circle", "a photo of a square"], 3, 0)
    predicted = arm.labels.copy()
    predicted[[0, 4]] = 1 - predicted[[0, 4]]
    kept = keep_on_class(arm, predicted)
    assert len(kept) == len(arm) - 2 and [r["index"] for r in kept.rows] == list(range(len(kept)))
    np.testing.assert_array_equal(kept.images, arm.images[[1, 2, 3, 5]])
    assert [r["id"] for r in kept.rows] == [arm.rows[i]["id"] for i in (1, 2, 3, 5)]


def test_clip_class_predictions_pick_the_nearest_class_prompt():
    prompts = ["a photo of a circle", "a photo of a square"]
    text = embed_texts(prompts)
    images = np.zeros((3, 2, 2, 3), np.uint8)
    fake_image_embeds = np.stack([text[1], text[0], text[1]])
    got = clip_class_predictions(lambda x: fake_image_embeds, embed_texts, prompts, images)
    np.testing.assert_array_equal(got, [1, 0, 1])
    assert len(clip_class_predictions(lambda x: x, embed_texts, prompts, images[:0])) == 0


def test_a_set_the_filter_emptied_is_saved_only_when_allowed(tmp_path):
    arm = generate_generic(FakeDecoder(), embed_texts, CLASSES, ["a photo of a circle", "a photo of a square"], 2, 0)
    empty = keep_on_class(arm, 1 - arm.labels)
    assert len(empty) == 0
    with pytest.raises(ValueError, match="no images to save"):
        save_generated(tmp_path, empty)
    split = load_split(tmp_path, save_generated(tmp_path, empty, allow_empty=True).stem)
    assert len(split) == 0 and split.images.shape[1:] == arm.images.shape[1:]


# ------------------------------------------------------------ failure modes steering the arms

from failmap.generate import (Steer, mode_steers, plan_caption, plan_direction, plan_eval, steer_extents,  # noqa: E402
                              svm_steers)
from failmap.modes import ClassModes, Mode, spread  # noqa: E402


def make_mode(weight, share, n_errors):
    pre = Preprocessor(mean=np.zeros(len(weight)), std=np.ones(len(weight)))
    return Mode(weight=np.asarray(weight, float), center=np.zeros(len(weight)), preprocessor=pre,
                n_errors=n_errors, share=share)


# class 0: two modes, 70 % of its errors towards +e2 ("looks like mode 0" = +e2), 30 % towards +e3; class 1: none
MODES = {0: ClassModes(modes=[make_mode([0, 0, 1.0, 0], 0.7, 7), make_mode([0, 0, 0, 1.0], 0.3, 3)], n_val=50,
                       n_errors=10, silhouette=0.5), 1: SKIP}


def test_spread_is_largest_remainder_and_sums_to_n():
    assert spread(10, [0.7, 0.3]) == [7, 3]
    assert spread(10, [0.5, 0.25, 0.25]) == [5, 3, 2]      # equal remainders: the earlier mode
    assert spread(7, [1 / 3, 1 / 3, 1 / 3]) == [3, 2, 2]
    assert spread(1, [0.2, 0.8]) == [0, 1]
    for n in range(0, 30):
        assert sum(spread(n, [0.45, 0.35, 0.2])) == n
    with pytest.raises(ValueError, match="shares"):
        spread(3, [0.0, 0.0])
    with pytest.raises(ValueError, match="non-negative integer"):
        spread(-1, [1.0])


def test_svm_steering_gives_the_same_bytes_and_seeds_as_before_modes():
    a = generate_direction(FakeDecoder(), CLASSES, REFS, SVMS, alpha=0.4, n_per_class=6, base_seed=1)
    b = generate_direction(FakeDecoder(), CLASSES, REFS, svm_steers(SVMS), alpha=0.4, n_per_class=6, base_seed=1)
    assert a.images.tobytes() == b.images.tobytes() and a.rows == b.rows
    assert {r["seed"] for r in a.rows} == {derive_seed(1, "direction", "circle")} and {r["mode"] for r in a.rows} == {None}
    assert [r["id"] for r in a.rows][0] == "direction-circle-a0.4-0000"


def test_modes_spread_the_direction_images_by_share_each_along_its_own_mode():
    steers = mode_steers(MODES)
    plan = plan_direction(FakeDecoder(), CLASSES, REFS, steers, alpha=0.4, n_per_class=10, base_seed=1)
    assert [len(c.conditions) for c in plan.calls] == [7, 3]
    assert [c.seed for c in plan.calls] == [derive_seed(1, "direction", "circle", f"mode{j}") for j in (0, 1)]
    out = generate_direction(FakeDecoder(), CLASSES, REFS, steers, alpha=0.4, n_per_class=10, base_seed=1)
    assert [r["mode"] for r in out.rows] == [0] * 7 + [1] * 3 and list(out.skipped) == ["square"]
    colour = colour_of(out.images)
    # the hard pole of a mode is towards the mode (its score rises): mode 0 raises the third channel only
    expected0 = np.clip(slerp(REFS[0], MODES[0].modes[0].weight, 0.4)[:3]
                        + noise(derive_seed(1, "direction", "circle", "mode0"), 7), -1, 1)
    np.testing.assert_allclose(colour[:7], expected0, atol=0.01)
    assert colour[:7, 2].min() > REFS[0][2] - NOISE and colour[7:, 2].max() < colour[:7, 2].min()
    assert len(set(out.ids)) == 10


def test_modes_spread_the_caption_images_over_each_modes_own_captions():
    mode_captions = {0: [(0.7, ["a photo of a circle at night"]), (0.3, ["a photo of a red circle"])]}
    out = generate_caption(FakeDecoder(), embed_texts, CLASSES, {0: ["svm caption"]}, mode_steers(MODES),
                           n_per_class=10, base_seed=0, mode_captions=mode_captions)
    assert [r["caption"] for r in out.rows] == ["a photo of a circle at night"] * 7 + ["a photo of a red circle"] * 3
    with pytest.raises(ValueError, match="mode 1 but no hard captions"):
        plan_caption(FakeDecoder(), embed_texts, CLASSES, {}, mode_steers(MODES), 10, 0,
                     mode_captions={0: mode_captions[0][:1]})


def test_eval_set_per_mode_shares_the_neutral_images_and_the_noise():
    ev = generate_eval(FakeDecoder(), CLASSES, REFS, mode_steers(MODES), alphas=[0.5], n_per_class=3, base_seed=2)
    assert int(ev.mask(side="neutral").sum()) == 3
    for j in (0, 1):
        assert int(ev.mask(side="hard", mode=j).sum()) == int(ev.mask(side="easy", mode=j).sum()) == 3
    assert {r["seed"] for r in ev.rows} == {derive_seed(2, "eval", "circle")}  # paired: one noise for every row
    hard0, hard1 = colour_of(ev.images[ev.mask(side="hard", mode=0)]), colour_of(ev.images[ev.mask(side="hard", mode=1)])
    assert (hard0[:, 2] > hard1[:, 2]).all()          # mode 0 walks towards +e2, mode 1 does not


def test_steer_extents_are_keyed_per_mode():
    rng = np.random.default_rng(0)
    images = normalize(REFS[0] + 0.3 * rng.normal(size=(40, D)))
    extents = steer_extents(mode_steers(MODES), REFS, images, np.zeros(40, int))
    assert sorted(extents) == [(0, 0), (0, 1)] and all(h > 0 and e > 0 for h, e in extents.values())
    svm = steer_extents(svm_steers(SVMS), REFS, images, np.zeros(40, int))
    assert svm == direction_extents(SVMS, REFS, images, np.zeros(40, int))
    with pytest.raises(TypeError, match="Steer"):
        plan_eval(FakeDecoder(), CLASSES, REFS, {0: ["not a steer"], 1: SKIP}, [0.5], 2, 0)
    assert isinstance(mode_steers(MODES)[0][1], Steer)


def test_top_mode_steering_gives_every_image_to_the_largest_mode():
    steers = mode_steers(MODES, top_only=True)
    assert [(s.mode, s.share) for s in steers[0]] == [(0, 1.0), (1, 0.0)] and steers[1] is SKIP
    plan = plan_direction(FakeDecoder(), CLASSES, REFS, steers, alpha=0.4, n_per_class=10, base_seed=1)
    assert [len(c.conditions) for c in plan.calls] == [10]
    ev = plan_eval(FakeDecoder(), CLASSES, REFS, steers, alphas=[0.5], n_per_class=2, base_seed=2)
    # the evaluation set still walks every mode (the report shows each), whatever share it drives
    assert sorted({m["mode"] for m in ev._meta if m["mode"] is not None}) == [0, 1]
