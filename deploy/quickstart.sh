#!/usr/bin/env bash
# slimserve quickstart: install what is missing, build, then serve or test.
#
#   bash deploy/quickstart.sh serve   # install, build, get the default model, serve on 127.0.0.1:8080
#   bash deploy/quickstart.sh test    # install, build, run every test (also under ASan+UBSan)
#
# Environment: SLIMSERVE_MODEL=path.gguf serves that file instead of the default;
# SLIMSERVE_HOST / SLIMSERVE_PORT change the address; SLIMSERVE_SKIP_ASAN=1 skips
# the sanitizer pass of `test` (its soak included); SLIMSERVE_SKIP_FUZZ=1 skips the
# bounded fuzz runs, SLIMSERVE_FUZZ_SECONDS (default 30) sets their time per
# target; SLIMSERVE_SOAK_SECONDS (default 90) sets the sanitizer soak's length.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
MODE=${1:-serve}

# Packages, build and model steps live in deploy/install.sh (the Dockerfiles run
# the same script).
# shellcheck source=deploy/install.sh
source "$ROOT/deploy/install.sh"

case "$MODE" in
serve)
    install_deps build
    build build
    MODEL=$(default_model)
    log "serving $MODEL on http://${SLIMSERVE_HOST:-127.0.0.1}:${SLIMSERVE_PORT:-8080}"
    exec "$ROOT/build/server/slimserve" serve --model "$MODEL" \
        --host "${SLIMSERVE_HOST:-127.0.0.1}" --port "${SLIMSERVE_PORT:-8080}"
    ;;
test)
    install_deps test
    # The real-model fixture test (tests/unit/test_gemma.c) runs on the default model.
    SLIMSERVE_GEMMA_GGUF=$(SLIMSERVE_MODEL= default_model)
    export SLIMSERVE_GEMMA_GGUF
    start=$(date +%s)
    rc=0
    build build
    meson test -C build --print-errorlogs --verbose --num-processes 1 2>&1 | tee build/test-summary.log || rc=1
    summaries=(build/test-summary.log)
    if [ "${SLIMSERVE_SKIP_FUZZ:-0}" != 1 ]; then
        # libFuzzer targets (tests/fuzz/), clang + ASan + UBSan, a bounded time each
        log "fuzz pass: ${SLIMSERVE_FUZZ_SECONDS:-30} s per target"
        bash tests/fuzz/run.sh "${SLIMSERVE_FUZZ_SECONDS:-30}" 2>&1 | tee build/fuzz-summary.log || rc=1
        summaries+=(build/fuzz-summary.log)
    fi
    if [ "${SLIMSERVE_SKIP_ASAN:-0}" != 1 ]; then
        log "sanitizer pass (AddressSanitizer + UndefinedBehaviorSanitizer)"
        build build-asan -Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Db_lundef=false -Dcuda=disabled
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 CK_TIMEOUT_MULTIPLIER=4 \
            SLIMSERVE_SANITIZED=1 \
            meson test -C build-asan --print-errorlogs --verbose --num-processes 1 --timeout-multiplier 4 \
            2>&1 | tee build-asan/test-summary.log || rc=1
        summaries+=(build-asan/test-summary.log)
        # A short soak of the sanitized server: streaming clients cut at every
        # phase, queue-cap storms, /metrics consistency (tools/soak.py).
        log "sanitizer soak: ${SLIMSERVE_SOAK_SECONDS:-90} s"
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
            python3 tools/soak.py --spawn build-asan/server/slimserve --duration "${SLIMSERVE_SOAK_SECONDS:-90}" \
            --clients 12 --storm-interval 30 --storm-size 40 --server-arg=--max-num-seqs=8 \
            --server-arg=--max-queued-requests=8 \
            --stuck-after 60 --settle 60 2>&1 | tee build-asan/soak-summary.log || rc=1
        summaries+=(build-asan/soak-summary.log)
    fi
    # One closing line over every suite run above (fuzz and soak verdicts included).
    python3 "$ROOT/tools/test_summary.py" "${summaries[@]}"
    log "tests took $(( $(date +%s) - start )) s"
    exit $rc
    ;;
*)
    echo "usage: $0 serve|test" >&2
    exit 2
    ;;
esac
