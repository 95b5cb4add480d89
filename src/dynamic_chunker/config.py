"""Model configuration in the official H-Net JSON schema, with validation.

A config describes a hierarchy of stages. ``arch_layout`` is a nested list: a
non-innermost stage is ``[encoder, inner_stage, decoder]`` and the innermost
stage is ``[main]``. Each stack is a string of ``letter+count`` tokens where
``m``/``M`` are Mamba-2 layers and ``t``/``T`` attention layers; upper case
adds a SwiGLU MLP to the layer.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

BOS = 254  # byte that starts every document (corpora) and every prompt (generation); never in UTF-8 text
EOS = 255  # byte that ends a generated sequence; never in UTF-8 text either
OFFICIAL_CONFIGS = Path(__file__).parent / "official_configs"  # the released models' configs, shipped with the package

_TOKEN = re.compile(r"([mMtT])(\d+)")


def parse_layout(layout: str) -> list[str]:
    """Expand a stack string such as ``"T1m4"`` into one letter per layer.

    Unlike the official parser (which silently ignores anything it does not
    recognise) a malformed string is an error, because a typo there silently
    changes the model.
    """
    if not isinstance(layout, str):
        raise TypeError(f"a stack layout must be a string like 'm4' or 'T1m4', got {layout!r}")
    pos, letters = 0, []
    for match in _TOKEN.finditer(layout):
        if match.start() != pos:
            break
        if int(match.group(2)) < 1:
            raise ValueError(f"stack layout {layout!r}: {match.group(0)!r} has no layers; counts must be at least 1")
        letters.extend(match.group(1) * int(match.group(2)))
        pos = match.end()
    if pos != len(layout) or not layout:
        raise ValueError(
            f"malformed stack layout {layout!r}: expected one or more tokens of a letter "
            "from m, M, t, T followed by a count, e.g. 'm4' or 'T1m4'"
        )
    return letters


@dataclass
class SSMConfig:
    d_conv: int = 4
    expand: int = 2
    d_state: int = 128
    chunk_size: int = 256
    headdim: int = 64  # fixed by the released models (mamba_ssm default); not part of the official JSON


@dataclass
class AttnConfig:
    num_heads: list[int] = field(default_factory=list)
    rotary_emb_dim: list[int] = field(default_factory=list)
    window_size: list[int] = field(default_factory=list)


@dataclass
class HNetConfig:
    arch_layout: list = field(default_factory=list)
    d_model: list[int] = field(default_factory=list)
    d_intermediate: list[int] = field(default_factory=list)
    vocab_size: int = 256
    ssm_cfg: SSMConfig = field(default_factory=SSMConfig)
    attn_cfg: AttnConfig = field(default_factory=AttnConfig)
    tie_embeddings: bool = False
    # How each chunking stage (outermost first) places its boundaries: "learned" (the router), "space" (stage 0 only:
    # a chunk starts at every byte that follows a space-like byte) or "pool:N" (every N positions). Empty = all
    # learned. Not part of the official schema: left out of the JSON when empty.
    boundary_rule: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.ssm_cfg, dict):
            self.ssm_cfg = _build(SSMConfig, self.ssm_cfg, "ssm_cfg")
        if isinstance(self.attn_cfg, dict):
            self.attn_cfg = _build(AttnConfig, self.attn_cfg, "attn_cfg")
        for name, cls in (("ssm_cfg", SSMConfig), ("attn_cfg", AttnConfig)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"{name} must be a JSON object, got {type(getattr(self, name)).__name__}")
        self.validate()

    # ----------------------------------------------------------------- I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HNetConfig:
        if not isinstance(data, dict):
            raise TypeError(f"an H-Net config must be a JSON object, got {type(data).__name__}")
        return _build(cls, data, "config")

    @classmethod
    def official(cls, name: str) -> HNetConfig:
        """The config of a released model, e.g. ``HNetConfig.official("hnet_2stage_XL")``."""
        path = OFFICIAL_CONFIGS / f"{name}.json"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in OFFICIAL_CONFIGS.glob("*.json")))
            raise FileNotFoundError(f"no official config {name!r}; the released models are {names}")
        return cls.from_json(path)

    @classmethod
    def from_json(cls, path: str | Path) -> HNetConfig:
        from .files import read_document

        path = Path(path)
        data = read_document(path, json.loads, "config file", "JSON", (json.JSONDecodeError,), ConfigError)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["ssm_cfg"]["headdim"] == 64:  # keep files identical to the official schema
            data["ssm_cfg"].pop("headdim")
        if not data["boundary_rule"]:
            data.pop("boundary_rule")
        return data

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            from .files import atomic_write

            atomic_write(path, text)
        return text

    # ------------------------------------------------------------ structure
    @property
    def num_stages(self) -> int:
        """Number of stages including the innermost one (1-stage H-Net -> 2)."""
        return len(self.d_model)

    def stage_layout(self, stage: int) -> list:
        layout = self.arch_layout
        for _ in range(stage):
            layout = layout[1]
        return layout

    def stacks(self, stage: int) -> dict[str, list[str]]:
        """Letters of each stack of a stage: keys encoder/decoder, or main."""
        layout = self.stage_layout(stage)
        if len(layout) == 1:
            return {"main": parse_layout(layout[0])}
        return {"encoder": parse_layout(layout[0]), "decoder": parse_layout(layout[2])}

    def rule(self, stage: int) -> str:
        """The boundary rule of chunking stage ``stage``: learned, space or pool:N."""
        return self.boundary_rule[stage] if self.boundary_rule else "learned"

    def mlp_width(self, stage: int) -> int:
        """SwiGLU hidden width, rounded up to a multiple of 128 as the official MLP does."""
        return -(-self.d_intermediate[stage] // 128) * 128

    # ----------------------------------------------------------- validation
    def validate(self) -> None:
        depth = _layout_depth(self.arch_layout)
        n = depth
        for name in ("d_model", "d_intermediate"):
            values = getattr(self, name)
            if not isinstance(values, list) or not all(isinstance(v, int) and v >= 0 for v in values):
                raise TypeError(f"{name} must be a list of non-negative integers, got {values!r}")
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries but arch_layout has {n} stages")
        for name in ("num_heads", "rotary_emb_dim", "window_size"):
            values = getattr(self.attn_cfg, name)
            if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
                raise TypeError(f"attn_cfg.{name} must be a list of integers, got {values!r}")
            if len(values) != n:
                raise ValueError(f"attn_cfg.{name} has {len(values)} entries but arch_layout has {n} stages")
        if not isinstance(self.tie_embeddings, bool):
            raise TypeError(f"tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        if not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool) or self.vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {self.vocab_size!r}")
        if self.vocab_size != 256 and n > 1:  # token models (the BPE baseline) are isotropic
            raise ValueError(f"vocab_size must be 256 for a byte-level H-Net, got {self.vocab_size}")
        for s in range(1, n):
            if self.d_model[s] < self.d_model[s - 1]:
                raise ValueError(
                    f"d_model must not shrink from one stage to the next, got {self.d_model} "
                    f"(stage {s} is narrower than stage {s - 1})"
                )
        self._validate_boundary_rule(n - 1)
        ssm = self.ssm_cfg
        for name in ("d_conv", "expand", "d_state", "chunk_size", "headdim"):
            value = getattr(ssm, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ssm_cfg.{name} must be a positive integer, got {value!r}")
        for s in range(n):
            d = self.d_model[s]
            if d <= 0:
                raise ValueError(f"d_model[{s}] must be positive, got {d}")
            letters = [c for stack in self.stacks(s).values() for c in stack]
            if any(c in "mM" for c in letters) and (ssm.expand * d) % ssm.headdim:
                raise ValueError(
                    f"stage {s}: Mamba inner width expand*d_model = {ssm.expand * d} is not divisible "
                    f"by the Mamba head dim {ssm.headdim}"
                )
            if any(c in "tT" for c in letters):
                heads, rot = self.attn_cfg.num_heads[s], self.attn_cfg.rotary_emb_dim[s]
                if heads <= 0 or d % heads:
                    raise ValueError(f"stage {s}: d_model {d} is not divisible by num_heads {heads}")
                head_dim = d // heads
                if rot < 0 or rot > head_dim or rot % 2:
                    raise ValueError(
                        f"stage {s}: rotary_emb_dim {rot} must be even and at most the head dim {head_dim}"
                    )
                if self.attn_cfg.window_size[s] < -1 or self.attn_cfg.window_size[s] == 0:
                    raise ValueError(
                        f"stage {s}: window_size must be -1 (global) or a positive number of past keys, "
                        f"got {self.attn_cfg.window_size[s]}"
                    )
            if any(c in "MT" for c in letters) and self.d_intermediate[s] <= 0:
                raise ValueError(
                    f"stage {s}: upper-case layers (M, T) have an MLP, so d_intermediate[{s}] must be "
                    f"positive, got {self.d_intermediate[s]}"
                )


    def _validate_boundary_rule(self, chunking_stages: int) -> None:
        rules = self.boundary_rule
        if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
            raise TypeError(f"boundary_rule must be a list of strings such as ['space'], got {rules!r}")
        if rules and len(rules) != chunking_stages:
            raise ValueError(f"boundary_rule needs one rule per chunking stage ({chunking_stages}), got {rules}")
        for s, rule in enumerate(rules):
            ok = rule in ("learned", "space") or bool(re.fullmatch(r"pool:[1-9]\d*", rule))
            if not ok:
                raise ValueError(f"boundary_rule[{s}] must be learned, space or pool:N (N >= 1), got {rule!r}")
            if rule == "space" and s > 0:
                raise ValueError(f"boundary_rule[{s}]: the space rule reads bytes, so it applies to stage 0 only")


def _layout_depth(layout: Any) -> int:
    if not isinstance(layout, list) or not layout:
        raise ValueError(f"arch_layout must be a non-empty nested list such as ['m4', ['T22'], 'm4'], got {layout!r}")
    if len(layout) == 1:
        parse_layout(layout[0])
        return 1
    if len(layout) != 3:
        raise ValueError(
            f"each arch_layout stage must be [encoder, inner, decoder] or [main], got {len(layout)} items: {layout!r}"
        )
    parse_layout(layout[0])
    parse_layout(layout[2])
    return 1 + _layout_depth(layout[1])


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TypeError(f"unknown key(s) in {where}: {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    return cls(**data)
