"""benchmarks/gpu.py (kernel parity) and train_throughput's kernel rows: the no-CUDA exit and smoke runs of every
code path on CPU, with the fake kernels switched in."""

import json

import pytest
import torch

from dynamic_chunker.layers import kernels

from .conftest import OFFICIAL
from .fake_kernels import install

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def bench():
    from benchmarks import gpu

    return gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_without_cuda_it_exits_with_code_2(bench, capsys):
    assert bench.main(["--smoke"]) == bench.EXIT_NO_CUDA == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_parity_smoke_run_on_cpu_with_fake_kernels(bench, monkeypatch, tmp_path):
    """Kernel path (the fakes, computing in float64) against the pure path: they agree."""
    install(monkeypatch, on_cpu=True)
    try:
        output = tmp_path / "gpu.md"
        assert bench.main(["--smoke", "--device", "cpu", "--length", "64", "--output", str(output)]) == 0
    finally:
        kernels.available.cache_clear()
    text = output.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| tiny_2stage |")]
    assert len(rows) == 4 and "failed" not in text  # float32 and bf16, packed or not
    for row in rows:  # logits agree wherever the routing did, losses closely
        cells = [c.strip() for c in row.strip("|").split("|")]
        tolerance = 1e-4 if cells[1] == "float32" else 0.1
        assert float(cells[5]) < tolerance and float(cells[4].rstrip("%")) > 10, row
        kernel_loss, pure_loss = (float(x) for x in cells[8].split(" / "))
        assert abs(kernel_loss - pure_loss) < 1e-2, row


@pytest.mark.parametrize("use", ["on", "off"])
def test_throughput_rows_count_the_kernel_calls(monkeypatch, use):
    from benchmarks import train_throughput

    install(monkeypatch, on_cpu=True)
    config = json.loads((OFFICIAL / "tiny_2stage" / "config.json").read_text())
    spec = {"threads": None, "windows": 1, "batch": 2, "text": str(OFFICIAL / "README.md"), "length": 64,
            "targets": [2.0, 2.0], "config": config, "checkpointing": False, "compile": False, "precision": "bf16",
            "warmup": 1, "steps": 1, "profile": False, "device": "cpu", "kernels": use}  # fmt: skip
    try:
        result = train_throughput.measure(spec)
    finally:
        kernels.available.cache_clear()
    assert result["bytes_per_s"] > 0
    if use == "on":
        assert all(name in result["calls"] for name in ("ssd_scan", "conv_silu", "attention")), result["calls"]
    else:
        assert result["calls"] == "none"
