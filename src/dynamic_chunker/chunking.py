"""Dynamic chunking (paper section 2.2): routing, chunk (downsample), dechunk (smooth + upsample), ratio loss.

Shapes: B batch, L positions at the current stage, M chunks (positions of the next stage), D width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers.mamba2 import RESET_LOG_DECAY, chunked_scan
from .layers.precision import upcast
from .layers.segments import Segments

EMA_CLAMP = 1e-4  # P = clamp(p, 1e-4, 1 - 1e-4) inside the dechunk EMA, as in the official code


@dataclass
class RoutingOutput:
    """What the router decided at one stage. All tensors are (B, L_s)."""

    boundary_prob: torch.Tensor  # p_t, probability that a chunk starts at t
    boundary_mask: torch.Tensor  # b_t = p_t > 0.5 on valid positions
    selected_probs: torch.Tensor  # c_t = max(p_t, 1 - p_t), the confidence of the decision
    mask: torch.Tensor | None = None  # valid positions of this stage (None = all)


class RoutingModule(nn.Module):
    """Boundary probability from the cosine similarity of adjacent encoder outputs (paper eq. 4).

    As in the official code (and the released weights) q projects the *previous* vector and k the current one.
    """

    def __init__(self, d_model: int, device=None, dtype=None):
        super().__init__()
        self.q_proj_layer = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        self.k_proj_layer = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for layer in (self.q_proj_layer, self.k_proj_layer):
            layer.weight.copy_(torch.eye(layer.weight.shape[0]))

    def forward(self, hidden: torch.Tensor, segments: Segments) -> RoutingOutput:
        q = F.normalize(self.q_proj_layer(hidden[:, :-1]), dim=-1)
        k = F.normalize(self.k_proj_layer(hidden[:, 1:]), dim=-1)
        p = torch.clamp((1 - (q * k).sum(dim=-1)) / 2, min=0.0, max=1.0)
        p = F.pad(p, (1, 0), value=1.0)  # every sequence starts a chunk
        if segments.starts is not None:
            p = p.masked_fill(segments.starts, 1.0)
        decided = p > 0.5
        boundary = decided if segments.mask is None else decided & segments.mask
        selected = torch.where(decided, p, 1 - p)
        return RoutingOutput(p, boundary, selected, segments.mask)


def chunk_order(boundary_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the positions of the boundaries in order, right-padded with the remaining positions.

    Returns (index (B, M), counts (B,)) with M the largest boundary count in the batch.
    """
    B, L = boundary_mask.shape
    counts = boundary_mask.sum(dim=1)
    key = torch.arange(L, device=boundary_mask.device) + (~boundary_mask).long() * L
    index = torch.argsort(key, dim=1)[:, : int(counts.max())]
    return index, counts


class ChunkLayer(nn.Module):
    """Downsampling by selection: keep the vectors at boundary positions."""

    def forward(
        self, hidden: torch.Tensor, routing: RoutingOutput, segments: Segments
    ) -> tuple[torch.Tensor, Segments, torch.Tensor]:
        index, counts = chunk_order(routing.boundary_mask)
        chunks = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        return chunks, segments.select(index, counts), index


def ema(values: torch.Tensor, prob: torch.Tensor, starts: torch.Tensor | None, chunk_size: int = 64) -> torch.Tensor:
    """z_j = P_j v_j + (1 - P_j) z_{j-1}, z_{-1} = 0, restarting at every document start. (B, M, D), (B, M).

    Runs as a one-state linear recurrence through the chunked scan, in float32 (float64 stays float64).
    """
    dtype = torch.promote_types(values.dtype, torch.float32)
    prob = prob.to(dtype)
    log_decay = torch.log1p(-prob)
    if starts is not None:
        log_decay = log_decay.masked_fill(starts, RESET_LOG_DECAY)
    ones = prob.new_ones(*prob.shape, 1)
    out, _ = chunked_scan(
        (prob[..., None] * values.to(dtype))[:, :, None], log_decay[..., None], ones, ones, chunk_size
    )
    return out[:, :, 0]


class DeChunkLayer(nn.Module):
    """Smoothing (EMA over chunks weighted by boundary probability) and plug-back to the outer resolution."""

    def forward(
        self, chunks: torch.Tensor, routing: RoutingOutput, index: torch.Tensor, inner: Segments
    ) -> torch.Tensor:
        prob = upcast(routing.boundary_prob.gather(1, index)).clamp(EMA_CLAMP, 1 - EMA_CLAMP)
        smoothed = ema(chunks, prob, inner.starts).to(chunks.dtype)
        chunk_of = routing.boundary_mask.long().cumsum(dim=1) - 1  # chunk each position belongs to
        return smoothed.gather(1, chunk_of[..., None].expand(-1, -1, smoothed.shape[-1]))


def straight_through(values: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """values * STE(c): exactly `values` in the forward pass; gradient sum(grad * values) reaches c."""
    return values + values * (confidence - confidence.detach())[..., None]


def ratio_loss(routing: RoutingOutput, target: float) -> torch.Tensor:
    """Paper eq. 10: N/(N-1) * ((N-1) F G + (1-F)(1-G)); F = fraction selected (no gradient), G = mean p.

    Averages run over every position of the stage, padding included, as the official helper does.
    """
    if target <= 1:
        raise ValueError(f"the ratio-loss target N (bytes per chunk) must be > 1, got {target}")
    F_ = routing.boundary_mask.float().mean()
    G = routing.boundary_prob.float().mean()
    return target / (target - 1) * ((target - 1) * F_ * G + (1 - F_) * (1 - G))
