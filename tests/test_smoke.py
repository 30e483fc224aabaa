"""The tiny-pipeline helpers shared by .ci/smoke and the end-to-end tests."""
import pytest
import yaml

from failmap.smoke import TINY_PARAMS, merge, repo_root, tiny_params


def test_merge_lays_overrides_over_nested_params():
    base = {"a": 1, "b": {"c": 2, "d": [1, 2]}}
    assert merge(base, {"b": {"d": [3]}}) == {"a": 1, "b": {"c": 2, "d": [3]}}
    assert base == {"a": 1, "b": {"c": 2, "d": [1, 2]}}  # not modified


def test_merge_refuses_a_key_params_yaml_lacks():
    with pytest.raises(KeyError, match="'epoch' is not a params.yaml key"):
        merge({"baseline": {"epochs": 1}}, {"baseline": {"epoch": 2}})


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
