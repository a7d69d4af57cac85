#!/usr/bin/env bash
# check_layers.sh - fails when a source file includes a header of a module it
# may not use. Data flows server > api > scheduler > engine > kernels, and each
# module uses only what DESIGN.md section 3 lets it (README "Layout"):
#   server    -> api, scheduler, engine (and tools: it dispatches the subcommands)
#   api       -> scheduler (request types), engine (tokenizer)
#   scheduler -> engine (model shape)
#   engine    -> kernels (the backend table)
#   tools     -> engine, kernels
# kernels/ss_error.h, the error codes every module shares, sits at the bottom
# and may be included from anywhere. tests/ may include anything.
# Internal headers (*_internal.h, kernels/cpu/kcpu.h, kernels/cuda/kcu.h) are
# private to their own module (kernels' backends may share the kernels/ ones).
#
#   bash tools/check_layers.sh [ROOT]     # prints each violation; exit 1 if any
set -u
root=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$root" || exit 2

allowed() { # allowed MODULE -> modules it may include
    case $1 in
    server) echo "server api scheduler engine tools" ;;
    api) echo "api scheduler engine" ;;
    scheduler) echo "scheduler engine" ;;
    engine) echo "engine kernels" ;;
    kernels) echo "kernels" ;;
    tools) echo "tools engine kernels" ;;
    esac
}

bad=0 files=0
for mod in server api scheduler engine kernels tools; do
    [ -d "$mod" ] || continue
    ok=" $(allowed "$mod") "
    while IFS= read -r f; do
        files=$((files + 1))
        while IFS=: read -r line inc; do
            dep=${inc%%/*}
            [ "$dep" = "$inc" ] && continue # same folder or generated (config.h)
            [ "$inc" = kernels/ss_error.h ] && continue
            if [[ "$ok" != *" $dep "* ]]; then
                echo "$f:$line: includes \"$inc\": $mod may include only:$ok"
                bad=$((bad + 1))
            elif [ "$dep" != "$mod" ] && [[ "$inc" == *_internal.h ]]; then
                echo "$f:$line: includes \"$inc\", private to $dep/"
                bad=$((bad + 1))
            fi
        done < <(grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" |
                 sed -E 's/^([0-9]+):.*#[[:space:]]*include[[:space:]]*"([^"]+)".*/\1:\2/')
    done < <(find "$mod" -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | sort)
done
if [ "$bad" -gt 0 ]; then
    echo "check_layers: $bad include(s) point up or into another module's internals ($files files)"
    exit 1
fi
echo "check_layers: $files files, every include follows the layer order (server > api > scheduler > engine > kernels)"
