"""Data-parallel training on CPU (gloo): two processes reproduce one process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from dynamic_chunker.training import distributed
from dynamic_chunker.training.config import config_from_dict
from dynamic_chunker.training.logs import read_csv
from dynamic_chunker.training.trainer import Trainer

from .test_training import corpus, tiny_config  # noqa: F401  (corpus is a fixture)

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built"),
    pytest.mark.slow,
    pytest.mark.distributed,
]
# Loopback only: no host-name lookups (torchrun's rendezvous and gloo otherwise resolve the machine's name, which
# takes seconds where DNS does not answer and can outlast their timeouts on a loaded machine).
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_step_gradients(config: dict, rank: int = 0, world_size: int = 1) -> tuple[dict, dict]:
    """Gradients (after DDP's averaging) and metrics of the first optimizer step of a fresh run; the row also
    holds the largest rank, as the time-budget clock's all-reduce (max) sees it."""
    runtime = distributed.start("cpu")
    assert runtime.world_size == world_size and runtime.rank == rank
    try:
        trainer = Trainer(config_from_dict(config), runtime)
        row = trainer.accumulate_gradients(next(trainer.batches()))
        grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters()}
        row["max_rank"] = float(distributed.all_reduce(torch.tensor(float(rank)), runtime, op="max"))
    finally:
        distributed.stop(runtime)
    return grads, row


def _worker(rank: int, world_size: int, port: int, config: dict, result_file: str) -> None:
    os.environ.update(LOOPBACK, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_PORT=str(port))
    torch.set_num_threads(1)
    grads, row = first_step_gradients(config, rank, world_size)
    torch.save({"grads": grads, "row": row}, f"{result_file}.{rank}")


def test_ddp_gradients_equal_single_process_gradients(tmp_path, corpus):  # noqa: F811
    """2 processes x 1 micro-batch of 2 windows vs 1 process x 2 accumulated micro-batches of the same windows."""
    two_stage = tiny_config(corpus, tmp_path / "ddp", two_stage=True, train={"batch_size": 4, "grad_accum": 1})
    result = tmp_path / "grads"
    mp.spawn(_worker, args=(2, free_port(), two_stage, str(result)), nprocs=2, join=True)
    ranks = [torch.load(f"{result}.{r}", weights_only=True) for r in range(2)]

    single = tiny_config(corpus, tmp_path / "single", two_stage=True, train={"batch_size": 4, "grad_accum": 2})
    grads, row = first_step_gradients(single)

    assert ranks[0]["grads"].keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name  # DDP: identical on every rank
    assert ranks[0]["row"] == ranks[1]["row"]  # metrics are all-reduced
    assert ranks[0]["row"].pop("max_rank") == 1.0 and row.pop("max_rank") == 0.0
    assert ranks[0]["row"] == pytest.approx(row, rel=1e-6)


def test_torchrun_training_matches_single_process(tmp_path, corpus, one_thread):  # noqa: F811
    """`torchrun --nproc_per_node 2 ... hnet train`: same losses as one process accumulating the same windows.

    Both sides run one thread per process, so that the first step's forwards are the same computation bit for bit:
    with other thread counts (a full run can leave the process at any), float differences can flip a boundary
    probability near 0.5 and change the compression and the ratio loss by far more than the tolerance.
    """
    config = tiny_config(corpus, tmp_path / "ddp", train={"steps": 3, "batch_size": 4, "grad_accum": 2})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **LOOPBACK, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["--local-addr", "127.0.0.1", "-m", "dynamic_chunker.cli", "train", str(path), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "step 3: validation BPB" in done.stdout

    single = config_from_dict(tiny_config(corpus, tmp_path / "single", train={"steps": 3, "grad_accum": 4}))
    from dynamic_chunker.training import train

    reference = train(single, progress=False)
    rows = read_csv(Path(tmp_path / "ddp" / "train.csv"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for got, want in zip(rows, reference.history):
        for key in ("loss", "ce", "ratio_loss_0", "compression_0", "grad_norm", "lr"):
            assert got[key] == pytest.approx(want[key], rel=1e-4), key
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file() and (tmp_path / "ddp" / "model.safetensors").is_file()


def test_torchrun_sigterm_stops_every_rank_after_the_same_step_with_a_checkpoint(tmp_path, corpus):  # noqa: F811
    """A job scheduler's SIGTERM to torchrun reaches every worker; they agree on the step, rank 0 saves it."""
    import signal
    import time

    from dynamic_chunker.training.checkpoint import load_checkpoint

    out = tmp_path / "ddp"
    config = tiny_config(corpus, out, train={"steps": 100_000, "batch_size": 4}, eval={"every": 0})
    config["checkpoint"] = {"every": 100_000}  # only the interruption writes a checkpoint
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "dynamic_chunker.cli", "train", str(path), "--no-progress"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 240
        while not (out / "train.csv").exists() or (out / "train.csv").read_text().count("\n") <= 2:
            assert process.poll() is None and time.monotonic() < end, process.communicate()[0][-4000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode != 0
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert f"interrupted by SIGTERM after step {step}: checkpoint written to {out}" in output, output[-4000:]
    assert [r["step"] for r in read_csv(out / "train.csv")] == list(range(1, step + 1))


def test_torchrun_refusal_by_rank_0_stops_every_rank(tmp_path, corpus):  # noqa: F811
    """Rank 0 refuses a folder of someone else's files: every rank stops at once with exit status 2 (none waits
    for a barrier that rank 0 never reaches), and the files are untouched."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(corpus, out, train={"steps": 2, "batch_size": 4})))
    env = {**os.environ, **LOOPBACK, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["--local-addr", "127.0.0.1", "-m", "dynamic_chunker.cli", "train", str(path), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("hnet train: error:") == 2, done.stderr[-4000:]
    assert "rank 0 refused the output folder" in done.stderr  # (torchrun then prints its own failure summary)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
