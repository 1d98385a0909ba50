#!/usr/bin/env bash
# AddressSanitizer job for the CPU emulator: runs tests/test_emulator.py with every kernel library and the
# emulator runtime built with -fsanitize=address (GPUCONV_EMULATOR_SANITIZE=address), libasan preloaded into
# python, and array arguments copied into exactly-sized malloc'd buffers, so that an out-of-bounds access in a
# kernel is reported with the kernel's source line. Exits non-zero when a test fails or ASan reports anything.
#
#   tools/asan_emulator.sh [extra pytest arguments]
#
# Needs g++ with libasan (g++ -print-file-name=libasan.so). Python itself is not instrumented; leak checking
# is off (the interpreter keeps memory at exit), and so is detect_stack_use_after_return (fibers).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here" || exit 2
cxx=${GPUCONV_CXX:-g++}
python=${PYTHON:-python3}

libasan=$("$cxx" -print-file-name=libasan.so 2>/dev/null)
case "$libasan" in
  /*) ;;
  *) echo "asan_emulator: FAILED: libasan not found ($cxx -print-file-name=libasan.so gave '${libasan}')"; exit 2 ;;
esac
libasan=$(readlink -f "$libasan")
if [ ! -f "$libasan" ]; then
  echo "asan_emulator: FAILED: $libasan does not exist"
  exit 2
fi

logdir=$(mktemp -d "${TMPDIR:-/tmp}/asan_emulator.XXXXXX")
log=$logdir/pytest.log
echo "asan_emulator: libasan $libasan; logs in $logdir"
export GPUCONV_EMULATOR_SANITIZE=address
export ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1:abort_on_error=0:exitcode=86:print_summary=1:log_path=$logdir/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONFAULTHANDLER=1

LD_PRELOAD="$libasan${LD_PRELOAD:+:$LD_PRELOAD}" "$python" -m pytest tests/test_emulator.py -q -p no:cacheprovider \
  "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# ASan writes its reports to $logdir/asan.<pid> (pytest would otherwise swallow a dying test's stderr).
# Subprocesses that a test starts with its own ASAN_OPTIONS (the out-of-bounds test) report to that test.
shopt -s nullglob
reports=("$logdir"/asan.*)
if [ "${#reports[@]}" -gt 0 ]; then
  echo "asan_emulator: AddressSanitizer reported in ${#reports[@]} process(es):"
  for f in "${reports[@]}"; do
    echo "----- $f"
    head -60 "$f"
  done
  [ "$status" -eq 0 ] && status=1
fi
if [ "$status" -eq 0 ]; then
  echo "asan_emulator: OK (no AddressSanitizer report, all emulator tests passed)"
else
  echo "asan_emulator: FAILED (exit $status; see above and $log)"
fi
exit "$status"
