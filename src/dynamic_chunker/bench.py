"""``hnet bench SUITE.yaml``: train (or load) every model of a suite under one budget, evaluate them all, and write a
markdown table and plots.

Budget: every model sees the same number of training bytes (a token model's token windows are sized by its
measured bytes per token), and models marked ``match_flops`` get the innermost width whose forward FLOPs per byte
(paper App. B, at the compression each reaches) are closest to the reference model's. Each model runs in
``runs/<folder>/<id>`` and is finished (``bench.json``) before the next starts; an interrupted model resumes from its
checkpoint, a finished one is loaded, so a suite may span several sessions. The run folders are not committed, so a
model whose result is already in ``out/<name>.json`` (same recipe fingerprint) is taken from there and not trained
again: committed results carry a suite over to another machine (delete a model's entry there to train it again).

Suite YAML::

    name: paper_small
    corpus: data/english                  # or a list of corpora: the suite runs on each
    runs: runs/bench/paper_small          # model folders
    out: benchmarks/results/paper_small   # table, JSON and plots
    budget: {bytes: 6000000, seq_len: 512, batch_size: 16}
    reference: hnet_1stage                # FLOPs per byte of this model are the target
    eval: {bpb_windows: 64, tasks: [lambada, hellaswag], limit: 200, robustness_limit: 200}
    models:
      - {id: hnet_1stage, name: H-Net 1-stage, config: configs/tiny_1stage.yaml,
         overrides: {warm_start.stages: [{target: none}]}}   # config keys changed for this suite (or ["k=v", ...])
      - {id: llamabyte, name: LlamaByte, config: configs/baselines/llamabyte.yaml, match_flops: true}

``eval.continuation: N`` adds the sanity-check task ``continuation`` (N items from the suite corpus's training split:
the true continuation of a passage against passages from other documents, chance 0.25) to every model's tasks.
A model's run folder without a checkpoint (stopped before its first one) is started again from scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError
from .files import atomic_write

BENCH_FILE = "bench.json"


@dataclass
class SuiteModel:
    id: str
    config: str
    name: str = ""
    match_flops: bool = False
    overrides: list[str] = field(default_factory=list)  # "section.key=value" (YAML values), applied to the config

    @classmethod
    def from_dict(cls, data: dict, path: Path) -> SuiteModel:
        """A ``models`` entry; ``overrides`` may also be a mapping {"section.key": value}."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown model key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        data = dict(data)
        overrides = data.get("overrides") or []
        if isinstance(overrides, dict):  # JSON is YAML: the values reach load_config's override parser unchanged
            overrides = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ConfigError(f"{path}: overrides of {data.get('id')!r} must be a mapping or a list of 'key=value'")
        return cls(**{**data, "overrides": overrides})


@dataclass
class Suite:
    name: str
    corpus: str
    runs: str
    out: str
    budget: dict
    models: list[SuiteModel]
    reference: str | None = None
    eval: dict = field(default_factory=dict)

    @classmethod
    def load_all(cls, path: str | Path) -> list[Suite]:
        """The suite, or one per corpus when ``corpus`` is a list (``runs/<corpus>``, tables ``<name>_<corpus>``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"suite file not found: {path}")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data.get("corpus"), list):
            return [cls.load(path)]
        suites = []
        for corpus in data["corpus"]:
            stem = Path(corpus).name
            one = {**data, "corpus": corpus, "name": f"{data['name']}_{stem}", "runs": str(Path(data["runs"]) / stem)}
            suites.append(cls.from_dict(one, path))
        return suites

    @classmethod
    def load(cls, path: str | Path) -> Suite:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"suite file not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), path)

    @classmethod
    def from_dict(cls, data: dict, path: Path) -> Suite:
        data = dict(data)
        known = {"name", "corpus", "runs", "out", "budget", "models", "reference", "eval"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        models = [SuiteModel.from_dict(m, path) for m in data.pop("models")]
        suite = cls(models=models, **data)
        ids = [m.id for m in models]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{path}: model ids must be unique, got {ids}")
        if suite.reference is not None and suite.reference not in ids:
            raise ConfigError(f"{path}: reference {suite.reference!r} is not one of the model ids {ids}")
        for key in ("bytes", "seq_len", "batch_size"):
            if not isinstance(suite.budget.get(key), int) or suite.budget[key] < 1:
                raise ConfigError(f"{path}: budget.{key} must be a positive integer")
        return suite


def _train_config(suite: Suite, model: SuiteModel, model_dict: dict | None = None, seq_len: int | None = None):
    """The model's training config under the suite's budget (steps = bytes / bytes per step)."""
    from .training.config import load_config

    b = suite.budget
    seq_len = seq_len or b["seq_len"]
    steps = max(1, b["bytes"] // (b["batch_size"] * b["seq_len"]))  # byte budget: the same steps for every model
    overrides = [
        f"data.corpus={suite.corpus}",
        f"data.seq_len={seq_len}",
        f"train.batch_size={b['batch_size']}",
        f"train.steps={steps}",
        "train.max_minutes=null",
        f"eval.every={max(1, steps // 10)}",
        f"eval.windows={suite.eval.get('val_windows', 32)}",
        f"checkpoint.every={max(1, steps // 5)}",
        f"out={Path(suite.runs) / model.id}",
        *model.overrides,
    ]
    config = load_config(model.config, overrides)
    if model_dict is not None:
        config.model = model_dict
        config.validate()
    return config


def _compression(config) -> list[float] | None:
    """Compression each chunking stage reaches: measured for fixed rules, the ratio-loss targets for learned ones."""
    from .data import PreparedCorpus
    from .evaluation.sizing import rule_compression

    model = config.model_config()
    if model.num_stages == 1:
        return []
    sample = bytes(PreparedCorpus(config.data.corpus, verify=False).split("val").data[:1_000_000])
    return rule_compression(model, sample) or list(config.ratio.targets)


def _tokenizer(suite: Suite, model: SuiteModel, config):
    """The model's tokenizer, trained once per suite and corpus (``runs/<id>.tokenizer.json``, next to the run folder,
    which the trainer wants empty) when its config asks for ``bpe:V``; returns (tokenizer, path)."""
    from tokenizers import Tokenizer

    from .data import PreparedCorpus
    from .data.tokens import documents, train_bpe
    from .training.trainer import TOKENIZER_TRAINING_BYTES

    spec = config.data.tokenizer
    if not spec.startswith("bpe:"):
        return Tokenizer.from_file(spec), spec
    path = Path(suite.runs) / f"{model.id}.tokenizer.json"
    if not path.is_file():
        split = PreparedCorpus(suite.corpus, verify=False).split("train")
        path.parent.mkdir(parents=True, exist_ok=True)
        train_bpe(documents(split, TOKENIZER_TRAINING_BYTES), int(spec[4:])).save(str(path))
    return Tokenizer.from_file(str(path)), str(path)


def _bytes_per_token(tokenizer, corpus: str) -> float:
    """Measured UTF-8 bytes per token of ``tokenizer`` on (the first MB of) the validation split."""
    from .data import PreparedCorpus
    from .data.tokens import documents

    texts = list(documents(PreparedCorpus(corpus, verify=False).split("val"), max_bytes=1_000_000))
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    return sum(len(t.encode()) for t in texts) / max(tokens, 1)


def plan(suite: Suite) -> dict[str, dict]:
    """For every model: its training config (sized), FLOPs per byte, compression and bytes per token."""
    from .evaluation.sizing import flops_per_byte, size_to_flops

    planned = {}
    target = None
    order = sorted(suite.models, key=lambda m: m.id != suite.reference)  # the reference first: it sets the target
    for model in order:
        config = _train_config(suite, model)
        bytes_per_token, seq_len = 1.0, suite.budget["seq_len"]
        if config.data.tokenizer is not None:
            tokenizer, path = _tokenizer(suite, model, config)
            model = dataclasses.replace(model, overrides=[*model.overrides, f"data.tokenizer={path}"])
            bytes_per_token = _bytes_per_token(tokenizer, suite.corpus)
            seq_len = max(2, round(suite.budget["seq_len"] / bytes_per_token))
        compression = _compression(config)
        model_config = config.model_config()
        if model.match_flops and target is not None:
            model_config, _ = size_to_flops(model_config, target, seq_len, compression, bytes_per_token)
        config = _train_config(suite, model, model_config.to_dict(), seq_len)
        flops = flops_per_byte(model_config, seq_len, compression or None, bytes_per_token)
        if model.id == suite.reference:
            target = flops
        planned[model.id] = {
            "config": config,
            "flops_per_byte": flops,
            "compression": compression,
            "bytes_per_token": bytes_per_token,
        }
    return {m.id: planned[m.id] for m in suite.models}


def run_model(suite: Suite, model: SuiteModel, planned: dict, progress: bool = True) -> dict:
    """Train (or resume, or load) one model and evaluate it; the result is kept in its folder's bench.json."""
    from .data import PreparedCorpus
    from .evaluation import bits_per_byte, load_lm
    from .evaluation.robustness import evaluate_robustness
    from .training import train
    from .training.logs import read_csv
    from .training.trainer import CHECKPOINT

    config = planned["config"]
    out_dir = Path(config.out)
    done = out_dir / BENCH_FILE
    if done.is_file():
        return json.loads(done.read_text())
    if not (out_dir / CHECKPOINT).exists() or not (out_dir / "model.safetensors").exists():
        resume = (out_dir / CHECKPOINT).exists()  # else nothing to resume: a run stopped early starts again
        if train(config, resume=resume, overwrite=not resume, progress=progress).interrupted:
            raise KeyboardInterrupt  # Ctrl-C / SIGTERM: the run saved a checkpoint; rerunning the suite resumes it
    history, evals = read_csv(out_dir / "train.csv"), read_csv(out_dir / "eval.csv")
    minutes = history[-1]["elapsed_s"] / 60 if history else math.nan  # training steps only, over all sessions
    lm = load_lm(out_dir)
    val = PreparedCorpus(suite.corpus, verify=False).split("val")
    ev = suite.eval
    bpb = bits_per_byte(lm, val, window=config.data.seq_len, batch_size=config.eval.batch_size,
                        max_windows=ev.get("bpb_windows"), progress=progress)
    result = {
        "id": model.id,
        "name": model.name or model.id,
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "flops_per_byte": planned["flops_per_byte"],
        "recipe_sha256": recipe_fingerprint(config),
        "flops_compression": planned["compression"],  # assumed for the FLOPs: ratio targets or measured fixed rules
        "compression": [evals[-1][f"val_compression_{s}"] for s in range(len(planned["compression"]))],
        "bytes_per_token": planned["bytes_per_token"],
        "steps": config.train.steps,
        "bytes_seen": config.train.steps * config.train.batch_size * config.data.seq_len * planned["bytes_per_token"],
        "train_minutes": minutes,
        "val_bpb": bpb.bpb,
        "curve": _curve(out_dir),
        "tasks": _tasks(lm, suite, progress),
        "robustness": (
            evaluate_robustness(lm, ev["robustness_limit"], progress=progress) if ev.get("robustness_limit") else {}
        ),
    }
    atomic_write(done, json.dumps(result, indent=2) + "\n")  # an interrupted write leaves no half file
    return result


def _curve(out_dir: Path) -> list[dict]:
    """The validation curve of a run (step, val BPB, compression per stage), kept in the results for the plots."""
    from .training.logs import read_csv

    keep = lambda key: key in ("step", "val_bpb") or key.startswith("val_compression_")  # noqa: E731
    return [{k: v for k, v in row.items() if keep(k)} for row in read_csv(out_dir / "eval.csv")]


def recipe_fingerprint(config) -> str:
    """SHA-256 of a model's sized training config, where it lives left out (output folder, corpus and tokenizer
    paths, checkpointing): two runs with the same fingerprint train the same recipe."""
    recipe = config.to_dict()
    recipe.pop("out", None)
    recipe.pop("checkpoint", None)
    recipe["data"] = {k: v for k, v in recipe["data"].items() if k not in ("corpus", "tokenizer")}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def _committed(suite: Suite, planned: dict[str, dict]) -> dict[str, dict]:
    """Results in ``out/<name>.json`` of the planned recipe (its run is elsewhere): the same recipe fingerprint, or
    for results written before fingerprints, the same FLOPs per byte and steps."""
    path = Path(suite.out) / f"{suite.name}.json"
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); restore it from git or delete it") from None
    def same(r: dict, p: dict) -> bool:
        if "recipe_sha256" in r:
            return r["recipe_sha256"] == recipe_fingerprint(p["config"])
        return r.get("steps") == p["config"].train.steps and math.isclose(
            r.get("flops_per_byte", math.nan), p["flops_per_byte"], rel_tol=1e-6
        )

    return {i: r for i, r in results.items() if i in planned and same(r, planned[i])}


def _tasks(lm, suite: Suite, progress: bool) -> dict[str, dict]:
    """The suite's zero-shot tasks, and the ``continuation`` sanity check when ``eval.continuation`` is set."""
    from .data import PreparedCorpus
    from .evaluation.tasks import evaluate, evaluate_tasks
    from .evaluation.tasks.continuation import corpus_continuation_task

    ev = suite.eval
    results = evaluate_tasks(lm, ev["tasks"], ev.get("limit"), progress=progress) if ev.get("tasks") else {}
    if ev.get("continuation"):
        split = PreparedCorpus(suite.corpus, verify=False).split("train")
        results["continuation"] = evaluate(lm, corpus_continuation_task(split, ev["continuation"]), progress=progress)
    return results


def run_suite(path: str | Path, only: list[str] | None = None, progress: bool = True) -> list[Path]:
    """Run (or resume) a whole suite (each of its corpora in turn); returns the markdown tables' paths."""
    return [_run_one(suite, Path(path), only, progress) for suite in Suite.load_all(path)]


def _run_one(suite: Suite, path: Path, only: list[str] | None, progress: bool) -> Path:
    if not (Path(suite.corpus) / "manifest.json").is_file():
        raise FileNotFoundError(
            f"corpus {suite.corpus} not found; prepare it with `hnet data prepare {Path(suite.corpus).name}`"
        )
    planned = plan(suite)
    committed, finished = _committed(suite, planned), {}
    for model in suite.models:
        out_dir = Path(planned[model.id]["config"].out)
        if (out_dir / BENCH_FILE).is_file():
            finished[model.id] = json.loads((out_dir / BENCH_FILE).read_text())
            if "curve" not in finished[model.id]:  # results written before the curve was kept
                finished[model.id]["curve"] = committed.get(model.id, {}).get("curve") or _curve(out_dir)
        elif model.id in committed:
            print(f"== {model.id}: its result is in {suite.out}/{suite.name}.json; not trained again", flush=True)
            finished[model.id] = committed[model.id]
    table = write_results(suite, finished, path) if finished else None
    for model in suite.models:
        if model.id in finished or (only and model.id not in only):
            continue
        print(f"== {model.id}: {planned[model.id]['flops_per_byte'] / 1e6:.2f} MFLOPs/byte", flush=True)
        finished[model.id] = run_model(suite, model, planned[model.id], progress)
        # the table is rewritten after every model, so results can be committed as they come in
        table = write_results(suite, {m.id: finished[m.id] for m in suite.models if m.id in finished}, path)
    if table is None:
        raise ConfigError(f"no model of suite {suite.name} ran (--only {only} names none of its ids?)")
    return table


def write_results(suite: Suite, results: dict[str, dict], suite_path: Path) -> Path:
    """``out/<name>.md`` (tables), ``out/<name>.json`` and the plots ``out/<name>_bpb.png`` and
    ``out/<name>_compression.png``."""
    out = Path(suite.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{suite.name}.json", json.dumps(results, indent=2) + "\n")
    rows = []
    for r in results.values():
        comp = " / ".join(f"{c:.2f}" for c in r["compression"]) or "-"
        rows.append(
            f"| {r['name']} | {r['parameters'] / 1e6:.2f} | {r['flops_per_byte'] / 1e6:.2f} | "
            f"{r['bytes_seen'] / 1e6:.2f} | {comp} | {r['train_minutes']:.1f} | {r['val_bpb']:.4f} |"
        )
    lines = [
        f"# Suite {suite.name}",
        "",
        f"`hnet bench {suite_path}`; corpus `{suite.corpus}`, budget {suite.budget}.",
        "",
        "| model | params (M) | MFLOPs/byte | MB seen | val compression | train min | val BPB |",
        "|---|---:|---:|---:|---|---:|---:|",
        *rows,
    ]
    tasks = {r["name"]: {k: v.get("acc_norm", v["acc"]) for k, v in r["tasks"].items()} for r in results.values()}
    if any(tasks.values()):
        from .evaluation.report import markdown_table

        lines += ["", "## Zero-shot (acc_norm where defined, else acc)", "", markdown_table(tasks, "model")]
    robust = {r["name"]: _robustness_cells(r["robustness"]) for r in results.values() if r["robustness"]}
    if robust:
        from .evaluation.report import markdown_table

        lines += [
            "",
            "## Noised HellaSwag (acc_norm; in brackets the robustness score, n/a where the clean accuracy is not",
            "above chance by two standard errors)",
            "",
            markdown_table(robust, "model"),
        ]
    path = atomic_write(out / f"{suite.name}.md", "\n".join(lines) + "\n")
    _plot(suite, results, out)
    return path


def _robustness_cells(rows: dict[str, dict]) -> dict[str, str]:
    """{perturbation: "acc_norm (score)"} for the suite table, the score recomputed from the accuracies (results
    written by older versions stored scores against a clean accuracy at chance)."""
    from .evaluation.robustness import METRIC, robustness_score

    clean = rows["clean"]
    cells = {"clean": f"{clean[METRIC]:.4f}"}
    for name, row in rows.items():
        if name != "clean":
            score = robustness_score(row[METRIC], clean[METRIC], clean.get("items"))
            cells[name] = f"{row[METRIC]:.4f} ({'n/a' if score is None else f'{score:.0f}'})"
    return cells


def _plot(suite: Suite, results: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fig_c, ax_c = plt.subplots(figsize=(7, 4.5))
    for r in results.values():
        evals = r.get("curve")
        if not evals:
            continue
        per_step = r["bytes_seen"] / max(r["steps"], 1)
        ax.plot([e["step"] * per_step / 1e6 for e in evals], [e["val_bpb"] for e in evals], "o-", label=r["name"])
        for s in range(len(r["compression"])):
            values = [e.get(f"val_compression_{s}", math.nan) for e in evals]
            ax_c.plot([e["step"] for e in evals], values, "o-", label=f"{r['name']} stage {s}")
    ax.set(xlabel="training bytes seen (MB)", ylabel="validation bits per byte", title=f"{suite.name}: validation BPB")
    ax_c.set(xlabel="step", ylabel="positions per chunk", title=f"{suite.name}: compression per stage")
    for a, f, name in ((ax, fig, "bpb"), (ax_c, fig_c, "compression")):
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
        a.grid(alpha=0.3)
        f.tight_layout()
        atomic_write(out / f"{suite.name}_{name}.png", lambda file, f=f: f.savefig(file, format="png", dpi=110))
        plt.close(f)
