import numpy as np
import yaml
from pathlib import Path
import pytest

from failmap.world import CONTEXT_PHRASE, choose_planted, colour_distance, generate_world, shared_planted_values

SMALL = dict(classes=["circle", "square", "triangle", "star", "cross"],
             colours=["red", "orange", "yellow", "green", "blue"],
             contexts=["grass", "indoors", "snow", "water", "night"],
             n_train=1500, n_val=1000, n_test=40, n_pool=30, n_corpus=50,
             planted_attribute="context", planted_values=None, train_rate=0.02, eval_rate=0.3,
             confuser_rate=0.6, noise=0.05, min_size=0.4, max_size=0.8)


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=3, **SMALL)


def test_same_seed_same_world(world):
    again = generate_world(seed=3, **SMALL)
    for name, split in world.splits.items():
        assert np.array_equal(split.images, again.splits[name].images)
        assert np.array_equal(split.labels, again.splits[name].labels)
    assert world.ground_truth == again.ground_truth


def test_other_seed_other_world(world):
    other = generate_world(seed=4, **SMALL)
    assert not np.array_equal(world.splits["test"].images, other.splits["test"].images)


def test_split_sizes_and_balance(world):
    for name in ("train", "val", "test", "pool", "corpus"):
        assert len(world.splits[name]) == SMALL[f"n_{name}"]
    counts = np.bincount(world.splits["train"].labels)
    assert counts.max() - counts.min() <= 1
    assert world.splits["train"].images.shape[1:] == (32, 32, 3)


def _rows(world, split):
    return [r for r in world.ground_truth if r["split"] == split]


def test_planted_rates(world):
    train, val = _rows(world, "train"), _rows(world, "val")
    train_rate = np.mean([r["subpop"] for r in train])
    val_rate = np.mean([r["subpop"] for r in val])
    assert train_rate < 0.05          # 2% planted (binomial noise on 1500 images)
    assert 0.25 < val_rate < 0.35     # 30% planted


def test_confuser_carries_planted_value_in_train(world):
    planted = {c: v["value"] for c, v in world.meta["planted"].items()}
    classes = SMALL["classes"]
    train = _rows(world, "train")
    for k, c in enumerate(classes):
        confuser = classes[(k + 1) % len(classes)]
        share = np.mean([r["context"] == planted[c] for r in train if r["class_name"] == confuser])
        assert share > 0.45, (c, confuser, share)


def _confuser_share(world, split):
    planted = {c: v["value"] for c, v in world.meta["planted"].items()}
    classes = SMALL["classes"]
    rows = _rows(world, split)
    return np.mean([np.mean([r["context"] == planted[c] for r in rows if r["class_name"] == classes[(k + 1) % len(classes)]])
                    for k, c in enumerate(classes)])


def test_eval_confuser_rate_carries_the_train_co_occurrence_into_eval(world):
    # null (the fixture): in val the confuser's value is no more common than any other non-planted value
    assert _confuser_share(world, "val") < 0.3          # (1 - 0.3) / 4 = 0.175 expected
    carried = generate_world(seed=3, **dict(SMALL, eval_confuser_rate=0.5))
    assert 0.43 < _confuser_share(carried, "val") < 0.57
    assert 0.25 < np.mean([r["subpop"] for r in _rows(carried, "val")]) < 0.35  # the planted share is unchanged
    assert np.array_equal(carried.splits["train"].images, world.splits["train"].images)  # train unchanged


def test_subpop_flag_matches_attributes(world):
    planted = {c: v["value"] for c, v in world.meta["planted"].items()}
    for r in world.ground_truth:
        assert r["subpop"] == int(r["context"] == planted[r["class_name"]])


def test_captions_name_the_attributes(world):
    corpus = world.splits["corpus"]
    truth = {r["id"]: r for r in world.ground_truth}
    for caption, i in zip(corpus.captions, corpus.ids):
        r = truth[i]
        assert caption.startswith("a photo of a ")
        assert r["class_name"] in caption
    # attributes are dropped only sometimes: most captions name colour and context
    named = np.mean([truth[i]["colour"] in c and CONTEXT_PHRASE[truth[i]["context"]] in c
                     for c, i in zip(corpus.captions, corpus.ids)])
    assert named > 0.4
    assert world.splits["train"].captions is None


def test_planted_values_from_params_and_vocab(world):
    w = generate_world(seed=0, **{**SMALL, "planted_values": ["snow"] * 5, "n_train": 50, "n_val": 10})
    assert {v["value"] for v in w.meta["planted"].values()} == {"snow"}
    assert w.meta["vocab"]["contexts"] == [CONTEXT_PHRASE[c] for c in SMALL["contexts"]]
    assert w.meta["vocab"]["adjectives"] == SMALL["colours"]


def test_choose_planted_distinct_while_values_last():
    assert len(set(choose_planted(list("abcde"), list("vwxyz"), seed=1))) == 5


COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "white"]
CLASSES = ["circle", "square", "triangle", "star", "cross", "heart"]


def _closest_train_pair(planted):
    return min(colour_distance(planted[k], planted[k - 1]) for k in range(len(planted)))


def test_shared_planted_values_name_each_value_planted_in_several_classes():
    classes = ["circle", "square", "triangle", "star", "cross", "heart", "diamond", "moon"]
    contexts = ["grass", "indoors", "snow", "water", "night", "sand"]
    planted = dict(zip(classes, choose_planted(classes, contexts, seed=11)))
    shared = shared_planted_values(planted)
    assert sum(len(c) for c in shared.values()) - len(shared) == len(classes) - len(contexts)  # two repeats
    assert all(planted[c] == value for value, cs in shared.items() for c in cs)
    assert shared_planted_values(dict(zip(classes[:6], choose_planted(classes[:6], contexts, seed=11)))) == {}


def test_planted_colours_are_kept_apart_from_the_colour_their_class_carries_in_train():
    plain = [choose_planted(CLASSES, COLOURS, seed=s) for s in range(10)]
    assert min(_closest_train_pair(p) for p in plain) < 0.5  # the plain draw puts neighbouring hues together
    for s, before in enumerate(plain):
        kept = choose_planted(CLASSES, COLOURS, seed=s, distance=colour_distance, min_distance=0.5)
        assert _closest_train_pair(kept) >= 0.5 and len(set(kept)) == len(kept)
        if _closest_train_pair(before) >= 0.5:
            assert kept == before  # a draw that already passes is the plain one


def test_unreachable_distance_gives_the_farthest_draw_not_an_endless_loop():
    kept = choose_planted(CLASSES, COLOURS, seed=0, distance=colour_distance, min_distance=5.0, tries=50)
    assert len(kept) == len(CLASSES) and _closest_train_pair(kept) >= _closest_train_pair(
        choose_planted(CLASSES, COLOURS, seed=0))


def test_world_draws_distant_planted_colours_only_for_the_colour_attribute():
    args = dict(SMALL, n_train=60, n_val=12, n_test=12, n_pool=0, n_corpus=0, classes=CLASSES,
                colours=COLOURS, min_planted_distance=0.5)
    by_colour = generate_world(seed=3, **dict(args, planted_attribute="colour"))
    planted = [by_colour.meta["planted"][c]["value"] for c in CLASSES]
    assert _closest_train_pair(planted) >= 0.5
    by_context = generate_world(seed=3, **dict(args, planted_attribute="context"))
    assert [by_context.meta["planted"][c]["value"] for c in CLASSES] == choose_planted(
        CLASSES, SMALL["contexts"], seed=3)


def test_unknown_vocabulary_is_refused():
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        generate_world(seed=0, **{**SMALL, "classes": ["blob", "circle"]})


def test_contrast_rule_excludes_exactly_the_near_invisible_pairs():
    from failmap.world import COLOUR_RGB, MIN_CONTRAST, allowed
    colours = ["red", "orange", "yellow", "green", "blue", "purple", "white"]
    contexts = ["grass", "indoors", "snow", "water", "night", "sand"]
    excluded = {(c, x) for x in contexts for c in colours
                if c not in allowed(colours, x, fixed_is_context=True)}
    assert excluded == {("white", "snow"), ("green", "grass"), ("blue", "water")}
    assert set(COLOUR_RGB) >= set(colours) and MIN_CONTRAST == 0.35
    # the rule is symmetric in what it forbids, and never leaves nothing to draw
    assert "snow" not in allowed(contexts, "white", fixed_is_context=False)
    assert allowed(["white"], "snow", fixed_is_context=True) == ["white"]
    assert allowed(colours, "snow", fixed_is_context=True, min_contrast=0.0) == colours


def test_sampled_worlds_follow_the_contrast_rule():
    args = {**SMALL, "colours": ["green", "blue", "white", "red"], "n_train": 600, "n_val": 10}
    pairs = lambda w: {(r["colour"], r["context"]) for r in w.ground_truth}
    strict = pairs(generate_world(seed=1, **args))
    assert not strict & {("white", "snow"), ("green", "grass"), ("blue", "water")}
    loose = pairs(generate_world(seed=1, **args, min_contrast=0.0))
    assert {("white", "snow"), ("green", "grass"), ("blue", "water")} <= loose


# ------------------------------------------------------------------ the superclass world

GROUPS = [["circle", "heart", "moon"], ["star", "cross"], ["square", "diamond", "triangle"]]
SUPER = {**SMALL, "classes": ["round", "pointy", "boxy"], "superclasses": GROUPS,
         "n_train": 1800, "n_val": 1200, "n_test": 30, "n_pool": 10, "n_corpus": 600, "train_rate": 0.03}


@pytest.fixture(scope="module")
def superworld():
    return generate_world(seed=5, **SUPER)


def test_superclass_world_draws_each_class_from_its_members(superworld):
    meta = superworld.meta
    assert meta["classes"] == SUPER["classes"]
    assert meta["subtypes"] == dict(zip(SUPER["classes"], GROUPS))  # the vocabulary of members
    for r in superworld.ground_truth:
        assert r["member"] in GROUPS[r["label"]] and r["class_name"] == SUPER["classes"][r["label"]]
    for name, planted in meta["planted"].items():
        assert planted["attribute"] == "member" and planted["value"] in meta["subtypes"][name]
        assert planted["phrase"] == planted["value"]
    corpus = superworld.splits["corpus"]  # the corpus captions name the member shape, not the group
    truth = {r["id"]: r for r in superworld.ground_truth}
    assert all(truth[i]["member"] in c for c, i in zip(corpus.captions, corpus.ids))


def test_superclass_world_rare_member_shares(superworld):
    rare = {name: d["value"] for name, d in superworld.meta["planted"].items()}
    for split, lo, hi in (("train", 0.0, 0.07), ("val", 0.24, 0.36)):  # train_rate 0.03, eval_rate 0.3
        rows = _rows(superworld, split)
        for name, members in zip(SUPER["classes"], GROUPS):
            of_class = [r for r in rows if r["class_name"] == name]
            share = np.mean([r["member"] == rare[name] for r in of_class])
            assert lo <= share <= hi, (split, name, share)
            others = [np.mean([r["member"] == m for r in of_class]) for m in members if m != rare[name]]
            assert min(others) > 0.2  # the rest is shared evenly: (1 - rate) / (members - 1)
    # ground truth: subpop is exactly the rare member; the corpus draws members uniformly
    assert all(r["subpop"] == int(r["member"] == rare[r["class_name"]]) for r in superworld.ground_truth)
    corpus = _rows(superworld, "corpus")
    assert 0.15 < np.mean([r["subpop"] for r in corpus]) < 0.55


def test_superclass_world_contexts_are_uniform(superworld):
    train = _rows(superworld, "train")
    for name in SUPER["classes"]:
        counts = np.array([sum(r["context"] == c and r["class_name"] == name for r in train)
                           for c in SMALL["contexts"]])
        assert counts.min() > 0.5 * counts.mean()  # no planted context, no confuser


def test_rare_members_from_params_and_seed():
    fixed = generate_world(seed=5, **{**SUPER, "rare_members": ["moon", "star", "square"], "n_train": 60,
                                      "n_val": 30, "n_corpus": 10})
    assert [d["value"] for d in fixed.meta["planted"].values()] == ["moon", "star", "square"]
    drawn = {tuple(d["value"] for d in generate_world(seed=s, **{**SUPER, "n_train": 30, "n_val": 10,
                                                                    "n_corpus": 10}).meta["planted"].values())
             for s in range(6)}
    assert len(drawn) > 1  # the seed decides


@pytest.mark.parametrize("change, match", [
    ({"superclasses": [["circle", "heart"], ["star", "cross"]]}, r"one list of member shapes per entry of world.classes \(3\), got 2"),
    ({"superclasses": [["circle"], ["star", "cross"], ["square", "diamond"]]}, "at least 2 member shapes for class round"),
    ({"superclasses": [["circle", "blob"], ["star", "cross"], ["square", "diamond"]]}, "unknown shape 'blob'"),
    ({"superclasses": [["circle", "star"], ["star", "cross"], ["square", "diamond"]]}, "'star' is in both"),
    ({"rare_members": ["circle", "star", "moon"]}, "'moon' is not a member of boxy"),
])
def test_bad_superclass_world_is_refused(change, match):
    with pytest.raises(ValueError, match=match):
        generate_world(seed=0, **{**SUPER, **change})


def test_params_check_superclass_worlds():
    from failmap.params import ParamsError, overlay, params_from_dict
    default = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    ok = {"world": {"classes": ["round", "pointy"], "superclasses": [["circle", "moon"], ["star", "cross"]]}}
    assert params_from_dict(overlay(default, ok)).world.superclasses == [["circle", "moon"], ["star", "cross"]]
    bad = [({"superclasses": [["circle", "moon"]]}, "world.superclasses = .*one list of member shapes per entry"),
           ({"rare_members": ["moon", "circle"]}, "world.rare_members\\[1\\] = 'circle': expected one of "
                                                  "world.superclasses\\[1\\]"),
           ({"planted_values": ["snow", "snow"]}, "world.planted_values = .*null with world.superclasses"),
           ({"superclasses": [["circle", "moon"], ["star", "circle"]]}, "'circle' is in both round and pointy"),
           ({"superclasses": [["circle", "moon"], ["star", "hexagon"]]},  # a shape the world cannot draw
            "world.superclasses\\[1\\] = .*unknown shape 'hexagon'")]
    for change, match in bad:
        with pytest.raises(ParamsError, match=match):
            params_from_dict(overlay(default, {"world": {**ok["world"], **change}}))
    with pytest.raises(ParamsError, match="world.rare_members .*null unless world.superclasses is set"):
        params_from_dict(overlay(default, {"world": {"rare_members": ["circle"] * 6}}))


def test_a_world_without_corpus_draws_the_same_other_splits(world):
    bare = generate_world(seed=3, **{**SMALL, "n_corpus": 0})
    assert "corpus" not in bare.splits and set(bare.splits) == set(world.splits) - {"corpus"}
    for name, split in bare.splits.items():
        assert np.array_equal(split.images, world.splits[name].images)
    assert bare.ground_truth == [row for row in world.ground_truth if row["split"] != "corpus"]
