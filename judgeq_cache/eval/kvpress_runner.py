"""kvpress presses on the same model, samples and prompts as :mod:`judgeq_cache.eval.runner`,
written as the same JSONL records (``source="kvpress"``, methods named ``kvpress-<press>``).

Import this module only where kvpress is installed (``pip install 'judgeq-cache[compare]'``; kvpress
0.5.5 needs transformers < 5.3). Importing it without kvpress raises ``ImportError``.

Shared prefill: a kvpress press compresses each layer's cache in a forward hook *after* that layer's
attention ran, so compression never changes the prefill's own outputs. We therefore run the prefill
once per sample and setting, record what each attention layer's hook would see (its keyword inputs,
the layer's keys and values), and call ``press.compress`` on those for every press and budget — the
same call, on the same tensors, as kvpress's hook (``test_eval`` checks the equality when kvpress
is installed). The compressed caches of one size then decode as rows of one batch, which equals
decoding each alone (rows never interact). Presses with their own context manager (KVzip, which
re-reads the context) get a dedicated prefill. Decoding mirrors kvpress's pipeline: explicit position ids after the context,
greedy, stop at EOS.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import kvpress  # ImportError here means: kvpress is not installed
import torch
from transformers import DynamicCache

from .. import utils
from ..cache.budget import Budget
from .layouts import PromptLayout
from .loop import Answer, check_known, decode_in_batches, run_backend
from .records import Record, budget_label
from .tasks import Sample

logger = logging.getLogger(__name__)

__all__ = ["PRESSES", "KVPressPrefill", "Presses", "evaluate_kvpress"]

#: Method name -> press factory taking kvpress's ``compression_ratio`` (fraction *removed*).
PRESSES: dict[str, Callable[[float], Any]] = {
    "kvpress-snapkv": lambda r: kvpress.SnapKVPress(compression_ratio=r),
    "kvpress-streamingllm": lambda r: kvpress.StreamingLLMPress(compression_ratio=r),
    "kvpress-expected_attention": lambda r: kvpress.ExpectedAttentionPress(compression_ratio=r),
    "kvpress-tova": lambda r: kvpress.TOVAPress(compression_ratio=r),
    "kvpress-knorm": lambda r: kvpress.KnormPress(compression_ratio=r),
    "kvpress-random": lambda r: kvpress.RandomPress(compression_ratio=r, seed=0),
    "kvpress-kvzip": lambda r: kvpress.KVzipPress(compression_ratio=r),
    # AdaKV (NeurIPS 2025): one top-k over all heads of a layer, a floor per head (kvpress masks).
    "kvpress-adakv-snapkv": lambda r: kvpress.AdaKVPress(kvpress.SnapKVPress(compression_ratio=r)),
    "kvpress-adakv-expected_attention": lambda r: kvpress.AdaKVPress(
        kvpress.ExpectedAttentionPress(compression_ratio=r)
    ),
}
#: Presses that need their own prefill: a custom ``__call__`` (KVzip), or masks that kvpress's attention
#: patch applies while decoding under the press (AdaKV: its counts differ per head, so kvpress hides the
#: evicted entries instead of dropping them; the reported KV bytes are those an implementation that drops
#: them would hold).
_DEDICATED = {"kvpress-kvzip", "kvpress-adakv-snapkv", "kvpress-adakv-expected_attention"}


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
) -> list[torch.Tensor]:
    """kvpress's decoding for each batch row of ``cache``: ``appended`` ids (may be empty), then greedy
    tokens at explicit positions until a stop token (kept) or ``max_new_tokens``. Rows never interact,
    so stacked caches decode exactly as each alone."""
    rows = cache.layers[0].keys.shape[0]
    position = context_length
    logits = first_logits.expand(rows, -1)
    if appended.shape[1]:
        ids = appended.expand(rows, -1)
        pos = torch.arange(position, position + ids.shape[1]).expand(rows, -1)
        logits = model(input_ids=ids, past_key_values=cache, position_ids=pos).logits[:, -1]
        position += ids.shape[1]
    out: list[list[int]] = [[] for _ in range(rows)]
    finished = [False] * rows
    for step in range(max_new_tokens):
        tokens = logits.argmax(-1)
        for row, token in enumerate(tokens.tolist()):
            if not finished[row]:
                out[row].append(token)
                finished[row] = token in stop
        if all(finished) or step == max_new_tokens - 1:
            break
        logits = model(
            input_ids=tokens[:, None], past_key_values=cache, position_ids=torch.full((rows, 1), position)
        ).logits[:, -1]
        position += 1
    return [torch.tensor(ids, dtype=torch.long) for ids in out]


def stack_caches(caches: Sequence[DynamicCache]) -> DynamicCache:
    """One ``DynamicCache`` whose batch rows are ``caches``' (equal lengths in every layer)."""
    stacked = DynamicCache()
    for i in range(len(caches[0].layers)):
        keys = torch.cat([c.layers[i].keys for c in caches])
        values = torch.cat([c.layers[i].values for c in caches])
        stacked.update(keys, values, i)
    return stacked


def _masked_fraction(model, n: int) -> float | None:
    """Fraction of prompt entries a masking press (KVzip, AdaKV) hid, or None if none masked."""
    modules = _attention_modules(model)
    masked = [getattr(m, "masked_key_indices", None) for m in modules]
    if all(m is None for m in masked):
        return None
    heads = model.config.num_key_value_heads
    return sum(len(m[0]) for m in masked if m is not None) / (len(modules) * heads * n)


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
    check_known(presses, PRESSES, "presses")
    backend = Presses(model, tokenizer)
    yield from run_backend(
        backend,
        samples,
        settings,
        [(p, b) for p in presses for b in budgets],
        output=output,
        resume=resume,
        progress=progress,
    )


class Presses:
    """The :class:`~judgeq_cache.eval.loop.Backend` of kvpress's presses: one :class:`KVPressPrefill`
    per prompt serves every press (the caches of equal size decode as one batch); a press with its
    own context manager (KVzip) gets a dedicated prefill."""

    source = "kvpress"
    desc = "kvpress"

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.stop = utils.eos_token_ids(model, tokenizer)

    def labels(self, press: str, budget: int | float) -> tuple[str, str]:
        return press, budget_label(budget)

    def answers(self, sample: Sample, setting: str, prompt: PromptLayout, wanted: list) -> Iterator[tuple]:
        n = prompt.compressed.shape[1]
        batched = [(p, b) for p, b in wanted if p not in _DEDICATED]
        if batched:
            start = time.perf_counter()
            shared = KVPressPrefill(self.model, prompt.compressed)
            prefill_seconds = time.perf_counter() - start
            built, info = {}, {}
            for press_name, budget in batched:
                press = PRESSES[press_name](_ratio(budget, n))
                start = time.perf_counter()
                cache = built[(press_name, budget)] = shared.compressed(press)
                info[(press_name, budget)] = (press, time.perf_counter() - start, utils.kv_bytes(cache))

            def decode(stacked):
                return greedy_decode(
                    self.model, stacked, n, prompt.appended, shared.logits, sample.max_new_tokens, self.stop
                )

            for job, ids, decode_seconds in decode_in_batches(built, stack_caches, decode):
                press, seconds, kv_bytes = info[job]
                kept = built[job].get_seq_length() / n
                total = prefill_seconds + seconds + decode_seconds
                yield job, Answer(ids, kept, kv_bytes, total, extra=_extra(prefill_seconds, press))
        for press_name, budget in wanted:
            if press_name not in _DEDICATED:
                continue
            try:
                yield (press_name, budget), self._dedicated(sample, prompt, press_name, budget)
            except Exception as err:
                # e.g. KVzip's fake-key search failing on some models
                logger.error("%s failed on %s (%s): %s; skipped", press_name, sample.sample_id, setting, err)

    def _dedicated(self, sample: Sample, prompt: PromptLayout, press_name: str, budget) -> Answer:
        """A press with its own prefill (KVzip): compress, decode."""
        model, n = self.model, prompt.compressed.shape[1]
        press = PRESSES[press_name](_ratio(budget, n))
        start = time.perf_counter()
        cache, first = _dedicated(model, self.tokenizer, prompt.compressed, press)
        kv_bytes = utils.kv_bytes(cache)
        kept = cache.get_seq_length() / n
        masked = _masked_fraction(model, n)
        if masked is not None:
            # "Fake" (masked) compression: entries stay stored but are hidden from attention. Report
            # the memory an implementation that drops them would hold.
            kept = 1.0 - masked
            kv_bytes = int(kv_bytes * kept)
        try:
            (ids,) = greedy_decode(model, cache, n, prompt.appended, first, sample.max_new_tokens, self.stop)
        finally:
            for module in _attention_modules(model):
                if getattr(module, "masked_key_indices", None) is not None:
                    module.masked_key_indices = None
        return Answer(ids, kept, kv_bytes, time.perf_counter() - start, extra=_extra(0.0, press))


def _extra(prefill_seconds: float, press) -> dict[str, Any]:
    return {"prefill_seconds": prefill_seconds, "compression_ratio": press.compression_ratio}


def _ratio(budget: int | float, n: int) -> float:
    return max(0.0, min(0.99, 1.0 - Budget.parse(budget).fraction(n)))
