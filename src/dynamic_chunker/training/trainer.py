"""The training loop: one process, or one of several under torchrun (DistributedDataParallel).

Per optimizer step every process takes ``grad_accum`` micro-batches of its own shard of the data. The loss whose
gradient is applied is, exactly, the cross-entropy summed over all counted targets of the step (every micro-batch
on every process) divided by their number, plus alpha times the ratio losses computed per micro-batch and per
process and then averaged (as the paper does, per device). That makes the update independent of how a global
batch is split over processes and micro-batches, up to the ratio loss's per-device definition.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel

from ..data import ByteWindows, PreparedCorpus
from ..data.corpus import MANIFEST
from ..errors import ConfigError, OutputFolderError, UserError
from ..evaluation.boundaries import free_positions, reference_sets, routing_summary, routing_sums
from ..evaluation.bpb import bits, scored_bytes, target_nll
from ..evaluation.lm import token_byte_table
from ..evaluation.targets import BPE_FILE, bpe_for_corpus, stage_targets, target_bytes
from ..files import atomic_write
from ..layers import kernels
from ..model import HNetForCausalLM
from . import distributed
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, TrainSection, config_from_dict
from .interrupt import StopRequest
from .logs import RunLog, plot_curves
from .objective import IGNORE, compute_losses, split_batch, warm_start_loss, warm_start_weight
from .optim import build_optimizer
from .run_folder import CHECKPOINT, RunLock, check_run_folder, remove_stale_temporaries
from .schedule import WarmupStableDecay

# keys that may differ between a run and its resumption (run control, not the recipe; a time budget is part of
# the schedule, so a resumed run keeps the checkpoint's unless it is given again)
RESUMABLE_CHANGES = (
    "out",
    "data.corpus",
    "data.verify",
    "train.device",
    "train.dtype",
    "train.compile",
    "eval.",
    "checkpoint.",
)


@dataclass
class TrainResult:
    out_dir: Path
    step: int  # optimizer steps done in total
    rank: int = 0  # this process's rank (logs and files are written by rank 0)
    history: list[dict] = field(default_factory=list)  # train rows of this session
    evals: list[dict] = field(default_factory=list)  # validation rows of this session
    interrupted: int | None = None  # the signal (SIGINT, SIGTERM) that stopped the run early, after a checkpoint


def train(
    config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
    overwrite: bool = False,
    allow_data_change: bool = False,
    log_every: int = 50,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run described by ``config``; returns what was logged.

    Under torchrun this joins the process group from the environment. ``on_step(step, row)`` is called after
    every optimizer step, once its logs and any checkpoint are written. A non-empty output folder is only used
    with ``resume`` (the same recipe, on the same corpus unless ``allow_data_change``) or ``overwrite``; the folder
    is locked for the run. SIGINT/SIGTERM stop the run after the current step with a checkpoint
    (``result.interrupted``). Without a progress bar a plain line is printed every ``log_every`` steps.
    """
    runtime = distributed.start(config.train.device)
    lock = RunLock(run_dir(config)) if runtime.is_main else None  # rank 0 writes the folder, so it holds the lock
    try:
        refusal = None
        if lock is not None:
            try:
                lock.acquire()
                freed = remove_stale_temporaries(lock.folder)
                if freed:
                    print(f"removed {freed / 1e6:.1f} MB of temporary files left by an interrupted write")
                check_run_folder(lock.folder, resume, overwrite)
            except (UserError, OSError) as err:
                refusal = err
        # the other ranks start once rank 0 has checked the folder, and stop with it if it refused
        refused = distributed.all_reduce(torch.tensor(float(refusal is not None), device=runtime.device), runtime)
        if refusal is not None:
            raise refusal
        if refused:
            raise OutputFolderError(f"rank 0 refused the output folder {run_dir(config)} (its message says why)")
        trainer = Trainer(config, runtime, resume=resume, allow_data_change=allow_data_change)
        return trainer.run(progress=progress, on_step=on_step, log_every=log_every)
    finally:
        if lock is not None:
            lock.release()
        distributed.stop(runtime)


def run_dir(config: TrainConfig) -> Path:
    return Path(config.out or "runs/train")


def open_data(config: TrainConfig, out_dir: Path | None = None) -> tuple[ByteWindows, ByteWindows]:
    """Training and validation windows of the prepared corpus named by ``config.data`` (token windows when
    ``data.tokenizer`` is set; the tokenizer and the encoded splits are kept in ``out_dir``)."""
    corpus_dir = Path(config.data.corpus)
    if not corpus_dir.is_dir():
        raise FileNotFoundError(
            f"data.corpus {corpus_dir} is not a directory (relative paths are resolved from {Path.cwd()}); "
            "prepare one with `hnet data prepare`"
        )
    corpus = PreparedCorpus(corpus_dir, verify=config.data.verify)
    seq_len = config.data.seq_len
    train_split, val_split = corpus.split("train"), corpus.split("val")
    if config.data.tokenizer is not None:
        from ..data.tokens import encode_split

        folder = out_dir or run_dir(config)
        tokenizer = load_tokenizer(config, folder)
        train_split = encode_split(train_split, tokenizer, folder / "tokens_train.npy")
        val_split = encode_split(val_split, tokenizer, folder / "tokens_val.npy")
    return ByteWindows(train_split, seq_len=seq_len, seed=config.data.seed), ByteWindows(val_split, seq_len, seed=0)


# train.compile auto compiles CPU runs of at least this many steps and minutes: compiled Mamba-2 blocks saved about a
# quarter of a step (benchmarks/results/train_speed_cpu.md), which repays the cold compile after a few hundred steps
COMPILE_AUTO_MIN_STEPS = 500
COMPILE_AUTO_MIN_MINUTES = 10
TOKENIZER_TRAINING_BYTES = 100_000_000  # a BPE is trained on at most this much of the training split


def load_tokenizer(config: TrainConfig, out_dir: Path):
    """The run's tokenizer: ``out_dir/tokenizer.json`` if it exists (a resumed run), else trained (bpe:V) or read."""
    from tokenizers import Tokenizer

    from ..data.tokens import documents, train_bpe

    saved = out_dir / "tokenizer.json"
    if saved.is_file():
        return Tokenizer.from_file(str(saved))
    spec = config.data.tokenizer
    if spec.startswith("bpe:"):
        corpus = PreparedCorpus(config.data.corpus, verify=False)
        tokenizer = train_bpe(documents(corpus.split("train"), TOKENIZER_TRAINING_BYTES), int(spec[4:]))
    else:
        if not Path(spec).is_file():
            raise FileNotFoundError(f"data.tokenizer {spec} not found: give bpe:V or a tokenizer.json path")
        tokenizer = Tokenizer.from_file(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(saved))
    return tokenizer


def corpus_digest(corpus_dir: Path) -> str:
    """sha256 of a corpus's manifest without its creation time: the same data prepared again has the same digest
    (the manifest holds the sha256 of every file), different data a different one."""
    manifest = json.loads((corpus_dir / MANIFEST).read_text(encoding="utf-8"))
    manifest.pop("created_at", None)
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


class Trainer:
    def __init__(
        self, config: TrainConfig, runtime: distributed.Runtime, resume: bool = False, allow_data_change: bool = False
    ):
        self.config = config
        self.runtime = runtime
        self.out_dir = run_dir(config)
        cfg, rt = config, runtime
        self.model_config = config.model_config()
        self.stages = self.model_config.num_stages - 1
        per_process = cfg.train.grad_accum * rt.world_size
        if cfg.train.batch_size % per_process:
            raise ConfigError(
                f"train.batch_size {cfg.train.batch_size} must be divisible by train.grad_accum "
                f"({cfg.train.grad_accum}) x processes ({rt.world_size})"
            )
        self.micro_batch = cfg.train.batch_size // per_process
        self.compute_dtype = _compute_dtype(cfg.train.dtype, rt.device)
        self.autocast = torch.autocast(
            rt.device.type, dtype=torch.bfloat16, enabled=self.compute_dtype == torch.bfloat16
        )
        self.train_windows, self.val_windows = open_data(config, self.out_dir)
        self.corpus_hash = corpus_digest(Path(cfg.data.corpus))
        # UTF-8 bytes per target id: the BPB of a token model divides its NLL by the bytes of the same text
        tokenizer = None
        if config.data.tokenizer is not None:
            tokenizer = load_tokenizer(config, self.out_dir)
            if tokenizer.get_vocab_size() != self.model_config.vocab_size:
                raise ConfigError(
                    f"the tokenizer has {tokenizer.get_vocab_size()} ids but the model's vocab_size is "
                    f"{self.model_config.vocab_size}"
                )
        self.token_bytes = token_byte_table(self.model_config.vocab_size, tokenizer).to(rt.device)
        self.train_windows.steps_per_epoch(self.micro_batch, rt.world_size)  # enough data for one batch?
        # a fixed validation set: windows spread evenly over the split, so that it spans many documents
        count = min(cfg.eval.windows, len(self.val_windows))
        self.eval_indices = [i * len(self.val_windows) // count for i in range(count)]

        checkpoint = self._checkpoint_to_resume(resume, allow_data_change)
        torch.manual_seed(cfg.train.seed)
        self.model = HNetForCausalLM(self.model_config, device=rt.device)
        self.model.check_inputs = False  # the windows are checked bytes: no device reads of their values per forward
        if cfg.train.gradient_checkpointing not in (False, []):
            stages = None if cfg.train.gradient_checkpointing is True else cfg.train.gradient_checkpointing
            self.model.set_gradient_checkpointing(True, stages)
        use_compile = _use_compile(cfg.train, rt.device, self.compute_dtype)
        self.compiled_blocks = self.model.compile_blocks() if use_compile else 0
        opt = cfg.optimizer
        self.optimizer = build_optimizer(
            self.model, opt.lr, config.lr_multipliers(), opt.weight_decay, opt.betas, opt.eps
        )
        self.schedule = WarmupStableDecay(self.optimizer, cfg.schedule.warmup, cfg.schedule.decay)
        self.step, self.elapsed = 0, 0.0
        self.last_eval: int | None = None  # step of the latest validation row in eval.csv
        if checkpoint is not None:
            self._restore(checkpoint)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
            if rt.distributed
            else None
        )
        self.resumed_from = checkpoint["step"] if checkpoint is not None else None
        self.warm_targets = config.warm_start_targets()
        self.tokenizer = self._tokenizer()

    def _tokenizer(self):
        """The run's BPE tokenizer (bpe target, routing statistics): read from the run folder, or trained once on
        the training split by the main process and saved there (a resumed run reads the same one)."""
        ws = self.config.warm_start
        if not ws.bpe_vocab_size or self.config.data.tokenizer is not None:  # a token model has no byte statistics
            return None
        path, split = self.out_dir / BPE_FILE, self.train_windows.split
        if self.runtime.is_main:
            bpe_for_corpus(path, split.data, ws.bpe_vocab_size, ws.bpe_train_bytes)
        distributed.barrier(self.runtime)
        return bpe_for_corpus(path, split.data, ws.bpe_vocab_size, ws.bpe_train_bytes)

    # ------------------------------------------------------------------ state
    def _checkpoint_to_resume(self, resume: bool, allow_data_change: bool) -> dict | None:
        """The checkpoint to continue (None for a new run; the folder itself is checked by check_run_folder)."""
        path = self.out_dir / CHECKPOINT
        if not resume:
            return None
        if not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint to resume in {self.out_dir} (expected {path})")
        checkpoint = load_checkpoint(path)
        train = self.config.train
        if train.max_minutes is None:  # a time-limited run continues on its own time budget
            train.max_minutes = checkpoint["config"]["train"].get("max_minutes")
        _check_resumable(self.config, self.model_config.to_dict(), checkpoint)
        stored = checkpoint.get("corpus_manifest_sha256")
        if stored is not None and stored != self.corpus_hash and not allow_data_change:
            raise ConfigError(
                f"cannot resume: the corpus {self.config.data.corpus} is not the one this run was trained on (its "
                f"{MANIFEST} describes other files); point data.corpus at the original corpus, or pass "
                "--allow-data-change"
            )
        return checkpoint

    def _restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        set_rng_state(checkpoint["rng"])
        self.step, self.elapsed = checkpoint["step"], checkpoint["elapsed"]
        self.last_eval = checkpoint.get("evaluated_step")
        if checkpoint["world_size"] != self.runtime.world_size and self.runtime.is_main:
            print(
                f"note: the checkpoint was written by {checkpoint['world_size']} process(es), this run has "
                f"{self.runtime.world_size}; the data order after resuming differs from the original run's"
            )

    def save(self) -> None:
        if self.runtime.is_main:
            save_checkpoint(
                self.out_dir / CHECKPOINT,
                {
                    "step": self.step,
                    "elapsed": self.elapsed,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict(),
                    "rng": rng_state(),
                    "config": self.config.to_dict(),
                    "model_config": self.model_config.to_dict(),
                    "world_size": self.runtime.world_size,
                    "corpus_manifest_sha256": self.corpus_hash,
                    "evaluated_step": self.last_eval,
                },
            )

    # ------------------------------------------------------------------- steps
    def batches(self) -> Iterator[list[dict]]:
        """Lists of ``grad_accum`` micro-batches of this process, from the current step on."""
        accum = self.config.train.grad_accum
        stream = self.train_windows.batches(
            batch_size=self.micro_batch,
            start_step=self.step * accum,
            rank=self.runtime.rank,
            world_size=self.runtime.world_size,
        )
        while True:
            yield [next(stream)[1] for _ in range(accum)]

    def accumulate_gradients(self, micro_batches: list[dict]) -> dict[str, float]:
        """Forward and backward over this process's micro-batches of one step; returns step-wide metrics."""
        rt, cfg = self.runtime, self.config
        parts = [
            split_batch(*(torch.as_tensor(b[k]).to(rt.device) for k in ("input_ids", "document_ids")))
            for b in micro_batches
        ]
        count = distributed.all_reduce(
            torch.tensor(sum(int((t != IGNORE).sum()) for _, _, t in parts), dtype=torch.float64, device=rt.device),
            rt,
        )
        count = max(float(count), 1.0)
        model = self.ddp or self.model
        ce_total = torch.zeros((), dtype=torch.float64, device=rt.device)
        ratio_total = torch.zeros(self.stages, dtype=torch.float64, device=rt.device)
        warm_total = torch.zeros(self.stages, dtype=torch.float64, device=rt.device)
        weights = self.warm_start_weights()
        stats = {}
        for i, (inputs, documents, targets) in enumerate(parts):
            last = i == len(parts) - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                with self.autocast:
                    losses = compute_losses(model, inputs, documents, targets, cfg.ratio.targets)
                ratio = torch.stack(losses.ratio) if losses.ratio else losses.ce_sum.new_zeros(0)  # isotropic: none
                # DDP averages gradients over processes, hence the world_size factor on the summed cross-entropy
                loss = losses.ce_sum * (rt.world_size / count) + cfg.ratio.alpha * ratio.sum() / len(parts)
                warm = self.warm_start_losses(losses.output, inputs, documents)
                for weight, value in zip(weights, warm, strict=True):
                    if weight > 0:  # once every weight is 0 the loss is exactly the paper's
                        loss = loss + weight * value / len(parts)
                loss.backward()
            ce_total += losses.ce_sum.detach()
            ratio_total += ratio.detach()
            if warm:
                warm_total += torch.stack(warm).detach().double()
            for key, value in routing_sums(losses.output, documents, self.references(inputs, train=True)).items():
                stats[key] = stats.get(key, 0) + value
        routing = torch.stack(list(stats.values())) if stats else ce_total.new_zeros(0)  # isotropic: no routing
        stacked = torch.cat([ce_total[None], ratio_total, warm_total, routing])
        totals = distributed.all_reduce(stacked, rt)
        ce = float(totals[0]) / count
        ratios = (totals[1 : 1 + self.stages] / (len(parts) * rt.world_size)).tolist()
        warms = (totals[1 + self.stages : 1 + 2 * self.stages] / (len(parts) * rt.world_size)).tolist()
        if not math.isfinite(ce):
            raise ConfigError(
                f"the loss became non-finite at step {self.step + 1}; lower optimizer.lr or set train.grad_clip"
            )
        # bits per byte: a token model's targets hold several bytes each (self.token_bytes)
        targets_bytes = sum(scored_bytes(t, t != IGNORE, self.token_bytes) for _, _, t in parts)
        byte_count = max(float(distributed.all_reduce(targets_bytes, rt)), 1.0)
        warm_term = sum(w * v for w, v in zip(weights, warms) if w > 0)
        row = {"loss": ce + cfg.ratio.alpha * sum(ratios) + warm_term, "ce": ce, "bpb": bits(totals[0], byte_count)}
        row.update({f"ratio_loss_{s}": r for s, r in enumerate(ratios)})
        for s, target in enumerate(self.warm_targets):
            if target != "none":  # the BCE is logged on after its weight reached 0: how far boundaries drift
                row.update({f"warm_start_weight_{s}": weights[s], f"warm_start_loss_{s}": warms[s]})
        row.update(routing_summary(dict(zip(stats, totals[1 + 2 * self.stages :].tolist())), self.stages))
        return row

    def warm_start_weights(self) -> list[float]:
        """Each stage's warm-start weight for the coming step (0 for stages without a target)."""
        progress = self.progress()[0]
        stages = self.config.warm_start.stages
        return [
            warm_start_weight(stages[s].weight, stages[s].until, progress) if target != "none" else 0.0
            for s, target in enumerate(self.warm_targets)
        ]

    def references(self, inputs: torch.Tensor, train: bool = False) -> dict[str, torch.Tensor]:
        """Reference boundary sets over the input bytes: only after_whitespace for the training rows (cheap),
        every set (bpe with a tokenizer) for validation."""
        if self.config.data.tokenizer is not None:  # a token model: its ids are not bytes
            return {}
        return reference_sets(inputs, self.tokenizer, ["after_whitespace"] if train else None)

    def warm_start_losses(self, output, inputs: torch.Tensor, documents: torch.Tensor) -> list[torch.Tensor]:
        """The warm-start BCE of every stage (zero for stages without a target), with gradients."""
        if all(t == "none" for t in self.warm_targets):
            return [torch.zeros((), device=inputs.device)] * self.stages
        positions, free = free_positions(output, documents)
        out = []
        for s, target in enumerate(self.warm_targets):
            if target == "none":
                out.append(torch.zeros((), device=inputs.device))
                continue
            targets = stage_targets(target_bytes(target, inputs, self.tokenizer), positions[s])
            out.append(warm_start_loss(output.routing[s].boundary_prob, targets, free[s]))
        return out

    def optimizer_step(self) -> float:
        """Clip the global gradient norm, step the optimizer, clear gradients; returns the norm before clipping."""
        clip = self.config.train.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip is not None else math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def progress(self) -> tuple[float, float]:
        """Progress through training at the start and end of the coming step (see schedule.py)."""
        steps, budget = self.config.train.steps, self.config.train.max_minutes
        by_time = self.elapsed / (60 * budget) if budget else 0.0
        return max(self.step / steps, by_time), max((self.step + 1) / steps, by_time)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation bits-per-byte and routing statistics over the fixed validation windows (split over ranks), both
        computed by :mod:`dynamic_chunker.evaluation` (``hnet eval bpb`` and ``hnet boundaries`` use the same)."""
        rt, cfg = self.runtime, self.config
        indices = self.eval_indices[rt.rank :: rt.world_size]
        sums: dict[str, torch.Tensor] = {}
        self.model.eval()
        for first in range(0, len(indices), cfg.eval.batch_size):
            rows = [self.val_windows[i] for i in indices[first : first + cfg.eval.batch_size]]
            ids, docs = (torch.stack([torch.as_tensor(r[k]) for r in rows]).to(rt.device) for k in (0, 1))
            inputs, documents, targets = split_batch(ids, docs)
            with self.autocast:
                losses = compute_losses(self.model, inputs, documents, targets, cfg.ratio.targets)
            counted = targets != IGNORE
            nll = target_nll(losses.output.logits, targets, counted)
            # surprisal of input byte t is the loss of predicting it at t - 1 (unknown for the first byte and BOS)
            surprisal = F.pad(nll.masked_fill(~counted, math.nan)[:, :-1], (1, 0), value=math.nan)
            batch = {"nats": nll.sum(), "bytes": scored_bytes(targets, counted, self.token_bytes)}
            batch.update(routing_sums(losses.output, documents, self.references(inputs), surprisal))
            for key, value in batch.items():
                sums[key] = sums.get(key, 0) + torch.as_tensor(value, dtype=torch.float64, device=rt.device)
        self.model.train()
        totals = dict(zip(sums, distributed.all_reduce(torch.stack(list(sums.values())), rt).tolist()))
        row = {"val_bpb": bits(totals["nats"], max(totals["bytes"], 1))}
        row.update(routing_summary(totals, self.stages, prefix="val_"))
        return row

    # -------------------------------------------------------------------- loop
    def run(
        self, progress: bool = True, on_step: Callable[[int, dict], None] | None = None, log_every: int = 50
    ) -> TrainResult:
        cfg, rt = self.config, self.runtime
        steps, budget = cfg.train.steps, cfg.train.max_minutes
        result = TrainResult(self.out_dir, self.step, rt.rank)
        log = None
        if rt.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            resolved = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            atomic_write(self.out_dir / "train.yaml", resolved)
            print(f"config (saved as {self.out_dir / 'train.yaml'}):\n  " + resolved.rstrip().replace("\n", "\n  "))
            if self.resumed_from is not None:
                used = f" ({self.elapsed / 60:.1f} of {budget:g} minutes used)" if budget else ""
                print(f"resuming from step {self.step}{used}")
            log = RunLog(self.out_dir, self.resumed_from)
        bar = _progress_bar(progress and rt.is_main, None if budget else steps, self.step)
        lines = rt.is_main and not progress  # batch jobs: a plain line every log_every steps and per validation
        bytes_per_step = cfg.train.batch_size * cfg.data.seq_len
        last_saved = self.resumed_from

        def evaluate_and_log() -> None:
            row = {"step": self.step, **self.evaluate()}
            self.last_eval = self.step
            result.evals.append(row)
            if log:
                log.log("eval", row)
            bar.set_postfix_str(_postfix(result.history[-1] if result.history else None, row, self.stages))
            if lines:
                print(f"step {self.step}: {_postfix(None, row, self.stages)}", flush=True)

        try:
            with StopRequest() as stop:
                if self.resumed_from is None and cfg.eval.every:
                    evaluate_and_log()
                # the clock starts after the first validation, so that it does not use up the warmup of a timed run
                session_start, elapsed_before, first_step = time.perf_counter(), self.elapsed, self.step
                batches = self.batches()
                while self.step < steps and not (budget and self.elapsed >= 60 * budget):
                    result.interrupted = self._stop_signal(stop)
                    if result.interrupted:
                        break
                    start, end = self.progress()
                    factor = self.schedule.update(start, end)
                    began = time.perf_counter()
                    row = self.accumulate_gradients(next(batches))
                    grad_norm = self.optimizer_step()
                    now = time.perf_counter()
                    self.step += 1
                    self.elapsed = elapsed_before + now - session_start
                    if budget:  # every process must agree on the time, hence on the learning rate and the stop
                        clock = torch.tensor(self.elapsed, dtype=torch.float64, device=rt.device)
                        self.elapsed = float(distributed.all_reduce(clock, rt, op="max"))
                        # expected steps at this session's pace, for the bar's total and ETA
                        pace = (self.elapsed - elapsed_before) / (self.step - first_step)
                        bar.total = min(steps, self.step + math.ceil(max(60 * budget - self.elapsed, 0) / pace))
                    row = {
                        "step": self.step,
                        **row,
                        "grad_norm": grad_norm,
                        "lr": cfg.optimizer.lr * factor,
                        "bytes_per_s": bytes_per_step / (now - began),
                        "elapsed_s": self.elapsed,
                    }
                    result.history.append(row)
                    if self.compiled_blocks and self.step == first_step + 1 and rt.is_main:
                        bar.write(f"torch.compile ({self.compiled_blocks} Mamba-2 blocks): first step "
                                  f"{now - began:.1f} s with compiling; a new length bucket compiles when first seen")
                    if log:
                        log.log("train", row)
                    bar.update(1)
                    bar.set_postfix_str(_postfix(row, result.evals[-1] if result.evals else None, self.stages))
                    if lines and self.step % log_every == 0:
                        total = f"/{bar.total}" if bar.total else ""
                        text = _postfix(row, result.evals[-1] if result.evals else None, self.stages)
                        print(f"step {self.step}{total} ({self.elapsed / 60:.1f} min): {text}", flush=True)
                    if cfg.eval.every and self.step % cfg.eval.every == 0:
                        evaluate_and_log()
                    if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                        self.save()
                        last_saved = self.step
                    if on_step is not None:
                        on_step(self.step, row)
                if not result.interrupted and self.last_eval != self.step:
                    evaluate_and_log()
                if last_saved != self.step:
                    self.save()
                if rt.is_main and not result.interrupted:
                    if self.resumed_from is not None and not result.history:
                        print(f"the run was already complete at step {self.step}: nothing to train")
                    self._export_model()
                    plot_curves(self.out_dir)
                distributed.barrier(rt)  # no process tears the group down while another still uses it
        finally:
            bar.close()
            if log:
                log.close()
        result.step = self.step
        return result

    def _stop_signal(self, stop: StopRequest) -> int | None:
        """The signal that asks to stop, agreed by every process (so that all stop after the same step)."""
        signum = stop.signum or 0
        if self.runtime.distributed:
            flag = torch.tensor(signum, dtype=torch.float64, device=self.runtime.device)
            signum = int(distributed.all_reduce(flag, self.runtime, op="max"))
        return signum or None

    def _export_model(self) -> None:
        """The trained model as ``config.json`` + ``model.safetensors``: ``from_pretrained(run folder)`` loads it."""
        self.model.save_pretrained(self.out_dir)


def _use_compile(train: TrainSection, device: torch.device, dtype: torch.dtype) -> bool:
    """train.compile: true, false, or auto: on for float32 CPU runs long enough to repay the compiling (about a minute
    per model and its length buckets) without gradient checkpointing, where a C++ compiler is found; off elsewhere
    (bf16 autocast is slower than float32 on CPUs without bf16 matrix units; not measured on accelerators)."""
    compiler = kernels.can_compile(device)
    if train.compile is True and not compiler:
        raise ConfigError(
            f"train.compile=true needs a C++ compiler on CPU (none of {', '.join(kernels.CPP_COMPILERS)} is on PATH): "
            "install one (e.g. apt-get install g++) or set train.compile=false"
        )
    if train.compile != "auto":
        return train.compile
    long_enough = train.steps >= COMPILE_AUTO_MIN_STEPS and (train.max_minutes or math.inf) >= COMPILE_AUTO_MIN_MINUTES
    plain = dtype == torch.float32 and train.gradient_checkpointing in (False, [])
    return device.type == "cpu" and compiler and plain and long_enough


def _compute_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 (autocast; weights and optimizer stay float32) when asked, or by default on GPUs with native bf16."""
    use_bf16 = dtype == "bf16" or (
        dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    )
    return torch.bfloat16 if use_bf16 else torch.float32


def _check_resumable(config: TrainConfig, model_config: dict, checkpoint: dict) -> None:
    """The recipe (model, data, loss, optimizer, schedule, batch) must be the checkpoint's; run control may change.
    A key that did not exist when the checkpoint was written compares as its default (what that run trained with)."""
    old, new = _flatten(checkpoint["config"]), _flatten(config.to_dict())
    with contextlib.suppress(TypeError, ValueError, OSError):  # an unreadable old config is compared as it is
        old = _flatten(config_from_dict(checkpoint["config"]).to_dict())
    old.pop("model")
    new.pop("model")
    changed = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
        and not any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES)
    ]
    if checkpoint["model_config"] != model_config:
        changed.insert(0, "model: the model config differs")
    if changed:
        raise ConfigError(
            f"cannot resume: the config differs from the checkpoint's in {'; '.join(changed)}. Use the original "
            "config (saved as train.yaml in the run folder), or start a new run (--overwrite or another --out)"
        )


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "model":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _NoBar:
    def __init__(self, total: int | None):
        self.total = total

    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, text: str) -> None: ...
    def close(self) -> None: ...
    def write(self, text: str) -> None:
        print(text, flush=True)


def _progress_bar(enabled: bool, total: int | None, initial: int):
    if not enabled:
        return _NoBar(total)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def _postfix(train_row: dict | None, eval_row: dict | None, stages: int) -> str:
    parts = []
    if train_row:
        comp = "/".join(f"{train_row[f'compression_{s}']:.2f}" for s in range(stages))
        parts += [f"loss {train_row['loss']:.3f}", f"comp {comp}", f"{train_row['bytes_per_s'] / 1e3:.1f} kB/s"]
    if eval_row:
        parts.insert(1, f"val BPB {eval_row['val_bpb']:.3f}")
    return ", ".join(parts)
