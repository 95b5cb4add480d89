"""Causal multi-head self-attention with partial NeoX rotary embeddings and an optional sliding window."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .cache import KVCache, valid_lengths
from .segments import Segments


def rotary_cos_sin(positions: torch.Tensor, rotary_dim: int, dtype: torch.dtype, base: float = 10000.0):
    """cos/sin tables (..., rotary_dim / 2) from float32 positions and frequencies, cast to the activation dtype."""
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32) / rotary_dim)
    angles = positions.float()[..., None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2*cos.shape[-1] dims of each head, split in halves (non-interleaved); x is (b, l, h, d)."""
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


def attention_mask(length: int, window: int, segments: Segments, device: torch.device) -> torch.Tensor | None:
    """Boolean mask (True = may attend) for key j from query i, or None when plain causal masking suffices."""
    if window < 0 and segments.starts is None:
        return None
    i = torch.arange(length, device=device)
    allowed = i[None, :] <= i[:, None]
    if window >= 0:
        allowed = allowed & (i[:, None] - i[None, :] <= window)
    if segments.starts is not None:
        docs = segments.doc_ids
        allowed = allowed & (docs[:, :, None] == docs[:, None, :])
        return allowed[:, None]  # (b, 1, l, l)
    return allowed


def windowed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, doc_ids: torch.Tensor | None
) -> torch.Tensor:
    """Sliding-window causal attention in blocks: memory and time O(L * window) instead of O(L^2).

    q, k, v (b, h, L, d). Queries go in blocks of ``window + 1``; block z only sees the keys from its first
    position minus ``window`` to its last, through one (block, block + window) mask, so every query sees exactly
    the keys of :func:`attention_mask`. ``doc_ids`` (b, L) additionally restricts keys to the query's document.
    """
    b, h, l, d = q.shape
    block = window + 1
    n = -(-l // block)
    pad = n * block - l
    span = block + window  # keys visible from some query of a block

    def key_blocks(t: torch.Tensor) -> torch.Tensor:  # (b, h, L, d) -> (b * n, h, span, d)
        t = F.pad(t, (0, 0, window, pad)).unfold(2, span, block)  # (b, h, n, d, span)
        return t.permute(0, 2, 1, 4, 3).reshape(b * n, h, span, d)

    queries = F.pad(q, (0, 0, 0, pad)).view(b, h, n, block, d).transpose(1, 2).reshape(b * n, h, block, d)
    i = torch.arange(block, device=q.device)[:, None]
    j = torch.arange(span, device=q.device)[None, :]
    first_key = torch.arange(n, device=q.device)[:, None, None] * block - window  # position of key j = 0
    allowed = (j >= i) & (j <= i + window) & (first_key + j >= 0)  # (n, block, span)
    if doc_ids is None:
        allowed = allowed.expand(b, n, block, span)
    else:
        docs = F.pad(doc_ids, (window, pad), value=-1)  # padding: a document of its own
        query_docs = docs[:, window:].view(b, n, block, 1)
        key_docs = docs.unfold(1, span, block)[:, :, None, :]  # (b, n, 1, span)
        allowed = allowed & (query_docs == key_docs)
    out = F.scaled_dot_product_attention(
        queries, key_blocks(k), key_blocks(v), attn_mask=allowed.reshape(b * n, 1, block, span)
    )
    return out.view(b, n, h, block, d).transpose(1, 2).reshape(b, h, n * block, d)[:, :, :l]


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, rotary_dim: int, window_size: int = -1, device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.rotary_dim = rotary_dim
        self.window_size = window_size  # keys i - window .. i are visible; -1 = all
        self.Wqkv = nn.Linear(d_model, 3 * d_model, bias=False, device=device, dtype=dtype)
        self.out_proj = nn.Linear(d_model, d_model, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, segments: Segments, cache: KVCache | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D). With ``cache``, also store the keys/values each row's next steps can see."""
        b, l, d = x.shape
        q, k, v = self.Wqkv(x).view(b, l, 3, self.num_heads, self.head_dim).unbind(dim=2)
        if self.rotary_dim:
            cos, sin = rotary_cos_sin(segments.positions(l, x.device), self.rotary_dim, x.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            cache.prefill(k, v, valid_lengths(segments, b, l, x.device))
        out = kernels.attention(q, k, v, self.window_size, segments.starts)  # (b, l, h, d_h) or None
        if out is None:
            out = self._attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), segments).transpose(1, 2)
        return self.out_proj(out.reshape(b, l, d))

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
        """The pure-PyTorch attention over (b, h, l, d_h)."""
        l = q.shape[2]
        if 0 <= self.window_size < l - 1:  # the window hides some keys: attend block by block
            doc_ids = segments.doc_ids if segments.starts is not None else None
            return windowed_attention(q, k, v, self.window_size, doc_ids)
        mask = attention_mask(l, self.window_size, segments, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)

    # ------------------------------------------------------------------ decoding
    def allocate_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        slots = max_seqlen if self.window_size < 0 else min(max_seqlen, self.window_size + 1)
        shape = (batch_size, slots, self.num_heads, self.head_dim)
        return KVCache(
            keys=torch.zeros(shape, dtype=dtype, device=device),
            values=torch.zeros(shape, dtype=dtype, device=device),
            positions=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def step(self, x: torch.Tensor, cache: KVCache, rows: torch.Tensor) -> torch.Tensor:
        """One new position for the batch rows ``rows``: x (k, D) -> (k, D); each row has its own position."""
        n, d = x.shape
        q, k, v = self.Wqkv(x).view(n, 3, self.num_heads, self.head_dim).unbind(dim=1)
        pos = cache.positions[rows]
        if self.rotary_dim:
            cos, sin = rotary_cos_sin(pos, self.rotary_dim, x.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        slots = cache.keys.shape[1]
        cache.keys[rows, pos % slots] = k.to(cache.keys.dtype)
        cache.values[rows, pos % slots] = v.to(cache.values.dtype)
        cache.positions[rows] = pos + 1
        cache.filled = min(slots, cache.filled + 1)
        keys = cache.keys[rows, : cache.filled].to(q.dtype)
        values = cache.values[rows, : cache.filled].to(q.dtype)
        visible = torch.arange(cache.filled, device=x.device) <= pos[:, None]  # see KVCache
        out = F.scaled_dot_product_attention(
            q[:, :, None], keys.transpose(1, 2), values.transpose(1, 2), attn_mask=visible[:, None, None, :]
        )
        return self.out_proj(out.reshape(n, d))
