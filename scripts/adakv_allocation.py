"""How unevenly would AdaKV spread Judge Q's budget over a layer's KV heads (dev prompts)?

For each evictable layer: the per-head softmax-normalised Judge Q scores (AdaKV's rule: one top-(H*k)
over all heads of the layer, with a floor of 20 % of k per head as kvpress's AdaKVPress alpha_safeguard),
and the widest head's count / k: the stored width a dense [B, H, width, D] layout would need.

    python scripts/adakv_allocation.py docs/results_levers/adakv_allocation.json   # ~5 min, CPU
"""

import json
import statistics
import sys

import torch

from judgeq_cache import JudgeQAdapter, JudgeQCache
from judgeq_cache.eval.tasks import make_samples
from judgeq_cache.models import load_embedded_model

torch.set_num_threads(1)
model, tok = load_embedded_model()
adapter = JudgeQAdapter.from_pretrained("smollm2-135m-instruct")
ratios = {0.1: [], 0.25: []}
for task in ["needle_single", "needle_multikey", "needle_multivalue", "needle_multiquery"]:
    for s in make_samples(task, 2, 2048, tok, seed=1):
        ids = tok(s.instruction + s.context + "\n" + s.question, return_tensors="pt").input_ids
        cache = JudgeQCache(model, adapter, 0.5, auto_compress=False)
        with torch.no_grad():
            model(ids, **{cache.cache_kwarg: cache})
            att = cache.appended_attention(cache.scorer.appended_inputs(1, model))
        n = ids.shape[1]
        for frac in ratios:
            k = int(n * frac)
            for a in att.values():
                scores = a[0].float()  # [H, N]
                h = scores.shape[0]
                floor = int(0.2 * k)
                norm = scores / scores.sum(-1, keepdim=True)
                # floor per head first, then one top-k over the rest of all heads
                order = norm.argsort(-1, descending=True)
                taken = torch.zeros_like(norm, dtype=torch.bool)
                taken.scatter_(-1, order[:, :floor], True)
                rest = norm.masked_fill(taken, -1).flatten().topk(h * k - h * floor).indices
                taken.view(-1)[rest] = True
                counts = taken.sum(-1).float()
                ratios[frac].append((counts.max() / k).item())
        cache.close()
out = {
    f"{int(f * 100)}%": {
        "median": statistics.median(r),
        "max": max(r),
        "mean": statistics.mean(r),
        "n": len(r),
    }
    for f, r in ratios.items()
}
print(json.dumps(out, indent=1))  # noqa: T201
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
