"""hnet eval bpb|tasks|robustness on a tiny saved model: results printed and written as JSON + markdown."""

import json

import pytest
import torch

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.cli import main
from dynamic_chunker.data.corpus import CorpusSplit
from dynamic_chunker.data.tokens import documents, train_bpe

from .test_evaluation import ISOTROPIC, ONE_STAGE, TEXT
from .test_training import corpus  # noqa: F401  (a fixture)


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    HNetForCausalLM(HNetConfig.from_dict(ONE_STAGE)).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_eval_bpb_tasks_and_robustness_write_reports(model_dir, capsys):
    assert main(["eval", "bpb", str(model_dir), "--text", TEXT, "--window", "32", "--no-progress"]) == 0
    bpb = json.loads((model_dir / "eval" / "bpb.json").read_text())["results"]["bits per byte"]["--text"]
    assert 6 < bpb["bpb"] < 10 and bpb["bytes"] == len(TEXT)
    args = ["eval", "tasks", str(model_dir), "--tasks", "piqa", "lambada", "xwinograd_zh", "--limit", "2"]
    assert main([*args, "--no-progress"]) == 0
    tasks = json.loads((model_dir / "eval" / "tasks.json").read_text())["results"]["zero-shot"]
    assert set(tasks) == {"piqa", "lambada", "xwinograd_zh"} and tasks["piqa"]["items"] == 2
    out = model_dir / "elsewhere"
    args = ["eval", "robustness", str(model_dir), "--limit", "2", "--perturbations", "uppercase", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    rows = json.loads((out / "robustness.json").read_text())["results"]["HellaSwag under noise"]
    assert set(rows) == {"clean", "uppercase"} and "robustness" in rows["uppercase"]
    assert "| uppercase |" in capsys.readouterr().out


def test_eval_tasks_runs_the_continuation_sanity_check_on_a_corpus(model_dir, corpus, capsys):  # noqa: F811
    args = ["eval", "tasks", str(model_dir), "--corpus", str(corpus), "--limit", "3", "--seed", "1", "--no-progress"]
    assert main(args) == 0
    report = json.loads((model_dir / "eval" / "tasks.json").read_text())
    assert set(report["results"]["zero-shot"]) == {"continuation"}  # --corpus alone: only the sanity check
    assert report["results"]["zero-shot"]["continuation"]["items"] == 3
    assert report["meta"]["continuation"].endswith("(train), seed 1")
    assert main([*args, "--tasks", "piqa"]) == 0
    assert set(json.loads((model_dir / "eval" / "tasks.json").read_text())["results"]["zero-shot"]) == {
        "piqa",
        "continuation",
    }
    capsys.readouterr()


def test_eval_of_a_token_model_reads_its_tokenizer(tmp_path):
    data = torch.tensor([254, *(TEXT * 4).encode()], dtype=torch.uint8).numpy()
    tokenizer = train_bpe(documents(CorpusSplit("train", data, torch.tensor([0]).numpy())), vocab_size=280)
    folder = tmp_path / "bpe"
    HNetForCausalLM(HNetConfig.from_dict({**ISOTROPIC, "vocab_size": 280})).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    assert main(["eval", "bpb", str(folder), "--text", TEXT, "--no-progress"]) == 0
    result = json.loads((folder / "eval" / "bpb.json").read_text())["results"]["bits per byte"]["--text"]
    assert result["tokens"] < result["bytes"] == len(TEXT)


def test_eval_errors_are_one_line(model_dir, capsys):
    assert main(["eval", "bpb", str(model_dir)]) == 2
    assert "give exactly one of --corpus, --file or --text" in capsys.readouterr().err
    assert main(["eval", "tasks", str(model_dir), "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
