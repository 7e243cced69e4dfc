"""The product's one error family: what a user can act on, each with a message that says how.

The CLI and the web app catch ``RagError`` and show its message; anything else is a bug and keeps its
traceback. Classify by type, never by matching message text.
"""

from __future__ import annotations


class RagError(Exception):
    """Something the user can fix or retry; ``str(error)`` says what and how."""


class SettingsError(RagError, ValueError):
    """A setting or override that does not exist or has a value it cannot take."""


class QuestionError(RagError, ValueError):
    """A question the pipeline will not run (empty, too long, a malformed history)."""


class ArticleError(RagError, ValueError):
    """A file that cannot become an article; the message says why, for the ingest report."""


class ArticleNotFoundError(RagError, KeyError):
    """No indexed article has that id."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class ModelNotFoundError(RagError):
    """The embedding model named in the settings is not installed."""


class RagIndexError(RagError):
    """An index problem the user must act on (permissions, disk, a damaged or foreign folder)."""


class IndexMismatchError(RagIndexError):
    """The index was built with another embedding model or chunking; mixing them gives wrong answers."""


class IndexBusyError(RagIndexError):
    """Another ingest holds the index."""


class IndexChangedError(RagIndexError):
    """Another process committed an ingest while a query read the index; the query is retried once on
    the new state, so a reader sees this only if the index changes under it twice in a row."""


class GeneratorError(RagError):
    """The generator could not answer (unreachable, too slow, nothing it said checked out). The message
    is for the reader; the pipeline shows it beside the extractive answer."""


class GeneratorConfigError(RagError, ValueError):
    """The settings name a generator that does not exist or leave out what it needs."""
