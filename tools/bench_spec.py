#!/usr/bin/env python3
"""Speculative decoding benchmark: single-stream decode speed with n-gram
drafts on and off, on a workload whose output repeats its prompt and on one
that does not.

    python3 tools/bench_spec.py --bin build/server/slimserve --model M.gguf [--rounds 5]

Starts one slimserve (prefix cache off, so every request prefills the same
way) and alternates requests with "speculative": true and false (the
per-request opt-out: both run on the same process, under the same machine
load). Each request streams; decode speed is (tokens - 1) / (time of the
last token - time of the first), so prefill is left out. Per workload:
the median decode tok/s of each side over --rounds rounds, their ratio
(spec / plain), the median of the per-pair ratios (each spec request over
the plain one run next to it), the engine steps each side took (from
/metrics: fewer steps for the same tokens is the work speculation saves),
the CPU-time ratio (the server's user+system
CPU seconds per generated token, plain / spec, from /proc: the work each
side did, which the machine's other load does not stretch the way it
stretches wall time), the acceptance counters from /metrics, and a check
that both sides produced the same text (speculation must not change it).

Workloads (prompts below):
  repeat    "rewrite this code with one change": greedy, the answer copies
            most of the prompt;
  sampled   open-ended prompts, temperature 0.8, fixed seeds: text that
            does not repeat its prompt;
  greedy    the same open-ended prompts, greedy (a small model's greedy
            text often loops, which drafts pick up).
Extra server flags go after `--`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

from bench_serving import free_port, wait_health  # tools/ is this script's directory

CODE = '''def parse_config(path):
    config = {}
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, value = line.split("=", 1)
            config[key.strip()] = value.strip()
    return config


def load_users(path):
    users = []
    with open(path) as handle:
        for line in handle:
            name, email = line.strip().split(",")
            users.append({"name": name, "email": email})
    return users
'''

WORKLOADS = {
    "repeat": [
        {"prompt": "Rewrite the following Python code, renaming the variable `handle` to `f`. "
                   "Output only the code.\n\n" + CODE + "\nRewritten code:\n",
         "temperature": 0},
        {"prompt": "Here is some Python code:\n\n" + CODE + "\nThe same code with type hints "
                   "added to every function:\n", "temperature": 0},
    ],
    "sampled": [
        {"prompt": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
         "temperature": 0.8, "seed": 11},
        {"prompt": "Explain why the sky is blue to a ten-year-old.", "temperature": 0.8, "seed": 12},
    ],
    "greedy": [
        {"prompt": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
         "temperature": 0},
        {"prompt": "Explain why the sky is blue to a ten-year-old.", "temperature": 0},
    ],
}


def stream(port, body, timeout):
    """Returns (text, decode tok/s) of one streamed completion."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text, t_first, t_last, n = [], None, None, 0
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                n = ev["usage"]["completion_tokens"]
            for c in ev.get("choices", []):
                if c.get("text"):
                    now = time.perf_counter()
                    t_first = t_first or now
                    t_last = now
                    text.append(c["text"])
    rate = (n - 1) / (t_last - t_first) if t_first and t_last > t_first and n > 1 else 0.0
    return "".join(text), rate, n


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spec_counters(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        out = {}
        for line in r.read().decode().splitlines():
            for k in ("num_draft_tokens_total", "num_accepted_tokens_total", "num_drafts_total"):
                if line.startswith("slimserve:spec_decode_" + k + " "):
                    out[k] = float(line.split()[1])
            if line.startswith("slimserve:iteration_tokens_total_count "):
                out["steps"] = float(line.split()[1])
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/server/slimserve")
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--workloads", default="repeat,sampled,greedy")
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--server-log", default=None, help="file for the server's stdout/stderr (default: discarded)")
    a, extra = ap.parse_known_args()
    extra = [x for x in extra if x != "--"]
    port = free_port()
    log = open(a.server_log, "wb") if a.server_log else subprocess.DEVNULL
    proc = subprocess.Popen([a.bin, "serve", "--model", a.model, "--port", str(port), "--no-prefix-cache",
                             "--log-level", "warn"] + extra,
                            stdout=log, stderr=subprocess.STDOUT if a.server_log else subprocess.DEVNULL)
    try:
        wait_health(port, proc)
        stream(port, {"prompt": "Hello", "max_tokens": 4, "temperature": 0}, a.timeout_s)  # warm-up
        rows = []
        for wl in a.workloads.split(","):
            rates = {True: [], False: []}
            cpu = {True: [0.0, 0], False: [0.0, 0]}  # CPU seconds, tokens
            steps = {True: 0, False: 0}  # engine steps (prefill included; one request at a time)
            pairs = []
            same = True
            c0 = spec_counters(port)
            for rnd in range(a.rounds):
                for body in WORKLOADS[wl]:
                    texts, pair = {}, {}
                    # alternate which side goes first, round by round
                    for spec in ((True, False) if rnd % 2 == 0 else (False, True)):
                        b = dict(body, max_tokens=a.max_tokens, speculative=spec, ignore_eos=True)
                        c_0, s_0 = cpu_seconds(proc.pid), spec_counters(port)["steps"]
                        texts[spec], rate, n = stream(port, b, a.timeout_s)
                        cpu[spec][0] += cpu_seconds(proc.pid) - c_0
                        steps[spec] += spec_counters(port)["steps"] - s_0
                        cpu[spec][1] += n
                        rates[spec].append(rate)
                        pair[spec] = rate
                    if pair[False] > 0:
                        pairs.append(pair[True] / pair[False])
                    same = same and texts[True] == texts[False]
            c1 = spec_counters(port)
            drafted = c1["num_draft_tokens_total"] - c0["num_draft_tokens_total"]
            acc = c1["num_accepted_tokens_total"] - c0["num_accepted_tokens_total"]
            on, off = statistics.median(rates[True]), statistics.median(rates[False])
            cpu_ratio = (cpu[False][0] / cpu[False][1]) / (cpu[True][0] / cpu[True][1]) \
                if cpu[True][0] > 0 and cpu[False][1] > 0 else None
            row = {"workload": wl, "spec_tok_s": round(on, 2), "plain_tok_s": round(off, 2),
                   "ratio": round(on / off, 3) if off else None,
                   "pair_ratio": round(statistics.median(pairs), 3) if pairs else None,
                   "cpu_ratio": round(cpu_ratio, 3) if cpu_ratio else None, "draft_tokens": int(drafted),
                   "steps_spec": int(steps[True]), "steps_plain": int(steps[False]),
                   "accepted": int(acc), "acceptance": round(acc / drafted, 3) if drafted else None,
                   "same_text": same, "requests_per_side": len(rates[True])}
            rows.append(row)
            if a.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{wl:8s} spec {on:7.2f} tok/s  plain {off:7.2f} tok/s  ratio {row['ratio']}  "
                      f"pair ratio {row['pair_ratio']}  cpu ratio {row['cpu_ratio']}  "
                      f"drafts {int(drafted)} accepted {int(acc)} steps {int(steps[True])}/{int(steps[False])} "
                      f"same_text {same}", flush=True)
        return 0 if all(r["same_text"] for r in rows) else 1
    finally:
        if proc.poll() is not None:
            print(f"bench_spec: the server exited with status {proc.returncode}"
                  + (f" (log: {a.server_log})" if a.server_log else " (rerun with --server-log FILE)"), file=sys.stderr)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
