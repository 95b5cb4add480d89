"""torch.compile of the H-Net training step on CPU: speed-up over eager, compile time, graph breaks, parity.

The model (``configs/models/tiny_2stage.json``, random weights, routers calibrated to the ratio-loss targets) runs
the trainer's objective, forward + backward (no optimizer step, so eager and compiled runs see the same weights), on
``--windows`` windows of ``--length`` bytes of packed English documents, eagerly and through ``torch.compile``.
Chunk counts differ between windows, so the inner stages see new shapes: after the first new shape Dynamo recompiles
once with symbolic lengths. Data-dependent steps (the chunk count, input checks) are graph breaks. Steady state =
fastest step after the first pass. Writes ``benchmarks/results/compile_cpu.md``.
"""

from __future__ import annotations

import time

import torch
import torch._dynamo

from benchmarks import common
from dynamic_chunker import HNetConfig
from dynamic_chunker.evaluation.flops import default_compression


def run(model, windows: list[torch.Tensor], targets: list[float], passes: int) -> dict:
    """First step, fastest later step, stage-0 boundary probabilities and chunk counts of the first pass."""
    times, probs, counts = [], [], []
    for p in range(passes):
        for ids in windows:
            start = time.perf_counter()
            out = common.training_step(model, None, ids, targets)
            times.append(time.perf_counter() - start)
            if p == 0:
                probs.append(out.routing[0].boundary_prob.detach())
                counts.append(common.chunk_counts(out))
    return {"first": times[0], "steady": min(times[len(windows) :]), "probs": probs, "counts": counts}


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, "compile_cpu.md", common.MODELS / "tiny_2stage.json")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2, help="passes over the windows (the first is not timed)")
    args = common.parse(parser, argv)
    if args.passes < 2:
        parser.error("--passes must be at least 2 (the first pass compiles)")
    run_ = common.Run("compile", argv)
    config = HNetConfig.from_json(args.config)
    targets = default_compression(config)
    rows = common.text_rows(args.text, args.windows, args.length + 1, stride=100_003)
    windows = [row[None] for row in rows]
    model = common.build(config, windows[0][:, :-1], targets)
    eager = run(model, windows, targets, args.passes)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = run(torch.compile(model), windows, targets, args.passes)
    frames = dict(torch._dynamo.utils.counters["stats"])
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    diff = max((a - b).abs().max().item() for a, b in zip(eager["probs"], compiled["probs"]))
    same = "yes" if eager["counts"] == compiled["counts"] else "NO"
    lines = run_.header(
        "torch.compile of the training step (CPU)",
        f"Model: `{common.shown(args.config)}` {config.arch_layout}, widths {config.d_model}, float32, random weights, "
        f"routers calibrated to {targets} bytes per chunk; {args.windows} windows of {args.length} bytes of "
        f"`{common.shown(args.text)}` (packed documents; chunks per stage: {eager['counts']}); {common.LOSS}, "
        "forward + backward",
    )
    lines += [
        "| mode | first step (s) | steady step (s) | bytes/s | speed-up |",
        "|---|---:|---:|---:|---:|",
        f"| eager | {eager['first']:.2f} | {eager['steady']:.3f} | {args.length / eager['steady']:,.0f} | 1.00x |",
        f"| torch.compile | {compiled['first']:.2f} | {compiled['steady']:.3f} | "
        f"{args.length / compiled['steady']:,.0f} | {eager['steady'] / compiled['steady']:.2f}x |",
        "",
        f"Dynamo: {frames.get('unique_graphs', '?')} graphs compiled, {breaks} graph breaks, frames {frames}. Same "
        f"chunk counts as eager: {same} (compiled: {compiled['counts']}); largest stage-0 boundary-probability "
        f"difference compiled vs eager: {diff:.2e}.",
    ]
    common.write_report(lines, args.output)


if __name__ == "__main__":
    main()
