"""The bundled public-domain / redistributable text corpora."""

from __future__ import annotations

import gzip
import hashlib
import re
from importlib import resources

import pytest

from judgeq_cache.data import corpus_names, corpus_paragraphs, load_corpus

# Frequent Brown corpus POS tags, as they appear in the tagged source ("word/tag").
_POS_TAG = re.compile(
    r"\b[\w'$.,-]+/(at|nn|nns|np|vbd|vbz|vbn|vbg|in|jj|cc|pps|ppss|cs|rb|to|md|dt|cd|wdt|hvd|bedz)\b"
)


def test_names():
    assert corpus_names() == ["moby_dick", "brown"]
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpus("war_and_peace")


@pytest.mark.parametrize("name", ["moby_dick", "brown"])
def test_non_empty_and_large_enough(name):
    text = load_corpus(name)
    assert len(text.split()) > 200_000  # thousands of 4k-token haystacks
    paras = corpus_paragraphs(name)
    assert len(paras) > 2000
    assert all(p and p == " ".join(p.split()) for p in paras)  # whitespace normalised
    assert all(len(p.split()) >= 5 for p in paras)


@pytest.mark.parametrize("name", ["moby_dick", "brown"])
def test_deterministic(name):
    assert load_corpus(name) == load_corpus(name)
    a, b = corpus_paragraphs(name), corpus_paragraphs(name)
    assert a == b and a is not b  # callers may mutate their copy
    a.clear()
    assert corpus_paragraphs(name) == b


def test_stored_files_are_deterministic_gzip():
    for fname in ("moby_dick.txt.gz", "brown.txt.gz"):
        blob = resources.files("judgeq_cache.data").joinpath(fname).read_bytes()
        assert len(blob) < 1_500_000
        assert blob[4:8] == b"\0\0\0\0"  # gzip mtime 0: rebuilds give identical bytes
        gzip.decompress(blob).decode("utf-8")
        assert hashlib.sha256(blob).hexdigest()


def test_moby_dick_content():
    text = load_corpus("moby_dick")
    assert text.startswith("CHAPTER 1. Loomings.")
    assert "Call me Ishmael." in text
    paras = corpus_paragraphs("moby-dick")
    assert paras[0].startswith("Call me Ishmael.")
    assert not any(p.startswith("CHAPTER ") for p in paras)
    assert "orphan" in paras[-1]  # ends with the Epilogue


def test_brown_has_no_pos_tags():
    text = load_corpus("brown")
    assert _POS_TAG.search(text) is None
    assert "/at " not in text and "/nn " not in text and "/in " not in text
    assert " `` " not in text and " '' " not in text  # quote tokens were mapped to double quotes
    paras = corpus_paragraphs("brown")
    assert paras[0].startswith("The Fulton County Grand Jury said Friday")
    assert " ," not in paras[0] and " ." not in paras[0]
