"""Dynamic chunking pieces against their definitions: EMA, dechunk plug-back, STE, ratio loss, routing."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamic_chunker.chunking import (
    EMA_CLAMP,
    ChunkLayer,
    DeChunkLayer,
    RoutingModule,
    RoutingOutput,
    chunk_order,
    ema,
    ratio_loss,
    straight_through,
)
from dynamic_chunker.layers.segments import Segments

FAST = settings(max_examples=25, deadline=None)


def sequential_ema(values, prob, starts=None):
    """z_j = P_j v_j + (1 - P_j) z_{j-1}, z_{-1} = 0, restarting at document starts; float64."""
    values, prob = values.double(), prob.double()
    z = torch.zeros_like(values[:, 0])
    out = []
    for j in range(values.shape[1]):
        if starts is not None:
            z = z * (~starts[:, j]).double()[:, None]
        z = prob[:, j, None] * values[:, j] + (1 - prob[:, j, None]) * z
        out.append(z)
    return torch.stack(out, dim=1)


@FAST
@given(
    length=st.integers(1, 50),
    chunk_size=st.integers(1, 64),
    with_starts=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_ema_equals_sequential_definition(length, chunk_size, with_starts, seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(2, length, 5, generator=gen, dtype=torch.float64)
    prob = torch.rand(2, length, generator=gen, dtype=torch.float64).clamp(EMA_CLAMP, 1 - EMA_CLAMP)
    starts = None
    if with_starts:
        starts = torch.rand(2, length, generator=gen) < 0.3
        starts[:, 0] = False
    expected = sequential_ema(values, prob, starts)
    torch.testing.assert_close(ema(values, prob, starts, chunk_size), expected, rtol=1e-10, atol=1e-10)
    # float32 inputs: computed in float32, close to the float64 definition
    out32 = ema(values.float(), prob.float(), starts, chunk_size)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), expected, rtol=1e-5, atol=1e-5)


def test_ema_long_sequence_with_strong_decay_stays_finite():
    """Hundreds of chunks with P near 1 - 1e-4 (log decay -9.2 each) must not overflow anywhere."""
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(1, 600, 3, generator=gen)
    prob = torch.full((1, 600), 1 - EMA_CLAMP)
    prob[:, ::7] = EMA_CLAMP
    out = ema(values, prob, None)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), sequential_ema(values, prob), rtol=1e-5, atol=1e-5)


def make_routing(p, mask=None):
    decided = p > 0.5
    boundary = decided if mask is None else decided & mask
    return RoutingOutput(p, boundary, torch.where(decided, p, 1 - p), mask)


@FAST
@given(length=st.integers(1, 30), with_mask=st.booleans(), with_starts=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_chunk_then_dechunk_plugs_back_smoothed_chunks(length, with_mask, with_starts, seed):
    gen = torch.Generator().manual_seed(seed)
    b, d = 3, 4
    p = torch.rand(b, length, generator=gen, dtype=torch.float64)
    p[:, 0] = 1.0
    mask = None
    if with_mask:
        lengths = torch.randint(1, length + 1, (b,), generator=gen)
        mask = torch.arange(length) < lengths[:, None]
    starts = None
    if with_starts:
        starts = torch.rand(b, length, generator=gen) < 0.2
        starts[:, 0] = False
        p = p.masked_fill(starts, 1.0)
    routing = make_routing(p, mask)
    segments = Segments(mask=mask, starts=starts)
    hidden = torch.randn(b, length, d, generator=gen, dtype=torch.float64)

    chunks, inner, index = ChunkLayer()(hidden, routing, segments)
    counts = routing.boundary_mask.sum(1)
    assert chunks.shape == (b, int(counts.max()), d)
    for row in range(b):
        positions = routing.boundary_mask[row].nonzero().flatten()
        n = len(positions)
        torch.testing.assert_close(chunks[row, :n], hidden[row, positions], rtol=0, atol=0)
        assert inner.mask[row].tolist() == [j < n for j in range(chunks.shape[1])]
        if starts is not None:
            assert inner.starts[row, :n].tolist() == starts[row, positions].tolist()

    inner_out = torch.randn(chunks.shape, generator=gen, dtype=torch.float64)
    out = DeChunkLayer()(inner_out, routing, index, inner)
    assert out.shape == hidden.shape
    for row in range(b):
        positions = routing.boundary_mask[row].nonzero().flatten()
        prob = p[row, positions].clamp(EMA_CLAMP, 1 - EMA_CLAMP)
        chunk_starts = None if starts is None else starts[row, positions][None]
        smoothed = sequential_ema(inner_out[row : row + 1, : len(positions)], prob[None], chunk_starts)[0]
        valid = length if mask is None else int(mask[row].sum())
        for t in range(valid):
            chunk = int(routing.boundary_mask[row, : t + 1].sum()) - 1  # the last boundary at or before t
            torch.testing.assert_close(out[row, t], smoothed[chunk], rtol=1e-10, atol=1e-10)


def test_chunk_order_keeps_boundaries_first_in_order():
    mask = torch.tensor([[True, False, True, True, False], [True, False, False, False, False]])
    index, counts = chunk_order(mask)
    assert counts.tolist() == [3, 1]
    assert index.shape == (2, 3)
    assert index[0].tolist() == [0, 2, 3]
    assert index[1, 0].item() == 0


@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_straight_through_is_identity_forward_with_confidence_gradient(seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64).requires_grad_()
    confidence = (torch.rand(2, 6, generator=gen, dtype=torch.float64) * 0.5 + 0.5).requires_grad_()
    out = straight_through(values, confidence)
    assert torch.equal(out, values)  # bit-exact, not merely close
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(grad)
    torch.testing.assert_close(confidence.grad, (grad * values).sum(-1).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(values.grad, grad, rtol=0, atol=0)


def test_straight_through_forward_exact_in_float32():
    values = torch.randn(3, 50, 8)
    confidence = torch.rand(3, 50) * 0.5 + 0.5
    assert torch.equal(straight_through(values, confidence.requires_grad_()), values)


@pytest.mark.parametrize("target", [2, 3, 4, 6])
def test_ratio_loss_is_one_when_fraction_and_mean_probability_are_one_over_n(target):
    p = torch.full((2, 12), 1 / target)  # G = 1/N
    boundary = torch.zeros(2, 12, dtype=torch.bool)
    boundary[:, ::target] = True  # F = 1/N
    torch.testing.assert_close(ratio_loss(RoutingOutput(p, boundary, p), float(target)), torch.tensor(1.0))


@FAST
@given(target=st.floats(1.5, 10.0), seed=st.integers(0, 2**31 - 1))
def test_ratio_loss_matches_formula_and_gradient_flows_only_through_p(target, seed):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(3, 17, generator=gen, dtype=torch.float64).requires_grad_()
    routing = make_routing(p)
    loss = ratio_loss(routing, target)
    f = routing.boundary_mask.double().mean()
    g = p.mean()
    expected = target / (target - 1) * ((target - 1) * f * g + (1 - f) * (1 - g))
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-6, atol=1e-6)
    loss.backward()
    # dL/dp_t = N/(N-1) * ((N-1) F - (1 - F)) / numel, the same for every position
    grad = target / (target - 1) * ((target - 1) * f - (1 - f)) / p.numel()
    torch.testing.assert_close(p.grad, torch.full_like(p, float(grad)), rtol=1e-5, atol=1e-8)


def test_ratio_loss_rejects_target_at_most_one():
    p = torch.rand(1, 4)
    with pytest.raises(ValueError, match="must be > 1"):
        ratio_loss(make_routing(p), 1.0)


def test_routing_forces_start_boundaries_and_strict_threshold():
    router = RoutingModule(4, dtype=torch.float64)  # identity q/k projections: p = (1 - cos(x_{t-1}, x_t)) / 2
    e = torch.eye(4, dtype=torch.float64)
    # p: forced 1, same vector 0, orthogonal exactly 0.5 (a tie: no boundary), opposite 1, just past
    # orthogonal 0.5005, same vector 0, same vector but a document start (forced 1)
    tilted = e[0] + 1e-3 * e[1]
    hidden = torch.stack([e[0], e[0], e[1], -e[1], tilted, tilted, tilted])[None]
    starts = torch.zeros(1, 7, dtype=torch.bool)
    starts[0, 6] = True
    out = router(hidden, Segments(starts=starts))
    p = out.boundary_prob[0]
    expected = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.5 + 5e-4, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(p, expected, atol=1e-6, rtol=0)
    assert p[2] == 0.5  # exact tie
    assert p[0] == 1.0 and p[6] == 1.0
    assert out.boundary_mask[0].tolist() == [True, False, False, True, True, False, True]
    torch.testing.assert_close(out.selected_probs[0], torch.maximum(p, 1 - p))

    no_starts = router(hidden, Segments())
    assert no_starts.boundary_prob[0, 6] == 0.0 and not no_starts.boundary_mask[0, 6]


def test_routing_never_marks_padding_as_boundary():
    torch.manual_seed(0)
    router = RoutingModule(8)
    hidden = torch.randn(2, 10, 8)
    mask = torch.arange(10) < torch.tensor([[10], [4]])
    out = router(hidden, Segments(mask=mask))
    assert not out.boundary_mask[~mask].any()
    assert out.boundary_mask[:, 0].all()
    assert torch.equal(out.boundary_mask[mask], (out.boundary_prob > 0.5)[mask])


@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_routing_probability_is_cosine_of_projected_neighbours(seed):
    gen = torch.Generator().manual_seed(seed)
    router = RoutingModule(6, dtype=torch.float64)
    with torch.no_grad():
        router.q_proj_layer.weight.copy_(torch.randn(6, 6, generator=gen, dtype=torch.float64))
        router.k_proj_layer.weight.copy_(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    hidden = torch.randn(1, 9, 6, generator=gen, dtype=torch.float64)
    p = router(hidden, Segments()).boundary_prob[0]
    q = router.q_proj_layer(hidden[0, :-1])  # q projects the previous vector
    k = router.k_proj_layer(hidden[0, 1:])
    cos = (q * k).sum(-1) / (q.norm(dim=-1) * k.norm(dim=-1))
    torch.testing.assert_close(p[1:], ((1 - cos) / 2).clamp(0, 1).detach(), rtol=1e-10, atol=1e-10)
    assert p[0] == 1.0
