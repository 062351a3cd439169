#!/bin/bash
# Regenerates docs/results.md and its figures from the committed records.
set -e
cd "$(dirname "$0")/.."
R=docs/results_records
P=judgeq:snapkv,judgeq:snapkv-shared,judgeq:tova,judgeq:streamingllm,judgeq:kvpress-tova,judgeq:judgeq-hybrid,judgeq:judgeq-perhead
CMD='judgeq eval run --tasks needle_single,needle_multikey,needle_multivalue,needle_multiquery --samples 10 --length 2048 --budgets 0.25,0.1 --settings query-agnostic,question-first,query-aware --methods judgeq,judgeq-perhead,judgeq-hybrid --no-hit-rate --threads 2 --resume --adapter smollm2-135m-instruct --output runs/judgeq_v3.jsonl  # gzipped as docs/results_records/judgeq_v3.jsonl.gz (the bundled topk adapter); full, tova and oracle rows: judgeq_v2.jsonl.gz (same prompts, --methods full,judgeq,judgeq-shared,tova,oracle); SnapKV, StreamingLLM and kvpress rows: the 2026-11-29 run on the same prompts (baselines.jsonl.gz), checked identical on the first prompts'
.venv/bin/judgeq eval report $R/baselines.jsonl.gz $R/failing.jsonl.gz $R/judgeq_v2.jsonl.gz $R/judgeq_v3.jsonl.gz \
   --paired --methods full,judgeq,judgeq-perhead,judgeq-hybrid,oracle,snapkv,snapkv-shared,streamingllm,tova,kvpress-tova,kvpress-snapkv,kvpress-expectedattention,kvpress-knorm \
   --compare $P --command "$CMD" --markdown docs/results.md --plot docs/results_accuracy.png
