"""The memory and time plan of a training run, from the model's shape alone (``judgeq train --dry-run``).

Every figure is an estimate from sizes and FLOP counts; :func:`format_plan` states the assumptions.
The same numbers decide ``--targets auto`` (:func:`choose_targets`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .shapes import ModelShape

__all__ = ["DTYPE_BYTES", "Plan", "choose_targets", "format_plan", "make_plan"]

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: ``auto`` keeps targets prepared while their store takes at most this share of the memory left
#: after the weights (the rest is for activations, the held-out set and fragmentation).
PREPARED_SHARE = 0.5
GB = 1e9


@dataclass(frozen=True)
class Plan:
    """Bytes, FLOPs and seconds of one run (see :func:`make_plan`)."""

    model: str
    source: str
    dtype: str
    prompt_tokens: int
    response_tokens: int
    soft_tokens: int
    batch_size: int
    grad_accum: int
    prompts: int
    steps: int
    keep_prefill: bool
    memory_gb: float
    tflops: float
    device: str  # "gpu": fused attention kernels; "cpu": SDPA's math path (an n x n matrix per layer)
    params: int
    weights_bytes: int
    kv_bytes_per_prompt: int
    target_bytes_per_prompt: int
    prepared_disk_bytes: int  # prepare_to_disk: fp16 KV + target, window and last-query maps per prompt
    prepared_memory_bytes: int  # judgeq train --targets prepared: targets (+ KV with keep_prefill)
    activation_bytes: int
    onthefly_peak_bytes: int
    prepared_peak_bytes: int
    step_flops: float  # on the fly: prefill + response pass + soft pass forward and backward
    prepared_step_flops: float  # prepared (keep_prefill): the soft pass only
    response_flops: float  # generating every prompt's response once (lower bound: decoding is memory-bound)
    targets: str  # what --targets auto picks

    @property
    def step_seconds(self) -> float:
        return self.step_flops / (self.tflops * 1e12)

    @property
    def onthefly_fits(self) -> bool:
        return self.onthefly_peak_bytes <= self.memory_gb * GB

    @property
    def prepared_fits(self) -> bool:
        return self.prepared_peak_bytes <= self.memory_gb * GB

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            step_seconds=self.step_seconds, onthefly_fits=self.onthefly_fits, prepared_fits=self.prepared_fits
        )
        return d


def choose_targets(store_bytes: float, weights_bytes: float, memory_bytes: float) -> str:
    """``--targets auto``: ``"prepared"`` when the prepared store (every prompt's targets, plus its KV
    with ``keep_prefill``) takes at most :data:`PREPARED_SHARE` of the memory left after the weights,
    else ``"on-the-fly"``."""
    return "prepared" if store_bytes <= PREPARED_SHARE * (memory_bytes - weights_bytes) else "on-the-fly"


def activation_bytes(
    shape: ModelShape, n: int, r: int, s: int, batch: int, dtype_bytes: int, fused: bool = True
) -> int:
    """Activations of one on-the-fly step, an estimate.

    * saved for the backward of the soft pass (``s`` tokens, every layer): hidden states, q/k/v/o and
      the gated MLP's three ``intermediate``-wide tensors, ``8 h + 3 I`` values per token in the model
      dtype, plus the soft tokens' attention over the ``n`` prompt keys twice (the model's own softmax
      and the fp32 copy the scorer averages);
    * plus the larger transient of the no-grad passes, one layer at a time: the prefill's ``4 h + 3 I``
      values per prompt token, or the response pass's fp32 attention (logits and probabilities,
      ``r x n`` per query head). ``fused`` (a GPU's SDPA kernels): the prefill's attention keeps no
      ``n x n`` matrix; otherwise (SDPA's math path on a CPU) it adds the fp32 logits and
      probabilities, ``2 x q_heads x n x n`` per prompt, one layer at a time.
    """
    h, i = shape.hidden, shape.intermediate
    saved = shape.num_layers * batch * s * (8 * h + 3 * i) * dtype_bytes
    saved += shape.full_layers * batch * shape.q_heads * s * n * (dtype_bytes + 4)
    prefill = batch * n * (4 * h + 3 * i) * dtype_bytes
    if not fused:
        prefill += 2 * batch * shape.q_heads * n * n * 4
    response = 2 * batch * shape.q_heads * r * n * 4
    return saved + max(prefill, response)


def _attention_flops(shape: ModelShape, queries: int, keys_before: int) -> float:
    """QK^T and PV FLOPs of ``queries`` new tokens (causal among themselves) after ``keys_before`` keys."""
    per_head = 4 * shape.head_dim
    full = queries * keys_before + queries * (queries + 1) / 2
    window = shape.sliding_window
    sliding = full if window is None else queries * min(window, keys_before + queries)
    return per_head * shape.q_heads * (shape.full_layers * full + shape.sliding_layers * sliding)


def pass_flops(shape: ModelShape, queries: int, keys_before: int, scored: bool = False) -> float:
    """Forward FLOPs of ``queries`` tokens through every layer (no LM head); ``scored`` adds the
    scorer's own ``Q K^T`` over the prompt on the evicted layers."""
    flops = 2 * shape.matmul_params * queries + _attention_flops(shape, queries, keys_before)
    if scored:
        flops += 2 * shape.head_dim * shape.q_heads * shape.full_layers * queries * keys_before
    return flops


def make_plan(
    shape: ModelShape,
    *,
    dtype: str = "bfloat16",
    prompt_tokens: int = 4096,
    response_tokens: int = 64,
    soft_tokens: int = 32,
    batch_size: int = 4,
    grad_accum: int = 1,
    prompts: int = 144,
    steps: int = 200,
    keep_prefill: bool = True,
    memory_gb: float = 80.0,
    tflops: float = 400.0,
    device: str = "gpu",
) -> Plan:
    """The plan of a run (``prompts`` prompts of ``prompt_tokens`` tokens each: the worst case)."""
    b = DTYPE_BYTES[dtype]
    n, r, s, bsz = prompt_tokens, response_tokens, soft_tokens, batch_size
    weights = shape.params * b
    kv = shape.kv_bytes(n, b)
    target = shape.target_bytes(n)
    disk = prompts * (shape.kv_bytes(n, 2) + 3 * target + 8 * n)
    store = prompts * (target + (kv if keep_prefill else 0))
    acts = activation_bytes(shape, n, r, s, bsz, b, fused=device == "gpu")
    optimizer = 4 * soft_tokens * shape.hidden * 4  # fp32 rows, gradient and AdamW's two moments
    # on the fly: one micro-batch's prompt KV, its target and prediction, activations
    onthefly_peak = weights + bsz * kv + 2 * bsz * target + acts + optimizer
    # prepared: the whole store stays resident next to the same step
    prepared_peak = weights + store + (0 if keep_prefill else bsz * kv) + bsz * target + acts + optimizer
    soft = pass_flops(shape, s, n, scored=True)
    prepared_step = 3 * soft  # forward + backward (counted as 2x the forward: an upper bound, weights frozen)
    step = pass_flops(shape, n, 0) + pass_flops(shape, r, n, scored=True) + prepared_step
    response = prompts * (pass_flops(shape, n, 0) + pass_flops(shape, r, n))
    return Plan(
        model=shape.name,
        source=shape.source,
        dtype=dtype,
        prompt_tokens=n,
        response_tokens=r,
        soft_tokens=s,
        batch_size=bsz,
        grad_accum=grad_accum,
        prompts=prompts,
        steps=steps,
        keep_prefill=keep_prefill,
        memory_gb=memory_gb,
        tflops=tflops,
        device=device,
        params=shape.params,
        weights_bytes=weights,
        kv_bytes_per_prompt=kv,
        target_bytes_per_prompt=target,
        prepared_disk_bytes=disk,
        prepared_memory_bytes=store,
        activation_bytes=acts,
        onthefly_peak_bytes=onthefly_peak,
        prepared_peak_bytes=prepared_peak,
        step_flops=bsz * grad_accum * step,
        prepared_step_flops=bsz * grad_accum * prepared_step,
        response_flops=response,
        targets=choose_targets(store, weights, memory_gb * GB),
    )


def _bytes(n: float) -> str:
    return f"{n / GB:,.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:,.1f} MB"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(plan: Plan) -> str:
    """The plan as the text ``judgeq train --dry-run`` prints."""
    p, per_s = plan, plan.tflops * 1e12
    fits = {True: "fits", False: "does NOT fit"}
    m = f"{p.memory_gb:g} GB"
    memory = [
        (f"weights ({p.params / 1e9:.2f}e9 parameters, {p.dtype})", _bytes(p.weights_bytes)),
        (f"KV of one prompt ({p.dtype})", _bytes(p.kv_bytes_per_prompt)),
        ("attention target of one prompt (fp32)", _bytes(p.target_bytes_per_prompt)),
        ("prepared on disk, all prompts (fp16 KV + 3 fp32 maps)", _bytes(p.prepared_disk_bytes)),
        (f"prepared in memory, all prompts (keep_prefill={p.keep_prefill})", _bytes(p.prepared_memory_bytes)),
        (f"activations of one step, batch {p.batch_size} ({p.device}, estimate)", _bytes(p.activation_bytes)),
        (
            f"peak on the fly (weights + {p.batch_size} prompts' KV + targets + activations)",
            f"{_bytes(p.onthefly_peak_bytes)}: {fits[p.onthefly_fits]} in {m}",
        ),
        (
            "peak prepared in memory (weights + store + activations)",
            f"{_bytes(p.prepared_peak_bytes)}: {fits[p.prepared_fits]} in {m}",
        ),
    ]
    prepared_s = p.prepared_step_flops / per_s
    time = [
        (
            f"one step on the fly ({p.batch_size * p.grad_accum} prompts: prefill, response pass, soft pass + backward)",
            f"{p.step_flops / 1e12:,.1f} TFLOP = {_duration(p.step_seconds)}",
        ),
        (
            "one step prepared, keep_prefill (soft pass + backward only)",
            f"{p.prepared_step_flops / 1e12:,.2f} TFLOP = {_duration(prepared_s)}",
        ),
        (
            f"responses, once ({p.prompts} x prefill + {p.response_tokens} decode steps)",
            f"{p.response_flops / 1e12:,.0f} TFLOP = {_duration(p.response_flops / per_s)} or more",
        ),
        (f"{p.steps} steps on the fly", _duration(p.steps * p.step_seconds)),
    ]
    width = max(len(label) for label, _ in memory + time) + 2
    lines = [
        f"Training plan for {p.model}; no weights loaded",
        f"config: {p.source}",
        f"run: {p.prompts} prompts (--plan-prompts) x {p.prompt_tokens} tokens (every prompt at "
        f"--max-prompt-tokens: the worst case), {p.response_tokens}-token responses, {p.soft_tokens} soft tokens, batch {p.batch_size} x "
        f"{p.grad_accum} accumulation, {p.steps} steps, model in {p.dtype}",
        "memory:",
        *(f"  {label:<{width}}{value}" for label, value in memory),
        f"  --targets auto picks: {p.targets} (prepared only while its store is <= {PREPARED_SHARE:.0%} of the "
        f"{m} left after the weights)",
        f"time (assuming {p.tflops:g} TFLOP/s sustained, --assume-tflops):",
        *(f"  {label:<{width}}{value}" for label, value in time),
        "assumptions: FLOPs = 2 x decoder parameters per token + attention (4 x head_dim per query-key pair "
        "and query head); backward = 2 x forward; decoding is bound by memory bandwidth, so the responses "
        "take longer than their FLOPs say; activations: judgeq_cache.training.plan.activation_bytes",
    ]
    return "\n".join(lines)
