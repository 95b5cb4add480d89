"""Training throughput, peak memory and MFU: the trainer on its configs, or one model on packed text.

Every measurement runs in a fresh process (its peak memory is its own) and is one row of the table. A model is

- a training YAML (``configs/tiny_2stage.yaml``): the trainer itself (``hnet train``, the config's sequence length,
  batch, optimizer and corpus) for ``--warmup`` + ``--steps`` steps in a throwaway run folder, validation only at the
  end (``--set eval.windows=4`` shortens it): bytes/s of the fastest and the median step after the warm-up, peak RSS
  of the process, the final validation BPB. ``--commit REV`` also runs these in a git worktree of REV (its code and
  configs, this checkout's corpus), so that two commits are compared in one run;
- a model JSON (``configs/models/small_2stage.json``) or ``iso``, the isotropic byte Transformer with the FLOPs per
  byte of the JSON before it at ``--match-length`` (``evaluation.baselines``, sliding window 1024 like LlamaByte):
  random weights, routers calibrated to ``--compression`` (default: the ratio-loss targets); ``--batch`` rows of each
  of ``--lengths`` bytes of packed documents of ``--text``, cycling over ``--windows`` windows; the trainer's objective,
  backward and AdamW; ``--steps`` timed steps after ``--warmup``; peak RSS of the steps minus the RSS before them.

Each model is crossed with ``--precisions`` (fp32, bf16 autocast), ``--compile`` (off, on: ``model.compile_blocks()``,
the trainer's compiled Mamba-2 blocks; for a YAML ``train.compile=true`` where the commit has it, while off leaves the
config's default, which for runs this short is off) and ``--checkpointing`` (off, on: every stage recomputed
in the backward pass). "vs base": bytes/s and peak memory against the first row of the same model and length, or with
``--baseline NAME`` against that model's row of the same length and settings. MFU = training FLOPs per byte (paper
App. B at the realised compression, 3 x forward) x bytes/s / the ``torch.mm`` rate of the row's precision, measured in
this run. ``--profile`` adds one step's operator profile per model (first setting). The table goes to
``benchmarks/results/train_throughput_cpu.md`` unless ``--output``.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks import common
from dynamic_chunker import HNetConfig
from dynamic_chunker.evaluation.baselines import isotropic_config
from dynamic_chunker.evaluation.compression import positions_per_chunk
from dynamic_chunker.evaluation.flops import default_compression, forward_flops_per_byte, training_flops_per_byte
from dynamic_chunker.layers import kernels
from dynamic_chunker.training import load_config
from dynamic_chunker.training.optim import build_optimizer

BENCH_CONFIG = common.HERE / "configs" / "hnet_2stage_bench.json"
SETTINGS = ("precision", "compile", "checkpointing", "kernels")
WINDOW_STRIDE = 100_003  # bytes between the starts of consecutive windows


def measure(spec: dict) -> dict:
    """One model at one length and setting, on packed text; runs in its own process."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    count, batch = spec["windows"], spec["batch"]
    rows = common.text_rows(Path(spec["text"]), count * batch, spec["length"] + 1, WINDOW_STRIDE)
    windows, targets = list(rows.split(batch)), spec["targets"]
    model = common.build(HNetConfig.from_dict(spec["config"]), windows[0][:, :-1], targets).to(spec["device"])
    windows = [w.to(spec["device"]) for w in windows]
    model.set_gradient_checkpointing(spec["checkpointing"])
    if spec["compile"]:
        torch._dynamo.reset()
        model.compile_blocks()
    exact, before = common.reset_peak(spec["device"]), common.peak_bytes(spec["device"]) * (spec["device"] == "cpu")
    bf16 = spec["precision"] == "bf16"
    with kernels.use_kernels(spec["kernels"] == "on"):  # kernel calls are counted after the warm-up
        result = time_training(model, windows, targets, spec["warmup"], spec["steps"], bf16, kernels.usage.clear)
    result.update(peak_bytes=common.peak_bytes(spec["device"]) - before, exact=exact, params=common.params(model))
    result["calls"] = ", ".join(f"{k} {n / spec['steps']:g}" for k, n in sorted(kernels.usage.items())) or "none"
    if spec["compile"]:
        counters = torch._dynamo.utils.counters
        breaks = sum(counters["graph_break"].values())
        result["dynamo"] = f"{counters['stats']['unique_graphs']} graphs, {breaks} breaks"
    if spec["profile"]:
        step = lambda: common.training_step(model, None, windows[0], targets, bf16=bf16)  # noqa: E731
        result["profile"] = common.profile_table(step)
    return result


def time_training(model, windows: list[torch.Tensor], targets: list[float], warmup: int, steps: int, bf16: bool,
                  after_warmup=None) -> dict:  # fmt: skip
    """Training steps (AdamW over the stage parameter groups with lr 0: the same arithmetic as any lr, while the
    weights, and so the calibrated compression, stay fixed) cycling over (B, L + 1) packed ``windows``:
    the first step's seconds and loss, then ``steps`` timed steps after ``warmup``: step seconds, bytes/s of the
    fastest and the median, realised compression and training FLOPs per byte (paper App. B, 3 x forward).
    ``after_warmup()`` (if given) runs before the timed steps."""
    optimizer = build_optimizer(model, 0.0, [1.0] * model.config.num_stages, weight_decay=0.1)
    device, batch, length = windows[0].device, windows[0].shape[0], windows[0].shape[1] - 1

    def step(i: int):
        return common.training_step(model, optimizer, windows[i % len(windows)], targets, bf16=bf16)

    first, losses = common.timed(lambda: step(0), device)
    for i in range(1, warmup):
        step(i)
    if after_warmup is not None:
        after_warmup()
    runs = [common.timed(lambda i=i: common.chunk_counts(step(i).output), device)
            for i in range(warmup, warmup + steps)]  # fmt: skip
    times, counts = [t for t, _ in runs], np.mean([c for _, c in runs], axis=0).tolist()
    ratio = positions_per_chunk(batch * length, counts)
    return {"first": first, "loss": losses.total().item(), "seconds": times, "bytes_per_s": batch * length / min(times),
            "median_bytes_per_s": batch * length / statistics.median(times), "compression": ratio,
            "flops_per_byte": training_flops_per_byte(model.config, length, ratio)}  # fmt: skip


def available_bytes() -> int | None:
    """MemAvailable of the machine, or None where unknown."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def run_trainer(config: Path, tree: Path, setting: dict, args, corpus: str) -> dict:
    """``hnet train`` of the code in ``tree`` for warm-up + timed steps in a fresh process: its logged rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        overrides = [f"out={out}", f"data.corpus={corpus}", f"train.steps={args.warmup + args.steps}", "eval.every=0"]
        overrides += ["checkpoint.every=0", f"train.dtype={setting['precision']}", *args.set]
        overrides += ["train.compile=true"] * setting["compile"] + ["train.gradient_checkpointing=true"] * setting[
            "checkpointing"
        ]
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        env["DYNAMIC_CHUNKER_KERNELS"] = str(int(setting["kernels"] == "on"))
        env.update({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})
        command = [sys.executable, "-m", "dynamic_chunker.cli", "train", str(config), *overrides, "--no-progress"]
        with open(Path(tmp) / "log.txt", "w+") as log:
            proc = subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                log.seek(0)
                raise common.WorkerError(f"hnet train {config.name}", proc.returncode, log.read())
        read = [list(csv.DictReader(open(out / name))) for name in ("train.csv", "eval.csv")]
        used = yaml.safe_load((out / "train.yaml").read_text())
    timed = read[0][args.warmup :]
    steps, ratio = [float(r["bytes_per_s"]) for r in timed], []
    while f"compression_{len(ratio)}" in timed[0]:
        ratio.append(sum(float(r[f"compression_{len(ratio)}"]) for r in timed) / len(timed))
    model, length, batch = used["model"], used["data"]["seq_len"], used["train"]["batch_size"]
    model = HNetConfig.from_dict(model) if isinstance(model, dict) else HNetConfig.from_json(tree / model)
    return {"length": length, "batch": batch, "first": batch * length / float(read[0][0]["bytes_per_s"]),
            "loss": float(read[0][0]["loss"]), "seconds": [batch * length / s for s in steps],
            "bytes_per_s": max(steps), "median_bytes_per_s": statistics.median(steps), "compression": ratio,
            "flops_per_byte": training_flops_per_byte(model, length, ratio), "peak_bytes": usage.ru_maxrss * 1024,
            "bpb": float(read[1][-1]["val_bpb"])}  # fmt: skip


def measure_row(what, setting: dict, tree: Path, length: int | None, args, peaks: dict, profile: bool) -> dict:
    """One row: the trainer on a YAML (in ``tree``), or a model config at ``length`` in a worker process; a row
    predicted (from the previous length's peak, linearly) to leave less than ``--margin-gb`` free is skipped."""
    if isinstance(what, Path):
        config = tree / what.relative_to(common.ROOT) if what.is_relative_to(common.ROOT) else what
        return run_trainer(config, tree, setting, args, str(load_config(what).data.corpus))
    key, available = (id(what), *setting.values()), available_bytes()
    if key in peaks and available:
        predicted = peaks[key][1] * length / peaks[key][0]
        if predicted > available - args.margin_gb * common.GIB:
            message = f"skipped: {predicted / common.GIB:.1f} GiB predicted, {available / common.GIB:.1f} available"
            raise common.WorkerError("", 0, message)
    spec = {**vars(args), **setting, "text": str(args.text), "config": what.to_dict(), "length": length}
    spec.update(targets=(args.compression or default_compression(what))[: what.num_stages - 1], profile=profile)
    spec = {k: v for k, v in spec.items() if not isinstance(v, Path)}
    result = common.run_worker("benchmarks.train_throughput", spec, f"{length} bytes")
    peaks[key] = (length, result["peak_bytes"])
    return result


@contextlib.contextmanager
def trees(commit: str | None):
    """[(commit, a git worktree of it)] for ``--commit`` (removed afterwards), then ("", this checkout)."""
    if not commit:
        yield [("", common.ROOT)]
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tree"
        proc = subprocess.run(["git", "worktree", "add", "--detach", str(folder), commit], cwd=common.ROOT,
                              capture_output=True, text=True, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"--commit {commit}: git worktree add failed: {proc.stderr.strip()}")
        try:
            yield [(commit, folder), ("", common.ROOT)]
        finally:
            common.git("worktree", "remove", "--force", str(folder))


def models(args) -> list[tuple[str, object]]:
    """(name, what) per --models entry: a YAML path, or a model config (``iso`` derived from the JSON before it)."""
    out, last = [], None
    for entry in args.models:
        name = Path(entry).stem if Path(entry).stem != "config" else Path(entry).parent.name  # a model folder
        if entry.endswith((".yaml", ".yml")):
            out.append((name, Path(entry).absolute()))
        elif entry == "iso":
            if last is None:
                raise SystemExit("--models: iso needs a model JSON before it (the H-Net whose FLOPs it matches)")
            target = forward_flops_per_byte(last, args.match_length, args.compression or default_compression(last))
            out.append(("iso", isotropic_config(last, target, args.match_length)))
        else:
            last = HNetConfig.from_json(entry)
            out.append((name, last))
    return out


def main(argv: list[str] | None = None) -> None:
    if common.worker_entry(argv, measure):
        return
    parser = common.parser(__doc__, "train_throughput_cpu.md")
    parser.add_argument("--models", nargs="+", default=[str(BENCH_CONFIG), "iso"], help="YAML, model JSON or iso")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384], help="bytes (model JSONs)")
    parser.add_argument("--batch", type=int, default=1, help="rows per step (model JSONs)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off"])
    parser.add_argument("--checkpointing", nargs="+", choices=["off", "on"], default=["off"])
    parser.add_argument("--kernels", nargs="+", choices=["on", "off"], default=["on"], help="optional CUDA kernels")
    parser.add_argument("--device", default="cpu", help="torch device of the model JSON rows (cuda: see --kernels)")
    parser.add_argument("--commit", help="also measure the YAML configs at this commit (a git worktree)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for the YAML runs")
    parser.add_argument("--baseline", help="model name that 'vs base' compares against (default: the first setting)")
    parser.add_argument("--compression", type=float, nargs="+", help="bytes per chunk per stage (default: targets)")
    parser.add_argument("--match-length", type=int, default=4096, help="length at which iso matches FLOPs per byte")
    parser.add_argument("--windows", type=int, default=2, help="different text windows the steps cycle over")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation, allocator warm-up)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row")
    parser.add_argument("--margin-gb", type=float, default=2.0, help="skip rows predicted to leave less memory free")
    parser.add_argument("--mm-size", type=int, default=4096, help="matrix size of the torch.mm rate")
    parser.add_argument("--profile", action="store_true", help="an operator profile of one step per model")
    args = common.parse(parser, argv)
    run = common.Run("train_throughput", argv)
    choices = itertools.product(args.precisions, args.compile, args.checkpointing, args.kernels)
    settings = [dict(zip(SETTINGS, (p, c == "on", g == "on", k), strict=True)) for p, c, g, k in choices]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rates = {p: common.matmul_rate(dtypes[p], args.mm_size, 5, args.device) for p in args.precisions}
    rows, profiles, peaks = [], {}, {}
    with trees(args.commit) as checkouts:
        for (name, what), setting in itertools.product(models(args), settings):
            yaml_cases, json_cases = [(r, t, None) for r, t in checkouts], [("", common.ROOT, n) for n in args.lengths]
            for rev, tree, length in yaml_cases if isinstance(what, Path) else json_cases:
                row = {"model": name, "commit": rev, "length": length, **setting}
                profile = args.profile and name not in profiles
                try:
                    row.update(measure_row(what, setting, tree, length, args, peaks, profile))
                except common.WorkerError as err:  # out of memory, an option this commit lacks: a row that says so
                    row["error"] = err.last_line
                profiles.update({name: row.pop("profile")} if "profile" in row else {})
                rows.append(row)
                print(f"{name} {rev} {setting} {length}: {row.get('error', row.get('bytes_per_s'))}", flush=True)
    common.write_report(report(args, run, rows, rates, profiles), args.output)


def report(args, run: common.Run, rows: list[dict], rates: dict, profiles: dict) -> list[str]:
    described = []
    for name, what in models(args):
        if isinstance(what, Path):
            described.append(f"`{name}`: the trainer on `{common.shown(what)}`")
        else:
            window = f", window {what.attn_cfg.window_size}" * (what.num_stages == 1)
            sizes = [r["params"] for r in rows if r["model"] == name and r.get("params")]
            size = f", {sizes[0] / 1e6:.1f}M parameters" if sizes else ""
            described.append(f"`{name}`: {what.arch_layout}{window}, widths {what.d_model}, d_ff {what.d_intermediate}")
            described[-1] += size
    lines = run.header(
        f"Training throughput, peak memory and MFU ({args.device})",
        "Models: " + "; ".join(described),
        f"Model JSONs: batch {args.batch} of `{common.shown(args.text)}` (packed documents), {args.windows} windows, "
        f"{common.LOSS}, backward, AdamW; routers calibrated to {args.compression or 'the ratio-loss targets'}. "
        f"All rows: {args.warmup} warm-up + {args.steps} timed steps"
        + (f"; trainer overrides {' '.join(args.set)}" if args.set else ""),
        f"torch.mm rate ({args.mm_size} x {args.mm_size}, best of 5): "
        + ", ".join(f"{p} {r / 1e9:.0f} GFLOP/s" for p, r in rates.items()),
    )
    lines += [
        "| model | bytes x batch | precision | compile | checkpointing | kernels (calls per step) | bytes/s (best) "
        "| bytes/s (median) | vs base | peak memory | memory vs base | bytes/chunk | training MFLOPs/byte | GFLOP/s "
        "| MFU | first step (s) | loss (step 1) | val BPB |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        model = r["model"] + (f" @{r['commit']}" if r["commit"] else "")
        head = f"| {model} | {r['length']} x {r.get('batch', args.batch)} "
        head += f"| {r['precision']} | {'on' if r['compile'] else 'off'} | {'on' if r['checkpointing'] else 'off'} | "
        head += r["kernels"] + (f" ({r['calls']})" if r.get("calls", "none") != "none" else "") + " |"
        if "error" in r:
            lines.append(f"{head} {r['error']} |" + " |" * 11)
            continue
        bases = [b for b in rows if "error" not in b and b["length"] == r["length"] and (
            b["model"] == args.baseline and all(b[k] == r[k] for k in SETTINGS)
            if args.baseline else b["model"] == r["model"])]  # fmt: skip
        base = bases[0] if bases else {"bytes_per_s": math.nan, "peak_bytes": math.nan}
        flops = r["flops_per_byte"] * r["bytes_per_s"]
        lines.append(
            f"{head} {r['bytes_per_s']:,.0f} | {r['median_bytes_per_s']:,.0f} | "
            f"{r['bytes_per_s'] / base['bytes_per_s']:.2f}x | {r['peak_bytes'] / common.GIB:.2f} GiB | "
            f"{r['peak_bytes'] / base['peak_bytes']:.2f} | {common.fmt(r['compression'])} | "
            f"{r['flops_per_byte'] / 1e6:.1f} | {flops / 1e9:.1f} | {flops / rates[r['precision']]:.1%} | "
            f"{r['first']:.2f} | {r['loss']:.3f} | " + (f"{r['bpb']:.4f} |" if "bpb" in r else "- |")
        )
    notes = [f"{r['model']} {r['commit']} {r['length']}: {common.fmt(r['seconds'], 3)}" for r in rows if "seconds" in r]
    lines += ["", "Step times (s): " + "; ".join(notes)]
    dynamo = [f"{r['model']} {r['length']} {r['precision']}: {r['dynamo']}" for r in rows if "dynamo" in r]
    lines += [f"torch.compile: {'; '.join(dynamo)}"] * bool(dynamo)
    if not all(r.get("exact", True) for r in rows):
        lines.append("The peak-RSS counter could not be reset: model rows may under-report peak memory.")
    for name, table in profiles.items():
        lines += ["", f"## Profile: one training step of {name}", "", "```", table, "```"]
    return lines


if __name__ == "__main__":
    main()
