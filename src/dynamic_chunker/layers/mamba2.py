"""Mamba-2 mixer in pure PyTorch: the chunked SSD scan for whole sequences.

Same parameters and math as ``mamba_ssm.Mamba2`` with the defaults H-Net uses
(head dim 64, one B/C group, per-head D, gated RMSNorm with the gate applied
before the norm, no projection biases, conv bias).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import fused, kernels
from .cache import MambaCache, valid_lengths
from .norm import GatedRMSNorm
from .precision import compute_dtype
from .segments import Segments

# log-decay that empties the state at a document start: exp() of it (and of any sum containing it)
# is exactly 0 in float32/float64, while staying finite so that no inf - inf can ever appear.
RESET_LOG_DECAY = -1.0e4
# Tiles per tile-of-tiles when many tiles carry their states forward (see chunked_scan, step 3): keeps that step
# linear in the sequence length; at least 2 so that every level of tiles is shorter than the one below.
MIN_OUTER_TILE = 16
# Tile size of the pure-PyTorch scan on CPU (see Mamba2.scan_tile).
CPU_SCAN_TILE = 64
# Log-decays below this are raised to it before exp (see decay_exp): far enough above the dtype's underflow
# (about -87 in float32) that products of the result with ordinary values stay normal numbers.
EXP_FLOOR = {torch.float32: -60.0, torch.bfloat16: -60.0, torch.float64: -600.0, torch.float16: -9.0}


def decay_exp(log_decay: torch.Tensor) -> torch.Tensor:
    """exp of log-decays (<= 0, -inf allowed) with exponents clamped to [EXP_FLOOR, 0].

    On CPU, exp of an exponent whose result underflows (below about -87 in float32: strong decays, resets, the
    -inf of masked entries) or overflows takes a scalar fallback about 100x slower than the vectorised path, and
    results near the underflow make the matmuls that use them slow (denormal products). The clamped exponents give
    exp(EXP_FLOOR) (about 1e-26 in float32) instead of something smaller, far below the rounding of any value they
    are added to; where a result must be exactly 0 (above a tile's diagonal, across a reset) callers zero it.
    """
    return torch.exp(log_decay.clamp(min=EXP_FLOOR.get(log_decay.dtype, -60.0), max=0.0))


def tile_decay(a: torch.Tensor, resets: bool = True, causal: bool = True) -> torch.Tensor:
    """exp(sum_{k=j+1}^{i} a_k) for tiles a (..., Q) -> (..., Q, Q): the decay from position j to position i >= j
    (0 above the diagonal).

    Computed from differences of prefix sums (one pass instead of a Q x Q cumulative sum). The prefix sums
    and their differences are float64, so that long stretches of strong decay (prefix sums in the hundreds)
    lose nothing to cancellation; resets (a <= RESET_LOG_DECAY) are also taken out of the prefix sums, and
    every pair (j, i) with a reset in (j, i] gets decay 0, which is what exp of a sum containing it gives.
    ``resets=False`` promises that no value is a reset (the caller knows it, e.g. no document starts): that work
    is skipped without reading the values. ``causal=False`` leaves the entries above the diagonal (finite, at most
    1) for a caller that zeroes them in a smaller tensor it multiplies by (unless there are resets).
    """
    Q = a.shape[-1]
    allowed = None
    if resets:
        reset = a <= RESET_LOG_DECAY
        segment = reset.cumsum(dim=-1)  # resets so far: pairs in the same segment have none in (j, i]
        allowed = causal_mask(Q, torch.bool, a.device) & (segment[..., :, None] == segment[..., None, :])
        a = a.masked_fill(reset, 0.0)
    elif causal:
        allowed = causal_mask(Q, a.dtype, a.device)
    wide = torch.float32 if a.device.type == "mps" else torch.float64  # MPS has no float64
    prefix = a.contiguous().to(wide).cumsum(dim=-1)
    decay = decay_exp((prefix[..., :, None] - prefix[..., None, :]).to(a.dtype))
    return decay if allowed is None else decay * allowed


def causal_mask(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size, size) lower-triangular ones (diagonal included)."""
    return torch.ones(size, size, dtype=dtype, device=device).tril()


def chunked_scan(
    x: torch.Tensor,
    log_decay: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
    resets: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear recurrence S_t = exp(a_t) S_{t-1} + x_t B_t^T,  y_t = S_t C_t, computed in tiles.

    Shapes: x (b, l, h, p), log_decay a (b, l, h), B and C (b, l, n) shared by all heads,
    initial_state (b, h, p, n). Returns y (b, l, h, p) and the final state (b, h, p, n).
    Log decays are <= 0; a value <= RESET_LOG_DECAY empties the state (a document start); ``resets=False``
    promises there is none (see :func:`tile_decay`).
    All arithmetic is float32 (or float64 if the inputs are). Lengths need not be a multiple
    of ``chunk_size``: the tail is padded with a = 0 and zero input, which leaves the state intact.
    Tiles are processed head-major, (b, h, c, Q, ...), so that every product is one batched matmul.
    Autocast is switched off inside: the scan stays in float32 even in a bf16-autocast training step.
    """
    with torch.autocast(x.device.type, enabled=False):
        return _chunked_scan(x, log_decay, B, C, chunk_size, initial_state, resets)


def _chunked_scan(x, log_decay, B, C, chunk_size, initial_state, resets):
    b, l, h, p = x.shape
    n = B.shape[-1]
    Q = max(1, min(chunk_size, l))
    pad = -l % Q
    if pad:
        x, B, C = (F.pad(t, (0,) * (2 * t.dim() - 4) + (0, pad)) for t in (x, B, C))
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
    c = x.shape[1] // Q
    x = x.reshape(b, c, Q, h, p).permute(0, 3, 1, 2, 4).contiguous()  # (b, h, c, Q, p)
    B = B.reshape(b, c, Q, n)
    C = C.reshape(b, c, Q, n)
    a = log_decay.reshape(b, c, Q, h).permute(0, 3, 1, 2).contiguous()  # (b, h, c, Q)

    # 1. within each tile: y_i = sum_{j<=i} exp(a_{j+1..i}) (C_i . B_j) x_j; the causal mask goes on C B^T,
    # which all heads share, rather than on the decays
    decay = tile_decay(a, resets, causal=False)  # (b, h, c, Q, Q)
    scores = (C @ B.transpose(-1, -2)) * causal_mask(Q, C.dtype, C.device)  # (b, c, Q, Q)
    y = (decay * scores[:, None]) @ x

    # 2. state each tile leaves behind if it started from zero: sum_j exp(a_{j+1..Q-1}) x_j B_j^T
    to_end = decay[..., -1, :, None]  # (b, h, c, Q, 1)
    tile_states = x.transpose(-1, -2) @ (to_end * B[:, None])  # (b, h, c, p, n)

    # 3. carry states across tiles: S_z = exp(sum of a over tile z) S_{z-1} + tile_states_z
    if initial_state is None:
        initial_state = x.new_zeros(b, h, p, n)
    initial_state = initial_state.to(tile_states.dtype)
    tile_total = a.sum(-1)  # (b, h, c)
    outer = max(Q, MIN_OUTER_TILE)
    if c + 1 <= outer:  # few tiles: one (c+1) x (c+1) decay matrix
        states = torch.cat([initial_state[:, :, None], tile_states], dim=2).reshape(b, h, c + 1, p * n)
        carried = tile_decay(F.pad(tile_total, (1, 0)), resets) @ states
        carried = carried.reshape(b, h, c + 1, p, n)
        entering, final_state = carried[:, :, :-1], carried[:, :, -1]
    else:  # many tiles: that recurrence is itself a scan (state size p * n, B = C = 1), in tiles of tiles
        ones = x.new_ones(b, c, 1)
        after, final_state = chunked_scan(
            tile_states.permute(0, 2, 1, 3, 4).reshape(b, c, h, p * n),
            tile_total.transpose(1, 2),
            ones,
            ones,
            outer,
            initial_state.reshape(b, h, p * n, 1),
            resets,
        )  # after[:, z] = state after tile z
        after = after.reshape(b, c, h, p, n).transpose(1, 2)
        entering = torch.cat([initial_state[:, :, None], after[:, :, :-1]], dim=2)
        final_state = final_state.reshape(b, h, p, n)

    # 4. contribution of the entering state: exp(a_{0..i}) C_i . S
    # (C_i exp(a_{0..i})) S^T added to y in one batched matmul
    from_start = decay_exp(a.cumsum(dim=-1))[..., None]  # (b, h, c, Q, 1)
    y = torch.baddbmm(
        y.reshape(-1, Q, p), (C[:, None] * from_start).reshape(-1, Q, n), entering.transpose(-1, -2).reshape(-1, n, p)
    )
    return y.reshape(b, h, c, Q, p).permute(0, 2, 3, 1, 4).reshape(b, c * Q, h, p)[:, :l], final_state


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, starts: torch.Tensor | None):
    """Causal depthwise conv over (b, l, c) with kernel (c, 1, K); inputs from earlier documents count as zeros.
    (Training takes :func:`fused.conv_silu`, the same arithmetic with a backward.)"""
    K = weight.shape[-1]
    return fused.causal_conv(x, weight[:, 0, :], bias, fused.keep_masks(starts, K, x.dtype))


class Mamba2(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        chunk_size: int = 256,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        self.chunk_size = chunk_size
        conv_dim = self.d_inner + 2 * d_state
        self.dt_bias = nn.Parameter(torch.empty(self.nheads, **factory))
        self.A_log = nn.Parameter(torch.empty(self.nheads, **factory))
        # fp32 as in mamba_ssm (float64 in a float64 model)
        self.D = nn.Parameter(torch.ones(self.nheads, device=device, dtype=compute_dtype(dtype)))
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + self.nheads, bias=False, **factory)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, **factory)
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **factory)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """mamba_ssm's init: dt log-uniform in [dt_min, dt_max] (bias = softplus^-1(dt)), A in [1, 16], D = 1."""
        if self.dt_bias.is_meta:
            return
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
        self.D.fill_(1.0)

    def forward(self, u: torch.Tensor, segments: Segments, cache: MambaCache | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D). With ``cache``, also store each row's state at its last valid position."""
        b, l, _ = u.shape
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.d_inner + 2 * self.d_state, self.nheads], dim=-1)
        if cache is not None:
            self._prefill_conv(xBC, valid_lengths(segments, b, l, u.device), cache)
        convolved = kernels.conv_silu(xBC, self.conv1d.weight, self.conv1d.bias, segments.starts)
        if convolved is None and torch.is_grad_enabled():
            convolved = fused.conv_silu(xBC, self.conv1d.weight, self.conv1d.bias, segments.starts)
        elif convolved is None:
            convolved = causal_depthwise_conv(xBC, self.conv1d.weight, self.conv1d.bias, segments.starts)
            convolved = F.silu(convolved, inplace=not torch.is_grad_enabled())  # in place: no autograd needs the input
        sizes = [self.d_inner, self.d_state, self.d_state]
        x, B, C = torch.split(convolved, sizes, dim=-1)
        fp = compute_dtype(u.dtype)
        dt = F.softplus(dt.to(fp) + self.dt_bias.to(fp))  # (b, l, h)
        if cache is not None and segments.mask is not None:
            dt = dt * segments.mask[..., None]  # dt = 0 on padding: the state stays as each row's last position left it
        A = -torch.exp(self.A_log.to(fp))
        x = x.reshape(b, l, self.nheads, self.headdim)
        scanned = kernels.ssd_scan(x, dt, A, B, C, self.D, self.chunk_size, segments.starts, cache is not None)
        if scanned is None:
            # the pure scan's inputs in its float32, cast before the split, not part by part: compiled (torch 2.13,
            # CPU), the casts of the bf16 parts gave gradients with non-finite values at fixed positions
            x, B, C = torch.split(convolved.to(fp), sizes, dim=-1)
            x = x.reshape(b, l, self.nheads, self.headdim)
            log_decay = dt * A
            resets = segments.starts is not None  # known from the inputs: the scan need not look for resets
            if resets:
                log_decay = log_decay.masked_fill(segments.starts[..., None], RESET_LOG_DECAY)
            y, final_state = chunked_scan(x * dt[..., None], log_decay, B, C, self.scan_tile(u), resets=resets)
            y = torch.addcmul(y, x, self.D.to(fp)[:, None])  # + D x
        else:
            y, final_state = scanned
        if cache is not None:
            cache.ssm.copy_(final_state.detach())
        y = self.norm(y.reshape(b, l, self.d_inner).to(u.dtype), z)
        return self.out_proj(y)

    def scan_tile(self, u: torch.Tensor) -> int:
        """Tile size of the chunked scan. Any size gives the same result up to rounding; ``chunk_size`` sizes the
        official GPU kernels' tiles, while on CPU tiles of CPU_SCAN_TILE are about 2x faster than 256 (the Q x Q
        decay work per position shrinks, the batched matmuls stay efficient) and keep a quarter of the memory.
        """
        return min(self.chunk_size, CPU_SCAN_TILE) if u.device.type == "cpu" else self.chunk_size

    # ------------------------------------------------------------------ decoding
    def allocate_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype, device: torch.device) -> MambaCache:
        """Zero state; its size does not depend on ``max_seqlen`` (kept for the same signature as attention)."""
        conv_dim = self.d_inner + 2 * self.d_state
        return MambaCache(
            conv=torch.zeros(batch_size, conv_dim, self.d_conv, dtype=dtype, device=device),
            ssm=torch.zeros(
                batch_size, self.nheads, self.headdim, self.d_state, dtype=compute_dtype(dtype), device=device
            ),
        )

    def _prefill_conv(self, xBC: torch.Tensor, lengths: torch.Tensor, cache: MambaCache) -> None:
        """Keep the d_conv conv inputs that end at each row's last valid position (zeros before the start)."""
        K = self.d_conv
        padded = F.pad(xBC.detach(), (0, 0, K, 0))  # position t sits at t + K
        index = lengths[:, None] + torch.arange(K, device=xBC.device)  # positions length - K .. length - 1
        window = padded.gather(1, index[..., None].expand(-1, -1, xBC.shape[-1]))
        cache.conv.copy_(window.transpose(1, 2))

    def step(self, u: torch.Tensor, cache: MambaCache, rows: torch.Tensor) -> torch.Tensor:
        """One new position for the batch rows ``rows``: u (k, D) -> (k, D). The math of ``forward`` as a recurrence."""
        k = u.shape[0]
        fp = compute_dtype(u.dtype)
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.d_inner + 2 * self.d_state, self.nheads], dim=-1)
        window = torch.cat([cache.conv[rows, :, 1:], xBC[..., None].to(cache.conv.dtype)], dim=-1)
        cache.conv[rows] = window
        conv = (window.to(fp) * self.conv1d.weight[:, 0, :].to(fp)).sum(-1) + self.conv1d.bias.to(fp)
        xBC = F.silu(conv.to(u.dtype))
        x, B, C = torch.split(xBC, [self.d_inner, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt.to(fp) + self.dt_bias.to(fp))  # (k, h)
        decay = torch.exp(dt * -torch.exp(self.A_log.to(fp)))
        x = x.reshape(k, self.nheads, self.headdim).to(fp)
        state = (
            cache.ssm[rows].to(fp) * decay[..., None, None]
            + (dt[..., None] * x)[..., None] * B.to(fp)[:, None, None, :]
        )
        cache.ssm[rows] = state.to(cache.ssm.dtype)
        y = (state @ C.to(fp)[:, None, :, None]).squeeze(-1) + x * self.D.to(fp)[:, None]
        y = self.norm(y.reshape(k, self.d_inner).to(u.dtype), z)
        return self.out_proj(y)
