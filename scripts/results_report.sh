#!/bin/bash
# Regenerates docs/results.md and its figures from the committed records.
set -e
cd "$(dirname "$0")/.."
R=docs/results_records
P=judgeq:snapkv,judgeq:snapkv-shared,judgeq:tova,judgeq:streamingllm,judgeq:kvpress-tova,judgeq:judgeq-shared,judgeq-shared:tova
CMD='judgeq eval run --tasks needle_single,needle_multikey,needle_multivalue,needle_multiquery --samples 10 --length 2048 --budgets 0.25,0.1 --settings query-agnostic,question-first,query-aware --methods full,judgeq,judgeq-shared,tova,oracle --threads 2 --resume --output runs/judgeq_v2.jsonl  # gzipped as docs/results_records/judgeq_v2.jsonl.gz; SnapKV, StreamingLLM and kvpress rows: the 2026-11-29 run on the same prompts (baselines.jsonl.gz), checked identical on the first prompts'
.venv/bin/judgeq eval report $R/baselines.jsonl.gz $R/failing.jsonl.gz $R/judgeq_v2.jsonl.gz \
   --paired --methods full,judgeq,judgeq-shared,oracle,snapkv,snapkv-shared,streamingllm,tova,kvpress-tova,kvpress-snapkv,kvpress-expectedattention,kvpress-knorm \
   --compare $P --command "$CMD" --markdown docs/results.md --plot docs/results_accuracy.png
