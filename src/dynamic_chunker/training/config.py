"""Training configuration: a YAML file plus ``key=value`` overrides, checked strictly.

Every section is a dataclass; unknown keys, wrong types and impossible values are errors that name the key and
say what is expected. Relative paths written in a YAML file (model JSON, corpus) are resolved from that file's
folder; paths given as ``key=value`` overrides, from the current directory. ``model: official:NAME`` names a
released model's config (``HNetConfig.official``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import HNetConfig
from ..errors import ConfigError
from ..files import read_document
from .objective import RATIO_LOSS_WEIGHT
from .optim import paper_lr_multipliers

OFFICIAL = "official:"  # model: official:hnet_2stage_XL


@dataclass
class DataSection:
    corpus: str  # a prepared corpus directory (manifest.json, train.bin/.idx, val.bin/.idx)
    seq_len: int = 8192  # bytes per training window
    seed: int = 0  # shuffling seed of the training windows
    verify: bool = True  # check the files' sha256 against the manifest at start (slow for very large corpora)
    # token models (the BPE baseline): "bpe:V" trains a byte-level BPE of V ids on the training split (saved as
    # tokenizer.json in the run folder), or a path to a tokenizer.json. seq_len then counts tokens. None = bytes.
    tokenizer: str | None = None


@dataclass
class RatioSection:
    targets: list[float]  # N per chunking stage, outermost first (bytes per chunk at that stage)
    alpha: float = RATIO_LOSS_WEIGHT  # weight of the ratio loss


@dataclass
class OptimizerSection:
    lr: float  # peak learning rate of stage-multiplier 1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    lr_multipliers: list[float] | Literal["auto"] = "auto"  # per stage; "auto" = the paper's rule


@dataclass
class ScheduleSection:
    warmup: float = 0.1  # fraction of training with linear warmup
    decay: float = 0.2  # final fraction with 1 - sqrt decay to zero


@dataclass
class TrainSection:
    steps: int  # optimizer steps (the schedule's length unless max_minutes ends training first)
    batch_size: int  # sequences per optimizer step, all processes and accumulation micro-batches together
    grad_accum: int = 1
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    dtype: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 autocast on GPUs that support it, else fp32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0  # model initialisation
    max_minutes: float | None = None  # wall-clock budget; the schedule then runs on elapsed time
    # recompute each layer in the backward pass instead of storing activations (long sequences, small GPUs):
    # false, true (every stage) or a list of stage indices (0 = outermost)
    gradient_checkpointing: bool | list[int] = False
    # torch.compile of the blocks with a Mamba-2 mixer (lengths padded to buckets, see HNetForCausalLM.compile_blocks):
    # true, false, or auto = where it measured faster (benchmarks/results/train_speed_cpu.md)
    compile: bool | Literal["auto"] = "auto"


WARM_START_TARGETS = ("after_whitespace", "words", "bpe", "none")  # see evaluation/targets.py


@dataclass
class WarmStartStage:
    target: str = "none"  # one of WARM_START_TARGETS: what this stage's boundary probabilities are pulled towards
    weight: float = 1.0  # weight of the auxiliary loss at the start of training
    until: float = 0.3  # fraction of training (steps, or time with max_minutes) over which the weight falls to 0


@dataclass
class WarmStartSection:
    """Boundary warm start (off by default): a binary cross-entropy of each stage's boundary probabilities against a
    target boundary set, with a weight that falls linearly to zero; afterwards the paper's objective alone."""

    stages: list[WarmStartStage] = field(default_factory=list)  # one per chunking stage, outermost first; [] = off
    # the BPE tokenizer of the bpe target and of the routing statistics (trained on the training split's first
    # bpe_train_bytes, kept in the run folder); 0 = no tokenizer
    bpe_vocab_size: int = 4096
    bpe_train_bytes: int = 8_000_000


@dataclass
class EvalSection:
    every: int = 100  # steps between validations (also at step 0 and at the end); 0 = only at the end
    windows: int = 64  # fixed validation windows (fewer if the split is smaller)
    batch_size: int = 8


@dataclass
class CheckpointSection:
    every: int = 500  # steps between checkpoints (also at the end); 0 = only at the end


@dataclass
class TrainConfig:
    model: str | dict  # path to a model JSON (official schema), official:NAME, or the same object inline
    data: DataSection
    ratio: RatioSection
    optimizer: OptimizerSection
    train: TrainSection
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    warm_start: WarmStartSection = field(default_factory=WarmStartSection)
    out: str | None = None  # output directory; default runs/<config file name>

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived
    def model_config(self) -> HNetConfig:
        if isinstance(self.model, dict):
            try:
                return HNetConfig.from_dict(self.model)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"model (inline): {err}") from None
        if self.model.startswith(OFFICIAL):
            return HNetConfig.official(self.model[len(OFFICIAL) :])
        path = Path(self.model)
        if not path.is_file():
            where = "" if path.is_absolute() else f" (relative to the current directory, {Path.cwd()})"
            raise FileNotFoundError(f"model config {path} not found{where}")
        return HNetConfig.from_json(path)

    def lr_multipliers(self) -> list[float]:
        if self.optimizer.lr_multipliers == "auto":
            return paper_lr_multipliers(self.model_config(), self.ratio.targets)
        return list(self.optimizer.lr_multipliers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        model = self.model_config()
        stages = model.num_stages - 1
        if len(self.ratio.targets) != stages:
            raise ValueError(
                f"ratio.targets needs one N per chunking stage: the model has {stages}, got {self.ratio.targets}"
            )
        for n in self.ratio.targets:  # the ratio loss divides by N - 1
            _require(
                math.isfinite(n) and n > 1,
                f"ratio.targets must be finite numbers > 1 (bytes per chunk), got {self.ratio.targets}",
            )
        _require(self.ratio.alpha >= 0, f"ratio.alpha must be >= 0, got {self.ratio.alpha}")
        _require(self.data.seq_len >= 2, f"data.seq_len must be at least 2, got {self.data.seq_len}")
        tok = self.data.tokenizer
        if tok is not None and tok.startswith("bpe:"):
            _require(
                tok[4:].isdigit() and int(tok[4:]) == model.vocab_size,
                f"data.tokenizer {tok!r} must be bpe:V with V = the model's vocab_size ({model.vocab_size})",
            )
        _require(
            tok is not None or model.vocab_size == 256,
            f"the model has vocab_size {model.vocab_size}: a token model needs data.tokenizer (e.g. bpe:V)",
        )
        opt = self.optimizer
        _require(opt.lr > 0, f"optimizer.lr must be > 0, got {opt.lr}")
        _require(
            len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas),
            f"optimizer.betas must be two numbers in [0, 1), got {opt.betas}",
        )
        _require(opt.eps > 0 and opt.weight_decay >= 0, "optimizer.eps must be > 0 and weight_decay >= 0")
        if opt.lr_multipliers != "auto":
            _require(
                len(opt.lr_multipliers) == model.num_stages and all(m > 0 for m in opt.lr_multipliers),
                f"optimizer.lr_multipliers needs one positive number per stage ({model.num_stages}, innermost "
                f"included), got {opt.lr_multipliers}; or write 'auto' for the paper's rule",
            )
        s = self.schedule
        _require(
            0 <= s.warmup and 0 <= s.decay and s.warmup + s.decay <= 1,
            f"schedule.warmup and schedule.decay are fractions of training with warmup + decay <= 1, "
            f"got {s.warmup} and {s.decay}",
        )
        t = self.train
        _require(t.steps >= 1, f"train.steps must be >= 1, got {t.steps}")
        for key, seed in (("train.seed", t.seed), ("data.seed", self.data.seed)):
            _require(0 <= seed < 2**63, f"{key} must be in 0..2**63-1, got {seed}")
        _require(t.batch_size >= 1 and t.grad_accum >= 1, "train.batch_size and train.grad_accum must be >= 1")
        _require(t.grad_clip is None or t.grad_clip > 0, f"train.grad_clip must be > 0 or null, got {t.grad_clip}")
        _require(
            t.max_minutes is None or t.max_minutes > 0, f"train.max_minutes must be > 0 or null, got {t.max_minutes}"
        )
        if isinstance(t.gradient_checkpointing, list):
            _require(
                all(0 <= i < model.num_stages for i in t.gradient_checkpointing),
                f"train.gradient_checkpointing stages must be in 0..{model.num_stages - 1} (0 = outermost), "
                f"got {t.gradient_checkpointing}; or write true for every stage",
            )
        _require(self.eval.every >= 0 and self.checkpoint.every >= 0, "eval.every and checkpoint.every must be >= 0")
        _require(self.eval.windows >= 1 and self.eval.batch_size >= 1, "eval.windows and eval.batch_size must be >= 1")
        self._validate_warm_start(stages)

    def _validate_warm_start(self, stages: int) -> None:
        w = self.warm_start
        _require(
            w.bpe_vocab_size == 0 or w.bpe_vocab_size >= 257,
            f"warm_start.bpe_vocab_size must be 0 (no tokenizer) or more than the 256 bytes, got {w.bpe_vocab_size}",
        )
        _require(w.bpe_train_bytes >= 1, f"warm_start.bpe_train_bytes must be >= 1, got {w.bpe_train_bytes}")
        if not w.stages:
            return
        _require(
            self.data.tokenizer is None,
            "warm_start.stages needs a byte model: a token model (data.tokenizer) has no byte boundaries to target",
        )
        _require(
            len(w.stages) == stages,
            f"warm_start.stages needs one entry per chunking stage ({stages}), got {len(w.stages)}; "
            "write {target: none} for a stage to leave free",
        )
        for i, stage in enumerate(w.stages):
            key = f"warm_start.stages[{i}]"
            _require(
                stage.target in WARM_START_TARGETS,
                f"{key}.target must be one of {', '.join(WARM_START_TARGETS)}, got {stage.target!r}",
            )
            _require(stage.weight >= 0, f"{key}.weight must be >= 0, got {stage.weight}")
            _require(0 < stage.until <= 1, f"{key}.until is a fraction of training in (0, 1], got {stage.until}")
            _require(
                stage.target != "bpe" or w.bpe_vocab_size > 0,
                f"{key}.target bpe needs a tokenizer: set warm_start.bpe_vocab_size > 0",
            )

    def warm_start_targets(self) -> list[str]:
        """The warm-start target of each chunking stage ('none' everywhere when the warm start is off)."""
        return [s.target for s in self.warm_start.stages] or ["none"] * (len(self.ratio.targets))


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML training config and apply ``section.key=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a training config file such as configs/tiny_1stage.yaml")
    parse = lambda text: yaml.load(text, Loader=_StrictLoader)  # noqa: E731
    data = read_document(path, parse, "training config", "YAML", (yaml.YAMLError,), ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config must be a YAML mapping of sections, got {type(data).__name__}")
    _resolve_paths(data, path.parent)
    try:
        for item in overrides:
            apply_override(data, item)
        data.setdefault("out", str(Path("runs") / path.stem))
        return config_from_dict(data)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: {err}") from None
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: {err}") from None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    """Relative ``model`` and ``data.corpus`` paths of a YAML file: from the file's folder."""
    if isinstance(data.get("model"), str) and not data["model"].startswith(OFFICIAL):
        data["model"] = os.path.normpath(folder / data["model"])
    section = data.get("data")
    if isinstance(section, dict) and isinstance(section.get("corpus"), str):
        section["corpus"] = os.path.normpath(folder / section["corpus"])


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, data, "")


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the key must exist in the schema (or inside an inline model)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"override {item!r} must look like section.key=value, e.g. train.steps=100")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError as err:
        raise ValueError(f"override {item!r}: the value is not valid YAML: {err}") from None
    parts = key.split(".")
    schema: Any = TrainConfig
    node = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if dataclasses.is_dataclass(schema):
            names = [f.name for f in dataclasses.fields(schema)]
            if part not in names:
                where = ".".join(parts[:depth]) or "the top level"
                hint = difflib.get_close_matches(part, names, n=1)
                raise ValueError(
                    f"override {item!r}: unknown key {part!r} in {where}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else f"; allowed: {', '.join(names)}")
                )
            schema = typing.get_type_hints(schema)[part]
            schema = schema if dataclasses.is_dataclass(schema) else None
        if last:
            node[part] = value
            return
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hints_text = [f"{u!r} (did you mean {m[0]!r}?)" for u in unknown if (m := difflib.get_close_matches(u, fields))]
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where or 'the top level'}"
            + (f": {'; '.join(hints_text)}" if hints_text else f"; allowed: {', '.join(fields)}")
        )
    values = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"missing required key {key!r}")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, data[name], key)
        else:
            values[name] = _check(data[name], hint, key)
    return cls(**values)


def _check(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` (ints widened to float where a float is expected) or raise TypeError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check(value, option, key)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{key} must be {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{key} must be one of {', '.join(map(repr, typing.get_args(hint)))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is type(None):
        if value is not None:
            raise TypeError(f"{key} must be null")
        return None
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool, dict) and isinstance(value, hint):
        return value
    raise TypeError(f"{key} must be {_describe(hint)}, got {type(value).__name__} {value!r}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping"}.get(
        hint, str(hint)
    )
