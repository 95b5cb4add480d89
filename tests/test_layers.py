"""Building blocks against their plain definitions: the chunked SSD scan, the causal conv, Mamba-2 with resets."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamic_chunker.layers.attention import CausalSelfAttention, attention_mask, windowed_attention
from dynamic_chunker.layers.mamba2 import RESET_LOG_DECAY, Mamba2, causal_depthwise_conv, chunked_scan, tile_decay
from dynamic_chunker.layers.segments import Segments

FAST = settings(max_examples=25, deadline=None)


def sequential_scan(x, log_decay, B, C, initial_state=None, starts=None):
    """S_t = exp(a_t) S_{t-1} + x_t B_t^T, y_t = S_t C_t, one position at a time in float64.

    At a document start the state restarts from zero (independently of a_t there)."""
    x, log_decay, B, C = (t.double() for t in (x, log_decay, B, C))
    b, l, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state.double().clone()
    ys = []
    for t in range(l):
        decay = log_decay[:, t].exp()[..., None, None]
        if starts is not None:
            decay = decay * (~starts[:, t]).double()[:, None, None, None]
        state = decay * state + x[:, t, :, :, None] * B[:, t, None, None, :]
        ys.append(torch.einsum("bhpn,bn->bhp", state, C[:, t].double()))
    return torch.stack(ys, dim=1), state


def random_starts(gen, b, l, rate=0.2):
    starts = torch.rand(b, l, generator=gen) < rate
    starts[:, 0] = False
    return starts


def scan_inputs(gen, b, l, h, p, n, dtype):
    x = torch.randn(b, l, h, p, generator=gen, dtype=dtype)
    log_decay = -torch.rand(b, l, h, generator=gen, dtype=dtype) * 3
    B = torch.randn(b, l, n, generator=gen, dtype=dtype)
    C = torch.randn(b, l, n, generator=gen, dtype=dtype)
    return x, log_decay, B, C


@FAST
@given(
    length=st.integers(1, 40),
    chunk_size=st.integers(1, 48),
    heads=st.integers(1, 3),
    with_initial_state=st.booleans(),
    with_resets=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_chunked_scan_equals_sequential_recurrence(length, chunk_size, heads, with_initial_state, with_resets, seed):
    gen = torch.Generator().manual_seed(seed)
    b, p, n = 2, 3, 4
    x, log_decay, B, C = scan_inputs(gen, b, length, heads, p, n, torch.float64)
    initial = torch.randn(b, heads, p, n, generator=gen, dtype=torch.float64) if with_initial_state else None
    starts = random_starts(gen, b, length, rate=0.3) if with_resets else None
    a = log_decay if starts is None else log_decay.masked_fill(starts[..., None], RESET_LOG_DECAY)

    y, final = chunked_scan(x, a, B, C, chunk_size, initial_state=initial)
    y_ref, final_ref = sequential_scan(x, log_decay, B, C, initial, starts)
    assert y.shape == y_ref.shape and final.shape == final_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length,chunk_size", [(1, 256), (1, 1), (7, 256), (64, 16), (100, 16), (333, 64)])
def test_chunked_scan_float32_close_to_float64_oracle(length, chunk_size):
    gen = torch.Generator().manual_seed(length)
    x, log_decay, B, C = scan_inputs(gen, 2, length, 2, 4, 8, torch.float32)
    log_decay = log_decay / 10  # slow decay: long memory across many tiles
    initial = torch.randn(2, 2, 4, 8, generator=gen)
    y, final = chunked_scan(x, log_decay, B, C, chunk_size, initial_state=initial)
    y_ref, final_ref = sequential_scan(x, log_decay, B, C, initial)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("resets", [False, True])
def test_chunked_scan_float32_strong_decay_close_to_float64_oracle(resets):
    # log decays down to -40 per position: tile sums far below float32's exp underflow (about -87), where the
    # decays are clamped at EXP_FLOOR before exp (the fast path) instead of underflowing
    gen = torch.Generator().manual_seed(5)
    x, log_decay, B, C = scan_inputs(gen, 2, 333, 2, 4, 8, torch.float32)
    log_decay = log_decay * torch.rand(2, 333, 1, generator=gen) ** 4 * 13  # mostly weak, some very strong
    starts = random_starts(gen, 2, 333, rate=0.05) if resets else None
    a = log_decay if starts is None else log_decay.masked_fill(starts[..., None], RESET_LOG_DECAY)
    initial = torch.randn(2, 2, 4, 8, generator=gen)
    y, final = chunked_scan(x, a, B, C, 64, initial_state=initial, resets=resets)
    y_ref, final_ref = sequential_scan(x, log_decay, B, C, initial, starts)
    assert log_decay.min() < -30
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, rtol=1e-4, atol=1e-4)


def test_tile_decay_is_zero_above_the_diagonal_and_across_resets():
    gen = torch.Generator().manual_seed(1)
    a = -torch.rand(3, 16, generator=gen, dtype=torch.float64) * 50
    a[1, 5] = RESET_LOG_DECAY
    decay = tile_decay(a)
    for row in range(3):
        for i in range(16):
            for j in range(16):
                segment = a[row, j + 1 : i + 1]
                if j > i or (segment <= RESET_LOG_DECAY).any():
                    assert decay[row, i, j] == 0
                else:
                    expected = torch.exp(segment.sum())
                    assert torch.isclose(decay[row, i, j], expected, rtol=1e-12, atol=1e-250)
    unmasked = tile_decay(a[[0]], resets=False, causal=False)
    torch.testing.assert_close(unmasked.tril(), decay[[0]], rtol=0, atol=0)
    assert torch.isfinite(unmasked).all() and (unmasked <= 1).all()


def test_chunked_scan_without_resets_may_skip_looking_for_them():
    gen = torch.Generator().manual_seed(3)
    x, log_decay, B, C = scan_inputs(gen, 2, 300, 2, 3, 4, torch.float64)
    looked = chunked_scan(x, log_decay, B, C, chunk_size=8)
    promised = chunked_scan(x, log_decay, B, C, chunk_size=8, resets=False)
    for a, b in zip(looked, promised):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunked_scan_reset_discards_initial_state_and_history():
    gen = torch.Generator().manual_seed(0)
    x, log_decay, B, C = scan_inputs(gen, 1, 20, 2, 3, 4, torch.float64)
    initial = torch.randn(1, 2, 3, 4, generator=gen, dtype=torch.float64) * 100
    a = log_decay.clone()
    a[:, 9] = RESET_LOG_DECAY
    y, final = chunked_scan(x, a, B, C, chunk_size=4, initial_state=initial)
    y_tail, final_tail = chunked_scan(x[:, 9:], log_decay[:, 9:], B[:, 9:], C[:, 9:], chunk_size=4)
    torch.testing.assert_close(y[:, 9:], y_tail, rtol=0, atol=1e-12)
    torch.testing.assert_close(final, final_tail, rtol=0, atol=1e-12)
    assert torch.isfinite(y).all()


@FAST
@given(
    length=st.integers(1, 30),
    kernel=st.integers(1, 5),
    rate=st.sampled_from([0.0, 0.2, 0.6]),
    seed=st.integers(0, 2**31 - 1),
)
def test_causal_conv_with_starts_equals_conv_per_document(length, kernel, rate, seed):
    gen = torch.Generator().manual_seed(seed)
    b, c = 2, 3
    x = torch.randn(b, length, c, generator=gen, dtype=torch.float64)
    weight = torch.randn(c, 1, kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(c, generator=gen, dtype=torch.float64)
    starts = random_starts(gen, b, length, rate)
    out = causal_depthwise_conv(x, weight, bias, starts)
    for row in range(b):
        bounds = [0, *starts[row].nonzero().flatten().tolist(), length]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            doc = x[row, lo:hi].T[None]  # (1, c, len)
            expected = F.conv1d(F.pad(doc, (kernel - 1, 0)), weight, bias, groups=c)[0].T
            torch.testing.assert_close(out[row, lo:hi], expected, rtol=1e-12, atol=1e-12)
    # without starts the fast path is the same plain causal convolution
    whole = F.conv1d(F.pad(x.transpose(1, 2), (kernel - 1, 0)), weight, bias, groups=c).transpose(1, 2)
    torch.testing.assert_close(causal_depthwise_conv(x, weight, bias, None), whole, rtol=1e-12, atol=1e-12)


def split_documents(starts_row):
    length = starts_row.shape[0]
    bounds = [0, *starts_row.nonzero().flatten().tolist(), length]
    return list(zip(bounds[:-1], bounds[1:]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [5, 256])
def test_mamba2_packed_row_equals_each_document_alone(dtype, chunk_size):
    torch.manual_seed(0)
    mamba = Mamba2(16, d_state=8, d_conv=4, expand=2, headdim=8, chunk_size=chunk_size, dtype=dtype)
    lengths = [1, 7, 3, 12, 2]
    u = torch.randn(1, sum(lengths), 16, dtype=dtype)
    starts = torch.zeros(1, sum(lengths), dtype=torch.bool)
    starts[0, torch.tensor(lengths).cumsum(0)[:-1]] = True
    packed = mamba(u, Segments(starts=starts))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for lo, hi in split_documents(starts[0]):
        alone = mamba(u[:, lo:hi], Segments())
        torch.testing.assert_close(packed[:, lo:hi], alone, rtol=tol, atol=tol)


@pytest.mark.parametrize("window", [-1, 0, 2, 5])
def test_attention_packed_row_equals_each_document_alone(window):
    torch.manual_seed(1)
    attn = CausalSelfAttention(16, num_heads=2, rotary_dim=4, window_size=window, dtype=torch.float64)
    lengths = [4, 1, 9, 6]
    u = torch.randn(1, sum(lengths), 16, dtype=torch.float64)
    starts = torch.zeros(1, sum(lengths), dtype=torch.bool)
    starts[0, torch.tensor(lengths).cumsum(0)[:-1]] = True
    packed = attn(u, Segments(starts=starts))
    for lo, hi in split_documents(starts[0]):
        torch.testing.assert_close(packed[:, lo:hi], attn(u[:, lo:hi], Segments()), rtol=1e-10, atol=1e-10)


def test_attention_window_matches_explicit_softmax():
    """Key j is visible from query i iff j <= i and i - j <= window."""
    torch.manual_seed(2)
    d, heads, window = 8, 2, 2
    attn = CausalSelfAttention(d, num_heads=heads, rotary_dim=0, window_size=window, dtype=torch.float64)
    u = torch.randn(1, 7, d, dtype=torch.float64)
    q, k, v = attn.Wqkv(u).view(1, 7, 3, heads, d // heads).unbind(2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / (d // heads) ** 0.5
    i = torch.arange(7)
    visible = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] <= window)
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    expected = attn.out_proj(torch.einsum("bhij,bjhd->bihd", probs, v).reshape(1, 7, d))
    torch.testing.assert_close(attn(u, Segments()), expected, rtol=1e-10, atol=1e-10)


def test_chunked_scan_stays_float32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(3)
    x, log_decay, B, C = scan_inputs(gen, 1, 50, 2, 4, 8, torch.float32)
    expected, expected_final = chunked_scan(x, log_decay, B, C, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, final = chunked_scan(x, log_decay, B, C, 16)
    assert y.dtype == final.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(final, expected_final, rtol=0, atol=0)


@FAST
@given(
    length=st.integers(1, 40),
    window=st.integers(0, 12),
    with_docs=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_blockwise_windowed_attention_equals_dense_mask(length, window, with_docs, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, length, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    starts = random_starts(gen, 2, length, rate=0.2) if with_docs else None
    segments = Segments(starts=starts)
    mask = attention_mask(length, window, segments, q.device)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = windowed_attention(q, k, v, window, segments.doc_ids if with_docs else None)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("length,chunk_size", [(700, 2), (300, 16), (257, 1)])
def test_chunked_scan_with_many_tiles_equals_sequential_recurrence(length, chunk_size):
    """Enough tiles that their states are carried by a scan over tiles of tiles (twice, for 700 / 2)."""
    gen = torch.Generator().manual_seed(length)
    x, log_decay, B, C = scan_inputs(gen, 2, length, 2, 3, 4, torch.float64)
    log_decay = log_decay / 30  # slow decay: states travel across many tiles
    starts = random_starts(gen, 2, length, rate=0.01)
    a = log_decay.masked_fill(starts[..., None], RESET_LOG_DECAY)
    initial = torch.randn(2, 2, 3, 4, generator=gen, dtype=torch.float64)
    y, final = chunked_scan(x, a, B, C, chunk_size, initial_state=initial)
    y_ref, final_ref = sequential_scan(x, log_decay, B, C, initial, starts)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)
