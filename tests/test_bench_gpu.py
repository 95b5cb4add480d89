"""benchmarks/gpu.py: the no-CUDA exit and a smoke run of every code path on CPU, with the fake kernels switched in."""

import pytest
import torch

from dynamic_chunker.layers import kernels

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


def test_smoke_run_on_cpu_with_fake_kernels(bench, monkeypatch, tmp_path):
    """Kernel path (the fakes, computing in float64) against the pure path: both train, and they agree."""
    install(monkeypatch, on_cpu=True)
    try:
        output = tmp_path / "gpu.md"
        assert bench.main(["--smoke", "--device", "cpu", "--length", "64", "--output", str(output)]) == 0
    finally:
        kernels.available.cache_clear()
    text = output.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| tiny_2stage |")]
    assert len(rows) == 2 + 4  # two training paths, four parity checks
    kernel_row, pure_row = rows[0], rows[1]
    assert "| kernels |" in kernel_row and "ssd_scan" in kernel_row and "conv_silu" in kernel_row
    assert "attention" in kernel_row and "| pure PyTorch |" in pure_row and pure_row.endswith("| none |")
    for row in rows[2:]:  # float32 and bf16, packed or not: logits agree wherever the routing did, losses closely
        cells = [c.strip() for c in row.strip("|").split("|")]
        tolerance = 1e-4 if cells[1] == "float32" else 0.1
        assert float(cells[5]) < tolerance and float(cells[4].rstrip("%")) > 10, row
        kernel_loss, pure_loss = (float(x) for x in cells[8].split(" / "))
        assert abs(kernel_loss - pure_loss) < 1e-2, row
    assert "failed" not in text
