#!/usr/bin/env bash
# tests/fuzz/run.sh - builds the libFuzzer targets and runs each for a bounded time.
#
#   bash tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS: run time per target (default 60). TARGETs: request, gguf,
# tokenizer, stream (default: all). Builds with clang into build-fuzz/ (meson
# -Dfuzz=true, ASan + UBSan, every library instrumented for coverage), then
# runs each target on a scratch copy of its seed corpus tests/fuzz/corpus/<t>/
# with its dictionary tests/fuzz/<t>.dict. Exit status: 0 when every target
# ran its time without a finding; 1 otherwise (the crashing input is kept in
# build-fuzz/findings/<t>/ and the command to reproduce it printed).
#
# Environment: FUZZ_BUILD=dir (default build-fuzz), FUZZ_JOBS=N parallel
# jobs per target (default 1), FUZZ_ARGS extra libFuzzer flags (e.g.
# "-runs=1000000" or "-max_len=65536"), FUZZ_KEEP_CORPUS=1 merges what the run
# found back into tests/fuzz/corpus/<t>/ (minimised with -merge=1).
# One line per target "fuzz <t>: ok|FAILED execs=N cov=C ft=F" and a closing
# "fuzz: N passed, M failed" (read by tools/test_summary.py).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$(pwd)
SECS=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(request gguf tokenizer stream)
B=${FUZZ_BUILD:-build-fuzz}

verdict_fail() { # verdict_fail MESSAGE: no target could run
    echo "fuzz: $1" >&2
    echo "fuzz: 0 passed, ${#TARGETS[@]} failed"
    exit 1
}
command -v clang >/dev/null 2>&1 || verdict_fail "clang not found (apt-get install clang libclang-rt-dev)"
if [ ! -f "$B/build.ninja" ]; then
    CC=clang meson setup "$B" -Dfuzz=true -Dtests=disabled -Dcuda=disabled \
        -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false \
        -Dc_args="-fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined" >"$B.setup.log" 2>&1 ||
        { cat "$B.setup.log" >&2; verdict_fail "meson setup failed"; }
    rm -f "$B.setup.log"
fi
ninja -C "$B" -j"${FUZZ_NINJA_JOBS:-2}" $(printf 'tests/fuzz/fuzz_%s ' "${TARGETS[@]}") >"$B/fuzz-build.log" 2>&1 ||
    { cat "$B/fuzz-build.log" >&2; verdict_fail "build failed"; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
passed=0 failed=0
for t in "${TARGETS[@]}"; do
    bin="$ROOT/$B/tests/fuzz/fuzz_$t"
    work="$B/fuzz-work/$t"
    findings="$B/findings/$t"
    rm -rf "$work"
    mkdir -p "$work" "$findings"
    cp -r "tests/fuzz/corpus/$t/." "$work/" 2>/dev/null
    dict=()
    [ -f "tests/fuzz/$t.dict" ] && dict=("-dict=$ROOT/tests/fuzz/$t.dict")
    log="$B/fuzz-$t.log"
    jobs=()
    [ "${FUZZ_JOBS:-1}" -gt 1 ] && jobs=("-jobs=$FUZZ_JOBS" "-workers=$FUZZ_JOBS")
    # -max_total_time bounds the run; a timeout per input catches hangs
    # shellcheck disable=SC2086
    "$bin" "$work" "${dict[@]}" -max_total_time="$SECS" -timeout=25 -rss_limit_mb=2048 \
        -malloc_limit_mb=1024 -artifact_prefix="$findings/" -print_final_stats=1 \
        ${jobs[@]+"${jobs[@]}"} ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    [ "${FUZZ_JOBS:-1}" -gt 1 ] && cat fuzz-*.log >>"$log" 2>/dev/null && rm -f fuzz-*.log
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s += $2} END {print s + 0}')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    if [ $rc -eq 0 ] && ! grep -q 'ERROR: libFuzzer\|ERROR: AddressSanitizer\|runtime error:\|FUZZ PROPERTY FAILED' "$log"; then
        echo "fuzz $t: ok execs=$execs cov=${cov:-?} ft=${ft:-?} (${SECS}s)"
        passed=$((passed + 1))
    else
        echo "fuzz $t: FAILED (rc $rc) execs=$execs cov=${cov:-?}; log $log"
        grep -m1 -B2 -A30 'ERROR: \|runtime error:\|FUZZ PROPERTY FAILED' "$log" | head -60
        for a in "$findings"/*; do
            [ -e "$a" ] && echo "  reproduce: $bin $a"
        done
        failed=$((failed + 1))
    fi
    if [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ]; then
        "$bin" -merge=1 "tests/fuzz/corpus/$t" "$work" "${dict[@]}" >>"$log" 2>&1 || true
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ $failed -eq 0 ]
