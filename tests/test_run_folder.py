"""A run folder is never overwritten by surprise, used by two trainers at once, or left without a checkpoint by Ctrl-C.

Signal and lock tests run ``hnet train`` as a real subprocess; the others call ``train`` in this process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dynamic_chunker.cli import main
from dynamic_chunker.data import Document, Source, prepare_corpus
from dynamic_chunker.errors import ConfigError, OutputFolderError
from dynamic_chunker.training import train
from dynamic_chunker.training.checkpoint import load_checkpoint
from dynamic_chunker.training.config import config_from_dict
from dynamic_chunker.training.distributed import Runtime
from dynamic_chunker.training.logs import read_csv
from dynamic_chunker.training.trainer import Trainer

TINY = {
    "arch_layout": ["m1", ["T1"], "m1"],
    "d_model": [16, 32],
    "d_intermediate": [0, 32],
    "ssm_cfg": {"d_state": 8, "chunk_size": 16, "d_conv": 4, "expand": 2, "headdim": 16},
    "attn_cfg": {"num_heads": [2, 2], "rotary_emb_dim": [8, 8], "window_size": [-1, -1]},
}


def make_corpus(folder: Path, seed: int = 0) -> Path:
    documents = [Document(f"d{i}", f"document {i} of seed {seed}: some words here. ".encode() * 20) for i in range(30)]
    prepare_corpus("toy", folder, [Source("toy", {"kind": "test"}, documents)], val_fraction=0.2, progress=False)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("data") / "toy")


def recipe(corpus: Path, out: Path, steps: int = 4, eval_every: int = 2, **train_keys) -> dict:
    return {
        "model": TINY,
        "data": {"corpus": str(corpus), "seq_len": 64},
        "ratio": {"targets": [4]},
        "optimizer": {"lr": 3e-3},
        "train": {"steps": steps, "batch_size": 2, **train_keys},
        "eval": {"every": eval_every, "windows": 2, "batch_size": 2},
        "checkpoint": {"every": 2},
        "out": str(out),
    }


def config(corpus: Path, out: Path, **kwargs):
    return config_from_dict(recipe(corpus, out, **kwargs))


def user_files(folder: Path) -> dict[str, bytes]:
    """A folder of the user's own files (what must never be lost); returns their contents."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"notes.txt": b"my notes\n", "thesis.md": b"# chapter 1\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


# ------------------------------------------------------------------------------------------ what may be replaced
def test_a_folder_of_user_files_is_refused_and_kept(tmp_path, corpus):
    out = tmp_path / "mine"
    files = user_files(out)
    with pytest.raises(OutputFolderError, match="is not empty .*notes.txt.* --overwrite"):
        train(config(corpus, out), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # not even a lock file is left
    train(config(corpus, out, steps=1), progress=False, overwrite=True)  # asked for: trains, keeps other files
    assert all((out / name).read_bytes() == data for name, data in files.items())
    assert (out / "checkpoint.pt").is_file()


def test_a_finished_run_without_checkpoint_needs_overwrite(tmp_path, corpus):
    out = tmp_path / "run"
    train(config(corpus, out, steps=1), progress=False)
    (out / "checkpoint.pt").unlink()  # e.g. removed to save space: the model files remain
    model = (out / "model.safetensors").read_bytes()
    with pytest.raises(OutputFolderError, match="holds no run to resume"):
        train(config(corpus, out, steps=1), progress=False)
    assert (out / "model.safetensors").read_bytes() == model


def test_an_existing_run_needs_resume_or_overwrite(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    train(config(corpus, out, steps=2), progress=False)
    with pytest.raises(OutputFolderError, match="already holds a run .*--resume.*--overwrite"):
        train(config(corpus, out, steps=2), progress=False)
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    again = train(config(corpus, out, steps=1), progress=False, overwrite=True)  # a new recipe, from scratch
    assert [r["step"] for r in read_csv(out / "train.csv")] == [1] and again.step == 1
    assert load_checkpoint(out / "checkpoint.pt")["config"]["train"]["steps"] == 1


def test_stale_temporary_files_are_removed_at_start(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    train(config(corpus, out, steps=2), progress=False)
    for name in (".checkpoint.pt.4242.tmp", "model.safetensors.tmp", "config.json.tmp", "train.tmp"):
        (out / name).write_bytes(b"\0" * 500_000)
    (out / "draft.tmp").write_bytes(b"the user's own")  # not a name of ours: kept
    capsys.readouterr()
    train(config(corpus, out, steps=2), resume=True, progress=False)
    assert "removed 2.0 MB of temporary files left by an interrupted write" in capsys.readouterr().out
    assert [p.name for p in out.glob("*.tmp")] == ["draft.tmp"]


# ------------------------------------------------------------------------------------------------------ resuming
class Clock:
    """Replaces the trainer's ``time``: every reading advances 0.25 s, so a step (two readings) takes 0.5 s."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 0.25
        return self.now


def test_resume_continues_a_timed_schedule_and_never_duplicates_rows(tmp_path, corpus, monkeypatch, capsys):
    import dynamic_chunker.training.trainer as trainer_module

    def timed(out):  # 0.1 minutes = 12 steps of 0.5 s; the step count is far away
        return config(corpus, tmp_path / out, steps=10_000, max_minutes=0.1)

    monkeypatch.setattr(trainer_module, "time", Clock())
    whole = train(timed("whole"), progress=False)
    assert whole.step == 12

    class Killed(Exception):
        pass

    def kill_at_five(step, row):
        if step == 5:
            raise Killed

    monkeypatch.setattr(trainer_module, "time", Clock())
    with pytest.raises(Killed):
        train(timed("parts"), progress=False, on_step=kill_at_five)
    untimed = config(corpus, tmp_path / "parts", steps=10_000)  # --resume without --max-minutes
    capsys.readouterr()
    resumed = train(untimed, resume=True, progress=False)
    assert "resuming from step 4 (0.0 of 0.1 minutes used)" in capsys.readouterr().out
    assert [r["step"] for r in resumed.history] == list(range(5, 13))  # the same time budget, not 10,000 steps
    assert [r["lr"] for r in resumed.history] == pytest.approx([r["lr"] for r in whole.history[4:]])
    evals = read_csv(tmp_path / "parts" / "eval.csv")
    assert [r["step"] for r in evals] == [r["step"] for r in read_csv(tmp_path / "whole" / "eval.csv")]

    rows = (tmp_path / "parts" / "train.csv").read_text(), (tmp_path / "parts" / "eval.csv").read_text()
    again = train(untimed, resume=True, progress=False)  # the run is complete: nothing to do, no new rows
    assert again.history == [] and again.evals == [] and again.step == 12
    assert "already complete at step 12" in capsys.readouterr().out
    assert ((tmp_path / "parts" / "train.csv").read_text(), (tmp_path / "parts" / "eval.csv").read_text()) == rows
    with pytest.raises(ConfigError, match=r"train.max_minutes: 0.1 -> 0.5"):  # another budget is another schedule
        train(config(corpus, tmp_path / "parts", steps=10_000, max_minutes=0.5), resume=True, progress=False)


def test_resume_on_different_data_is_refused_unless_allowed(tmp_path, corpus):
    out = tmp_path / "run"
    train(config(corpus, out, steps=2), progress=False)
    other = make_corpus(tmp_path / "other", seed=1)
    moved = config(other, out, steps=2)
    with pytest.raises(ConfigError, match="not the one this run was trained on.*--allow-data-change"):
        train(moved, resume=True, progress=False)
    assert train(moved, resume=True, progress=False, allow_data_change=True).step == 2
    copy = tmp_path / "copy"  # the same corpus elsewhere, prepared again at another time: the same data
    copy.mkdir()
    for path in corpus.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["created_at"] = "2030-01-01T00:00:00+00:00"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert train(config(copy, out, steps=2), resume=True, progress=False).step == 2


# ------------------------------------------------------------------------------------------------------- output
def test_plain_log_lines_and_resolved_config_without_progress_bar(tmp_path, corpus, capsys):
    train(config(corpus, tmp_path / "run", steps=4), progress=False, log_every=2)
    out = capsys.readouterr().out
    assert "config (saved as" in out and "  batch_size: 2" in out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert lines[0].startswith("step 0: val BPB")
    assert any(line.startswith("step 2/4 (") and "loss" in line and "val BPB" in line for line in lines)
    assert any(line.startswith("step 4/4 (") for line in lines)


def test_timed_run_bar_has_a_total_and_the_first_validation_spares_the_warmup(tmp_path, corpus, monkeypatch, capsys):
    import dynamic_chunker.training.trainer as trainer_module

    clock = Clock()
    monkeypatch.setattr(trainer_module, "time", clock)
    evaluate = Trainer.evaluate

    def slow_evaluate(self):  # a validation that takes 3 s, half of the budget
        clock.now += 3.0
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    timed = config(corpus, tmp_path / "run", steps=10_000, eval_every=100, max_minutes=0.1)  # validations at 0 and end
    result = train(timed, progress=True)
    assert result.history[0]["elapsed_s"] == pytest.approx(0.5)  # the clock started after the first validation
    assert result.history[0]["lr"] == pytest.approx(3e-3 * max(1 / 10_000, 0) / 0.1)  # warmup's first step
    err = capsys.readouterr().err
    assert "/12 [" in err and "val BPB" in err  # estimated total (budget / pace) and the latest validation


# --------------------------------------------------------------------------------------- signals and the lock
def write_config(tmp_path: Path, corpus: Path, out: Path, steps: int) -> Path:
    data = recipe(corpus, out, steps=steps)
    data["checkpoint"]["every"] = 10_000  # only the interruption writes a checkpoint
    data["eval"]["every"] = 0
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_trainer(config_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dynamic_chunker.cli", "train", str(config_path), "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_steps(process: subprocess.Popen, out: Path, steps: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not (out / "train.csv").exists() or (out / "train.csv").read_text().count("\n") <= steps:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < end, "the trainer did not start in time"
        time.sleep(0.1)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_the_step_writes_a_checkpoint_and_exits(tmp_path, corpus, signum, code):
    out = tmp_path / "run"
    config_path = write_config(tmp_path, corpus, out, steps=100_000)
    process = start_trainer(config_path)
    wait_for_steps(process, out, 2)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert stderr.splitlines()[-1].startswith(f"interrupted by {name} after step {step}: checkpoint written to {out}")
    assert step >= 2
    assert [r["step"] for r in read_csv(out / "train.csv")] == list(range(1, step + 1))  # nothing lost
    resumed = Trainer(config_from_dict(yaml.safe_load(config_path.read_text())), Runtime(), resume=True)
    assert resumed.step == step


def test_two_trainers_cannot_share_a_run_folder(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    config_path = write_config(tmp_path, corpus, out, steps=100_000)
    first = start_trainer(config_path)
    try:
        wait_for_steps(first, out, 1)
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert main(["train", str(config_path), "--no-progress", *extra]) == 2
            err = capsys.readouterr().err
            assert f"is in use by another trainer (pid {first.pid})" in err, err
        assert first.poll() is None  # the first trainer is untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143
    rows = read_csv(out / "train.csv")
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))  # one writer: no interleaved rows
    assert load_checkpoint(out / "checkpoint.pt")["step"] == len(rows)


def test_the_lock_is_released_when_a_trainer_dies(tmp_path, corpus):
    out = tmp_path / "run"
    config_path = write_config(tmp_path, corpus, out, steps=100_000)
    process = start_trainer(config_path)
    wait_for_steps(process, out, 1)
    os.kill(process.pid, signal.SIGKILL)  # no handler runs: the kernel drops the lock with the process
    process.communicate(timeout=60)
    short = config(corpus, out, steps=1)
    assert train(short, progress=False, overwrite=True).step == 1
    assert math.isfinite(read_csv(out / "train.csv")[0]["loss"])
