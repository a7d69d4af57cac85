#!/usr/bin/env python3
"""Side-by-side benchmark: slimserve against llama.cpp on the same GGUF file,
the same threads and the same load generator, runs alternating, medians.

    python3 tools/side_by_side.py --model M.gguf \
        --llama-bench /path/llama-bench --llama-server /path/llama-server \
        [--threads 2] [--rounds 3] [--concurrency 1,16,64] [--skip-serving]

llama.cpp is built outside the repository (README, "Side by side with
llama.cpp"). Two parts, each alternating the two programs round by round
(A B, then B A, ...):

1. Forward speed: `llama-bench -p 512 -n 128` (pp512, tg128) against
   slimserve's `bench_forward -p 512 -n 128` on one stream. Note: llama-bench's
   tg128 starts at an empty context, bench_forward decodes after the 512-token
   prefill, which makes slimserve's figure slightly pessimistic.
2. Serving: each server started fresh per concurrency N (llama-server with
   `-np N` and N slots of --slot-ctx tokens), loaded by `slimserve bench`
   (streamed /v1/completions with the same synthetic token-id prompts,
   ignore_eos) for N * --requests-per-client requests; output tok/s, TPOT p50,
   TTFT p50/p99 and the server's peak RSS (VmHWM) are recorded.

Prints one table of medians with the slimserve / llama.cpp ratio, and with
--json the raw per-round figures. Traffic stays on 127.0.0.1; every run is
bounded by --timeout-s.
"""
import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serving import free_port, wait_health  # noqa: E402  (one copy of the server helpers)




def peak_rss_mib(pid):
    """The process's peak resident set (VmHWM) in MiB, read before it stops."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run(cmd, timeout):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def forward_llama(a):
    out = run([a.llama_bench, "-m", a.model, "-p", "512", "-n", "128", "-t", str(a.threads),
               "-r", "1", "-o", "json"], a.timeout_s)
    pp = tg = None
    for row in json.loads(out):
        if row.get("n_prompt") == 512 and row.get("n_gen") == 0:
            pp = row["avg_ts"]
        if row.get("n_gen") == 128 and row.get("n_prompt") == 0:
            tg = row["avg_ts"]
    if pp is None or tg is None:
        raise RuntimeError("llama-bench printed no pp512/tg128 rows")
    return {"pp512": pp, "tg128": tg}


def forward_slim(a):
    out = run([a.bench_forward, a.model, "-p", "512", "-n", "128", "-t", str(a.threads), "-r", "1"] + shlex.split(a.forward_args),
              a.timeout_s)
    pp = re.search(r"^prefill .*?: ([0-9.]+) tokens/s", out, re.M)
    tg = re.search(r"^decode .*?: ([0-9.]+) tokens/s", out, re.M)
    if not pp or not tg:
        raise RuntimeError("bench_forward printed no prefill/decode line:\n" + out)
    return {"pp512": float(pp.group(1)), "tg128": float(tg.group(1))}


def server_cmd(a, who, port, conc):
    if who == "slimserve":
        return [a.slimserve, "serve", "--model", a.model, "--port", str(port), "--host", "127.0.0.1",
                "--threads", str(a.threads), "--log-level", "warn"] + a.slim_args
    return [a.llama_server, "-m", a.model, "--port", str(port), "--host", "127.0.0.1", "-t",
            str(a.threads), "-np", str(conc), "-c", str(conc * a.slot_ctx)] + a.llama_args


def serve_once(a, who, conc):
    port = free_port()
    srv = subprocess.Popen(server_cmd(a, who, port, conc), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_health(port, srv, a.timeout_s)
        n = max(a.min_requests, conc * a.requests_per_client)
        out = run([a.slimserve, "bench", "--port", str(port), "--concurrency", str(conc),
                   "--num-requests", str(n), "--prompt-len", str(a.prompt_len),
                   "--output-len", str(a.output_len), "--min-token-id", str(a.min_token_id),
                   "--max-token-id", str(a.max_token_id), "--timeout-s", str(a.timeout_s), "--json"],
                  a.timeout_s + 30)
        r = json.loads(out)
        r["peak_rss_mib"] = peak_rss_mib(srv.pid)
        if r.get("failed"):
            raise RuntimeError(f"{who}: {r['failed']} of {n} requests failed at concurrency {conc}")
        return r
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def alternate(rounds, fa, fb):
    """Runs fa and fb `rounds` times, the order swapped every round."""
    ra, rb = [], []
    for i in range(rounds):
        for f, acc in ((fa, ra), (fb, rb)) if i % 2 == 0 else ((fb, rb), (fa, ra)):
            acc.append(f())
    return ra, rb


def ratio(x, y):
    return x / y if y else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--slimserve", default=os.path.join(ROOT, "build/server/slimserve"))
    ap.add_argument("--bench-forward", default=os.path.join(ROOT, "build/tools/bench_forward"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--slot-ctx", type=int, default=256, help="llama-server context per slot")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--min-token-id", type=int, default=1000)
    ap.add_argument("--max-token-id", type=int, default=20000)
    ap.add_argument("--timeout-s", type=int, default=900)
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--skip-serving", action="store_true")
    ap.add_argument("--slim-args", nargs="*", default=[], help="extra slimserve serve flags")
    ap.add_argument("--llama-args", nargs="*", default=[], help="extra llama-server flags")
    ap.add_argument("--forward-args", default="",
                    help="extra bench_forward flags as one string, e.g. --forward-args='-a int8' "
                         "beside --slim-args=--activation-precision=int8")
    ap.add_argument("--json", action="store_true", help="also print the raw rounds as JSON")
    a = ap.parse_args()
    if a.slot_ctx < a.prompt_len + a.output_len + 8:
        ap.error("--slot-ctx must hold --prompt-len + --output-len")

    lines, raw = [], {}
    print(f"model {os.path.basename(a.model)}, {a.threads} threads, {a.rounds} rounds alternating, "
          "medians", flush=True)
    if not a.skip_forward:
        s, l = alternate(a.rounds, lambda: forward_slim(a), lambda: forward_llama(a))
        raw["forward"] = {"slimserve": s, "llama.cpp": l}
        for k in ("pp512", "tg128"):
            lines.append((f"{k} tok/s", med(s, k), med(l, k)))
    if not a.skip_serving:
        raw["serving"] = {}
        for c in [int(x) for x in a.concurrency.split(",")]:
            s, l = alternate(a.rounds, lambda: serve_once(a, "slimserve", c),
                             lambda: serve_once(a, "llama.cpp", c))
            raw["serving"][c] = {"slimserve": s, "llama.cpp": l}
            for k, name in (("output_throughput", "out tok/s"), ("median_tpot_ms", "TPOT p50 ms"),
                            ("median_ttft_ms", "TTFT p50 ms"), ("p99_ttft_ms", "TTFT p99 ms"),
                            ("peak_rss_mib", "peak RSS MiB")):
                lines.append((f"c={c} {name}", med(s, k), med(l, k)))
            print(f"  concurrency {c} done", file=sys.stderr, flush=True)
    print(f"{'measure':<22} {'slimserve':>11} {'llama.cpp':>11} {'ratio':>7}")
    for name, x, y in lines:
        print(f"{name:<22} {x:>11.2f} {y:>11.2f} {ratio(x, y):>7.2f}")
    if a.json:
        print(json.dumps(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
