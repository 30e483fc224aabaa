"""failmap.api: the README's "Python API" snippet runs as written (shipped
world models) and finds, names and decodes the planted failures; bad input
is refused by name before any work."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from failmap import api

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    """The python block of the README section "Python API"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section should hold exactly one python block"
    return blocks[0]


def test_readme_snippet_runs_as_written_and_names_the_planted_contexts(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(readme_snippet(), "README.md (Python API)", "exec"), namespace)
    world, captions, images = namespace["world"], namespace["captions"], namespace["images"]
    from failmap.world import CONTEXT_PHRASE
    assert sorted(captions) == sorted(world["classes"])
    for name, planted in zip(world["classes"], world["planted"]):
        assert CONTEXT_PHRASE[planted] in captions[name]["hard"][0]["caption"], (name, captions[name]["hard"][:3])
    assert images.images.shape == (4 * len(world["classes"]), 32, 32, 3) and images.images.dtype == np.uint8
    assert sorted(set(images.labels.tolist())) == [0, 1, 2]
    assert "(12, 32, 32, 3)" in capsys.readouterr().out
    # the reference's scoring (the SVM on the caption's text shift) names them as well here
    clip, found = namespace["clip"], namespace["found"]
    contexts = [CONTEXT_PHRASE[c] for c in world["contexts"]]
    by_direction = api.caption_directions(found, clip.embed_texts, adjectives=world["colours"], contexts=contexts,
                                          score="direction")
    for name, planted in zip(world["classes"], world["planted"]):
        assert CONTEXT_PHRASE[planted] in by_direction[name]["hard"][0]["caption"]
    with pytest.raises(ValueError, match="score must be one of"):
        api.caption_directions(found, clip.embed_texts, score="svm")


def test_import_is_light():
    """Importing failmap.api pulls in neither torch, sklearn nor diffusers."""
    import subprocess
    import sys
    code = "import sys, failmap.api; print(sorted(m for m in ('torch', 'sklearn', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout.strip()
    assert out == "[]"


def test_bad_input_is_refused_by_name():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 8)), np.arange(40) % 2
    with pytest.raises(ValueError, match="val_predictions must have the shape of val_labels"):
        api.find_failure_directions(X, y, X, y, y[:-1], ["a", "b"], c_grid=[1.0], folds=2, max_iter=100,
                                    min_errors=1)
    with pytest.raises(ValueError, match="walk must be 'extent', 'images' or 'normal'"):
        api.decode_directions(None, None, alpha=1.0, walk="sideways")


def test_settings_left_out_come_from_params_yaml():
    import yaml
    svm = yaml.safe_load((ROOT / "params.yaml").read_text())["svm"]
    assert api._settings("svm", folds=None, max_iter=7) == {"folds": svm["folds"], "max_iter": 7}
