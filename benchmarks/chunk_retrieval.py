"""chunk_text on the retrieval benchmark, beside the baselines of `benchmarks/results/retrieval_squad.json.gz`.

    python -m benchmarks.chunk_retrieval [--sizes 275,550,128] [--variants flat,paragraphs] [--cache-dir DIR]

1. The bundled model's boundary signals of every article are computed once (`HNetChunker.signals`); every setting below
   cuts from them (`HNetChunker.cut`), so the MB/s column here is the cutter alone (``benchmarks.chunk_speed`` times
   the whole of chunk_text).
2. For each target mean length, `chunk_size` is calibrated as the baselines' parameters are
   (`evaluation.chunkers.calibrate`: within 1% of the target where the search gets there, else the nearest mean found).
3. A cheap screen without embeddings picks the optimal cutter's settings: for each (layout_weight, min_fraction,
   cut_cost) the share of questions whose answer is cut in two (lower is better), at every size and variant; the
   lowest mean wins among settings whose calibrated chunk_size stays within MAX_SIZE_RATIO of the target.
4. Scored with MiniLM embeddings: `chunk_text` with its defaults (the greedy cutter), the optimal cutter with the
   setting chosen on the screen (`chunk_text-optimal`) and with the screen's best of all settings
   (`chunk_text-optimal-uncapped`) and with the setting an earlier prototype was measured with
   (`chunk_text-optimal-prototype`); for the defaults, the chosen and the prototype setting also the ablation
   (`-layout-only`: `model_weight=0`, layout scores only, same cutter and settings); the report merges the
   baselines' per-question scores for paired comparisons.

``--runs chunk_text,... --model DIR --output PREFIX`` scores only those rows (skipping the screen where none of them
needs it), e.g. for a candidate model, with each row's paired table against the best baseline and against the same row
of the committed run (the bundled model).

Writes ``benchmarks/results/chunk_retrieval{.md,.png,.json.gz,_screen.md,_paired.md}`` (``--output`` prefix).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from benchmarks import common
from dynamic_chunker.evaluation.chunkers import calibrate
from dynamic_chunker.evaluation.retrieval import answers_cut, evaluate_chunkers, load_corpus
from dynamic_chunker.evaluation.retrieval_benchmark import (
    merge_results,
    paired_table,
    read_results,
    variant_record,
    write_outputs,
)
from dynamic_chunker.segmentation import HNetChunker

BASELINES = common.RESULTS / "retrieval_squad.json.gz"
COMMITTED = common.RESULTS / "chunk_retrieval.json.gz"  # the full run with the bundled model
# the settings screen's grid
LAYOUT_WEIGHTS, MIN_FRACTIONS, CUT_COSTS = "1,2,4", "0.1,0.2,0.3,0.5", "2.5,4,5,6,7.5,10,15"
MAX_SIZE_RATIO = 2.0  # the chosen setting's calibrated chunk_size is at most this times the target mean length
DEFAULTS = HNetChunker.__init__.__kwdefaults__
GREEDY = {k: DEFAULTS[k] for k in ("cutter", "layout_weight", "min_fraction")}  # chunk_text's defaults
# the setting an earlier, slow prototype of the optimal cutter was measured with (fixed beforehand, not screened)
PROTOTYPE = {"cutter": "optimal", "layout_weight": 2.0, "min_fraction": 0.2, "cut_cost": 2.5}
PAIRED = ("Paired differences at k = 5 over the same 4,961 questions, percentage points ± paired standard error "
          "(positive: chunk_text better). The best baseline is the one with the highest IoU@5 at that target "
          "(fixed-size left out).")  # fmt: skip
SCREENED = ("chunk_text-optimal", "chunk_text-optimal-layout-only", "chunk_text-optimal-uncapped")  # need the screen


class CachedCut:
    """text -> (start, end) spans, cutting from precomputed signals with the given chunker settings."""

    def __init__(self, chunker: HNetChunker, signals: dict[str, np.ndarray]):
        self.chunker, self.signals = chunker, signals

    def __call__(self, text: str) -> list[tuple[int, int]]:
        return [(c.start_index, c.end_index) for c in self.chunker.cut(text, self.signals[text])]


def cutter(model, signals: dict[str, np.ndarray], **options):
    """chunk_size -> a :class:`CachedCut` with ``options``: the factory that ``calibrate`` searches over."""
    return lambda size: CachedCut(HNetChunker(model, size, **options), signals)


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, "chunk_retrieval", threads=1, text=False)
    parser.add_argument("--sizes", default="275,550,128")
    parser.add_argument("--screen-sizes", default="128,275,550", help="target sizes of the settings screen")
    parser.add_argument("--variants", default="flat,paragraphs")
    parser.add_argument("--model", help="chunking model (default: the bundled one)")
    parser.add_argument("--cache-dir", help="embedding cache (default: the benchmark's)")
    parser.add_argument("--layout-weights", default=LAYOUT_WEIGHTS, help="layout_weight values of the screen")
    parser.add_argument("--min-fractions", default=MIN_FRACTIONS, help="min_fraction values of the screen")
    parser.add_argument("--cut-costs", default=CUT_COSTS, help="cut_cost values of the screen (optimal cutter)")
    parser.add_argument("--screen-only", action="store_true", help="stop after the settings screen")
    parser.add_argument("--paired-only", action="store_true", help="only write the paired table of an earlier run")
    parser.add_argument("--runs", help="score only these rows, e.g. chunk_text,chunk_text-optimal-prototype (a "
                        "candidate model; without the screen's rows the screen is skipped); default: all")
    parser.add_argument("--articles", type=int, help="use only the first N articles (a quick check; not comparable "
                        "with the stored baselines, so with --screen-only)")  # fmt: skip
    args = common.parse(parser, argv)
    if args.runs and args.output == common.RESULTS / "chunk_retrieval":
        parser.error("--runs writes a partial report: give it its own --output prefix")
    if args.articles and not args.screen_only:
        parser.error("--articles goes with --screen-only: the stored baselines were scored on every article")
    run = common.Run("chunk_retrieval", argv)
    if args.paired_only:
        write_paired(args.output, run)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = args.variants.split(",")
    model = HNetChunker(args.model).model
    corpora, signals = {}, {}
    for variant in variants:
        corpus = load_corpus(None, variant)
        corpus = corpora[variant] = corpus.head(args.articles) if args.articles else corpus
        seconds, signals[variant] = common.timed(
            lambda c=corpus: {d: HNetChunker(model).signals(d.encode("utf-8")) for d in c.documents}
        )
        print(f"{variant}: signals of {sum(len(d.encode()) for d in corpus.documents) / 1e6:.2f} MB in {seconds:.0f} s")

    if args.runs and not any(name in SCREENED for name in args.runs.split(",")):
        score(args, run, model, corpora, signals, sizes, variants, None, None)
        return

    # --- the settings screen (no embeddings)
    screen_sizes = [int(s) for s in args.screen_sizes.split(",")]

    def screen_row(options: dict) -> tuple[list[float], float]:
        """Share of answers cut in two per variant and size, and the largest calibrated chunk_size / target."""
        rates, ratio = [], 0.0
        for variant in variants:
            corpus, factory = corpora[variant], cutter(model, signals[variant], **options)
            for size in screen_sizes:
                param = calibrate(factory, corpus.documents, size)[0]
                rates.append(answers_cut(corpus.questions, [factory(param)(d) for d in corpus.documents]))
                ratio = max(ratio, param / size)
        return rates, ratio

    lines = ["| cutter | layout_weight | min_fraction | cut_cost | "
             + " | ".join(f"{v}@{s}" for v in variants for s in screen_sizes) + " | mean | chunk_size / target |",
             "|---|---|---|---|" + "---|" * (len(variants) * len(screen_sizes) + 2)]  # fmt: skip

    def add_line(options: dict) -> tuple[float, float]:
        rates, ratio = screen_row(options)
        name = options.get("cutter", "optimal") + (" (layout only)" if options.get("model_weight") == 0 else "")
        cells = " | ".join(f"{r * 100:.2f}" for r in rates)
        settings = f"{options['layout_weight']} | {options['min_fraction']} | {options.get('cut_cost', '-')}"
        lines.append(f"| {name} | {settings} | {cells} | {np.mean(rates) * 100:.2f} | {ratio:.2f} |")
        print(lines[-1], flush=True)
        return float(np.mean(rates)), ratio

    add_line(GREEDY)
    screen = {}
    for lw, mf, cost in itertools.product(*(map(float, a.split(",")) for a in (args.layout_weights,
                                          args.min_fractions, args.cut_costs))):  # fmt: skip
        screen[(lw, mf, cost)] = add_line({"cutter": "optimal", "layout_weight": lw, "min_fraction": mf,
                                             "cut_cost": cost})  # fmt: skip
    within = {k: rate for k, (rate, ratio) in screen.items() if ratio <= MAX_SIZE_RATIO} or {
        k: rate for k, (rate, _) in screen.items()
    }
    best_lw, best_mf, best_cost = min(within, key=within.get)
    chosen = {"cutter": "optimal", "layout_weight": best_lw, "min_fraction": best_mf, "cut_cost": best_cost}
    uncapped = {"cutter": "optimal", **dict(zip(("layout_weight", "min_fraction", "cut_cost"),
                                                min(screen, key=lambda k: screen[k][0])))}  # fmt: skip
    add_line({**chosen, "model_weight": 0.0})
    title = "chunk_text settings screen: % of SQuAD answers cut in two (lower is better), at matched mean lengths"
    header = run.header(
        title,
        f"Chosen (optimal cutter): layout_weight {best_lw}, min_fraction {best_mf}, cut_cost {best_cost}: the "
        f"lowest mean among the settings whose calibrated chunk_size stays within {MAX_SIZE_RATIO:g}x the target "
        "mean length at every size (so that chunk_size remains a meaningful maximum). The last column is the "
        "largest calibrated chunk_size / target over the cells; `greedy` is chunk_text's default cutter. Also "
        f"scored with embeddings (as `chunk_text-optimal-uncapped`): the lowest mean of all, {uncapped}.",
    )
    common.write_report(header + lines, args.output.with_name(args.output.name + "_screen.md"))
    if args.screen_only:
        return
    score(args, run, model, corpora, signals, sizes, variants, chosen, uncapped)


def score(args, run, model, corpora, signals, sizes, variants, chosen, uncapped) -> None:
    """Embedding scores of the defaults, the optimal cutter and their layout-only ablations (``--runs``: some of
    them; ``chosen`` and ``uncapped`` are the screen's settings, None where it was skipped)."""
    from dynamic_chunker.evaluation.embeddings import DEFAULT_CACHE, CachedEmbedder

    embedder = CachedEmbedder("sentence-transformers/all-MiniLM-L6-v2", args.cache_dir or DEFAULT_CACHE, 64, "cpu",
                              args.threads)  # fmt: skip
    baselines = read_results(BASELINES)
    report = {"model": embedder.model_id, "k": [1, 5, 10], "variants": {}}
    runs = [
        ("chunk_text", GREEDY),
        ("chunk_text-layout-only", {**GREEDY, "model_weight": 0.0}),
        *([("chunk_text-optimal", chosen), ("chunk_text-optimal-layout-only", {**chosen, "model_weight": 0.0})]
          if chosen else []),  # fmt: skip
        *([("chunk_text-optimal-uncapped", uncapped)] if uncapped and uncapped != chosen else []),
        ("chunk_text-optimal-prototype", PROTOTYPE),
        ("chunk_text-optimal-prototype-layout-only", {**PROTOTYPE, "model_weight": 0.0}),
    ]
    if args.runs:
        unknown = set(args.runs.split(",")) - {name for name, _ in runs}
        if unknown:
            raise SystemExit(f"--runs: unknown rows {sorted(unknown)}; choose from {[name for name, _ in runs]}")
        runs = [(name, options) for name, options in runs if name in args.runs.split(",")]
    results = {v: {} for v in variants}
    for size, (name, options), variant in itertools.product(sizes, runs, variants):
        corpus, factory = corpora[variant], cutter(model, signals[variant], **options)
        param, mean = calibrate(factory, corpus.documents, size)
        key = f"{name}@{size}"
        info = {key: {"chunker": name, "target": size, "param": param, **options}}
        cut = factory(param)
        print(f"{variant}: scoring {key} (chunk_size {param}, mean {mean:.1f})", flush=True)
        results[variant].update(evaluate_chunkers(corpus, {key: cut}, embedder, (1, 5, 10), 1, info))
        report["variants"][variant] = variant_record(corpus, results[variant], {})
        write_outputs(report, [baselines], embedder, run.start, args.output, False, run.command)
    print(write_outputs(report, [baselines], embedder, run.start, args.output, True, run.command))
    if args.runs:  # each row against the best baseline and the same row of the committed (bundled model's) run
        ours = read_results(args.output.with_name(args.output.name + ".json.gz"))
        committed = read_results(COMMITTED)
        for record in committed["variants"].values():  # its chunk_text rows, renamed; merged where questions match
            record["chunkers"] = {f"bundled:{key}": dict(entry, chunker=f"bundled:{entry['chunker']}")
                                  for key, entry in record["chunkers"].items()
                                  if entry.get("chunker", "").startswith("chunk_text")}  # fmt: skip
            record["missing"] = {}
        merge_results(ours, committed)
        tables = [f"`{name}`:\n\n" + paired_table(ours, name, f"bundled:{name}") for name, _ in runs]
        note = f"{PAIRED} `bundled:` rows: the same settings in `{COMMITTED.name}` (the bundled model)."
        common.write_report([*run.header("Rows of --runs against the best baseline and the bundled model", note),
                             "\n\n".join(tables)], args.output.with_name(args.output.name + "_paired.md"))  # fmt: skip
    else:
        write_paired(args.output, run)


def write_paired(out: Path, run: common.Run) -> None:
    header = run.header(
        "chunk_text against the best baseline at each size, its layout-only ablation and the optimal cutter",
        f"{PAIRED} From `{out.name}.json.gz`.",
    )
    report = read_results(out.with_name(out.name + ".json.gz"))
    table = paired_table(report, "chunk_text", ["chunk_text-layout-only", "chunk_text-optimal",
                                                 "chunk_text-optimal-prototype"])  # fmt: skip
    ablations = ["chunk_text-optimal-layout-only", "chunk_text-optimal-uncapped"]
    table += "\n\nThe optimal cutter (`cutter=\"optimal\"`), setting chosen on the screen:\n\n"
    table += paired_table(report, "chunk_text-optimal", ablations)
    table += f"\n\nThe optimal cutter with the prototype's setting {PROTOTYPE} (fixed beforehand, not screened):\n\n"
    table += paired_table(report, "chunk_text-optimal-prototype", ["chunk_text-optimal-prototype-layout-only",
                                                                   "chunk_text"])  # fmt: skip
    table += "\n\nIts layout-only ablation (the same cutter on layout scores alone) against the best baseline:\n\n"
    table += paired_table(report, "chunk_text-optimal-prototype-layout-only")
    common.write_report([*header, table], out.with_name(out.name + "_paired.md"))


if __name__ == "__main__":
    main()
