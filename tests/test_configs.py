"""The example params files for real setups are valid and in step with params.yaml."""
from pathlib import Path

import pytest
import yaml

from failmap.params import flatten, load_params

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
DEFAULT = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_complete(path):
    params = load_params(path)
    # DVC needs every key present in the file itself, not only through defaults
    raw_keys = set(flatten(load_params(DEFAULT)))
    assert set(flatten(params)) == raw_keys
    text = yaml.safe_load(path.read_text())
    assert set(text) == set(yaml.safe_load(DEFAULT.read_text()))
    assert params.clip.source == "open_clip" and params.decoder.source == "unclip"


def test_there_are_real_configs():
    assert {p.stem for p in CONFIGS} >= {"cifar10", "cifar100_superclass", "imagefolder"}
