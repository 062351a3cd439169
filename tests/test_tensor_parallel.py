"""Tensor parallel on CPU (gloo, two processes): each rank holds half of the KV heads, and eviction
equals one process; shared-heads selection all-reduces the head-averaged scores so the ranks agree."""

from __future__ import annotations

import os
import socket
import traceback
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.multiprocessing as mp
import transformers
from conftest import cache_kwargs, make_model

from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache
from judgeq_cache.scorers import LayerInputs, Scorer
from judgeq_cache.tensor_parallel import HeadShards

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

WORLD = 2
PROMPT, BUDGET, NEW_TOKENS = 64, 16, 6


@dataclass(kw_only=True)
class GivenScores(Scorer):
    """Scores are the layer's ``attention`` as given (to test the selection arithmetic alone)."""

    name: ClassVar[str] = "given"

    def score(self, inputs: LayerInputs) -> torch.Tensor:
        return inputs.attention


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(rank: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def select_inputs(scores: torch.Tensor, budget: int) -> LayerInputs:
    keys = torch.zeros((*scores.shape, 4))
    mask = torch.ones(scores.shape[::2], dtype=torch.bool)
    return LayerInputs(layer_idx=0, keys=keys, values=keys, attention=scores, key_mask=mask, budget=budget)


def heads_of(rank: int, heads: int) -> slice:
    per = heads // WORLD
    return slice(rank * per, (rank + 1) * per)


# ---------------------------------------------------------------- two ranks, spawned once for both tests
SCORES = torch.rand((2, 4, 50), generator=torch.Generator().manual_seed(0))  # [B, KV heads, N]
CASES = {
    "snapkv": lambda model: EvictionCache(model, BUDGET, "snapkv", window_size=8, recent_tokens=0),
    "snapkv-shared": lambda model: EvictionCache(
        model, BUDGET, "snapkv", window_size=8, recent_tokens=0, shared_heads=True
    ),
    "judgeq": lambda model: JudgeQCache(
        model,
        JudgeQAdapter.init_for(model, num_soft_tokens=6, seed=1),
        BUDGET,
        sink_tokens=0,
        recent_tokens=0,
    ),
}


def run_cases(model) -> dict[str, dict]:
    ids = torch.randint(3, 128, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    results = {}
    for name, build in CASES.items():
        cache = build(model)
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, **cache_kwargs(model, cache))
        results[name] = {"output": out, "kept": dict(cache.kept_indices)}
    return results


def arithmetic(rank: int) -> dict[str, torch.Tensor]:
    """This rank's shared-heads selection over its half of :data:`SCORES`: all-reduced, and alone."""
    local = SCORES[:, heads_of(rank, SCORES.shape[1])]
    shards = HeadShards(dist.group.WORLD, SCORES.shape[1])
    reduced = GivenScores(shared_heads=True, pooling_kernel=3, head_shards=shards)
    alone = GivenScores(shared_heads=True, pooling_kernel=3)
    return {
        "reduced": reduced.select(select_inputs(local, 10)),
        "alone": alone.select(select_inputs(local, 10)),
    }


def _worker(rank: int, port: int, checkpoint: str, out: str) -> None:
    init_group(rank, port)
    try:
        result = {"arithmetic": arithmetic(rank)}
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                checkpoint, tp_plan="auto", attn_implementation="eager"
            ).eval()
        except Exception:  # transformers cannot shard this model here: the test skips, with the error
            result["load_error"] = traceback.format_exc(limit=3)
        else:
            result.update(tp_size=model.tp_size, cases=run_cases(model))
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    # Leave without C++ static destructors: in about one run in seven a gloo thread that is still
    # joinable at interpreter exit aborts the process (SIGABRT, "terminate called without an active
    # exception") after its results were written. An exception above still propagates to spawn.
    os._exit(0)


@pytest.fixture(scope="module")
def tiny():
    return make_model("llama")  # 4 query heads, 2 KV heads: one KV head per rank


@pytest.fixture(scope="module")
def ranks(tiny, tmp_path_factory) -> list[dict]:
    """What each of two gloo ranks computed (spawned once: starting a process costs seconds)."""
    path = tmp_path_factory.mktemp("tp")
    tiny.save_pretrained(path / "tiny")
    mp.spawn(_worker, args=(free_port(), str(path / "tiny"), str(path)), nprocs=WORLD, join=True)
    return [torch.load(path / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow  # two spawned processes
def test_all_reduced_head_mean_keeps_the_one_process_set(ranks):
    expected = GivenScores(shared_heads=True, pooling_kernel=3).select(select_inputs(SCORES, 10))
    for rank, got in enumerate(ranks):
        assert torch.equal(got["arithmetic"]["reduced"], expected[:, heads_of(rank, 4)])
    # Without the all-reduce, each rank would average its own heads and keep another set.
    alone = [got["arithmetic"]["alone"][:, :1] for got in ranks]
    assert not torch.equal(alone[0], alone[1])


@pytest.mark.slow
def test_tp_plan_eviction_equals_one_process(ranks, tiny):
    if "load_error" in ranks[0]:
        pytest.skip(f"transformers cannot load a tp_plan model on CPU/gloo: {ranks[0]['load_error']}")
    expected = run_cases(tiny)
    for rank, got in enumerate(ranks):
        assert got["tp_size"] == WORLD
        for name, reference in expected.items():
            cases = got["cases"][name]
            assert torch.equal(cases["output"], reference["output"]), name
            assert cases["kept"].keys() == reference["kept"].keys() == {0, 1, 2}
            for layer, kept in reference["kept"].items():
                assert torch.equal(cases["kept"][layer], kept[:, heads_of(rank, 2)]), (name, layer)


# ---------------------------------------------------------------- the refusal
class TensorParallelWithoutMesh(transformers.LlamaForCausalLM):
    """Says it is tensor parallel, but its weights are plain tensors (no device mesh to reduce over)."""

    tp_size = WORLD


def test_shared_heads_refused_without_a_mesh():
    config = make_model("llama").config
    model = TensorParallelWithoutMesh(config).eval()
    with pytest.raises(ValueError, match="shared_heads=False"):
        EvictionCache(model, BUDGET, "snapkv", shared_heads=True)
    with pytest.raises(ValueError, match="tensor parallel"):
        JudgeQCache(model, JudgeQAdapter.init_for(model, num_soft_tokens=4), BUDGET)  # shared by default
    EvictionCache(model, BUDGET, "snapkv")  # per-head selection is local to each rank
