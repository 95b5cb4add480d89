"""Retrieval benchmark: what chunkers do to RAG on SQuAD questions with exact answer spans.

The same as ``hnet eval retrieval`` (metrics: ``dynamic_chunker.evaluation.retrieval``; baseline chunkers and their
calibration: ``dynamic_chunker.evaluation.chunkers``); needs ``pip install -e ".[rag]"``. By default every baseline at
mean chunk lengths near 128, 275 and 550 characters on both corpus variants, embedded with all-MiniLM-L6-v2 (offline)
and cached under ~/.cache/dynamic_chunker/embeddings: ``HF_HUB_OFFLINE=1 python -m benchmarks.retrieval --threads 1``
writes ``benchmarks/results/retrieval_squad.{md,png,json.gz}``. Another chunker against those baselines without
recomputing them: ``python -m benchmarks.retrieval --baselines none --chunker mine=pkg.mod:split --compare
benchmarks/results/retrieval_squad.json.gz --out benchmarks/results/retrieval_mine``.
"""

import argparse
import sys

from benchmarks import common
from dynamic_chunker.evaluation.retrieval_benchmark import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, str(common.RESULTS / "retrieval_squad"))
    args = parser.parse_args()
    args.command = common.Run("retrieval", None).command
    try:
        sys.exit(run(args))
    except ValueError as err:
        print(f"retrieval: error: {err}", file=sys.stderr)
        sys.exit(2)
