"""Guard rail for refactors of the cache: dump kept_indices (and decoded tokens with decode-time
eviction and a chunked prefill) on the embedded model for the 2k needle prompts; compare two dumps.

    python scripts/kept_indices_dump.py before.pt      # on the old commit
    python scripts/kept_indices_dump.py after.pt       # on the new one
    python scripts/kept_indices_dump.py --compare before.pt after.pt
"""

import sys

import torch

from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache
from judgeq_cache.eval.tasks import make_samples
from judgeq_cache.models import load_embedded_model


def same(x, y) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, tuple):
        return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y))
    return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


if sys.argv[1] == "--compare":
    a, b = (torch.load(p, weights_only=False) for p in sys.argv[2:4])
    bad = sorted(str(k) for k in a.keys() | b.keys() if k not in a or k not in b or not same(a[k], b[k]))
    print(
        f"{len(a.keys() | b.keys()) - len(bad)}/{len(a.keys() | b.keys())} entries identical; differing: {bad}"
    )
    sys.exit(1 if bad else 0)

torch.set_num_threads(1)
model, tok = load_embedded_model()
adapter = JudgeQAdapter.from_pretrained("smollm2-135m-instruct")
out = {}
tasks = ["needle_single", "needle_multikey", "needle_multivalue", "needle_multiquery"]
prompts = []
for t in tasks:
    for s in make_samples(t, 1, 2048, tok, seed=0):
        text = s.instruction + s.context + "\n" + s.question
        prompts.append((s.sample_id, tok(text, return_tensors="pt").input_ids))


def cache_for(method, budget, **kw):
    if method == "judgeq":
        return JudgeQCache(model, adapter, budget, **kw)
    if method == "judgeq-perhead":
        return JudgeQCache(model, adapter, budget, shared_heads=False, **kw)
    return EvictionCache(model, budget, method, **kw)


with torch.no_grad():
    for sid, ids in prompts:
        for method in ["judgeq", "judgeq-perhead", "snapkv", "tova", "h2o", "streamingllm"]:
            for budget in (0.25, 0.1):
                cache = cache_for(method, budget)
                model(ids, **{cache.cache_kwarg: cache})
                out[(sid, method, budget)] = {k: v.clone() for k, v in cache.kept_indices.items()}
                cache.close()
        # decode-time eviction and chunked prefill through generate
        for method in ["judgeq", "snapkv"]:
            cache = cache_for(method, 0.1, decode_every=8)
            g = model.generate(ids, **{cache.cache_kwarg: cache}, max_new_tokens=20, do_sample=False)
            out[(sid, method, "decode")] = (
                g[0, ids.shape[1] :].clone(),
                {k: v.clone() for k, v in cache.kept_indices.items()},
            )
            cache.close()
            cache = cache_for(method, 0.1)
            g = model.generate(
                ids, **{cache.cache_kwarg: cache}, max_new_tokens=12, do_sample=False, prefill_chunk_size=512
            )
            out[(sid, method, "chunked")] = (
                g[0, ids.shape[1] :].clone(),
                {k: v.clone() for k, v in cache.kept_indices.items()},
                cache.compression_seconds > 0,
            )
            cache.close()
torch.save(out, sys.argv[1])
print("saved", len(out))  # noqa: T201
