"""LangChain integration: ``HNetTextSplitter``, a ``TextSplitter`` that cuts where an H-Net puts its boundaries.

Needs ``pip install "dynamic_chunker[langchain]"`` (the ``langchain-text-splitters`` package); nothing else in
dynamic_chunker imports this module.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

try:
    from langchain_core.documents import Document
    from langchain_text_splitters import TextSplitter
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'HNetTextSplitter needs LangChain\'s text splitters: pip install "dynamic_chunker[langchain]"'
    ) from err

from .segmentation import DEFAULT_CHUNK_SIZE, HNetChunker


class HNetTextSplitter(TextSplitter):
    """Splits texts with :class:`~dynamic_chunker.segmentation.HNetChunker` (lossless chunks, no overlap, no stripping).

    ``chunk_size`` is a hard maximum in characters, or in tokens of ``tokenizer``; ``model``, ``level`` and the other
    keyword arguments go to ``HNetChunker``. ``create_documents`` always records each chunk's exact character offset as
    ``metadata["start_index"]`` (and ``end_index``, ``level``, ``score``).
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, *, model=None, tokenizer=None, **chunker_options: Any):
        super().__init__(chunk_size=chunk_size, chunk_overlap=0, add_start_index=True, strip_whitespace=False)
        self.chunker = HNetChunker(model, chunk_size, tokenizer=tokenizer, **chunker_options)

    def split_text(self, text: str) -> list[str]:
        return [c.text for c in self.chunker.chunk(text)]

    def create_documents(self, texts: list[str], metadatas: list[dict[Any, Any]] | None = None) -> list[Document]:
        metadatas = metadatas or [{}] * len(texts)
        documents = []
        for metadata, chunks in zip(metadatas, self.chunker.chunk_batch(texts)):
            for c in chunks:
                extra = {"start_index": c.start_index, "end_index": c.end_index, "level": c.level, "score": c.score}
                documents.append(Document(page_content=c.text, metadata={**copy.deepcopy(metadata), **extra}))
        return documents

    def split_documents(self, documents: Iterable[Document]) -> list[Document]:
        documents = list(documents)
        return self.create_documents([d.page_content for d in documents], [d.metadata for d in documents])
