#!/usr/bin/env bash
# Memory-safety runs of roialign_cy, each in a scratch copy of the working tree so the normal
# in-place build is never touched:
#
#   tools/sanitize.sh asan       AddressSanitizer + UndefinedBehaviorSanitizer debug build
#                                (-O0, bounds checks on), then the whole test suite under it
#   tools/sanitize.sh valgrind   plain debug build, then tools/valgrind_smoke.py under
#                                valgrind memcheck; fails on any error in our extensions
#   tools/sanitize.sh all        both (the default)
#
# Extra arguments after the subcommand go to pytest (asan) or are ignored (valgrind), e.g.
#   tools/sanitize.sh asan tests/test_arguments.py -x
# Needs gcc (or CC) with libasan/libubsan, valgrind for the second run, and the test
# requirements (pytest, hypothesis) in the current Python. Each stage prints its wall time.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
# the interpreter itself, not a pyenv/conda shim script (valgrind would trace the shell)
python=$("$python" -c 'import sys; print(sys.executable)')
cc=${CC:-gcc}
what=${1:-all}
shift || true
keep=${ROIALIGN_SANITIZE_KEEP:-0}   # 1: keep the scratch copies for inspection

scratch_copy() {  # copy tracked + untracked, non-ignored files: no build outputs travel
    local dest
    dest=$(mktemp -d "${TMPDIR:-/tmp}/roialign-sanitize.XXXXXX")
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -I{} sh -c 'test -e "$1" && echo "$1"' _ {} \
        | tar -cf - -T -) | tar -xf - -C "$dest"
    echo "$dest"
}

cleanup_dirs=()
cleanup() {
    if [ "$keep" != 1 ]; then
        for d in "${cleanup_dirs[@]}"; do rm -rf "$d"; done
    fi
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { "$python" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}s')" "$1" "$(now)"; }

run_asan() {
    local t0 dir libasan status
    t0=$(now)
    dir=$(scratch_copy); cleanup_dirs+=("$dir")
    echo "== asan: building a sanitized debug copy in $dir"
    libasan=$("$cc" -print-file-name=libasan.so)
    if [ ! -e "$libasan" ]; then
        echo "asan: $cc has no libasan.so ($libasan)" >&2
        return 2
    fi
    # float-cast-overflow is not part of gcc's -fsanitize=undefined: casting a NaN or a huge
    # coordinate to an integer is exactly the bug this package must never have.
    local san="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=undefined"
    # The flags go into CC (not CFLAGS/LDFLAGS): setup.py's OpenMP probe links a test program
    # with CC alone, and an uninstrumented link of instrumented objects fails, which would
    # silently give a serial build and leave the OpenMP paths unsanitized.
    (cd "$dir" && ROIALIGN_CY_DEBUG=1 CC="$cc $san -fno-omit-frame-pointer -g" \
        "$python" setup.py build_ext --inplace -q >"$dir/build.log" 2>&1) || {
        tail -40 "$dir/build.log" >&2
        return 2
    }
    if ! nm -D "$dir"/roialign_cy/_roi_align_kernels*.so | grep __asan_report >/dev/null; then
        echo "asan: the extension was not instrumented" >&2
        return 2
    fi
    if grep -q "building a SERIAL" "$dir/build.log" && [ -z "${ROIALIGN_CY_NO_OPENMP:-}" ]; then
        echo "asan: the sanitized build fell back to serial (no OpenMP); see $dir/build.log" >&2
        keep=1
        return 2
    fi
    echo "== asan: built in $(elapsed "$t0"); running the test suite under ASan+UBSan"
    t0=$(now)
    # RSS-based leak tests measure ASan's quarantine, not the package: left out here.
    set +e
    (cd "$dir" && env PYTHONPATH="$dir" PYTHONMALLOC=malloc PYTHONFAULTHANDLER=1 \
        LD_PRELOAD="$libasan" \
        ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        "$python" -m pytest -q -p no:cacheprovider --ignore=tests/test_memory.py \
        -o addopts="--import-mode=importlib -ra" \
        "$@" 2>&1 | tee "$dir/asan.log")
    status=${PIPESTATUS[0]}
    set -e
    if grep -qE "ERROR: AddressSanitizer|runtime error:" "$dir/asan.log"; then
        echo "== asan: FAILED: sanitizer report above (log: $dir/asan.log)"
        keep=1
        return 1
    fi
    echo "== asan: pytest exit $status, no sanitizer report; tests ran in $(elapsed "$t0")"
    return "$status"
}

run_valgrind() {
    local t0 dir log ours
    if ! command -v valgrind >/dev/null; then
        echo "valgrind: not installed" >&2
        return 2
    fi
    t0=$(now)
    dir=$(scratch_copy); cleanup_dirs+=("$dir")
    echo "== valgrind: building a debug copy in $dir"
    (cd "$dir" && ROIALIGN_CY_DEBUG=1 "$python" setup.py build_ext --inplace -q \
        >"$dir/build.log" 2>&1) || {
        tail -40 "$dir/build.log" >&2
        return 2
    }
    echo "== valgrind: built in $(elapsed "$t0"); running tools/valgrind_smoke.py under memcheck"
    t0=$(now)
    log="$dir/valgrind.log"
    # CPython/glibc noise, nothing of ours: CPython 3.11's small-int check reads the
    # uninitialised digit of a fresh long (and the value then flows through the eval loop),
    # and ld.so's word-wise strncmp over-reads rpath strings while dlopen()ing extensions.
    # Only uninitialised-value reports whose top frame is in libpython are silenced;
    # invalid reads/writes are never, except that ld.so one.
    cat >"$dir/cpython.supp" <<'SUPP'
{
   cpython-uninitialised-cond-in-libpython
   Memcheck:Cond
   obj:*/libpython3*
}
{
   cpython-uninitialised-value8-in-libpython
   Memcheck:Value8
   obj:*/libpython3*
}
{
   cpython-maybe-small-long
   Memcheck:Cond
   fun:maybe_small_long
}
{
   ldso-strncmp-overread-in-is_dst
   Memcheck:Addr8
   fun:strncmp
   fun:is_dst
}
SUPP
    (cd "$dir" && env PYTHONPATH="$dir" PYTHONMALLOC=malloc OMP_NUM_THREADS=2 \
        valgrind --tool=memcheck --leak-check=no --track-origins=yes --num-callers=40 \
        --error-limit=no --log-file="$log" --suppressions="$dir/cpython.supp" \
        "$python" tools/valgrind_smoke.py | tee "$dir/smoke.out")
    # Count the error records (blank-line separated) and those whose stack passes through
    # our extensions, and show the first few of ours.
    ours=$("$python" - "$log" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
records = re.split(r"\n==\d+==\s*\n", text)
errors = [r for r in records if re.search(r"Invalid (read|write)|uninitialised|Invalid free"
                                          r"|Mismatched free|overlap|Syscall param", r)]
ours = [r for r in errors if re.search(r"roialign_cy/_\w+\.(pyx|pxd|c)|_kernels|_boxes|_runtime", r)]
print(f"{len(errors)} memcheck error records, {len(ours)} in roialign_cy")
for record in ours[:5]:
    print(record)
EOF
)
    echo "$ours"
    grep -E "ERROR SUMMARY" "$log" | tail -1 || true
    if ! grep -q "Memcheck" "$log"; then
        echo "== valgrind: FAILED: memcheck did not run the interpreter" >&2
        keep=1
        return 1
    fi
    echo "== valgrind: ran in $(elapsed "$t0") (log: $log)"
    if ! grep -q "valgrind_smoke: all calls done" "$dir/smoke.out"; then
        echo "== valgrind: FAILED: the smoke script did not finish" >&2
        keep=1
        return 1
    fi
    # Fail on any unsuppressed error, ours or not (the suppressions cover the known noise).
    case "$ours" in
        "0 memcheck error records, 0 in roialign_cy") return 0 ;;
        *) keep=1; return 1 ;;
    esac
}

case "$what" in
    asan) run_asan "$@" ;;
    valgrind) run_valgrind ;;
    all)
        status=0
        run_asan "$@" || status=$?
        run_valgrind || status=$?
        exit "$status"
        ;;
    *)
        echo "usage: $0 [asan|valgrind|all] [pytest args...]" >&2
        exit 2
        ;;
esac
