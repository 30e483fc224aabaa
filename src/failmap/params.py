"""The typed schema of params.yaml, and the one validator every stage reads it through.

A typo in a key, a rate of 1.5 or `lr: 1e-3` (which YAML reads as a *string*)
must stop a run before any work is done, with the dotted key named, instead of
failing hours later or being silently ignored. The schema is plain frozen
dataclasses mirroring the YAML; their defaults are the values in params.yaml,
so a small params file (tests, quick experiments) only gives the keys it changes.

Validation is driven by the field types (int, float, bool, str, Literal,
Optional, list[...], nested dataclasses) plus range metadata on each field;
the few rules that relate two keys live in `_check_cross_fields`.

    python -m failmap.params [params.yaml]     # prints "ok" or the error (exit 2)
"""
from __future__ import annotations

import dataclasses
import difflib
import string
import sys
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal, Optional, Union

import yaml


class ParamsError(ValueError):
    """params.yaml does not match the schema; the message names the dotted key."""


def _p(default, *, ge=None, gt=None, le=None, lt=None, min_len=None, unique=False):
    """A field with its default and its checks.

    ge/gt/le/lt bound a number, or each element of a list of numbers; min_len
    bounds the length of a string or list; unique forbids repeated list entries.
    """
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, min_len=min_len).items() if v is not None}
    if unique:
        meta["unique"] = True
    if isinstance(default, list):  # a mutable default needs a factory
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _section(cls):
    return field(default_factory=cls)


Device = Literal["auto", "cpu", "cuda"]
Arm = Literal["none", "generic", "caption", "direction", "pool_svm", "pool_random", "pool_confidence"]
CAPTION_SLOTS = ("adjective", "noun", "context")  # the placeholders caption.template may use


@dataclass(frozen=True)
class Data:
    source: Literal["world", "cifar10", "cifar100_superclass", "imagefolder"] = "world"
    root: str = _p("data/raw", min_len=1)
    download: bool = False
    image_size: int = _p(32, ge=1)
    n_val: int = _p(5000, ge=1)
    n_pool: int = _p(10000, ge=0)
    minority_keep: float = _p(0.25, ge=0, le=1)
    captions_file: Optional[str] = _p(None, min_len=1)


@dataclass(frozen=True)
class World:
    classes: list[str] = _p(["circle", "square", "triangle", "star", "cross", "heart"], min_len=2, unique=True)
    colours: list[str] = _p(["red", "orange", "yellow", "green", "blue", "purple", "white"], min_len=1, unique=True)
    contexts: list[str] = _p(["grass", "indoors", "snow", "water", "night", "sand"], min_len=1, unique=True)
    n_train: int = _p(6000, ge=1)
    n_val: int = _p(3000, ge=1)
    n_test: int = _p(3000, ge=1)
    n_pool: int = _p(6000, ge=0)
    n_corpus: int = _p(20000, ge=1)
    planted_attribute: Literal["context", "colour"] = "context"
    planted_values: Optional[list[str]] = _p(None, min_len=1)
    train_rate: float = _p(0.01, ge=0, le=1)
    eval_rate: float = _p(0.2, ge=0, le=1)
    confuser_rate: float = _p(0.8, ge=0, le=1)
    eval_confuser_rate: Optional[float] = _p(0.64, ge=0, le=1)
    noise: float = _p(0.06, ge=0, le=1)
    min_size: float = _p(0.45, gt=0, le=1)
    max_size: float = _p(0.8, gt=0, le=1)
    min_contrast: float = _p(0.35, ge=0, le=2)


@dataclass(frozen=True)
class Baseline:
    arch: Literal["small_cnn", "resnet18"] = "small_cnn"
    width: int = _p(32, ge=1)
    epochs: int = _p(12, ge=1)
    batch_size: int = _p(128, ge=1)
    lr: float = _p(0.05, gt=0)
    momentum: float = _p(0.9, ge=0, lt=1)
    weight_decay: float = _p(0.0005, ge=0)
    augment: bool = True
    device: Device = "auto"


@dataclass(frozen=True)
class ClipTrain:
    embed_dim: int = _p(64, ge=1)
    width: int = _p(16, ge=1)
    layers: Union[int, list[int]] = _p([1, 1, 1, 1], ge=1)  # int: ViT depth; 4 block counts: open_clip ModifiedResNet
    patch_size: int = _p(4, ge=1)
    text_width: int = _p(64, ge=1)
    text_layers: int = _p(1, ge=1)
    context_length: int = _p(12, ge=1)
    steps: int = _p(2000, ge=1)
    batch_size: int = _p(128, ge=2)  # a contrastive loss needs at least one negative
    lr: float = _p(0.003, gt=0)
    warmup: int = _p(100, ge=0)


@dataclass(frozen=True)
class Clip:
    source: Literal["world", "corpus", "open_clip"] = "world"
    arch: str = _p("ViT-L-14", min_len=1)
    pretrained: str = _p("openai", min_len=1)
    batch_size: int = _p(256, ge=1)
    device: Device = "auto"
    train: ClipTrain = _section(ClipTrain)


@dataclass(frozen=True)
class DecoderTrain:
    channels: list[int] = _p([32, 64, 128], ge=1, min_len=1)
    patch_size: int = _p(2, ge=1)
    attention_levels: int = _p(0, ge=0)
    scale_shift: bool = False
    steps: int = _p(1400, ge=1)
    batch_size: int = _p(32, ge=1)
    lr: float = _p(0.002, gt=0)
    warmup: int = _p(100, ge=0)
    ema_decay: float = _p(0.999, ge=0, lt=1)
    cond_dropout: float = _p(0.1, ge=0, lt=1)
    text_cond_prob: float = _p(0.5, ge=0, le=1)
    cond_scale: float = _p(8.0, gt=0)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    snr_gamma: Optional[float] = _p(5.0, gt=0)
    train_timesteps: int = _p(1000, ge=2)
    mixed_precision: Union[bool, Literal["auto"]] = "auto"  # auto: bfloat16 where it is fast (device.bf16_is_fast)


@dataclass(frozen=True)
class Decoder:
    source: Literal["world", "corpus", "unclip"] = "world"
    model: str = _p("stabilityai/stable-diffusion-2-1-unclip-small", min_len=1)
    text_model: str = _p("stabilityai/stable-diffusion-2-1-base", min_len=1)
    num_inference_steps: int = _p(15, ge=1)
    guidance_scale: float = _p(5.0, ge=0)
    batch_size: int = _p(64, ge=1)
    mixed_precision: Union[bool, Literal["auto"]] = "auto"  # auto: bfloat16 where it is fast (device.bf16_is_fast)
    device: Device = "auto"
    train: DecoderTrain = _section(DecoderTrain)


@dataclass(frozen=True)
class Svm:
    c_grid: list[float] = _p([1.0e-6, 1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2, 1.0e-1, 1.0], gt=0, min_len=1, unique=True)
    folds: int = _p(2, ge=2)
    max_iter: int = _p(10000, ge=1)
    min_errors: int = _p(10, ge=1)


@dataclass(frozen=True)
class Modes:
    max_modes: int = _p(3, ge=1)
    min_mode_errors: int = _p(5, ge=1)
    min_silhouette: float = _p(0.25, ge=-1, le=1)


@dataclass(frozen=True)
class Caption:
    template: str = _p("a photo of a {adjective} {noun} {context}", min_len=1)
    adjectives: Optional[list[str]] = _p(None, min_len=1, unique=True)
    contexts: Optional[list[str]] = _p(None, min_len=1, unique=True)
    top_k: int = _p(10, ge=1)


@dataclass(frozen=True)
class Generate:
    n_per_class: int = _p(150, ge=1)
    walk: Literal["extent", "normal"] = "extent"
    alpha: float = _p(1.0, gt=0, le=1)
    n_captions: int = _p(1, ge=1)
    caption_weight: float = _p(0.6, gt=0, le=1)
    eval_alphas: list[float] = _p([0.25, 0.5, 1.0], gt=0, le=1, min_len=1, unique=True)
    n_eval_per_class: int = _p(16, ge=1)
    min_class_recognition: float = _p(0.5, ge=0, le=1)
    filter: bool = False


@dataclass(frozen=True)
class Finetune:
    arms: list[Arm] = _p(["none", "generic", "caption", "direction", "pool_svm", "pool_random", "pool_confidence"],
                         min_len=1, unique=True)
    seeds: list[int] = _p([0, 1, 2], ge=0, min_len=1, unique=True)
    pool_k: int = _p(75, ge=1)
    last_layer_only: bool = True
    epochs: int = _p(5, ge=1)
    batch_size: int = _p(128, ge=1)
    lr: float = _p(0.02, gt=0)
    momentum: float = _p(0.9, ge=0, lt=1)
    weight_decay: float = _p(0.0005, ge=0)


@dataclass(frozen=True)
class Evaluate:
    k: int = _p(50, ge=1)


@dataclass(frozen=True)
class Tracking:
    experiment: str = _p("failmap", min_len=1)
    uri: str = _p("sqlite:///mlflow.db", min_len=1)


@dataclass(frozen=True)
class Compute:
    """Where the embed and generate stages run their batches (failmap.engine)."""
    engine: Literal["local", "ray"] = "local"
    workers: int = _p(2, ge=1)
    gpus_per_worker: float = _p(0.0, ge=0)
    address: Optional[str] = _p(None, min_len=1)  # null: start a local Ray with num_cpus = workers


@dataclass(frozen=True)
class Params:
    seed: int = _p(0, ge=0)  # numpy and torch both refuse negative seeds
    data: Data = _section(Data)
    world: World = _section(World)
    baseline: Baseline = _section(Baseline)
    clip: Clip = _section(Clip)
    decoder: Decoder = _section(Decoder)
    svm: Svm = _section(Svm)
    modes: Modes = _section(Modes)
    caption: Caption = _section(Caption)
    generate: Generate = _section(Generate)
    finetune: Finetune = _section(Finetune)
    evaluate: Evaluate = _section(Evaluate)
    tracking: Tracking = _section(Tracking)
    compute: Compute = _section(Compute)


# ------------------------------------------------- foundation/params.yaml
@dataclass(frozen=True)
class FoundationCorpus:
    n_train: int = _p(60000, ge=2)
    n_heldout: int = _p(2000, ge=1)     # held-out images, scored only
    min_size: float = _p(0.3, gt=0, le=1)
    max_size: float = _p(0.9, gt=0, le=1)
    max_noise: float = _p(0.1, ge=0)


@dataclass(frozen=True)
class FoundationDecoder(DecoderTrain):
    checkpoint_every: int = _p(500, ge=1)   # steps between resumable checkpoints
    eval_every: int = _p(2000, ge=1)        # steps between points of the quality curve


@dataclass(frozen=True)
class FoundationReport:
    n_per_shape: int = _p(32, ge=1)          # decoded images per shape and prompt kind
    num_inference_steps: int = _p(15, ge=1)
    guidance_scale: float = _p(5.0, ge=0)
    batch_size: int = _p(64, ge=1)


@dataclass(frozen=True)
class FoundationParams:
    seed: int = _p(0, ge=0)
    corpus: FoundationCorpus = _section(FoundationCorpus)
    clip: ClipTrain = _section(ClipTrain)
    decoder: FoundationDecoder = _section(FoundationDecoder)
    report: FoundationReport = _section(FoundationReport)


# ---------------------------------------------------------------- validation

def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(key: str, value, expected: str) -> ParamsError:
    return ParamsError(f"{key} = {_short(value)}: expected {expected}")


@cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _describe(tp) -> str:
    """Say in words what a type accepts, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Union:
        null = " or null" if type(None) in args else ""
        return " or ".join(_describe(a) for a in args if a is not type(None)) + null
    if origin is Literal:
        return "one of " + " | ".join(args)
    if origin is list:
        return f"a list of ({_describe(args[0])})"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


def _bounds(meta) -> str:
    lo = f"[{meta['ge']}" if "ge" in meta else f"({meta['gt']}" if "gt" in meta else None
    hi = f"{meta['le']}]" if "le" in meta else f"{meta['lt']})" if "lt" in meta else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + lo[1:]
    return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]


def _check_range(value, key: str, meta, kind: str) -> None:
    # Written as "not (inside)" so that NaN, which compares false to everything, fails.
    inside = (("ge" not in meta or value >= meta["ge"]) and ("gt" not in meta or value > meta["gt"])
              and ("le" not in meta or value <= meta["le"]) and ("lt" not in meta or value < meta["lt"]))
    if not inside:
        raise _fail(key, value, f"{kind} {_bounds(meta)}")


def _convert(tp, value, key: str, meta):
    """Check ``value`` against type ``tp`` and the field metadata; return it in schema form."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Union:  # Optional[X], or a choice of forms such as int | list[int]
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return _convert(members[0], value, key, meta)
        for inner in members:
            try:
                return _convert(inner, value, key, meta)
            except ParamsError:
                continue
        raise _fail(key, value, _describe(tp))
    if origin is Literal:
        if not (isinstance(value, str) and value in args):
            raise _fail(key, value, _describe(tp))
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):  # a bare string is not a one-element list
            raise _fail(key, value, _describe(tp))
        item_meta = {k: v for k, v in meta.items() if k in ("ge", "gt", "le", "lt")}
        items = [_convert(args[0], item, f"{key}[{i}]", item_meta) for i, item in enumerate(value)]
        if len(items) < meta.get("min_len", 0):
            raise _fail(key, value, f"a list of at least {meta['min_len']} entries")
        if meta.get("unique"):
            repeated = sorted({repr(x) for x in items if items.count(x) > 1})
            if repeated:
                raise _fail(key, value, f"entries without repeats (repeated: {', '.join(repeated)})")
        return items
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(key, value, "true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _fail(key, value, "a string")
        if len(value) < meta.get("min_len", 0):
            raise _fail(key, value, "a non-empty string")
        return value
    if tp in (int, float):
        # bool is an int subclass in Python, but `epochs: true` is a mistake, not 1.
        ok = (int,) if tp is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok):
            hint = ""
            if isinstance(value, str) and tp is float:
                hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
            raise _fail(key, value, _describe(tp) + hint)
        _check_range(value, key, meta, "a number" if tp is float else "an integer")
        return tp(value)
    raise TypeError(f"params schema: no validator for type {tp!r} of {key}")


@cache
def _known_keys() -> tuple[str, ...]:
    """Every dotted key and section name of the schema, for 'did you mean' hints."""
    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            yield prefix + f.name
            tp = _hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                yield from walk(tp, prefix + f.name + ".")
    return tuple(walk(Params, ""))


def _build(cls, raw, prefix: str):
    """Build dataclass ``cls`` from mapping ``raw``; missing keys keep their defaults."""
    where = prefix or "params"
    if not isinstance(raw, dict):
        raise _fail(where, raw, f"a mapping of {prefix + '.' if prefix else ''}* keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dot = prefix + "." if prefix else ""
    for name in raw:
        if name not in fields:
            key = f"{dot}{name}"
            close = difflib.get_close_matches(key, _known_keys(), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"known keys here: {', '.join(fields)}"
            raise ParamsError(f"{key} = {_short(raw[name])}: unknown key; {hint}")
    hints = _hints(cls)
    values = {name: _convert(hints[name], raw[name], dot + name, fields[name].metadata)
              for name in fields if name in raw}
    return cls(**values)


def _check_cross_fields(p: Params) -> None:
    """The rules that relate two keys, which the per-field metadata cannot express."""
    w = p.world
    if w.min_size > w.max_size:
        raise _fail("world.min_size", w.min_size, f"<= world.max_size ({w.max_size})")
    # each split's shares of the planted value and of the confuser's value must leave a distribution
    if w.train_rate + w.confuser_rate > 1:
        raise _fail("world.confuser_rate", w.confuser_rate,
                    f"<= 1 - world.train_rate ({1 - w.train_rate:g}): both are shares of one class's train images")
    if w.eval_confuser_rate is not None and w.eval_rate + w.eval_confuser_rate > 1:
        raise _fail("world.eval_confuser_rate", w.eval_confuser_rate,
                    f"null or <= 1 - world.eval_rate ({1 - w.eval_rate:g}): both are shares of one class's "
                    f"val / test / pool images")
    if w.planted_values is not None:
        if len(w.planted_values) != len(w.classes):
            raise _fail("world.planted_values", w.planted_values,
                        f"null or one value per entry of world.classes ({len(w.classes)}), "
                        f"got {len(w.planted_values)}")
        vocab_key = "world.contexts" if w.planted_attribute == "context" else "world.colours"
        vocab = w.contexts if w.planted_attribute == "context" else w.colours
        for i, value in enumerate(w.planted_values):
            if value not in vocab:
                raise _fail(f"world.planted_values[{i}]", value,
                            f"one of {vocab_key} ({' | '.join(vocab)}) since world.planted_attribute "
                            f"is {w.planted_attribute}")
    _check_foundation_models(p)
    _check_engine(p.compute)
    if p.generate.n_captions > p.caption.top_k:
        raise _fail("generate.n_captions", p.generate.n_captions,
                    f"<= caption.top_k ({p.caption.top_k}): only that many hard captions are kept")
    if p.generate.caption_weight < 1 and p.decoder.source == "unclip":
        raise _fail("generate.caption_weight", p.generate.caption_weight,
                    "1 with decoder.source unclip: its caption images come from the words (text-to-image), "
                    "which cannot be blended with an image embedding")
    template = p.caption.template
    allowed = ", ".join("{" + s + "}" for s in CAPTION_SLOTS)
    try:
        slots = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:  # unbalanced braces
        raise _fail("caption.template", template, f"a valid format string ({err}) using {allowed}") from None
    if "noun" not in slots or not slots <= set(CAPTION_SLOTS):
        raise _fail("caption.template", template,
                    f"a string containing {{noun}} and no placeholders other than {allowed}")


RAY_MODULES = ("ray", "pyarrow", "pandas")  # what `ray.data` needs: the optional extra installs all three


def _check_engine(c: Compute) -> None:
    """engine ray needs the optional extra; checked by module lookup only (importing
    Ray takes seconds, and every stage validates the whole file)."""
    if c.engine != "ray":
        return
    import importlib.util
    missing = []
    for name in RAY_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, or without a spec
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise _fail("compute.engine", c.engine, f"local, or Ray installed for engine ray: {', '.join(missing)} "
                    f"cannot be imported; install the optional extra with: pip install -e '.[ray]'")


def _check_foundation_models(p: Params) -> None:
    """source 'world' loads the shipped foundation models (models/pretrained/): they
    know only the embedded world, and only what their corpus covered."""
    shipped = [key for key, source in (("clip.source", p.clip.source), ("decoder.source", p.decoder.source))
               if source == "world"]
    if not shipped:
        return
    if p.data.source != "world":
        raise _fail(shipped[0], "world", f"'corpus' (train on the data's captioned corpus: data.captions_file) or "
                    f"a pretrained model ({'open_clip' if shipped[0] == 'clip.source' else 'unclip'}) with "
                    f"data.source {p.data.source}: the shipped world models know only the embedded world")
    if p.decoder.source == "world" and p.clip.source != "world":
        raise _fail("decoder.source", "world", f"'corpus' or 'unclip' with clip.source {p.clip.source}: the "
                    f"shipped world decoder draws from the shipped world CLIP's embeddings (clip.source: world)")
    from failmap.io import read_json
    from failmap.shipped import CARD, CLIP_NAME, shipped_dir, uncovered
    card_path = shipped_dir(CLIP_NAME) / CARD
    if not card_path.is_file():
        raise _fail(shipped[0], "world", f"a shipped foundation model, but {card_path} is missing "
                    f"(restore models/pretrained/ with git, or rebuild it: cd foundation && dvc repro)")
    w = p.world
    missing = uncovered(read_json(card_path), classes=w.classes, colours=w.colours, contexts=w.contexts,
                        min_size=w.min_size, max_size=w.max_size, noise=w.noise, image_size=p.data.image_size)
    if missing:
        raise ParamsError(f"{shipped[0]} = world: the shipped foundation models were trained on a corpus that "
                          f"does not cover " + "; ".join(missing) +
                          ". Use values the corpus has, or set clip.source / decoder.source to corpus to train "
                          "them on this world's own corpus split")


def params_from_dict(raw, schema=None):
    """Validate a nested mapping (as read from params.yaml) and return the typed Params
    (or the typed ``schema``, e.g. ``FoundationParams`` for foundation/params.yaml)."""
    params = _build(schema or Params, raw, "")
    if schema is None:
        _check_cross_fields(params)
    return params


def load_params(path: str | Path = "params.yaml", schema=None):
    """Read and validate a params file; raise ParamsError naming the file and the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"params file {path} not found") from None
    except OSError as err:
        raise ParamsError(f"params file {path} cannot be read: {err}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"params file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"params file {path}: top level = {_short(raw)}: expected a mapping of "
                          f"sections ({', '.join(f.name for f in dataclasses.fields(schema or Params))})")
    try:
        return params_from_dict(raw, schema)
    except ParamsError as err:
        raise ParamsError(f"params file {path}: {err}") from None


def as_dict(params) -> dict:
    """Nested plain dict (lists stay lists), the shape of params.yaml."""
    return dataclasses.asdict(params)


def flatten(params) -> dict[str, object]:
    """Dotted key -> value for every leaf (lists kept as lists), e.g. to log to MLflow."""
    out: dict[str, object] = {}

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, prefix + f.name + ".")
            else:
                out[prefix + f.name] = list(value) if isinstance(value, list) else value

    walk(params, "")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: python -m failmap.params [params.yaml]", file=sys.stderr)
        return 2
    try:
        load_params(args[0] if args else "params.yaml")
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
