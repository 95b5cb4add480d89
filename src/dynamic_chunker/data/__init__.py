"""Byte-level training data: prepared corpora (``hnet data prepare``) and packed fixed-length windows over them."""

from ..config import BOS, EOS
from .corpus import CorpusError, CorpusSplit, PreparedCorpus, manifest_summary
from .debian import RECIPES, debian_sources
from .prepare import Document, Source, prepare_corpus
from .sources import file_source, hf_source
from .windows import ByteWindows

__all__ = [
    "BOS",
    "EOS",
    "RECIPES",
    "ByteWindows",
    "CorpusError",
    "CorpusSplit",
    "Document",
    "PreparedCorpus",
    "Source",
    "debian_sources",
    "file_source",
    "hf_source",
    "manifest_summary",
    "prepare_corpus",
]
