"""Typed configuration: dataclass sections, named presets, overrides that fail loudly.

    cfg = config.resolve("paper", files=["my.toml"], sets=["optim.lr=0.02"],
                         flags={"--epochs": ("train.epochs", "30")})
    print(config.dump(cfg))          # YAML; saved as config.yaml in every run folder

Precedence, lowest first: the preset's values, then each `--config` file in order (TOML, YAML or
JSON, nested as `[section] key = value`; a top-level `preset = "name"` picks the base preset when
the command line names none), then each `--set section.key=value`, then explicit flags
(`--epochs 30`). Unknown sections or keys, values of the wrong type and values outside a key's
choices raise a ConfigError that names the key. Every knob has a default and its unit in a
comment. The defaults are the paper's recipe (§5); the presets are:

- paper: §5 exactly: alexnet2012, SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.01 divided
  by 10 when validation error plateaus (at most 3 times), 90 epochs, §4.1 augmentation.
- torchvision: torchvision's reference recipe for its AlexNet (references/classification: lr 0.01
  at batch 256, weight decay 1e-4, lr x0.1 every 30 epochs, 90 epochs, RandomResizedCrop and flips,
  per-channel mean/std), on alexnet_owt with PyTorch's default init.
- fast: our modern recipe (bf16, channels_last, batch norm, large batch with warm-up and linear
  decay, label smoothing). Provisional: tuned and evidenced by the training issue.
- quick: the built-in data set (what `alexnet train` runs with no --data and no --preset): the
  fast recipe on 64 px crops with a half-width network, a few minutes on a 2-core CPU.
- finetune: from torchvision's ImageNet weights, a few hundred images per class.
- tiny: seconds-long runs for the tests and smoke checks: quick on a quarter-width network with
  64-unit FC layers, batch 16, one epoch. It proves the path runs, not that the network learns.

Each preset's docstring states its command, the hardware, time and accuracy measured with it. A
time budget instead of a preset: `alexnet train --minutes M` (alexnet.budget), whose choices override
a preset's defaults but never a value the command line gives (--set, --config, flags, an explicit
--preset's own keys).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError
from .data.textfile import bad_byte, not_utf8, text_lines


class ConfigError(UserError):
    """A configuration value or key is wrong; the message names the key."""


@dataclass
class ModelConfig:
    name: Literal["alexnet2012", "alexnet_owt"] = "alexnet2012"  # see alexnet.model.VARIANTS
    num_classes: int | None = None  # None: the number of classes of the data set
    norm: Literal["lrn", "batchnorm", "none"] | None = None  # None: the variant's own
    dropout: float = 0.5  # §4.2, on fc6/fc7
    init: Literal["paper", "kaiming", "he"] = "paper"  # §5 N(0, 0.01); see model.build
    init_bias: float = 1.0  # §5 bias of conv2/4/5 and fc6/7 under init=paper (Caffe: 0.1)
    lrn_convention: Literal["authors", "literal"] = "authors"  # §3.3 alpha/n (cuda-convnet) or alpha
    lrn_k: float = 2.0  # §3.3 (Caffe's AlexNet: 1)
    width: float = 1.0  # multiplier of the conv channel counts
    hidden: int = 4096  # units in fc6 and fc7
    pooling: Literal["overlap", "nonoverlap"] = "overlap"  # §3.4 3x3/2 windows, or 2x2/2 (s = z = 2)
    towers: Literal[1, 2] | None = None  # §3.2 None: the variant's own; 1: alexnet2012's one-GPU net
    # (half the kernels in conv1..conv4, no groups; conv5 and the FC layers kept, footnote 2)
    activation: Literal["relu", "tanh"] = "relu"  # §3.1 after every conv and FC layer
    parallel: Literal["data", "towers"] = "data"  # how processes share the network: each holds all of it
    # (data parallelism, DDP), or §3.2's split of alexnet2012's towers over process pairs (alexnet.towers);
    # the same network and checkpoints either way


@dataclass
class DataConfig:
    path: str | None = None  # prepared data set folder; None: the built-in generated set
    train_split: str = "train"
    val_split: str = "val"
    crop: int = 224  # px, side of the training and evaluation crops (§4.1: 224 of 256)
    progressive_from: int | None = None  # px: training crops grow from this to `crop` over the first
    # 3/4 of training (progressive resizing, as ffcv-imagenet); None: `crop` throughout
    flip: bool = True  # §4.1 horizontal reflections, p = 0.5
    pca_std: float = 0.1  # §4.1 std of the PCA colour coefficients alpha_i; 0 turns it off
    mean: Literal["pixel", "channel"] = "pixel"  # §2 per-pixel mean image, or per-channel mean/std
    scale: tuple[float, float] = (1.0, 1.0)  # area fraction of random-resized crops; (1, 1): §4.1 crops
    ratio: tuple[float, float] = (1.0, 1.0)  # aspect-ratio range of random-resized crops
    workers: int | None = None  # loader processes; None: 1 per 4 cores when training on CPU, else 8
    resident: Literal["auto", "true", "false"] = "auto"  # hold the decoded splits in the training device's
    # memory and make batches there, no workers (alexnet.data.resident); auto: when they fit its share
    resident_cache: Literal["auto", "true", "false"] = "auto"  # keep the decoded split beside the prepared
    # set (<split>/decoded-<decoder>.npy, N x S x S x 3 bytes) for the next run; auto: when decoded on the CPU
    builtin_per_class: int = 1000  # training images per class of the built-in shapes (when path is None)


@dataclass
class OptimConfig:
    update: Literal["paper", "torch"] = "paper"  # §5's momentum/decay rule, or torch.optim.SGD's
    lr: float = 0.01  # per `lr_batch` images; scaled linearly to the global batch
    lr_batch: int = 128  # images per step that `lr` is stated for
    momentum: float = 0.9  # §5
    weight_decay: float = 5e-4  # §5
    nesterov: bool = False
    label_smoothing: float = 0.0
    head_lr_mult: float = 1.0  # lr multiplier of fc8, the classifier head (Caffe's fine-tuning gives a new one 10)


@dataclass
class ScheduleConfig:
    name: Literal["plateau", "step", "linear", "cosine", "onecycle", "constant"] = "plateau"
    warmup_epochs: float = 0.0  # epochs of linear warm-up to the full lr
    gamma: float = 0.1  # §5 factor of each decay (plateau, step)
    step_epochs: int = 30  # epochs between decays (step)
    patience: int = 4  # epochs without a better validation error before a decay (plateau)
    max_decays: int = 3  # §5 "three times" (plateau)


@dataclass
class TrainConfig:
    epochs: int = 90  # §5 "roughly 90 cycles"
    budget_minutes: float | None = None  # stop after this much wall time; decays then follow the clock
    minutes: float | None = None  # the whole command's wall time (--minutes): alexnet.budget chooses the recipe
    ema: float = 0.0  # decay per optimizer step of an exponential moving average of the weights; 0: none
    batch_size: int = 128  # global images per optimizer step = per device x world size x accumulation
    accumulation: int = 1  # micro-batches per optimizer step
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"  # autocast dtype; fp16 adds a GradScaler;
    # auto: bf16 where the device computes it natively (CUDA sm80+, CPUs with AVX512-BF16/AMX), else fp32
    channels_last: bool = False  # NHWC memory format
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 0  # every random stream derives from (seed, rank, epoch)
    deterministic: bool = False  # deterministic kernels, for exact resume checks
    grad_compression: Literal["none", "bf16", "fp16"] = "none"  # DDP gradient all-reduce precision
    out: str | None = None  # run folder; None: runs/<date>-<preset>
    init: str | None = None  # weights to start from: torchvision | one of our checkpoints | a state-dict
    # file (alexnet.weights); None: the model's own random initialisation
    freeze: Literal["none", "features", "all-but-head"] = "none"  # features: conv1..conv5 (and their
    # norms, batch-norm statistics included) are not trained; all-but-head: only fc8 is
    log_every: int = 20  # optimizer steps between metric lines
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints; 0: at epoch ends only


@dataclass
class EvalConfig:
    views: Literal[1, 2, 10] = 1  # centre crop; + its reflection; or §4.1's 4 corners + centre and reflections
    crop: int | None = None  # px, side of the evaluation crops; None: data.crop (bigger: more of the image, at
    # the same scale; random-resized crops train on objects that look larger than a centre crop shows them)
    batch_size: int = 256  # images per evaluation batch (per device)
    every: int = 1  # epochs between validation passes during training


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    preset: str = "paper"  # the preset these values started from (informational)


# ---------------------------------------------------------------------------------------- presets

def _paper() -> dict[str, Any]:
    """§5 exactly: `alexnet train --data prepared/imagenet --preset paper`. alexnet2012 with LRN and
    dropout 0.5, SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.01 per 128 images divided by 10
    when the validation error stops improving (at most 3 times), 90 epochs, 224-px §4.1 crops of
    256-px images with reflections and PCA colour noise (std 0.1). Hardware and time: the paper's,
    two GTX 580s for five to six days; its accuracy there, 40.7% top-1 / 18.2% top-5 error on
    ILSVRC-2012 val (one net, 10 views, Table 2). Not re-measured on ImageNet here (no ImageNet on
    our machines); its parts are re-measured on Imagenette in docs/benchmarks.md ("The paper's
    claims, re-measured")."""
    return {}  # the dataclass defaults are the paper's recipe


def _torchvision() -> dict[str, Any]:
    """torchvision's reference recipe for its AlexNet (references/classification/train.py):
    `alexnet train --data prepared/imagenet --preset torchvision`. alexnet_owt with PyTorch's default
    init, SGD lr 0.01 per 256 images, momentum 0.9, weight decay 1e-4, lr x0.1 every 30 epochs, 90
    epochs, random-resized crops (area 8-100%, aspect 3/4-4/3) and reflections, per-channel
    mean/std. torchvision reports 56.52% top-1 / 79.07% top-5 for the weights it trained this way (8
    GPUs); not re-measured here (no ImageNet on our machines)."""
    return {
        "model": {"name": "alexnet_owt", "init": "kaiming"},
        "data": {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3), "pca_std": 0.0, "mean": "channel"},
        "optim": {"update": "torch", "lr": 0.01, "lr_batch": 256, "weight_decay": 1e-4},
        "schedule": {"name": "step", "step_epochs": 30, "gamma": 0.1},
        "train": {"epochs": 90, "batch_size": 256},
    }


def _fast() -> dict[str, Any]:
    """Our modern fixed-epoch recipe for many images and a GPU: `alexnet train --data PREPARED
    --preset fast`. alexnet2012 with batch norm and He init, SGD with Nesterov momentum, lr 0.02 per
    256 images (scaled linearly to the global batch of 1024), weight decay 5e-5, label smoothing 0.1,
    2 warm-up epochs then a linear decay to 0, 32 epochs, bf16 where native, channels_last. Scaled to a
    2-core CPU (112-px crops of 144-px images, width 0.5, 1024-unit FC layers, no dropout, batch 128,
    lr 0.04 per 128, weight decay 5e-4) it was the documented Imagenette recipe before --minutes:
    81.6% top-1 after 20 minutes of training on CPU-2b (docs/benchmarks.md); --minutes replaces it
    there. Not measured on ImageNet."""
    return {
        "model": {"name": "alexnet2012", "norm": "batchnorm", "init": "he"},
        "data": {"mean": "channel"},
        "optim": {"update": "torch", "lr": 0.02, "lr_batch": 256, "weight_decay": 5e-5, "nesterov": True,
                  "label_smoothing": 0.1},
        "schedule": {"name": "linear", "warmup_epochs": 2.0},
        "train": {"epochs": 32, "batch_size": 1024, "precision": "auto", "channels_last": True},
    }


def _quick() -> dict[str, Any]:
    """The built-in data set on a laptop CPU in minutes: `alexnet train` (no --data, no --preset).
    alexnet2012 with batch norm, 64 px crops of 72-px images, width 0.5, 512-unit FC layers and no
    dropout (measured on this data: dropout 0.5 cost 7 points at a fixed budget, and 4096-unit FC
    layers triple the step time at 64 px), SGD with Nesterov momentum, lr 0.04 per 128 images,
    weight decay 5e-4, label smoothing 0.1, batch 64, 0.25 warm-up epochs then a linear decay to 0,
    13 epochs, bf16 where native. Measured on 2-core CPUs with native bf16 (CPU-2b, CPU-2c): about
    93% top-1 (95.5% with 10 views) on the built-in validation split in 1m36s to 2m44s; about
    4 minutes in fp32 on AVX2-only CPUs (README)."""
    return {
        "model": {"name": "alexnet2012", "norm": "batchnorm", "init": "kaiming", "width": 0.5, "hidden": 512,
                  "dropout": 0.0},
        "data": {"crop": 64},
        "optim": {"update": "torch", "lr": 0.04, "lr_batch": 128, "weight_decay": 5e-4, "nesterov": True,
                  "label_smoothing": 0.1},
        "schedule": {"name": "linear", "warmup_epochs": 0.25},
        "train": {"epochs": 13, "batch_size": 64, "precision": "auto", "channels_last": True},
    }


def _finetune() -> dict[str, Any]:
    """A few hundred images per class, starting from torchvision's ImageNet weights (§6 fine-tuned
    two of its seven nets): `alexnet train --data prepared/mine --preset finetune`. torchvision's
    architecture (alexnet_owt), the new head learning 10x faster (Caffe's convention), lr 0.002 per
    64 images with a cosine decay after 0.5 warm-up epochs, weight decay 1e-4, 12 epochs, batch 64,
    random-resized crops (area 25-100%, milder than ImageNet's 8-100%, for small sets), label
    smoothing 0.1, bf16 where native. The normalisation is the weights' own (ImageNet mean/std for
    torchvision's), whatever data.mean says. Not measured from torchvision's weights (our machines
    cannot download them); the closest measurement, from our own weights pre-trained on 5 other
    Imagenette classes with this recipe's shape but lr 0.01: 70.3% top-1 on 5 classes from 50 photos
    each in 1.5 minutes on a 2-core CPU (CPU-2c; docs/benchmarks.md, "Fine-tuning")."""
    return {
        "model": {"name": "alexnet_owt", "init": "kaiming", "dropout": 0.5},
        "data": {"scale": (0.25, 1.0), "ratio": (3 / 4, 4 / 3), "pca_std": 0.0, "mean": "channel"},
        "optim": {"update": "torch", "lr": 0.002, "lr_batch": 64, "weight_decay": 1e-4, "head_lr_mult": 10.0,
                  "label_smoothing": 0.1},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": 12, "batch_size": 64, "precision": "auto", "channels_last": True, "init": "torchvision"},
    }


def _tiny() -> dict[str, Any]:
    """Seconds-long runs, for the test suite and smoke checks (one set of small sizes instead of the
    same overrides retyped in every test): `alexnet train --preset tiny`. The quick recipe (lr 0.04
    per 128 images) on a quarter-width network with 64-unit FC layers, batch 16, one epoch, no loader
    processes, a metric line every 2 steps; with no --data, 20 training images per class of the
    built-in shapes. It proves the path runs, not that the network learns: 11% top-1 on the
    built-in validation split (chance: 10%) in 0m15s to 0m22s on a 2-core CPU shared with other jobs
    (CPU-2b, bf16), data generation included."""
    values = _quick()
    values["model"].update(width=0.25, hidden=64)
    values["data"].update(workers=0, builtin_per_class=20)
    values["train"].update(epochs=1, batch_size=16, log_every=2)
    values["eval"] = {"batch_size": 16}
    return values


PRESETS = {"paper": _paper, "torchvision": _torchvision, "fast": _fast, "quick": _quick, "finetune": _finetune,
           "tiny": _tiny}


def preset(name: str) -> Config:
    """A fresh Config with the named preset applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = Config(preset=name)
    apply(cfg, PRESETS[name](), source=f"preset {name}")
    return cfg


# ------------------------------------------------------------------------------------- overrides

def sections(cfg: Config) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if dataclasses.is_dataclass(getattr(cfg, f.name))}


def apply(cfg: Config, values: dict[str, Any], source: str) -> Config:
    """Set values given nested ({"train": {"epochs": 3}}) or dotted ({"train.epochs": 3}); in place."""
    for key, value in _flatten(values, source).items():
        section_name, _, name = key.partition(".")
        section = sections(cfg).get(section_name)
        if section is not None and not name:  # `train: 5`: a section given a value instead of keys
            raise ConfigError(f"{source}: {section_name} is a section: give its keys ({section_name}.KEY=VALUE, "
                              f"or a table of KEY: VALUE under {section_name}), not the value {value!r}")
        if section is None or not name:
            raise ConfigError(f"{source}: unknown config section {section_name!r} in {key!r}"
                              f"{_suggest(section_name, sections(cfg))}")
        hints = typing.get_type_hints(type(section))
        if name not in hints:
            raise ConfigError(f"{source}: unknown config key {key!r}"
                              f"{_suggest(name, hints, prefix=section_name + '.')}")
        setattr(section, name, coerce(value, hints[name], key, source))
    return cfg


def flatten(values: dict[str, Any], source: str = "a config") -> dict[str, Any]:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}; ConfigError (naming `source`) for deeper nesting."""
    return _flatten(values, source)


def _flatten(values: dict[str, Any], source: str) -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            if "." in key:
                raise ConfigError(f"{source}: nested table under dotted key {key!r}")
            for sub, v in value.items():
                if isinstance(v, dict):
                    raise ConfigError(f"{source}: {key}.{sub} is a table; config keys are section.key")
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def _suggest(name: str, options, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f"; known: {', '.join(prefix + o for o in options)}"


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(value: Any, hint: Any, key: str, source: str = "config") -> Any:
    """Convert `value` (a string from the command line, or a TOML/YAML value) to type `hint`."""
    where = f"{source}: {key}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        literal = typing.get_args(inner) if typing.get_origin(inner) is Literal else ()
        if isinstance(value, str) and value in literal:  # model.norm=none is the choice "none", not null
            return value
        if type(None) in args and (value is None or (isinstance(value, str)
                                                      and value.lower() in ("none", "null", ""))):
            return None
        return coerce(value, inner, key, source)
    if origin is Literal:
        kind = type(args[0])
        if isinstance(value, bool) and kind is str and {"true", "false"} <= set(args):  # TOML/YAML true
            value = "true" if value else "false"
        v = coerce(value, kind, key, source)
        if v not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return v
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) != len(args):
            raise ConfigError(f"{where}: expects {len(args)} comma-separated values, got {value!r}")
        return tuple(coerce(v, a, key, source) for v, a in zip(items, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{where}: expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{where}: expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expects a string, got {value!r}")
    raise TypeError(f"config key {key} has an unsupported type {hint!r}")  # a bug in this file


def parse_set(assignment: str) -> tuple[str, str]:
    """'section.key=value' -> ('section.key', 'value')."""
    key, sep, value = assignment.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value, e.g. optim.lr=0.02")
    return key.strip(), value.strip()


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file (UTF-8, with or without a byte-order mark) into a
    nested dict. Raises ConfigError (UserError for what alexnet.data.textfile refuses: UTF-16, binary
    data, a line that is not UTF-8), one line naming the file, for a file that is missing, not a
    regular file, unreadable, not UTF-8 text, does not parse, or is not a table of sections."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file (a directory?): give a .toml, .yaml or .json file")
    what, lines = f"config file {path}", []
    try:
        for number, line in text_lines(path, what):  # UTF-16, binary data, absurd lines: one line each
            byte = bad_byte(line)
            if byte is not None:
                raise not_utf8(what, number, byte)
            lines.append(line)
    except OSError as e:
        raise ConfigError(f"{what} cannot be read: {e.strerror or e}") from None
    text = "".join(lines)
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: use .toml, .yaml, .yml or .json")
    except (ValueError, yaml.YAMLError) as e:  # tomllib and json errors are ValueErrors
        if isinstance(e, ConfigError):
            raise
        where = getattr(e, "problem_mark", None)  # YAML's: "(line 3, column 5)"
        why = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ConfigError(f"config file {path} does not parse: {why}{at}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table of sections at the top level")
    return data


def resolve(preset_name: str | None = None, files=(), sets=(),
            flags: dict[str, tuple[str, Any]] | None = None) -> Config:
    """The resolved configuration: preset, then files, then --set, then flags (see module doc).

    flags: {"--epochs": ("train.epochs", "30"), ...}; a value of None means the flag was not given.
    """
    loaded = [(str(f), load_file(f)) for f in files]
    name = preset_name
    for path, data in loaded:
        file_preset = data.pop("preset", None)
        if name is None and file_preset is not None:
            name = coerce(file_preset, str, "preset", path)
    cfg = preset(name or "paper")
    for path, data in loaded:
        apply(cfg, data, source=path)
    for assignment in sets:
        key, value = parse_set(assignment)
        apply(cfg, {key: value}, source=f"--set {assignment}")
    for flag, (key, value) in (flags or {}).items():
        if value is not None:
            apply(cfg, {key: value}, source=flag)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that involve more than one key, or ranges; each error names the key."""
    checks = [
        (cfg.train.epochs >= 1, "train.epochs must be at least 1"),
        (cfg.train.budget_minutes is None or cfg.train.budget_minutes > 0, "train.budget_minutes must be positive"),
        (cfg.train.minutes is None or cfg.train.minutes > 0, "train.minutes (--minutes) must be positive"),
        (0 <= cfg.train.ema < 1, "train.ema must be in [0, 1): the decay per optimizer step, 0 for none"),
        (cfg.eval.crop is None or cfg.eval.crop >= 32, "eval.crop must be at least 32 px"),
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.train.accumulation >= 1, "train.accumulation must be at least 1"),
        (cfg.train.batch_size % cfg.train.accumulation == 0,
         f"train.batch_size ({cfg.train.batch_size}) must be divisible by train.accumulation "
         f"({cfg.train.accumulation})"),
        (cfg.optim.lr > 0, "optim.lr must be positive"),
        (cfg.optim.lr_batch >= 1, "optim.lr_batch must be at least 1"),
        (cfg.optim.head_lr_mult > 0, "optim.head_lr_mult must be positive"),
        (0 <= cfg.optim.momentum < 1, "optim.momentum must be in [0, 1)"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (0 <= cfg.optim.label_smoothing < 1, "optim.label_smoothing must be in [0, 1)"),
        (0 <= cfg.model.dropout < 1, "model.dropout must be in [0, 1)"),
        (cfg.model.num_classes is None or cfg.model.num_classes >= 2,
         "model.num_classes must be at least 2"),
        (cfg.model.width > 0 and cfg.model.hidden >= 1, "model.width and model.hidden must be positive"),
        (cfg.data.crop >= 32, "data.crop must be at least 32 px"),
        (cfg.data.progressive_from is None or 32 <= cfg.data.progressive_from <= cfg.data.crop,
         "data.progressive_from must be between 32 px and data.crop"),
        (cfg.data.pca_std >= 0, "data.pca_std must be >= 0"),
        (0 < cfg.data.scale[0] <= cfg.data.scale[1] <= 1,
         "data.scale must be two area fractions 0 < lo <= hi <= 1"),
        (0 < cfg.data.ratio[0] <= cfg.data.ratio[1], "data.ratio must be two ratios 0 < lo <= hi"),
        (cfg.data.workers is None or cfg.data.workers >= 0, "data.workers must be >= 0"),
        (cfg.data.builtin_per_class >= 1, "data.builtin_per_class must be at least 1"),
        (cfg.train.log_every >= 1, "train.log_every must be at least 1"),
        (cfg.train.checkpoint_every >= 0, "train.checkpoint_every must be >= 0 (0: at epoch ends only)"),
        (cfg.train.seed >= 0, "train.seed must be >= 0"),
        (cfg.eval.batch_size >= 1 and cfg.eval.every >= 1, "eval.batch_size and eval.every must be at least 1"),
        (0 <= cfg.schedule.warmup_epochs < cfg.train.epochs,
         "schedule.warmup_epochs must be >= 0 and less than train.epochs"),
        (0 < cfg.schedule.gamma < 1, "schedule.gamma must be in (0, 1)"),
        (cfg.schedule.step_epochs >= 1 and cfg.schedule.patience >= 0 and cfg.schedule.max_decays >= 0,
         "schedule.step_epochs must be >= 1, schedule.patience and max_decays >= 0"),
        (cfg.eval.batch_size >= 1 and cfg.eval.every >= 1,
         "eval.batch_size and eval.every must be at least 1"),
        (cfg.optim.update == "torch" or not cfg.optim.nesterov,
         "optim.nesterov needs optim.update=torch: the paper's update rule (§5) has no Nesterov form; add "
         "--set optim.nesterov=false, or keep optim.update=torch"),
        # §3.2's split (alexnet.towers) exists for the one network that has two towers
        (cfg.model.parallel != "towers" or cfg.model.name == "alexnet2012",
         f"model.parallel=towers splits the two towers of alexnet2012 (§3.2); {cfg.model.name} has one tower: "
         f"use model.parallel=data (the default)"),
        (cfg.model.parallel != "towers" or cfg.model.towers != 1,
         "model.parallel=towers needs alexnet2012's two towers, and model.towers=1 asks for §3.2's one-tower "
         "network: leave model.towers unset, or use model.parallel=data"),
        (cfg.model.parallel != "towers" or not cfg.train.minutes,
         "train.minutes (--minutes) chooses its recipe by timing one process's steps, which says nothing about "
         "model.parallel=towers: give the epochs and batch instead, or use model.parallel=data"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# --------------------------------------------------------------------------------- serialisation

def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), as written to config.yaml and read back by apply()."""
    d = dataclasses.asdict(cfg)
    return json.loads(json.dumps(d))  # tuples -> lists, a deep copy


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    data = copy.deepcopy(data)
    cfg = Config(preset=coerce(data.pop("preset", "paper"), str, "preset", source))
    apply(cfg, data, source=source)
    validate(cfg)
    return cfg


def dump(cfg: Config) -> str:
    """YAML text of the resolved config (the form `--print-config` shows and runs save)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(dump(cfg))


def given(files=(), sets=(), flags: dict[str, tuple[str, Any]] | None = None) -> set[str]:
    """The dotted keys the user wrote, in `resolve`'s arguments: in --config files (a file's
    `preset` aside), --set and flags given a value. The other keys come from a preset or the
    defaults, and a run may fill them from elsewhere (train --init: the checkpoint's model settings)."""
    keys = set()
    for path in files:
        data = load_file(path)
        data.pop("preset", None)
        keys |= set(_flatten(data, str(path)))
    keys |= {parse_set(assignment)[0] for assignment in sets}
    keys |= {key for key, value in (flags or {}).values() if value is not None}
    return keys
