"""Training throughput and peak memory of our H-Net against the pure-PyTorch peer package on PyPI.

The peer is ``h-net-dynamic-chunking`` (lucidrains, version 0.5.19 measured): its ``HNet`` wraps an encoder, an
inner network and a decoder (x-transformers ``Decoder`` stacks; it has no Mamba) around its
``DynamicSequenceChunker`` (cosine-similarity router, boundary-token selection, EMA smoothing by an associative
scan, straight-through confidence, ratio loss). It is installed only into the benchmark's own environment:
``make bench-peer`` creates ``.venv-peer`` (torch, this package, the peer) and runs this script there.

Matched models (a 1-stage byte-level H-Net with Transformer stacks, random weights, float32):

* ours: ``HNetForCausalLM`` with arch_layout ``["T<e>", ["T<m>"], "T<e>"]``, widths ``--widths`` (default 256 and
  512), 64-dim heads (4 and 8 heads), rotary on half of each head (32 dims), global causal attention (window -1),
  SwiGLU of width ``--mlp-mult`` x the stage width (default 3: 768 and 1536, multiples of 128 so our rounding
  changes nothing), default depths e = 2 and m = 4;
* peer: ``nn.Embedding(256, d0)`` -> ``h_net_dynamic_chunking.HNet(encoder, network, decoder, dim=d0,
  dim_inner=d1)`` -> ``nn.Linear(d0, 256)``, each stack an ``x_transformers.Decoder`` of the same width, depth
  (one attention + one feed-forward per layer, as each of our ``T`` layers), heads, head size, rotary dims and
  SwiGLU width (``ff_glu``, ``ff_swish``, ``ff_mult``), RMSNorm pre-norm, every stack ending in a final norm as ours
  do, and ``attn_flash=True`` so that its attention also runs through ``F.scaled_dot_product_attention``.

Unavoidable differences, all in the peer's design: it widens to the inner width with ``proj_in``/``proj_out``
linears (ours appends a learned vector and slices back, as the paper does), its SwiGLU input projection has a bias,
its chunker adds a learning-rate scaling (``frac_gradient``) and a soft straight-through for the ratio loss, and its
dict shortcut for stacks (``HNet(encoder=dict(...))``) fails with x-transformers 2.31 (it passes the misspelled
``prenorm_has_final_norm``), so the stacks are built with ``x_transformers.Decoder`` directly, the same class.
Parameter counts are printed in the table (the peer has about 2% more).

Input: real English text (``data/english/train.bin``, built by ``hnet data prepare english``); row r of a batch
starts ``r * 1_000_003`` bytes into the corpus. Loss: next-byte cross-entropy + 0.03 x the ratio loss with target
N = ``--bytes-per-chunk`` (the peer's ``target_avg_token_length`` and ``ratio_loss_weight``; its loss comes
weighted from ``HNet``). Training step: forward, backward, ``torch.optim.AdamW`` step. Its learning rate is 0:
AdamW does exactly the same arithmetic for any learning rate (no shortcut for 0), and the weights, and with them the
calibrated compression, stay fixed, so every repetition measures the same work (with lr 1e-4 the peer's router
drifted from 6 to over 8 bytes per chunk within three steps on random weights, ours by less).

Compression. Both routers compute p = (1 - cos(q, k)) / 2 of adjacent projected encoder outputs and start a chunk
where p > 0.5. Random weights would give each model its own compression, and with it its own inner-network cost,
so both are calibrated on the measured batch to N bytes per chunk: W_q = W_k = I + g u u^T (u the unit mean of the
encoder outputs; the peer's ``to_queries_keys`` holds both halves), g bisected until floor(B L / N) positions are
selected (``decode_throughput.calibrate_routing`` for ours, the same bisection here for the peer). The realised
bytes per chunk of the timed steps are reported.

Time. Both models live in one process (``torch.set_num_threads(--threads)``, default 1); after ``--warmup`` steps
each, ``--reps`` repetitions run interleaved (ours, peer, then peer, ours, ...), so both see the same machine
load; bytes/s = B L / the median step time.

Memory. Each (model, length) runs again in a fresh subprocess: it builds and calibrates the model and the
optimizer, resets the kernel's peak-RSS counter (Linux ``/proc/self/clear_refs``), takes the RSS as baseline and
runs ``--memory-steps`` training steps (the first one allocates AdamW's state); peak memory = peak RSS (VmHWM) -
baseline, as the OS sees it: activations kept for backward, gradients, optimizer state, temporaries, allocator
slack. (Not tracemalloc, which does not see torch's allocations; not ``ru_maxrss``, which cannot be reset.)

Profile. Finally one training step of each model at the longest length runs under ``torch.profiler``; the table
lists the ops with the most self CPU time.

Usage: ``make bench-peer`` (about 10 minutes on one core); writes ``benchmarks/results/peer_cpu.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from decode_throughput import calibrate_routing, load_average, machine, write_report
from torch import nn
from train_throughput import code_version, peak_rss_bytes, reset_peak_rss, run_worker

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.reference import RATIO_LOSS_WEIGHT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_TEXT = ROOT / "data" / "english" / "train.bin"
DEFAULT_OUTPUT = HERE / "results" / "peer_cpu.md"
PEER_PACKAGE = "h-net-dynamic-chunking"
ROW_OFFSET = 1_000_003
HEAD_DIM = 64
SEED = 0


def import_peer():
    """The peer's ``HNet`` and x-transformers' ``Decoder``, or a clear error saying how to get them."""
    try:
        from h_net_dynamic_chunking import HNet
        from x_transformers import Decoder
    except ImportError as err:
        raise SystemExit(
            f"the peer package {PEER_PACKAGE} is not importable here ({err}).\n"
            "It is installed only into the benchmark's own environment: run `make bench-peer` (creates .venv-peer "
            "and runs this script there), or `.venv-peer/bin/python benchmarks/peer.py` once it exists."
        ) from None
    return HNet, Decoder


# --------------------------------------------------------------------------------------------------- models
def our_config(args) -> HNetConfig:
    d0, d1 = args.widths
    return HNetConfig.from_dict(
        {
            "arch_layout": [f"T{args.encoder_depth}", [f"T{args.main_depth}"], f"T{args.encoder_depth}"],
            "d_model": [d0, d1],
            "d_intermediate": [args.mlp_mult * d0, args.mlp_mult * d1],
            "attn_cfg": {
                "num_heads": [d0 // HEAD_DIM, d1 // HEAD_DIM],
                "rotary_emb_dim": [HEAD_DIM // 2, HEAD_DIM // 2],
                "window_size": [-1, -1],
            },
        }
    )


class PeerLM(nn.Module):
    """Byte embedding -> the peer's ``HNet`` -> next-byte logits; the peer's loss is its weighted ratio loss."""

    def __init__(self, args):
        super().__init__()
        HNet, Decoder = import_peer()
        d0, d1 = args.widths

        def stack(dim: int, depth: int) -> nn.Module:
            return Decoder(
                dim=dim,
                depth=depth,
                heads=dim // HEAD_DIM,
                attn_dim_head=HEAD_DIM,
                attn_flash=True,
                rotary_pos_emb=True,
                rotary_emb_dim=HEAD_DIM // 2,
                use_rmsnorm=True,
                ff_glu=True,
                ff_swish=True,
                ff_mult=args.mlp_mult,
                ff_no_bias=True,
                pre_norm_has_final_norm=True,
            )

        self.embeddings = nn.Embedding(256, d0)
        self.hnet = HNet(
            stack(d0, args.encoder_depth),
            stack(d1, args.main_depth),
            stack(d0, args.encoder_depth),
            dim=d0,
            dim_inner=d1,
            target_avg_token_length=args.bytes_per_chunk,
            ratio_loss_weight=RATIO_LOSS_WEIGHT,
        )
        self.lm_head = nn.Linear(d0, 256, bias=False)

    def forward(self, ids: torch.Tensor):
        out = self.hnet(self.embeddings(ids), return_intermediates=True)
        return self.lm_head(out.output), out.loss, out.intermediates.boundary_mask


def peer_router_count(chunker, hidden: torch.Tensor, u: torch.Tensor, g: float) -> int:
    weight = torch.eye(u.numel()) + g * torch.outer(u, u)
    chunker.to_queries_keys.weight.copy_(torch.cat([weight, weight]))
    _, intermediates = chunker(hidden, return_intermediates=True)
    return int(intermediates.boundary_mask.sum())


@torch.no_grad()
def calibrate_peer(model: PeerLM, ids: torch.Tensor, target: float) -> None:
    """The bisection of ``decode_throughput.calibrate_routing`` for the peer's router (q and k share W)."""
    hidden = model.hnet.encoder(model.embeddings(ids))
    goal = math.floor(hidden.shape[0] * hidden.shape[1] / target)
    mean = hidden.mean(dim=(0, 1))
    args = (model.hnet.dynamic_sequence_chunker, hidden, mean / mean.norm())
    low, high = 0.0, 1.0
    selected = peer_router_count(*args, high)
    while selected > goal:
        low, high = high, 2 * high
        if high > 1e6:
            raise RuntimeError(f"cannot calibrate the peer's router to {target} bytes per chunk")
        selected = peer_router_count(*args, high)
    for _ in range(40):
        if selected == goal:
            break
        middle = (low + high) / 2
        count = peer_router_count(*args, middle)
        low, high, selected = (middle, high, selected) if count > goal else (low, middle, count)
    peer_router_count(*args, high)


def text_batch(path: Path, batch: int, length: int) -> torch.Tensor:
    """(batch, length + 1) byte ids (inputs and next-byte targets); row r starts r * ROW_OFFSET bytes in."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if len(data) < (batch - 1) * ROW_OFFSET + length + 1:
        raise ValueError(f"{path} holds {len(data)} bytes, too few for {batch} rows of {length} bytes")
    rows = [np.asarray(data[r * ROW_OFFSET : r * ROW_OFFSET + length + 1]) for r in range(batch)]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def build(name: str, args, ids: torch.Tensor):
    """A calibrated model, its optimizer and its training step (which returns the number of chunks)."""
    torch.manual_seed(SEED)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    if name == "ours":
        model = HNetForCausalLM(our_config(args))
        calibrate_routing(model, inputs, [args.bytes_per_chunk])
    else:
        model = PeerLM(args)
        calibrate_peer(model, inputs, args.bytes_per_chunk)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # same arithmetic as any lr; see the docstring

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        if name == "ours":
            out = model(inputs)
            logits, mask = out.logits, out.routing[0].boundary_mask
            aux = RATIO_LOSS_WEIGHT * model.ratio_losses(out, [args.bytes_per_chunk])[0]
        else:
            logits, aux, mask = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten()) + aux
        loss.backward()
        optimizer.step()
        return int(mask.sum())

    return model, step


# --------------------------------------------------------------------------------------------------- measuring
def measure_memory(spec: dict) -> dict:
    """Peak RSS added by ``steps`` training steps of one freshly built model; runs in its own process."""
    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(**spec["args"])
    _, step = build(spec["model"], args, text_batch(Path(args.text), args.batch, spec["length"]))
    exact = reset_peak_rss()
    baseline = peak_rss_bytes()
    for _ in range(spec["steps"]):
        step()
    return {"peak_bytes": peak_rss_bytes() - baseline, "exact": exact}


def measure_time(args, length: int) -> dict:
    """Interleaved training steps of both models in this process: median seconds and realised bytes per chunk."""
    ids = text_batch(args.text, args.batch, length)
    models, steps = {}, {}
    for name in ("ours", "peer"):
        models[name], steps[name] = build(name, args, ids)
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    chunks: dict[str, list[int]] = {"ours": [], "peer": []}
    for rep in range(args.warmup + args.reps):
        for name in ("ours", "peer") if rep % 2 == 0 else ("peer", "ours"):
            start = time.perf_counter()
            count = steps[name]()
            seconds = time.perf_counter() - start
            if rep >= args.warmup:
                times[name].append(seconds)
                chunks[name].append(count)
    result = {"length": length}
    for name in ("ours", "peer"):
        per_chunk = [args.batch * length / c for c in chunks[name]]
        result[name] = {
            "seconds": times[name],
            "median": statistics.median(times[name]),
            "bytes_per_s": args.batch * length / statistics.median(times[name]),
            "bytes_per_chunk": (min(per_chunk), max(per_chunk)),
            "params": sum(p.numel() for p in models[name].parameters()),
        }
    return result


def profile_ops(args, length: int, top: int = 12) -> dict[str, list[tuple[str, float, float]]]:
    """(op, self CPU ms, share of the step) of the ops with the most self CPU time in one training step."""
    from torch.profiler import ProfilerActivity, profile

    ids = text_batch(args.text, args.batch, length)
    out = {}
    for name in ("ours", "peer"):
        _, step = build(name, args, ids)
        step()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
        out[name] = [(e.key, e.self_cpu_time_total / 1e3, e.self_cpu_time_total / total) for e in events[:top]]
    return out


# --------------------------------------------------------------------------------------------------- report
def report(args, command: str, rows: list[dict], profiles: dict, loads: list[str], run_seconds: float) -> str:
    gib = 2**30
    config = our_config(args)
    lines = [
        f"# Training throughput and peak memory: ours vs the PyPI peer `{PEER_PACKAGE}` (CPU)",
        "",
        f"Command: `{command}`  ",
        f"Code: {code_version()}; peer: {PEER_PACKAGE} {importlib.metadata.version(PEER_PACKAGE)}, "
        f"x-transformers {importlib.metadata.version('x-transformers')}  ",
        f"Machine: {machine('cpu')}; load average before / after: {loads[0]} / {loads[1]} (two other single-thread "
        f"training runs shared the 2 cores); run time {run_seconds:.0f} s",
        "",
        f"Models (matched as in the script's docstring): 1-stage byte-level H-Net with Transformer stacks, layout "
        f"{config.arch_layout}, widths {config.d_model}, SwiGLU widths {config.d_intermediate}, "
        f"heads {config.attn_cfg.num_heads} of {HEAD_DIM} dims, rotary on {HEAD_DIM // 2} dims, global causal "
        f"attention, float32, random weights; ours {rows[0]['ours']['params'] / 1e6:.2f}M parameters, peer "
        f"{rows[0]['peer']['params'] / 1e6:.2f}M (its widening linears and SwiGLU input biases). Both routers "
        f"calibrated on the batch to {args.bytes_per_chunk:g} bytes per chunk; loss next-byte CE + "
        f"{RATIO_LOSS_WEIGHT} x ratio loss (N = {args.bytes_per_chunk:g}); step = forward + backward + AdamW.",
        "",
        f"Text: `data/english/train.bin`, batch {args.batch}. Time: both models in one process, {args.warmup} "
        f"warm-up step(s) each, then {args.reps} interleaved repetitions; bytes/s = batch x length / median step time. "
        f"Memory: peak RSS - RSS before the steps, over {args.memory_steps} training steps (the first allocates "
        "AdamW's state), a fresh process per (model, length).",
        "",
        "| bytes | ours bytes/s | peer bytes/s | throughput ours/peer | ours peak | peer peak | memory ours/peer "
        "| bytes/chunk ours | bytes/chunk peer |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        o, p = row["ours"], row["peer"]
        lines.append(
            f"| {row['length']} | {o['bytes_per_s']:,.0f} | {p['bytes_per_s']:,.0f} | "
            f"**{o['bytes_per_s'] / p['bytes_per_s']:.2f}x** | {o['peak_bytes'] / gib:.3f} GiB | "
            f"{p['peak_bytes'] / gib:.3f} GiB | **{o['peak_bytes'] / p['peak_bytes']:.2f}** | "
            + " | ".join("{:.2f}-{:.2f}".format(*r["bytes_per_chunk"]) for r in (o, p))
            + " |"
        )
    exact = all(r[m]["exact"] for r in rows for m in ("ours", "peer"))
    lines += [
        "",
        "Step times (s): "
        + "; ".join(
            f"{r['length']}: ours {', '.join(f'{t:.3f}' for t in r['ours']['seconds'])} | "
            f"peer {', '.join(f'{t:.3f}' for t in r['peer']['seconds'])}"
            for r in rows
        ),
        "",
        "Peak memory from /proc/self/status VmHWM after resetting it."
        if exact
        else "The peak-RSS counter could not be reset: memory figures may under-report.",
        "",
        f"## Profile: one training step at {rows[-1]['length']} bytes, ops by self CPU time",
        "",
    ]
    for name in ("ours", "peer"):
        lines += [f"**{name}**", "", "| op | self CPU (ms) | share |", "|---|---:|---:|"]
        lines += [f"| `{op}` | {ms:.1f} | {share:.1%} |" for op, ms, share in profiles[name]]
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="bytes per row")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--widths", type=int, nargs=2, default=[256, 512], help="outer and inner width")
    parser.add_argument("--encoder-depth", type=int, default=2, help="layers of the encoder and of the decoder")
    parser.add_argument("--main-depth", type=int, default=4, help="layers of the inner network")
    parser.add_argument("--mlp-mult", type=int, default=3, help="SwiGLU width / model width")
    parser.add_argument("--bytes-per-chunk", type=float, default=6.0, help="ratio-loss target N; routers calibrated")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        if not args.text.is_file():
            parser.error(f"text not found: {args.text}; run `hnet data prepare english` or pass --text PATH")
        if any(w % HEAD_DIM for w in args.widths) or args.widths[1] < args.widths[0]:
            parser.error(f"--widths must be multiples of {HEAD_DIM}, the inner one at least the outer one")
        if min(args.lengths) < 2 or args.batch < 1 or args.reps < 1 or args.warmup < 0 or args.memory_steps < 1:
            parser.error("lengths must be >= 2, --batch/--reps/--memory-steps >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure_memory(json.loads(args.worker))))
        return
    import_peer()
    torch.set_num_threads(args.threads)
    start, loads = time.perf_counter(), [load_average()]
    shared = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    rows = []
    for length in args.lengths:
        row = measure_time(args, length)
        for name in ("ours", "peer"):
            spec = {"model": name, "length": length, "steps": args.memory_steps, "threads": args.threads}
            row[name].update(
                run_worker(__file__, {**spec, "args": shared}, f"memory measurement {name} at {length} bytes")
            )
        rows.append(row)
        o, p = row["ours"], row["peer"]
        print(
            f"{length} bytes: ours {o['bytes_per_s']:,.0f} B/s, peer {p['bytes_per_s']:,.0f} B/s "
            f"({o['bytes_per_s'] / p['bytes_per_s']:.2f}x); peak ours {o['peak_bytes'] / 2**20:.0f} MiB, "
            f"peer {p['peak_bytes'] / 2**20:.0f} MiB",
            flush=True,
        )
    profiles = profile_ops(args, args.lengths[-1])
    loads.append(load_average())
    command = " ".join(["python benchmarks/peer.py", *(sys.argv[1:] if argv is None else argv)])
    write_report(report(args, command, rows, profiles, loads, time.perf_counter() - start), args.output)


if __name__ == "__main__":
    main()
