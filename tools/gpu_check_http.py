#!/usr/bin/env python3
"""The engine and HTTP part of tools/gpu_check.sh: the same models served by
the CPU backend and by the CUDA backend, greedy outputs compared.

    python3 tools/gpu_check_http.py --bin build-gpu/meson/server/slimserve \\
        [--device N] [--workdir DIR] [--gpu-backend cuda] [--streams 64]

For each generated model (llama f32 / q8_0 / q4_0, gemma3 with a sliding
window and final soft-capping, SUBLLM, llama with a layer-parallel range run
as the backend asks (merged GEMMs on CUDA) and branch by branch (fork2's two
streams on CUDA), gemma3 with a layer-parallel range (post-norms) a
CPU server and a CUDA server answer the same 8 greedy completions (16 tokens,
ignore_eos); then 64 concurrent streams on the main model (Gemma 3 270M if
SLIMSERVE_GEMMA_GGUF names it, else a generated 10M model). Two generated LTE
models (random routers) run the CUDA lte_ffn: one at 50% sparsity with 8
concurrent requests (grouped path), one at 2% sparsity served one request at a
time (a decode step of 1 row with all 8 of its experts on, most of them here,
takes the dense fallback: engine/lte.c use_dense).

Greedy outputs of two backends can part where two logits nearly tie (the GEMMs
round their operands to F16/BF16 on the GPU), so a check passes when at least
--min-match (default 0.9) of its completions are identical; the figures are
printed either way. --gpu-backend cpu runs the whole script with a CPU server
in the GPU's place (the harness check that runs without a GPU: all identical).
Python standard library only. The last line is the one-line summary.
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serving import free_port, stop_server, wait_health  # noqa: E402


class Srv:
    def __init__(self, binary, model, backend, device, extra, log):
        self.port = free_port()
        # fp32 activations on both sides: the CUDA backend has no int8 path, and
        # the CPU's default (auto) may quantise activations on AVX2
        cmd = [binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", str(self.port),
               "--backend", backend, "--device", str(device), "--activation-precision", "f32", *extra]
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            wait_health(self.port, self.proc, timeout=300)
        except RuntimeError:
            stop_server(self.proc)
            raise

    def complete(self, prompt, max_tokens):
        body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                           "ignore_eos": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())["choices"][0]["text"]

    def stop(self):
        stop_server(self.proc)


def prompts(n):
    return [f"Story {i}: the {['red', 'old', 'quiet', 'small'][i % 4]} house on hill {i * 7}"
            for i in range(n)]


def run_all(srv, ps, max_tokens):
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(ps)) as ex:
        return list(ex.map(lambda p: srv.complete(p, max_tokens), ps))


def compare(args, model, extra, n, max_tokens, name):
    """CPU vs GPU server on model: (identical, n) and one printed line."""
    outs = []
    for backend in ("cpu", args.gpu_backend):
        log = os.path.join(args.workdir, f"{name}-{backend}.log")
        srv = Srv(args.bin, model, backend, args.device, extra, log)
        try:
            outs.append(run_all(srv, prompts(n), max_tokens))
        finally:
            srv.stop()
    same = sum(x == y for x, y in zip(*outs))
    ok = same >= args.min_match * n
    print(f"{name:<28} {same}/{n} greedy completions identical ({max_tokens} tokens) "
          f"{'ok' if ok else 'FAIL'}", flush=True)
    if not ok:
        for x, y in list(zip(*outs))[:3]:
            print(f"    cpu: {x!r}\n    gpu: {y!r}")
    return ok


def gen(args, name, *flags):
    path = os.path.join(args.workdir, name + ".gguf")
    if not os.path.exists(path):
        subprocess.run([args.bin, "gen-model", "--out", path, *flags], check=True, timeout=600,
                       stdout=subprocess.DEVNULL)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--workdir", default="build-gpu/http")
    ap.add_argument("--gpu-backend", default="cuda")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--min-match", type=float, default=0.9)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    os.environ.setdefault("SLIMSERVE_CUDA_UNVERIFIED", "1")
    checks = [
        ("llama f32", ["--size", "1M"], []),
        ("llama q8_0", ["--size", "10M", "--type", "q8_0"], []),
        ("llama q4_0 tied", ["--size", "10M", "--type", "q4_0", "--tied"], []),
        ("gemma3 swa+softcap f16", ["--size", "1M", "--arch", "gemma3", "--type", "f16",
                                    "--swa-window", "8", "--swa-pattern", "2",
                                    "--logit-softcap", "30"], []),
        ("subllm", ["--size", "1M", "--arch", "subllm"], []),
        ("llama layer-parallel 1:3", ["--size", "1M"], ["--layer-parallel", "1:3"]),
        ("lte grouped", ["--size", "1M", "--ffn", "256", "--lte-expert-size", "32",
                         "--lte-sparsity", "0.5"], []),
        ("lte dense-fallback", ["--size", "1M", "--ffn", "256", "--lte-expert-size", "32",
                                "--lte-sparsity", "0.02"], ["--max-num-seqs", "1"]),
        ("llama layer-parallel 1:3 branches", ["--size", "1M"],
         ["--layer-parallel", "1:3", "--lp-exec", "branches"]),
        ("gemma3 layer-parallel 0:2 f16", ["--size", "1M", "--arch", "gemma3", "--type", "f16"],
         ["--layer-parallel", "0:2"]),
    ]
    passed, total = 0, 0
    for name, gflags, sflags in checks:
        total += 1
        model = gen(args, name.split()[0] + "-" + "-".join(f.strip("-") for f in gflags), *gflags)
        try:
            passed += compare(args, model, sflags, 8, 16, name.replace(" ", "_"))
        except Exception as e:  # a server that did not start or answer is a failure
            print(f"{name:<28} FAIL: {e}", flush=True)
    main_model = os.environ.get("SLIMSERVE_GEMMA_GGUF") or gen(args, "main-10M", "--size", "10M")
    total += 1
    try:
        passed += compare(args, main_model, ["--max-num-seqs", str(args.streams)],
                          args.streams, 32, f"{args.streams}_streams_" + os.path.basename(main_model))
    except Exception as e:
        print(f"{args.streams} streams FAIL: {e}", flush=True)
    print(f"http: {passed}/{total} engine/HTTP checks passed ({args.gpu_backend} vs cpu)")
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
