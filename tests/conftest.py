"""Tiny random models of every supported architecture, built in code (no downloads)."""

from __future__ import annotations

import inspect
import os

# Triton reads this when it is first imported (transformers may import it early): the kernel tests run
# the Triton kernels in interpreter mode on CPU. The library itself never runs Triton on CPU tensors.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
import transformers

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3"]

_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def make_model(
    arch: str = "llama",
    *,
    attn: str = "eager",
    dtype: torch.dtype = torch.float32,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    **overrides,
) -> transformers.PreTrainedModel:
    """A tiny random causal LM of ``arch`` (head dim 16); ``overrides`` replace config defaults."""
    kwargs = dict(_COMMON, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, **overrides)
    kwargs["hidden_size"] = 16 * num_heads
    if arch == "llama":
        config = transformers.LlamaConfig(**kwargs)
        cls = transformers.LlamaForCausalLM
    elif arch == "mistral":
        config = transformers.MistralConfig(**kwargs, sliding_window=None)
        cls = transformers.MistralForCausalLM
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**kwargs)
        cls = transformers.Qwen2ForCausalLM
    elif arch == "qwen3":
        config = transformers.Qwen3Config(**kwargs, head_dim=16)
        cls = transformers.Qwen3ForCausalLM
    elif arch == "gemma3":
        config = transformers.Gemma3TextConfig(
            **kwargs,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        )
        cls = transformers.Gemma3ForCausalLM
    elif arch == "phi3":
        config = transformers.Phi3Config(**kwargs)
        cls = transformers.Phi3ForCausalLM
    else:
        raise ValueError(arch)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = cls(config).to(dtype).eval()
    return model


def cache_kwargs(model, cache) -> dict:
    """``{"cache": cache}`` on transformers >= 5.24, ``{"past_key_values": cache}`` before."""
    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def greedy_logits(model, ids, mask, **kwargs) -> torch.Tensor:
    """``[4, B, vocab]``: the logits of 4 greedily generated tokens (``kwargs`` go to ``generate``)."""
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=4,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    return torch.stack(out.logits)


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def refuse_model_loading(monkeypatch) -> None:
    """Argument errors must come before any model is loaded: loading one fails the test."""
    import judgeq_cache.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the arguments are bad")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr("judgeq_cache.training.cli._load_model", refuse)
    monkeypatch.setattr("judgeq_cache.cli.bench._load", refuse)


@pytest.fixture
def tiny_demo_models(monkeypatch) -> None:
    """``judgeq demo`` gets a tiny random model and tokenizer and an untrained adapter (no downloads)."""
    from test_eval import tiny_model, tiny_tokenizer

    import judgeq_cache.eval.loading as loading
    import judgeq_cache.models as models
    from judgeq_cache import JudgeQAdapter

    model, tok = tiny_model(), tiny_tokenizer()
    monkeypatch.setattr(models, "load_model", lambda name="embedded", **kwargs: (model, tok))
    monkeypatch.setattr(
        loading,
        "load_adapter",
        lambda m, path=None, **kw: (JudgeQAdapter.init_for(m, 4), "untrained adapter"),
    )
