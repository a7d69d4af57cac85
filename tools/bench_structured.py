#!/usr/bin/env python3
"""Constrained vs free decoding, end to end: the cost of the grammar mask.

Starts slimserve on a free loopback port and runs rounds of S concurrent
completions of T tokens each (ignore_eos), alternating free and constrained
rounds (A/B/A/B...). The constrained requests carry a grammar for a JSON list
of {name, age, tags} objects that never closes, so both kinds produce exactly
T tokens. A round's step time is its wall time / T; the
overhead is constrained / free - 1, from the medians of the warm rounds (the
first constrained round, with the mask store still cold, is shown apart).

    python3 tools/bench_structured.py --bin build/server/slimserve --model gemma.gguf \
        --streams 1,16 --tokens 64 --rounds 3
Traffic stays on 127.0.0.1; every request is bounded by --timeout-s.
"""
import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time

from bench_serving import free_port, stop_server, wait_health  # same folder

# A JSON list of objects that never closes (so both kinds make exactly T
# tokens): what a schema {"type": "array", "items": {name, age, tags}} gives.
GRAMMAR = r"""root ::= "[" ws item (ws "," ws item)*
item ::= "{" ws "\"name\"" ws ":" ws str ws "," ws "\"age\"" ws ":" ws int ws "," ws "\"tags\"" ws ":" ws tags ws "}"
tags ::= "[" ws (str (ws "," ws str){0,2})? ws "]"
str ::= "\"" [^"\\\x00-\x1F]{0,24} "\""
int ::= "0" | [1-9] [0-9]{0,2}
ws ::= [ \n]{0,4}
"""
PROMPT = "Here is a JSON list of people with their name, age and tags:\n"


def one(port, body, timeout, out, i):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = json.loads(r.read())
    conn.close()
    out[i] = (r.status, data)


def run_round(port, streams, tokens, constrained, seed, timeout):
    body = {"prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True, "temperature": 1.0}
    if constrained:
        body["structured_outputs"] = {"grammar": GRAMMAR}
    out = [None] * streams
    threads = [threading.Thread(target=one, args=(port, {**body, "seed": seed * 1000 + i}, timeout, out, i))
               for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    for st, data in out:
        if st != 200 or data["usage"]["completion_tokens"] != tokens:
            raise RuntimeError(f"bad answer {st}: {json.dumps(data)[:300]}")
    return dt * 1e3 / tokens


def main():
    ap = argparse.ArgumentParser()
    for name, kw in (("--bin", {"required": True}), ("--model", {"required": True}), ("--streams", {"default": "1,16"}),
                     ("--tokens", {"type": int, "default": 64}), ("--rounds", {"type": int, "default": 3}),
                     ("--timeout-s", {"type": int, "default": 600}), ("server_args", {"nargs": "*"})):
        ap.add_argument(name, **kw)
    a = ap.parse_args()
    port = free_port()
    srv = subprocess.Popen([a.bin, "serve", "--model", a.model, "--port", str(port), "--log-level", "warn"]
                           + a.server_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_health(port, srv)
        run_round(port, 1, 8, False, 0, a.timeout_s)  # warm the model pages
        print(f"{'streams':>7} {'free ms/step':>13} {'constrained cold':>17} {'constrained warm':>17} {'overhead':>9}")
        for s in [int(x) for x in a.streams.split(",")]:
            free, con = [], []
            cold = None
            for r in range(a.rounds + 1):
                free.append(run_round(port, s, a.tokens, False, r, a.timeout_s))
                c = run_round(port, s, a.tokens, True, r, a.timeout_s)
                if r == 0:
                    cold = c
                else:
                    con.append(c)
            f, c = statistics.median(free), statistics.median(con)
            print(f"{s:>7} {f:>13.2f} {cold:>17.2f} {c:>17.2f} {100 * (c / f - 1):>8.1f}%", flush=True)
    finally:
        stop_server(srv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
