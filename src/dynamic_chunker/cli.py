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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
