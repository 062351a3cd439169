"""kvpress presses on the same model, samples and prompts as :mod:`judgeq_cache.eval.runner`,
written as the same JSONL records (``source="kvpress"``, methods named ``kvpress-<press>``).

Import this module only where kvpress is installed (``pip install 'judgeq-cache[compare]'``; kvpress
0.5.5 needs transformers < 5.3). Importing it without kvpress raises ``ImportError``.

Shared prefill: a kvpress press compresses each layer's cache in a forward hook *after* that layer's
attention ran, so compression never changes the prefill's own outputs. We therefore run the prefill
once per sample and setting, record what each attention layer's hook would see (its keyword inputs,
the layer's keys and values), and call ``press.compress`` on those for every press and budget — the
same call, on the same tensors, as kvpress's hook (``test_eval`` checks the equality when kvpress
is installed). Presses with their own context manager (KVzip, which re-reads the context) get a
dedicated prefill. Decoding mirrors kvpress's pipeline: explicit position ids after the context,
greedy, stop at EOS.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import kvpress  # noqa: F401  (ImportError here means: kvpress is not installed)
import torch
from kvpress import (
    ExpectedAttentionPress,
    KnormPress,
    KVzipPress,
    RandomPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)
from tqdm.auto import tqdm
from transformers import DynamicCache

from .metrics import score
from .prompts import Prompt, build_prompt
from .records import Record, append_record, budget_label, read_records, record_key
from .runner import decode_answer, eos_ids
from .tasks import Sample

logger = logging.getLogger(__name__)

__all__ = ["PRESSES", "KVPressPrefill", "evaluate_kvpress"]

#: Method name -> press factory taking kvpress's ``compression_ratio`` (fraction *removed*).
PRESSES: dict[str, Callable[[float], Any]] = {
    "kvpress-snapkv": lambda r: SnapKVPress(compression_ratio=r),
    "kvpress-streamingllm": lambda r: StreamingLLMPress(compression_ratio=r),
    "kvpress-expected_attention": lambda r: ExpectedAttentionPress(compression_ratio=r),
    "kvpress-tova": lambda r: TOVAPress(compression_ratio=r),
    "kvpress-knorm": lambda r: KnormPress(compression_ratio=r),
    "kvpress-random": lambda r: RandomPress(compression_ratio=r, seed=0),
    "kvpress-kvzip": lambda r: KVzipPress(compression_ratio=r),
}
#: Presses that need their own prefill (custom ``__call__``).
_DEDICATED = {"kvpress-kvzip"}


def _attention_modules(model) -> list[torch.nn.Module]:
    """The attention modules, given ``rotary_emb`` as kvpress's context manager does."""
    inner = model.model.language_model if hasattr(model.model, "language_model") else model.model
    for layer in inner.layers:
        layer.self_attn.rotary_emb = inner.rotary_emb
    return [layer.self_attn for layer in inner.layers]


class KVPressPrefill:
    """One prefill of ``input_ids`` (``[1, N]``) whose per-layer hook inputs serve every press."""

    @torch.no_grad()
    def __init__(self, model, input_ids: torch.Tensor) -> None:
        self.model = model
        self.input_ids = input_ids
        self.inputs: dict[int, dict[str, Any]] = {}
        modules = _attention_modules(model)

        def hook(module, args, kwargs, output):
            self.inputs[module.layer_idx] = dict(kwargs)

        handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
        self.cache = DynamicCache()
        try:
            out = model(input_ids=input_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        self.logits = out.logits[:, -1]
        self.modules = modules

    @torch.no_grad()
    def compressed(self, press) -> DynamicCache:
        """A new cache holding what ``press``'s forward hook would have left in each layer."""
        press.post_init_from_model(self.model)
        cache = DynamicCache()
        for module in self.modules:
            i = module.layer_idx
            layer = self.cache.layers[i]
            keys, values = press.compress(
                module, self.inputs[i]["hidden_states"], layer.keys, layer.values, None, self.inputs[i]
            )
            cache.update(keys.clone(), values.clone(), i)
        return cache


def _dedicated(model, tokenizer, input_ids: torch.Tensor, press) -> tuple[DynamicCache, torch.Tensor]:
    """A prefill under ``press``'s own context manager. KVzip loads the tokenizer from
    ``config._name_or_path``: point it at a local copy of ours for the call (no Hub access)."""
    cache = DynamicCache()
    original = model.config._name_or_path
    with tempfile.TemporaryDirectory(prefix="judgeq-kvpress-") as tmp:
        tokenizer.save_pretrained(tmp)
        model.config._name_or_path = tmp
        try:
            with torch.no_grad(), press(model):
                out = model(input_ids=input_ids, past_key_values=cache, use_cache=True)
        finally:
            model.config._name_or_path = original
    return cache, out.logits[:, -1]


@torch.no_grad()
def greedy_decode(
    model,
    cache,
    context_length: int,
    appended: torch.Tensor,
    first_logits: torch.Tensor,
    max_new_tokens: int,
    stop: set[int],
) -> torch.Tensor:
    """kvpress's decoding: ``appended`` ids (may be empty) then greedy tokens at explicit positions."""
    position = context_length
    logits = first_logits
    if appended.shape[1]:
        ids = appended
        pos = torch.arange(position, position + ids.shape[1]).unsqueeze(0)
        logits = model(input_ids=ids, past_key_values=cache, position_ids=pos).logits[:, -1]
        position += ids.shape[1]
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(logits[0].argmax())
        out.append(token)
        if token in stop or len(out) == max_new_tokens:
            break
        logits = model(
            input_ids=torch.tensor([[token]]), past_key_values=cache, position_ids=torch.tensor([[position]])
        ).logits[:, -1]
        position += 1
    return torch.tensor(out, dtype=torch.long)


def _masked_fraction(model, n: int) -> float | None:
    """Fraction of prompt entries a masking press (KVzip, AdaKV) hid, or None if none masked."""
    modules = _attention_modules(model)
    masked = [getattr(m, "masked_key_indices", None) for m in modules]
    if all(m is None for m in masked):
        return None
    heads = model.config.num_key_value_heads
    return sum(len(m[0]) for m in masked if m is not None) / (len(modules) * heads * n)


def _kv_bytes(cache: DynamicCache) -> int:
    return sum(
        layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        for layer in cache.layers
    )


def evaluate_kvpress(
    model,
    tokenizer,
    samples: Sequence[Sample],
    *,
    settings: Iterable[str],
    presses: Iterable[str],
    budgets: Iterable[int | float],
    output: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Iterator[Record]:
    """Run kvpress ``presses`` x ``budgets`` on ``samples`` in ``settings``; yield and append records.

    Budgets are kept fractions (``compression_ratio = 1 - fraction``) or entries per head
    (``compression_ratio = 1 - budget / prompt_length``, clipped at 0).
    """
    settings, presses, budgets = list(settings), list(presses), list(budgets)
    unknown = [p for p in presses if p not in PRESSES]
    if unknown:
        raise ValueError(f"unknown presses {unknown}; choose from {sorted(PRESSES)}")
    done = {r.key for r in read_records(output)} if resume and output is not None else set()
    stop = eos_ids(model, tokenizer)
    model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    jobs = [(s, setting) for s in samples for setting in settings]
    for sample, setting in tqdm(jobs, desc="kvpress", unit="prompt", disable=not progress):
        wanted = [
            (p, b)
            for p in presses
            for b in budgets
            if record_key(sample.task, sample.index, setting, p, budget_label(b)) not in done
        ]
        if not wanted:
            continue
        prompt = build_prompt(tokenizer, sample, setting)
        shared, prefill_seconds = None, 0.0
        if any(p not in _DEDICATED for p, _ in wanted):
            start = time.perf_counter()
            shared = KVPressPrefill(model, prompt.compressed)
            prefill_seconds = time.perf_counter() - start
        for press_name, budget in wanted:
            args = (model, tokenizer, sample, setting, prompt, shared, prefill_seconds, press_name, budget)
            try:
                yield _one(*args, stop, model_name, output)
            except Exception as err:
                if press_name not in _DEDICATED:
                    raise
                # e.g. KVzip's fake-key search failing on some models
                logger.error("%s failed on %s (%s): %s; skipped", press_name, sample.sample_id, setting, err)


def _ratio(budget: int | float, n: int) -> float:
    kept = budget if isinstance(budget, float) else min(1.0, budget / n)
    return max(0.0, min(0.99, 1.0 - kept))


def _one(
    model,
    tokenizer,
    sample,
    setting,
    prompt: Prompt,
    shared,
    prefill_seconds,
    press_name,
    budget,
    stop,
    model_name,
    output,
) -> Record:
    n = prompt.compressed.shape[1]
    press = PRESSES[press_name](_ratio(budget, n))
    start = time.perf_counter()
    if shared is None or press_name in _DEDICATED:
        cache, first = _dedicated(model, tokenizer, prompt.compressed, press)
    else:
        cache, first = shared.compressed(press), shared.logits
    kv_bytes = _kv_bytes(cache)
    kept = cache.get_seq_length() / n
    masked = _masked_fraction(model, n)
    if masked is not None:
        # "Fake" (masked) compression: entries stay stored but are hidden from attention. Report
        # the memory an implementation that drops them would hold.
        kept = 1.0 - masked
        kv_bytes = int(kv_bytes * kept)
    try:
        ids = greedy_decode(model, cache, n, prompt.appended, first, sample.max_new_tokens, stop)
    finally:
        for module in _attention_modules(model):
            if getattr(module, "masked_key_indices", None) is not None:
                module.masked_key_indices = None
    seconds = prefill_seconds + time.perf_counter() - start
    _, text = decode_answer(tokenizer, ids, stop)
    record = Record(
        task=sample.task,
        index=sample.index,
        setting=setting,
        method=press_name,
        budget=budget_label(budget),
        source="kvpress",
        answer=text,
        references=list(sample.answers),
        score=score(sample.metric, text, sample.answers, **sample.meta.get("metric_kwargs", {})),
        kept_fraction=kept,
        kv_bytes=kv_bytes,
        seconds=seconds,
        prompt_tokens=n,
        model=model_name,
        extra={"prefill_seconds": prefill_seconds, "compression_ratio": press.compression_ratio},
    )
    if output is not None:
        append_record(output, record)
    return record
