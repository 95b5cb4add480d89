"""Retrieval benchmark: what chunkers do to RAG on SQuAD questions with exact answer spans.

Same as ``hnet eval retrieval`` (see ``dynamic_chunker.evaluation.retrieval`` for the metrics and
``dynamic_chunker.evaluation.chunkers`` for the baseline chunkers and their calibration); needs
``pip install -e ".[rag]"``.
By default every baseline at mean chunk lengths near 128, 275 and 550 characters on both corpus variants, embedded
with all-MiniLM-L6-v2 (offline) and cached under ~/.cache/dynamic_chunker/embeddings.

Usage: ``HF_HUB_OFFLINE=1 python benchmarks/retrieval.py --threads 1``; writes
``benchmarks/results/retrieval_squad.{md,png,json.gz}``. Score another chunker against those baselines without
recomputing them: ``python benchmarks/retrieval.py --baselines none --chunker mine=pkg.mod:split
--compare benchmarks/results/retrieval_squad.json.gz --out benchmarks/results/retrieval_mine``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dynamic_chunker.evaluation.retrieval_benchmark import add_arguments, run

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "retrieval_squad"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, str(DEFAULT_OUT))
    try:
        sys.exit(run(parser.parse_args()))
    except ValueError as err:
        print(f"retrieval: error: {err}", file=sys.stderr)
        sys.exit(2)
