"""Reading a prepared corpus directory: ``manifest.json`` plus ``{split}.bin`` / ``{split}.idx`` per split.

``{split}.bin`` holds every document of the split, each preceded by the BOS byte 254. Documents are UTF-8 (or ASCII),
where the bytes 254 and 255 never occur, so a BOS always marks a document start. ``{split}.idx`` is a little-endian
int64 array of the offsets of those BOS bytes. ``manifest.json`` records sizes and sha256 of both files so that a
truncated or altered corpus is refused instead of silently training on garbage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BOS
from ..errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IDX_DTYPE = np.dtype("<i8")


class CorpusError(UserError, ValueError):
    """A prepared corpus directory is missing, incomplete or does not match its manifest."""


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _count_byte(data: np.ndarray, value: int, block: int = 1 << 26) -> int:
    """Occurrences of ``value`` in ``data``, in blocks so that a large memmap never becomes one huge temporary."""
    return sum(int(np.count_nonzero(data[i : i + block] == value)) for i in range(0, len(data), block))


@dataclass(frozen=True)
class CorpusSplit:
    """One split of a prepared corpus. ``data``: read-only uint8 memmap of the .bin; ``doc_starts``: BOS offsets."""

    name: str
    data: np.ndarray
    doc_starts: np.ndarray

    def __len__(self) -> int:
        return len(self.data)

    @property
    def num_documents(self) -> int:
        return len(self.doc_starts)


class PreparedCorpus:
    """A corpus directory written by ``hnet data prepare``; every split is checked against the manifest on opening.

    ``verify=False`` skips the sha256 of the files (sizes and the index are still checked), for very large corpora.
    """

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if self.path.exists() and not self.path.is_dir():
            raise CorpusError(f"{self.path} is a file, not a corpus folder; give the folder that holds {MANIFEST}")
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"corpus directory {self.path} does not exist; create it with "
                f"`hnet data prepare NAME --out {self.path}`"
            )
        if not manifest_path.is_file():
            raise CorpusError(
                f"{manifest_path} is missing: {self.path} is not a prepared corpus (or its preparation was "
                f"interrupted); run `hnet data prepare` again"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorpusError(f"{manifest_path} is not valid JSON ({err}); run `hnet data prepare` again") from err
        version = self.manifest.get("format_version") if isinstance(self.manifest, dict) else None
        if version != FORMAT_VERSION:
            raise CorpusError(
                f"{manifest_path} has format_version {version!r}, this code reads version {FORMAT_VERSION}; "
                f"run `hnet data prepare` again"
            )
        splits = self.manifest.get("splits")
        if not isinstance(splits, dict) or not splits:
            raise CorpusError(f"{manifest_path} lists no splits; run `hnet data prepare` again")
        self._splits = {name: self._open_split(name, info, verify) for name, info in splits.items()}

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._splits)

    def split(self, name: str) -> CorpusSplit:
        if name not in self._splits:
            raise CorpusError(f"corpus {self.path} has no split {name!r}; it has {', '.join(self._splits)}")
        return self._splits[name]

    def _checked_file(self, name: str, filename: str, info: dict[str, Any], verify: bool) -> Path:
        path = self.path / filename
        expected = (info.get("files") or {}).get(filename)
        if not isinstance(expected, dict) or "bytes" not in expected or "sha256" not in expected:
            raise CorpusError(f"manifest of {self.path} has no size/sha256 for {filename} (split {name!r})")
        if not path.is_file():
            raise CorpusError(f"{path} is missing; run `hnet data prepare` again")
        size = path.stat().st_size
        if size == 0:
            raise CorpusError(f"{path} is empty (the manifest expects {expected['bytes']} bytes); prepare it again")
        if size != expected["bytes"]:
            raise CorpusError(
                f"{path} has {size} bytes but the manifest expects {expected['bytes']}: the file is truncated or "
                f"was changed; run `hnet data prepare` again"
            )
        if verify and sha256_file(path) != expected["sha256"]:
            raise CorpusError(f"{path} does not match the sha256 in the manifest (corrupt); run `hnet data prepare`")
        return path

    def _open_split(self, name: str, info: Any, verify: bool) -> CorpusSplit:
        if not isinstance(info, dict):
            raise CorpusError(f"manifest of {self.path}: split {name!r} must be an object")
        bin_path = self._checked_file(name, f"{name}.bin", info, verify)
        idx_path = self._checked_file(name, f"{name}.idx", info, verify)
        if idx_path.stat().st_size % IDX_DTYPE.itemsize:
            raise CorpusError(f"{idx_path} is not a whole number of int64 offsets")
        data = np.memmap(bin_path, dtype=np.uint8, mode="r")
        doc_starts = np.fromfile(idx_path, dtype=IDX_DTYPE).astype(np.int64)
        if len(doc_starts) != info.get("documents"):
            raise CorpusError(f"{idx_path} has {len(doc_starts)} offsets, manifest says {info.get('documents')}")
        # Every document is its BOS plus at least one byte.
        if doc_starts[0] != 0 or np.any(np.diff(doc_starts) < 2) or doc_starts[-1] >= len(data) - 1:
            raise CorpusError(f"{idx_path}: offsets must start at 0, increase, and stay inside {bin_path.name}")
        if np.any(data[doc_starts] != BOS):
            raise CorpusError(f"{bin_path}: not every offset in {idx_path.name} points at a BOS byte ({BOS})")
        if verify and _count_byte(data, BOS) != len(doc_starts):
            raise CorpusError(f"{bin_path} has BOS bytes ({BOS}) inside documents; prepare it again")
        return CorpusSplit(name=name, data=data, doc_starts=doc_starts)


def manifest_summary(manifest: dict[str, Any]) -> str:
    """A few human-readable lines: splits with documents and bytes, then each source with version and licence."""
    lines = [f"corpus {manifest.get('name')!r} (format {manifest.get('format_version')}, {manifest.get('created_at')})"]
    for split, info in manifest.get("splits", {}).items():
        lines.append(f"  {split:>5}: {info['documents']:>9,} documents {info['bytes']:>14,} bytes")
    for source in manifest.get("sources", []):
        version = f" {source['version']}" if source.get("version") else ""
        lines.append(
            f"  source {source['name']}{version}: {source.get('documents', 0):,} documents, "
            f"{source.get('bytes', 0):,} bytes, licence {source.get('licence', 'unspecified')}"
        )
    text = manifest.get("text", {})
    lines.append(
        f"  invalid UTF-8: {text.get('documents_with_invalid_utf8', 0)} documents ({text.get('invalid_utf8')}); "
        f"empty documents dropped: {text.get('empty_documents_dropped', 0)}"
    )
    return "\n".join(lines)
