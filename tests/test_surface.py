"""The public surface of EvictionCache that the rest of the package builds on: fork, skip_compression,
stack, prefill_mask, cache_kwarg; and that nothing outside the cache core uses its
underscored members."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import cache_kwargs, make_model
from transformers import DynamicCache

import judgeq_cache
from judgeq_cache import Budget, EvictionCache, JudgeQAdapter, JudgeQCache
from judgeq_cache.cache.prefill_record import Drafts, PrefillRecord

#: The modules that make up the cache itself (judgeq_cache/cache/: the class and the modules split out of it).
CACHE_CORE = {
    "eviction_cache.py",
    "compression.py",
    "prefill_record.py",
    "eviction.py",
    "guards.py",
    "attention_masks.py",
    "layers.py",
    "triggers.py",
    "rows.py",
    "forwards.py",
    "state.py",
}


def _prompt(padded: bool = False, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 128, (2, n), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :6] = 0
    return ids, mask


def _prefilled(model, ids, mask, cache):
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, cache))
    return cache


def _base(arch: str = "llama", padded: bool = False):
    model = make_model(arch)
    ids, mask = _prompt(padded)
    return (
        model,
        ids,
        mask,
        _prefilled(model, ids, mask, EvictionCache(model, 0.5, "random", auto_compress=False)),
    )


def test_prefill_mask_reads_the_prefill():
    model = make_model("llama")
    cache = EvictionCache(model, 8, "streamingllm", auto_compress=False)
    assert cache.prefill_mask is None
    ids, mask = _prompt(padded=True)
    _prefilled(model, ids, mask, cache)
    assert cache.prefill_mask.dtype == torch.bool and torch.equal(cache.prefill_mask, mask.bool())
    cache.reset()
    assert cache.prefill_mask is None


def test_cache_kwarg_names_the_forward_argument():
    model = make_model("llama")
    expected = next(iter(cache_kwargs(model, None)))
    assert EvictionCache(model, 8).cache_kwarg == expected


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_fork_is_an_uncompressed_copy_that_compresses_like_a_dedicated_cache(arch):
    model, ids, mask, base = _base(arch, padded=True)
    twin = base.fork()
    assert type(twin) is EvictionCache and twin is not base and not twin.auto_compress
    assert twin.budget == base.budget and twin.scorer is base.scorer
    assert not twin.is_compressed and twin.prompt_length == base.prompt_length == ids.shape[1]
    assert twin.prefill_mask is base.prefill_mask
    for mine, theirs in zip(twin.layers, base.layers):
        assert torch.equal(mine.keys, theirs.keys) and mine.keys.data_ptr() != theirs.keys.data_ptr()
    before = [layer.keys.shape[-2] for layer in base.layers]

    small = base.fork(0.25, "streamingllm")
    small.compress()
    expected = _prefilled(model, ids, mask, EvictionCache(model, 0.25, "streamingllm"))
    assert small.kept_indices.keys() == expected.kept_indices.keys()
    for layer in expected.kept_indices:
        assert torch.equal(small.kept_indices[layer], expected.kept_indices[layer])
    # The source is untouched and can be forked again.
    assert [layer.keys.shape[-2] for layer in base.layers] == before and not base.is_compressed
    assert base.fork(4).budget == Budget.parse(4)


def test_fork_of_a_judgeq_cache_runs_its_soft_tokens():
    model = make_model("llama")
    adapter = JudgeQAdapter.init_for(model, 4)
    ids, mask = _prompt()
    source = _prefilled(model, ids, mask, JudgeQCache(model, adapter, 0.25, auto_compress=False))
    copy = source.fork()
    copy.compress()
    expected = _prefilled(model, ids, mask, JudgeQCache(model, adapter, 0.25))
    for layer in expected.kept_indices:
        assert torch.equal(copy.kept_indices[layer], expected.kept_indices[layer])


def test_fork_and_skip_compression_need_a_prefilled_uncompressed_cache():
    model = make_model("llama")
    empty = EvictionCache(model, 8, "streamingllm", auto_compress=False)
    with pytest.raises(RuntimeError, match="fork needs a prefilled, not yet compressed cache"):
        empty.fork()
    with pytest.raises(RuntimeError, match="skip_compression needs a prefilled"):
        empty.skip_compression()
    ids, mask = _prompt()
    done = _prefilled(model, ids, mask, EvictionCache(model, 8, "streamingllm"))
    assert done.is_compressed
    with pytest.raises(RuntimeError, match="fork needs"):
        done.fork(4)  # a compressed cache branches only as it is (issue 23, problem 4)
    with pytest.raises(RuntimeError, match="skip_compression needs"):
        done.skip_compression()
    with pytest.raises(TypeError, match="options go to the scorer's constructor"):
        _base()[3].fork(scorer=None, window_size=4)


def test_skip_compression_keeps_everything_and_decodes_like_a_dynamic_cache():
    model, ids, mask, base = _base(padded=True)
    full = base.fork()
    full.skip_compression()
    assert full.is_compressed and full.kept_indices == {}
    with pytest.raises(RuntimeError, match="already compressed"):
        full.compress()
    with pytest.raises(RuntimeError, match="appended_attention needs"):
        full.appended_attention({"input_ids": ids[:, :2]})
    dynamic = _prefilled(model, ids, mask, DynamicCache(config=model.config))
    step = torch.tensor([[7], [9]])
    step_mask = torch.cat([mask, torch.ones_like(step)], dim=1)
    with torch.no_grad():
        got = model(input_ids=step, attention_mask=step_mask, **cache_kwargs(model, full)).logits
        want = model(input_ids=step, attention_mask=step_mask, **cache_kwargs(model, dynamic)).logits
    assert torch.equal(got, want)
    assert full.get_seq_length() == ids.shape[1] + 1


def test_stack_merges_rows_and_leaves_its_inputs_alone():
    model, ids, mask, base = _base(padded=True)
    a = base.fork(8, "streamingllm")
    a.compress()
    b = base.fork()
    b.skip_compression()
    c = base.fork(8, "random")
    c.compress()
    keys_a = [layer.keys for layer in a.layers]
    merged = EvictionCache.stack([a, c])
    assert type(merged) is EvictionCache and merged.is_compressed and merged.kept_indices == {}
    assert merged.prompt_length == a.prompt_length and merged.layers[0].keys.shape[0] == 4
    assert torch.equal(merged.prefill_mask, torch.cat([a.prefill_mask, c.prefill_mask]))
    for i, layer in enumerate(merged.layers):
        assert torch.equal(layer.keys, torch.cat([a.layers[i].keys, c.layers[i].keys]))
        assert torch.equal(layer.values, torch.cat([a.layers[i].values, c.layers[i].values]))
    assert all(layer.keys is k for layer, k in zip(a.layers, keys_a))
    assert merged.get_seq_length() == a.get_seq_length()

    with pytest.raises(ValueError, match="at least one cache"):
        EvictionCache.stack([])
    with pytest.raises(ValueError, match="different numbers of entries"):
        EvictionCache.stack([a, b])
    with pytest.raises(ValueError, match="compressed caches"):
        EvictionCache.stack([a, base.fork(8, "streamingllm")])
    other = make_model("llama")
    elsewhere = _prefilled(other, ids, mask, EvictionCache(other, 8, "streamingllm"))
    with pytest.raises(ValueError, match="different model instances"):
        EvictionCache.stack([a, elsewhere])


def test_prefill_record_concatenates_rows_and_the_draft_key_mask():
    mask = torch.tensor([[True, True, True], [False, True, True]])
    positions = torch.tensor([[0, 1, 2], [0, 0, 1]])
    one = PrefillRecord(3, mask, positions)
    both = PrefillRecord.concatenate([one, one])
    assert both.length == 3 and torch.equal(both.key_mask, torch.cat([mask, mask]))
    assert torch.equal(both.position_ids, torch.cat([positions, positions]))
    assert PrefillRecord.concatenate([PrefillRecord(3, mask, None), one]).position_ids is None
    with pytest.raises(ValueError, match="different lengths"):
        PrefillRecord.concatenate([one, PrefillRecord(2, mask[:, :2], None)])

    assert one.forward_key_mask(None) is mask
    drafts = Drafts({"input_ids": torch.ones((2, 2), dtype=torch.long)}, None, None)
    assert torch.equal(
        one.forward_key_mask(drafts), torch.cat([mask, torch.ones((2, 2), dtype=torch.bool)], -1)
    )
    given = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    drafts = Drafts({"input_ids": torch.ones((2, 2), dtype=torch.long)}, given, None)
    assert torch.equal(one.forward_key_mask(drafts), given.bool())


def test_no_module_outside_the_cache_core_uses_the_caches_underscored_members():
    model = make_model("llama")
    cache = EvictionCache(model, 8)
    plain = DynamicCache(config=model.config)
    private = {n for n in set(vars(cache)) - set(vars(plain)) if n.startswith("_")}
    private |= {n for n in set(dir(EvictionCache)) - set(dir(DynamicCache)) if re.fullmatch(r"_[a-z]\w*", n)}
    assert {"_triggers", "_closed"} <= private
    # The state records are read outside the core at most; written (``cache.state.x = ...``) only in it.
    writes = r"|(state|forward|binding)\.\w+(\[[^]]*\])?\s*(=[^=]|\+=)"
    pattern = re.compile(r"\.(" + "|".join(sorted(private)) + r")\b" + writes)
    package = Path(judgeq_cache.__file__).parent
    offenders = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if not (path.parent == package / "cache" and path.name in CACHE_CORE)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_no_package_module_imports_another_modules_underscored_names():
    import ast

    package = Path(judgeq_cache.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                offenders += [
                    f"{path.relative_to(package)}:{node.lineno}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert offenders == []


def _module_imports(path: Path, package: Path) -> set[str]:
    """Modules of the package that ``path`` imports when it is imported (top-level statements only:
    imports inside functions and ``if TYPE_CHECKING:`` blocks run later or never)."""
    import ast

    name = ".".join(("judgeq_cache", *path.relative_to(package).with_suffix("").parts))
    name = name.removesuffix(".__init__")
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parent = base
            for _ in range(node.level - 1):
                parent = parent.rpartition(".")[0]
            module = (parent + "." + node.module if node.module else parent) if node.level else node.module
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m.startswith("judgeq_cache")}


def test_the_package_has_no_import_cycle():
    package = Path(judgeq_cache.__file__).parent
    files = {
        ".".join(("judgeq_cache", *p.relative_to(package).with_suffix("").parts)).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    graph = {
        name: {m for m in _module_imports(path, package) if m in files and m != name}
        for name, path in files.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    cycles = [c for name in sorted(graph) if name not in state and (c := visit(name, []))]
    assert cycles == []
