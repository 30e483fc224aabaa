"""The declarative schema of params.yaml, and the one validator every stage reads it through.

A typo in a key, a rate of 1.5 or `lr: 1e-3` (a *string* to YAML) stops a run before any work, naming the
dotted key. The pydantic models (strict, frozen, no unknown keys) carry types, bounds and cross-field rules
but **no defaults**: params.yaml holds every default. `data` is discriminated by `data.source` (each source
has exactly its keys); `world` is null unless data.source is world (null, not absent: DVC refuses to run a
stage whose listed params are missing). Override files (tests/tiny_params.yaml, configs/) give only what
they change, laid over params.yaml by `overlay` (README "Params and configs"):

    python -m failmap.params [params.yaml]        # prints "ok" or the error (exit 2)
    python -m failmap.params apply configs/pretrained.yaml configs/cifar10.yaml   # rewrites params.yaml
"""
from __future__ import annotations

import difflib
import re
import string
import sys
import typing
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

class ParamsError(ValueError):
    """params.yaml does not match the schema; the message names the dotted key."""

# ---------------------------------------------------------------- field types
def _num(kind, *, ge=None, gt=None, le=None, lt=None):
    """``kind`` (int or float) within the bounds given; the error says them, e.g. 'a number in [0, 1]'."""
    lo = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else ""
    hi = f"{le}]" if le is not None else f"{lt})" if lt is not None else ""
    text = ("an integer " if kind is int else "a number ") + (f"in {lo}, {hi}" if lo and hi else (
        f"{'>=' if lo[:1] == '[' else '>'} {lo[1:]}" if lo else f"{'<=' if hi[-1:] == ']' else '<'} {hi[:-1]}"))
    def check(value):  # "not (inside)", so that NaN, which compares false to everything, fails
        if not ((ge is None or value >= ge) and (gt is None or value > gt)
                and (le is None or value <= le) and (lt is None or value < lt)):
            raise PydanticCustomError("out_of_range", text)
        return value
    return Annotated[kind, AfterValidator(check)]

def _list(item, *, min_len: int = 1, unique: bool = False):
    """A list of ``item`` with at least ``min_len`` entries (and no repeats when ``unique``)."""
    def check(value):
        if len(value) < min_len:
            raise PydanticCustomError("too_short", f"a list of at least {min_len} entries")
        repeated = sorted({repr(x) for x in value if value.count(x) > 1})
        if unique and repeated:
            raise PydanticCustomError("repeats", "entries without repeats (repeated: {r})", {"r": ", ".join(repeated)})
        return value
    return Annotated[list[item], AfterValidator(check)]

Text = Annotated[str, Field(min_length=1)]
Count, Size, Share, Positive = _num(int, ge=0), _num(int, ge=1), _num(float, ge=0, le=1), _num(float, gt=0)
Fraction, Momentum, NonNegative = _num(float, gt=0, le=1), _num(float, ge=0, lt=1), _num(float, ge=0)
Device = Literal["auto", "cpu", "cuda"]
MixedPrecision = Union[bool, Literal["auto"]]  # auto: bfloat16 where it is fast (device.bf16_is_fast)
Arm = Literal["none", "generic", "caption", "direction", "pool_svm", "pool_random", "pool_confidence"]
CAPTION_SLOTS = ("adjective", "noun", "context")  # the placeholders caption.template may use
CaptionSource = Literal["template", "subtypes", "wordnet", "file", "corpus"]  # failmap.caption_sources.SOURCES
RAY_MODULES = ("ray", "pyarrow", "pandas")  # what `ray.data` needs: the optional extra installs all three

class Section(BaseModel):
    """Every section: no unknown keys, no coercion (`epochs: true` is a mistake, not 1), read-only."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

def _refuse(key: str, value, expected: str) -> PydanticCustomError:  # a rule's error; key relative to its model
    return PydanticCustomError("refused", "{expected}", {"key": key, "value": value, "expected": expected})

# ------------------------------------------- params.yaml (fields in its order; its comments say what each does)
class WorldData(Section):
    source: Literal["world"]
    image_size: Size
class CifarData(Section):
    source: Literal["cifar10"]
    root: Text
    download: bool
    n_val: Size
    n_pool: Count
class Cifar100Data(CifarData):
    source: Literal["cifar100_superclass"]
    minority_keep: Share
class ImageFolderData(Section):
    source: Literal["imagefolder"]
    root: Text
    image_size: Size
    captions_file: Optional[Text]
Data = Annotated[Union[WorldData, CifarData, Cifar100Data, ImageFolderData], Field(discriminator="source")]

class World(Section):
    classes: _list(Text, min_len=2, unique=True)
    colours: _list(Text, unique=True)
    contexts: _list(Text, unique=True)
    n_train: Size
    n_val: Size
    n_test: Size
    n_pool: Count
    n_corpus: Size
    planted_attribute: Literal["context", "colour"]
    planted_values: Optional[_list(Text)]
    train_rate: Share
    eval_rate: Share
    confuser_rate: Share
    eval_confuser_rate: Optional[Share]
    noise: Share
    min_size: Fraction
    max_size: Fraction
    min_contrast: _num(float, ge=0, le=2)
    min_planted_distance: _num(float, ge=0, le=2)
    # superclass world (null: off): world.classes name groups of shapes, one member of each rare in train
    superclasses: Optional[_list(_list(Text))]
    rare_members: Optional[_list(Text)]
    @model_validator(mode="after")
    def _shares_and_planted_values(self):
        if self.min_size > self.max_size:
            raise _refuse("min_size", self.min_size, f"<= world.max_size ({self.max_size})")
        # each split's shares of the planted value and of the confuser's value must leave a distribution
        # (a superclass world has no confuser: its rare member is the failure, the planted attribute uniform)
        if self.superclasses is None and self.train_rate + self.confuser_rate > 1:
            raise _refuse("confuser_rate", self.confuser_rate, f"<= 1 - world.train_rate ({1 - self.train_rate:g}): "
                          f"both are shares of one class's train images")
        if (self.superclasses is None and self.eval_confuser_rate is not None
                and self.eval_rate + self.eval_confuser_rate > 1):
            raise _refuse("eval_confuser_rate", self.eval_confuser_rate, f"null or <= 1 - world.eval_rate "
                          f"({1 - self.eval_rate:g}): both are shares of one class's val / test / pool images")
        planted, attribute = self.planted_values, self.planted_attribute
        if planted is not None and len(planted) != len(self.classes):
            raise _refuse("planted_values", planted, f"null or one value per entry of world.classes "
                          f"({len(self.classes)}), got {len(planted)}")
        key = "contexts" if attribute == "context" else "colours"
        for i, value in enumerate(planted or []):
            if value not in getattr(self, key):
                raise _refuse(f"planted_values[{i}]", value, f"one of world.{key} ({' | '.join(getattr(self, key))}) "
                              f"since world.planted_attribute is {attribute}")
        return self._superclass_groups()

    def _superclass_groups(self):
        """superclasses and rare_members: the rules of failmap.world.check_superclasses."""
        if self.superclasses is not None and self.planted_values is not None:
            raise _refuse("planted_values", self.planted_values, "null with world.superclasses: the planted "
                          "subpopulation is each group's rare member (world.rare_members)")
        if self.superclasses is None and self.rare_members is not None:
            raise _refuse("rare_members", self.rare_members, "null unless world.superclasses is set")
        if self.superclasses is not None:
            from failmap.world import WorldSettingError, check_superclasses  # numpy + PIL: only when asked
            try:
                check_superclasses(self.classes, self.superclasses, self.rare_members)
            except WorldSettingError as err:
                raise _refuse(err.key.removeprefix("world."), err.value, err.expected) from None
        return self

class Baseline(Section):
    arch: Literal["small_cnn", "resnet18"]
    width: Size
    epochs: Size
    batch_size: Size
    lr: Positive
    momentum: Momentum
    weight_decay: NonNegative
    augment: bool
    mixed_precision: MixedPrecision
    device: Device
class ClipTrain(Section):
    embed_dim: Size
    width: Size
    layers: Union[Size, _list(Size)]
    patch_size: Size
    text_width: Size
    text_layers: Size
    context_length: Size
    steps: Size
    lr: Positive
    warmup: Count
    batch_size: _num(int, ge=2)  # a contrastive loss needs at least one negative
class Clip(Section):
    source: Literal["world", "corpus", "open_clip"]
    arch: Text
    pretrained: Text
    batch_size: Size
    device: Device
    train: ClipTrain
class DecoderTrain(Section):
    channels: _list(Size)
    patch_size: Size
    attention_levels: Count
    scale_shift: bool
    steps: Size
    batch_size: Size
    lr: Positive
    warmup: Count
    ema_decay: Momentum
    cond_dropout: Momentum
    text_cond_prob: Share
    cond_scale: Positive
    prediction_type: Literal["epsilon", "v_prediction"]
    snr_gamma: Optional[Positive]
    train_timesteps: _num(int, ge=2)
    mixed_precision: MixedPrecision
class Decoder(Section):
    source: Literal["world", "corpus", "unclip"]
    model: Text
    text_model: Text
    sampler: Optional[Literal["ddim", "dpm_solver"]]  # null: the model's own scheduler (decoders.samplers)
    num_inference_steps: Size
    guidance_scale: NonNegative
    text_sampler: Optional[Literal["ddim", "dpm_solver"]]  # text conditions; null: sampler (bridge.sampling_for)
    text_num_inference_steps: Optional[Size]    # null: num_inference_steps
    text_guidance_scale: Optional[NonNegative]  # null: guidance_scale
    batch_size: Size
    mixed_precision: MixedPrecision
    device: Device
    train: DecoderTrain
class Svm(Section):
    c_grid: _list(Positive, unique=True)
    folds: _num(int, ge=2)
    max_iter: Size
    min_errors: Size

class Modes(Section):
    max_modes: Size
    min_mode_errors: Size
    min_silhouette: _num(float, ge=-1, le=1)
    cluster: Literal["errors", "images"]
    max_clusters: _num(int, ge=2)
    min_top_share: _num(float, ge=0, le=1)
    drive: Literal["svm", "modes", "top_mode"]
    @model_validator(mode="after")
    def _clusters_cover_modes(self):
        if self.max_clusters < self.max_modes:  # cluster images tries k = max_modes .. max_clusters
            raise _refuse("max_clusters", self.max_clusters, f">= modes.max_modes ({self.max_modes}): "
                          f"cluster images tries k = max_modes .. max_clusters clusters")
        return self
class Caption(Section):
    template: Text
    adjectives: Optional[_list(Text, unique=True)]
    contexts: Optional[_list(Text, unique=True)]
    top_k: Size
    sources: _list(CaptionSource, unique=True)
    subtypes: Optional[dict[Text, _list(Text)]]
    file: Optional[Text]
    diversity: Momentum
    score: Literal["direction", "retrieval"]  # failmap.captions: CAPTION_SCORES
    @model_validator(mode="after")
    def _template_slots(self):
        allowed = ", ".join("{" + s + "}" for s in CAPTION_SLOTS)
        try:
            slots = {name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None}
        except ValueError as err:  # unbalanced braces
            raise _refuse("template", self.template, f"a valid format string ({err}) using {allowed}") from None
        if "noun" not in slots or not slots <= set(CAPTION_SLOTS):
            raise _refuse("template", self.template,
                          f"a string containing {{noun}} and no placeholders other than {allowed}")
        return self

    @model_validator(mode="after")
    def _source_settings(self):
        """caption.file goes with the file source, caption.subtypes with the subtypes source."""
        if ("file" in self.sources) != (self.file is not None):
            raise _refuse("file", self.file, "a path when caption.sources lists file, else null"
                          if self.file is None else "null, since caption.sources does not list file")
        if self.subtypes and "subtypes" not in self.sources:
            raise _refuse("subtypes", self.subtypes, "null, since caption.sources does not list subtypes")
        return self

class Generate(Section):
    n_per_class: Size
    walk: Literal["extent", "normal", "images"]
    alpha: Fraction
    n_captions: Size
    caption_weight: Fraction
    eval_alphas: _list(Fraction, unique=True)
    n_eval_per_class: Size
    min_class_recognition: Share
    filter: bool
class Finetune(Section):
    arms: _list(Arm, unique=True)
    seeds: _list(Count, unique=True)
    pool_k: Size
    last_layer_only: bool
    epochs: Size
    batch_size: Size
    lr: Positive
    momentum: Momentum
    weight_decay: NonNegative
class Evaluate(Section):
    k: Size
class Tracking(Section):
    experiment: Text
    uri: Text

class Compute(Section):
    """Where the embed and generate stages run their batches (failmap.engine)."""
    engine: Literal["local", "ray"]
    workers: Size
    gpus_per_worker: NonNegative
    address: Optional[Text]  # null: start a local Ray with num_cpus = workers

def _importable(name: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or without a spec
        return False

class Params(Section):
    seed: Count  # numpy and torch both refuse negative seeds
    data: Data
    world: Optional[World]  # a mapping iff data.source is world, else null
    baseline: Baseline
    clip: Clip
    decoder: Decoder
    svm: Svm
    modes: Modes
    caption: Caption
    generate: Generate
    finetune: Finetune
    evaluate: Evaluate
    tracking: Tracking
    compute: Compute

    @property
    def corpus_readers(self) -> list[str]:
        """The settings by which a stage reads the data's captioned corpus split: pretrain_clip or
        pretrain_decoder training on it (clip.source / decoder.source corpus), the caption bank drawing on it
        (caption.sources)."""
        return [key for key, reads in (("clip.source", self.clip.source == "corpus"),
                                       ("decoder.source", self.decoder.source == "corpus"),
                                       ("caption.sources", "corpus" in self.caption.sources)) if reads]

    @property
    def uses_corpus(self) -> bool:
        """Whether a stage reads the data's captioned corpus split (``corpus_readers``)."""
        return bool(self.corpus_readers)

    @model_validator(mode="after")
    def _cross_sections(self):
        source = self.data.source
        if (source == "world") != (self.world is not None):
            raise _refuse("world", self.world and as_dict(self.world),
                          "the world's settings (a mapping) with data.source world" if source == "world" else
                          f"null with data.source {source}: the procedural world's settings apply to world only")
        if self.generate.n_captions > self.caption.top_k:
            raise _refuse("generate.n_captions", self.generate.n_captions,
                          f"<= caption.top_k ({self.caption.top_k}): only that many hard captions are kept")
        if self.generate.caption_weight < 1 and self.decoder.source == "unclip":
            raise _refuse("generate.caption_weight", self.generate.caption_weight,
                          "1 with decoder.source unclip: its caption images come from the words (text-to-image), "
                          "which cannot be blended with an image embedding")
        # engine ray needs the optional extra: looked up, not imported (Ray takes seconds to import)
        missing = [name for name in RAY_MODULES if self.compute.engine == "ray" and not _importable(name)]
        if missing:
            raise _refuse("compute.engine", "ray", f"local, or Ray installed for engine ray: {', '.join(missing)} "
                          f"cannot be imported; install the optional extra with: pip install -e '.[ray]'")
        _check_corpus(self)
        _check_foundation_models(self)
        return self

def _check_corpus(p: Params) -> None:
    """A stage that reads the captioned corpus split needs a data source that has one: the world draws it,
    an image folder has it with data.captions_file, CIFAR has none. Refused here, not by the stage after
    prepare has run."""
    readers = p.corpus_readers
    if not readers or p.data.source == "world" or getattr(p.data, "captions_file", None) is not None:
        return
    key = readers[0]
    value = list(p.caption.sources) if key == "caption.sources" else "corpus"
    alternative = {"clip.source": "open_clip", "decoder.source": "unclip",
                   "caption.sources": "sources without corpus"}[key]
    raise _refuse(key, value, f"{alternative}, or data.captions_file set (a CSV id,caption[,subpop][,subtype], README "
                  f"\"Data sources\"): the corpus is the folder's captioned images" if p.data.source == "imagefolder"
                  else f"{alternative}: data.source {p.data.source} has no captioned corpus to read")

def _check_foundation_models(p: Params) -> None:
    """source 'world' loads the shipped models (models/pretrained/): they know only the world their corpus drew."""
    shipped = [key for key, source in (("clip.source", p.clip.source), ("decoder.source", p.decoder.source))
               if source == "world"]
    if shipped and p.data.source != "world":
        raise _refuse(shipped[0], "world", f"'corpus' (train on the data's captioned corpus: data.captions_file) "
                      f"or a pretrained model ({'open_clip' if shipped[0] == 'clip.source' else 'unclip'}) with "
                      f"data.source {p.data.source}: the shipped world models know only the embedded world")
    if not shipped:
        return
    if p.decoder.source == "world" and p.clip.source != "world":
        raise _refuse("decoder.source", "world", f"'corpus' or 'unclip' with clip.source {p.clip.source}: the "
                      f"shipped world decoder draws from the shipped world CLIP's embeddings (clip.source: world)")
    from failmap.io import read_json
    from failmap.shipped import CARD, CLIP_NAME, shipped_dir, uncovered
    card_path = shipped_dir(CLIP_NAME) / CARD
    if not card_path.is_file():
        raise _refuse(shipped[0], "world", f"a shipped foundation model, but {card_path} is missing "
                      f"(restore models/pretrained/ with git, or rebuild it: cd foundation && dvc repro)")
    w = p.world
    shapes = [m for group in w.superclasses for m in group] if w.superclasses else w.classes
    missing = uncovered(read_json(card_path), classes=shapes, colours=w.colours, contexts=w.contexts,
                        min_size=w.min_size, max_size=w.max_size, noise=w.noise, image_size=p.data.image_size)
    if missing:
        raise _refuse(shipped[0], "world", "values the shipped models' foundation corpus covers; it does not cover "
                      + "; ".join(missing) + ". Use values it has, or set clip.source / decoder.source to corpus "
                      "to train them on this world's own corpus split")

# ------------------------------------------------------- foundation/params.yaml
class FoundationCorpus(Section):
    n_train: _num(int, ge=2)
    n_heldout: Size  # held-out images, scored only
    min_size: Fraction
    max_size: Fraction
    max_noise: NonNegative
class FoundationDecoder(DecoderTrain):
    decay_steps: Optional[Size]  # null: steps. The cosine's length; a finished run extends at the floor
    checkpoint_every: Size
    eval_every: Size  # steps between resumable checkpoints / points of the quality curve
class FoundationReport(Section):
    n_per_shape: Size
    num_inference_steps: Size  # the quality curve's sampling; the report's is chosen from the grids below
    guidance_scale: NonNegative
    guidance_grid: Annotated[list[NonNegative], Field(min_length=1)]
    steps_grid: Annotated[list[Size], Field(min_length=1)]
    batch_size: Size
class FoundationParams(Section):
    seed: Count
    corpus: FoundationCorpus
    clip: ClipTrain
    decoder: FoundationDecoder
    report: FoundationReport

# ---------------------------------------------------------- pydantic -> ParamsError
def _short(value) -> str:
    return repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."

def _models(annotation) -> list[type[BaseModel]]:
    """The models a field holds: itself, the members of a union, what an Optional or list wraps."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]

def _fields(models) -> dict:  # the fields of every model given (the variants of the data union: all of theirs)
    return {name: info for m in models for name, info in m.model_fields.items()}

def _dotted_keys(schema) -> list[str]:
    """Every dotted key and section name of the schema (all data sources), for 'did you mean' hints."""
    def walk(models, prefix):
        for name, info in _fields(models).items():
            yield prefix + name
            yield from walk(_models(info.annotation), prefix + name + ".")
    return list(dict.fromkeys(walk([schema], "")))

def _tags(model) -> tuple:  # the data.source value a variant of the data union stands for
    return typing.get_args(model.model_fields["source"].annotation) if "source" in model.model_fields else ()

def _locate(loc, schema) -> tuple[str, list[str], str | None]:
    """pydantic's error location -> (dotted key, the keys valid beside its last part, the data.source chosen)."""
    key, models, here, tag, mapping = "", [schema], [], None, False
    for part in loc:
        if mapping:  # a key of a dict-valued field (caption.subtypes.circle)
            key, mapping = f"{key}.{part}", False
        elif isinstance(part, int):
            key += f"[{part}]"
        elif len(models) > 1 and any(part in _tags(m) for m in models):
            models, tag = [m for m in models if part in _tags(m)], part  # the variant data.source chose
        elif models:  # a key: a field, or the unknown one an extra_forbidden error names
            fields = _fields(models)
            key, here = key + ("." if key else "") + part, list(fields)
            models = _models(fields[part].annotation) if part in fields else []
            mapping = part in fields and "dict[" in str(fields[part].annotation)
        # else: the name of a union member (int, list[int], ...), not part of the key
    return key, here, tag

_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false", "list_type": "a list",
             "string_type": "a string", "string_too_short": "a non-empty string", "model_type": "a mapping",
             "model_attributes_type": "a mapping"}  # the data union's word for it
_RANK = {"extra_forbidden": 0, "missing": 2}  # a typo'd key also leaves the right one missing: name the typo first

def _explain(err: ValidationError, schema) -> str:
    """The first of pydantic's errors as `dotted.key = value: expected ...`."""
    errors = sorted(err.errors(), key=lambda e: (_RANK.get(e["type"], 1), -len(e["loc"])))
    kind, value, ctx = errors[0]["type"], errors[0].get("input"), errors[0].get("ctx") or {}
    key, here, tag = _locate(errors[0]["loc"], schema)
    if kind == "refused":
        return f"{key + '.' if key else ''}{ctx['key']} = {_short(ctx['value'])}: expected {ctx['expected']}"
    if kind == "extra_forbidden":
        known = _dotted_keys(schema)
        close = [] if key in known else difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"known keys here: {', '.join(here)}"
        if key in known and tag:  # another source's key: an override merged into data instead of replacing it
            hint = f"not a key of source {tag} ({', '.join(here)}); '~data:' in an override file replaces the section"
        return f"{key} = {_short(value)}: unknown key; {hint}"
    if kind == "missing":
        return f"{key}: missing; every key must be given (the params file holds every default; overrides are laid " \
               f"over it with failmap.params.overlay)"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = " | ".join(re.findall(r"'([^']*)'", ctx.get("expected_tags", "")))
        return f"{key}.source = {_short(ctx.get('tag'))}: expected one of {tags or 'the known sources'}"
    expected = []  # a union reports one error per member at the same key: say them all
    for e in errors:
        if _locate(e["loc"], schema)[0] == key and _RANK.get(e["type"], 1) == 1:
            text = ("one of " + " | ".join(re.findall(r"'([^']*)'", e["ctx"]["expected"]))
                    if e["type"] == "literal_error" else _EXPECTED.get(e["type"], e["msg"]))
            hint = e["type"] == "float_type" and isinstance(e.get("input"), str)
            expected.append(text + (" (YAML reads 1e-3 as a string: write 1.0e-3)" if hint else ""))
    return f"{key} = {_short(value)}: expected {' or '.join(dict.fromkeys(expected))}"

# ---------------------------------------------------------------- the public API
def overlay(base: dict, over: dict) -> dict:
    """``over`` laid over ``base``, the one way an override file applies (neither is modified): a mapping
    merges into a mapping key by key, recursively; any other value (a list, a number, null) replaces; a key
    ``~name`` first removes ``name``, as ``dvc exp run -S '~name'`` does (``~data:`` then ``data: {...}``
    replaces the section instead of merging). Unknown keys are left for the schema to refuse."""
    out = {k: v for k, v in base.items() if f"~{k}" not in over or k in over}  # one given anew keeps its place
    for key, value in over.items():
        if key.startswith("~") and value is not None:
            raise ParamsError(f"{key} = {_short(value)}: expected nothing (a removal: write '{key}:' alone)")
        elif not key.startswith("~"):
            merge = isinstance(value, dict) and isinstance(out.get(key), dict) and f"~{key}" not in over
            out[key] = overlay(out[key], value) if merge else value
    return out

def params_from_dict(raw, schema=None):
    """Validate a complete mapping as read from params.yaml: typed Params (or ``schema``, e.g. FoundationParams)."""
    schema = schema or Params
    if not isinstance(raw, dict):
        sections = ", ".join(schema.model_fields)
        raise ParamsError(f"top level = {_short(raw)}: expected a mapping of sections ({sections})")
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_explain(err, schema)) from None

def _read(path: Path):
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        why = ("not found" if isinstance(err, FileNotFoundError) else f"is not valid YAML: {err}"
               if isinstance(err, yaml.YAMLError) else f"cannot be read: {err}")
        raise ParamsError(f"params file {path} {why}") from None

def effective(path: str | Path = "params.yaml", over=()) -> dict:
    """The raw mapping of ``path`` with each override file of ``over`` laid over it in turn."""
    raw = _read(path)
    for extra in over:
        layer = _read(extra)
        if not isinstance(layer, dict):
            raise ParamsError(f"params file {extra}: top level = {_short(layer)}: expected a mapping of sections")
        raw = overlay(raw, layer) if isinstance(raw, dict) else raw  # a base that is no mapping: refused below
    return raw

def load_params(path: str | Path = "params.yaml", schema=None, *, over=()):
    """Read and validate a params file, with the override files ``over`` laid over it;
    raise ParamsError naming the file(s) and the key."""
    try:
        return params_from_dict(effective(path, over), schema)
    except ParamsError as err:
        raise ParamsError(f"params file {' + '.join(map(str, [path, *over]))}: {err}") from None

def as_dict(params) -> dict:
    """Nested plain dict (lists stay lists) of the params or one section, the shape of params.yaml."""
    return params.model_dump()

def apply(configs, target: str | Path = "params.yaml") -> None:
    """Lay ``configs`` over ``target`` in order, validate, and rewrite ``target`` (its comments are lost)."""
    load_params(target, over=configs)
    header = f"# {target} + {' + '.join(map(str, configs))} (failmap.params apply); commented: git checkout {target}\n"
    Path(target).write_text(header + yaml.safe_dump(effective(target, configs), sort_keys=False))

def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    applying = args[:1] == ["apply"]
    try:
        if (applying and len(args) < 2) or (not applying and len(args) > 1):
            raise ParamsError("usage: python -m failmap.params [params.yaml] | apply CONFIG.yaml...")
        apply(args[1:]) if applying else load_params(args[0] if args else "params.yaml")
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("ok")
    return 0

if __name__ == "__main__":
    sys.exit(main())
