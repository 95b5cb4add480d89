"""Element-wise chains of the Mamba-2 block as autograd Functions whose backward recomputes instead of storing.

Plain autograd keeps every intermediate of such a chain (the conv output before and after SiLU, the gated product,
the normalised values) and, on CPU, runs the conv through a (B, C, L) layout that costs transposed copies and a slow
strided ``silu_backward``. These Functions keep only their inputs, stay in the (B, L, C) layout and recompute the
cheap parts in the backward pass. Their forward is the same arithmetic as the plain composition (tests compare
values and gradients in float64, ``gradcheck`` included). They stay inside torch.compile regions: on CPU, compiled
blocks ran faster than eager with them and slower than eager with the plain ops in their place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def keep_masks(starts: torch.Tensor | None, K: int, dtype: torch.dtype) -> list[torch.Tensor | None]:
    """keep[k] (B, L, 1): 1 where position t - k is in t's document (no start in (t - k, t]); None without starts."""
    if starts is None:
        return [None] * K
    l = starts.shape[1]
    keep, same_doc = [None], torch.ones_like(starts, dtype=dtype)
    for k in range(1, K):  # loop over the kernel taps, not over positions
        start_k = F.pad(starts.to(dtype), (k - 1, 0))[:, :l]  # starts[t - k + 1]
        same_doc = same_doc * (1 - start_k)
        keep.append(same_doc[..., None])
    return keep


def causal_conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, keep: list[torch.Tensor | None]) -> torch.Tensor:
    """bias + sum_k x[t - k] w[:, K-1-k] (times keep[k], see :func:`keep_masks`) for x (B, L, C), w (C, K): a new
    (B, L, C) tensor. A sum of K shifted products reads x in place (no transposed copy as F.conv1d's layout needs)."""
    K, l = w.shape[-1], x.shape[1]
    out = torch.addcmul(bias, x, w[:, K - 1])
    for k in range(1, min(K, l)):
        if keep[k] is None:
            out[:, k:].addcmul_(x[:, : l - k], w[:, K - 1 - k])
        else:
            out[:, k:] += x[:, : l - k] * w[:, K - 1 - k] * keep[k][:, k:]
    return out


class _ConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, starts):
        K = weight.shape[-1]
        w, b = weight[:, 0, :].to(x.dtype), bias.to(x.dtype)
        keep = keep_masks(starts, K, x.dtype)
        ctx.save_for_backward(x, w, b, *(m for m in keep if m is not None))
        ctx.weight_dtype, ctx.bias_dtype, ctx.has_starts = weight.dtype, bias.dtype, starts is not None
        return F.silu(causal_conv(x, w, b, keep), inplace=True)

    @staticmethod
    def backward(ctx, grad):
        x, w, b, *masks = ctx.saved_tensors
        K = w.shape[-1]
        keep = [None, *masks] if ctx.has_starts else [None] * K
        grad_pre = torch.ops.aten.silu_backward(grad.contiguous(), causal_conv(x, w, b, keep))
        if torch.compiler.is_compiling():
            grad_x, grad_w = _conv_grads_full_length(grad_pre, x, w, keep)
        else:
            grad_x, grad_w = _conv_grads_sliced(grad_pre, x, w, keep)
        grad_b = grad_pre.sum((0, 1))
        return grad_x, grad_w[:, None, :].to(ctx.weight_dtype), grad_b.to(ctx.bias_dtype), None


def _conv_grads_sliced(grad_pre, x, w, keep):
    """grad_x and grad_w (C, K) of the causal conv, each tap on the slices where it applies: fewest element-wise
    passes for eager PyTorch."""
    K, l = w.shape[-1], x.shape[1]
    grad_x = grad_pre * w[:, K - 1]
    grad_w = torch.empty_like(w)
    grad_w[:, K - 1] = (grad_pre * x).sum((0, 1))
    for k in range(1, K):
        if k >= l:
            grad_w[:, K - 1 - k] = 0
            continue
        g = grad_pre[:, k:] if keep[k] is None else grad_pre[:, k:] * keep[k][:, k:]  # d out[t] / d x[t - k]
        grad_x[:, : l - k].addcmul_(g, w[:, K - 1 - k])
        grad_w[:, K - 1 - k] = (g * x[:, : l - k]).sum((0, 1))
    return grad_x, grad_w


def _conv_grads_full_length(grad_pre, x, w, keep):
    """The same gradients with every tap's product over the full length (zeros shifted in at the ends). In a
    torch.compile region the K weight reductions then share one loop over the data (sliced, each tap was a loop
    of its own that recomputed grad_pre): the compiled conv backward is about 1.3x faster."""
    K, l = w.shape[-1], x.shape[1]
    x_before = F.pad(x, (0, 0, K - 1, 0))  # x_before[:, t + K - 1 - k] = x[t - k], 0 for t < k
    grad_after = F.pad(grad_pre, (0, 0, 0, K - 1))  # grad_after[:, s + k] = grad_pre[s + k], 0 past the end
    grad_x, grad_w = None, []
    for k in range(K):
        g = grad_pre if keep[k] is None else grad_pre * keep[k]  # d out[t] / d x[t - k]
        grad_w.append((g * x_before[:, K - 1 - k : K - 1 - k + l]).sum((0, 1)))
        g_ahead = grad_after[:, k : k + l]  # at s: d out[s + k] / d x[s], before the keep mask
        if keep[k] is not None:
            g_ahead = g_ahead * F.pad(keep[k], (0, 0, 0, k))[:, k : k + l]
        term = g_ahead * w[:, K - 1 - k]
        grad_x = term if grad_x is None else grad_x + term
    return grad_x, torch.stack(grad_w[::-1], dim=-1)


def conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, starts: torch.Tensor | None) -> torch.Tensor:
    """SiLU(causal depthwise conv) of x (B, L, C) with kernel (C, 1, K) and bias (C,), restarted at ``starts``
    (B, L) bool (inputs from an earlier document count as zeros). Weights are cast to x's dtype (as F.conv1d under
    autocast); the result is (B, L, C) in x's dtype, contiguous. The backward recomputes the conv output."""
    return _ConvSiLU.apply(x, weight, bias, starts)


class _GatedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, weight, eps, out_dtype):
        out, rstd = torch.ops.aten._fused_rms_norm(y * F.silu(z), y.shape[-1:], weight.to(y.dtype), eps)
        ctx.save_for_backward(y, z, weight, rstd)
        return out.to(out_dtype)

    @staticmethod
    def backward(ctx, grad):
        y, z, weight, rstd = ctx.saved_tensors
        grad = grad.to(y.dtype)
        silu = F.silu(z)
        normed = y * silu * rstd  # x / rms(x) for x = y * silu(z)
        grad_weight = (grad * normed).flatten(0, -2).sum(0).to(weight.dtype)
        grad_normed = grad * weight.to(y.dtype)
        # d(x * rstd)/dx applied to g: rstd * (g - normed * mean(g * normed))
        grad_x = (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True)) * rstd
        return grad_x * silu, torch.ops.aten.silu_backward(grad_x * y, z), grad_weight, None, None


def gated_rms_norm(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype
) -> torch.Tensor:
    """RMSNorm(y * SiLU(z)) * weight over the last dim; y and z (..., D) in their compute dtype, weight (D,).
    The backward recomputes SiLU(z) and the normalised values from y, z and the saved 1 / rms."""
    return _GatedRMSNorm.apply(y, z, weight, eps, out_dtype)
