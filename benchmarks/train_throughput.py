"""Training throughput and peak memory of an H-Net against an isotropic byte Transformer of equal FLOPs per byte.

For each sequence length (default 1K, 4K, 16K bytes; batch 1) the script measures forward + backward on real English
text (a local file, repeated to length) for

* the H-Net in ``benchmarks/configs/hnet_2stage_bench.json`` (about 41M parameters): the released 2-stage layout
  (m4 / T1m4 / T<n> / m4T1 / m4, windows 1023 / 1023 / global, 64-dim heads with half-head rotary, SwiGLU width about
  8/3 of the model width) shrunk so that one 16K-byte training step takes about a minute on 2 cores: widths 256, 384,
  512 instead of 1024, 1536, 2048, a main network of T8 instead of T27, and d_state 64 instead of 128. Loss:
  next-byte cross-entropy + 0.03 x the ratio losses (the paper's objective);
* an isotropic byte Transformer in the style of the paper's LlamaByte baseline: ``["T<depth>"]`` at the H-Net's outer
  width with a 1024-key sliding window (window_size 1023), whose depth and SwiGLU width are chosen so that its FLOPs
  per byte (paper App. B counting, ``dynamic_chunker.evaluation.flops``) are closest to the H-Net's at the target
  compression and ``--match-length``. Loss: next-byte cross-entropy.

Compression. A random-init router decides its own compression (about 2 and 1.5 bytes per chunk here, far from the
paper's). Compute per byte depends on it, so before measuring each length the script sets each stage's routing
projections to W_q = W_k = I + g u u^T, with u the mean direction of that stage's encoder outputs on the benchmark
text, and bisects g until the stage selects 1/N of its positions, N the ratio-loss target (default 3 and 3, as in
the paper's 2-stage models). Boundaries still depend on the content (they fall where adjacent encoder outputs point
most apart); for batch 1 only their count affects the cost. The realised compression of every measured run is
reported, and the H-Net FLOPs per byte in the table use it.

Memory. Each (model, length) runs in a fresh subprocess, so that allocator state and high-water marks of one run
cannot leak into another. The subprocess builds the model and the input, then resets the kernel's peak-RSS counter
(``/proc/self/clear_refs`` = 5, Linux), takes the current RSS as baseline, runs the warm-up and timed iterations and
reads the peak RSS (VmHWM). "Peak memory" = peak - baseline: everything a training step adds on top of the resting
model (activations kept for backward, gradients, temporaries, allocator slack), measured by the OS rather than
estimated from tensors. Where the counter cannot be reset the baseline is the peak so far, which can only
under-report, and the table says so.

Time. Warm-up iterations are excluded; then iterations run until at least ``--min-iters`` and ``--min-time``
seconds, but no iteration starts that would overrun ``--budget`` seconds per measurement (where none fits after
the warm-up, the warm-up's cold time is reported and marked with *). bytes/s = length /
the fastest timed iteration: on a shared machine other processes only ever add time (with busy cores an OpenMP
barrier can wait a whole scheduler slice; ``--threads 1`` is then much steadier), so the minimum is the least noisy
estimate; all iteration times are saved with the table. Both models of one length run back to back, so the ratios
compare runs that saw similar machine load.

Usage: ``python benchmarks/train_throughput.py`` (``make bench``); ``--help`` for options. Writes the table, the
command and the machine description to ``benchmarks/results/train_throughput_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from decode_throughput import calibrate_routing, load_average, write_report

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.evaluation.flops import default_compression, forward_flops_per_byte, training_flops_per_byte
from dynamic_chunker.reference import RATIO_LOSS_WEIGHT

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "configs" / "hnet_2stage_bench.json"
DEFAULT_OUTPUT = HERE / "results" / "train_throughput_cpu.md"
DEFAULT_TEXTS = [Path("/usr/share/common-licenses/GPL-3"), HERE.parent / "README.md"]
SEED = 0


# --------------------------------------------------------------------------------------------------- models
def isotropic_config(hnet: HNetConfig, target_flops: float, seq_len: int, window: int = 1023) -> HNetConfig:
    """LlamaByte-style ``["T<depth>"]`` at the H-Net's outer width whose FLOPs per byte are closest to the target.

    Searches depth and SwiGLU width (multiples of 128 between 2 and 4 times the width); ties go to the SwiGLU width
    nearest the usual 8/3 ratio.
    """
    width = hnet.d_model[0]
    heads = max(1, width // 64)
    best = None
    for ffn in range(128 * math.ceil(2 * width / 128), 4 * width + 1, 128):
        for depth in range(1, 129):
            cfg = HNetConfig.from_dict(
                {
                    "arch_layout": [f"T{depth}"],
                    "d_model": [width],
                    "d_intermediate": [ffn],
                    "ssm_cfg": {"d_state": hnet.ssm_cfg.d_state},
                    "attn_cfg": {
                        "num_heads": [heads],
                        "rotary_emb_dim": [width // heads // 2],
                        "window_size": [window],
                    },
                }
            )
            flops = forward_flops_per_byte(cfg, seq_len, [])
            key = (abs(flops - target_flops), abs(ffn - 8 * width / 3))
            if best is None or key < best[0]:
                best = (key, cfg)
            if flops > target_flops:
                break
    return best[1]


def build_model(config: HNetConfig) -> HNetForCausalLM:
    torch.manual_seed(SEED)
    return HNetForCausalLM(config)


def byte_text(path: Path, length: int) -> torch.Tensor:
    """(1, length + 1) byte ids of the file repeated to length (inputs and next-byte targets)."""
    data = path.read_bytes()
    if not data:
        raise ValueError(f"text file {path} is empty")
    data = (data * math.ceil((length + 1) / len(data)))[: length + 1]
    return torch.tensor(list(data), dtype=torch.long)[None]


# --------------------------------------------------------------------------------------------------- worker
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process to its current RSS (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS of this process since start or the last reset.

    /proc/self/status VmHWM on Linux. Not ``getrusage().ru_maxrss``: after fork + exec that also carries the RSS of
    the parent at the time of the fork, which the reset does not clear.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure(spec: dict) -> dict:
    """One (model, length) measurement; runs in its own process."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    config = HNetConfig.from_dict(spec["config"])
    model = build_model(config)
    if spec.get("routing"):
        model.load_state_dict({**model.state_dict(), **torch.load(spec["routing"], weights_only=True)})
    ids = byte_text(Path(spec["text"]), spec["length"])
    inputs, labels = ids[:, :-1], ids[:, 1:]
    targets = spec["ratio_targets"]

    def step() -> list[int]:
        model.zero_grad(set_to_none=True)
        out = model(inputs)
        loss = F.cross_entropy(out.logits.flatten(0, 1), labels.flatten())
        if out.routing:
            loss = loss + RATIO_LOSS_WEIGHT * sum(model.ratio_losses(out, targets))
        loss.backward()
        return [int(r.boundary_mask.sum()) for r in out.routing]

    def timed_step() -> tuple[float, list[int]]:
        start = time.perf_counter()
        counts = step()
        return time.perf_counter() - start, counts

    exact_peak = reset_peak_rss()
    baseline = peak_rss_bytes()
    warm: list[float] = []
    for _ in range(spec["warmup"]):
        seconds, counts = timed_step()
        warm.append(seconds)
    times: list[float] = []
    budget_left = spec["budget"] - sum(warm)
    while budget_left > 0 and len(times) < spec["max_iters"]:
        done = len(times) >= spec["min_iters"] and sum(times) >= spec["min_time"]
        last = times or warm
        over_budget = bool(last) and last[-1] > budget_left  # the next iteration would not fit
        if done or over_budget:
            break
        seconds, counts = timed_step()
        times.append(seconds)
        budget_left -= seconds
    cold = not times  # no timed iteration fitted after the warm-up: report the warm-up
    lengths = [spec["length"], *counts]
    return {
        "seconds": times or warm,
        "cold": cold,
        "bytes_per_s": spec["length"] / min(times or warm),
        "peak_bytes": peak_rss_bytes() - baseline,
        "exact_peak": exact_peak,
        "compression": [lengths[i] / lengths[i + 1] for i in range(len(counts))],
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
    }


class WorkerError(RuntimeError):
    """A fresh-process measurement failed; ``last_line`` is the last line it wrote to stderr (or its exit status)."""

    def __init__(self, what: str, returncode: int, stderr: str):
        super().__init__(f"{what} failed:\n{stderr}")
        self.last_line = (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1]


def run_worker(script: str, spec: dict, what: str) -> dict:
    """Run ``python SCRIPT --worker SPEC`` in a fresh process (so that its peak RSS is its own) and return the JSON
    object it prints last; raises :class:`WorkerError` naming ``what`` if the process fails."""
    proc = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise WorkerError(what, proc.returncode, proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------- report
def code_version() -> str:
    """The commit measured, and which source files differed from it (other work in progress)."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "src").splitlines()
    files = ", ".join(line.split(None, 1)[1] for line in changed)  # "XY path"; git() strips the first line
    return f"commit {commit}" + (f" with uncommitted changes in {files}" if files else "")


def machine(threads: int) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpus} CPUs (nproc), {cpu}, torch {torch.__version__}, {threads} torch threads"


def layout(config: HNetConfig) -> str:
    def flat(node) -> str:
        return node[0] if len(node) == 1 else f"{node[0]} / {flat(node[1])} / {node[2]}"

    return f"{flat(config.arch_layout)}, widths {config.d_model}, d_intermediate {config.d_intermediate}"


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def shown_path(path: Path) -> str:
    """Repository-relative where possible, so that saved tables do not name the machine's folders."""
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def speed(result: dict) -> str:
    return f"{result['bytes_per_s']:,.0f}" + ("*" if result["cold"] else "")


def report(
    args, hnet: HNetConfig, iso: HNetConfig, rows: list[dict], command: str, loads: list[str], code: list[str]
) -> str:
    lines = [
        "# Training throughput: H-Net vs isotropic byte Transformer of equal FLOPs per byte (CPU)",
        "",
        f"Command: `{command}`",
        "",
        "Code: " + (code[0] if code[0] == code[1] else f"{code[0]} at the start, {code[1]} at the end"),
        "",
        f"Machine: {machine(rows[0]['hnet']['threads'])}; load average before / after: {loads[0]} / {loads[1]} "
        "(the benchmark itself accounts for about 1 per busy thread)",
        "",
        f"Text: `{args.text}` repeated to length; batch 1; forward + backward (no optimizer step); "
        f"{args.warmup} warm-up iteration(s), then at least {args.min_iters} timed iterations and {args.min_time:g} s "
        f"within a budget of {args.budget:g} s per measurement; bytes/s from the fastest timed iteration "
        "(* = no timed iteration fitted in the budget after the warm-up: the cold warm-up time, page faults of fresh "
        "memory included).",
        "",
        f"- H-Net: `{shown_path(args.config)}`: {layout(hnet)}, d_state {hnet.ssm_cfg.d_state}, "
        f"windows {hnet.attn_cfg.window_size}; {rows[0]['hnet']['params'] / 1e6:.1f}M parameters; router calibrated "
        f"to {args.compression} bytes per chunk per stage (see the script's docstring).",
        f"- Isotropic: {layout(iso)}, {iso.attn_cfg.num_heads[0]} heads, sliding window "
        f"{iso.attn_cfg.window_size[0] + 1} keys; {rows[0]['iso']['params'] / 1e6:.1f}M parameters; depth and SwiGLU "
        f"width chosen to match the H-Net's forward FLOPs per byte at {args.match_length} bytes.",
        "",
        "| bytes | H-Net bytes/s | isotropic bytes/s | ratio H/I | H-Net peak mem | isotropic peak mem | ratio H/I "
        "| H-Net bytes/chunk per stage | fwd MFLOPs/byte H / I | training GFLOP/s H / I |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        h, i = row["hnet"], row["iso"]
        h_flops = forward_flops_per_byte(hnet, row["length"], h["compression"])
        i_flops = forward_flops_per_byte(iso, row["length"], [])
        h_train = training_flops_per_byte(hnet, row["length"], h["compression"])
        i_train = training_flops_per_byte(iso, row["length"], [])
        lines.append(
            f"| {row['length']} | {speed(h)} | {speed(i)} | "
            f"{h['bytes_per_s'] / i['bytes_per_s']:.2f} | "
            f"{fmt_bytes(h['peak_bytes'])} | {fmt_bytes(i['peak_bytes'])} | "
            f"{h['peak_bytes'] / i['peak_bytes']:.2f} | {' / '.join(f'{c:.2f}' for c in h['compression'])} | "
            f"{h_flops / 1e6:.1f} / {i_flops / 1e6:.1f} | "
            f"{h_train * h['bytes_per_s'] / 1e9:.1f} / {i_train * i['bytes_per_s'] / 1e9:.1f} |"
        )
    lines += [
        "",
        "Peak memory: peak RSS during the warm-up and timed iterations minus the RSS just before them, each "
        "(model, length) in a fresh process"
        + (
            "."
            if all(r[m]["exact_peak"] for r in rows for m in ("hnet", "iso"))
            else " (peak counter could not be reset: the numbers may under-report)."
        ),
        "FLOPs: paper App. B counting (`dynamic_chunker.evaluation.flops`) with the H-Net's realised compression; "
        "training = 3 x forward. Iteration times (s): "
        + "; ".join(
            f"{r['length']}: H {', '.join(f'{t:.2f}' for t in r['hnet']['seconds'])} | "
            f"I {', '.join(f'{t:.2f}' for t in r['iso']['seconds'])}"
            for r in rows
        ),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="H-Net config (official JSON schema)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384], help="sequence lengths")
    parser.add_argument(
        "--compression",
        type=float,
        nargs="+",
        default=None,
        help="bytes per chunk per stage to calibrate the router to (default: ratio-loss targets)",
    )
    parser.add_argument("--match-length", type=int, default=4096, help="length at which FLOPs per byte are matched")
    parser.add_argument("--text", type=Path, default=next((p for p in DEFAULT_TEXTS if p.exists()), None))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-iters", type=int, default=2)
    parser.add_argument("--max-iters", type=int, default=10)
    parser.add_argument("--min-time", type=float, default=5.0, help="seconds of timed iterations per measurement")
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds per (model, length) measurement: no timed iteration starts that would not fit; when none "
        "fits after the warm-up, the warm-up's (cold) time is reported and marked",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file for the table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        if args.text is None or not args.text.is_file():
            parser.error(f"text file not found: {args.text}; pass --text PATH to a local English text")
        if any(n <= 1 for n in args.lengths) or args.warmup < 0 or args.min_iters < 1 or args.budget <= 0:
            parser.error("lengths must be > 1, --warmup >= 0, --min-iters >= 1 and --budget > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure(json.loads(args.worker))))
        return
    hnet = HNetConfig.from_json(args.config)
    args.compression = args.compression or default_compression(hnet)
    if len(args.compression) != hnet.num_stages - 1:
        raise SystemExit(f"--compression needs {hnet.num_stages - 1} values for {args.config}")
    target = forward_flops_per_byte(hnet, args.match_length, args.compression)
    iso = isotropic_config(hnet, target, args.match_length)
    print(
        f"H-Net {layout(hnet)}: {target / 1e6:.2f} MFLOPs/byte forward at {args.match_length} bytes "
        f"and {args.compression} bytes per chunk"
    )
    print(f"isotropic {layout(iso)}: {forward_flops_per_byte(iso, args.match_length, []) / 1e6:.2f} MFLOPs/byte")
    common = {
        "text": str(args.text),
        "warmup": args.warmup,
        "min_iters": args.min_iters,
        "max_iters": args.max_iters,
        "threads": args.threads,
        "min_time": args.min_time,
        "budget": args.budget,
        "ratio_targets": args.compression,
    }
    rows, loads, code = [], [load_average()], [code_version()]
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            routing = Path(tmp) / f"routing_{length}.pt"
            model = build_model(hnet)
            torch.save(calibrate_routing(model, byte_text(args.text, length)[:, :-1], args.compression), routing)
            del model
            row = {"length": length}
            for name, config in (("hnet", hnet), ("iso", iso)):
                spec = {
                    **common,
                    "name": name,
                    "config": config.to_dict(),
                    "length": length,
                    "routing": str(routing) if name == "hnet" else None,
                }
                row[name] = run_worker(__file__, spec, f"measurement of {name} at {length} bytes")
                print(
                    f"{length:>6} bytes  {name:<4} {row[name]['bytes_per_s']:>9,.0f} bytes/s  "
                    f"peak +{fmt_bytes(row[name]['peak_bytes'])}  compression {row[name]['compression']}",
                    flush=True,
                )
            rows.append(row)
    command = "python " + " ".join([str(Path(sys.argv[0])), *(sys.argv[1:] if argv is None else argv)])
    text = report(args, hnet, iso, rows, command.strip(), [*loads, load_average()], [*code, code_version()])
    write_report(text, args.output)


if __name__ == "__main__":
    main()
