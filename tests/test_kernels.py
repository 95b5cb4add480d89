"""Optional CUDA kernels (layers/kernels.py), checked on CPU with fake kernel modules (tests/fake_kernels.py).

With the kernel device set to include "cpu" and float64 allowed, the model must give the pure path's outputs and
gradients; this checks the wiring (arguments, layouts, resets, windows, dt handling), not the real kernels, which
need a GPU.
"""

import subprocess
import sys

import pytest
import torch

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.layers import kernels
from dynamic_chunker.layers.mamba2 import Mamba2
from dynamic_chunker.layers.segments import Segments

from .fake_kernels import CALLS, fake_conv1d, fake_flash_attn_func, fake_flash_attn_varlen_func, fake_ssd_scan, install

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fakes(monkeypatch):
    """The fake kernels, found by the detection (used only for CUDA tensors of supported dtypes)."""
    yield install(monkeypatch)
    kernels.available.cache_clear()
    CALLS.clear()


@pytest.fixture
def on_cpu(monkeypatch):
    """The fake kernels, used for CPU tensors of every dtype (float64 included, for exact comparisons)."""
    yield install(monkeypatch, on_cpu=True)
    kernels.available.cache_clear()
    CALLS.clear()


# ---------------------------------------------------------------------------------------------- model helpers
WINDOWS = [3, 2, -1]


def kernel_config() -> HNetConfig:
    """Every kind of stack, windows shorter than the sequences, conv channels in multiples of 8 (80, 112)."""
    return HNetConfig.from_dict(
        {
            "arch_layout": ["m1t1", ["T1m1", ["T1"], "m1t1"], "m1"],
            "d_model": [32, 48, 64],
            "d_intermediate": [64, 64, 64],
            "ssm_cfg": {"d_state": 8, "d_conv": 4, "expand": 2, "chunk_size": 8, "headdim": 16},
            "attn_cfg": {"num_heads": [2, 2, 2], "rotary_emb_dim": [8, 8, 8], "window_size": WINDOWS},
        }
    )


def random_model(dtype=torch.float64) -> HNetForCausalLM:
    torch.manual_seed(0)
    model = HNetForCausalLM(kernel_config(), dtype=dtype)
    with torch.no_grad():  # random routers (the identity init puts every p near 0.5) and non-zero residual paths
        for name, param in model.named_parameters():
            if "q_proj_layer" in name or "k_proj_layer" in name or "residual_proj.weight" in name:
                param.copy_(torch.randn_like(param) / param.shape[1] ** 0.5)
    return model


def model_inputs(kind: str) -> dict:
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    if kind == "documents":
        documents = torch.zeros(2, 40, dtype=torch.long)
        documents[0, 17:] = 1
        documents[1, 5:] = 1
        documents[1, 30:] = 2
        return {"input_ids": ids, "document_ids": documents}
    if kind == "padding":
        return {"input_ids": ids, "mask": torch.arange(40)[None] < torch.tensor([[40], [29]])}
    return {"input_ids": ids}


def logits_and_grads(model: HNetForCausalLM, inputs: dict):
    model.zero_grad()
    out = model(**inputs)
    out.logits.square().mean().backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def calls_named(name: str) -> list[dict]:
    return [args for kind, args in CALLS if kind == name]


# ---------------------------------------------------------------------------------------------- tests
def test_detection_finds_the_importable_kernels_once(fakes, monkeypatch):
    found = kernels.available()
    assert found.ssd_scan is fake_ssd_scan and found.conv1d is fake_conv1d
    assert found.attention is fake_flash_attn_func and found.attention_varlen is fake_flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)  # makes the import fail
    assert kernels.available().conv1d is fake_conv1d  # cached: looked up once
    kernels.available.cache_clear()
    assert kernels.available().conv1d is None and kernels.available().ssd_scan is fake_ssd_scan


def test_without_the_packages_nothing_is_found(monkeypatch):
    for name in ["mamba_ssm.ops.triton.ssd_combined", "causal_conv1d", "flash_attn"]:
        monkeypatch.setitem(sys.modules, name, None)
    kernels.available.cache_clear()
    try:
        assert kernels.available() == kernels.Kernels()
    finally:
        kernels.available.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_tensors_never_take_the_kernel_path(fakes, dtype):
    model = random_model(dtype)
    for kind in ["plain", "documents", "padding"]:
        model(**model_inputs(kind))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**model_inputs("plain"))
    assert not fakes and not kernels.usage


@pytest.mark.parametrize("kind", ["plain", "documents", "padding"])
def test_model_with_kernels_equals_the_pure_path(on_cpu, kind):
    model, inputs = random_model(), model_inputs(kind)
    with kernels.use_kernels(False):
        pure, pure_grads = logits_and_grads(model, inputs)
    assert not on_cpu
    fast, fast_grads = logits_and_grads(model, inputs)
    assert (fast.logits - pure.logits).abs().max() < 1e-10
    for r_fast, r_pure in zip(fast.routing, pure.routing, strict=True):
        assert torch.equal(r_fast.boundary_mask, r_pure.boundary_mask)
    assert fast_grads.keys() == pure_grads.keys()
    for name, grad in pure_grads.items():
        assert (fast_grads[name] - grad).abs().max() < 1e-10 * max(1.0, grad.abs().max().item()), name
    # every mixer and every dechunk EMA went through a kernel: 4 Mamba layers + 2 EMAs, 4 attention layers
    assert len(calls_named("ssd_scan")) == 4 + 2 and len(calls_named("conv1d")) == 4
    assert len(calls_named("attention" if kind != "documents" else "attention_varlen")) == 4
    assert kernels.usage["ssd_scan"] == 6 and kernels.usage["conv_silu"] == 4


def test_mamba_arguments_and_document_resets(on_cpu):
    torch.manual_seed(0)
    layer = Mamba2(32, d_state=8, headdim=16, chunk_size=8, dtype=torch.float64)
    u = torch.randn(2, 20, 32, dtype=torch.float64)
    starts = torch.zeros(2, 20, dtype=torch.bool)
    starts[0, 7] = starts[1, 3] = starts[1, 12] = True
    out = layer(u, Segments(starts=starts))
    with kernels.use_kernels(False):
        assert (out - layer(u, Segments(starts=starts))).abs().max() < 1e-12
    (_, conv), (_, scan) = on_cpu
    # conv: channel-last (b, c, l) view, SiLU fused, weight (c, K) and bias, documents as int32 indices
    assert conv["x"].shape == (2, layer.d_inner + 2 * 8, 20) and conv["x"].stride(1) == 1
    assert conv["activation"] == "silu" and conv["weight"].shape == (layer.d_inner + 16, 4)
    expected_index = starts.int().cumsum(1, dtype=torch.int32)
    assert torch.equal(conv["seq_idx"], expected_index) and torch.equal(scan["seq_idx"], expected_index)
    # scan: dt already softplus(dt + dt_bias) (no bias, no softplus in the kernel), A = -exp(A_log), D per head,
    # no z (the gate goes through the gated RMSNorm), one B/C group, the layer's chunk size
    assert scan["dt_bias"] is None and scan["dt_softplus"] is False and scan["z"] is None
    assert bool((scan["dt"] > 0).all()) and scan["dt"].shape == (2, 20, layer.nheads)
    assert torch.equal(scan["A"], -torch.exp(layer.A_log)) and scan["D"] is layer.D
    assert scan["x"].shape == (2, 20, layer.nheads, 16) and scan["B"].shape == (2, 20, 1, 8)
    assert scan["chunk_size"] == 8 and scan["return_final_states"] is False


def test_attention_windows_and_documents(on_cpu):
    model = random_model()
    model(**model_inputs("plain"))
    windows = sorted({args["window_size"] for args in calls_named("attention")})
    assert windows == [(-1, -1), (2, 0), (3, 0)] and all(args["causal"] for args in calls_named("attention"))
    CALLS.clear()
    inputs = model_inputs("documents")
    model(**inputs)
    first = calls_named("attention_varlen")[0]  # stage 0: rows of 40 bytes, documents at 17 and at 5, 30
    assert first["cu_seqlens"].tolist() == [0, 17, 40, 45, 70, 80] and first["max_seqlen"] == 25
    assert first["window_size"] == (3, 0) and first["causal"]


def test_dechunk_ema_arguments(on_cpu):
    model = random_model()
    model(**model_inputs("documents"))
    emas = [args for args in calls_named("ssd_scan") if args["D"] is None]
    assert len(emas) == 2
    for args in emas:  # decay 1 - P = exp(-dt), input dt * v * B = P v, read out with C = 1; resets at documents
        assert bool((args["A"] == -1).all()) and bool((args["C"] == 1).all()) and args["seq_idx"] is not None
        assert args["chunk_size"] == 256 and args["x"].shape[-1] in (32, 48)
        P = args["B"][..., 0, 0] * args["dt"][..., 0]
        assert torch.allclose(torch.exp(-args["dt"][..., 0]), 1 - P)


def test_prefill_final_state_with_padding_matches_the_pure_path(on_cpu):
    """Decoding after a right-padded prefill through the kernels equals decoding after a pure prefill."""
    model = random_model().eval()
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(4))
    mask = torch.arange(20)[None] < torch.tensor([[20], [11]])
    results = []
    for enabled in (False, True):
        cache = model.allocate_inference_cache(2, 40)
        with kernels.use_kernels(enabled), torch.no_grad():
            model(ids[:, :20].masked_fill(~mask, 0), mask=mask, inference_params=cache)
            results.append(model.step(ids[:, 20], cache).logits)
    assert any(args["return_final_states"] for args in calls_named("ssd_scan"))
    assert (results[0] - results[1]).abs().max() < 1e-10


def test_use_kernels_switch_restores_its_state(on_cpu):
    model = random_model()
    with kernels.use_kernels(False):
        model(**model_inputs("plain"))
        assert not kernels.kernels_enabled()
        with pytest.raises(RuntimeError), kernels.use_kernels(True):
            assert kernels.kernels_enabled()
            raise RuntimeError
        assert not kernels.kernels_enabled()
    assert not on_cpu and kernels.kernels_enabled()


def test_environment_variable_switches_kernels_off():
    code = "from dynamic_chunker.layers import kernels; print(kernels.kernels_enabled())"
    for value, expected in [("0", "False"), ("1", "True")]:
        env = {"DYNAMIC_CHUNKER_KERNELS": value, "PATH": "/usr/bin:/bin"}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert run.stdout.strip() == expected


def test_unsupported_dtypes_and_shapes_fall_back(fakes, monkeypatch):
    monkeypatch.setattr(kernels, "KERNEL_DEVICES", frozenset({"cuda", "cpu"}))  # real dtype rules
    model = random_model(torch.float64)  # float64: no kernel takes it
    model(**model_inputs("plain"))
    assert not fakes
    x = torch.randn(1, 6, 12)  # 12 channels: not a multiple of 8 for causal_conv1d's channel-last layout
    assert kernels.conv_silu(x, torch.randn(12, 1, 4), torch.randn(12), None) is None
    q = torch.randn(1, 6, 2, 16)  # float32 without autocast: flash-attn takes only half dtypes
    assert kernels.attention(q, q, q, -1, None) is None
    q = torch.randn(1, 6, 2, 12, dtype=torch.bfloat16)  # head dim not a multiple of 8
    assert kernels.attention(q, q, q, -1, None) is None
    assert not fakes


def test_attention_under_autocast_gets_half_inputs(fakes, monkeypatch):
    """As F.scaled_dot_product_attention under autocast: float32 q, k, v are cast to the autocast dtype."""
    monkeypatch.setattr(kernels, "KERNEL_DEVICES", frozenset({"cuda", "cpu"}))
    model = random_model(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**model_inputs("plain"))
    attention_calls = calls_named("attention")
    assert attention_calls and all(args["q"].dtype == torch.bfloat16 for args in attention_calls)
    assert calls_named("ssd_scan") and calls_named("conv1d")


# ---------------------------------------------------------------------------------------------- real kernels (GPU)
def real_kernels_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    kernels.available.cache_clear()
    found = kernels.available()
    if None in (found.ssd_scan, found.conv1d, found.attention, found.attention_varlen):
        pytest.skip("needs mamba_ssm, causal_conv1d and flash_attn (pip install -e '.[gpu]')")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("packed", [False, True])
def test_real_kernels_match_the_pure_layers_on_cuda(packed):
    """Mamba-2 (float32; the kernels' tf32 products allow ~1e-3), attention (bf16) and the dechunk EMA, outputs and
    input gradients, with and without document starts (seq_idx / cu_seqlens)."""
    real_kernels_or_skip()
    from dynamic_chunker.chunking import ema
    from dynamic_chunker.layers.attention import CausalSelfAttention

    torch.manual_seed(0)
    device, length = torch.device("cuda"), 600
    starts = torch.zeros(2, length, dtype=torch.bool, device=device)
    if packed:
        starts[0, 100] = starts[1, 7] = starts[1, 300] = starts[1, 301] = True
    segments = Segments(starts=starts if packed else None)
    mamba = Mamba2(128, d_state=64, headdim=64, chunk_size=256, device=device)
    attention = CausalSelfAttention(128, 2, 32, window_size=63, device=device, dtype=torch.bfloat16)
    u = torch.randn(2, length, 128, device=device)
    values, prob = torch.randn(2, length, 96, device=device), torch.rand(2, length, device=device) * 0.9 + 0.05
    cases = [
        ("mamba", lambda t: mamba(t, segments), u, 2e-3),
        ("attention", lambda t: attention(t, segments), u.bfloat16(), 2e-2),
        ("ema", lambda t: ema(t, prob, segments.starts), values, 2e-3),
    ]
    for name, layer, x, tolerance in cases:
        results = []
        for enabled in (True, False):
            kernels.usage.clear()
            x_in = x.clone().requires_grad_()
            with kernels.use_kernels(enabled):
                out = layer(x_in)
            out.float().square().mean().backward()
            results.append((out.detach(), x_in.grad))
            assert bool(kernels.usage) == enabled, name
        (fast, fast_grad), (pure, pure_grad) = results
        assert relative_error(fast, pure) < tolerance, name
        assert relative_error(fast_grad, pure_grad) < 5 * tolerance, name
