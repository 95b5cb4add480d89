"""hnet bench end to end on a tiny suite (a few steps per model): sizing, training, evaluation, table, plots, resume."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from dynamic_chunker.bench import Suite, _robustness_cells, _train_config, plan, recipe_fingerprint
from dynamic_chunker.cli import main
from dynamic_chunker.training.logs import read_csv

from .test_evaluation import ISOTROPIC, ONE_STAGE
from .test_training import corpus  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_1stage.yaml")
TRAIN = {"optimizer": {"lr": 3e-3}, "train": {"steps": 1, "batch_size": 4}, "eval": {"batch_size": 4}}


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def tiny_suite(tmp_path, corpus):  # noqa: F811
    hnet = {"model": ONE_STAGE, "data": {"corpus": "x"}, "ratio": {"targets": [4]}, **TRAIN}
    one = write(tmp_path / "one.yaml", hnet)
    iso = {"model": ISOTROPIC, "data": {"corpus": "x"}, "ratio": {"targets": []}, **TRAIN}
    iso["optimizer"] = {"lr": 3e-3, "lr_multipliers": [1.0]}
    byte = write(tmp_path / "iso.yaml", iso)
    bpe = write(tmp_path / "bpe.yaml", {**iso, "model": {**ISOTROPIC, "vocab_size": 300},
                                        "data": {"corpus": "x", "tokenizer": "bpe:300"}})
    suite = {
        "name": "tiny",
        "corpus": str(corpus),
        "runs": str(tmp_path / "runs"),
        "out": str(tmp_path / "results"),
        "budget": {"bytes": 4 * 64 * 3, "seq_len": 64, "batch_size": 4},
        "reference": "hnet",
        "eval": {"bpb_windows": 2, "val_windows": 2, "tasks": ["piqa", "lambada"], "limit": 1, "robustness_limit": 1,
                 "continuation": 2},
        "models": [
            {"id": "hnet", "name": "H-Net", "config": one},
            {"id": "bytes", "name": "LlamaByte", "config": byte, "match_flops": True},
            {"id": "bpe", "name": "BPE", "config": bpe, "match_flops": True},
        ],
    }
    return write(tmp_path / "suite.yaml", suite)


def test_bench_trains_evaluates_and_resumes_a_tiny_suite(tmp_path, corpus, capsys, one_thread):  # noqa: F811
    path = tiny_suite(tmp_path, corpus)
    planned = plan(Suite.load(path))
    target = planned["hnet"]["flops_per_byte"]
    assert abs(planned["bytes"]["flops_per_byte"] - target) / target < 0.3  # width resized to the reference's FLOPs
    assert planned["bpe"]["bytes_per_token"] > 1.5
    assert planned["bpe"]["config"].data.seq_len == round(64 / planned["bpe"]["bytes_per_token"])
    assert main(["bench", path, "--no-progress"]) == 0
    results = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert set(results) == {"hnet", "bytes", "bpe"}
    assert all(r["steps"] == 3 and 0 < r["val_bpb"] < 12 for r in results.values())
    assert results["hnet"]["flops_compression"] == [4] and len(results["hnet"]["compression"]) == 1
    assert results["bpe"]["tasks"]["piqa"]["items"] == 1
    table = (tmp_path / "results" / "tiny.md").read_text()
    assert "| LlamaByte |" in table and "Zero-shot" in table and "Noised HellaSwag" in table
    assert (tmp_path / "results" / "tiny_bpb.png").stat().st_size > 0
    assert (tmp_path / "results" / "tiny_compression.png").stat().st_size > 0
    assert results["hnet"]["tasks"]["continuation"]["items"] == 2  # eval.continuation: the sanity check
    # finished models are loaded, not retrained
    before = (tmp_path / "runs" / "hnet" / "model.safetensors").stat().st_mtime_ns
    assert main(["bench", path, "--no-progress"]) == 0
    assert (tmp_path / "runs" / "hnet" / "model.safetensors").stat().st_mtime_ns == before
    # a session that ended during evaluation (checkpoint, no bench.json) evaluates without training again; one that
    # ended before the first checkpoint (only logs in the folder) trains again from scratch
    runs = tmp_path / "runs"
    (runs / "hnet" / "bench.json").unlink()
    for name in ("bench.json", "checkpoint.pt", "model.safetensors"):
        (runs / "bytes" / name).unlink()
    assert main(["bench", path, "--no-progress"]) == 0
    again = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert (runs / "hnet" / "model.safetensors").stat().st_mtime_ns == before
    assert again["hnet"]["val_bpb"] == results["hnet"]["val_bpb"] and again["bytes"]["steps"] == 3
    assert [r["step"] for r in read_csv(runs / "bytes" / "train.csv")] == [1, 2, 3]  # the old logs were replaced
    # on another machine (no run folders, only the committed results) nothing trains again, and the plots keep the
    # curves; a result whose plan no longer matches (other steps) is trained again
    curve = [(row["step"], row["val_bpb"]) for row in again["hnet"]["curve"]]
    assert curve == [(row["step"], row["val_bpb"]) for row in read_csv(runs / "hnet" / "eval.csv")] and curve
    shutil.rmtree(runs)
    assert main(["bench", path, "--no-progress"]) == 0
    assert not any((runs / i).exists() for i in again)  # (the BPE tokenizer is trained again: planning needs it)
    assert json.loads((tmp_path / "results" / "tiny.json").read_text()) == again
    assert "not trained again" in capsys.readouterr().out
    # a result of another recipe (here: another learning rate, same steps and FLOPs) is trained again, as is one
    # written before recipes were fingerprinted whose steps differ
    committed = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert committed["bpe"]["recipe_sha256"] == recipe_fingerprint(planned["bpe"]["config"])
    committed["hnet"]["recipe_sha256"] = recipe_fingerprint(dataclasses.replace(
        planned["hnet"]["config"], optimizer=dataclasses.replace(planned["hnet"]["config"].optimizer, lr=1.0)))
    del committed["bytes"]["recipe_sha256"]
    committed["bytes"]["steps"] = 2
    (tmp_path / "results" / "tiny.json").write_text(json.dumps(committed))
    assert main(["bench", path, "--no-progress"]) == 0
    assert (runs / "bytes" / "bench.json").is_file() and (runs / "hnet" / "bench.json").is_file()
    assert not (runs / "bpe").exists()
    capsys.readouterr()


def test_model_overrides_as_a_mapping_or_a_list(tmp_path):
    models = [
        {"id": "a", "config": TINY, "overrides": {"warm_start.stages": [], "train.seed": 3}},
        {"id": "b", "config": TINY, "overrides": ["warm_start.stages=[{target: none}]"]},
        {"id": "c", "config": TINY},
    ]
    budget = {"bytes": 64, "seq_len": 8, "batch_size": 1}
    suite = {"name": "x", "corpus": "c", "runs": "r", "out": "o", "budget": budget, "models": models}
    loaded = Suite.load(write(tmp_path / "s.yaml", suite))
    configs = {m.id: _train_config(loaded, m) for m in loaded.models}
    assert configs["a"].warm_start_targets() == ["none"] and configs["a"].train.seed == 3
    assert configs["b"].warm_start_targets() == ["none"]
    assert configs["c"].warm_start_targets() == ["after_whitespace"]  # the config's own warm start
    for bad, message in (({"id": "a", "config": "c", "override": []}, "unknown model key"),
                         ({"id": "a", "config": "c", "overrides": "train.seed"}, "mapping or a list")):
        with pytest.raises(ValueError, match=message):
            Suite.load(write(tmp_path / "s.yaml", {**suite, "models": [bad]}))


@pytest.mark.parametrize("name", ["paper_small", "languages"])
def test_bundled_suites_train_the_papers_h_net(name):
    """The suites compare the paper's H-Net (no boundary warm start) with the baselines."""
    for suite in Suite.load_all(ROOT / "benchmarks" / "suites" / f"{name}.yaml"):
        for model in suite.models:
            assert set(_train_config(suite, model).warm_start_targets()) <= {"none"}, model.id


def test_a_suite_over_several_corpora_runs_once_per_corpus(tmp_path):
    data = {
        "name": "langs",
        "corpus": ["data/chinese", "data/dna"],
        "runs": "runs/bench/langs",
        "out": "out",
        "budget": {"bytes": 100, "seq_len": 8, "batch_size": 2},
        "models": [{"id": "a", "config": "a.yaml"}],
    }
    suites = Suite.load_all(write(tmp_path / "s.yaml", data))
    assert [(s.name, s.corpus, s.runs) for s in suites] == [
        ("langs_chinese", "data/chinese", "runs/bench/langs/chinese"),
        ("langs_dna", "data/dna", "runs/bench/langs/dna"),
    ]
    assert main(["bench", str(tmp_path / "s.yaml")]) == 2  # corpora not prepared: a one-line error


def test_suite_errors(tmp_path):
    bad = {"name": "x", "corpus": "c", "runs": "r", "out": "o", "budget": {"bytes": 1, "seq_len": 0, "batch_size": 1},
           "models": [{"id": "a", "config": "a.yaml"}]}
    with pytest.raises(ValueError, match="budget.seq_len must be a positive integer"):
        Suite.load(write(tmp_path / "s.yaml", bad))
    with pytest.raises(ValueError, match="reference 'b' is not one of the model ids"):
        Suite.load(write(tmp_path / "s.yaml", {**bad, "budget": {"bytes": 1, "seq_len": 1, "batch_size": 1},
                                               "reference": "b"}))


def test_robustness_cells_give_accuracies_and_a_score_only_above_chance():
    clean_at_chance = {"clean": {"acc_norm": 0.255, "items": 200}, "drop": {"acc_norm": 0.23, "robustness": -400.0}}
    assert _robustness_cells(clean_at_chance) == {"clean": "0.2550", "drop": "0.2300 (n/a)"}
    above = {"clean": {"acc_norm": 0.45, "items": 200}, "drop": {"acc_norm": 0.35, "robustness": 50.0}}
    assert _robustness_cells(above) == {"clean": "0.4500", "drop": "0.3500 (50)"}
