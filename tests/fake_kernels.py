"""Fake ``mamba_ssm`` / ``causal_conv1d`` / ``flash_attn`` modules for CPU tests of the optional-kernel wiring.

Each fake takes the real kernel's documented arguments, asserts their layouts, records the call in CALLS, and
computes the documented math directly (a position-by-position recurrence, a tap-by-tap conv, a masked softmax)
in float64, returning the kernel's output dtype.
"""

import math
import sys
import types

import torch
import torch.nn.functional as F

from dynamic_chunker.layers import kernels

ALL_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
CALLS: list[tuple[str, dict]] = []


def fake_ssd_scan(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    cu_seqlens=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
):
    """mamba_chunk_scan_combined: S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T (reset where seq_idx changes),
    y_t = C_t S_t + D x_t, times SiLU(z) if given."""
    CALLS.append(("ssd_scan", locals().copy()))
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    assert dt.shape == (b, l, h) and A.shape == (h,) and B.shape == C.shape == (b, l, g, n) and h % g == 0
    assert isinstance(chunk_size, int) and chunk_size > 0
    if seq_idx is not None:
        assert seq_idx.dtype == torch.int32 and seq_idx.shape == (b, l)
    dt = dt.double() + (0 if dt_bias is None else dt_bias.double())
    dt = F.softplus(dt) if dt_softplus else dt
    x64, A64 = x.double(), A.double()
    B64, C64 = (t.double().repeat_interleave(h // g, dim=2) for t in (B, C))  # (b, l, h, n)
    state = x64.new_zeros(b, h, p, n) if initial_states is None else initial_states.double()
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A64)  # (b, h)
        if seq_idx is not None and t > 0:
            decay = decay * (seq_idx[:, t] == seq_idx[:, t - 1])[:, None]
        state = decay[..., None, None] * state + (dt[:, t, :, None] * x64[:, t])[..., None] * B64[:, t, :, None, :]
        y = (state @ C64[:, t, :, :, None])[..., 0]  # (b, h, p)
        if D is not None:
            y = y + x64[:, t] * (D.double()[:, None] if D.dim() == 1 else D.double())
        ys.append(y)
    y = torch.stack(ys, dim=1)
    if z is not None:
        y = y * F.silu(z.double())
    out = y.to(x.dtype)
    return (out, state.to(torch.promote_types(x.dtype, torch.float32))) if return_final_states else out


def fake_conv1d(
    x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False, final_states_out=None, **kw
):
    """causal_conv1d_fn over (b, c, l), weight (c, w): out_t = bias + sum_k w[:, k] x_{t-w+1+k} within the document."""
    activation = kw.pop("activation", None)
    assert not kw and initial_states is None and not return_final_states
    CALLS.append(("conv1d", {"x": x, "weight": weight, "bias": bias, "seq_idx": seq_idx, "activation": activation}))
    b, c, l = x.shape
    w = weight.shape[1]
    assert weight.shape == (c, w) and bias.shape == (c,) and activation in (None, "silu", "swish")
    if seq_idx is not None:  # the library supports seq_idx only in the channel-last layout
        assert x.stride(1) == 1 and c % 8 == 0 and seq_idx.dtype == torch.int32 and seq_idx.shape == (b, l)
    x64, w64 = x.double(), weight.double()
    out = bias.double()[None, :, None].expand(b, c, l).clone()
    for k in range(w):
        shift = w - 1 - k  # tap k reads position t - shift
        shifted = F.pad(x64, (shift, 0))[..., :l]
        if seq_idx is not None:
            same = seq_idx == F.pad(seq_idx, (shift, 0), value=-1)[:, :l]
            shifted = shifted * same[:, None]
        out = out + w64[None, :, k, None] * shifted
    out = F.silu(out) if activation else out
    return out.to(x.dtype)


def naive_attention(q, k, v, causal, window_size, same_doc=None):
    """(b, l, h, d) softmax attention in float64: key j visible iff j <= i (causal), i - j <= left, j - i <= right."""
    l = q.shape[1]
    i, j = torch.arange(l)[:, None], torch.arange(l)[None, :]
    allowed = torch.ones(l, l, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    left, right = window_size
    if left >= 0:
        allowed &= i - j <= left
    if right >= 0:
        allowed &= j - i <= right
    if same_doc is not None:
        allowed = allowed & same_doc
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) / math.sqrt(q.shape[-1])
    probs = scores.masked_fill(~allowed, -math.inf).softmax(dim=-1)
    return torch.einsum("bhij,bjhd->bihd", probs, v.double()).to(q.dtype)


def fake_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), **kw):
    CALLS.append(("attention", {"q": q, "causal": causal, "window_size": window_size, **kw}))
    assert q.dim() == 4 and q.shape == k.shape == v.shape and q.dtype in kernels.SUPPORTED_DTYPES["attention"]
    assert dropout_p == 0.0 and softmax_scale is None
    return naive_attention(q, k, v, causal, window_size)


def fake_flash_attn_varlen_func(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None, **kw
):
    causal, window_size = kw.pop("causal", False), kw.pop("window_size", (-1, -1))
    CALLS.append(("attention_varlen", {"q": q, "cu_seqlens": cu_seqlens_q, "max_seqlen": max_seqlen_q, **kw}))
    CALLS[-1][1].update(causal=causal, window_size=window_size)
    total = q.shape[0]
    assert q.dim() == 3 and q.shape == k.shape == v.shape and q.dtype in kernels.SUPPORTED_DTYPES["attention"]
    assert cu_seqlens_q.dtype == torch.int32 and torch.equal(cu_seqlens_q, cu_seqlens_k)
    assert cu_seqlens_q[0] == 0 and cu_seqlens_q[-1] == total and bool((cu_seqlens_q.diff() > 0).all())
    assert max_seqlen_q == max_seqlen_k == int(cu_seqlens_q.diff().max())
    doc = torch.zeros(total, dtype=torch.long).index_fill_(0, cu_seqlens_q[1:-1].long(), 1).cumsum(0)
    out = naive_attention(q[None], k[None], v[None], causal, window_size, doc[:, None] == doc[None, :])
    return out[0]


def install(monkeypatch, on_cpu: bool = False) -> list[tuple[str, dict]]:
    """Put the fakes where the kernel detection finds them; with ``on_cpu`` they also take CPU tensors of every
    dtype (float64 included, for exact comparisons). Returns the list of recorded calls."""
    modules = {name: types.ModuleType(name) for name in ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton"]}
    modules["mamba_ssm.ops.triton.ssd_combined"] = types.SimpleNamespace(mamba_chunk_scan_combined=fake_ssd_scan)
    modules["causal_conv1d"] = types.SimpleNamespace(causal_conv1d_fn=fake_conv1d)
    modules["flash_attn"] = types.SimpleNamespace(
        flash_attn_func=fake_flash_attn_func, flash_attn_varlen_func=fake_flash_attn_varlen_func
    )
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    if on_cpu:
        monkeypatch.setattr(kernels, "KERNEL_DEVICES", frozenset({"cuda", "cpu"}))
        monkeypatch.setattr(kernels, "SUPPORTED_DTYPES", {name: ALL_DTYPES for name in kernels.SUPPORTED_DTYPES})
    kernels.available.cache_clear()
    kernels.usage.clear()
    CALLS.clear()
    return CALLS
