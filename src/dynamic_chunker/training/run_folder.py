"""A training run's folder: one trainer at a time (a lock), what may be replaced, and leftovers of interrupted writes.

The lock is an exclusive ``fcntl.flock`` on ``.lock`` in the folder, held by the process that writes the folder
(rank 0 under torchrun; the other ranks write nothing there) for the whole run. The kernel drops it when that
process ends, however it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from ..errors import OutputFolderError
from ..evaluation.targets import BPE_FILE

LOCK = ".lock"
CHECKPOINT = "checkpoint.pt"
# everything a run writes; ``--overwrite`` removes exactly these and keeps anything else in the folder
RUN_FILES = (CHECKPOINT, "train.csv", "eval.csv", "train.yaml", "curves.png", "config.json", "model.safetensors")
RUN_FILES += ("tokenizer.json", "tokens_train.npy", "tokens_val.npy")  # token models (data.tokenizer)
RUN_FILES += (BPE_FILE,)  # the bpe reference of the warm start and routing statistics
RUN_FOLDERS = ("tensorboard",)


class RunLock:
    """Exclusive lock on a run folder (created if missing); a second holder gets a clear error naming the first."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.created = False  # this lock made the folder
        self.created_file = False  # ... or at least its lock file
        self.file = None

    def acquire(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputFolderError(f"--out {self.folder} is a file, not a folder; choose a folder for the run")
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.created_file = not (self.folder / LOCK).exists()
        self.file = open(self.folder / LOCK, "a+")
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            self.file = None
            raise OutputFolderError(
                f"{self.folder} is in use by another trainer (pid {holder}); wait for it to finish or stop it, "
                "or choose another --out"
            ) from None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def release(self) -> None:
        """Unlock. Where no run was written (a refused folder, an early error), the lock file this lock created goes
        again, and so does a folder it created that is then empty: the folder is left as it was found."""
        if self.file is None:
            return
        ran = any((self.folder / name).exists() for name in (*RUN_FILES, *RUN_FOLDERS))
        if self.created_file and not ran:
            (self.folder / LOCK).unlink(missing_ok=True)
            if self.created and not any(self.folder.iterdir()):
                self.folder.rmdir()
        fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
        self.file.close()
        self.file = None


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files that interrupted atomic writes of run files left (``.checkpoint.pt.<pid>.tmp``,
    ``model.safetensors.tmp``, ``train.tmp``...); other ``.tmp`` files are not ours and stay. Call with the lock held
    (no other writer can be using them). Returns the bytes freed."""
    prefixes = tuple(set(RUN_FILES) | {name.split(".")[0] + "." for name in RUN_FILES})
    freed = 0
    for path in folder.glob("*.tmp"):
        if path.is_file() and path.name.lstrip(".").startswith(prefixes):
            freed += path.stat().st_size
            path.unlink()
    return freed


def check_run_folder(folder: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over files it would replace, unless ``overwrite``; then remove the old run's files.

    With ``resume`` the folder is the run to continue (the trainer checks its checkpoint); nothing is removed.
    """
    if resume:
        return
    entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK) if folder.is_dir() else []
    if not entries:
        return
    if not overwrite:
        if CHECKPOINT in entries:
            raise OutputFolderError(
                f"{folder} already holds a run ({CHECKPOINT}); pass --resume to continue it, --overwrite to start "
                "again from scratch (the old run's files are deleted), or choose another --out"
            )
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise OutputFolderError(
            f"{folder} is not empty ({shown}) and holds no run to resume; choose another --out, or pass --overwrite "
            "to train there anyway (files a run writes are replaced, other files are kept)"
        )
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
