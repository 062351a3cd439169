"""Choose Judge Q's selection settings on a *dev* split of the needle tasks (never the reported seed).

    python scripts/selection_sweep.py --work runs/dev --adapter smollm2-135m-instruct \
        --samples 4 --seed 1 --markdown docs/selection_sweep.md

Dev prompts (``make_samples(..., seed=--seed)``; the reported tables use seed 0) are prefilled once
and saved (resumable). Their future is the appended question (query-agnostic) and the reference
answer. For every selection setting and kept fraction the sweep reports the *needle recall*: the share
of the answer values' tokens kept, averaged over layers and KV heads (the metric that tracks answer
accuracy; see ``judgeq_cache.hitrate.needle_recall``). No answers are decoded: it ranks settings
cheaply, and the reported accuracy comes from ``judgeq eval run`` on the test seed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path

import torch

from judgeq_cache import JudgeQAdapter
from judgeq_cache.eval.layouts import SETTINGS, build_prompt
from judgeq_cache.eval.needles import needle_positions
from judgeq_cache.eval.tasks import make_samples
from judgeq_cache.hitrate import needle_recall
from judgeq_cache.kernels import select_indices
from judgeq_cache.models import load_embedded_model
from judgeq_cache.scorers import make_scorer
from judgeq_cache.training.facts import TokenPrompt
from judgeq_cache.training.objective import kept_by, soft_attention
from judgeq_cache.training.prepared import prepare_to_disk

log = logging.getLogger("selection_sweep")
TASKS = ("needle_single", "needle_multikey", "needle_multivalue", "needle_multiquery")


def dev_prompts(tokenizer, samples: int, seed: int, length: int, settings) -> list[TokenPrompt]:
    out = []
    for task in TASKS:
        for sample in make_samples(task, samples, length, tokenizer, seed=seed):
            answer = tokenizer.encode(" " + " and ".join(sample.answers) + ".", add_special_tokens=False)
            for setting in settings:
                layout = build_prompt(tokenizer, sample, setting)
                future = layout.appended[0].tolist() + answer
                out.append(
                    TokenPrompt(
                        f"dev-{seed}-{task}-{sample.index}-{setting}",
                        layout.compressed[0].tolist(),
                        [future],
                        needle_positions(tokenizer, sample, setting),
                        meta={"task": task, "setting": setting},
                    )
                )
    return out


def selections(adapter) -> dict[str, tuple]:
    """name -> (scorer, scores it ranks, hybrid: (weight, which window's attention is mixed in))."""
    out = {}
    for shared, kernel, recent in itertools.product((False, True), (1, 3, 7), (8, 32)):
        name = f"judgeq {'shared' if shared else 'per-head'} pool{kernel} recent{recent}"
        scorer = make_scorer(
            "judgeq",
            adapter=adapter,
            shared_heads=shared,
            pooling_kernel=kernel,
            recent_tokens=recent,
            window_weight=0.0,
        )
        out[name] = (scorer, "soft", None)
    for shared, (weight, window) in itertools.product(
        (False, True), ((0.25, "last"), (0.5, "last"), (0.75, "last"), (0.5, "window"))
    ):
        scorer = make_scorer(
            "judgeq",
            adapter=adapter,
            shared_heads=shared,
            pooling_kernel=7,
            recent_tokens=8,
            window_weight=0.0,
        )
        size = 1 if window == "last" else 32
        label = f"hybrid judgeq + last-{size} w={weight} {'shared' if shared else 'per-head'} pool7 recent8"
        out[label] = (scorer, "soft", (weight, window))
    out["snapkv"] = (make_scorer("snapkv"), "window", None)
    out["snapkv shared"] = (make_scorer("snapkv", shared_heads=True), "window", None)
    out["tova"] = (make_scorer("tova"), "last", None)
    out["streamingllm"] = (make_scorer("streamingllm"), "window", None)
    out["oracle shared (no pooling)"] = (make_scorer("oracle", shared_heads=True), "target", None)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/dev")
    p.add_argument("--adapter", action="append", required=True, help="adapter dir (repeatable)")
    p.add_argument("--samples", type=int, default=4, help="samples per task")
    p.add_argument("--seed", type=int, default=1, help="dev seed (the reported tables use 0)")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--budgets", default="0.25,0.1")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_embedded_model()
    settings = args.settings.split(",")
    prompts = dev_prompts(tokenizer, args.samples, args.seed, args.length, settings)
    examples = prepare_to_disk(model, prompts, Path(args.work) / f"seed{args.seed}")
    if args.prepare_only:
        return
    budgets = [float(b) for b in args.budgets.split(",")]
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for path in args.adapter:
        adapter = JudgeQAdapter.from_pretrained(path)
        for example in examples:
            with torch.no_grad():
                soft, _ = soft_attention(model, adapter, example, grad=False)
            n = example.input_ids.shape[1]
            sources = {"soft": soft, "window": example.window, "last": example.last, "target": example.target}
            setting = example.meta["setting"]
            for budget in budgets:
                k = max(1, round(budget * n))
                oracle = {layer: select_indices(t.float(), k) for layer, t in example.target.items()}
                cells = {"oracle per-head (no pooling)": needle_recall(oracle, example.needles)}
                for name, (scorer, source, hybrid) in selections(adapter).items():
                    kept = {}
                    for layer in example.target:
                        scores = sources[source][layer].float()
                        if hybrid:
                            weight, window = hybrid
                            scores = (1 - weight) * scores + weight * sources[window][layer].float()
                        kept[layer] = kept_by(scorer, scores, k)
                    cells[name] = needle_recall(kept, example.needles)
                for name, value in cells.items():
                    label = name if name.startswith(("judgeq", "hybrid")) else f"(baseline) {name}"
                    row = results.setdefault(f"{Path(path).name}: {label}", {})
                    row.setdefault(f"{setting}@{budget:.0%}", []).append(value)
    table = {name: {cell: sum(v) / len(v) for cell, v in row.items()} for name, row in results.items()}
    columns = [f"{s}@{b:.0%}" for s in settings for b in budgets]
    lines = ["| selection | " + " | ".join(columns) + " | mean |", "|---" * (len(columns) + 2) + "|"]
    for name, row in sorted(table.items(), key=lambda kv: -sum(kv[1].values())):
        values = [row.get(c, float("nan")) for c in columns]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{100 * v:.0f}" for v in values)
            + f" | {100 * sum(values) / len(values):.1f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
