"""The ``hnet`` command line. Each subcommand parses its arguments and calls library code; nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_info(args: argparse.Namespace) -> int:
    from .config import HNetConfig
    from .model import HNetForCausalLM

    for path in args.configs:
        config = HNetConfig.from_json(path)
        model = HNetForCausalLM(config, device="meta")
        params = sum(p.numel() for p in model.parameters())
        tensors = len(model.state_dict())
        layouts = " | ".join(
            ", ".join(f"{k} {''.join(v)}" for k, v in config.stacks(s).items()) for s in range(config.num_stages)
        )
        print(f"{Path(path).stem}: {params:,} parameters in {tensors} tensors; widths {config.d_model}")
        print(f"  stages: {layouts}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .reference import verify_reference

    ok = True
    for folder in args.folders:
        report = verify_reference(folder)
        print(report.table())
        ok &= report.passed
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


def cmd_train(args: argparse.Namespace) -> int:
    from .training import load_config, train

    overrides = list(args.overrides)
    overrides += [f"out={args.out}"] if args.out else []
    overrides += [f"train.max_minutes={args.max_minutes}"] if args.max_minutes is not None else []
    overrides += [f"train.dtype={args.dtype}"] if args.dtype else []
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume, progress=not args.no_progress)
    if result.rank == 0 and result.evals:
        last = result.evals[-1]
        stages = ", ".join(f"{v:.2f}" for k, v in last.items() if k.startswith("val_compression_"))
        print(f"step {result.step}: validation BPB {last['val_bpb']:.4f}, compression per stage {stages}")
        print(f"run folder: {result.out_dir} (model: config.json + model.safetensors; logs: train.csv, eval.csv)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data import PreparedCorpus, debian_sources, file_source, hf_source, manifest_summary, prepare_corpus

    if args.data_command == "info":
        print(manifest_summary(PreparedCorpus(args.folder).manifest))
        return 0
    if args.files and args.hf_dataset:
        raise ValueError("give either --files or --hf-dataset, not both")
    if args.files:
        sources = [file_source(args.files, licence=args.licence or "unspecified")]
    elif args.hf_dataset:
        sources = [hf_source(args.hf_dataset, args.hf_config, args.hf_split, args.text_field, args.licence)]
    else:
        try:
            sources = debian_sources(args.name, args.cache_dir)
        except RuntimeError as err:
            print(f"hnet data prepare: {err}", file=sys.stderr)
            return 1
    manifest = prepare_corpus(
        args.name,
        args.out or Path("data") / args.name,
        sources,
        val_fraction=args.val_fraction,
        seed=args.seed,
        invalid_utf8=args.invalid_utf8,
        max_bytes=args.max_bytes,
        progress=not args.no_progress,
    )
    print(manifest_summary(manifest))
    print(f"written to {args.out or Path('data') / args.name}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .checkpoints import from_pretrained

    model = from_pretrained(args.model, config=args.config, dtype=args.dtype, device=args.device)
    print(args.prompt, end="", flush=True)
    for text in model.generate_stream(
        args.prompt,
        max_new_bytes=args.max_bytes,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        greedy=args.greedy,
        seed=args.seed,
    ):
        print(text, end="", flush=True)
    print()
    return 0


def cmd_boundaries(args: argparse.Namespace) -> int:
    from .checkpoints import from_pretrained
    from .evaluation.boundaries import find_boundaries, forced_starts, mark_boundaries, score_boundaries, score_table
    from .evaluation.targets import BPE_FILE

    sources = [args.text is not None, args.file is not None, args.corpus is not None]
    if sum(sources) != 1:
        raise ValueError("give exactly one of --text, --file or --corpus")
    if args.max_bytes < 1:
        raise ValueError(f"--max-bytes must be at least 1, got {args.max_bytes}")
    if args.text is not None:
        data = args.text.encode("utf-8")
    elif args.file is not None:
        with open(args.file, "rb") as file:
            data = file.read(args.max_bytes)  # no need to read more of a large file than is chunked
    else:
        from .data import PreparedCorpus
        from .data.corpus import BOS

        split = PreparedCorpus(args.corpus).split("val")
        data = bytes(split.data[: args.max_bytes]).replace(bytes([BOS]), b"\n")  # documents joined by newlines
    data = data[: args.max_bytes]
    if not data:
        raise ValueError("the text to chunk is empty")
    model = from_pretrained(args.model, config=args.config, dtype=args.dtype, device=args.device).eval()
    tokenizer = None
    bpe = Path(args.bpe) if args.bpe else Path(args.model) / BPE_FILE
    if args.bpe or bpe.is_file():
        from tokenizers import Tokenizer

        if not bpe.is_file():
            raise FileNotFoundError(f"--bpe {bpe}: no such tokenizer file")
        tokenizer = Tokenizer.from_file(str(bpe))
    starts = find_boundaries(model, data, window=args.window)
    forced = forced_starts(len(data), args.window)
    for stage, stage_starts in enumerate(starts):
        chunks = int(stage_starts.sum())
        print(
            f"stage {stage}: {chunks:,} chunks over {len(data):,} bytes ({len(data) / max(chunks, 1):.2f} bytes/chunk)"
        )
        candidates = starts[stage - 1] if stage else None  # stage s chooses among stage s-1's chunk starts
        print(score_table(score_boundaries(data, stage_starts, forced, candidates, tokenizer)))
        if args.show:
            print(mark_boundaries(data[: args.show], stage_starts[: args.show], marker=args.marker))
        print()
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import convert

    print(f"wrote {convert(args.source, args.destination, config=args.config, dtype=args.dtype)}")
    return 0


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options of every subcommand that loads a model with ``from_pretrained``."""
    p.add_argument("--model", required=True, help="model folder (e.g. runs/tiny_1stage), checkpoint file or Hub id")
    p.add_argument("--config", help="config JSON (default: config.json next to the weights, or the released config)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, mps (default cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hnet",
        description="H-Net: hierarchical byte-level language models that learn their own chunking (pure PyTorch).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="show parameter counts and layouts of model configs (official JSON schema)")
    p.add_argument("configs", nargs="+", help="config JSON files")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "verify",
        help="compare this implementation with reference outputs of the official code",
        description="Load a reference folder (config.json, model.pt, expected.pt, grads.pt) and compare logits, "
        "boundaries, ratio losses, padded batches, losses and gradients.",
    )
    p.add_argument("folders", nargs="+", help="reference folders, e.g. tests/fixtures/official/tiny_2stage")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "train",
        help="train an H-Net from a YAML config (one process, or one per device under torchrun)",
        description="Train from a YAML config with optional section.key=value overrides, e.g. "
        "`hnet train configs/tiny_1stage.yaml data.corpus=data/english --max-minutes 20`. Multi-process: "
        "`torchrun --nproc_per_node=N -m dynamic_chunker.cli train CONFIG`.",
    )
    p.add_argument("config", help="training config (YAML), e.g. configs/tiny_1stage.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides such as train.steps=100")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder from its checkpoint")
    p.add_argument("--out", help="output folder (default: the config's `out`, else runs/<config name>)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; the schedule then runs on elapsed time")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="auto = bf16 autocast on GPUs that support it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="prepare byte-level training corpora (`hnet data prepare english`)")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    p = data_sub.add_parser(
        "prepare",
        help="build a corpus folder: manifest.json, train/val .bin (BOS-separated documents) and .idx (offsets)",
        description="Built-in corpora from Debian packages (apt-get download, nothing installed): english "
        "(linux-doc-6.1, python3.11-doc and perl-doc sources), code (libpython3.11-stdlib), chinese (linux-doc zh "
        "translations, manpages-zh, fortunes-zh), dna (ragout-examples genomes). Any other NAME needs --files or "
        "--hf-dataset.",
    )
    p.add_argument("name", help="english, code, chinese, dna, or a name for --files / --hf-dataset corpora")
    p.add_argument("--out", type=Path, help="output folder (default data/NAME)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the document-path hash that fixes the split")
    p.add_argument("--files", nargs="+", metavar="PATTERN", help="local files, folders or quoted globs ('**' ok)")
    p.add_argument("--hf-dataset", help="Hugging Face dataset name or local dataset folder, streamed")
    p.add_argument("--hf-config", help="dataset configuration (subset) name")
    p.add_argument("--hf-split", default="train", help="dataset split to stream (default train)")
    p.add_argument("--text-field", default="text", help="record field holding the text (default text)")
    p.add_argument("--max-bytes", type=int, help="stop after this many document bytes")
    p.add_argument("--licence", help="licence to record for --files / --hf-dataset sources")
    p.add_argument(
        "--invalid-utf8",
        choices=["replace", "drop"],
        default="replace",
        help="documents that are not valid UTF-8: repair with U+FFFD (default) or leave out",
    )
    p.add_argument("--cache-dir", type=Path, help="where .deb files are kept (default ~/.cache/dynamic_chunker/debian)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data)
    p = data_sub.add_parser("info", help="check a prepared corpus against its manifest and summarise it")
    p.add_argument("folder", type=Path, help="corpus folder, e.g. data/english")
    p.set_defaults(func=cmd_data)
    p = sub.add_parser(
        "generate",
        help="generate text from a prompt, streamed to the terminal (cached byte-by-byte decoding)",
        description="Load a model (folder, .pt/.safetensors file or Hugging Face Hub id such as "
        "cartesia-ai/hnet_2stage_XL) and continue the prompt. The prompt is preceded by BOS (byte 254); "
        "generation stops at EOS (byte 255) or after --max-bytes bytes.",
    )
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-bytes", type=int, default=1024, help="most bytes to generate (default 1024)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0; 0 = greedy)")
    p.add_argument("--top-k", type=int, help="sample only among the k most likely bytes")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0 = off)")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    p.add_argument("--greedy", action="store_true", help="always take the most likely byte")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "boundaries",
        help="show where a model puts its chunk boundaries, and score them against word starts",
        description="Run the encoders and routers of a model over a text and print every stage's chunks, the text with "
        "a marker before each chunk, and per stage precision/recall of the boundaries against positions that follow "
        "whitespace, the whitespace itself, word starts and (with a tokenizer) BPE token starts. Text is cut into "
        "independent windows.",
    )
    add_model_arguments(p)
    p.add_argument("--text", help="text to chunk")
    p.add_argument("--file", help="file to chunk (its bytes)")
    p.add_argument("--corpus", help="prepared corpus folder: chunk the start of its validation split")
    p.add_argument("--max-bytes", type=int, default=200_000, help="chunk at most this many bytes (default 200000)")
    p.add_argument("--window", type=int, default=8192, help="bytes per independent window (default 8192)")
    p.add_argument("--show", type=int, default=600, help="print the first SHOW bytes with boundaries marked (0: none)")
    p.add_argument("--marker", default="|", help="marker printed before each chunk (default |)")
    p.add_argument(
        "--bpe",
        help="BPE tokenizer JSON for the bpe reference (default: the model folder's bpe_tokenizer.json, if any)",
    )
    p.set_defaults(func=cmd_boundaries)

    p = sub.add_parser(
        "convert",
        help="convert a checkpoint: official .pt <-> folder with config.json + model.safetensors",
        description="SOURCE is a folder, a .pt/.safetensors file or a Hub id. DESTINATION ending in .pt gets an "
        "official-style state dict; anything else becomes a folder with config.json and model.safetensors.",
    )
    p.add_argument("source", help="model folder, checkpoint file or Hub id")
    p.add_argument("destination", help="output folder, or a .pt file")
    p.add_argument("--config", help="config JSON for a .pt file without one next to it")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="convert weights (default: keep)")
    p.set_defaults(func=cmd_convert)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides (key=value) may come after options too: ``hnet train c.yaml --max-minutes 5 optimizer.lr=1e-3``
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"hnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
