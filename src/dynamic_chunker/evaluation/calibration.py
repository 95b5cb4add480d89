"""Routing calibration: set a random-init model's routers to a chosen compression, so that speed and memory are
measured at the compression a trained model would have (a random router compresses far less than N)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..layers.segments import Segments


def bisect_strength(count: Callable[[float], int], goal: int, what: str) -> float:
    """The smallest strength g (to bisection precision) with ``count(g) <= goal``; ``count`` must fall as g grows.
    The routers are left set to the returned strength."""
    low, high = 0.0, 1.0
    selected = count(high)
    while selected > goal:
        low, high = high, 2 * high
        if high > 1e6:
            raise RuntimeError(f"cannot calibrate {what}: the boundary count stays above {goal}")
        selected = count(high)
    for _ in range(40):
        if selected == goal:
            break
        middle = (low + high) / 2
        found = count(middle)
        low, high, selected = (middle, high, selected) if found > goal else (low, middle, found)
    count(high)
    return high


def unit_mean(hidden: torch.Tensor) -> torch.Tensor:
    """(B, L, D) -> (D,) the unit vector along the mean of the rows' vectors."""
    mean = hidden.float().mean(dim=(0, 1))
    return mean / mean.norm()


@torch.no_grad()
def calibrate_routing(model: torch.nn.Module, ids: torch.Tensor, targets: list[float]) -> dict[str, torch.Tensor]:
    """Set every stage's router so that it selects 1/N of its positions on ``ids`` (B, L); returns the routing weights.

    W_q = W_k = I + g u u^T with u the unit mean of the stage's encoder outputs: a larger g adds a shared component to
    adjacent q and k, raising their cosine and lowering the boundary count; g is bisected to floor(positions / N).
    Boundaries still depend on the content. Stages are calibrated outermost first, each on the previous one's chunks.
    """
    x, segments, stage = model.embeddings(ids), Segments(), model.backbone
    for target in targets:
        hidden = stage.encoder(stage.widen(x), segments)
        router, u = stage.routing_module, unit_mean(hidden)

        def count(strength: float, router=router, u=u, hidden=hidden, segments=segments) -> int:
            weight = torch.eye(u.numel(), dtype=hidden.dtype) + strength * torch.outer(u, u).to(hidden.dtype)
            router.q_proj_layer.weight.copy_(weight)
            router.k_proj_layer.weight.copy_(weight)
            return int(router(hidden, segments).boundary_mask.sum())

        goal = math.floor(hidden.shape[0] * hidden.shape[1] / target)
        bisect_strength(count, goal, f"stage {stage.stage} to {target} bytes per chunk")
        x, segments, _ = stage.chunk_layer(hidden, router(hidden, segments), segments)
        stage = stage.main_network
    return {k: v.clone() for k, v in model.state_dict().items() if "routing_module" in k}
