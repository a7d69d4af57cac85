#!/usr/bin/env bash
# gpu_check.sh - the whole check of the CUDA backend on a GPU host, in one
# command, within ~5 minutes on one H200:
#
#   bash tools/gpu_check.sh [--device N] [--dry-run]
#
# --dry-run: the same steps with the CPU backend in the GPU's place (the
# runner's --self-test, CPU servers on both sides, bench_forward -e cpu): checks
# the script itself on a machine without a GPU. Its verdict says DRY RUN.
#
# NOTE: the CUDA backend was written without a GPU; this script is its first
# run. Until it has passed on a host, `--backend cuda` refuses to start there
# (kernels/registry.c); once it passes, set SLIMSERVE_CUDA_UNVERIFIED=1 to use it.
#
# Steps (each prints its lines; the last line is the one-line summary):
#   1. conformance: tests/unit/cuda_conform.c + kernels/ built with plain
#      nvcc/cc (CUDA toolkit, a C compiler and libc only) and run: every op of
#      the backend table against the CPU backend on the same inputs.
#   2. if the meson build dependencies are there: slimserve built with
#      -Dcuda=enabled (build-gpu/), then tools/gpu_check_http.py: generated
#      llama (f32, q8_0, q4_0), gemma3 (sliding window, soft-capping), SUBLLM
#      and layer-parallel models and LTE models (grouped path; dense
#      fallback) served on CPU and on CUDA with greedy outputs compared, and
#      an HTTP run of 64 concurrent streams (Gemma 3 270M if
#      SLIMSERVE_GEMMA_GGUF names it, else a generated 100M model) compared
#      with the CPU backend;
#   3. a short benchmark with bench_forward -e cuda: decode tok/s at batch
#      1/16/64, prefill tok/s, GB/s and the fraction of the H200's 4.8 TB/s;
#      and (3a, run right after step 1: it needs only the conformance runner)
#      decode attention at long contexts (B=1 at 32768 keys, 16 at 8192, 64
#      at 4096; 32/8 heads, d128, F16 cache), split-K against the unsplit
#      path forced (cuda_conform --bench-attention).
#
# Preparing a GPU host that has only the CUDA toolkit, a C compiler, CMake,
# ninja and Python 3 (no network, no Debian packages beyond a base system):
# on a Debian 12 / Ubuntu machine with network, from the repository root:
#
#   mkdir -p deploy/gpu-debs && cd deploy/gpu-debs &&
#   apt-get download meson python3-setuptools pkgconf pkgconf-bin libpkgconf3 \
#       libmicrohttpd-dev libmicrohttpd12 libgnutls28-dev libcjson-dev libcjson1 \
#       libuv1-dev libuv1 libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 \
#       libpcre2-posix3 check libsubunit-dev libsubunit0
#
# deploy/gpu-debs/ is ignored by git; carry it with the working tree. This
# script unpacks every .deb there with `dpkg -x` into build-gpu/deps (dpkg-deb
# is part of every Debian base system) and points meson, pkg-config, the
# compiler and the loader at it. Without those .debs (or with no meson/pkg-
# config found), steps 2-3 are SKIPPED, said so, and the summary says PARTIAL.
#
# The .debs must come from the same distribution release as the GPU host's
# base system (their libraries link against its glibc).
#
# Exit: 0 every step that ran passed (PARTIAL if 2-3 were skipped), 1 a
# failure, 2 no CUDA toolkit or no CUDA device (nothing could be checked).
# Environment: CUDA_HOME (default /usr/local/cuda), CC (default cc),
# SLIMSERVE_GEMMA_GGUF (a real model for the HTTP run and the benchmark).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
dev=0
dry=0
while (($#)); do
    case $1 in
    --device) dev=${2:?--device N}; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) echo "usage: tools/gpu_check.sh [--device N] [--dry-run]" >&2; exit 2 ;;
    esac
done
gpu_be=cuda conform_args=(--device "$dev")
if ((dry)); then
    gpu_be=cpu conform_args=(--self-test)
fi
cuda=${CUDA_HOME:-/usr/local/cuda}
cc=${CC:-cc}
out=$root/build-gpu
mkdir -p "$out"
t0=$SECONDS
summary=()
say() { printf '[gpu_check] %s\n' "$*"; }
finish() { # finish EXIT_CODE VERDICT
    local v=$2
    ((dry)) && v="DRY RUN (cpu in the GPU's place) $v"
    local all="" part
    for part in "${summary[@]}"; do all+="${all:+; }$part"; done
    printf 'gpu_check: %s: %s (%ds)\n' "$v" "${all:-nothing ran}" $((SECONDS - t0))
    exit "$1"
}

# ------------------------------------------------------------ 1. conformance
nvcc=$cuda/bin/nvcc
[ -x "$nvcc" ] || nvcc=$(command -v nvcc || true)
if [ -z "$nvcc" ] || [ ! -x "$nvcc" ]; then
    summary+=("no nvcc (set CUDA_HOME)")
    finish 2 "NOT RUN"
fi
arch=native
if ! "$nvcc" --list-gpu-arch >/dev/null 2>&1 || ! command -v nvidia-smi >/dev/null 2>&1; then
    arch=sm_90 # no driver tools here: build for the H200 anyway
fi
obj=$out/conform
mkdir -p "$obj"
say "building the conformance runner with $nvcc and $cc (arch $arch)"
cflags=(-O2 -std=gnu11 -pthread -ffp-contract=off -I"$root" -I"$root/tests/unit" -I"$cuda/include" -DHAVE_CUDA=1)
build_log=$obj/build.log
: >"$build_log"
# every object compiles in the background (the GPU host has cores); its log is OUT.log
pids=()
objs=()
compile() { # compile OUT COMMAND...: runs COMMAND -o OUT in the background
    local o=$1
    shift
    "$@" -o "$o" >"$o.log" 2>&1 &
    pids+=($!)
    objs+=("$o")
}
for f in kernels/cpu/attention.c kernels/cpu/be_cpu.c kernels/cpu/lte.c kernels/cpu/fork.c \
    kernels/cpu/matmul.c kernels/cpu/pool.c kernels/cpu/quant_act.c kernels/cpu/ref.c kernels/cpu/rowops.c \
    kernels/cpu/types.c kernels/registry.c kernels/cuda/be_cuda.c tests/unit/cuda_conform.c; do
    compile "$obj/$(basename "$f" .c).o" "$cc" "${cflags[@]}" -c "$f"
done
if [ "$(uname -m)" = x86_64 ]; then # the SIMD libraries, flags as kernels/meson.build
    avx2=(-mavx2 -mfma -mf16c)
    avx512=("${avx2[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq)
    compile "$obj/matmul_avx2.o" "$cc" "${cflags[@]}" "${avx2[@]}" -c kernels/cpu/matmul_avx2.c
    compile "$obj/matmul_q8_avx2.o" "$cc" "${cflags[@]}" "${avx2[@]}" -c kernels/cpu/matmul_q8_avx2.c
    compile "$obj/rowops_avx2.o" "$cc" "${cflags[@]}" "${avx2[@]}" -c kernels/cpu/rowops_avx2.c
    compile "$obj/matmul_avx512.o" "$cc" "${cflags[@]}" "${avx512[@]}" -c kernels/cpu/matmul_avx512.c
    compile "$obj/matmul_q8_avx512.o" "$cc" "${cflags[@]}" "${avx512[@]}" -mavx512vnni -c kernels/cpu/matmul_q8_avx512.c
fi
for f in kernels/cuda/kcu_rows.cu kernels/cuda/kcu_attn.cu kernels/cuda/kcu_lte.cu; do
    compile "$obj/$(basename "$f" .cu).o" "$nvcc" -O2 -I"$root" -arch="$arch" -c "$f"
done
ok=1
for p in "${pids[@]}"; do wait "$p" || ok=0; done
for o in "${objs[@]}"; do cat "$o.log" >>"$build_log"; done
if ((ok)); then
    "$nvcc" -o "$obj/cuda_conform" "${objs[@]}" -Xcompiler -pthread -lcublas -lcudart -lm \
        >>"$build_log" 2>&1 || ok=0
fi
if ! ((ok)); then
    tail -n 30 "$build_log"
    summary+=("conformance runner did not build (see $build_log)")
    finish 1 FAIL
fi
"$obj/cuda_conform" "${conform_args[@]}" | tee "$obj/conform.txt"
rc=${PIPESTATUS[0]}
case $rc in
0) summary+=("conformance $(tail -n 1 "$obj/conform.txt" | sed 's/^cuda_conform: //')") ;;
77) summary+=("no CUDA device: $(sed -n 's/^cuda_conform: SKIP: //p' "$obj/conform.txt")")
    finish 2 "NOT RUN" ;;
*) summary+=("conformance FAILED: $(grep -c 'FAIL$' "$obj/conform.txt") case(s), see $obj/conform.txt")
   finish 1 FAIL ;;
esac

# ------------------------------------------------------------ 3a. attention benchmark
# Part of the benchmark step, run here because it needs only the conformance
# runner (so it runs even where steps 2-3 are skipped): decode attention at
# long contexts with the split-K path and with the unsplit one forced.
"$obj/cuda_conform" "${conform_args[@]}" --bench-attention | tee "$obj/bench_attn.txt"
rc=${PIPESTATUS[0]}
if ((rc != 0)) || ! grep -q '^bench-attn decode' "$obj/bench_attn.txt"; then
    summary+=("attention benchmark FAILED (see $obj/bench_attn.txt)")
    finish 1 FAIL
fi
summary+=("attention $(grep '^bench-attn decode' "$obj/bench_attn.txt" |
    sed -E 's/^bench-attn decode //; s/ \([0-9.]+ GB\/s of KV\)//' | paste -sd ';' - | sed 's/;/; /g')")

# ------------------------------------------------------------ 2. meson build
export SLIMSERVE_CUDA_UNVERIFIED=1 # the conformance passed: the steps below use the backend
deps=$out/deps
if compgen -G "$root/deploy/gpu-debs/*.deb" >/dev/null; then
    say "unpacking deploy/gpu-debs/*.deb into $deps"
    mkdir -p "$deps"
    for d in "$root"/deploy/gpu-debs/*.deb; do dpkg -x "$d" "$deps" || { summary+=("dpkg -x $d failed"); finish 1 FAIL; }; done
    multi=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
    export PATH="$deps/usr/bin:$PATH"
    export PYTHONPATH="$deps/usr/lib/python3/dist-packages${PYTHONPATH:+:$PYTHONPATH}"
    export PKG_CONFIG_PATH="$deps/usr/lib/$multi/pkgconfig:$deps/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export PKG_CONFIG_SYSROOT_DIR="$deps" # the .pc files say prefix=/usr
    export LIBRARY_PATH="$deps/usr/lib/$multi${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$deps/usr/lib/$multi${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export CPATH="$deps/usr/include${CPATH:+:$CPATH}"
fi
if ! command -v meson >/dev/null || ! { command -v pkg-config >/dev/null || command -v pkgconf >/dev/null; } ||
    ! pkg-config --exists libmicrohttpd libuv libcjson 2>/dev/null; then
    say "meson / pkg-config / libmicrohttpd, libuv, libcjson not found: steps 2-3 skipped (see the top of this script)"
    summary+=("engine/HTTP/benchmark SKIPPED (no build dependencies: prepare deploy/gpu-debs)")
    finish 0 PARTIAL
fi
bdir=$out/meson
say "building slimserve with -Dcuda=enabled in $bdir"
if [ ! -f "$bdir/build.ninja" ]; then
    meson setup "$bdir" -Dcuda=enabled -Dtests=disabled --buildtype=release >"$out/meson.log" 2>&1 ||
        { tail -n 30 "$out/meson.log"; summary+=("meson setup failed (see $out/meson.log)"); finish 1 FAIL; }
fi
ninja -C "$bdir" >"$out/ninja.log" 2>&1 ||
    { tail -n 30 "$out/ninja.log"; summary+=("build failed (see $out/ninja.log)"); finish 1 FAIL; }
bin=$bdir/server/slimserve

# ------------------------------------------------------------ 2b. engine + HTTP
python3 "$root/tools/gpu_check_http.py" --bin "$bin" --device "$dev" --workdir "$out/http" --gpu-backend "$gpu_be" |
    tee "$out/http.txt"
rc=${PIPESTATUS[0]}
summary+=("$(tail -n 1 "$out/http.txt")")
((rc == 0)) || finish 1 FAIL

# ------------------------------------------------------------ 3. benchmark
bench_size=100M
((dry)) && bench_size=1M # the CPU in the GPU's place: keep the dry run short
model=${SLIMSERVE_GEMMA_GGUF:-$out/http/bench-$bench_size.gguf}
[ -f "$model" ] || "$bin" gen-model --out "$model" --size "$bench_size" --type q8_0 >/dev/null
bf=$bdir/tools/bench_forward
bench_line=""
bpt="" # weight bytes (GB) read per step, from the batch-1 line: GB/s / tok/s
for B in 1 16 64; do
    line=$(timeout 120 "$bf" "$model" -e "$gpu_be" -d "$dev" -p 32 -n 64 -r 1 -B "$B" 2>&1 | grep '^decode' | tail -n 1)
    [ -n "$line" ] || { summary+=("bench_forward -B $B failed"); finish 1 FAIL; }
    say "batch $B: $line"
    tps=$(grep -oE '[0-9.]+ tokens/s' <<<"$line" | head -n 1)
    tps=${tps%% *}
    if ((B == 1)); then
        gbs=$(grep -oE '[0-9.]+ GB/s' <<<"$line" | head -n 1)
        bpt=$(awk -v g="${gbs%% *}" -v t="$tps" 'BEGIN { if (t > 0) print g / t }')
    fi
    # a batched step reads the weights once for its B tokens
    frac=$(awk -v b="$bpt" -v t="$tps" -v B="$B" 'BEGIN { g = b * t / B; printf "%.1f GB/s, %.2f%%", g, 100 * g / 4800 }')
    bench_line+=" decode@$B $tps tok/s ($frac of 4.8 TB/s)"
done
line=$(timeout 120 "$bf" "$model" -e "$gpu_be" -d "$dev" -p 1024 -n 1 -r 1 2>&1 | grep '^prefill' | tail -n 1)
[ -n "$line" ] || { summary+=("bench_forward prefill failed"); finish 1 FAIL; }
say "prefill 1024: $line"
bench_line+=" prefill $(grep -oE '[0-9.]+ tokens/s' <<<"$line" | head -n 1)"
summary+=("bench ($(basename "$model")):$bench_line [GB/s counts the file's bytes; the device reads F16 copies]")
finish 0 PASS
