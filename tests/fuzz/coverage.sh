#!/usr/bin/env bash
# tests/fuzz/coverage.sh - source line coverage of what the fuzz corpora reach.
#
#   bash tests/fuzz/coverage.sh [TARGET...]
#
# Builds the targets with clang's source-based coverage into build-fuzzcov/
# (no sanitizers), replays each target's inputs once (-runs=0: no mutation)
# from the committed seeds tests/fuzz/corpus/<t>/ and, when a run of
# tests/fuzz/run.sh left one, its grown corpus build-fuzz/fuzz-work/<t>/, and
# prints llvm-cov's per-file line coverage of the project files the target
# runs at least one line of (tests/ and system headers left out), then one
# line per target over the files it is about (focus below):
#   "coverage <t>: L of N lines (P%) in F files (FOCUS)"
# Needs clang, llvm-profdata and llvm-cov (Debian: clang llvm).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(request gguf tokenizer stream)
B=${FUZZCOV_BUILD:-build-fuzzcov}
W=${FUZZ_BUILD:-build-fuzz}/fuzz-work
for tool in clang llvm-profdata llvm-cov; do
    command -v $tool >/dev/null 2>&1 || { echo "coverage: $tool not found" >&2; exit 1; }
done
if [ ! -f "$B/build.ninja" ]; then
    CC=clang meson setup "$B" -Dfuzz=true -Dtests=disabled -Dcuda=disabled -Dbuildtype=debug \
        -Dc_args="-fprofile-instr-generate -fcoverage-mapping -fsanitize=fuzzer-no-link" \
        -Dc_link_args="-fprofile-instr-generate" >"$B.setup.log" 2>&1 ||
        { cat "$B.setup.log" >&2; exit 1; }
    rm -f "$B.setup.log"
fi
ninja -C "$B" $(printf 'tests/fuzz/fuzz_%s ' "${TARGETS[@]}") >"$B/build.log" 2>&1 ||
    { cat "$B/build.log" >&2; exit 1; }
focus() { # the files a target is written for
    case $1 in
    request) echo '^(api/|engine/grammar)' ;;
    gguf) echo '^engine/gguf\.c' ;;
    tokenizer) echo '^engine/tok' ;;
    stream) echo '^(scheduler/seq\.c|api/output\.c)' ;;
    *) echo '.' ;;
    esac
}
for t in "${TARGETS[@]}"; do
    bin="$B/tests/fuzz/fuzz_$t"
    prof="$B/cov-$t"
    rm -rf "$prof"
    mkdir -p "$prof"
    dirs=("tests/fuzz/corpus/$t")
    [ -d "$W/$t" ] && dirs+=("$W/$t")
    LLVM_PROFILE_FILE="$prof/%p.profraw" "$bin" -runs=0 "${dirs[@]}" >"$prof/run.log" 2>&1
    llvm-profdata merge -sparse "$prof"/*.profraw -o "$prof/merged.profdata" || exit 1
    llvm-cov report "$bin" -instr-profile="$prof/merged.profdata" \
        -ignore-filename-regex='(^|/)(tests|usr)/' >"$prof/report.txt" || exit 1
    awk -v t="$t" -v f="$(focus "$t")" '
        /^Filename/ { hdr = 1; print; next }
        hdr && NF >= 10 && $1 != "TOTAL" && $1 !~ /^-+$/ {
            n = $8; miss = $9
            if (n - miss > 0) print
            if ($1 ~ f && n > 0) { files++; lines += n; hit += n - miss }
        }
        END { if (lines) printf "coverage %s: %d of %d lines (%.1f%%) in %d files (%s)\n", t, hit, lines, 100 * hit / lines, files, f }
    ' "$prof/report.txt"
    echo "  inputs replayed: $(grep -o '[0-9]* files found in [^ ]*' "$prof/run.log" | tr '\n' ' ')"
done
