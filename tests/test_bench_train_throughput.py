"""benchmarks/train_throughput.py end to end on tiny inputs: model rows against the FLOP-matched isotropic baseline,
and the trainer's own rows (the calibration and the baseline themselves: test_calibration.py)."""

import subprocess
import sys

import pytest
import yaml

from .conftest import BENCHMARKS, OFFICIAL
from .test_training import corpus, tiny_config  # noqa: F401  (a fixture)

TINY = OFFICIAL / "tiny_2stage" / "config.json"
pytestmark = pytest.mark.slow


def table(tmp_path, *args: str) -> dict[str, list[str]]:
    """Run the script; its table rows by their first two cells."""
    output = tmp_path / "table.md"
    command = [sys.executable, "-m", "benchmarks.train_throughput", *args, "--threads", "1", "--output", str(output)]
    subprocess.run(command, cwd=BENCHMARKS.parent, check=True, capture_output=True, timeout=600)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in output.read_text().splitlines()]
    return {f"{r[0]} {r[2]}": r for r in rows if len(r) > 10 and r[0] not in ("model", "---")}


def number(cell: str) -> float:
    return float(cell.rstrip("x").replace(",", "").split()[0])


def test_model_rows_against_the_isotropic_baseline(tmp_path):
    args = ["--models", str(TINY), "iso", "--lengths", "64", "--compression", "2", "2", "--baseline", "iso"]
    args += ["--windows", "1", "--warmup", "1", "--steps", "1", "--mm-size", "64"]
    args += ["--text", str(OFFICIAL / "README.md")]
    rows = table(tmp_path, *args)
    hnet, iso = rows["tiny_2stage fp32"], rows["iso fp32"]
    assert hnet[1] == iso[1] == "64 x 1" and number(hnet[6]) > 0 and number(iso[6]) > 0
    assert iso[8] == "1.00x" and number(hnet[8]) == pytest.approx(number(hnet[6]) / number(iso[6]), abs=0.006)
    assert number(hnet[9]) > 0 and iso[10] == "1.00"
    # realised bytes per chunk of each stage: the calibration's target (AdamW runs with lr 0, so the routers stay), up
    # to the few boundaries that flip together on 64 bytes
    assert all(1.9 <= float(c) <= 2.3 for c in hnet[11].split(" / ")), hnet[11]


def test_trainer_rows_in_both_precisions(tmp_path, corpus):  # noqa: F811
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(corpus, tmp_path / "run")))
    args = ["--models", str(config), "--precisions", "fp32", "bf16", "--warmup", "1", "--steps", "2", "--mm-size", "64"]
    rows = table(tmp_path, *args)
    for precision in ("fp32", "bf16"):
        row = rows[f"tiny {precision}"]
        assert row[1] == "96 x 4" and number(row[6]) >= number(row[7]) > 0  # best step at least the median
        assert 0 < float(row[-1]) < 12  # the validation BPB at the end
    assert rows["tiny fp32"][8] == "1.00x"
