"""slimserve behind real nginx, configured with deploy/nginx.conf.

The real binary ($SLIMSERVE_BIN) serves a generated model on a free 127.0.0.1 port;
nginx (Debian's nginx-light or nginx; skipped when absent) runs in the foreground
with a temporary prefix, a minimal main config that includes deploy/nginx.conf
with its upstream and listen ports substituted, and pid, logs and temp paths under
the test's tmp dir. It works as root (workers then run as root too, so they can
reach pytest's 0700 tmp dirs) and as non-root (nginx ignores `user` there; the
listen port is above 1024; nginx_util.py runs it). Both processes are always stopped.

What the config is checked to do:
  - pass completions through unchanged (greedy output equals the direct one);
  - stream SSE unbuffered: the first chunk arrives while slimserve is still
    generating (checked on its /metrics), chunks come in many separate reads,
    and streams are not gzip'ed even though the wrapping http{} enables gzip;
  - pass Authorization through (slimserve runs with --api-key);
  - keep idle upstream connections open (keepalive);
  - pass /health and /metrics through;
  - bodies: exactly 16 MiB passes both; 16 MiB + 1 byte is refused by NGINX (it
    checks Content-Length against client_max_body_size before the upstream sees
    anything) with a 413 in slimserve's JSON error shape from the config's
    @too_large location; a body over a lower slimserve --max-body gets
    SLIMSERVE's own JSON 413 through nginx;
  - 8 parallel clients all succeed with the direct greedy answers;
  - a client that leaves mid-stream makes slimserve abort the generation.
  - a wrong key with a multi-MiB body comes back as slimserve's 401 (slimserve
    drains a body it will not use before answering, so nginx never sees a reset).
SLIMSERVE_NGINX_CONF=path tests another config file instead of deploy/nginx.conf.
"""
import http.client
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from conftest import HTTP_TIMEOUT, Server, assert_error, get_metrics, request
from nginx_util import Endpoint, Nginx, nginx_bin

REPO = Path(__file__).resolve().parents[2]
# SLIMSERVE_NGINX_CONF: test another config file (e.g. a site's edited copy).
NGINX_CONF = Path(os.environ.get("SLIMSERVE_NGINX_CONF") or REPO / "deploy" / "nginx.conf")
API_KEY = "sk-nginx-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Streaming clients ask for compression like the OpenAI SDK (httpx) does.
STREAM_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate", **AUTH}
MODEL_NAME = "tiny"
MIB = 1 << 20


def render_site(upstream_port, listen_port):
    """deploy/nginx.conf with the upstream and listen ports substituted."""
    text = NGINX_CONF.read_text()
    text, n_up = re.subn(r"(?m)^(\s*server\s+)127\.0\.0\.1:8080;",
                         rf"\g<1>127.0.0.1:{upstream_port};", text)
    text, n_listen = re.subn(r"(?m)^(\s*listen\s+)80;", rf"\g<1>127.0.0.1:{listen_port};", text)
    assert n_up == 1 and n_listen == 1, "deploy/nginx.conf: expected one upstream " \
        "'server 127.0.0.1:8080;' line and one 'listen 80;' line"
    return text


class Stack:
    """slimserve + nginx in front of it. Always torn down by close()."""

    def __init__(self, model, workdir, *server_args, name="nginx"):
        nginx_bin()  # skip before starting anything
        self.server = Server(model, workdir, "--served-model-name", MODEL_NAME,
                             "--api-key", API_KEY, *server_args, name=name)
        try:
            self.nginx = Nginx(lambda listen: render_site(self.server.port, listen), workdir)
        except BaseException:
            self.server.stop()
            raise
        self.direct = Endpoint(self.server.host, self.server.port)
        self.proxy = Endpoint(self.nginx.host, self.nginx.port)

    def close(self):
        try:
            rc_n = self.nginx.stop()
        finally:
            self.server.stop_checked()
        assert rc_n == 0, f"nginx exit code {rc_n}:\n{self.nginx.log()}"


@pytest.fixture(scope="module")
def stack(slow_model, tmp_path_factory):
    """Server on the slow model (a long generation takes seconds) with default
    limits, behind nginx. One thread: steadier on a shared, loaded machine."""
    s = Stack(slow_model, tmp_path_factory.mktemp("nginx"), "--kv-cache-memory", "64MiB",
              "--max-num-seqs", "16", "--threads", "1")
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------- helpers

def post(ep, path, obj, headers=AUTH, timeout=HTTP_TIMEOUT):
    status, hdrs, data = request(ep, "POST", path, obj, headers, timeout)
    try:
        body = json.loads(data) if data else None
    except ValueError:
        body = data
    return status, body, hdrs


def completion(ep, **params):
    status, body, _ = post(ep, "/v1/completions", dict(params, model=MODEL_NAME))
    assert status == 200, body
    return body


def stream_timed(ep, params, path="/v1/completions", max_seconds=HTTP_TIMEOUT):
    """A streaming request. Returns (headers, [(arrival seconds, event)]), events
    parsed JSON or "[DONE]"; arrival measured from sending the request."""
    conn = http.client.HTTPConnection(ep.host, ep.port, timeout=HTTP_TIMEOUT)
    try:
        t0 = time.monotonic()
        conn.request("POST", path, body=json.dumps(dict(params, model=MODEL_NAME, stream=True)),
                     headers=STREAM_HEADERS)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        assert "content-encoding" not in hdrs, hdrs
        events = []
        while time.monotonic() - t0 < max_seconds and len(events) < 100000:
            line = resp.readline()
            if not line:
                break
            t = time.monotonic() - t0
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            assert line.startswith(b"data: "), line
            payload = line[6:]
            events.append((t, "[DONE]" if payload == b"[DONE]" else json.loads(payload)))
        return hdrs, events
    finally:
        conn.close()


def stream_text(events):
    return "".join(e["choices"][0]["text"] for _, e in events
                   if e != "[DONE]" and e.get("choices"))


def upstream_established(port):
    """ESTABLISHED TCP connections from a loopback client to 127.0.0.1:port."""
    target = f"0100007F:{port:04X}"
    n = 0
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp to count connections")
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[2] == target and fields[3] == "01":
                n += 1
    return n


# ---------------------------------------------------------------- tests

def test_completion_equals_direct(stack):
    params = dict(prompt="The quick brown fox", max_tokens=24, temperature=0, ignore_eos=True)
    direct = completion(stack.direct, **params)
    proxied = completion(stack.proxy, **params)
    assert proxied["choices"][0]["text"] == direct["choices"][0]["text"]
    assert proxied["usage"] == direct["usage"]
    assert proxied["usage"]["completion_tokens"] == 24


def test_chat_through_proxy(stack):
    status, body, hdrs = post(stack.proxy, "/v1/chat/completions",
                              {"model": MODEL_NAME, "max_tokens": 4,
                               "messages": [{"role": "user", "content": "hi"}]})
    # The generated model may carry no chat template: either answer is slimserve's.
    assert status in (200, 400), body
    assert hdrs["content-type"].startswith("application/json")


def test_authorization_passes_through(stack):
    params = {"model": MODEL_NAME, "prompt": "a", "max_tokens": 1}
    status, body, _ = post(stack.proxy, "/v1/completions", params, headers={})
    assert_error(status, body, 401)
    status, body, _ = post(stack.proxy, "/v1/completions", params,
                           headers={"Authorization": "Bearer wrong"})
    assert_error(status, body, 401)
    status, body, _ = post(stack.proxy, "/v1/completions", params)
    assert status == 200, body


def test_stream_through_proxy(stack):
    """A whole stream through nginx: SSE headers, several chunks, [DONE] last, and
    the same text as the direct stream and the non-streaming answer."""
    params = dict(prompt="Once upon a time", max_tokens=200, temperature=0, ignore_eos=True)
    hdrs, events = stream_timed(stack.proxy, params)
    assert hdrs["content-type"].startswith("text/event-stream"), hdrs
    assert "x-accel-buffering" not in hdrs  # nginx consumes slimserve's header
    assert events and events[-1][1] == "[DONE]", events[-3:]
    assert all(e != "[DONE]" for _, e in events[:-1])
    chunks = [t for t, e in events if e != "[DONE]"]
    assert len(chunks) >= 10, len(chunks)
    print(f"stream via nginx: {len(chunks)} chunks, first at {chunks[0] * 1e3:.0f} ms, "
          f"last at {chunks[-1] * 1e3:.0f} ms")
    _, direct_events = stream_timed(stack.direct, params)
    assert stream_text(events) == stream_text(direct_events)
    full = completion(stack.proxy, **params)
    assert stream_text(events) == full["choices"][0]["text"]


def running(stack):
    samples, _ = get_metrics(stack.direct)
    return samples[("slimserve:num_requests_running", "")]


def aborted(stack):
    samples, _ = get_metrics(stack.direct)
    return samples[("slimserve:request_success_total", '{finished_reason="abort"}')]


def test_stream_arrives_while_generating(stack):
    """Not buffered: the first chunk reaches the client through nginx while
    slimserve is still generating (a long max_tokens), the next chunks arrive in
    many separate reads over time, not as one burst. Then the client leaves:
    nginx closes the upstream connection and slimserve aborts the generation."""
    max_tokens = 4000
    abort_before = aborted(stack)
    conn = http.client.HTTPConnection(stack.proxy.host, stack.proxy.port, timeout=HTTP_TIMEOUT)
    try:
        t0 = time.monotonic()
        conn.request("POST", "/v1/completions",
                     body=json.dumps({"model": MODEL_NAME, "prompt": "x", "stream": True,
                                      "max_tokens": max_tokens, "ignore_eos": True}),
                     headers=STREAM_HEADERS)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        assert resp.getheader("Content-Encoding") is None
        # Raw reads: each returns what nginx has forwarded so far.
        buf, reads, n_events = b"", [], 0
        while n_events < 21 and len(reads) < 1000 and time.monotonic() - t0 < HTTP_TIMEOUT:
            data = resp.read1(65536)
            assert data, "stream ended early"
            reads.append((time.monotonic() - t0, data.count(b"data: ")))
            buf += data
            if n_events == 0 and b"\n\n" in buf:
                # The first event is here: the generation must still be going.
                assert running(stack) >= 1, "first chunk arrived only after generation ended"
            n_events = buf.count(b"\n\n")
        assert b"[DONE]" not in buf
        reads_with_events = sum(1 for _, n in reads if n)
        print(f"first chunk after {reads[0][0] * 1e3:.0f} ms; {n_events} events in "
              f"{reads_with_events} reads over {(reads[-1][0] - reads[0][0]) * 1e3:.0f} ms")
        assert reads_with_events >= 5, reads
    finally:
        conn.close()
    # The client is gone: slimserve must cancel, long before max_tokens.
    def aborted_lines():
        return [ln for ln in stack.server.log().splitlines() if "stream aborted" in ln]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (running(stack) or aborted(stack) == abort_before
                                           or not aborted_lines()):
        time.sleep(0.05)
    assert running(stack) == 0
    assert aborted(stack) == abort_before + 1
    lines = aborted_lines()
    assert lines, stack.server.log()[-3000:]
    n_gen = int(re.search(r"completion=(\d+)", lines[-1]).group(1))
    assert n_gen < max_tokens, lines[-1]


def test_health_and_metrics_pass_through(stack):
    status, _, body = request(stack.proxy, "GET", "/health", timeout=10)
    assert status == 200, body
    status_d, _, body_d = request(stack.direct, "GET", "/health", timeout=10)
    assert status_d == 200 and json.loads(body).keys() == json.loads(body_d).keys()
    samples, types = get_metrics(stack.proxy)  # also checks content-type and format
    direct_samples, direct_types = get_metrics(stack.direct)
    assert types == direct_types
    assert set(samples) == set(direct_samples)


def test_upstream_keepalive(stack):
    """Sequential requests leave idle connections open to slimserve (nginx reuses
    them) instead of closing each one."""
    for _ in range(5):
        completion(stack.proxy, prompt="a", max_tokens=1)
    n = upstream_established(stack.server.port)
    assert 1 <= n <= 16, n


def body_of_size(size):
    """A valid completion request of exactly `size` bytes (padded with spaces)."""
    head = json.dumps({"model": MODEL_NAME, "prompt": "pad", "max_tokens": 1}).encode()
    assert size >= len(head)
    return head + b" " * (size - len(head))


def test_body_at_limit_passes(stack):
    status, body, _ = post(stack.proxy, "/v1/completions", body_of_size(16 * MIB))
    assert status == 200, body


def test_oversized_body_rejected_by_nginx(stack):
    """16 MiB + 1 byte: nginx answers 413 itself (its client_max_body_size equals
    slimserve's default --max-body and it checks Content-Length first), in the
    OpenAI error shape, without passing the request on."""
    status, body, hdrs = post(stack.proxy, "/v1/completions", body_of_size(16 * MIB + 1))
    err = assert_error(status, body, 413)
    assert err["code"] == "body_too_large"
    assert "proxy limit" in err["message"], err  # nginx's @too_large, not slimserve
    assert hdrs["content-type"].startswith("application/json")
    assert "client intended to send too large body" in stack.nginx.log()


def test_oversized_chunked_body_rejected_by_nginx(stack):
    """The same for a chunked upload (no Content-Length): nginx counts the bytes."""
    def pieces():
        yield body_of_size(MIB)[:-1]  # JSON head, then spaces: 17 MiB in all
        for _ in range(16):
            yield b" " * MIB
    conn = http.client.HTTPConnection(stack.proxy.host, stack.proxy.port, timeout=HTTP_TIMEOUT)
    try:
        conn.request("POST", "/v1/completions", body=pieces(), encode_chunked=True,
                     headers={"Content-Type": "application/json", **AUTH})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    err = assert_error(resp.status, body, 413)
    assert "proxy limit" in err["message"], err


def test_server_413_passes_through(models, tmp_path_factory):
    """Under nginx's 16 MiB limit but over a lower slimserve --max-body: the 413 is
    slimserve's own JSON error, passed through unchanged."""
    s = Stack(models["spm"], tmp_path_factory.mktemp("nginx413"), "--max-body", "65536",
              name="nginx413")
    try:
        status, body, _ = post(s.proxy, "/v1/completions", body_of_size(100000))
        err = assert_error(status, body, 413)
        assert err["code"] == "body_too_large"
        assert "65536" in err["message"], err  # slimserve's message names its limit
        # The proxy and the upstream still work afterwards.
        status, body, _ = post(s.proxy, "/v1/completions",
                               {"model": MODEL_NAME, "prompt": "a", "max_tokens": 2})
        assert status == 200, body
    finally:
        s.close()


def test_wrong_key_with_large_body(stack):
    """A wrong key with a 4 MiB body should come back as slimserve's 401."""
    status, body, _ = post(stack.proxy, "/v1/completions", body_of_size(4 * MIB),
                           headers={"Authorization": "Bearer wrong"})
    assert_error(status, body, 401)


def test_parallel_clients(stack):
    """8 clients at once through nginx, streaming and not: all succeed, and each
    greedy answer equals the direct one for its prompt."""
    prompts = [f"client {i} says" for i in range(8)]
    want = {p: completion(stack.direct, prompt=p, max_tokens=16, temperature=0,
                          ignore_eos=True)["choices"][0]["text"] for p in prompts}
    got, errors = {}, []

    def run(i, p):
        try:
            params = dict(prompt=p, max_tokens=16, temperature=0, ignore_eos=True)
            if i % 2:
                _, events = stream_timed(stack.proxy, params)
                assert events[-1][1] == "[DONE]"
                got[p] = stream_text(events)
            else:
                got[p] = completion(stack.proxy, **params)["choices"][0]["text"]
        except BaseException as e:  # reported below, in the main thread
            errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HTTP_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert not errors, errors
    assert got == want
