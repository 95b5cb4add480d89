"""benchmarks/train_throughput.py: router calibration, FLOP matching and one tiny end-to-end run."""

import subprocess
import sys

import pytest

from dynamic_chunker import HNetConfig
from dynamic_chunker.evaluation.flops import forward_flops_per_byte

from .conftest import BENCHMARKS, OFFICIAL, load_benchmark

SCRIPT = BENCHMARKS / "train_throughput.py"
TINY = OFFICIAL / "tiny_2stage" / "config.json"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark(SCRIPT, "train_throughput")


def test_calibrated_router_gives_the_target_compression_in_the_full_forward(bench):
    model = bench.build_model(HNetConfig.from_json(TINY))
    ids = bench.byte_text(SCRIPT, 600)[:, :-1]
    bench.calibrate_routing(model, ids, [3.0, 2.0])
    counts = [int(r.boundary_mask.sum()) for r in model(ids).routing]
    assert 3.0 <= 600 / counts[0] <= 3.05
    assert 2.0 <= counts[0] / counts[1] <= 2.05


def test_isotropic_baseline_matches_the_flops_per_byte(bench):
    hnet = HNetConfig.from_json(SCRIPT.parent / "configs" / "hnet_2stage_bench.json")
    target = forward_flops_per_byte(hnet, 4096, [3.0, 3.0])
    iso = bench.isotropic_config(hnet, target, 4096)
    assert iso.num_stages == 1 and iso.stacks(0)["main"][0] == "T"
    assert iso.d_model == [256] and iso.attn_cfg.window_size == [1023]
    assert forward_flops_per_byte(iso, 4096, []) == pytest.approx(target, rel=0.02)


def test_end_to_end_on_a_tiny_config(tmp_path):
    output = tmp_path / "table.md"
    args = ["--config", str(TINY), "--lengths", "64", "--compression", "2", "2", "--budget", "0.5"]
    args += ["--threads", "1", "--text", str(SCRIPT), "--output", str(output)]
    subprocess.run([sys.executable, str(SCRIPT), *args], check=True, capture_output=True, timeout=300)
    table = output.read_text()
    row = next(line for line in table.splitlines() if line.startswith("| 64 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1].rstrip("*").replace(",", "")) > 0 and float(cells[2].rstrip("*").replace(",", "")) > 0
    assert cells[7] == "2.00 / 2.00"  # realised bytes per chunk of each stage
