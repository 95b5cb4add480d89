"""evaluation/calibration.py and evaluation/baselines.py: routers set to a compression, FLOP-matched baselines."""

import pytest
import torch

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.evaluation.baselines import isotropic_config
from dynamic_chunker.evaluation.calibration import calibrate_routing
from dynamic_chunker.evaluation.flops import forward_flops_per_byte

from .conftest import BENCHMARKS, OFFICIAL


def test_calibrated_router_gives_the_target_compression_in_the_full_forward(one_thread):
    torch.manual_seed(0)
    model = HNetForCausalLM(HNetConfig.from_json(OFFICIAL / "tiny_2stage" / "config.json"))
    text = (BENCHMARKS / "common.py").read_bytes()[:600]
    ids = torch.tensor([list(text)])
    calibrate_routing(model, ids, [3.0, 2.0])
    counts = [int(r.boundary_mask.sum()) for r in model(ids).routing]
    assert 3.0 <= 600 / counts[0] <= 3.05
    assert 2.0 <= counts[0] / counts[1] <= 2.05


def test_isotropic_baseline_matches_the_flops_per_byte():
    hnet = HNetConfig.from_json(BENCHMARKS / "configs" / "hnet_2stage_bench.json")
    target = forward_flops_per_byte(hnet, 4096, [3.0, 3.0])
    iso = isotropic_config(hnet, target, 4096)
    assert iso.num_stages == 1 and iso.stacks(0)["main"][0] == "T"
    assert iso.d_model == [256] and iso.attn_cfg.window_size == [1023]
    assert forward_flops_per_byte(iso, 4096, []) == pytest.approx(target, rel=0.02)
