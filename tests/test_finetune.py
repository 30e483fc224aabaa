"""Pool selection, fine-tuning arms, evaluation masks and aggregation, on a
SmallCNN of width 4 and a handful of random 16x16 images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import failmap.finetune as ft
from failmap.evaluation import (evaluate_model, mode_accuracies, mode_hard_masks, predict_labels,
                                svm_hard_easy_masks)
from failmap.finetune import FrozenFeatures, aggregate, aggregate_by_mode, finetune_arm, finetune_steps, plot_rows, select_pool
from failmap.models import SmallCNN, save_classifier

CLASSES = ["circle", "square", "star"]
HYPER = dict(epochs=1, batch_size=4, lr=0.05, momentum=0.9, weight_decay=5e-4, device="cpu")


# ------------------------------------------------------------ pool selection

LABELS = np.array([0, 1, 0, 1, 0, 1, 0, 1, 2, 2])
DECISION = np.array([0.5, -1.0, -2.0, 3.0, 0.1, -0.5, 1.0, 0.0, np.nan, np.nan])  # class 2: no SVM
CONFIDENCE = np.array([0.9, 0.2, 0.1, 0.8, 0.3, 0.4, 0.5, 0.05, 0.7, 0.6])


def test_pool_svm_takes_the_lowest_decision_values_per_class():
    sel = select_pool("pool_svm", LABELS, DECISION, CONFIDENCE, k=2, seed=0)
    assert sel.indices[:4].tolist() == [2, 4, 1, 5]  # class 0: -2.0, 0.1; class 1: -1.0, -0.5
    random = select_pool("pool_random", LABELS, None, None, k=2, seed=0)
    # class 2 has no SVM: the same random images as pool_random picks, and a note says so
    assert sorted(sel.indices[4:].tolist()) == [8, 9] and sel.indices[4:].tolist() == random.indices[4:].tolist()
    assert list(sel.notes) == [2] and "no SVM" in sel.notes[2]


# class 0 has two modes (75 % / 25 % of its errors), class 1 one, class 2 none (NaN scores)
MODE_SCORES = np.array([[5.0, 0.0], [1.0, np.nan], [4.0, 9.0], [3.0, np.nan], [3.0, 1.0], [2.0, np.nan],
                        [0.0, 2.0], [0.5, np.nan], [np.nan, np.nan], [np.nan, np.nan]])
MODE_SHARES = {0: [0.75, 0.25], 1: [1.0]}


def test_pool_svm_by_modes_spreads_the_picks_over_each_class_modes_by_share():
    sel = select_pool("pool_svm", LABELS, DECISION, CONFIDENCE, k=4, seed=0, pool_mode_scores=MODE_SCORES,
                      mode_shares=MODE_SHARES)
    # class 0: mode 0 takes 3 (scores 5, 4, 3 -> images 0, 2, 4), mode 1 the best of the rest (image 6: 2.0;
    # image 2 with 9.0 is taken already); class 1: its one mode's top 4; class 2: random, noted
    assert sel.indices[:4].tolist() == [0, 2, 4, 6] and sel.indices[4:8].tolist() == [3, 5, 1, 7]
    random = select_pool("pool_random", LABELS, None, None, k=4, seed=0)
    assert sel.indices[8:].tolist() == random.indices[8:].tolist() and "no failure modes" in sel.notes[2]
    # without the mode scores: today's SVM picks
    assert select_pool("pool_svm", LABELS, DECISION, CONFIDENCE, k=2, seed=0).indices[:4].tolist() == [2, 4, 1, 5]
    # modes.drive: top_mode: every pick by the largest mode (drive_shares gives it all)
    from failmap.modes import ClassModes, Mode, drive_shares
    fake = {0: ClassModes(modes=[Mode(np.ones(2), np.zeros(2), None, 3, 0.75), Mode(np.ones(2), np.zeros(2), None, 1, 0.25)],
                          n_val=9, n_errors=4, silhouette=0.5)}
    assert drive_shares(fake) == {0: [0.75, 0.25]} and drive_shares(fake, top_only=True) == {0: [1.0, 0.0]}
    by_share, top = (select_pool("pool_svm", LABELS, DECISION, CONFIDENCE, k=3, seed=0, pool_mode_scores=MODE_SCORES,
                                 mode_shares={**drive_shares(fake, top_only=top_only), 1: [1.0]})
                     for top_only in (False, True))
    assert by_share.indices[:3].tolist() == [0, 2, 6]  # 2 by mode 0 (5, 4), 1 by mode 1 (image 6: 2.0)
    assert top.indices[:3].tolist() == [0, 2, 4]       # 3 by mode 0 alone (5, 4, 3)
    with pytest.raises(ValueError, match="needs mode_shares"):
        select_pool("pool_svm", LABELS, DECISION, CONFIDENCE, k=2, seed=0, pool_mode_scores=MODE_SCORES)
    with pytest.raises(ValueError, match="NaN for some of its 2 modes"):
        select_pool("pool_svm", LABELS, DECISION, CONFIDENCE, k=2, seed=0, pool_mode_scores=MODE_SCORES,
                    mode_shares={0: [0.5, 0.5], 1: [0.5, 0.5]})


def test_pool_confidence_takes_the_least_confident_per_class():
    sel = select_pool("pool_confidence", LABELS, DECISION, CONFIDENCE, k=2, seed=0)
    assert sel.indices.tolist() == [2, 4, 7, 1, 9, 8]
    assert sel.notes == {}


def test_pool_random_is_seeded_and_stays_in_class():
    a = select_pool("pool_random", LABELS, None, None, k=3, seed=1)
    b = select_pool("pool_random", LABELS, None, None, k=3, seed=1)
    assert a.indices.tolist() == b.indices.tolist()
    assert LABELS[a.indices].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert "fewer than k=3" in a.notes[2]
    others = {tuple(select_pool("pool_random", LABELS, None, None, k=3, seed=s).indices) for s in range(2, 8)}
    assert len(others | {tuple(a.indices)}) > 1
    assert len(select_pool("pool_random", LABELS, None, None, k=0, seed=1).indices) == 0


def test_select_pool_rejects_bad_input():
    with pytest.raises(ValueError, match="arm must be one of"):
        select_pool("pool_magic", LABELS, DECISION, CONFIDENCE, k=2, seed=0)
    with pytest.raises(ValueError, match="needs pool_svm_decision"):
        select_pool("pool_svm", LABELS, None, CONFIDENCE, k=2, seed=0)
    with pytest.raises(ValueError, match="shape"):
        select_pool("pool_confidence", LABELS, DECISION, CONFIDENCE[:3], k=2, seed=0)
    partial = DECISION.copy()
    partial[0] = np.nan
    with pytest.raises(ValueError, match="NaN for some images only"):
        select_pool("pool_svm", LABELS, partial, CONFIDENCE, k=2, seed=0)


# ------------------------------------------------------------ fine-tuning

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = SmallCNN(len(CLASSES), width=4)
    path = tmp_path_factory.mktemp("ft") / "baseline.pt"
    save_classifier(model.eval(), path, arch="small_cnn", n_classes=len(CLASSES), width=4, classes=CLASSES)
    images = rng.integers(0, 256, size=(16, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, len(CLASSES), size=16)
    extra = rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    return dict(path=path, images=images, labels=labels, extra=extra, extra_labels=np.array([0, 1, 2, 0, 1, 2]),
                features=FrozenFeatures(path, "cpu"), baseline=model.eval())


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_finetune_steps_follow_the_train_split_only():
    assert finetune_steps(16, 1, 4) == 4 and finetune_steps(17, 2, 4) == 10
    with pytest.raises(ValueError):
        finetune_steps(0, 1, 4)


def test_every_arm_takes_the_same_steps_and_none_uses_no_extra(tiny, monkeypatch):
    seen = []
    real = ft._sgd

    def spy(params, loss_of_batch, n, **kw):
        seen.append((n, kw["steps"]))
        return real(params, loss_of_batch, n, **kw)
    monkeypatch.setattr(ft, "_sgd", spy)
    for extra, labels in ((None, None), (tiny["extra"][:0], np.zeros(0, int)), (tiny["extra"], tiny["extra_labels"])):
        finetune_arm(tiny["path"], tiny["images"], tiny["labels"], extra, labels, last_layer_only=True, seed=0,
                     features=tiny["features"], **HYPER)
    assert seen == [(16, 4), (16, 4), (22, 4)]


def test_last_layer_finetune_is_seeded_and_leaves_the_body_alone(tiny):
    run = lambda seed, extra=True: finetune_arm(  # noqa: E731
        tiny["path"], tiny["images"], tiny["labels"], tiny["extra"] if extra else None,
        tiny["extra_labels"] if extra else None, last_layer_only=True, seed=seed, features=tiny["features"], **HYPER)
    a, b, c, none = state(run(0)), state(run(0)), state(run(1)), state(run(0, extra=False))
    base = state(tiny["baseline"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])
    assert not torch.equal(a["fc.weight"], none["fc.weight"])  # the extra images change the result
    assert not torch.equal(a["fc.weight"], base["fc.weight"])
    assert all(torch.equal(a[k], base[k]) for k in base if not k.startswith("fc."))


def test_features_are_cached_and_match_a_full_forward(tiny):
    feats = FrozenFeatures(tiny["path"], "cpu")
    first = feats(tiny["images"])
    assert feats(tiny["images"].copy()) is first  # same bytes, same cache entry
    model = finetune_arm(tiny["path"], tiny["images"], tiny["labels"], None, None, last_layer_only=True, seed=0,
                         features=feats, **HYPER)
    assert feats.body_matches(model)
    fast = predict_labels(model, tiny["images"], "cpu", feats)
    np.testing.assert_array_equal(fast, predict_labels(model, tiny["images"], "cpu"))


def test_whole_network_finetune_changes_the_body(tiny):
    model = finetune_arm(tiny["path"], tiny["images"], tiny["labels"], tiny["extra"], tiny["extra_labels"],
                         last_layer_only=False, augment_data=True, seed=0, **HYPER)
    base = state(tiny["baseline"])
    assert not torch.equal(model.state_dict()["body.0.0.weight"], base["body.0.0.weight"])
    assert not tiny["features"].body_matches(model)  # so evaluation does not use stale features
    with pytest.raises(ValueError, match="augment_data needs last_layer_only=False"):
        finetune_arm(tiny["path"], tiny["images"], tiny["labels"], None, None, last_layer_only=True,
                     augment_data=True, seed=0, **HYPER)
    with pytest.raises(ValueError, match="extra_labels"):
        finetune_arm(tiny["path"], tiny["images"], tiny["labels"], tiny["extra"], tiny["extra_labels"][:2],
                     last_layer_only=True, seed=0, **HYPER)


# ------------------------------------------------------------ evaluation

def test_svm_masks_take_bottom_and_top_k_per_class():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
    decision = np.array([3.0, -1.0, 0.0, 2.0, -5.0, 1.0, 0.5, -0.5, np.nan, np.nan])
    hard, easy = svm_hard_easy_masks(decision, labels, k=2)
    assert np.flatnonzero(hard).tolist() == [1, 4, 7]  # class 1 has 3 images: 1 each, no overlap
    assert np.flatnonzero(easy).tolist() == [0, 3, 5]
    assert not (hard & easy).any()


def test_evaluate_model_metrics_match_a_hand_count(tiny):
    model = tiny["baseline"]
    labels = tiny["labels"]
    pred = predict_labels(model, tiny["images"], "cpu")
    correct = (pred == labels).astype(float)
    gt = np.arange(16) % 4 == 0
    hard, easy = np.arange(16) < 8, np.arange(16) >= 8
    out = evaluate_model(model, tiny["images"], labels, CLASSES, gt, hard, easy, "cpu", tiny["features"])

    def by_class(mask):
        return np.mean([correct[(labels == c) & mask].mean() for c in range(3) if ((labels == c) & mask).any()])
    assert out["test_acc"] == pytest.approx(correct.mean())
    assert out["hard_acc_gt"] == pytest.approx(by_class(gt))
    assert out["easy_acc_gt"] == pytest.approx(by_class(~gt))
    assert out["hard_acc_svm"] == pytest.approx(by_class(hard))
    assert out["easy_acc_svm"] == pytest.approx(by_class(easy))
    no_gt = evaluate_model(model, tiny["images"], labels, CLASSES, None, hard, easy, "cpu")
    assert no_gt["hard_acc_gt"] is None and no_gt["test_acc"] == out["test_acc"]


def result(arm, seed, n_extra, values):
    return dict(arm=arm, seed=seed, n_extra=n_extra, **dict(zip(ft.METRICS, values)))


def test_aggregate_mean_std_and_delta():
    rows = [result("none", 0, 0, [0.80, 0.40, 0.90, 0.30, 0.95]),
            result("none", 1, 0, [0.82, 0.44, 0.90, 0.34, 0.97]),
            result("direction", 0, 600, [0.81, 0.50, 0.89, 0.40, 0.96]),
            result("direction", 1, 600, [0.83, 0.60, 0.91, 0.44, 0.96])]
    out = aggregate(rows)
    none, direction = out["arms"]["none"], out["arms"]["direction"]
    assert none["test_acc"]["mean"] == pytest.approx(0.81)
    assert none["hard_acc_gt"]["std"] == pytest.approx(np.std([0.40, 0.44], ddof=1))
    assert direction["hard_acc_gt"] == {"mean": pytest.approx(0.55), "std": pytest.approx(np.sqrt(0.005)), "n": 2}
    assert direction["n_extra"] == 600 and direction["seeds"] == [0, 1]
    assert out["delta_vs_none"]["direction"]["hard_acc_gt"] == pytest.approx(0.13)
    assert list(out["delta_vs_none"]) == ["direction"]
    assert plot_rows(out, "hard_acc_gt") == [
        {"arm": "none", "mean": pytest.approx(0.42), "std": pytest.approx(0.02 * np.sqrt(2))},
        {"arm": "direction", "mean": pytest.approx(0.55), "std": pytest.approx(np.sqrt(0.005))}]


def test_aggregate_single_seed_missing_ground_truth_and_errors():
    out = aggregate([result("none", 0, 0, [0.8, None, None, 0.3, 0.9])])
    assert out["arms"]["none"]["test_acc"] == {"mean": 0.8, "std": None, "n": 1}
    assert out["arms"]["none"]["hard_acc_gt"] == {"mean": None, "std": None, "n": 0}
    with pytest.raises(ValueError, match="duplicate seeds"):
        aggregate([result("none", 0, 0, [0.8] * 5), result("none", 0, 0, [0.8] * 5)])
    with pytest.raises(ValueError, match="different n_extra"):
        aggregate([result("pool_svm", 0, 10, [0.8] * 5), result("pool_svm", 1, 11, [0.8] * 5)])
    with pytest.raises(ValueError, match="no 'hard_acc_svm'"):
        aggregate([dict(arm="none", seed=0, n_extra=0, test_acc=0.8, hard_acc_gt=0.1, easy_acc_gt=0.1)])


def test_mode_figures_count_each_modes_most_like_test_images_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # class 0 has two modes, class 1 one (NaN: no second mode); a higher score = more like the mode's errors
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.0, 0.3],
                       [0.5, np.nan], [0.7, np.nan], [0.1, np.nan], [0.2, np.nan]])
    masks = mode_hard_masks(scores, labels, k=2)
    assert np.flatnonzero(masks[0]).tolist() == [0, 1, 4, 5] and np.flatnonzero(masks[1]).tolist() == [2, 3]
    wrong_on_mode0 = np.array([1, 1, 0, 0, 0, 1, 1, 1])   # wrong on images 0, 1 and 4
    by_mode = mode_accuracies(wrong_on_mode0, labels, ["a", "b"], masks)
    assert by_mode == {"a": {"mode_0": 0.0, "mode_1": 1.0}, "b": {"mode_0": 0.5}}
    right = mode_accuracies(labels, labels, ["a", "b"], masks)
    out = aggregate_by_mode([{"arm": "none", "seed": 0, "by_mode": by_mode},
                             {"arm": "none", "seed": 1, "by_mode": right},
                             {"arm": "caption", "seed": 0, "by_mode": right},
                             {"arm": "caption", "seed": 1, "by_mode": right}])
    assert out["a"]["mode_0"]["none"] == {"mean": 0.5, "std": pytest.approx(0.5 ** 0.5), "n": 2,
                                          "delta_vs_none": None}
    assert out["a"]["mode_0"]["caption"]["delta_vs_none"] == 0.5
    assert out["b"]["mode_0"]["caption"]["delta_vs_none"] == 0.25 and out["a"]["mode_1"]["caption"]["delta_vs_none"] == 0
    with pytest.raises(ValueError, match="mode_scores_test must be"):
        mode_hard_masks(scores[:3], labels, k=2)
