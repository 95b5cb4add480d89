"""The optimiser set-up: AdamW parameter groups per stage and the paper's learning-rate rule for their multipliers."""

from __future__ import annotations

import math

import torch

from ..config import HNetConfig

GPT2_BYTES_PER_TOKEN = 4.6  # N^GPT of the paper's learning-rate rule (App. C): GPT-2 bytes per token on FineWeb-Edu
NO_DECAY = {"bias", "dt_bias", "A_log", "D", "pad_dimension"}


def paper_lr_multipliers(config: HNetConfig, targets: list[float]) -> list[float]:
    """lambda^s = sqrt(N_GPT * D^S / (D^s * prod_{i<s} N^i)), the learning-rate rule of the paper's appendix C."""
    widths = config.d_model
    out, product = [], 1.0
    for s, width in enumerate(widths):
        out.append(math.sqrt(GPT2_BYTES_PER_TOKEN * widths[-1] / (width * product)))
        if s < len(targets):
            product *= targets[s]
    return out


def parameter_stages(model: torch.nn.Module) -> dict[int, int]:
    """id(parameter) -> the stage that owns it, read off the stage recursion (embeddings and lm_head: stage 0)."""
    owner = {id(p): 0 for p in model.parameters()}
    stage = model.backbone
    while True:  # outermost first: every inner stage then claims its own parameters
        owner.update({id(p): stage.stage for p in stage.parameters()})
        if stage.is_innermost:
            return owner
        stage = stage.main_network


def parameter_groups(
    model: torch.nn.Module,
    lr_multipliers: list[float] | str,
    weight_decay: float,
    ratio_targets: list[float] | None = None,
) -> list[dict]:
    """AdamW parameter groups with a per-stage learning-rate multiplier (``lr_multiplier`` key).

    The caller applies the multiplier (``group["lr"] = lr * group["lr_multiplier"]``, as :func:`build_optimizer`
    does); AdamW ignores the key. ``lr_multipliers="auto"`` is the paper's rule (as in a training YAML) for
    ``ratio_targets`` (default: the paper's bytes per chunk, [6] or [3, 3]). Weight decay is off for biases, all norm
    weights, ``dt_bias``, ``A_log``, ``D`` and ``pad_dimension`` (a deliberate departure from the official helper,
    which only exempts ``.bias`` and ``.norm.`` names).
    """
    if lr_multipliers == "auto":
        from ..evaluation.flops import default_compression

        lr_multipliers = paper_lr_multipliers(model.config, ratio_targets or default_compression(model.config))
    n = model.config.num_stages
    if len(lr_multipliers) != n:
        raise ValueError(f"need one learning-rate multiplier per stage ({n}), got {lr_multipliers}")
    stages = parameter_stages(model)
    groups: dict[tuple[int, bool], list] = {}
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        no_decay = param.dim() < 2 or name.rsplit(".", 1)[-1] in NO_DECAY or "norm" in name
        groups.setdefault((stages[id(param)], no_decay), []).append(param)
    return [
        {"params": params, "lr_multiplier": lr_multipliers[s], "weight_decay": 0.0 if nd else weight_decay, "stage": s}
        for (s, nd), params in sorted(groups.items())
    ]


# devices whose AdamW has a fused kernel in every torch we support (>= 2.5)
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    lr_multipliers: list[float],
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`, each group's learning rate = ``lr`` x its stage's multiplier.

    On CPU and CUDA the update is torch's fused kernel: the same arithmetic, about 4x faster than the default
    per-parameter loop on CPU (2.4M parameters: 2.3 against 8.6 ms a step; 39M: 69 against 271 ms)."""
    groups = parameter_groups(model, lr_multipliers, weight_decay)
    for group in groups:
        group["lr"] = lr * group["lr_multiplier"]
    fused = all(p.device.type in FUSED_ADAMW_DEVICES for group in groups for p in group["params"]) or None
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)
