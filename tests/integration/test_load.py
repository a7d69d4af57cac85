"""Load test: `slimserve bench` with 32 concurrent clients sends 200 streamed
requests to a fresh server on 127.0.0.1. Zero errors, and the server's
/metrics counters equal what the clients received.

Bounded: 200 requests, bench --timeout-s 120, and a subprocess timeout."""
import json
import subprocess

import pytest

from conftest import Server, get_metrics, slimserve_bin

CLIENTS = 32
REQUESTS = 200
PROMPT_LEN = 24
OUTPUT_LEN = 12


@pytest.fixture(scope="module")
def load_srv(models, tmp_path_factory):
    s = Server(models["bpe"], tmp_path_factory.mktemp("load"), "--max-num-seqs", "64",
               "--log-level", "warn", name="load")
    try:
        yield s
    finally:
        s.stop_checked()


def test_bench_load(load_srv):
    p = subprocess.run(
        [slimserve_bin(), "bench", "--host", load_srv.host, "--port", str(load_srv.port),
         "--concurrency", str(CLIENTS), "--num-requests", str(REQUESTS),
         "--prompt-len", str(PROMPT_LEN), "--output-len", str(OUTPUT_LEN), "--ignore-eos",
         "--timeout-s", "120", "--json"],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"rc={p.returncode} stdout={p.stdout} stderr={p.stderr[-2000:]}"
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    r = json.loads(lines[-1])
    assert r["completed"] == REQUESTS and r["failed"] == 0, r.get("first_error")
    assert r["usage_missing"] == 0
    assert r["total_output_tokens"] == REQUESTS * OUTPUT_LEN  # ignore_eos: every token counts
    s, _ = get_metrics(load_srv)
    assert s[("slimserve:generation_tokens_total", "")] == r["total_output_tokens"]
    assert s[("slimserve:prompt_tokens_total", "")] == r["total_input_tokens"]
    assert s[("slimserve:e2e_request_latency_seconds_count", "")] == REQUESTS
    assert s[("slimserve:request_success_total", '{finished_reason="length"}')] == REQUESTS
    assert s[("slimserve:num_requests_running", "")] == 0
    assert load_srv.alive()
