"""What every benchmark script shares: text, models, the training step, timing, peak memory, workers, reports.

Scripts run from the repository root as modules (``python -m benchmarks.NAME``) and import only this module and the
library. Every table says the command that makes it, the machine and the load around the run (it may be shared).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dynamic_chunker import HNetForCausalLM
from dynamic_chunker.config import BOS
from dynamic_chunker.evaluation.calibration import calibrate_routing
from dynamic_chunker.evaluation.report import load_average, machine
from dynamic_chunker.files import atomic_write
from dynamic_chunker.training.objective import RATIO_LOSS_WEIGHT, window_losses

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MODELS = ROOT / "configs" / "models"
ENGLISH = ROOT / "data" / "english"
TEXTS = [ENGLISH / "val.bin", Path("/usr/share/common-licenses/GPL-3"), ROOT / "README.md"]
LOSS = f"next-byte CE + {RATIO_LOSS_WEIGHT} x ratio losses (training/objective.py)"
GIB = 2**30


# ------------------------------------------------------------------------------------------------------- text
def default_text() -> Path | None:
    """The English validation split if it is prepared, else a licence text or the README."""
    return next((p for p in TEXTS if p.is_file()), None)


def text_rows(path: Path, rows: int, length: int, stride: int | None = None) -> torch.Tensor:
    """(rows, length) byte ids of a file, row r starting r * stride bytes in (default: consecutive rows); the file
    is repeated where it is too short."""
    data = np.fromfile(path, dtype=np.uint8)
    if len(data) == 0:
        raise ValueError(f"text file {path} is empty")
    stride = length if stride is None else stride
    need = (rows - 1) * stride + length
    data = np.tile(data, -(-need // len(data)))
    return torch.from_numpy(np.stack([data[r * stride : r * stride + length] for r in range(rows)]).astype(np.int64))


def documents(ids: torch.Tensor) -> torch.Tensor:
    """(B, L) document ids of packed text: a new document at every BOS byte (a prepared corpus), as in training."""
    return (ids == BOS).long().cumsum(dim=1)


# ------------------------------------------------------------------------------------------------------ models
def build(config, ids: torch.Tensor | None = None, targets: list[float] | None = None):
    """A random-init model (seed 0), its routers calibrated on ``ids`` to ``targets`` bytes per chunk if given."""
    torch.manual_seed(0)
    model = HNetForCausalLM(config)
    if ids is not None and targets:
        calibrate_routing(model, ids, targets)
    return model


def training_step(model, optimizer, ids: torch.Tensor, targets: list[float], packed: bool = True, bf16: bool = False):
    """One step on (B, L + 1) windows: the trainer's objective, backward, then ``optimizer.step()`` (if any).
    Returns the losses (``.output`` is the forward's output)."""
    model.check_inputs = False  # as in the trainer: the windows are valid bytes, no device reads to check them
    model.zero_grad(set_to_none=True)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        losses = window_losses(model, ids, targets, documents(ids) if packed else None)
    losses.total().backward()
    if optimizer is not None:
        optimizer.step()
    return losses


def chunk_counts(output) -> list[int]:
    """Chunks of every stage in a forward's output."""
    return [int(r.boundary_mask.sum()) for r in output.routing]


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------------ timing
def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device | str = "cpu") -> tuple[float, object]:
    """(seconds, result) of one call, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def best_of(passes: int, fn, device: torch.device | str = "cpu") -> tuple[float, object]:
    """(fastest seconds, last result) of ``passes`` calls."""
    runs = [timed(fn, device) for _ in range(passes)]
    return min(t for t, _ in runs), runs[-1][1]


def matmul_rate(dtype: torch.dtype, size: int, repeats: int, device: torch.device | str = "cpu") -> float:
    """FLOP/s of the best of ``repeats`` (size x size) @ (size x size) products on ``device``."""
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    return 2 * size**3 / best_of(repeats, lambda: torch.mm(a, b), device)[0]


def profile_table(fn, rows: int = 15) -> str:
    """Top operators (self CPU time) of one call of ``fn`` after a warm-up call."""
    from torch.profiler import profile

    fn()
    with profile() as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# ----------------------------------------------------------------------------------------------- peak memory
def reset_peak(device: torch.device | str = "cpu") -> bool:
    """Reset the peak-memory counter: CUDA's allocator, or the kernel's peak RSS of this process (Linux; False where
    that is unsupported)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_bytes(device: torch.device | str = "cpu") -> int:
    """CUDA's peak allocation, or the peak RSS (VmHWM: not ru_maxrss, which keeps the parent's RSS after a fork)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


# ----------------------------------------------------------------------------------------- fresh-process workers
class WorkerError(RuntimeError):
    """A fresh-process measurement failed; ``last_line`` is the last exception it printed to stderr (else its last
    line, or its exit status)."""

    def __init__(self, what: str, returncode: int, stderr: str):
        super().__init__(f"{what} failed:\n{stderr}")
        lines = stderr.strip().splitlines() or [f"exit status {returncode}"]
        errors = [line for line in lines if re.match(r"[A-Za-z_][\w.]*: ", line)]  # "module.SomeError: why"
        self.last_line = (errors or lines)[-1]


def run_worker(module: str, spec: dict, what: str) -> dict:
    """``python -m MODULE --worker SPEC`` in a fresh process (its peak RSS is its own): the JSON it prints last."""
    command = [sys.executable, "-m", module, "--worker", json.dumps(spec)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise WorkerError(what, proc.returncode, proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_entry(argv: list[str] | None, measure) -> bool:
    """In a worker process (``--worker SPEC``): print ``measure(spec)`` as JSON and return True."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["--worker"]:
        return False
    print(json.dumps(measure(json.loads(args[1]))))
    return True


# ---------------------------------------------------------------------------------------------------- arguments
def parser(doc: str, output: str, config: Path | None = None, threads: int | None = None, text: bool = True):
    """The options every script has: ``--config`` (if given a default), ``--text`` (if ``text``), ``--threads``,
    ``--output`` (default ``benchmarks/results/OUTPUT``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if config is not None:
        p.add_argument("--config", type=Path, default=config, help="model config JSON (official schema)")
    if text:
        p.add_argument("--text", type=Path, default=default_text(), help="text file (default: data/english/val.bin)")
    p.add_argument("--threads", type=int, default=threads, help="torch threads (default: torch's choice)")
    p.add_argument("--output", type=Path, default=RESULTS / output, help="markdown file for the report")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, check that the text exists and set the torch threads."""
    args = p.parse_args(argv)
    if "text" in args and (args.text is None or not args.text.is_file()):
        p.error(f"text file not found: {args.text}; pass --text PATH")
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


# ------------------------------------------------------------------------------------------------------ reports
def git(*args: str, cwd: Path = ROOT) -> str:
    """A git command's output in ``cwd`` ("" where it fails)."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def code_version() -> str:
    """The commit measured, and which library files differed from it."""
    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    status = git("status", "--porcelain", "--untracked-files=no", "--", "src").splitlines()
    changed = [line.split(None, 1)[1] for line in status]
    return f"commit {commit}" + (f" with uncommitted changes in {', '.join(changed)}" if changed else "")


def shown(path: Path | str) -> str:
    """Repository-relative where possible, so that tables do not name the machine's folders."""
    path = Path(path).absolute()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


class Run:
    """A benchmark run: its command, the load average before and after, its duration and the report header."""

    def __init__(self, script: str, argv: list[str] | None, device: str = "cpu"):
        self.command = " ".join(["python -m benchmarks." + script, *(sys.argv[1:] if argv is None else argv)])
        self.device, self.loads, self.start = device, [load_average()], time.perf_counter()

    def header(self, title: str, *lines: str) -> list[str]:
        """Title, command, code, machine, load, run time, then ``lines``; call when the measurements are done."""
        self.loads.append(load_average())
        seconds = time.perf_counter() - self.start
        return [
            f"# {title}",
            "",
            f"Command: `{self.command}`  ",
            f"Code: {code_version()}  ",
            f"Machine: {machine(self.device)}; load average (1/5/15 min) before / after: {self.loads[0]} / "
            f"{self.loads[1]} (other work may have shared the machine); run time {seconds:.0f} s  ",
            *[line + "  " for line in lines],
            "",
        ]


def fmt(values: list[float], digits: int = 2) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def write_report(lines: list[str], path: Path) -> None:
    """Print a benchmark's report and save it (atomically, UTF-8)."""
    text = "\n".join(lines).rstrip() + "\n"
    print("\n" + text)
    atomic_write(path, text)
    print(f"wrote {shown(path)}")
