#!/usr/bin/env python3
"""Serving benchmark: starts slimserve on a free loopback port and runs
`slimserve bench` at several concurrencies, one after the other in one run.

    python3 tools/bench_serving.py --bin build/server/slimserve --model M.gguf \
        --concurrency 1,4,16,64 --prompt-len 128 --output-len 64 [--requests-per-client 4]

Prints a table (output tok/s, req/s, TTFT/TPOT/ITL p50 and p99) and, with
--json, one JSON object per concurrency. Extra server flags go after `--`.
Traffic stays on 127.0.0.1; every run is bounded by --timeout-s.
"""
import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(port, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


def stop_server(srv):
    srv.terminate()
    try:
        srv.wait(timeout=30)
    except subprocess.TimeoutExpired:
        srv.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--max-token-id", type=int, default=250)
    ap.add_argument("--timeout-s", type=int, default=900)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("server_args", nargs="*")
    a = ap.parse_args()

    port = free_port()
    srv = subprocess.Popen([a.bin, "serve", "--model", a.model, "--port", str(port),
                            "--log-level", "warn"] + a.server_args,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_health(port, srv)
        for c in [int(x) for x in a.concurrency.split(",")]:
            n = max(a.min_requests, c * a.requests_per_client)
            cmd = [a.bin, "bench", "--port", str(port), "--concurrency", str(c),
                   "--num-requests", str(n), "--prompt-len", str(a.prompt_len),
                   "--output-len", str(a.output_len), "--max-token-id", str(a.max_token_id),
                   "--timeout-s", str(a.timeout_s), "--json"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout_s + 30)
            r = json.loads(out.stdout)
            r["concurrency"] = c
            rows.append(r)
            if a.json:
                print(json.dumps(r), flush=True)
    finally:
        stop_server(srv)
    if not a.json:
        print(f"{'conc':>5} {'reqs':>5} {'fail':>4} {'out tok/s':>10} {'req/s':>7} "
              f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'ITL p50':>8} {'ITL p99':>8}  (ms)")
        nan = float("nan")
        for r in rows:
            r = {**{k: nan for k in ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
                                     "median_itl_ms", "p99_itl_ms")},
                 **{k: v for k, v in r.items() if v is not None}}
            print(f"{r['concurrency']:>5} {r['completed']:>5} {r['failed']:>4} "
                  f"{r['output_throughput']:>10.1f} {r['request_throughput']:>7.2f} "
                  f"{r['median_ttft_ms']:>9.1f} {r['p99_ttft_ms']:>9.1f} {r['median_tpot_ms']:>9.2f} "
                  f"{r['median_itl_ms']:>8.2f} {r['p99_itl_ms']:>8.2f}")
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
