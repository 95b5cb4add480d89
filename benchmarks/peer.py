"""Training throughput and peak memory of our H-Net against the pure-PyTorch peer package on PyPI.

The peer, ``h-net-dynamic-chunking`` (lucidrains; 0.5.19 measured), wraps encoder, inner network and decoder
(x-transformers ``Decoder`` stacks; no Mamba) around its ``DynamicSequenceChunker`` (cosine router, EMA smoothing,
straight-through confidence, ratio loss). It is installed only into the benchmark's own environment: ``make
bench-peer`` creates ``.venv-peer`` and runs this script there.

Matched 1-stage byte-level models with Transformer stacks (random weights, float32): ours is ``["T<e>", ["T<m>"],
"T<e>"]`` at widths ``--widths`` (default 256, 512), 64-dim heads, rotary on 32 dims, global causal attention,
SwiGLU ``--mlp-mult`` x the width; the peer gets ``x_transformers.Decoder`` stacks of the same width, depth, heads,
rotary dims and SwiGLU width (RMSNorm pre-norm with a final norm, flash attention through SDPA). Differences in its
design: linears to widen to the inner width, a bias in its SwiGLU input, a learning-rate scaling in its chunker
(about 2% more parameters). Both routers are calibrated on the batch to ``--bytes-per-chunk`` (W_q = W_k = I + g u
u^T, ``evaluation.calibration``). Loss: next-byte CE + 0.03 x the ratio loss (one document per row: the peer has no
document ids); step = forward, backward, AdamW with lr 0 (the same arithmetic as any lr, while the weights and
the calibrated compression stay fixed). Time: both models in one process, interleaved repetitions, median step.
Memory: a fresh process per (model, length), peak RSS - RSS before the steps. Then a profile of one step each.
Writes ``benchmarks/results/peer_cpu.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import common
from dynamic_chunker import HNetConfig
from dynamic_chunker.evaluation.calibration import bisect_strength, unit_mean
from dynamic_chunker.training.objective import RATIO_LOSS_WEIGHT

PEER_PACKAGE = "h-net-dynamic-chunking"
ROW_OFFSET = 1_000_003
HEAD_DIM = 64


def import_peer():
    """The peer's ``HNet`` and x-transformers' ``Decoder``, or a clear error saying how to get them."""
    try:
        from h_net_dynamic_chunking import HNet
        from x_transformers import Decoder
    except ImportError as err:
        raise SystemExit(
            f"the peer package {PEER_PACKAGE} is not importable here ({err}); run `make bench-peer` (it creates "
            ".venv-peer and runs this script there), or `.venv-peer/bin/python -m benchmarks.peer` once it exists."
        ) from None
    return HNet, Decoder


def our_config(args) -> HNetConfig:
    d0, d1 = args.widths
    layout = [f"T{args.encoder_depth}", [f"T{args.main_depth}"], f"T{args.encoder_depth}"]
    heads = {"num_heads": [d0 // HEAD_DIM, d1 // HEAD_DIM], "rotary_emb_dim": [HEAD_DIM // 2] * 2}
    heads["window_size"] = [-1, -1]
    return HNetConfig.from_dict({"arch_layout": layout, "d_model": [d0, d1], "attn_cfg": heads,
                                 "d_intermediate": [args.mlp_mult * d0, args.mlp_mult * d1]})  # fmt: skip


class PeerLM(nn.Module):
    """Byte embedding -> the peer's ``HNet`` -> next-byte logits; the peer's loss is its weighted ratio loss."""

    def __init__(self, args):
        super().__init__()
        HNet, Decoder = import_peer()
        d0, d1 = args.widths

        def stack(dim: int, depth: int) -> nn.Module:
            return Decoder(dim=dim, depth=depth, heads=dim // HEAD_DIM, attn_dim_head=HEAD_DIM, attn_flash=True,
                           rotary_pos_emb=True, rotary_emb_dim=HEAD_DIM // 2, use_rmsnorm=True, ff_glu=True,
                           ff_swish=True, ff_mult=args.mlp_mult, ff_no_bias=True,
                           pre_norm_has_final_norm=True)  # fmt: skip

        self.embeddings = nn.Embedding(256, d0)
        encoder, decoder = stack(d0, args.encoder_depth), stack(d0, args.encoder_depth)
        self.hnet = HNet(encoder, stack(d1, args.main_depth), decoder, dim=d0, dim_inner=d1,
                         target_avg_token_length=args.bytes_per_chunk, ratio_loss_weight=RATIO_LOSS_WEIGHT)  # fmt: skip
        self.lm_head = nn.Linear(d0, 256, bias=False)

    def forward(self, ids: torch.Tensor):
        out = self.hnet(self.embeddings(ids), return_intermediates=True)
        return self.lm_head(out.output), out.loss, out.intermediates.boundary_mask

    @torch.no_grad()
    def calibrate(self, ids: torch.Tensor, target: float) -> None:
        """The calibration of ``evaluation.calibration`` for the peer's router (q and k share one W)."""
        hidden = self.hnet.encoder(self.embeddings(ids))
        chunker, u = self.hnet.dynamic_sequence_chunker, unit_mean(hidden)

        def count(strength: float) -> int:
            weight = torch.eye(u.numel()) + strength * torch.outer(u, u)
            chunker.to_queries_keys.weight.copy_(torch.cat([weight, weight]))
            return int(chunker(hidden, return_intermediates=True)[1].boundary_mask.sum())

        bisect_strength(count, math.floor(hidden.shape[0] * hidden.shape[1] / target), "the peer's router")


def setup(name: str, args, ids: torch.Tensor):
    """A calibrated model and its training step (which returns the number of chunks)."""
    if name == "ours":
        model = common.build(our_config(args), ids[:, :-1], [args.bytes_per_chunk])
    else:
        torch.manual_seed(0)
        model = PeerLM(args)
        model.calibrate(ids[:, :-1], args.bytes_per_chunk)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # same arithmetic as any lr; see the docstring

    def step() -> int:
        if name == "ours":
            losses = common.training_step(model, optimizer, ids, [args.bytes_per_chunk], packed=False)
            return common.chunk_counts(losses.output)[0]
        optimizer.zero_grad(set_to_none=True)
        logits, aux, mask = model(ids[:, :-1])
        (F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()) + aux).backward()
        optimizer.step()
        return int(mask.sum())

    return model, step


def measure_memory(spec: dict) -> dict:
    """Peak RSS added by ``steps`` training steps of one freshly built model; runs in its own process."""
    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(**spec["args"])
    _, step = setup(spec["model"], args, common.text_rows(Path(args.text), args.batch, spec["length"] + 1, ROW_OFFSET))
    exact, baseline = common.reset_peak(), common.peak_bytes()
    for _ in range(spec["steps"]):
        step()
    return {"peak_bytes": common.peak_bytes() - baseline, "exact": exact}


def measure_time(args, length: int, profile: bool) -> dict:
    """Interleaved training steps of both models in this process: median seconds and realised bytes per chunk; with
    ``profile``, the operators of one more step of each by self CPU time."""
    ids = common.text_rows(args.text, args.batch, length + 1, ROW_OFFSET)
    built = {name: setup(name, args, ids) for name in ("ours", "peer")}
    runs = {"ours": [], "peer": []}
    for rep in range(args.warmup + args.reps):
        for name in ("ours", "peer") if rep % 2 == 0 else ("peer", "ours"):
            seconds, count = common.timed(built[name][1])
            runs[name] += [(seconds, args.batch * length / count)] * (rep >= args.warmup)
    result = {"length": length}
    for name, (model, step) in built.items():
        result[name] = {
            "seconds": [t for t, _ in runs[name]],
            "bytes_per_s": args.batch * length / statistics.median(t for t, _ in runs[name]),
            "bytes_per_chunk": (min(c for _, c in runs[name]), max(c for _, c in runs[name])),
            "params": common.params(model),
            "profile": common.profile_table(step, rows=12) if profile else None,
        }
    return result


def report(args, run: common.Run, rows: list[dict]) -> list[str]:
    config = our_config(args)
    versions = f"{PEER_PACKAGE} {importlib.metadata.version(PEER_PACKAGE)}, x-transformers "
    lines = run.header(
        f"Training throughput and peak memory: ours vs the PyPI peer `{PEER_PACKAGE}` (CPU)",
        f"Peer: {versions}{importlib.metadata.version('x-transformers')}",
        f"Models (matched as in the script's docstring): layout {config.arch_layout}, widths {config.d_model}, SwiGLU "
        f"widths {config.d_intermediate}, heads {config.attn_cfg.num_heads} of {HEAD_DIM} dims, float32; ours "
        f"{rows[0]['ours']['params'] / 1e6:.2f}M parameters, peer {rows[0]['peer']['params'] / 1e6:.2f}M; routers "
        f"calibrated to {args.bytes_per_chunk:g} bytes per chunk; loss CE + {RATIO_LOSS_WEIGHT} x ratio loss",
        f"Text: `{common.shown(args.text)}`, batch {args.batch}; {args.warmup} warm-up step(s) each, then {args.reps} "
        f"interleaved repetitions, bytes/s from the median step; memory over {args.memory_steps} training steps "
        "(the first allocates AdamW's state), a fresh process per (model, length)",
    )
    lines += [
        "| bytes | ours bytes/s | peer bytes/s | throughput ours/peer | ours peak | peer peak | memory ours/peer "
        "| bytes/chunk ours | bytes/chunk peer |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        o, p = row["ours"], row["peer"]
        lines.append(
            f"| {row['length']} | {o['bytes_per_s']:,.0f} | {p['bytes_per_s']:,.0f} | "
            f"**{o['bytes_per_s'] / p['bytes_per_s']:.2f}x** | {o['peak_bytes'] / common.GIB:.3f} GiB | "
            f"{p['peak_bytes'] / common.GIB:.3f} GiB | **{o['peak_bytes'] / p['peak_bytes']:.2f}** | "
            + " | ".join("{:.2f}-{:.2f}".format(*r["bytes_per_chunk"]) for r in (o, p))
            + " |"
        )
    times = [f"{r['length']}: ours {common.fmt(r['ours']['seconds'], 3)} | peer {common.fmt(r['peer']['seconds'], 3)}"
             for r in rows]  # fmt: skip
    exact = all(r[m]["exact"] for r in rows for m in ("ours", "peer"))
    lines += ["", "Step times (s): " + "; ".join(times), ""]
    lines += ["Peak memory from VmHWM after resetting it." if exact else "Peak memory may under-report.", ""]
    for name in ("ours", "peer"):
        table = rows[-1][name]["profile"]
        lines += [f"## Profile: one training step of {name} at {rows[-1]['length']} bytes", "", "```", table, "```", ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    if common.worker_entry(argv, measure_memory):
        return
    parser = common.parser(__doc__, "peer_cpu.md", threads=1)
    parser.set_defaults(text=common.ENGLISH / "train.bin")
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
    args = common.parse(parser, argv)
    if any(w % HEAD_DIM for w in args.widths) or args.widths[1] < args.widths[0]:
        parser.error(f"--widths must be multiples of {HEAD_DIM}, the inner one at least the outer one")
    import_peer()
    run = common.Run("peer", argv)
    shared = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    rows = []
    for length in args.lengths:
        row = measure_time(args, length, length == args.lengths[-1])
        for name in ("ours", "peer"):
            spec = {"model": name, "length": length, "steps": args.memory_steps, "threads": args.threads}
            row[name].update(common.run_worker("benchmarks.peer", {**spec, "args": shared}, f"{name} at {length}"))
        rows.append(row)
        print(f"{length} bytes: ours {row['ours']['bytes_per_s']:,.0f}, peer {row['peer']['bytes_per_s']:,.0f} B/s")
    common.write_report(report(args, run, rows), args.output)


if __name__ == "__main__":
    main()
