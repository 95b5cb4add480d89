"""Trainer: configs, schedule, loss going down, exact resume, atomic checkpoints, ratio-loss control, clear errors."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
import yaml

from dynamic_chunker import HNetConfig, HNetForCausalLM, from_pretrained, parameter_groups
from dynamic_chunker.cli import main
from dynamic_chunker.config import OFFICIAL_CONFIGS
from dynamic_chunker.data import Document, Source, prepare_corpus
from dynamic_chunker.errors import ConfigError
from dynamic_chunker.training import build_optimizer, load_config, paper_lr_multipliers, train
from dynamic_chunker.training.checkpoint import load_checkpoint, save_checkpoint
from dynamic_chunker.training.config import config_from_dict
from dynamic_chunker.training.distributed import Runtime
from dynamic_chunker.training.logs import read_csv
from dynamic_chunker.training.objective import IGNORE, split_batch
from dynamic_chunker.training.schedule import wsd_factor
from dynamic_chunker.training.trainer import COMPILE_AUTO_MIN_STEPS, Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
OFFICIAL = OFFICIAL_CONFIGS

WORDS = (
    "the a model learns to split bytes into chunks of words and the routing module finds boundaries where "
    "meaning changes so that an inner network sees fewer longer units while outer layers read every byte"
).split()

TINY_1STAGE = {
    "arch_layout": ["m1", ["T1"], "m1"],
    "d_model": [32, 48],
    "d_intermediate": [0, 64],
    "ssm_cfg": {"d_state": 8, "chunk_size": 32, "d_conv": 4, "expand": 2},
    "attn_cfg": {"num_heads": [2, 2], "rotary_emb_dim": [8, 8], "window_size": [-1, -1]},
}
TINY_2STAGE = {
    "arch_layout": ["m1", ["m1", ["T1"], "m1"], "m1"],
    "d_model": [32, 32, 48],
    "d_intermediate": [0, 0, 64],
    "ssm_cfg": {"d_state": 8, "chunk_size": 32, "d_conv": 4, "expand": 2},
    "attn_cfg": {"num_heads": [2, 2, 2], "rotary_emb_dim": [8, 8, 8], "window_size": [-1, -1, -1]},
}


def toy_text(rng: random.Random, sentences: int) -> bytes:
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        out.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
    return (" ".join(out) + "\n").encode()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small prepared corpus of word-salad English (about 60 kB) through the real data pipeline."""
    rng = random.Random(0)
    documents = [Document(f"doc{i}.txt", toy_text(rng, rng.randint(10, 30))) for i in range(60)]
    out = tmp_path_factory.mktemp("data") / "toy"
    prepare_corpus("toy", out, [Source("toy", {"kind": "test"}, documents)], val_fraction=0.2, progress=False)
    return out


def tiny_config(corpus: Path, out: Path, two_stage: bool = False, **sections) -> dict:
    """A config dict for a tiny model that trains in about a second per few steps."""
    data = {
        "model": TINY_2STAGE if two_stage else TINY_1STAGE,
        "data": {"corpus": str(corpus), "seq_len": 96},
        "ratio": {"targets": [3, 3] if two_stage else [4]},
        "optimizer": {"lr": 3e-3},
        "train": {"steps": 6, "batch_size": 4},
        "eval": {"every": 3, "windows": 8, "batch_size": 4},
        "checkpoint": {"every": 3},
        "out": str(out),
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    return data


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------------------------- schedule


def test_wsd_schedule_warmup_stable_and_one_minus_sqrt_decay():
    steps = 100
    factors = [wsd_factor(k / steps, (k + 1) / steps, 0.1, 0.2) for k in range(steps)]
    assert factors[:10] == pytest.approx([(k + 1) / 10 for k in range(10)])  # linear warmup, first step learns
    assert factors[10:80] == [1.0] * 70
    decay = [1 - math.sqrt((k - 80) / 20) for k in range(80, 100)]
    assert factors[80:] == pytest.approx(decay)
    assert factors[-1] > 0  # the last step still learns
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert wsd_factor(0.0, 0.0, 0.1, 0.2) == 0.0 and wsd_factor(0.5, 0.5, 0.0, 0.0) == 1.0


# -------------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "name, table",
    [
        ("hnet_1stage_L", [2.627, 0.876]),
        ("hnet_1stage_XL", [3.033, 0.876]),
        ("hnet_2stage_L", [2.627, 1.517, 0.715]),
        ("hnet_2stage_XL", [3.033, 1.430, 0.715]),
    ],
)
def test_paper_lr_multipliers_match_reference_table_and_recipes(name, table):
    model = HNetConfig.from_json(OFFICIAL / f"{name}.json")
    targets = [6.0] if "1stage" in name else [3.0, 3.0]
    assert paper_lr_multipliers(model, targets) == pytest.approx(table, abs=1e-3)
    recipe = load_config(CONFIGS / f"{name}.yaml")
    assert recipe.model_config() == model
    assert recipe.lr_multipliers() == pytest.approx(table, abs=1e-3)
    assert recipe.data.seq_len == 8192 and recipe.train.batch_size == 256 and recipe.ratio.targets == targets
    assert recipe.optimizer.lr == (6.25e-4 if name.endswith("_L") else 5e-4)


def test_parameter_groups_accept_auto_like_the_yaml():
    model = HNetForCausalLM(HNetConfig.from_dict(TINY_2STAGE), device="meta")
    auto = parameter_groups(model, "auto", 0.1)  # the paper's targets [3, 3] for a 2-stage model
    rule = paper_lr_multipliers(model.config, [3.0, 3.0])
    assert sorted({g["stage"]: g["lr_multiplier"] for g in auto}.items()) == list(enumerate(rule))
    chosen = parameter_groups(model, "auto", 0.1, ratio_targets=[2.0, 4.0])
    assert {g["lr_multiplier"] for g in chosen} == set(paper_lr_multipliers(model.config, [2.0, 4.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_adamw_steps_like_the_per_parameter_loop(dtype):
    """build_optimizer takes torch's fused AdamW on CPU: three steps with per-stage learning rates and weight decay
    give the parameters of the plain per-parameter AdamW on the same groups."""
    torch.manual_seed(0)
    model = HNetForCausalLM(HNetConfig.from_dict(TINY_2STAGE), dtype=dtype)
    twin = HNetForCausalLM(HNetConfig.from_dict(TINY_2STAGE), dtype=dtype)
    twin.load_state_dict(model.state_dict())
    fused = build_optimizer(model, 1e-2, [2.0, 1.5, 1.0], 0.1)
    assert fused.defaults["fused"]
    twins = dict(twin.named_parameters())
    groups = [{"params": [twins[n] for n in names], "lr": g["lr"], "weight_decay": g["weight_decay"]}
              for g, names in zip(fused.param_groups, group_names(model, fused), strict=True)]
    plain = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    assert not any(g["fused"] for g in plain.param_groups) and len({g["lr"] for g in groups}) > 1
    for step in range(3):
        for m in (model, twin):
            for i, p in enumerate(m.parameters()):
                p.grad = torch.randn(p.shape, dtype=dtype, generator=torch.Generator().manual_seed(100 * step + i))
        fused.step()
        plain.step()
    for (name, got), want in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def group_names(model, optimizer) -> list[list[str]]:
    """The parameter names of each optimizer group."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]

@pytest.mark.parametrize(
    "name", ["tiny_1stage", "tiny_2stage", "small_2stage", "hnet_chunker_small", "hnet_chunker_3stage"]
)
def test_bundled_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml", ["data.corpus=data/english"])
    model = config.model_config()
    assert len(config.ratio.targets) == model.num_stages - 1
    assert config.train.batch_size % config.train.grad_accum == 0
    assert Path(config.out) == Path("runs") / name


def test_overrides_and_yaml_numbers(tmp_path, corpus):
    path = write_yaml(tmp_path / "c.yaml", tiny_config(corpus, tmp_path / "run"))
    config = load_config(path, ["train.steps=11", "optimizer.lr=1e-3", "optimizer.betas=[0.8, 0.9]", "out=elsewhere"])
    assert config.train.steps == 11 and config.optimizer.lr == 1e-3 and config.optimizer.betas == [0.8, 0.9]
    assert config.out == "elsewhere"
    assert isinstance(config.optimizer.lr, float)


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"trian": {"steps": 1}}, ValueError, "unknown key(s) 'trian' in the top level: 'trian' (did you mean 'train'"),
        ({"train": {"steps": 6, "batch_size": 4, "stpes": 3}}, ValueError, "(did you mean 'steps'?)"),
        ({"train": {"steps": "many", "batch_size": 4}}, ConfigError, "train.steps must be an integer, got str 'many'"),
        ({"train": {"steps": True, "batch_size": 4}}, ConfigError, "train.steps must be an integer"),
        ({"train": {"batch_size": 4}}, ValueError, "missing required key 'train.steps'"),
        ({"ratio": {"targets": [3, 3]}}, ValueError, "ratio.targets needs one N per chunking stage: the model has 1"),
        ({"ratio": {"targets": [1]}}, ValueError, "ratio.targets must be finite numbers > 1"),
        ({"ratio": {"targets": [float("inf")]}}, ValueError, "ratio.targets must be finite numbers > 1"),
        ({"ratio": {"targets": [float("nan")]}}, ValueError, "ratio.targets must be finite numbers > 1"),
        ({"train": {"steps": 6, "batch_size": 4, "seed": 2**64}}, ValueError, "train.seed must be in 0..2**63-1"),
        ({"data": {"corpus": "x", "seq_len": 96, "seed": -1}}, ValueError, "data.seed must be in 0..2**63-1"),
        ({"optimizer": {"lr": 1e-3, "lr_multipliers": [1.0]}}, ValueError, "one positive number per stage (2"),
        ({"optimizer": {"lr": 1e-3, "lr_multipliers": "paper"}}, ConfigError, "optimizer.lr_multipliers must be"),
        ({"schedule": {"warmup": 0.9, "decay": 0.2}}, ValueError, "warmup + decay <= 1"),
        ({"eval": {"every": 3, "windows": 0, "batch_size": 4}}, ValueError, "eval.windows and eval.batch_size must be"),
        ({"train": {"steps": 6, "batch_size": 4, "dtype": "fp16"}}, ValueError, "train.dtype must be one of"),
        ({"model": "no/such/model.json"}, FileNotFoundError, "no/such/model.json not found"),
        ({"model": {"arch_layout": ["m1"], "d_model": [32, 48]}}, ValueError, "model (inline): d_model has 2"),
        (
            {"train": {"steps": 6, "batch_size": 4, "gradient_checkpointing": [2]}},
            ValueError,
            "train.gradient_checkpointing stages must be in 0..1",
        ),
    ],
)
def test_malformed_configs_give_clear_errors(tmp_path, corpus, change, error, message):
    data = tiny_config(corpus, tmp_path / "run")
    data.update(change)
    with pytest.raises(error) as info:
        load_config(write_yaml(tmp_path / "c.yaml", data))
    assert message in str(info.value)
    assert str(tmp_path / "c.yaml") in str(info.value)


def test_bad_files_and_overrides_give_clear_errors(tmp_path, corpus):
    good = write_yaml(tmp_path / "c.yaml", tiny_config(corpus, tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="training config not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping of sections"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ValueError, match="must look like section.key=value"):
        load_config(good, ["train.steps"])
    with pytest.raises(ValueError, match=r"unknown key 'step' in train \(did you mean 'steps'\?\)"):
        load_config(good, ["train.step=3"])
    with pytest.raises(ValueError, match="train.steps is not a section"):
        load_config(good, ["train.steps.x=3"])
    (tmp_path / "twice.yaml").write_text(good.read_text() + "train:\n  steps: 3\n  batch_size: 4\n")
    with pytest.raises(ConfigError, match="duplicate key 'train'"):
        load_config(tmp_path / "twice.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """Exit code and stdout + stderr of ``hnet train ARGS``."""
    code = main(["train", *args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_missing_empty_and_corrupt_data_give_clear_errors(tmp_path, corpus, capsys):
    import shutil

    config = write_yaml(tmp_path / "c.yaml", tiny_config(corpus, tmp_path / "run"))
    code, err = run_cli([str(config), f"data.corpus={tmp_path / 'nothing'}"], capsys)
    assert code == 2 and "is not a directory" in err and "hnet data prepare" in err

    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    (broken / "train.bin").write_bytes(b"")
    code, err = run_cli([str(config), f"data.corpus={broken}"], capsys)
    assert code == 2 and "train.bin is empty" in err

    (broken / "train.bin").write_bytes((corpus / "train.bin").read_bytes()[:-10])
    code, err = run_cli([str(config), f"data.corpus={broken}"], capsys)
    assert code == 2 and "truncated" in err

    code, err = run_cli([str(config), "data.seq_len=100000"], capsys)
    assert code == 2 and "shorter than one window" in err

    code, err = run_cli([str(config), "train.batch_size=4096"], capsys)
    assert code == 2 and "fewer than one global batch" in err


def test_batch_size_must_split_over_accumulation(tmp_path, corpus):
    config = config_from_dict(tiny_config(corpus, tmp_path / "run", train={"grad_accum": 3}))
    with pytest.raises(ValueError, match=r"train.batch_size 4 must be divisible by train.grad_accum \(3\)"):
        Trainer(config, Runtime())


# ------------------------------------------------------------------------------------------------ objective


def test_targets_that_start_a_document_are_ignored():
    ids = torch.tensor([[10, 11, 254, 12, 13, 254, 14]])
    docs = torch.tensor([[0, 0, 1, 1, 1, 2, 2]])
    inputs, documents, targets = split_batch(ids, docs)
    assert inputs.tolist() == [[10, 11, 254, 12, 13, 254]]
    assert documents.tolist() == [[0, 0, 1, 1, 1, 2]]
    assert targets.tolist() == [[11, IGNORE, 12, 13, IGNORE, 14]]


# ------------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_lowers_the_loss(tmp_path, corpus):
    config = config_from_dict(tiny_config(corpus, tmp_path / "run", train={"steps": 12}, eval={"every": 0}))
    result = train(config, progress=False)
    losses = [row["ce"] for row in result.history]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert result.evals[-1]["val_bpb"] < 6.5  # from about 8 bits (uniform over bytes) at initialisation
    assert all(row["lr"] > 0 for row in result.history)


def test_validation_bpb_is_hnet_eval_bpb_on_the_same_windows(tmp_path, corpus):
    """The trainer's validation calls dynamic_chunker.evaluation: its val_bpb of the final model is bits_per_byte of
    the exported model over the same windows (every validation window: the split without its incomplete tail)."""
    from dynamic_chunker.data import PreparedCorpus
    from dynamic_chunker.data.corpus import CorpusSplit
    from dynamic_chunker.evaluation import bits_per_byte, load_lm

    every_window = {"every": 0, "windows": 10**6}
    config = config_from_dict(tiny_config(corpus, tmp_path / "run", train={"steps": 3}, eval=every_window))
    result = train(config, progress=False)
    split = PreparedCorpus(corpus).split("val")
    seq_len = config.data.seq_len
    whole = (len(split) - 1) // seq_len * seq_len + 1  # what ByteWindows covers
    cut = CorpusSplit("val", split.data[:whole], split.doc_starts[split.doc_starts < whole])
    expected = bits_per_byte(load_lm(tmp_path / "run"), cut, window=seq_len, batch_size=3)
    assert expected.windows == (len(split) - 1) // seq_len
    assert result.evals[-1]["val_bpb"] == pytest.approx(expected.bpb, rel=1e-5)


@pytest.mark.slow
def test_gradient_checkpointing_trains_identically(tmp_path, corpus, monkeypatch):
    import dynamic_chunker.layers.stack as stack

    recomputed = []
    original = stack.checkpoint
    monkeypatch.setattr(
        stack, "checkpoint", lambda layer, *a, **k: recomputed.append(layer) or original(layer, *a, **k)
    )

    def losses(checkpointing) -> list[float]:
        recomputed.clear()
        sections = {"train": {"steps": 3, "gradient_checkpointing": checkpointing}, "eval": {"every": 0}}
        config = config_from_dict(tiny_config(corpus, tmp_path / str(checkpointing), two_stage=True, **sections))
        return [row["loss"] for row in train(config, progress=False).history]

    plain = losses(False)
    assert not recomputed
    assert losses(True) == pytest.approx(plain, rel=1e-6)
    every_stage = len(recomputed)
    assert losses([1]) == pytest.approx(plain, rel=1e-6)
    assert 0 < len(recomputed) < every_stage


def test_two_stage_training_runs_and_writes_every_output(tmp_path, corpus, capsys):
    path = write_yaml(tmp_path / "c.yaml", tiny_config(corpus, tmp_path / "run", two_stage=True))
    code, text = run_cli([str(path), "train.steps=4"], capsys)
    assert code == 0, text
    assert "step 4: validation BPB" in text
    out = tmp_path / "run"
    for name in (
        "checkpoint.pt",
        "model.safetensors",
        "config.json",
        "train.csv",
        "eval.csv",
        "curves.png",
        "train.yaml",
    ):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    train_rows, eval_rows = read_csv(out / "train.csv"), read_csv(out / "eval.csv")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4] and [r["step"] for r in eval_rows] == [0, 3, 4]
    expected = {"compression_0", "compression_1", "bytes_per_chunk_1", "val_precision_after_whitespace_0"}
    assert expected | {"val_precision_bpe_1", "val_recall_words_1", "val_enrichment_1"} <= set(train_rows[0]) | set(
        eval_rows[0]
    )
    # bytes per chunk of stage 1 = stage-0 compression x stage-1 compression
    row = eval_rows[-1]
    assert row["val_bytes_per_chunk_1"] == pytest.approx(row["val_compression_0"] * row["val_compression_1"], rel=1e-6)
    model = from_pretrained(out)  # the trained model, exactly the checkpoint's weights
    weights = load_checkpoint(out / "checkpoint.pt")["model"]
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_bf16_autocast_trains(tmp_path, corpus):
    config = config_from_dict(
        tiny_config(corpus, tmp_path / "run", train={"steps": 2, "dtype": "bf16"}, eval={"every": 0})
    )
    trainer = Trainer(config, Runtime())
    assert trainer.compute_dtype == torch.bfloat16
    with trainer.autocast:
        assert trainer.model(torch.randint(0, 256, (1, 16))).logits.dtype == torch.bfloat16
    result = trainer.run(progress=False)
    assert all(math.isfinite(row["loss"]) for row in result.history)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay float32
    fp32 = Trainer(config_from_dict(tiny_config(corpus, tmp_path / "fp32")), Runtime())
    assert fp32.compute_dtype == torch.float32  # auto on a CPU


def test_compile_setting_and_when_auto_compiles(tmp_path, corpus, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(HNetForCausalLM, "compile_blocks", lambda model: calls.append(model) or 4)
    with pytest.raises(TypeError, match="train.compile must be true/false or .auto."):
        config_from_dict(tiny_config(corpus, tmp_path / "bad", train={"compile": "yes"}))

    def compiles(**train) -> bool:
        calls.clear()
        Trainer(config_from_dict(tiny_config(corpus, tmp_path / "run", train=train)), Runtime())
        return bool(calls)

    assert not compiles()  # auto, 6 steps: too short to repay compiling
    assert compiles(steps=COMPILE_AUTO_MIN_STEPS)
    assert not compiles(steps=COMPILE_AUTO_MIN_STEPS, max_minutes=1)
    assert not compiles(steps=COMPILE_AUTO_MIN_STEPS, gradient_checkpointing=True)
    assert not compiles(steps=COMPILE_AUTO_MIN_STEPS, compile=False)
    assert compiles(compile=True)
    assert not compiles(steps=COMPILE_AUTO_MIN_STEPS, dtype="bf16")
    assert compiles(compile=True, dtype="bf16")  # allowed: see test_compiled_block_under_bf16_autocast_gives_...
    with monkeypatch.context() as no_compiler:
        no_compiler.setattr("shutil.which", lambda name: None)
        assert not compiles(steps=COMPILE_AUTO_MIN_STEPS)
        with pytest.raises(ConfigError, match="needs a C.. compiler"):
            compiles(compile=True)
    config = config_from_dict(tiny_config(corpus, tmp_path / "log", train={"steps": 1, "compile": True}))
    train(config, progress=False)
    assert "torch.compile (4 Mamba-2 blocks): first step" in capsys.readouterr().out


WARM_2STAGE = {"stages": [{"target": "words", "until": 0.8}, {"target": "bpe", "weight": 0.5, "until": 0.8}]}


@pytest.mark.slow
@pytest.mark.parametrize(
    "two_stage, grad_accum, warm_start", [(False, 1, {}), (True, 2, {}), (True, 1, WARM_2STAGE)]
)
def test_resume_after_kill_reproduces_the_uninterrupted_run_exactly(
    tmp_path, corpus, two_stage, grad_accum, warm_start
):
    # with the warm start, the checkpoint (step 3) and the kill (step 5) fall inside it (it ends at step 4.8 of 6)
    def config(out: str):
        return config_from_dict(
            tiny_config(
                corpus,
                tmp_path / out,
                two_stage,
                train={"grad_accum": grad_accum},
                warm_start={**warm_start, "bpe_vocab_size": 300},
            )
        )

    reference = train(config("whole"), progress=False)

    class Killed(Exception):
        pass

    def kill_at_five(step, row):
        if step == 5:  # two steps after the checkpoint of step 3, which are lost
            raise Killed

    interrupted = config("parts")
    with pytest.raises(Killed):
        train(interrupted, progress=False, on_step=kill_at_five)
    assert load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["step"] == 3
    resumed = train(interrupted, resume=True, progress=False)
    assert [r["step"] for r in resumed.history] == [4, 5, 6]

    timing = {"bytes_per_s", "elapsed_s"}

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert strip(read_csv(tmp_path / "parts" / "train.csv")) == strip(read_csv(tmp_path / "whole" / "train.csv"))
    assert read_csv(tmp_path / "parts" / "eval.csv") == read_csv(tmp_path / "whole" / "eval.csv")
    assert strip(resumed.history) == strip(reference.history[3:])  # bit for bit, not approximately
    if warm_start:
        expected = [0.5 * (1 - k / 6 / 0.8) for k in (3, 4)] + [0]  # progress k / 6 at step k + 1
        assert [r["warm_start_weight_1"] for r in resumed.history] == pytest.approx(expected)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    parts = load_checkpoint(tmp_path / "parts" / "checkpoint.pt")
    assert all(torch.equal(v, parts["model"][k]) for k, v in whole["model"].items())
    assert whole["step"] == parts["step"] == 6


@pytest.mark.slow
def test_resume_refuses_missing_checkpoint_changed_recipe_and_overwriting(tmp_path, corpus):
    config = config_from_dict(tiny_config(corpus, tmp_path / "run", train={"steps": 2}))
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(config, resume=True, progress=False)
    train(config, progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train(config, progress=False)
    changed = config_from_dict(tiny_config(corpus, tmp_path / "run", train={"steps": 2}, optimizer={"lr": 1e-2}))
    with pytest.raises(ValueError, match=r"optimizer.lr: 0.003 -> 0.01"):
        train(changed, resume=True, progress=False)
    # run control may change: other eval/checkpoint intervals (a time budget is part of the schedule)
    control = config_from_dict(
        tiny_config(corpus, tmp_path / "run", train={"steps": 2}, eval={"every": 1}, checkpoint={"every": 1})
    )
    assert train(control, resume=True, progress=False).step == 2
    # a checkpoint written before a config key existed (here warm_start) resumes when the key is at its default
    path = tmp_path / "run" / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["config"]["warm_start"]
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format"})
    assert train(control, resume=True, progress=False).step == 2


@pytest.mark.slow
def test_time_budget_ends_training_and_completes_the_schedule(tmp_path, corpus, monkeypatch):
    import dynamic_chunker.training.trainer as trainer_module

    class Clock:  # every reading advances 0.25 s: a step (two readings) takes 0.5 s
        now = 0.0

        def perf_counter(self):
            self.now += 0.25
            return self.now

    monkeypatch.setattr(trainer_module, "time", Clock())
    config = config_from_dict(
        tiny_config(corpus, tmp_path / "run", train={"steps": 10_000, "max_minutes": 0.1}, eval={"every": 0})
    )
    result = train(config, progress=False)
    assert result.step == 12  # 6 s of budget at 0.5 s per step
    lrs = [row["lr"] / 3e-3 for row in result.history]
    elapsed = [row["elapsed_s"] for row in result.history]
    assert elapsed == pytest.approx([0.5 * k for k in range(1, 13)])
    # progress = time before the step / budget: warmup over the first 0.6 s, 1 - sqrt decay over the last 1.2 s
    progress = [0.5 * k / 6 for k in range(12)]
    assert lrs[0] == pytest.approx(1 / 10_000 / 0.1)  # at time 0 only the step count has progressed
    assert lrs[1] == pytest.approx(progress[1] / 0.1)
    assert lrs[2:10] == [1.0] * 8
    assert lrs[10:] == pytest.approx([1 - math.sqrt((p - 0.8) / 0.2) for p in progress[10:]])
    assert lrs[-1] < 0.4


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.arange(5.0)})

    def crash(obj, f, *args, **kwargs):  # a kill in the middle of writing
        f.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(5)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(5.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is unreadable"):
        load_checkpoint(path)


@pytest.mark.parametrize("target", [4.0, 8.0])
def test_ratio_loss_drives_compression_toward_target(tmp_path, corpus, target):
    """Train only the routing projections with a strong ratio loss: the realised bytes per chunk approach N."""
    config = config_from_dict(
        tiny_config(
            corpus,
            tmp_path / "run",
            ratio={"targets": [target], "alpha": 20.0},
            optimizer={"lr": 2e-2, "lr_multipliers": [1.0, 1.0], "weight_decay": 0.0},
            train={"steps": 40, "grad_clip": None},
            schedule={"warmup": 0.0, "decay": 0.0},
            eval={"every": 0},
            checkpoint={"every": 0},
        )
    )
    trainer = Trainer(config, Runtime())
    for name, param in trainer.model.named_parameters():
        param.requires_grad_("routing_module" in name)
    before = trainer.evaluate()["val_compression_0"]
    after = trainer.run(progress=False).evals[-1]["val_compression_0"]
    assert abs(before - target) > 1.5 and abs(after - target) < 0.1 * target, (before, after)


def test_cli_overrides_may_follow_options(monkeypatch):
    import dynamic_chunker.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["train", "c.yaml", "a.b=1", "--max-minutes", "5", "optimizer.lr=1e-3", "--no-progress"]) == 0
    assert seen["overrides"] == ["a.b=1", "optimizer.lr=1e-3"] and seen["max_minutes"] == 5
    with pytest.raises(SystemExit):
        cli.main(["train", "c.yaml", "--bogus"])
    with pytest.raises(SystemExit):
        cli.main(["generate", "--model", "m", "--prompt", "p", "a=b"])


def test_yaml_paths_resolve_from_the_yaml_folder_and_official_names(tmp_path, corpus, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    data = tiny_config(corpus, tmp_path / "run")
    (folder / "model.json").write_text(json.dumps(data["model"]))
    data["model"] = "model.json"
    data["data"]["corpus"] = os.path.relpath(corpus, folder)
    path = write_yaml(folder / "c.yaml", data)
    monkeypatch.chdir(tmp_path.parent)  # the current folder plays no part
    config = load_config(path)
    assert Path(config.model) == folder / "model.json" and Path(config.data.corpus) == Path(corpus)
    assert config.model_config() == HNetConfig.from_dict(json.loads((folder / "model.json").read_text()))
    overridden = load_config(path, [f"data.corpus={os.path.relpath(corpus)}"])  # overrides: from the current folder
    assert Path(overridden.data.corpus) == Path(os.path.relpath(corpus))
    official = load_config(CONFIGS / "hnet_2stage_XL.yaml")
    assert official.model == "official:hnet_2stage_XL"
    assert official.model_config() == HNetConfig.official("hnet_2stage_XL")
    with pytest.raises(FileNotFoundError, match="released models are"):
        load_config(path, ["model=official:nope"]).model_config()


# ------------------------------------------------------------------------------------------ warm start


def test_warm_start_loss_matches_float64_binary_cross_entropy():
    from dynamic_chunker.training.objective import WARM_START_EPS, warm_start_loss

    prob = torch.tensor([[1.0, 0.9, 0.2, 0.0, 0.5], [1.0, 0.3, 0.7, 1.0, 0.05]], requires_grad=True)
    targets = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    counted = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)  # row starts forced, one padded
    loss = warm_start_loss(prob, targets, counted)
    expected, terms = 0.0, 0
    flat = [x.detach().double().flatten().tolist() for x in (prob, targets, counted)]
    for p, t, c in zip(*flat):
        if c:
            q = WARM_START_EPS + (1 - 2 * WARM_START_EPS) * p
            expected -= math.log(q) if t else math.log(1 - q)
            terms += 1
    assert loss.item() == pytest.approx(expected / terms, rel=1e-6)
    loss.backward()
    assert prob.grad[0, 3] < 0 and prob.grad[1, 3] > 0  # p = 0 and p = 1 still get a gradient toward the target
    assert prob.grad[0, 0] == 0 and prob.grad[1, 4] == 0  # forced and padded positions get none


def test_warm_start_config_is_validated(tmp_path, corpus):
    def make(**warm):
        return config_from_dict(tiny_config(corpus, tmp_path / "run", warm_start=warm))

    assert make().warm_start_targets() == ["none"]  # off by default
    assert make(stages=[{"target": "words"}]).warm_start.stages[0].until == 0.3
    for stages, message in [
        ([{"target": "letters"}], "target must be one of after_whitespace, words, bpe, none"),
        ([{"target": "words", "weight": -1}], "weight must be >= 0"),
        ([{"target": "words", "until": 0}], r"until is a fraction of training in \(0, 1\]"),
        ([{"target": "words", "until": 1.5}], r"until is a fraction"),
        ([{"target": "words"}, {"target": "none"}], "one entry per chunking stage"),
        ([{"target": "words", "colour": 1}], "unknown key"),
    ]:
        with pytest.raises(ValueError, match=message):
            make(stages=stages)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        make(stages=[{"target": "bpe"}], bpe_vocab_size=0)


def test_warm_start_weight_reaches_zero_then_the_objective_is_the_papers(tmp_path, corpus):
    warm = {"stages": [{"target": "words", "weight": 2.0, "until": 0.5}], "bpe_vocab_size": 0}
    result = train(config_from_dict(tiny_config(corpus, tmp_path / "warm", warm_start=warm)), progress=False)
    weights = [r["warm_start_weight_0"] for r in result.history]
    assert weights == pytest.approx([2.0, 2.0 * 2 / 3, 2.0 / 3, 0.0, 0.0, 0.0])  # progress k/6 at step k + 1
    for row in result.history:
        plain = row["ce"] + 0.03 * row["ratio_loss_0"]
        warm_term = row["warm_start_weight_0"] * row["warm_start_loss_0"]
        assert row["loss"] == pytest.approx(plain + warm_term, rel=1e-12)
        assert (row["loss"] == plain) == (row["warm_start_weight_0"] == 0)
    assert (tmp_path / "warm" / "curves.png").exists()

    # the same state and batch: identical gradients to a run without warm start once the weight is 0, not before
    def gradients(config: dict, step: int) -> list[torch.Tensor]:
        trainer = Trainer(config_from_dict(config), Runtime())
        trainer.step = step
        trainer.accumulate_gradients(next(trainer.batches()))
        return [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]

    plain_config = tiny_config(corpus, tmp_path / "plain", warm_start={"bpe_vocab_size": 0})
    warm_config = tiny_config(corpus, tmp_path / "warm2", warm_start=warm)
    # (equal up to float rounding: a loaded machine can give a multithreaded reduction another order)
    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.allclose(x, y, rtol=1e-5, atol=1e-8) for x, y in zip(a, b, strict=True))

    assert same(gradients(warm_config, 3), gradients(plain_config, 3))
    assert not same(gradients(warm_config, 0), gradients(plain_config, 0))


def test_word_warm_start_pulls_boundaries_to_word_starts(tmp_path, corpus):
    warm = {"stages": [{"target": "words", "weight": 1.0, "until": 1.0}], "bpe_vocab_size": 0}
    sections = {"train": {"steps": 30}, "eval": {"every": 0, "windows": 8, "batch_size": 4}, "optimizer": {"lr": 1e-2}}
    runs = {
        name: train(config_from_dict(tiny_config(corpus, tmp_path / name, warm_start=w, **sections)), progress=False)
        for name, w in (("warm", warm), ("plain", {"bpe_vocab_size": 0}))
    }
    warm_row, plain_row = runs["warm"].evals[-1], runs["plain"].evals[-1]
    assert warm_row["val_precision_words_0"] > 0.8 > plain_row["val_precision_words_0"]
    assert runs["warm"].history[-1]["warm_start_loss_0"] < runs["warm"].history[0]["warm_start_loss_0"] / 2
