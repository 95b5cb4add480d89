"""Size a baseline to a target FLOPs per byte (the paper's matched-compute comparisons, Appendix B accounting).

The innermost stage's width is searched (its MLP width scaled with it) for the forward FLOPs per byte closest to
the target, at the compression the model actually reaches: the ratio-loss targets for learned routing, the measured
bytes per chunk for fixed rules (:func:`rule_compression`), and the measured bytes per token for token models.
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import HNetConfig
from ..errors import InvalidArgument
from .flops import forward_flops_per_byte


def with_width(config: HNetConfig, width: int) -> HNetConfig:
    """``config`` with the innermost stage ``width`` wide; its MLP width keeps its ratio to the width."""
    d_model, d_inner = list(config.d_model), list(config.d_intermediate)
    d_inner[-1] = round(d_inner[-1] * width / d_model[-1])
    d_model[-1] = width
    data = dataclasses.asdict(config)
    data.update(d_model=d_model, d_intermediate=d_inner)
    return HNetConfig.from_dict(data)


def flops_per_byte(
    config: HNetConfig, seq_len: int, compression: list[float] | None = None, bytes_per_token: float = 1.0
) -> float:
    """Forward FLOPs per byte; ``seq_len`` in positions (tokens for a token model) and ``bytes_per_token`` the
    measured bytes per token of a token model (1 for byte models)."""
    return forward_flops_per_byte(config, seq_len, compression) / bytes_per_token


def size_to_flops(
    config: HNetConfig,
    target: float,
    seq_len: int,
    compression: list[float] | None = None,
    bytes_per_token: float = 1.0,
    step: int = 16,
    max_width: int = 4096,
) -> tuple[HNetConfig, float]:
    """The multiple-of-``step`` innermost width whose forward FLOPs per byte come closest to ``target``; returns
    (resized config, its FLOPs per byte). Widths the config cannot take (heads, Mamba head dim, narrower than the
    stage outside) are skipped."""
    if target <= 0:
        raise InvalidArgument(f"target FLOPs per byte must be positive, got {target}")
    best = None
    floor = config.d_model[-2] if config.num_stages > 1 else step
    for width in range(max(step, floor), max_width + 1, step):
        try:
            candidate = with_width(config, width)
        except ValueError:
            continue
        flops = flops_per_byte(candidate, seq_len, compression, bytes_per_token)
        if best is None or abs(flops - target) < abs(best[1] - target):
            best = (candidate, flops)
    if best is None:
        raise InvalidArgument(f"no width up to {max_width} in steps of {step} is valid for this config")
    return best


def rule_compression(config: HNetConfig, data: bytes) -> list[float] | None:
    """Bytes per chunk (positions per chunk per stage) that fixed boundary rules give on ``data``; None when any
    stage is learned (its ratio-loss target is the compression to assume)."""
    from ..chunking import fixed_boundaries
    from ..layers.segments import Segments

    rules = [config.rule(s) for s in range(config.num_stages - 1)]
    if not rules or "learned" in rules:
        return None
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8)[None].long()
    out, length = [], ids.shape[1]
    for rule in rules:
        chosen = fixed_boundaries(rule, Segments(None, None), 1, length, ids.device, ids if rule == "space" else None)
        out.append(length / max(int(chosen.sum()), 1))
        ids, length = None, int(chosen.sum())
    return out
