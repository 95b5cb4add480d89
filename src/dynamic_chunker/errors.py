"""Errors that bad input causes, as opposed to bugs.

Every expected failure (a wrong path, a broken config, corpus or checkpoint, an option out of range) raises a
subclass of :class:`UserError`; the ``hnet`` command prints its message on one line and exits with status 2, while any
other exception keeps its traceback. The subclasses are also ``ValueError`` so that ``except ValueError`` in callers
keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected failure caused by input: the message says what was wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A model or training config that cannot be used (unknown key, wrong type, impossible value)."""


class InvalidArgument(UserError, ValueError):
    """An argument or command-line option outside what it may be."""


class OutputFolderError(UserError, ValueError):
    """An output path that cannot be used as asked: it is a file, holds other files or another run, or is in use."""
