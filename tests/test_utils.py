"""The shared helpers in ``judgeq_cache.utils``."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import cache_kwargs, make_model
from transformers import DynamicCache

from judgeq_cache import EvictionCache
from judgeq_cache.utils import atomic_write, cache_kwarg, eos_token_ids, kv_bytes, text_config


def test_cache_kwarg_matches_the_forward_signature():
    model = make_model("llama")
    assert {cache_kwarg(model): None} == cache_kwargs(model, None)
    assert cache_kwarg(SimpleNamespace(forward=lambda input_ids, cache=None: None)) == "cache"
    assert cache_kwarg(SimpleNamespace(forward=lambda input_ids, past_key_values=None: None)) == (
        "past_key_values"
    )


def test_eos_token_ids_joins_every_source():
    model = make_model("llama")  # config eos 2
    model.generation_config.eos_token_id = [2, 7]
    tokenizer = SimpleNamespace(eos_token_id=9)
    assert eos_token_ids(model, tokenizer) == {2, 7, 9}
    model.generation_config.eos_token_id = None
    assert eos_token_ids(model, SimpleNamespace(eos_token_id=None)) == {2}
    assert eos_token_ids(SimpleNamespace(), None) == set()


def test_text_config_of_a_model_or_a_config():
    model = make_model("gemma3")
    assert text_config(model) is text_config(model.config)
    assert text_config(model).num_hidden_layers == 3
    nested = SimpleNamespace(get_text_config=lambda decoder: SimpleNamespace(decoder=decoder))
    assert text_config(nested).decoder is True
    plain = SimpleNamespace(hidden_size=8)
    assert text_config(plain) is plain


def test_kv_bytes_counts_stored_keys_and_values():
    model = make_model("llama")
    ids = torch.randint(3, 128, (1, 20))
    full, evicted = DynamicCache(config=model.config), EvictionCache(model, 5, "snapkv")
    assert kv_bytes(full) == 0  # nothing stored yet
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, full))
        model(input_ids=ids, **cache_kwargs(model, evicted))
    layers, kv_heads, head_dim = 3, 2, 16
    assert kv_bytes(full) == 2 * layers * kv_heads * 20 * head_dim * 4
    assert kv_bytes(evicted) == evicted.kv_bytes() == kv_bytes(full) // 4


def test_atomic_write_text_bytes_and_writer(tmp_path):
    target = tmp_path / "a.json"
    assert atomic_write(target, "héllo\n") == target
    assert target.read_text(encoding="utf-8") == "héllo\n"
    atomic_write(str(target), b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, lambda path: Path(path).write_text("by writer"))
    assert target.read_text() == "by writer"
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")

    def fail(path):
        Path(path).write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left


def test_bench_measure_keeps_pairs_and_the_in_run_compression_share():
    """``judgeq bench``'s row on a tiny model: one pair and one compression share per repeat."""
    from judgeq_cache import JudgeQAdapter
    from judgeq_cache.eval.speed import markdown, measure

    model = make_model("llama")
    ids = torch.randint(4, 100, (1, 64))
    row = measure(model, ids, JudgeQAdapter.init_for(model, 4), kept=0.25, repeats=3, decode_steps=2)
    assert len(row.judgeq_overhead_pairs) == len(row.judgeq_uncompressed_pairs) == 3
    assert len(row.judgeq_compress_share) == 3 and all(s > 0 for s in row.judgeq_compress_share)
    assert row.kv_bytes_ratio < 0.5
    assert "%" in markdown([row], 0.25).splitlines()[-1]


def test_corpus_prompt_starts_at_the_first_paragraph_after_the_offset():
    """``bench.corpus_prompt``: the book's start, or the paragraph after ``offset``; clear errors."""
    from judgeq_cache.data import load_corpus
    from judgeq_cache.eval.speed import corpus_prompt

    def chars(text, return_tensors):  # one id per character
        return SimpleNamespace(input_ids=torch.tensor([[ord(c) for c in text]]))

    brown = load_corpus("brown")
    start = brown.find("\n\n", 1000) + 2
    assert "".join(map(chr, corpus_prompt(chars, 50, "brown", 1000)[0].tolist())) == brown[start : start + 50]
    assert corpus_prompt(chars, 50)[0].tolist() == [ord(c) for c in load_corpus("moby_dick")[:50]]
    with pytest.raises(ValueError, match="no paragraph"):
        corpus_prompt(chars, 50, "brown", len(brown) - 1)
