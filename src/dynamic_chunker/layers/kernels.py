"""Optional fused CUDA kernels for the same math as the pure-PyTorch layers.

When ``mamba_ssm`` (SSD scan), ``causal_conv1d`` (depthwise causal conv + SiLU) or ``flash_attn`` (attention) can be
imported, the layers hand them their work for CUDA tensors of a supported dtype; otherwise, and for every call with
a feature a kernel lacks, they take their pure-PyTorch path, which then runs exactly as without this module.

Each wrapper takes our argument conventions (``starts`` marks document starts, as in :class:`Segments`) and returns
the result, or None when it does not apply, so that a layer reads ``out = kernel(...)`` / ``if out is None: ...``.
Per-document resets map onto the kernels' own: ``seq_idx`` (document index per position) for the scan and the conv,
``cu_seqlens`` (documents laid end to end) for attention.

Switch them off with the environment variable ``DYNAMIC_CHUNKER_KERNELS=0`` (read once, at import) or, within a
process, with ``with use_kernels(False): ...`` (e.g. to compare both paths). ``usage`` counts kernel calls by name.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

ENVIRONMENT_VARIABLE = "DYNAMIC_CHUNKER_KERNELS"
# Device types on which the kernels run (tests add "cpu" to exercise the wiring with fake kernels).
KERNEL_DEVICES = frozenset({"cuda"})
# Input dtypes each kernel accepts; any other dtype (float64 in particular) takes the PyTorch path.
SUPPORTED_DTYPES = {
    "ssd_scan": frozenset({torch.float32, torch.float16, torch.bfloat16}),
    "conv_silu": frozenset({torch.float32, torch.float16, torch.bfloat16}),
    "attention": frozenset({torch.float16, torch.bfloat16}),
}
# Largest head dim flash-attn supports; it also wants head dims in multiples of 8.
FLASH_MAX_HEAD_DIM = 256
# causal_conv1d's channel-last layout (the only one with seq_idx) wants channels in multiples of 8, widths 2..4.
CONV_CHANNEL_MULTIPLE = 8
CONV_WIDTHS = range(2, 5)

usage: Counter[str] = Counter()
_enabled = os.environ.get(ENVIRONMENT_VARIABLE, "1").strip() != "0"


@dataclass(frozen=True)
class Kernels:
    ssd_scan: Callable | None = None  # mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined
    conv1d: Callable | None = None  # causal_conv1d.causal_conv1d_fn
    attention: Callable | None = None  # flash_attn.flash_attn_func
    attention_varlen: Callable | None = None  # flash_attn.flash_attn_varlen_func


def _load(module: str, name: str) -> Callable | None:
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # not installed, or a build that does not match this torch/CUDA (ImportError, OSError, ...)
        return None


CPP_COMPILERS = ("c++", "g++", "clang++")


def can_compile(device: torch.device | str) -> bool:
    """Whether ``torch.compile`` can build code for ``device``: on CPU it builds C++, so a compiler must be on PATH."""
    return torch.device(device).type != "cpu" or any(shutil.which(cc) for cc in CPP_COMPILERS)


@functools.cache
def available() -> Kernels:
    """The importable kernels, looked up once (``available.cache_clear()`` looks again)."""
    return Kernels(
        ssd_scan=_load("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
        conv1d=_load("causal_conv1d", "causal_conv1d_fn"),
        attention=_load("flash_attn", "flash_attn_func"),
        attention_varlen=_load("flash_attn", "flash_attn_varlen_func"),
    )


@contextlib.contextmanager
def use_kernels(enabled: bool) -> Iterator[None]:
    """Within the block, use the kernels where they apply (True) or always take the pure-PyTorch path (False)."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def kernels_enabled() -> bool:
    return _enabled


def applies(name: str, *tensors: torch.Tensor) -> bool:
    """Whether the kernel ``name`` (a key of SUPPORTED_DTYPES) is on, importable and takes these tensors."""
    if not _enabled or torch.compiler.is_compiling():  # compiled regions take the pure path (no graph break)
        return False
    kernel = {"ssd_scan": available().ssd_scan, "conv_silu": available().conv1d, "attention": available().attention}
    return (
        kernel[name] is not None
        and all(t.device.type in KERNEL_DEVICES and t.dtype in SUPPORTED_DTYPES[name] for t in tensors)
    )


def _document_index(starts: torch.Tensor | None) -> torch.Tensor | None:
    """(B, L) int32 index of each position's document (seq_idx); column 0 always starts one, marked or not."""
    return None if starts is None else starts.int().cumsum(dim=1, dtype=torch.int32)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    chunk_size: int,
    starts: torch.Tensor | None,
    final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T, y_t = S_t C_t + D x_t, restarted at ``starts``; or None.

    Shapes: x (b, l, h, p), dt (b, l, h) already positive (softplus and bias applied by the caller), A (h,),
    B and C (b, l, n) shared by all heads, D (h,) or None. Returns y (b, l, h, p) in x's dtype and, if
    ``final_state``, the state after the last position (b, h, p, n), else None.
    """
    if not applies("ssd_scan", x, B, C):
        return None
    usage["ssd_scan"] += 1
    out = available().ssd_scan(
        x,
        dt,
        A,
        B[:, :, None],  # one group
        C[:, :, None],
        chunk_size,
        D=D,
        z=None,  # the gate goes through our gated RMSNorm, after the scan
        dt_bias=None,
        dt_softplus=False,
        seq_idx=_document_index(starts),
        return_final_states=final_state,
    )
    return (out[0], out[1]) if final_state else (out, None)


def conv_silu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, starts: torch.Tensor | None
) -> torch.Tensor | None:
    """SiLU(causal depthwise conv) of x (b, l, c) with kernel (c, 1, K), restarted at ``starts``; or None.

    The weights are cast to x's dtype, as F.conv1d under autocast does. The result is (b, l, c) in x's dtype.
    """
    channels, width = x.shape[-1], weight.shape[-1]
    if not (applies("conv_silu", x) and channels % CONV_CHANNEL_MULTIPLE == 0 and width in CONV_WIDTHS):
        return None
    usage["conv_silu"] += 1
    channel_last = x.contiguous().transpose(1, 2)  # (b, c, l) with channels adjacent in memory
    out = available().conv1d(
        channel_last,
        weight[:, 0, :].to(x.dtype),
        bias.to(x.dtype),
        seq_idx=_document_index(starts),
        activation="silu",
    )
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, starts: torch.Tensor | None
) -> torch.Tensor | None:
    """Causal softmax attention, key j visible from query i iff i - window <= j <= i (window -1: all), within
    the query's document; q, k, v (b, l, h, d). Returns (b, l, h, d), or None.

    Under autocast to a half dtype, float32 inputs are cast to it, as F.scaled_dot_product_attention does.
    """
    found = available()
    dtype = _autocast_half_dtype(q) or q.dtype
    head_dim = q.shape[-1]
    if not (
        _enabled
        and found.attention is not None
        and (starts is None or found.attention_varlen is not None)
        and all(t.device.type in KERNEL_DEVICES for t in (q, k, v))
        and dtype in SUPPORTED_DTYPES["attention"]
        and head_dim % 8 == 0
        and head_dim <= FLASH_MAX_HEAD_DIM
    ):
        return None
    q, k, v = (t.to(dtype) for t in (q, k, v))
    window_size = (window, 0) if window >= 0 else (-1, -1)
    if starts is None:
        usage["attention"] += 1
        return found.attention(q, k, v, causal=True, window_size=window_size)
    # documents laid end to end: row starts and marked starts begin one
    b, l, h, d = q.shape
    new_document = starts.clone()
    new_document[:, 0] = True
    first = new_document.flatten().nonzero().flatten()
    cu_seqlens = torch.cat([first, first.new_tensor([b * l])]).to(torch.int32)
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    usage["attention_varlen"] += 1
    out = found.attention_varlen(
        *(t.reshape(b * l, h, d) for t in (q, k, v)),
        cu_seqlens,
        cu_seqlens,
        longest,
        longest,
        causal=True,
        window_size=window_size,
    )
    return out.view(b, l, h, d)


def _autocast_half_dtype(q: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype for q's device when autocast is on, q is float32 and that dtype is a half one."""
    device = q.device.type
    if q.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    return dtype if dtype in (torch.float16, torch.bfloat16) else None
