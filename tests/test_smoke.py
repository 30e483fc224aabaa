"""The tiny-pipeline helpers shared by .ci/smoke and the end-to-end tests."""
import pytest
import yaml

from failmap.params import ParamsError, load_params
from failmap.smoke import TINY_PARAMS, repo_root, tiny_params


def test_tiny_params_are_valid_and_a_key_params_yaml_lacks_is_refused(tmp_path):
    """The tiny file is laid over params.yaml by failmap.params.overlay (tested in test_params.py)."""
    repo = repo_root()
    assert load_params(repo / "params.yaml", over=[repo / TINY_PARAMS]).baseline.epochs == 4
    typo = tmp_path / "tiny.yaml"
    typo.write_text("baseline:\n  epoch: 2\n")
    with pytest.raises(ParamsError, match="baseline.epoch = 2: unknown key; did you mean baseline.epochs"):
        load_params(repo / "params.yaml", over=[typo])


def test_tiny_params_keep_every_key_of_params_yaml():
    """DVC wants every params key that dvc.yaml names present: the tiny file only overrides."""
    repo = repo_root()
    full = yaml.safe_load((repo / "params.yaml").read_text())
    tiny = tiny_params(repo)

    def keys(d, prefix=""):
        return {prefix + k for k in d} | {x for k, v in d.items() if isinstance(v, dict)
                                          for x in keys(v, f"{prefix}{k}.")}
    assert keys(tiny) == keys(full)
    assert tiny["world"]["n_train"] == yaml.safe_load((repo / TINY_PARAMS).read_text())["world"]["n_train"]
