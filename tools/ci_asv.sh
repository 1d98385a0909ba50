#!/usr/bin/env bash
# CI part of the benchmarks: `asv check`, then one quick real run of a small CPU subset in the current Python
# environment. Fails when a benchmark errors (asv can finish with exit status 0 with a failed benchmark, so
# its output is checked as well). Run from anywhere; called by .ci/run. Takes 1-2 minutes on 2 cores.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root/asv_bench"
log=$(mktemp "${TMPDIR:-/tmp}/gpuconv-asv.XXXXXX")
trap 'rm -f "$log"' EXIT

# The subset: every benchmark, with the numpy backend, PyTorch on the CPU and the (slow) CPU emulator, in float32
# on the smallest shape. The other parameter sets are selected out, not run.
subset=(--bench "\\('(numpy|cpu|emulator)', 'float32', 'tiny'")

# One interpreter for everything: asv's --python=same means the Python that runs asv.
py=${PYTHON:-python}
asv=("$py" -m asv)

# asv removes PYTHONPATH from benchmark processes; ASV_PYTHONPATH is what it passes on. Point it at this
# checkout only when gpuconv is not installed (an installed gpuconv is used as installed).
if ! (cd / && "$py" -c "import gpuconv") 2>/dev/null; then
    export ASV_PYTHONPATH="$root${ASV_PYTHONPATH:+:$ASV_PYTHONPATH}"
fi

set -x
"${asv[@]}" machine --yes >/dev/null
"${asv[@]}" check --python=same
status=0
"${asv[@]}" run --python=same --quick --show-stderr "${subset[@]}" 2>&1 | tee "$log" || status=$?
{ set +x; } 2>/dev/null

if ! grep -Eq 'Running [1-9][0-9]* total benchmarks' "$log"; then
    echo "ci_asv: the benchmark selection ran nothing (asv exit status $status)" >&2
    exit 1
fi
# A benchmark with a failed parameter set ends its status line with "failed" or "K/N failed" (the reasons
# printed for skipped benchmarks are not looked at: they may say "failed" about a missing GPU).
failed_lines=$(grep -E '^\[ *[0-9.]+%\] ··· [^ ]+ +([0-9]+/[0-9]+ )?failed *$' "$log" || true)
if [ -n "$failed_lines" ] || [ "$status" -ne 0 ]; then
    echo "ci_asv: asv run exited with status $status; failed benchmarks (tracebacks above):" >&2
    echo "${failed_lines:-(none reported)}" >&2
    exit 1
fi
echo "ci_asv: asv check and the quick run passed"
