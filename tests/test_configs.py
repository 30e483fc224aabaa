"""The example configs for real setups: short override files that, laid over
params.yaml after configs/pretrained.yaml, give a valid run of their source."""
from pathlib import Path

import pytest
import yaml

from failmap.params import ParamsError, load_params

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "configs" / "pretrained.yaml"
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p != PRETRAINED)
DEFAULT = REPO / "params.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_laid_over_params_yaml(path):
    params = load_params(DEFAULT, over=[PRETRAINED, path])
    assert params.data.source == path.stem and params.world is None
    assert params.clip.source == "open_clip" and params.decoder.source == "unclip"
    # an override file gives only what it changes: every section it names is one of params.yaml's
    assert set(yaml.safe_load(path.read_text())) - {"~data"} <= set(yaml.safe_load(DEFAULT.read_text()))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_without_pretrained_models_is_refused(path):
    """The shipped world models know only the world: a real data source needs configs/pretrained.yaml."""
    with pytest.raises(ParamsError, match=r"clip.source = 'world'.*data.source " + path.stem):
        load_params(DEFAULT, over=[path])


def test_there_are_real_configs():
    assert {p.stem for p in CONFIGS} >= {"cifar10", "cifar100_superclass", "imagefolder"}


def test_gate_checks_name_declared_metrics_files():
    from failmap.gate import load_checks
    repo = DEFAULT.parent
    declared = set()
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        for entry in stage.get("metrics", []):
            declared |= set(entry) if isinstance(entry, dict) else {entry}
    checks = load_checks(repo / "gate.yaml")
    assert checks and {c.file for c in checks} <= declared


# The README's `dvc exp run -S` form of `apply configs/pretrained.yaml configs/cifar10.yaml`
CIFAR10_SET_PARAMS = [
    "world=null", "~data", "+data={source:cifar10,root:data/raw,download:true,n_val:5000,n_pool:10000}",
    "clip.source=open_clip", "decoder.source=unclip", "decoder.sampler=null", "decoder.num_inference_steps=25",
    "decoder.guidance_scale=7.0", "decoder.text_sampler=null", "decoder.text_num_inference_steps=null",
    "decoder.text_guidance_scale=null", "decoder.batch_size=16", "generate.caption_weight=1.0",
    "baseline.arch=resnet18", "baseline.epochs=30", "baseline.batch_size=256", "baseline.lr=0.1"]


def test_dvc_set_params_grammar_gives_the_same_run_as_the_config_files(tmp_path):
    """DVC's own override function (what `dvc exp run -S` calls): `~` deletes, `+` adds, null is kept."""
    from dvc.utils.hydra import apply_overrides
    copy = tmp_path / "params.yaml"
    copy.write_text(DEFAULT.read_text())
    apply_overrides(copy, CIFAR10_SET_PARAMS)
    assert load_params(copy) == load_params(DEFAULT, over=[PRETRAINED, REPO / "configs" / "cifar10.yaml"])
    assert "# master seed" in copy.read_text()  # unlike `failmap.params apply`, -S keeps the comments
