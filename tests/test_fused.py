"""The recomputing autograd Functions (layers/fused.py) against the plain autograd compositions they replace."""

import pytest
import torch
import torch.nn.functional as F

from dynamic_chunker.layers.fused import conv_silu, gated_rms_norm


def plain_conv_silu(x, weight, bias, starts):
    """SiLU of F.conv1d run separately on every document of every row (the definition)."""
    K, c = weight.shape[-1], x.shape[-1]
    rows = []
    for row in range(x.shape[0]):
        marks = [] if starts is None else starts[row, 1:].nonzero().flatten().add(1).tolist()
        bounds = [0, *marks, x.shape[1]]
        docs = [x[row, lo:hi].T[None] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        rows.append(torch.cat([F.conv1d(F.pad(d, (K - 1, 0)), weight, bias, groups=c)[0].T for d in docs]))
    return F.silu(torch.stack(rows))


def conv_inputs(b, l, c, K, rate, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, c, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(c, 1, K, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, generator=gen, dtype=torch.float64, requires_grad=True)
    starts = None
    if rate:
        starts = torch.rand(b, l, generator=gen) < rate
        starts[:, 0] = False
    return x, weight, bias, starts


def assert_same_outputs_and_gradients(out, expected, inputs):
    """float64: the same values, and the same gradients of the inputs for a random output gradient."""
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(expected, inputs, grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("compiled_backward", [False, True])
@pytest.mark.parametrize("rate", [0.0, 0.3])
@pytest.mark.parametrize(("l", "K"), [(7, 4), (2, 4), (1, 3), (5, 1)])
def test_conv_silu_matches_per_document_conv(l, K, rate, compiled_backward, monkeypatch):
    # compiled_backward: the backward that torch.compile regions trace (every tap over the full length), run here
    # eagerly so that float64 checks it against the definition
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiled_backward)
    x, weight, bias, starts = conv_inputs(2, l, 3, K, rate, seed=l * 10 + K)
    assert_same_outputs_and_gradients(
        conv_silu(x, weight, bias, starts), plain_conv_silu(x, weight, bias, starts), (x, weight, bias)
    )


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_conv_silu_gradcheck(rate):
    x, weight, bias, starts = conv_inputs(2, 9, 3, 4, rate, seed=1)
    assert torch.autograd.gradcheck(lambda x, w, b: conv_silu(x, w, b, starts), (x, weight, bias))


def test_conv_silu_float32_weights_follow_input_dtype():
    x, weight, bias, _ = conv_inputs(1, 6, 4, 4, 0.0, seed=2)
    out = conv_silu(x.detach().to(torch.bfloat16).requires_grad_(), weight.float(), bias.float(), None)
    assert out.dtype == torch.bfloat16 and out.is_contiguous()
    out.float().sum().backward()


def plain_gated_rms_norm(y, z, weight, eps):
    return F.rms_norm(y * F.silu(z), y.shape[-1:], weight, eps)


def norm_inputs(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    y, z = (torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weight = torch.randn(shape[-1], generator=gen, dtype=torch.float64, requires_grad=True)
    return y, z, weight


def test_gated_rms_norm_matches_composition():
    y, z, weight = norm_inputs((2, 5, 8), seed=3)
    assert_same_outputs_and_gradients(
        gated_rms_norm(y, z, weight, 1e-5, torch.float64), plain_gated_rms_norm(y, z, weight, 1e-5), (y, z, weight)
    )


def test_gated_rms_norm_gradcheck():
    y, z, weight = norm_inputs((3, 6), seed=4)
    assert torch.autograd.gradcheck(lambda y, z, w: gated_rms_norm(y, z, w, 1e-5, torch.float64), (y, z, weight))


def test_gated_rms_norm_casts_result():
    y, z, weight = (t.detach().float() for t in norm_inputs((2, 4), seed=5))
    out = gated_rms_norm(y, z, weight, 1e-5, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), plain_gated_rms_norm(y, z, weight, 1e-5), rtol=1e-2, atol=1e-2)
