"""Peak training memory against sequence length, with and without gradient checkpointing.

For each length (default 4K to 32K bytes; batch 1, packed English documents) and each mode (plain; every stack
recomputed in the backward pass, ``model.set_gradient_checkpointing()``), a fresh process builds the model
(``configs/models/small_2stage.json``, routers calibrated to the ratio-loss targets), resets the kernel's peak-RSS
counter and runs ``--steps`` training steps (the trainer's objective, AdamW). Peak = peak RSS - RSS before the steps.
Memory should grow linearly with length (growth 2.0x per doubling). A length is skipped when the linear
extrapolation from the previous two exceeds the memory available minus ``--margin-gb``. Writes
``benchmarks/results/memory_cpu.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks import common
from dynamic_chunker import HNetConfig
from dynamic_chunker.evaluation.compression import positions_per_chunk
from dynamic_chunker.evaluation.flops import default_compression

GIB = 2**30


def measure(spec: dict) -> dict:
    """One (length, mode) measurement; runs in its own process."""
    config = HNetConfig.from_dict(spec["config"])
    targets = default_compression(config)
    ids = common.text_rows(Path(spec["text"]), 1, spec["length"] + 1)
    model = common.build(config, ids[:, :-1], targets)
    model.set_gradient_checkpointing(spec["checkpointing"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    exact = common.reset_peak_rss()
    baseline = common.peak_rss_bytes()
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        counts = common.chunk_counts(common.training_step(model, optimizer, ids, targets))
        times.append(time.perf_counter() - start)
    return {
        "peak_bytes": common.peak_rss_bytes() - baseline,
        "exact": exact,
        "seconds": min(times),
        "compression": positions_per_chunk(spec["length"], counts),
    }


def main(argv: list[str] | None = None) -> None:
    if common.worker_entry(argv, measure):
        return
    parser = common.parser(__doc__, "memory_cpu.md", common.MODELS / "small_2stage.json")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--steps", type=int, default=1, help="training steps per measurement")
    parser.add_argument("--margin-gb", type=float, default=2.0, help="memory to leave free on the machine")
    args = common.parse(parser, argv)
    run = common.Run("memory", argv)
    config = HNetConfig.from_json(args.config)
    rows = []
    for checkpointing in (False, True):
        done: list[tuple[int, int]] = []
        for length in sorted(args.lengths):
            row, available = {"length": length, "checkpointing": checkpointing}, common.available_bytes()
            if len(done) >= 2 and available is not None:
                (l1, m1), (l2, m2) = done[-2:]
                predicted = m2 + (m2 - m1) / (l2 - l1) * (length - l2)
                if predicted > available - args.margin_gb * GIB:
                    row["error"] = f"skipped: predicted {predicted / GIB:.1f} GiB, {available / GIB:.1f} GiB available"
            if "error" not in row:
                spec = {"config": config.to_dict(), "text": str(args.text), "length": length, "steps": args.steps}
                try:
                    row.update(
                        common.run_worker("benchmarks.memory", {**spec, "checkpointing": checkpointing}, "memory")
                    )
                    done.append((length, row["peak_bytes"]))
                except common.WorkerError as err:  # e.g. out of memory: a row with the error
                    row["error"] = err.last_line
            rows.append(row)
            print(f"{length} bytes, checkpointing {checkpointing}: {row.get('error', row.get('peak_bytes'))}")
    lines = run.header(
        "Peak training memory against sequence length (CPU)",
        f"Model: `{common.shown(args.config)}` {config.arch_layout}, widths {config.d_model}, float32, random weights, "
        f"routers calibrated to {default_compression(config)} bytes per chunk; batch 1; text "
        f"`{common.shown(args.text)}` "
        f"(packed documents); {args.steps} training step(s) ({common.LOSS}, backward, AdamW) per fresh process",
    )
    lines += [
        "| bytes | gradient checkpointing | peak memory | per KiB of sequence | growth vs previous length "
        "| step time (s) | bytes/chunk |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    previous = {}
    for r in rows:
        mode = "yes" if r["checkpointing"] else "no"
        if "error" in r:
            lines.append(f"| {r['length']} | {mode} | {r['error']} | | | | |")
            continue
        growth = previous.get(r["checkpointing"])
        lines.append(
            f"| {r['length']} | {mode} | {r['peak_bytes'] / GIB:.2f} GiB | "
            f"{r['peak_bytes'] / (r['length'] / 1024) / 2**20:.1f} MiB | "
            + (f"{r['peak_bytes'] / growth:.2f}x" if growth else "-")
            + f" | {r['seconds']:.1f} | {common.fmt(r['compression'])} |"
        )
        previous[r["checkpointing"]] = r["peak_bytes"]
    exact = all(r.get("exact", True) for r in rows)
    lines += ["", "Peak memory = peak RSS during the step(s) minus the RSS just before (model and input in memory)."]
    lines[-1] += "" if exact else " The peak counter could not be reset: may under-report."
    common.write_report(lines, args.output)


if __name__ == "__main__":
    main()
