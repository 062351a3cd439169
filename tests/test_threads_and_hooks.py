"""No global patching: captures live per thread, hooks come off with ``close()``, and eviction caches
in threads never disturb another model (issue 23 problem 2, issue 24 item 4)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import torch
from conftest import cache_kwargs, greedy_logits, make_model
from transformers import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import judgeq_cache
from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache
from judgeq_cache.cache import hooks
from judgeq_cache.cache.capture import attention_modules

ROUNDS = 20


def _padded(seed: int, rows: int = 2, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 128, (rows, n), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[-1, :5] = 0
    return ids, mask


def _evicting_run(model, make_cache, ids, mask) -> torch.Tensor:
    with make_cache() as cache:
        return greedy_logits(model, ids, mask, **cache_kwargs(model, cache))


def _plain_run(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def _jobs():
    """Two models with eviction caches (one captures the prompt's last queries, the other runs Judge
    Q's appended pass and, at decode steps, every query) and a plain model, each with its own input."""
    a = make_model("llama", attn="sdpa", seed=1)
    b = make_model("qwen2", attn="sdpa", seed=2)
    plain = make_model("llama", attn="sdpa", seed=3)
    adapter = JudgeQAdapter.init_for(b, 4)
    ids_a, mask_a = _padded(1)
    ids_b, mask_b = _padded(2)
    ids_p, mask_p = _padded(3)
    return {
        "a": lambda: _evicting_run(a, lambda: EvictionCache(a, 0.5, "snapkv", window_size=4), ids_a, mask_a),
        "b": lambda: _evicting_run(b, lambda: JudgeQCache(b, adapter, 8, decode_every=2), ids_b, mask_b),
        "plain": lambda: _plain_run(plain, ids_p, mask_p),
    }


def test_two_evicting_models_and_a_plain_one_in_three_threads_equal_their_single_threaded_runs():
    want_fresh = _plain_run(make_model("llama", attn="sdpa", seed=7), *_padded(7))
    jobs = _jobs()
    expected = {name: job() for name, job in jobs.items()}
    barrier = threading.Barrier(len(jobs))
    results: dict[str, list] = {name: [] for name in jobs}

    def worker(name):
        for _ in range(ROUNDS):
            barrier.wait()
            try:
                results[name].append(jobs[name]())
            except Exception as error:  # recorded, reported below
                results[name].append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, runs in results.items():
        assert len(runs) == ROUNDS
        bad = [r for r in runs if not isinstance(r, torch.Tensor) or not torch.equal(r, expected[name])]
        assert not bad, f"{name}: {len(bad)} of {ROUNDS} rounds differ: {bad[:1]}"
    # Nothing is left behind: a fresh plain model gives exactly its logits.
    assert not any(k.startswith("judgeq") for k in ALL_ATTENTION_FUNCTIONS._local_mapping)
    assert torch.equal(_plain_run(make_model("llama", attn="sdpa", seed=7), *_padded(7)), want_fresh)


def _hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("scorer", ["snapkv", "h2o", "judgeq"])
def test_close_removes_every_hook_and_the_generate_wrapper(scorer):
    model = make_model("llama")
    before = _hook_count(model)
    assert before == 0 and "generate" not in vars(model)
    ids, mask = _padded(4)

    def make():
        if scorer == "judgeq":
            return JudgeQCache(model, JudgeQAdapter.init_for(model, 4), 8, decode_every=3)
        return EvictionCache(model, 8, scorer, decode_every=3)

    first, second = make(), make()
    assert hooks.installed(model) and "generate" in vars(model)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, **cache_kwargs(model, first))
    first.close()
    assert hooks.installed(model), "the second cache is still open: its hooks stay"
    second.close()
    assert not hooks.installed(model)
    assert _hook_count(model) == before and "generate" not in vars(model)
    assert all(m.config is model.config for m in attention_modules(model))
    with pytest.raises(RuntimeError, match="was closed"):
        model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, make_closed(model)))
    # The context manager closes too, and the model then runs as a never-hooked one.
    with EvictionCache(model, 8, scorer if scorer != "judgeq" else "snapkv") as cache:
        model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, cache))
        assert hooks.installed(model)
    assert not hooks.installed(model) and _hook_count(model) == before


def make_closed(model) -> EvictionCache:
    cache = EvictionCache(model, 8)
    cache.close()
    return cache


def test_a_capture_is_invisible_to_another_thread():
    """While a capture is active in one thread, the same model run from another thread is not scored
    and gives its exact logits (the module is pointed at the capturing function meanwhile)."""
    model = make_model("llama", attn="sdpa")
    ids, mask = _padded(5)
    want = _plain_run(model, ids, mask)
    cache = EvictionCache(model, 8, "snapkv", auto_compress=False)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, cache))
    got = []
    capture = cache.query_capture(slice(None), 0, 24, mask.bool())
    with capture:
        thread = threading.Thread(target=lambda: got.append(_plain_run(model, ids, mask)))
        thread.start()
        thread.join()
    assert torch.equal(got[0], want) and capture.scores == {}
    cache.close()


def test_no_private_transformers_tables_and_no_stack_frame_walks():
    package = Path(judgeq_cache.__file__).parent
    pattern = re.compile(r"_local_mapping|_getframe|f_back")
    offenders = [
        f"{path.relative_to(package)}:{i}"
        for path in package.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_a_dynamic_cache_run_leaves_the_plain_path_alone_after_close():
    model = make_model("llama", attn="sdpa")
    ids, mask = _padded(6)

    def dynamic_run():
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            return model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, cache)).logits

    want = dynamic_run()
    with EvictionCache(model, 0.5, "snapkv") as cache, torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, cache))
    assert torch.equal(dynamic_run(), want)
