#!/usr/bin/env bash
# slimserve quickstart: install what is missing, build, then serve or test.
#
#   bash deploy/quickstart.sh serve   # install, build, get the default model, serve on 127.0.0.1:8080
#   bash deploy/quickstart.sh test    # install, build, run every test (also under ASan+UBSan)
#
# Environment: SLIMSERVE_MODEL=path.gguf serves that file instead of the default;
# SLIMSERVE_HOST / SLIMSERVE_PORT change the address; SLIMSERVE_SKIP_ASAN=1 skips
# the sanitizer pass of `test`.
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
    # Tests share the machine with whatever else runs there: let idle OpenMP
    # workers sleep instead of spinning (see README, "Threads").
    export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
    # The real-model fixture test (tests/unit/test_gemma.c) runs on the default model.
    SLIMSERVE_GEMMA_GGUF=$(SLIMSERVE_MODEL= default_model)
    export SLIMSERVE_GEMMA_GGUF
    start=$(date +%s)
    rc=0
    build build
    meson test -C build --print-errorlogs --verbose --num-processes 1 2>&1 | tee build/test-summary.log || rc=1
    if [ "${SLIMSERVE_SKIP_ASAN:-0}" != 1 ]; then
        log "sanitizer pass (AddressSanitizer + UndefinedBehaviorSanitizer)"
        build build-asan -Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Db_lundef=false -Dcuda=disabled
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 CK_TIMEOUT_MULTIPLIER=4 \
            SLIMSERVE_SANITIZED=1 \
            meson test -C build-asan --print-errorlogs --verbose --num-processes 1 --timeout-multiplier 4 \
            2>&1 | tee build-asan/test-summary.log || rc=1
    fi
    # One closing line over every suite run above.
    python3 "$ROOT/tools/test_summary.py" build/test-summary.log \
        $( [ -f build-asan/test-summary.log ] && [ "${SLIMSERVE_SKIP_ASAN:-0}" != 1 ] && echo build-asan/test-summary.log )
    log "tests took $(( $(date +%s) - start )) s"
    exit $rc
    ;;
*)
    echo "usage: $0 serve|test" >&2
    exit 2
    ;;
esac
