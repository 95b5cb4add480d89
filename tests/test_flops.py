import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.config import OFFICIAL_CONFIGS, SSMConfig
from dynamic_chunker.evaluation.flops import (
    attention_flops,
    boundary_flops_per_byte,
    default_compression,
    flops_breakdown,
    forward_flops_per_byte,
    mamba_flops,
    mlp_flops,
    training_flops_per_byte,
)
from dynamic_chunker.layers.attention import attention_mask
from dynamic_chunker.layers.segments import Segments


def official(name: str) -> HNetConfig:
    return HNetConfig.from_json(OFFICIAL_CONFIGS / f"{name}.json")


@pytest.mark.parametrize(
    ("name", "ratio", "expected"), [("hnet_1stage_L", 4.8, 0.433e9), ("hnet_1stage_XL", 4.7, 0.716e9)]
)
def test_worked_example_of_the_reference(name, ratio, expected):
    # docs/MODEL.md (FLOPs per byte); Table 2 of the paper prints 0.43 and 0.72 GFLOPs/byte
    assert forward_flops_per_byte(official(name), 8192, [ratio]) == pytest.approx(expected, rel=0.01)


def test_two_stage_models_land_on_table_2():
    # Table 2: 2-stage L 0.43, XL 0.69 GFLOPs/byte at 7.0 / 6.9 bytes per innermost chunk (per-stage split unknown)
    assert forward_flops_per_byte(official("hnet_2stage_L"), 8192, [2.5, 2.8]) == pytest.approx(0.43e9, rel=0.03)
    assert forward_flops_per_byte(official("hnet_2stage_XL"), 8192, [3.0, 2.3]) == pytest.approx(0.69e9, rel=0.03)


def test_one_mamba_layer_by_hand():
    # D = 1024, E = 2, N = 128, 32 heads of 64, K = 4 (the released configs' outer stage)
    ssm = SSMConfig(d_state=128, expand=2, d_conv=4, headdim=64)
    by_hand = (
        2 * 1024 * 4096  # x, z: 1024 -> 2 * 2048
        + 2 * 1024 * (2 * 128 + 32)  # B, C, dt: 1024 -> 288
        + 6 * 2048 * 128  # SSD
        + 2 * 1024 * 4  # conv
        + 5 * 1024  # gating
        + 2 * 2048 * 1024  # output: 2048 -> 1024
    )
    assert by_hand == 14_758_912  # "14.76 M" in the reference
    assert mamba_flops(1024, ssm) == by_hand


def test_one_attention_layer_by_hand():
    # hnet_1stage_L main layer: D = 1536, 16 heads of 96, L^1 = 8192 / 4.8 keys, SwiGLU width 4096
    keys = 8192 / 4.8
    by_hand = 3 * 2 * 1536 * 1536 + 2 * keys * 1536 + 3 * 16 * keys + 2 * keys * 1536 + 2 * 1536 * 1536
    assert attention_flops(1536, 16, keys) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(29.44e6, rel=1e-3)
    assert mlp_flops(1536, 4096) == 6 * 1536 * 4096 + 5 * 1536 == pytest.approx(37.76e6, rel=1e-3)


def test_window_key_count_is_the_largest_row_of_the_real_mask():
    for length, window in [(10, 3), (10, 20), (64, 15)]:
        allowed = attention_mask(length, window, Segments(mask=None, starts=None), torch.device("cpu"))
        cfg = HNetConfig.from_dict(
            {
                "arch_layout": ["t1"],
                "d_model": [32],
                "d_intermediate": [0],
                "attn_cfg": {"num_heads": [2], "rotary_emb_dim": [0], "window_size": [window]},
            }
        )
        keys = int(allowed.sum(-1).max())
        assert keys == min(length, window + 1)
        assert flops_breakdown(cfg, length, [])["stage0.main"] == attention_flops(32, 2, keys)


def test_projection_terms_match_a_flop_counter_on_the_real_model():
    """Every matrix multiply of the formulas against what torch's FlopCounterMode sees in our modules."""
    cfg = HNetConfig.from_dict(
        {
            "arch_layout": ["m1", ["T1"], "M1"],
            "d_model": [64, 96],
            "d_intermediate": [128, 256],
            "ssm_cfg": {"d_state": 16, "chunk_size": 32},
            "attn_cfg": {"num_heads": [2, 3], "rotary_emb_dim": [16, 16], "window_size": [15, -1]},
        }
    )
    model = HNetForCausalLM(cfg)
    length = 100
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        out = model(torch.randint(0, 256, (1, length)))
    chunks = int(out.routing[0].boundary_mask.sum())
    counts = {name.removeprefix("HNetForCausalLM."): sum(v.values()) for name, v in counter.get_flop_counts().items()}

    d0, d1, n, h0 = 64, 96, 16, 2 * 64 // 64
    mamba_matmuls = 2 * d0 * (2 * 2 * d0) + 2 * d0 * (2 * n + h0) + 2 * (2 * d0) * d0  # x/z, B/C/dt, output
    mamba_rest = 6 * 2 * d0 * n + 2 * d0 * 4 + 5 * d0  # SSD, conv, gating: not plain matmuls
    assert mamba_flops(d0, cfg.ssm_cfg) == mamba_matmuls + mamba_rest
    for stack in ("encoder", "decoder"):
        mixer = f"backbone.{stack}.layers.0.mixer"
        assert counts[f"{mixer}.in_proj"] + counts[f"{mixer}.out_proj"] == length * mamba_matmuls
    assert counts["backbone.decoder.layers.0.mlp"] == length * (mlp_flops(d0, 128) - 5 * d0)
    inner = "backbone.main_network.main_network.layers.0"
    attention_matmuls = attention_flops(d1, 3, keys=0)  # QKV and output projections only
    assert counts[f"{inner}.mixer.Wqkv"] + counts[f"{inner}.mixer.out_proj"] == chunks * attention_matmuls
    assert counts[f"{inner}.mlp"] == chunks * (mlp_flops(d1, 256) - 5 * d1)
    # q and k see the L - 1 adjacent pairs, the residual projection all L positions
    assert counts["backbone.routing_module"] + counts["backbone.residual_proj"] == 2 * d0 * d0 * (3 * length - 2)
    assert counts["lm_head"] == length * 2 * 256 * d0


def test_stage_lengths_and_totals():
    cfg = official("hnet_2stage_XL")
    parts = flops_breakdown(cfg, 8192, [3.0, 2.0])
    assert parts["stage0.encoder"] == 4 * mamba_flops(1024, cfg.ssm_cfg)
    # stage 1 runs on a third of the bytes; its attention layer is windowed (1023) and 8192 / 3 > 1024 keys
    per_position = 4 * mamba_flops(1536, cfg.ssm_cfg) + attention_flops(1536, 16, 1024) + mlp_flops(1536, 4096)
    assert parts["stage1.encoder"] == pytest.approx(per_position / 3, rel=1e-12)
    # the innermost stage is global: 8192 / 6 keys, on a sixth of the bytes
    keys = 8192 / 6
    assert parts["stage2.main"] == pytest.approx(27 * (attention_flops(2048, 16, keys) + mlp_flops(2048, 5504)) / 6)
    assert forward_flops_per_byte(cfg, 8192, [3.0, 2.0]) == pytest.approx(sum(parts.values()))
    assert training_flops_per_byte(cfg, 8192, [3.0, 2.0]) == pytest.approx(3 * sum(parts.values()))


def test_default_compression_is_the_ratio_loss_target():
    assert default_compression(official("hnet_1stage_L")) == [6.0]
    assert default_compression(official("hnet_2stage_L")) == [3.0, 3.0]
    cfg = official("hnet_2stage_L")
    assert forward_flops_per_byte(cfg, 4096) == forward_flops_per_byte(cfg, 4096, [3.0, 3.0])


@pytest.mark.parametrize(
    ("seq_len", "compression", "message"),
    [(0, [3, 3], "seq_len"), (8192, [3], "one ratio per chunking stage"), (8192, [3, 0.5], ">= 1")],
)
def test_bad_input(seq_len, compression, message):
    with pytest.raises(ValueError, match=message):
        forward_flops_per_byte(official("hnet_2stage_L"), seq_len, compression)


def test_boundary_flops_leave_out_decoders_main_network_and_head():
    config = official("hnet_2stage_XL")
    parts = flops_breakdown(config, 8192, [3.0, 3.0])
    boundaries = boundary_flops_per_byte(config, 8192, [3.0, 3.0])
    left_out = [k for k in parts if "decoder" in k or k == "lm_head" or k.startswith("stage2")]
    assert len(left_out) >= 4
    routing = parts["stage0.routing"] + parts["stage1.routing"]
    expected = forward_flops_per_byte(config, 8192, [3.0, 3.0]) - sum(parts[k] for k in left_out) - routing / 3
    assert boundaries == pytest.approx(expected)
