#!/usr/bin/env python3
"""Layer-parallelism quality sweep: perplexity for every start and pair count.

Runs `slimserve perplexity --json` once with layer parallelism off and once
for every range START:START+2*PAIRS that fits the model, on the same text
and windows, and prints a table of perplexity ratios (paired / sequential)
with rows = START and columns = PAIRS, then the recommended range: the one
pairing the most layers whose perplexity stays within the budget (ties: the
lower perplexity).

    tools/lp_sweep.py --bin build/server/slimserve --model M.gguf \\
        --file /usr/share/common-licenses/GPL-3 [--ctx 512] [--max-windows 8] \\
        [--budget 0.05] [--threads 0] [--json out.json] [--markdown out.md]

The layer count is read from the GGUF header (<arch>.block_count) with a
small parser here (no dependencies). Each run is a separate process; a run
that fails is shown as "err" and left out of the recommendation. Results go
to stdout as a Markdown table; --json keeps every raw number.
"""
import argparse
import json
import struct
import subprocess
import sys
import time

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}


def gguf_block_count(path):
    """<arch>.block_count of a GGUF file, read from its key/value header."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(path + ": not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ValueError(path + ": GGUF version %d unsupported" % version)
        _n_tensors, n_kv = struct.unpack("<QQ", f.read(16))

        def rstr():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def rval(t):
            if t == 8:
                return rstr()
            if t == 9:
                (et,) = struct.unpack("<I", f.read(4))
                (n,) = struct.unpack("<Q", f.read(8))
                if et in GGUF_SCALARS:  # skip numeric arrays without decoding them all
                    f.seek(n * struct.calcsize(GGUF_SCALARS[et]), 1)
                    return None
                return [rval(et) for _ in range(n)]
            fmt = GGUF_SCALARS[t]
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        kv = {}
        for _ in range(n_kv):
            k = rstr()
            (t,) = struct.unpack("<I", f.read(4))
            kv[k] = rval(t)
        arch = kv.get("general.architecture")
        n = kv.get("%s.block_count" % arch)
        if not isinstance(n, int):
            raise ValueError(path + ": no %s.block_count" % arch)
        return n


def run_ppl(a, rng):
    cmd = [a.bin, "perplexity", "--model", a.model, "--file", a.file, "--ctx", str(a.ctx),
           "--json", "--quiet", "--layer-parallel", rng]
    if a.max_windows:
        cmd += ["--max-windows", str(a.max_windows)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if a.kv_type:
        cmd += ["--kv-type", a.kv_type]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"range": rng, "error": p.stderr.strip()[-300:], "wall": time.time() - t0}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["range"] = rng
    r["wall"] = time.time() - t0
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="slimserve", help="slimserve binary")
    ap.add_argument("--model", required=True)
    ap.add_argument("--file", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-windows", type=int, default=0, help="0 = every window of the text")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--kv-type", default="", help="f16 or f32 (default: the tool's)")
    ap.add_argument("--budget", type=float, default=0.05, help="allowed relative perplexity increase")
    ap.add_argument("--max-pairs", type=int, default=0, help="0 = as many as fit")
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--markdown", help="also write the table here")
    a = ap.parse_args()

    L = gguf_block_count(a.model)
    base = run_ppl(a, "off")
    if "error" in base:
        print("baseline failed: " + base["error"], file=sys.stderr)
        return 1
    P0 = base["perplexity"]
    print("baseline (off): perplexity %.4f over %d tokens, %.1f s" % (P0, base["tokens"], base["wall"]),
          file=sys.stderr)
    max_pairs = L // 2 if a.max_pairs <= 0 else min(a.max_pairs, L // 2)
    res = {}
    for s in range(L - 1):
        for k in range(1, max_pairs + 1):
            if s + 2 * k > L:
                break
            r = run_ppl(a, "%d:%d" % (s, s + 2 * k))
            res[(s, k)] = r
            msg = r.get("error") or "%.4f (x%.4f)" % (r["perplexity"], r["perplexity"] / P0)
            print("  %d:%d  %s  %.1f s" % (s, s + 2 * k, msg, r["wall"]), file=sys.stderr)

    cols = range(1, max_pairs + 1)
    lines = ["Perplexity ratio (paired / sequential; sequential = %.4f) of %s, ctx %d, %d scored tokens. "
             "Rows: START; columns: pairs (range START:START+2*pairs)." % (P0, a.model.split("/")[-1], a.ctx,
                                                                         base["tokens"]),
             "",
             "| start | " + " | ".join("%d" % k for k in cols) + " |",
             "|---:|" + "---:|" * len(cols)]
    for s in range(L - 1):
        cells = []
        for k in cols:
            r = res.get((s, k))
            cells.append("" if r is None else "err" if "error" in r else "%.3f" % (r["perplexity"] / P0))
        if any(cells):
            lines.append("| %d | " % s + " | ".join(cells) + " |")
    ok = [(k, -r["perplexity"], s) for (s, k), r in res.items()
          if "error" not in r and r["perplexity"] <= P0 * (1 + a.budget)]
    lines.append("")
    if ok:
        k, negp, s = max(ok)
        lines.append("Recommended for a +%.0f%% perplexity budget: --layer-parallel %d:%d (%d pairs, %d of %d "
                     "layers paired), perplexity %.4f (x%.3f)." % (100 * a.budget, s, s + 2 * k, k, 2 * k, L,
                                                                  -negp, -negp / P0))
    else:
        lines.append("No range stays within +%.0f%% perplexity." % (100 * a.budget))
    best1 = [(r["perplexity"], s) for (s, k), r in res.items() if k == 1 and "error" not in r]
    if best1:
        p, s = min(best1)
        lines.append("Cheapest single pair: %d:%d (x%.3f)." % (s, s + 2, p / P0))
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"baseline": base, "layers": L,
                       "runs": [dict(r, start=s, pairs=k) for (s, k), r in sorted(res.items())]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
