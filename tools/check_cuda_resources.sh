#!/usr/bin/env bash
# check_cuda_resources.sh - resource usage of the CUDA kernels, without a GPU.
#
#   tools/check_cuda_resources.sh NVCC SRC_ROOT FILE.cu...
#
# Compiles each .cu file for sm_80 and sm_90 with nvcc --resource-usage (ptxas
# verbose) and prints one line per kernel and architecture: registers per
# thread, static shared memory per block, spill bytes. Fails (exit 1) if any
# kernel spills registers to local memory (spill stores or loads > 0) or uses
# more static shared memory than a block may (48 KiB without the dynamic
# opt-in). A stack frame alone (e.g. the slow path of double sin/cos) is not a
# spill and is reported, not failed.
# CUDA_RES_EXTRA_FLAGS (environment): more nvcc flags, e.g. -maxrregcount=N to
# see what a register cap would do.
# NVCC empty or not executable: prints why and exits 77 (meson: SKIP).
set -euo pipefail

nvcc=${1:-}
root=${2:?source root}
shift 2 || true
if [[ -z "$nvcc" || ! -x "$nvcc" ]]; then
    echo "SKIP: nvcc not found (no CUDA toolkit, or -Dcuda=disabled): CUDA resource usage not checked"
    exit 77
fi
(($# > 0)) || { echo "no .cu files given" >&2; exit 2; }

SMEM_LIMIT=49152
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
demangle=cat
command -v c++filt >/dev/null && demangle=c++filt

fail=0
printf '%-6s %5s %7s %6s %6s  %-14s %s\n' arch regs smem_B spillS spillL file kernel
for f in "$@"; do
    for sm in 80 90; do
        log="$tmp/$(basename "$f").$sm.log"
        # shellcheck disable=SC2086 # CUDA_RES_EXTRA_FLAGS: extra nvcc words
        if ! "$nvcc" -c -o "$tmp/out.o" -I"$root" --resource-usage ${CUDA_RES_EXTRA_FLAGS:-} \
            -gencode "arch=compute_$sm,code=sm_$sm" "$f" >"$log" 2>&1; then
            cat "$log"
            echo "FAIL: nvcc could not compile $f for sm_$sm"
            fail=1
            continue
        fi
        # ptxas prints, per entry function:
        #   Compiling entry function 'NAME' for 'sm_XX'
        #   Function properties for NAME
        #       S bytes stack frame, X bytes spill stores, Y bytes spill loads
        #   Used R registers, ... [, Z bytes smem]
        if ! awk -v sm="$sm" -v lim="$SMEM_LIMIT" -v file="$(basename "$f")" '
            /Compiling entry function/ { match($0, /function \047[^\047]+\047/);
                                         k = substr($0, RSTART + 10, RLENGTH - 11); entry = 1; next }
            entry && /spill stores/ {
                if (match($0, /[0-9]+ bytes spill stores/)) ss = substr($0, RSTART, RLENGTH - 19) + 0;
                if (match($0, /[0-9]+ bytes spill loads/)) sl = substr($0, RSTART, RLENGTH - 18) + 0;
                next }
            entry && /Used [0-9]+ registers/ {
                match($0, /Used [0-9]+ registers/); r = substr($0, RSTART + 5, RLENGTH - 15);
                sm_b = 0; if (match($0, /[0-9]+ bytes smem/)) sm_b = substr($0, RSTART, RLENGTH - 11) + 0;
                printf "sm_%-3s %5d %7d %6d %6d  %-14s %s\n", sm, r, sm_b, ss, sl, file, k;
                if (ss + 0 > 0 || sl + 0 > 0) { print "FAIL: " k " spills registers (sm_" sm ")"; bad = 1 }
                if (sm_b > lim) { print "FAIL: " k " uses " sm_b " B of shared memory (limit " lim ")"; bad = 1 }
                n++; entry = 0; ss = sl = 0 }
            END { if (n == 0) printf "sm_%-3s %5s %7s %6s %6s  %-14s %s\n", sm, "-", "-", "-", "-", file, "(no kernels)";
                  exit bad }
        ' "$log" | $demangle; then
            fail=1
        fi
    done
done
if ((fail)); then
    echo "FAIL: CUDA resource check"
    exit 1
fi
echo "OK: no register spills, shared memory within $SMEM_LIMIT B per block"
