"""`slimserve bench` (the load generator) against the real server and a fake one.

All traffic stays on 127.0.0.1; every run is bounded by --num-requests,
--timeout-s and a subprocess timeout.
"""
import json
import os
import random
import re
import socket
import subprocess
import threading

import pytest

from conftest import request

BIN = os.environ.get("SLIMSERVE_BIN")
RUN_TIMEOUT = 180  # seconds, per bench process (its own --timeout-s is lower)


def _bench(*args, timeout=RUN_TIMEOUT):
    if not BIN:
        pytest.skip("SLIMSERVE_BIN not set")
    p = subprocess.run([BIN, "bench", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return p


def _bench_json(*args, **kw):
    p = _bench(*args, "--json", **kw)
    assert p.returncode in (0, 1), f"rc={p.returncode} stderr={p.stderr}"
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, p.stdout
    return p.returncode, json.loads(lines[0])


def _generation_tokens(srv):
    """The generation-token counter of /metrics, summed over its label sets; None if
    /metrics is 404 or has no such counter. A server exposing the counter under
    several names (slimserve: and vllm:) counts once: the first name seen wins."""
    status, _, body = request(srv, "GET", "/metrics", timeout=10)
    if status == 404:
        return None
    assert status == 200, body
    text = body.decode("utf-8", "replace")
    totals = {}
    for line in text.splitlines():
        # vLLM's counter, with its prefix or ours, e.g. slimserve:generation_tokens_total
        m = re.match(r"^((?:[A-Za-z_][\w]*[:_])?generation_tokens(?:_total)?)(\{[^}]*\})?\s+(\S+)",
                     line)
        if m and "request" not in m.group(1):
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return next(iter(totals.values())) if totals else None


def test_bench_against_server(server):
    """The conftest server (generated spm model): 12 requests, 4 at a time."""
    before = _generation_tokens(server)
    rc, r = _bench_json("--host", server.host, "--port", server.port, "--concurrency", 4,
                        "--num-requests", 12, "--prompt-len", 16, "--output-len", 8,
                        "--timeout-s", 150)
    assert r["completed"] == 12 and r["failed"] == 0, r.get("first_error")
    assert rc == 0
    assert r["total_output_tokens"] == 12 * 8
    assert r["usage_missing"] == 0
    assert r["total_input_tokens"] >= 12 * 16  # the server may add a BOS token
    assert r["duration"] > 0 and r["request_throughput"] > 0 and r["output_throughput"] > 0
    for k in ("ttft", "tpot", "itl", "e2el"):
        if k == "itl" and r["mean_itl_ms"] is None:
            continue  # the server may send each answer in one chunk: no gap to measure
        assert r[f"mean_{k}_ms"] is not None and r[f"p99_{k}_ms"] >= r[f"median_{k}_ms"] >= 0
    assert r["mean_e2el_ms"] >= r["mean_ttft_ms"]
    if before is not None:
        after = _generation_tokens(server)
        assert after - before == 96


def test_bench_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    rc, r = _bench_json("--port", port, "--num-requests", 3, "--timeout-s", 20, timeout=60)
    assert rc == 1 and r["completed"] == 0 and r["failed"] == 3
    assert "connect" in r["first_error"]


def test_bench_bad_flags():
    p = _bench("--concurrency", "0", timeout=30)
    assert p.returncode == 2 and "concurrency" in p.stderr
    p = _bench("--no-such-flag", timeout=30)
    assert p.returncode == 2


# ---- a fake OpenAI server that splits its writes anywhere ----

def _fake_conn(conn, mode, seen):
    rnd = random.Random(len(seen))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = conn.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            n = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            while len(buf) < n:
                buf += conn.recv(65536)
            body, buf = json.loads(buf[:n]), buf[n:]
            seen.append(body)
            if mode == "400":
                e = b'{"error":{"message":"fake says no","type":"invalid_request_error"}}'
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(e), e))
                continue
            events = [{"choices": [{"index": 0, "text": f"w{i} ", "finish_reason": None}]}
                      for i in range(body["max_tokens"])]
            if mode == "errevent":
                events = events[:1] + [{"error": {"message": "fake engine failure"}}]
            else:
                events.append({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]),
                               "completion_tokens": body["max_tokens"]}})
            out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            for ev in events:
                data = b"data: " + json.dumps(ev).encode() + b"\r\n\r\n"
                cut = rnd.randint(1, len(data) - 1)  # one SSE event across two chunks
                out += b"%x\r\n%s\r\n%x\r\n%s\r\n" % (cut, data[:cut], len(data) - cut, data[cut:])
            out += b"6\r\ndata: \r\n8\r\n[DONE]\n\n\r\n0\r\n\r\n"
            i = 0
            while i < len(out):  # write in pieces of 1..7 bytes
                k = rnd.randint(1, 7)
                conn.sendall(out[i:i + k])
                i += k
    except OSError:
        pass
    finally:
        conn.close()


@pytest.fixture
def fake_server():
    servers = []

    def start(mode):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(64)
        seen = []

        def loop():
            while True:
                try:
                    c, _ = ls.accept()
                except OSError:
                    return
                threading.Thread(target=_fake_conn, args=(c, mode, seen), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()
        servers.append(ls)
        return ls.getsockname()[1], seen

    yield start
    for ls in servers:
        ls.close()


def test_bench_fake_split_stream(fake_server):
    port, seen = fake_server("ok")
    rc, r = _bench_json("--port", port, "--concurrency", 3, "--num-requests", 9, "--prompt-len", 5,
                        "--output-len", 6, "--timeout-s", 30, "--model", "m", timeout=60)
    assert rc == 0 and r["completed"] == 9 and r["failed"] == 0, r.get("first_error")
    assert r["total_output_tokens"] == 54 and r["total_input_tokens"] == 45
    assert r["mean_itl_ms"] is not None
    assert len(seen) == 9
    for b in seen:
        assert b["stream"] is True and b["stream_options"] == {"include_usage": True}
        assert b["ignore_eos"] is True and b["temperature"] == 0 and b["model"] == "m"
        assert len(b["prompt"]) == 5 and all(10 <= t <= 250 for t in b["prompt"])
    assert len({tuple(b["prompt"]) for b in seen}) == 9  # distinct prompts


def test_bench_fake_errors(fake_server):
    port, _ = fake_server("400")
    rc, r = _bench_json("--port", port, "--num-requests", 4, "--timeout-s", 30, timeout=60)
    assert rc == 1 and r["failed"] == 4 and r["first_error"] == "HTTP 400: fake says no"
    port, seen = fake_server("errevent")
    rc, r = _bench_json("--port", port, "--num-requests", 4, "--no-ignore-eos", "--timeout-s", 30,
                        timeout=60)
    assert rc == 1 and r["failed"] == 4 and "fake engine failure" in r["first_error"]
    assert all("ignore_eos" not in b for b in seen)
