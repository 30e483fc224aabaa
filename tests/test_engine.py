"""The ray engine against the local one: the same arrays, manifests and files
for embed and generate with 1 and 2 workers, a worker killed mid-job is
survived, and a job that keeps failing raises before anything is written.
Needs the optional extra (pip install -e '.[ray]'); skipped without it."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray engine needs the optional extra: pip install -e '.[ray]'")
pytest.importorskip("ray.data", reason="the ray engine needs Ray Data: pip install -e '.[ray]'")

import open_clip  # noqa: E402
import torch  # noqa: E402

from failmap.decoders.loader import load_decoder  # noqa: E402
from failmap.decoders.sphere import normalize  # noqa: E402
from failmap.decoders.training import train_decoder  # noqa: E402
from failmap.embedder import embed_image_sets, load_embedder, world_clip_paths  # noqa: E402
from failmap.engine import EngineError, LocalEngine, RayEngine, Task, open_engine  # noqa: E402
from failmap.generate import decode_plans, plan_caption, plan_direction, plan_eval, plan_generic  # noqa: E402
from failmap.generated import save_generated, write_manifest  # noqa: E402
from failmap.io import file_digest, write_json  # noqa: E402
from failmap.svm import ClassSVM, Preprocessor, Skip  # noqa: E402

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
DIM = 8  # the tiny decoder's space
CLASSES = ["circle", "square", "star"]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of two CPUs for the module (the engine joins it and leaves it running);
    its workers can import this file, whose functions some tasks below are made of."""
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny world-CLIP folder (open_clip config + random weights) any worker can load."""
    folder = tmp_path_factory.mktemp("clip")
    config_path, weights_path = world_clip_paths(folder)
    write_json(config_path, TINY_CLIP)
    open_clip.add_model_config(config_path)
    torch.manual_seed(0)
    torch.save(open_clip.create_model(config_path.stem).state_dict(), weights_path)
    return folder


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    """A tiny world decoder, trained for a few steps (what it draws does not matter here)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("decoder") / "world_decoder"
    train_decoder(images, normalize(rng.normal(size=(32, DIM))), normalize(rng.normal(size=(32, DIM)) + 2), out,
                  space="test-space", channels=[8, 16], steps=3, batch_size=16, train_timesteps=50, warmup=1,
                  device="cpu", seed=0)
    return out


def _embedder_loader(clip_dir):
    return partial(load_embedder, "world", None, None, str(clip_dir), "cpu", 64)


def test_embed_is_identical_on_local_and_ray_with_one_and_two_workers(local_ray, clip_dir):
    rng = np.random.default_rng(1)
    sets = {"train": rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8),
            "val": rng.integers(0, 256, (70, 32, 32, 3), dtype=np.uint8)}
    load = _embedder_loader(clip_dir)
    local, space, dim = embed_image_sets(LocalEngine(), load, sets, batch_size=64)
    # what the embed stage wrote before the engine: one embed_images call per split
    np.testing.assert_array_equal(local["train"], load().embed_images(sets["train"]))
    for workers in (1, 2):
        got, got_space, got_dim = embed_image_sets(RayEngine(workers), load, sets, batch_size=64)
        assert (got_space, got_dim) == (space, dim)
        for name in sets:
            assert got[name].tobytes() == local[name].tobytes(), f"{name} differs with {workers} ray workers"


def _svm(weight):
    pre = Preprocessor(mean=np.zeros(len(weight)), std=np.ones(len(weight)))
    return ClassSVM(C=1.0, cv_score=0.7, cv_scores={1.0: 0.7}, weight=np.asarray(weight, float), intercept=0.0,
                    preprocessor=pre, n_val=50, n_errors=10, converged=True)


def _embed_texts(texts):
    rows = [np.random.default_rng(sum(map(ord, t))).normal(size=DIM) for t in texts]
    return normalize(np.array(rows))


def _plans(decoder):
    svms = {0: _svm(np.eye(DIM)[0]), 1: _svm(np.eye(DIM)[1]), 2: Skip(reason="too few errors", n_val=5, n_errors=1)}
    refs = normalize(np.random.default_rng(2).normal(size=(len(CLASSES), DIM)))
    hard = {0: ["a red circle", "a blue circle"], 1: ["a square at night"]}
    return [plan_generic(_embed_texts, CLASSES, [f"a photo of a {c}" for c in CLASSES], 5, 0),
            plan_caption(decoder, _embed_texts, CLASSES, hard, svms, 4, 0, references=refs, weight=0.6),
            plan_caption(decoder, _embed_texts, CLASSES, hard, svms, 3, 1),
            plan_direction(decoder, CLASSES, refs, svms, 0.4, 6, 0),
            plan_eval(decoder, CLASSES, refs, svms, [0.2, 0.5], 3, 0)]


def _saved_bytes(sets, folder: Path) -> dict[str, str]:
    """What the stage writes (each set's npz, the manifest), as file digests."""
    for i, s in enumerate(sets):
        save_generated(folder / str(i), s)  # two caption sets: one folder each
    write_manifest(folder / "manifest.csv", sets)
    return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generate_is_identical_on_local_and_ray_with_one_and_two_workers(local_ray, decoder_dir, tmp_path):
    load = partial(load_decoder, "world", str(decoder_dir), None, "cpu")
    decoder = load()
    decode = dict(num_inference_steps=2, guidance_scale=2.0, batch_size=4, show_progress=False)
    local = decode_plans(_plans(decoder), decoder=decoder, **decode)
    assert [len(s) for s in local] == [15, 8, 6, 12, 2 * 3 * 5]
    expected = _saved_bytes(local, tmp_path / "local")
    for workers in (1, 2):
        got = decode_plans(_plans(decoder), RayEngine(workers), load, **decode)
        for a, b in zip(local, got):
            assert b.images.tobytes() == a.images.tobytes() and b.rows == a.rows and b.skipped == a.skipped
        assert _saved_bytes(got, tmp_path / f"ray{workers}") == expected


def _no_model():
    return None


def _square(model, item):
    return item * item


def _die_once(model, item, flag):
    """Kills its worker process the first time it sees item 5 (the flag file says it did)."""
    if item == 5 and not Path(flag).exists():
        Path(flag).write_text(str(os.getpid()))
        os._exit(1)
    return item * item


def _die_always(model, item):
    if item == 2:
        os._exit(1)
    return item


def test_a_worker_killed_mid_job_is_restarted_and_its_items_retried(local_ray, tmp_path):
    flag = tmp_path / "killed"
    out = RayEngine(2, retries=2).map(Task(_no_model, partial(_die_once, flag=str(flag))), list(range(12)))
    assert flag.exists(), "no worker was killed: the test proved nothing"
    assert out == [i * i for i in range(12)]


def test_a_job_that_keeps_failing_raises_a_clear_error(local_ray):
    with pytest.raises(EngineError, match="nothing was written") as info:
        RayEngine(1, retries=1).map(Task(_no_model, _die_always), list(range(4)))
    assert "ActorDiedError: The actor died unexpectedly" in str(info.value)  # the kills, not some other error


def test_open_engine_joins_a_running_ray_and_leaves_it_running(local_ray):
    compute = SimpleNamespace(engine="ray", workers=2, gpus_per_worker=0.0, address=None)
    with open_engine(compute) as engine:
        assert isinstance(engine, RayEngine) and engine.workers == 2
        assert engine.map(Task(_no_model, _square), [1, 2, 3]) == [1, 4, 9]
    assert ray.is_initialized()
    with open_engine(SimpleNamespace(engine="local")) as engine:
        assert isinstance(engine, LocalEngine)
        assert engine.map(Task(_no_model, _square), [3]) == [9]
