"""The ``hnet`` command line. Each subcommand parses its arguments and calls library code; nothing else lives here.

A subcommand is an ``add_<name>_parser(subparsers)`` function that declares its options and sets ``func`` to the
function that runs it; registering it is one line in ``SUBCOMMANDS``. Expected failures raise
:class:`~dynamic_chunker.errors.UserError` (or ``OSError``) and become one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from . import __version__
from .errors import InvalidArgument, UserError


def require(condition: bool, message: str) -> None:
    """Refuse an option value: ``message`` says what was wrong."""
    if not condition:
        raise InvalidArgument(message)


# ------------------------------------------------------------------------------------------------------------ info
def cmd_info(args: argparse.Namespace) -> int:
    from .evaluation.flops import forward_flops_per_byte
    from .model import HNetForCausalLM

    for source in args.models:
        name, config = _info_config(source)
        model = HNetForCausalLM(config, device="meta")
        params = sum(p.numel() for p in model.parameters())
        tensors = len(model.state_dict())
        layouts = " | ".join(
            ", ".join(f"{k} {''.join(v)}" for k, v in config.stacks(s).items()) for s in range(config.num_stages)
        )
        print(f"{name}: {params:,} parameters in {tensors} tensors; widths {config.d_model}")
        print(f"  stages: {layouts}")
        try:
            flops = forward_flops_per_byte(config, seq_len=args.seq_len)
        except ValueError as err:  # no paper compression for this many stages
            print(f"  FLOPs per byte: not computed ({err})")
        else:
            print(
                f"  forward {flops / 1e9:.3f} GFLOPs per byte, training {3 * flops / 1e9:.3f} "
                f"(at {args.seq_len}-byte sequences and the paper's bytes per chunk)"
            )
    return 0


def _info_config(source: str):
    """(display name, HNetConfig) of a config JSON, a model folder, or a released model's name or Hub id."""
    from .checkpoints import CONFIG_NAME, OFFICIAL_CONFIGS
    from .config import HNetConfig

    path = Path(source)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path} holds no {CONFIG_NAME}; give a model folder or a config JSON")
        return str(path), HNetConfig.from_json(path / CONFIG_NAME)
    if path.is_file():
        return path.stem, HNetConfig.from_json(path)
    released = OFFICIAL_CONFIGS / f"{source.rsplit('/', 1)[-1]}.json"
    if released.is_file():
        return released.stem, HNetConfig.from_json(released)
    names = ", ".join(sorted(p.stem for p in OFFICIAL_CONFIGS.glob("*.json")))
    raise FileNotFoundError(f"{source}: no such config file or model folder, and not a released model ({names})")


def add_info_parser(sub) -> None:
    p = sub.add_parser(
        "info",
        help="parameter counts, layouts and FLOPs per byte of models",
        description="Show parameter counts, the layers of every stage and forward/training FLOPs per byte (counted "
        "as in the paper's appendix B) of config JSON files, model folders or released models "
        "(e.g. hnet_2stage_XL or cartesia-ai/hnet_2stage_XL: their configs ship with the package).",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="config JSON, model folder or released model name")
    p.add_argument("--seq-len", type=int, default=8192, help="bytes per sequence for the FLOPs count (default 8192)")
    p.set_defaults(func=cmd_info)


# ---------------------------------------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    from .reference import verify_reference

    ok = True
    for folder in args.folders:
        report = verify_reference(folder)
        print(report.table())
        ok &= report.passed
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


def add_verify_parser(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="compare this implementation with reference outputs of the official code",
        description="Load a reference folder (config.json, model.pt, expected.pt, grads.pt) and compare logits, "
        "boundaries, ratio losses, padded batches, losses and gradients.",
    )
    p.add_argument("folders", nargs="+", help="reference folders, e.g. tests/fixtures/official/tiny_2stage")
    p.set_defaults(func=cmd_verify)


# ----------------------------------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from .training import load_config, train

    require(args.log_every >= 1, f"--log-every must be at least 1, got {args.log_every}")
    overrides = list(args.overrides)
    overrides += [f"out={args.out}"] if args.out else []
    overrides += [f"train.max_minutes={args.max_minutes}"] if args.max_minutes is not None else []
    overrides += [f"train.dtype={args.dtype}"] if args.dtype else []
    config = load_config(args.config, overrides)
    result = train(
        config,
        resume=args.resume,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        allow_data_change=args.allow_data_change,
        log_every=args.log_every,
    )
    if result.interrupted:
        if result.rank == 0:
            import signal

            print(
                f"interrupted by {signal.Signals(result.interrupted).name} after step {result.step}: checkpoint "
                f"written to {result.out_dir}; to continue, run the same command with --resume",
                file=sys.stderr,
            )
        return 128 + result.interrupted
    if result.rank == 0 and result.evals:
        last = result.evals[-1]
        stages = ", ".join(f"{v:.2f}" for k, v in last.items() if k.startswith("val_compression_"))
        print(f"step {result.step}: validation BPB {last['val_bpb']:.4f}, compression per stage {stages}")
    if result.rank == 0:
        print(f"run folder: {result.out_dir} (model: config.json + model.safetensors; logs: train.csv, eval.csv)")
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an H-Net from a YAML config (one process, or one per device under torchrun)",
        description="Train from a YAML config with optional section.key=value overrides, e.g. "
        "`hnet train configs/tiny_1stage.yaml data.corpus=data/english --max-minutes 20`. Multi-process: "
        "`torchrun --nproc_per_node=N -m dynamic_chunker.cli train CONFIG`. Ctrl-C or SIGTERM stop after the "
        "current step with a checkpoint (exit status 130 / 143); --resume continues.",
    )
    p.add_argument("config", help="training config (YAML), e.g. configs/tiny_1stage.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides such as train.steps=100")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder from its checkpoint")
    p.add_argument("--out", help="output folder (default: the config's `out`, else runs/<config name>)")
    p.add_argument(
        "--overwrite", action="store_true", help="start a new run in a non-empty output folder (deletes its old run)"
    )
    p.add_argument(
        "--allow-data-change", action="store_true", help="--resume even though the corpus differs from the run's"
    )
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; the schedule then runs on elapsed time")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="auto = bf16 autocast on GPUs that support it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar: plain log lines (batch jobs)")
    p.add_argument("--log-every", type=int, default=50, help="steps between log lines with --no-progress (50)")
    p.set_defaults(func=cmd_train)


# ------------------------------------------------------------------------------------------------------------ data
def cmd_data(args: argparse.Namespace) -> int:
    from .data import PreparedCorpus, manifest_summary

    if args.data_command == "info":
        print(manifest_summary(PreparedCorpus(args.folder).manifest))
        return 0
    return _prepare(args)


def _prepare(args: argparse.Namespace) -> int:
    from .data import RECIPES, debian_sources, file_source, hf_source, manifest_summary, prepare_corpus

    require(not (args.files and args.hf_dataset), "give either --files or --hf-dataset, not both")
    require(
        not (args.name in RECIPES and (args.files or args.hf_dataset)),
        f"{args.name!r} is the name of a built-in corpus; give your corpus its own name, e.g. "
        f"`hnet data prepare my_{args.name} {'--files' if args.files else '--hf-dataset'} ...`",
    )
    out = args.out or Path("data") / args.name
    if args.files:
        sources = [file_source(args.files, licence=args.licence or "unspecified")]
    elif args.hf_dataset:
        sources = [hf_source(args.hf_dataset, args.hf_config, args.hf_split, args.text_field, args.licence)]
    else:
        try:
            sources = debian_sources(args.name, args.cache_dir)
        except RuntimeError as err:
            raise UserError(str(err)) from None
    manifest = prepare_corpus(
        args.name,
        out,
        sources,
        val_fraction=args.val_fraction,
        seed=args.seed,
        invalid_utf8=args.invalid_utf8,
        max_bytes=args.max_bytes,
        progress=not args.no_progress,
    )
    print(manifest_summary(manifest))
    print(f"written to {out}")
    return 0


def add_data_parser(sub) -> None:
    parent = sub.add_parser(
        "data",
        help="prepare byte-level training corpora (`hnet data prepare english`)",
        description="Build corpus folders for training (`prepare`) and check them (`info`).",
    )
    data_sub = parent.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    p = data_sub.add_parser(
        "prepare",
        help="build a corpus folder: manifest.json, train/val .bin (BOS-separated documents) and .idx (offsets)",
        description="Built-in corpora from Debian packages (apt-get download, nothing installed): english "
        "(linux-doc-6.1, python3.11-doc and perl-doc sources), code (libpython3.11-stdlib), chinese (linux-doc zh "
        "translations, manpages-zh, fortunes-zh), dna (ragout-examples genomes). Any other NAME needs --files or "
        "--hf-dataset. An existing output folder is replaced only if it holds a corpus written by this command.",
    )
    p.add_argument("name", help="english, code, chinese, dna, or a new name for --files / --hf-dataset corpora")
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
    p = data_sub.add_parser(
        "info",
        help="check a prepared corpus against its manifest and summarise it",
        description="Check sizes, sha256 and index of a corpus folder against its manifest.json and summarise it.",
    )
    p.add_argument("folder", type=Path, help="corpus folder, e.g. data/english")
    p.set_defaults(func=cmd_data)


# -------------------------------------------------------------------------------------------------------- generate
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options of every subcommand that loads a model with ``from_pretrained``."""
    p.add_argument("--model", required=True, help="model folder (e.g. runs/tiny_1stage), checkpoint file or Hub id")
    p.add_argument("--config", help="config JSON (default: config.json next to the weights, or the released config)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps (default cpu)")


def cmd_generate(args: argparse.Namespace) -> int:
    from .checkpoints import from_pretrained

    require(args.max_bytes >= 0, f"--max-bytes must be >= 0, got {args.max_bytes}")
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


def add_generate_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a prompt, streamed to the terminal (cached byte-by-byte decoding)",
        description="Load a model (folder, .pt/.safetensors file or Hugging Face Hub id such as "
        "cartesia-ai/hnet_2stage_XL) and continue the prompt. The prompt is preceded by BOS (byte 254); "
        "generation stops at EOS (byte 255) or after --max-bytes bytes. Memory grows with the bytes generated.",
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


# ------------------------------------------------------------------------------------------------------ boundaries
def cmd_boundaries(args: argparse.Namespace) -> int:
    from .checkpoints import from_pretrained
    from .evaluation.boundaries import find_boundaries, forced_starts, mark_boundaries, score_boundaries, score_table
    from .evaluation.compression import compression_rows
    from .evaluation.targets import BPE_FILE

    sources = [args.text is not None, args.file is not None, args.corpus is not None]
    require(sum(sources) == 1, "give exactly one of --text, --file or --corpus")
    require(args.max_bytes >= 1, f"--max-bytes must be at least 1, got {args.max_bytes}")
    require(args.window >= 1, f"--window must be at least 1, got {args.window}")
    require(args.show >= 0, f"--show must be >= 0 (0: print no text), got {args.show}")
    if args.text is not None:
        data = args.text.encode("utf-8")
    elif args.file is not None:
        with open(args.file, "rb") as file:
            data = file.read(args.max_bytes)  # no need to read more of a large file than is chunked
    else:
        from .config import BOS
        from .data import PreparedCorpus

        split = PreparedCorpus(args.corpus).split("val")
        data = bytes(split.data[: args.max_bytes]).replace(bytes([BOS]), b"\n")  # documents joined by newlines
    data = data[: args.max_bytes]
    require(bool(data), "the text to chunk is empty")
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
    for stage, (stage_starts, row) in enumerate(zip(starts, compression_rows(len(data), starts), strict=True)):
        print(
            f"stage {stage}: {row['chunks']:,} chunks over {len(data):,} bytes ({row['bytes_per_chunk']:.2f} "
            f"bytes/chunk, {row['positions_per_chunk']:.2f} positions/chunk)"
        )
        candidates = starts[stage - 1] if stage else None  # stage s chooses among stage s-1's chunk starts
        print(score_table(score_boundaries(data, stage_starts, forced, candidates, tokenizer)))
        if args.show:
            print(mark_boundaries(data[: args.show], stage_starts[: args.show], marker=args.marker))
        print()
    return 0


def add_boundaries_parser(sub) -> None:
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


# --------------------------------------------------------------------------------------------------------- convert
def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import convert

    written = convert(args.source, args.destination, config=args.config, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {written}")
    return 0


def add_convert_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint: official .pt <-> folder with config.json + model.safetensors",
        description="SOURCE is a folder, a .pt/.safetensors file or a Hub id. DESTINATION ending in .pt gets an "
        "official-style state dict plus config.json beside it; anything else becomes a folder with config.json and "
        "model.safetensors. Existing files are never replaced without --overwrite.",
    )
    p.add_argument("source", help="model folder, checkpoint file or Hub id")
    p.add_argument("destination", help="output folder, or a .pt file")
    p.add_argument("--config", help="config JSON for a .pt file without one next to it")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="convert weights (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.set_defaults(func=cmd_convert)


# ------------------------------------------------------------------------------------------------------- eval, bench
def cmd_eval(args: argparse.Namespace) -> int:
    """hnet eval bpb|tasks|robustness: results printed and written to --out (default MODEL/eval) as JSON + markdown."""
    from .evaluation import bits_per_byte, load_lm
    from .evaluation.report import write_report

    model_dir = Path(args.model)
    out = Path(args.out) if args.out else (model_dir if model_dir.is_dir() else model_dir.parent) / "eval"
    lm = load_lm(args.model, device=args.device)
    meta = {"model": str(args.model), "model_type": type(lm).__name__}
    progress = not args.no_progress
    if args.eval_command == "bpb":
        sources = [args.text is not None, args.file is not None, args.corpus is not None]
        require(sum(sources) == 1, "give exactly one of --corpus, --file or --text")
        if args.corpus is not None:
            from .data import PreparedCorpus

            source, where = PreparedCorpus(args.corpus).split(args.split), f"{args.corpus} ({args.split})"
        elif args.file is not None:
            source, where = Path(args.file), args.file
        else:
            source, where = args.text, "--text"
        result = bits_per_byte(lm, source, args.window, args.batch_size, args.max_windows, progress)
        sections, title = {"bits per byte": {where: result.to_dict()}}, "Bits per byte"
    elif args.eval_command == "tasks":
        from .evaluation.tasks import evaluate, evaluate_tasks

        results = {}
        if args.tasks or args.corpus is None:
            results = evaluate_tasks(lm, args.tasks, args.limit, args.batch_size, progress)
        if args.corpus is not None:
            from .data import PreparedCorpus
            from .evaluation.tasks.continuation import corpus_continuation_task

            task = corpus_continuation_task(PreparedCorpus(args.corpus).split(args.split), args.limit or 200, args.seed)
            results["continuation"] = evaluate(lm, task, args.batch_size, progress=progress)
            meta.update(continuation=f"{args.corpus} ({args.split}), seed {args.seed}")
        sections, title = {"zero-shot": results}, "Zero-shot tasks"
        meta["limit"] = args.limit
    else:
        from .evaluation.robustness import evaluate_robustness

        results = evaluate_robustness(lm, args.limit, args.seed, args.perturbations, args.batch_size, None, progress)
        sections, title = {"HellaSwag under noise": results}, "Robustness (noised HellaSwag)"
        meta.update(limit=args.limit, seed=args.seed)
    path = write_report(out, args.eval_command, title, sections, meta)
    print(path.read_text())
    print(f"written to {path} and {path.with_suffix('.json')}")
    return 0


def add_eval_parser(sub) -> None:
    """``hnet eval``: a parent for the evaluations, each its own subcommand."""
    p = sub.add_parser(
        "eval",
        help="evaluate a model (bits per byte, zero-shot tasks, robustness to character noise) or chunkers (retrieval)",
        description="Evaluate a model folder (byte models, or a token model with tokenizer.json beside it): bpb, tasks "
        "and robustness print results and write NAME.json and NAME.md to --out (default: MODEL/eval). `hnet eval "
        "retrieval` scores chunkers for retrieval (RAG) against common baselines.",
    )
    eval_sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)
    add_eval_bpb_parser(eval_sub)
    add_eval_tasks_parser(eval_sub)
    add_eval_robustness_parser(eval_sub)
    add_eval_retrieval_parser(eval_sub)


def add_eval_model_arguments(q: argparse.ArgumentParser) -> None:
    """What every model evaluation (bpb, tasks, robustness) takes."""
    q.add_argument("model", help="model folder (config.json + model.safetensors), checkpoint file or Hub id")
    q.add_argument("--out", help="folder for the results (default: MODEL/eval)")
    q.add_argument("--device", default="cpu", help="torch device (default cpu)")
    q.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_eval)


def add_eval_bpb_parser(eval_sub) -> None:
    q = eval_sub.add_parser(
        "bpb",
        help="bits per byte over a corpus split, a file or a text",
        description="Documents are packed into windows of --window ids with per-document resets; a token model's "
        "summed NLL is divided by the UTF-8 bytes of the same text.",
    )
    add_eval_model_arguments(q)
    q.add_argument("--corpus", help="prepared corpus folder (hnet data prepare)")
    q.add_argument("--split", default="val", help="corpus split (default val)")
    q.add_argument("--file", help="a text file (one document)")
    q.add_argument("--text", help="a string (one document)")
    q.add_argument("--window", type=int, default=8192, help="ids per window (default 8192)")
    q.add_argument("--max-windows", type=int, help="score only this many windows, spread evenly over the text")


def add_eval_tasks_parser(eval_sub) -> None:
    from .evaluation.tasks import TASKS

    q = eval_sub.add_parser(
        "tasks",
        help="zero-shot multiple choice (acc, acc_norm) and LAMBADA, the lm-evaluation-harness way",
        description="Tasks: " + ", ".join(TASKS) + ". acc_norm divides each choice's log-likelihood by its length "
        "in characters.",
    )
    add_eval_model_arguments(q)
    tasks_help = "tasks to run (default: all, or none with --corpus)"
    q.add_argument("--tasks", nargs="+", choices=list(TASKS), metavar="TASK", help=tasks_help)
    q.add_argument("--limit", type=int, help="only the first LIMIT items of each task (quick runs)")
    q.add_argument(
        "--corpus",
        help="sanity check: also run 'continuation', built from this prepared corpus (the true next 40 characters of "
        "a passage against 3 passages from other documents; chance 0.25, a trained model well above it)",
    )
    q.add_argument("--split", default="train", help="corpus split for --corpus (default train: the model's own text)")
    q.add_argument("--seed", type=int, default=0, help="seed of the continuation items (default 0)")


def add_eval_robustness_parser(eval_sub) -> None:
    from .evaluation.perturb import PERTURBATIONS

    q = eval_sub.add_parser(
        "robustness",
        help="HellaSwag under the BLT paper's character noise, with robustness scores",
        description="Perturbations: " + ", ".join(PERTURBATIONS) + ". Robustness = 100 * (perturbed acc_norm - "
        "0.25) / (clean acc_norm - 0.25).",
    )
    add_eval_model_arguments(q)
    q.add_argument("--limit", type=int, help="only the first LIMIT HellaSwag items")
    q.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    q.add_argument("--perturbations", nargs="+", choices=list(PERTURBATIONS), help="default: all five")


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_suite

    for path in run_suite(args.suite, only=args.only, progress=not args.no_progress):
        print(path.read_text())
        print(f"written to {path} (+ .json and the _bpb / _compression plots)")
    return 0


def add_bench_parser(sub) -> None:
    """``hnet bench SUITE.yaml``."""
    p = sub.add_parser(
        "bench",
        help="train and evaluate every model of a suite under one budget; markdown table and plots",
        description="Every model sees the same training bytes; models with match_flops get the width whose FLOPs per "
        "byte match the reference model's. Finished models are loaded, interrupted ones resumed, so rerunning the "
        "same command continues a suite. See benchmarks/suites/*.yaml.",
    )
    p.add_argument("suite", help="suite YAML, e.g. benchmarks/suites/paper_small.yaml")
    p.add_argument(
        "--only", nargs="+", metavar="ID", help="run only these model ids (the table lists all finished ones)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from .evaluation.retrieval_benchmark import run

    return run(args)


def add_eval_retrieval_parser(eval_sub) -> None:
    """``hnet eval retrieval``: chunkers scored on question-answering retrieval (needs the ``rag`` extra)."""
    from .evaluation.retrieval_benchmark import add_arguments

    p = eval_sub.add_parser(
        "retrieval",
        help="score chunkers for retrieval (RAG) on SQuAD questions against common baselines",
        description="Chunk SQuAD articles (or your own SQuAD-form JSON), embed the chunks with a sentence-transformers "
        "model (cached on disk), retrieve the top-k chunks for each question from one pool and score recall, "
        "precision, IoU and hit of the answer characters, with standard errors; baselines (fixed-size, LangChain, "
        "semchunk, chonkie) are calibrated to target mean chunk lengths. Needs pip install -e '.[rag]'; set "
        "HF_HUB_OFFLINE=1 to stay offline.",
    )
    add_arguments(p, "retrieval")
    p.set_defaults(func=cmd_eval_retrieval)


# ----------------------------------------------------------------------------------------------------------- chunk
def add_chunk_parser(sub) -> None:
    """``hnet chunk``: split a file into chunks with ``chunk_text`` (the bundled model by default)."""

    def run(args: argparse.Namespace) -> int:
        import json

        from .segmentation import HNetChunker

        size = args.chunk_size
        require(size is None or size >= 1, f"--chunk-size must be at least 1, got {size}")
        tokenizer = None
        if args.tokenizer:
            from tokenizers import Tokenizer

            if not Path(args.tokenizer).is_file():
                raise FileNotFoundError(f"--tokenizer {args.tokenizer}: no such tokenizer JSON file")
            tokenizer = Tokenizer.from_file(args.tokenizer)
        chunker = HNetChunker(
            args.model, args.chunk_size, level=args.level, tokenizer=tokenizer, device=args.device,
            batch_size=args.batch_size, cutter=args.cutter, compile=args.compile,
            **({"cut_cost": args.cut_cost} if args.cut_cost else {}),
        )
        if args.stream:
            require(args.file != "-" and args.format != "html", "--stream reads a named file and writes text or jsonl")
            text, chunks = None, chunker.iter_chunks(args.file)
        else:
            data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data  # not UTF-8: chunked as bytes, offsets are byte offsets
                print("hnet chunk: the input is not valid UTF-8; offsets are byte offsets", file=sys.stderr)
            chunks = None if args.format == "html" else chunker.chunk(text)  # the HTML view chunks for itself
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
        try:
            if args.format == "html":
                from .chunk_view import chunk_html

                out.write(chunk_html(text, chunker, title=f"hnet chunk {args.file}"))
                return 0
            for c in chunks:
                piece = c.text if isinstance(c.text, str) else c.text.decode("utf-8", "replace")
                if args.format == "jsonl":
                    record = {"text": piece, "start_index": c.start_index, "end_index": c.end_index,
                              "token_count": c.token_count, "start_byte": c.start_byte, "end_byte": c.end_byte,
                              "level": c.level, "score": round(c.score, 4)}
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    out.write(piece + args.separator.encode().decode("unicode_escape"))
        finally:
            if args.out:
                out.close()
        return 0

    p = sub.add_parser(
        "chunk",
        help="split a text file into chunks for retrieval where an H-Net puts its boundaries",
        description="Split FILE (or - for standard input) into chunks of at most --chunk-size characters (default "
        "512), cutting at the strongest learned boundaries of the model (the bundled one by default), or return "
        "stage --level's units. Text formats print the chunks with a separator; jsonl gives one object per chunk "
        "(text, character offsets start_index/end_index, byte offsets, token_count, level, score); html writes a page "
        "showing every stage's boundaries and the chunks. Input that is not UTF-8 is chunked as bytes (byte offsets).",
    )
    p.add_argument("file", help="text file to chunk, or - for standard input")
    p.add_argument("--chunk-size", type=int, help="most characters (or --tokenizer tokens) per chunk (default 512)")
    p.add_argument("--level", type=int, help="return the learned units of this stage (0 = word-like) unchanged")
    p.add_argument("--format", choices=["text", "jsonl", "html"], default="text", help="output format (default text)")
    p.add_argument("--separator", default="\\n-----\\n", help="printed after each chunk in text format "
                   "(escapes allowed; default \\n-----\\n)")
    p.add_argument("--out", help="write here instead of standard output")
    p.add_argument("--model", help="model folder, checkpoint file or Hub id (default: the bundled model)")
    p.add_argument("--tokenizer", help="Hugging Face tokenizer JSON file: --chunk-size counts its tokens")
    p.add_argument("--cutter", choices=["greedy", "optimal"], default="greedy", help="greedy (default): each cut in "
                   "turn, the strongest boundary in reach; optimal: all cuts at once, the best cut set (see README)")
    p.add_argument("--cut-cost", type=float, help="price of a cut for --cutter optimal (default 10; lower: more, "
                   "shorter chunks at the strongest boundaries)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, help="windows of 8192 bytes per model call (default: 1 on CPU, 8 on "
                   "other devices)")
    p.add_argument("--stream", action="store_true", help="read a large file block by block (bounded memory; byte "
                   "offsets, --chunk-size in bytes)")
    p.add_argument("--compile", action="store_true", help="torch.compile what chunking runs of the model "
                   "first: faster on large files after a one-off compile of up to a minute (needs a C++ compiler on "
                   "CPU)")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------------------ main
SUBCOMMANDS = (
    add_info_parser,
    add_verify_parser,
    add_train_parser,
    add_data_parser,
    add_generate_parser,
    add_boundaries_parser,
    add_convert_parser,
    add_chunk_parser,
    add_eval_parser,
    add_bench_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hnet",
        description="H-Net: hierarchical byte-level language models that learn their own chunking (pure PyTorch).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in SUBCOMMANDS:
        add_parser(sub)
    return parser


def describe_os_error(err: OSError) -> str:
    """One line for an operating-system error; a full disk says so first."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"no space left on device{where}: free some space or write elsewhere"
    if err.strerror and err.filename:
        return f"{err.strerror}: {err.filename}"
    return str(err)


def out_of_memory(err: BaseException) -> bool:
    """Whether an error is an allocation failure (torch's CUDA/MPS OutOfMemoryError, its CPU allocator, or Python's)."""
    return (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or (isinstance(err, RuntimeError) and "can't allocate memory" in str(err))
    )


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
    except UserError as err:
        message = str(err)
    except OSError as err:
        message = describe_os_error(err)
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        message = (
            f"out of memory ({first[:200]}): use a smaller batch, shorter inputs or fewer new bytes "
            "(e.g. --batch-size, --max-bytes), or another --device"
        )
    except KeyboardInterrupt:
        print(f"\nhnet {args.command}: interrupted", file=sys.stderr)
        return 130
    print(f"hnet {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
