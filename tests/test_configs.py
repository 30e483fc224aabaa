"""The example params files for real setups are valid and in step with params.yaml."""
from pathlib import Path

import pytest
import yaml

from failmap.params import load_params

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
DEFAULT = Path(__file__).resolve().parents[1] / "params.yaml"


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        out |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_complete(path):
    params = load_params(path)
    # DVC needs every key present in the file itself, not only through the schema's defaults
    assert _keys(yaml.safe_load(path.read_text())) == _keys(yaml.safe_load(DEFAULT.read_text()))
    assert params.clip.source == "open_clip" and params.decoder.source == "unclip"


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
