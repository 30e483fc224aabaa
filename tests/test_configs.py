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
