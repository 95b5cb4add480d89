"""Dynamic chunking (paper section 2.2): routing, chunk (downsample), dechunk (smooth + upsample), ratio loss.

Shapes: B batch, L positions at the current stage, M chunks (positions of the next stage), D width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import kernels
from .layers.cache import valid_lengths
from .layers.mamba2 import RESET_LOG_DECAY, chunked_scan
from .layers.precision import compute_dtype, upcast
from .layers.segments import Segments

EMA_CLAMP = 1e-4  # P = clamp(p, 1e-4, 1 - 1e-4) inside the dechunk EMA, as in the official code
# Tiles and head width of the EMA when it runs through the optional SSD kernel (the official code's choice).
EMA_KERNEL_CHUNK = 256
EMA_KERNEL_HEAD_DIM = 32
# SpaceByte's space-like bytes: everything but ASCII letters and digits and the bytes of multi-byte UTF-8 characters
SPACE_LIKE = torch.tensor([not (chr(b).isascii() and chr(b).isalnum()) and b < 0x80 for b in range(256)])


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
    ``rule`` other than ``learned`` fixes the boundaries instead (baselines; see :func:`fixed_boundaries`): then
    p is 1 at a boundary and 0 elsewhere, so the decisions carry no gradient and the dechunk EMA barely smooths.
    """

    def __init__(self, d_model: int, rule: str = "learned", device=None, dtype=None):
        super().__init__()
        self.rule = rule
        self.q_proj_layer = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        self.k_proj_layer = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for layer in (self.q_proj_layer, self.k_proj_layer):
            layer.weight.copy_(torch.eye(layer.weight.shape[0]))

    def forward(
        self,
        hidden: torch.Tensor,
        segments: Segments,
        state: RoutingState | None = None,
        input_ids: torch.Tensor | None = None,
    ) -> RoutingOutput:
        """Routing of a (B, L, D) batch; with ``state``, also remember each row's last valid vector for decoding.
        ``input_ids`` (B, L): the bytes, needed by the ``space`` rule only."""
        if self.rule != "learned":
            decided = fixed_boundaries(self.rule, segments, *hidden.shape[:2], hidden.device, input_ids)
            p = decided.to(hidden.dtype)
            boundary = decided if segments.mask is None else decided & segments.mask
            return RoutingOutput(p, boundary, torch.ones_like(p), segments.mask)
        if state is not None:
            last = valid_lengths(segments, *hidden.shape[:2], hidden.device) - 1
            state.previous.copy_(hidden.detach()[torch.arange(hidden.shape[0], device=hidden.device), last])
            state.seen.fill_(True)
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

    def allocate_state(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> RoutingState:
        d = self.q_proj_layer.in_features
        return RoutingState(
            torch.zeros(batch_size, d, dtype=dtype, device=device),
            torch.zeros(batch_size, dtype=torch.bool, device=device),
        )

    def step(self, hidden: torch.Tensor, state: RoutingState, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, b) for one new vector per row of ``rows``: hidden (k, D) -> two (k,) tensors; p = 1 on a row's first."""
        if self.rule != "learned":
            raise NotImplementedError(f"cached decoding is not implemented for the fixed boundary rule {self.rule!r}")
        q = F.normalize(self.q_proj_layer(state.previous[rows].to(hidden.dtype)), dim=-1)
        k = F.normalize(self.k_proj_layer(hidden), dim=-1)
        p = torch.clamp((1 - (q * k).sum(dim=-1)) / 2, min=0.0, max=1.0)
        p = torch.where(state.seen[rows], p, torch.ones_like(p))
        state.previous[rows] = hidden.to(state.previous.dtype)
        state.seen[rows] = True
        return p, p > 0.5


def fixed_boundaries(
    rule: str, segments: Segments, batch: int, length: int, device: torch.device, input_ids: torch.Tensor | None
) -> torch.Tensor:
    """(B, L) bool chunk starts of a fixed rule; every row and document starts a chunk.

    ``space``: a chunk starts at each byte that is not space-like but follows a space-like byte (SpaceByte's rule:
    a word and the spaces or punctuation after it form one chunk). ``pool:N``: every N positions of each document.
    """
    if rule == "space":
        if input_ids is None:
            raise ValueError("the space boundary rule needs the byte ids (it applies to stage 0 only)")
        space = SPACE_LIKE.to(device)[input_ids.long()]
        decided = F.pad(space[:, :-1] & ~space[:, 1:], (1, 0), value=True)
    elif rule.startswith("pool:"):
        index = torch.arange(length, device=device).expand(batch, length)
        first = torch.zeros_like(index)
        if segments.starts is not None:  # position of each document's first element
            first = torch.where(segments.starts, index, first).cummax(dim=1).values
        decided = (index - first) % int(rule[5:]) == 0
    else:
        raise ValueError(f"unknown boundary rule {rule!r}: use learned, space or pool:N")
    return decided if segments.starts is None else decided | segments.starts


@dataclass
class RoutingState:
    """Decoding state of a router: the previous encoder output of each row, and whether there was one."""

    previous: torch.Tensor  # (B, D)
    seen: torch.Tensor  # (B,) bool


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
    prob, values = prob.to(dtype), values.to(dtype)
    log_decay = torch.log1p(-prob)
    if kernels.applies("ssd_scan", values):
        return _ema_kernel(values, prob, -log_decay, starts)
    if starts is not None:
        log_decay = log_decay.masked_fill(starts, RESET_LOG_DECAY)
    ones = prob.new_ones(*prob.shape, 1)
    out, _ = chunked_scan((prob[..., None] * values)[:, :, None], log_decay[..., None], ones, ones, chunk_size)
    return out[:, :, 0]


def _ema_kernel(
    values: torch.Tensor, prob: torch.Tensor, dt: torch.Tensor, starts: torch.Tensor | None
) -> torch.Tensor:
    """The EMA as an SSD scan for the optional kernel, for P in (0, 1): A = -1 and dt = -log(1 - P) give the decay
    1 - P; B = P / dt (in (0, 1]) makes the input dt * v * B = P v. Heads of EMA_KERNEL_HEAD_DIM channels.
    """
    b, m, d = values.shape
    head_dim = EMA_KERNEL_HEAD_DIM if d % EMA_KERNEL_HEAD_DIM == 0 else d
    heads = d // head_dim
    scanned = kernels.ssd_scan(
        values.reshape(b, m, heads, head_dim),
        dt[..., None].expand(b, m, heads).contiguous(),
        -torch.ones(heads, dtype=dt.dtype, device=dt.device),
        (prob / dt)[..., None],
        torch.ones_like(prob)[..., None],
        None,
        EMA_KERNEL_CHUNK,
        starts,
    )
    return scanned[0].reshape(b, m, d)


class DeChunkLayer(nn.Module):
    """Smoothing (EMA over chunks weighted by boundary probability) and plug-back to the outer resolution."""

    def forward(
        self,
        chunks: torch.Tensor,
        routing: RoutingOutput,
        index: torch.Tensor,
        inner: Segments,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """With ``state`` (B, D), also store each row's last smoothed chunk vector for decoding."""
        prob = upcast(routing.boundary_prob.gather(1, index)).clamp(EMA_CLAMP, 1 - EMA_CLAMP)
        smoothed = ema(chunks, prob, inner.starts)
        if state is not None:
            last = valid_lengths(inner, *chunks.shape[:2], chunks.device) - 1
            state.copy_(smoothed.detach()[torch.arange(chunks.shape[0], device=chunks.device), last])
        smoothed = smoothed.to(chunks.dtype)
        chunk_of = routing.boundary_mask.long().cumsum(dim=1) - 1  # chunk each position belongs to
        return smoothed.gather(1, chunk_of[..., None].expand(-1, -1, smoothed.shape[-1]))

    @staticmethod
    def allocate_state(batch_size: int, d_model: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The last smoothed value of each row (B, D), kept in the compute dtype like the forward's EMA."""
        return torch.zeros(batch_size, d_model, dtype=compute_dtype(dtype), device=device)

    def step(
        self,
        inner: torch.Tensor | None,
        prob: torch.Tensor,
        fired: torch.Tensor,
        state: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """Dechunk one position of each row in ``rows`` (k,). ``inner`` holds the inner network's outputs for the rows
        ``fired`` (indices into ``rows``, where a chunk starts); the others repeat their previous value (k, D)."""
        value = state[rows]
        if inner is not None:
            P = upcast(prob[fired]).clamp(EMA_CLAMP, 1 - EMA_CLAMP)[:, None]
            value[fired] = (P * upcast(inner) + (1 - P) * value[fired]).to(value.dtype)
            state[rows] = value
        return value


def straight_through(values: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """values * STE(c): exactly `values` in the forward pass; gradient sum(grad * values) reaches c."""
    return values + values * (confidence - confidence.detach())[..., None]


def ratio_loss(routing: RoutingOutput, target: float) -> torch.Tensor:
    """Paper eq. 10: N/(N-1) * ((N-1) F G + (1-F)(1-G)); F = fraction selected (no gradient), G = mean p.

    Averages run over every position of the stage, padding included, as the official helper does.
    """
    if target <= 1:
        raise ValueError(f"the ratio-loss target N (bytes per chunk) must be > 1, got {target}")
    G = upcast(routing.boundary_prob).mean()  # float32, or float64 in a float64 model
    F_ = routing.boundary_mask.to(G.dtype).mean()
    return target / (target - 1) * ((target - 1) * F_ * G + (1 - F_) * (1 - G))
