"""params.yaml schema: the real file loads, override files are laid over it,
and every bad input fails with a message naming the dotted key and the
offending value."""
from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from failmap.io import flatten
from failmap.params import ParamsError, Params, apply, as_dict, load_params, main, overlay, params_from_dict

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "params.yaml"
DEFAULT = yaml.safe_load(REAL.read_text())


def over_default(over: dict):
    """The params of ``over`` laid over params.yaml, as an override file is."""
    return params_from_dict(overlay(DEFAULT, over))


def error_of(over) -> str:
    with pytest.raises(ParamsError) as info:
        over_default(over)
    return str(info.value)


def dotted_keys(raw: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in raw.items():
        if isinstance(value, dict):
            keys |= dotted_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


# ------------------------------------------------------------ good inputs

def test_real_params_yaml_loads_and_spells_out_every_key():
    params = load_params(REAL)
    assert isinstance(params, Params)
    raw = yaml.safe_load(REAL.read_text())
    # Every schema key is written in params.yaml (nothing rests on a hidden default), and back.
    assert dotted_keys(raw) == set(flatten(as_dict(params)))


def test_loaded_default_params_are_exactly_params_yaml():
    params = load_params(REAL)
    assert as_dict(params) == DEFAULT
    assert params_from_dict(as_dict(params)) == params


@pytest.mark.parametrize("key, value", [("clip.source", "corpus"), ("decoder.source", "corpus"),
                                        ("caption.sources", ["template", "corpus"])])
def test_uses_corpus_is_set_by_each_stage_that_reads_the_corpus(key, value):
    assert not load_params(REAL).uses_corpus  # the default world: shipped models, template captions
    section, name = key.split(".")
    raw = {**DEFAULT, section: {**DEFAULT[section], name: value}}
    if key == "clip.source":  # the shipped decoder draws from the shipped CLIP only
        raw["decoder"] = {**DEFAULT["decoder"], "source": "corpus"}
    params = params_from_dict(raw)
    assert params.uses_corpus and key in params.corpus_readers


def test_partial_file_is_laid_over_params_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 7\nworld:\n  n_train: 60\nclip:\n  train:\n    steps: 3\n")
    params, default = load_params(REAL, over=[path]), load_params(REAL)
    assert (params.seed, params.world.n_train, params.clip.train.steps) == (7, 60, 3)
    assert params.world.classes == default.world.classes
    assert params.clip.train.lr == default.clip.train.lr
    assert params.svm == default.svm


def test_partial_file_alone_names_the_missing_key(tmp_path):
    """No default lives in the schema: a key absent from the effective params is refused by name."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(overlay(DEFAULT, {"baseline": {"lr": None}})).replace("  lr: null\n", ""))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert "p.yaml" in str(info.value) and "baseline.lr: missing" in str(info.value)


def test_int_accepted_where_float_expected():
    params = over_default({"baseline": {"lr": 1}, "svm": {"c_grid": [1, 0.5]}})
    assert params.baseline.lr == 1.0 and isinstance(params.baseline.lr, float)
    assert all(isinstance(c, float) for c in params.svm.c_grid)


def test_planted_values_from_the_chosen_vocabulary_pass():
    colours = ["red", "blue", "red"]
    params = over_default({"world": {"classes": ["circle", "square", "star"], "planted_attribute": "colour",
                                     "planted_values": colours}})
    assert params.world.planted_values == colours


def test_flatten_round_trips_to_as_dict():
    params = over_default({"seed": 3, "finetune": {"seeds": [4]}})
    flat = flatten(as_dict(params))
    assert flat["seed"] == 3 and flat["finetune.seeds"] == [4]
    assert flat["clip.train.lr"] == params.clip.train.lr
    nested: dict = {}
    for key, value in flat.items():
        *sections, leaf = key.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    assert nested == as_dict(params)
    assert params_from_dict(nested) == params


# ------------------------------------------------------------ file-level errors

def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match="nope.yaml.*not found"):
        load_params(path)


def test_yaml_syntax_error_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("world:\n  classes: [a, b\n")
    with pytest.raises(ParamsError, match="broken.yaml.*not valid YAML"):
        load_params(path)


@pytest.mark.parametrize("text, shown", [("- 1\n- 2\n", "[1, 2]"), ("", "None")])
def test_top_level_must_be_a_mapping(tmp_path, text, shown):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert "p.yaml" in str(info.value) and shown in str(info.value) and "mapping" in str(info.value)


def test_key_error_from_file_names_file_and_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("world:\n  train_rate: 1.5\n")
    with pytest.raises(ParamsError) as info:
        load_params(REAL, over=[path])
    assert "p.yaml" in str(info.value) and "world.train_rate = 1.5" in str(info.value)


def test_section_must_be_a_mapping():
    msg = error_of({"clip": 5})
    assert "clip = 5" in msg and "mapping" in msg


# ------------------------------------------------------------ key-level errors

@pytest.mark.parametrize("raw, key, suggestion", [
    ({"world": {"train_rat": 0.1}}, "world.train_rat", "world.train_rate"),
    ({"train_rate": 0.1}, "train_rate", "world.train_rate"),          # right key, wrong section
    ({"clip": {"train": {"step": 5}}}, "clip.train.step", "clip.train.steps"),
])
def test_unknown_key_suggests_closest(raw, key, suggestion):
    msg = error_of(raw)
    assert f"{key} = " in msg and "unknown key" in msg and suggestion in msg


@pytest.mark.parametrize("raw, key, shown, expected", [
    ({"baseline": {"lr": "fast"}}, "baseline.lr", "'fast'", "a number"),
    ({"baseline": {"lr": "1e-3"}}, "baseline.lr", "'1e-3'", "1.0e-3"),    # YAML's float pitfall
    ({"baseline": {"epochs": True}}, "baseline.epochs", "True", "an integer"),
    ({"world": {"noise": False}}, "world.noise", "False", "a number"),
    ({"baseline": {"epochs": 2.5}}, "baseline.epochs", "2.5", "an integer"),
    ({"baseline": {"augment": 1}}, "baseline.augment", "1", "true or false"),
    ({"clip": {"arch": 14}}, "clip.arch", "14", "a string"),
    ({"world": {"classes": "circle"}}, "world.classes", "'circle'", "a list"),
    ({"finetune": {"seeds": [0, "1"]}}, "finetune.seeds[1]", "'1'", "an integer"),
])
def test_wrong_type(raw, key, shown, expected):
    msg = error_of(raw)
    assert f"{key} = {shown}" in msg and expected in msg


@pytest.mark.parametrize("raw, key, shown, expected", [
    ({"world": {"train_rate": 1.5}}, "world.train_rate", "1.5", "[0, 1]"),
    ({"world": {"eval_rate": -0.1}}, "world.eval_rate", "-0.1", "[0, 1]"),
    ({"world": {"noise": float("nan")}}, "world.noise", "nan", "[0, 1]"),
    ({"world": {"n_train": 0}}, "world.n_train", "0", ">= 1"),
    ({"~data": None, "data": {"source": "cifar10", "root": "r", "download": False, "n_val": 1, "n_pool": -1}},
     "data.n_pool", "-1", ">= 0"),
    ({"baseline": {"lr": 0}}, "baseline.lr", "0", "> 0"),
    ({"finetune": {"momentum": 1}}, "finetune.momentum", "1", "[0, 1)"),
    ({"seed": -3}, "seed", "-3", ">= 0"),
    ({"clip": {"train": {"batch_size": 1}}}, "clip.train.batch_size", "1", ">= 2"),
    ({"decoder": {"train": {"channels": [32, 0]}}}, "decoder.train.channels[1]", "0", ">= 1"),
    ({"tracking": {"uri": ""}}, "tracking.uri", "''", "non-empty"),
    ({"compute": {"workers": 0}}, "compute.workers", "0", ">= 1"),
    ({"compute": {"gpus_per_worker": -0.5}}, "compute.gpus_per_worker", "-0.5", ">= 0"),
    ({"compute": {"address": ""}}, "compute.address", "''", "non-empty"),
])
def test_out_of_range(raw, key, shown, expected):
    msg = error_of(raw)
    assert f"{key} = {shown}" in msg and expected in msg


@pytest.mark.parametrize("section, key, allowed", [
    ("data", "source", "cifar100_superclass"),
    ("world", "planted_attribute", "colour"),
    ("baseline", "arch", "resnet18"),
    ("clip", "source", "open_clip"),
    ("decoder", "source", "unclip"),
    ("baseline", "device", "cuda"),
    ("clip", "device", "cuda"),
    ("decoder", "device", "cuda"),
    ("compute", "engine", "ray"),
])
def test_choice_not_allowed(section, key, allowed):
    msg = error_of({section: {key: "bogus"}})
    assert f"{section}.{key} = 'bogus'" in msg and allowed in msg


def test_compute_defaults_to_the_local_engine():
    c = load_params(REAL).compute
    assert (c.engine, c.workers, c.gpus_per_worker, c.address) == ("local", 2, 0.0, None)
    c = over_default({"compute": {"workers": 4, "gpus_per_worker": 1, "address": "ray://head:10001"}}).compute
    assert (c.workers, c.gpus_per_worker, c.address) == (4, 1.0, "ray://head:10001")
    assert isinstance(c.gpus_per_worker, float)


def test_ray_engine_without_ray_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees where it is not installed
    msg = error_of({"compute": {"engine": "ray", "workers": 2}})
    assert "compute.engine = 'ray'" in msg and "ray cannot be imported" in msg
    assert "pip install -e '.[ray]'" in msg
    assert over_default({"compute": {"engine": "local"}}).compute.engine == "local"  # local needs no Ray


def test_arm_not_allowed():
    msg = error_of({"finetune": {"arms": ["none", "magic"]}})
    assert "finetune.arms[1] = 'magic'" in msg and "pool_confidence" in msg


@pytest.mark.parametrize("section, key", [
    ("world", "classes"), ("world", "colours"), ("world", "contexts"),
    ("finetune", "arms"), ("finetune", "seeds"), ("svm", "c_grid"), ("generate", "eval_alphas"),
    ("decoder.train", "channels"),
])
def test_empty_list(section, key):
    raw: dict = {key: []}
    for part in reversed(section.split(".")):
        raw = {part: raw}
    msg = error_of(raw)
    assert f"{section}.{key} = []" in msg and "at least" in msg


@pytest.mark.parametrize("key", ["classes", "colours", "contexts"])
def test_duplicates_in_world_vocabularies(key):
    msg = error_of({"world": {key: ["a", "b", "a"]}})
    assert f"world.{key} = ['a', 'b', 'a']" in msg and "repeated: 'a'" in msg


# ------------------------------------------------------------ cross-field errors

def test_planted_shares_must_leave_a_distribution():
    msg = error_of({"world": {"train_rate": 0.3, "confuser_rate": 0.8}})
    assert "world.confuser_rate = 0.8" in msg and "1 - world.train_rate (0.7)" in msg
    msg = error_of({"world": {"eval_rate": 0.5, "eval_confuser_rate": 0.64}})
    assert "world.eval_confuser_rate = 0.64" in msg and "1 - world.eval_rate (0.5)" in msg
    assert over_default({"world": {"eval_rate": 0.5, "eval_confuser_rate": None}}).world.eval_rate == 0.5


def test_a_superclass_world_has_no_confuser_shares_to_check():
    """The superclass world draws no confuser (its planted attribute is uniform): the default confuser shares
    beside its own eval_rate are not refused (benchmarks/bench_superclass.py's world, eval_rate 0.3)."""
    world = {"classes": ["alpha", "beta"], "superclasses": [["circle", "star"], ["heart", "cross"]],
             "eval_rate": 0.3}
    assert over_default({"world": world}).world.eval_confuser_rate + 0.3 > 1


def test_min_size_above_max_size():
    msg = error_of({"world": {"min_size": 0.9, "max_size": 0.5}})
    assert "world.min_size = 0.9" in msg and "world.max_size (0.5)" in msg


def test_one_class_is_not_enough():
    msg = error_of({"world": {"classes": ["circle"]}})
    assert "world.classes = ['circle']" in msg and "at least 2" in msg


def test_planted_values_need_one_per_class():
    msg = error_of({"world": {"classes": ["a", "b", "c"], "planted_values": ["grass"]}})
    assert "world.planted_values = ['grass']" in msg and "(3)" in msg


@pytest.mark.parametrize("attribute, value, vocab", [("context", "red", "world.contexts"),
                                                     ("colour", "grass", "world.colours")])
def test_planted_values_must_come_from_the_attribute_vocabulary(attribute, value, vocab):
    msg = error_of({"world": {"classes": ["a", "b"], "planted_attribute": attribute,
                              "planted_values": ["snow" if attribute == "context" else "blue", value]}})
    assert f"world.planted_values[1] = '{value}'" in msg and vocab in msg


def test_c_grid_must_be_positive():
    msg = error_of({"svm": {"c_grid": [0.1, -1.0]}})
    assert "svm.c_grid[1] = -1.0" in msg and "> 0" in msg


def test_svm_needs_two_folds():
    msg = error_of({"svm": {"folds": 1}})
    assert "svm.folds = 1" in msg and ">= 2" in msg


@pytest.mark.parametrize("raw, key, shown", [
    ({"generate": {"alpha": 0}}, "generate.alpha", "0"),
    ({"generate": {"alpha": 1.2}}, "generate.alpha", "1.2"),
    ({"generate": {"eval_alphas": [0.1, 0.0]}}, "generate.eval_alphas[1]", "0.0"),
    ({"generate": {"eval_alphas": [1.5]}}, "generate.eval_alphas[0]", "1.5"),
    ({"generate": {"caption_weight": 0}}, "generate.caption_weight", "0"),
])
def test_alphas_in_zero_one(raw, key, shown):
    msg = error_of(raw)
    assert f"{key} = {shown}" in msg and "(0, 1]" in msg


def test_caption_arm_settings_that_cannot_work_are_refused():
    msg = error_of({"generate": {"n_captions": 11}})
    assert "generate.n_captions = 11" in msg and "caption.top_k (10)" in msg
    msg = error_of({"decoder": {"source": "unclip"}})
    assert "generate.caption_weight = 0.6" in msg and "unclip" in msg
    assert over_default({"decoder": {"source": "unclip"}, "generate": {"caption_weight": 1.0}}).generate.n_captions == 1


@pytest.mark.parametrize("template", ["a photo of a {adjective} thing", "a {colour} {noun}", "a {noun"])
def test_caption_template_needs_noun_and_known_slots(template):
    msg = error_of({"caption": {"template": template}})
    assert f"caption.template = {template!r}" in msg and "{noun}" in msg


# ------------------------------------------------------------ command line

def test_main_reports_ok_and_errors(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(REAL.read_text().replace("seed: 0", "seed: 1"))
    bad.write_text(yaml.safe_dump(overlay(DEFAULT, {"svm": {"folds": 1}})))
    assert main([str(good)]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    assert main([str(bad)]) == 2
    assert "svm.folds = 1" in capsys.readouterr().err


def test_module_entry_point_exits_2_on_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(overlay(DEFAULT, {"world": {"classes": "circle"}})))
    done = subprocess.run([sys.executable, "-m", "failmap.params", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "world.classes = 'circle'" in done.stderr


# ------------------------------------------------------------ override files

def test_overlay_merges_mappings_replaces_the_rest_and_modifies_nothing():
    base = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": {"f": 3}}
    assert overlay(base, {"b": {"d": [3]}, "e": None}) == {"a": 1, "b": {"c": 2, "d": [3]}, "e": None}
    assert base == {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": {"f": 3}}  # not modified


def test_overlay_tilde_removes_a_key_before_the_rest_applies():
    base = {"data": {"source": "world", "image_size": 32}, "seed": 0}
    replaced = overlay(base, {"~data": None, "data": {"source": "cifar10"}})
    assert replaced == {"data": {"source": "cifar10"}, "seed": 0} and list(replaced) == ["data", "seed"]  # in place
    assert overlay(base, {"~seed": None}) == {"data": base["data"]}
    with pytest.raises(ParamsError, match="~seed = 3: expected nothing"):
        overlay(base, {"~seed": 3})


def test_override_file_layers_apply_in_order(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("seed: 3\nbaseline: {epochs: 2}\n")
    second.write_text("seed: 4\n")
    params = load_params(REAL, over=[first, second])
    assert (params.seed, params.baseline.epochs, params.baseline.lr) == (4, 2, DEFAULT["baseline"]["lr"])
    with pytest.raises(ParamsError, match=r"params file .*params.yaml \+ .*a.yaml \+ .*b.yaml: seed = -1"):
        second.write_text("seed: -1\n")
        load_params(REAL, over=[first, second])


# ------------------------------------------------------------ source-specific settings

CIFAR = {"~data": None, "data": {"source": "cifar10", "root": "data/raw", "download": False, "n_val": 10, "n_pool": 5},
         "clip": {"source": "open_clip"}, "decoder": {"source": "unclip"}, "generate": {"caption_weight": 1.0}}


def test_world_settings_only_with_the_world_source():
    assert over_default(dict(CIFAR, world=None)).world is None
    msg = error_of(CIFAR)  # the world's settings left in a CIFAR run
    assert msg.startswith("world = {'classes'") and "null with data.source cifar10" in msg
    msg = error_of({"world": None})
    assert "world = None" in msg and "a mapping" in msg and "data.source world" in msg
    assert "world: missing" in error_of({"~world": None})


def test_data_carries_exactly_its_sources_keys():
    msg = error_of({"data": {"source": "cifar10"}})  # merged into the world's data, not replacing it
    assert "data.image_size = 32: unknown key" in msg and "not a key of source cifar10" in msg and "~data" in msg
    msg = error_of({"data": {"minority_keep": 0.5}})
    assert "data.minority_keep = 0.5: unknown key" in msg and "source, image_size" in msg
    assert "data.root: missing" in error_of(dict(CIFAR, world=None, data={"source": "imagefolder", "image_size": 8,
                                                                          "captions_file": None}))
    assert "data.sourc = 'x': unknown key; did you mean data.source?" in error_of({"data": {"sourc": "x"}})


def test_a_stage_reading_the_corpus_needs_a_source_with_one_before_any_work():
    folder = dict(CIFAR, world=None, data={"source": "imagefolder", "root": "data/raw/x", "image_size": 8,
                                           "captions_file": None})
    msg = error_of(dict(folder, clip={"source": "corpus"}, decoder={"source": "corpus"}))
    assert msg.startswith("clip.source = 'corpus'") and "data.captions_file" in msg and "open_clip" in msg
    msg = error_of(dict(folder, caption={"sources": ["template", "corpus"]}))
    assert msg.startswith("caption.sources = ['template', 'corpus']") and "data.captions_file" in msg
    msg = error_of(dict(CIFAR, world=None, decoder={"source": "corpus"}))
    assert msg.startswith("decoder.source = 'corpus'") and "cifar10 has no captioned corpus" in msg
    # a folder with its captions file, or the world, has a corpus to read
    captioned = dict(folder, data=dict(folder["data"], captions_file="data/raw/x/captions.csv"))
    assert over_default(dict(captioned, clip={"source": "corpus"}, decoder={"source": "corpus"})).uses_corpus
    assert over_default({"clip": {"source": "corpus"}, "decoder": {"source": "corpus"}}).uses_corpus


def test_apply_rewrites_params_yaml_with_the_configs_laid_over_it(tmp_path, monkeypatch, capsys):
    target = tmp_path / "params.yaml"
    target.write_text(REAL.read_text())
    configs = [REPO / "configs" / "pretrained.yaml", REPO / "configs" / "cifar10.yaml"]
    monkeypatch.chdir(tmp_path)  # the command line rewrites the working directory's params.yaml
    assert main(["apply", *map(str, configs)]) == 0 and capsys.readouterr().out.strip() == "ok"
    assert load_params(target) == load_params(REAL, over=configs)
    assert target.read_text().startswith("# params.yaml + ") and load_params(target).world is None
    assert main(["apply"]) == 2 and "usage" in capsys.readouterr().err
    before = target.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("baseline: {epochs: 0}\n")
    with pytest.raises(ParamsError, match="baseline.epochs = 0"):
        apply([bad], target)
    assert target.read_text() == before  # a config that does not validate changes nothing


def _choices(section, key):
    return tuple(typing.get_args(section.model_fields[key].annotation))


def test_choices_agree_with_the_libraries_that_act_on_them():
    """params.py spells each choice list as a Literal (it stays import-light); the module that acts on the
    value keeps its own tuple. They must not drift apart."""
    from failmap import caption_sources, embedder, finetune, modes
    from failmap.decoders import loader
    from failmap.params import Arm, CaptionSource, Clip, Decoder, Modes
    assert set(_choices(Modes, "cluster")) == set(modes.CLUSTERINGS)
    assert set(typing.get_args(CaptionSource)) == set(caption_sources.SOURCES)
    assert set(typing.get_args(Arm)) == set(finetune.ARMS)
    assert set(_choices(Clip, "source")) == set(embedder.SOURCES)
    assert set(_choices(Decoder, "source")) == set(loader.SOURCES)


def test_max_clusters_below_max_modes_is_refused():
    msg = error_of({"modes": {"max_modes": 4, "max_clusters": 3}})
    assert "modes.max_clusters = 3" in msg and ">= modes.max_modes (4)" in msg
