"""The hooks an EvictionCache installs on its model are inert for forwards that do not use one."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import cache_kwargs, greedy_logits, make_model
from transformers import DynamicCache

from judgeq_cache import EvictionCache
from judgeq_cache.cache import forwards
from judgeq_cache.cache.capture import attention_modules

PROTOCOL = ("on_model_call", "on_forward_start", "on_forward_end", "on_attention_call")


def _padded_prompt() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 128, (2, 20), generator=torch.Generator().manual_seed(11))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    return ids, mask


def _spy(monkeypatch) -> dict[str, int]:
    """Count the calls of the hook protocol and of the mask fitting."""
    calls = dict.fromkeys((*PROTOCOL, "fit_attention_mask"), 0)
    for name in PROTOCOL:
        original = getattr(EvictionCache, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(EvictionCache, name, spy)
    original_fit = forwards.fit_attention_mask

    def fit(*args, **kwargs):
        calls["fit_attention_mask"] += 1
        return original_fit(*args, **kwargs)

    monkeypatch.setattr(forwards, "fit_attention_mask", fit)
    return calls


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_hooked_model_with_a_dynamic_cache_equals_a_never_hooked_copy(arch, attn, monkeypatch):
    model = make_model(arch, attn=attn)
    pristine = copy.deepcopy(model)
    ids, mask = _padded_prompt()
    calls = _spy(monkeypatch)
    # Hook the model and use it with an evicting cache whose rows keep different counts (masks fitted).
    with torch.no_grad():
        model(
            input_ids=ids,
            attention_mask=mask,
            **cache_kwargs(model, EvictionCache(model, 0.5, "streamingllm")),
        )
    assert calls["on_forward_start"] and calls["fit_attention_mask"]
    assert not any(attention_modules(pristine)[0]._forward_pre_hooks.values())

    calls.update(dict.fromkeys(calls, 0))
    with torch.no_grad():
        for kwargs in ({}, cache_kwargs(model, DynamicCache(config=model.config))):
            want = greedy_logits(pristine, ids, mask, **copy.deepcopy(kwargs))
            got = greedy_logits(model, ids, mask, **kwargs)
            assert torch.equal(got, want)
        want = pristine(input_ids=ids, attention_mask=mask, use_cache=False).logits
        assert torch.equal(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, want)
    assert calls == dict.fromkeys(calls, 0)  # no cache method ran, no mask was fitted


def _recorder(ids: list[int]):
    """A pre-hook that records which attention_mask object the attention module receives."""

    def record(module, args, kwargs):
        ids.append(id(kwargs.get("attention_mask")))

    return record


def test_attention_hook_leaves_a_dynamic_cache_call_untouched():
    """The hook returns None (arguments kept) and the attention sees the very mask object it was given."""
    model = make_model("llama", attn="eager")
    EvictionCache(model, 4)  # installs the hooks
    ids, mask = _padded_prompt()
    seen: dict[str, list[int]] = {"before": [], "after": []}
    for attention in attention_modules(model):
        ours = list(attention._forward_pre_hooks.values())
        assert len(ours) == 1
        cache = DynamicCache(config=model.config)
        kwargs = {"hidden_states": torch.zeros(2, 3, 64), "attention_mask": torch.zeros(2, 1, 3, 3)}
        assert ours[0](attention, (), {**kwargs, "past_key_values": cache}) is None
        assert ours[0](attention, (), kwargs) is None
        attention.register_forward_pre_hook(_recorder(seen["before"]), with_kwargs=True, prepend=True)
        attention.register_forward_pre_hook(_recorder(seen["after"]), with_kwargs=True)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, DynamicCache(config=model.config)))
    assert len(seen["before"]) == len(attention_modules(model))
    assert seen["before"] == seen["after"]
