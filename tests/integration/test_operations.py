"""The operator's switches (server/ops.c and the scheduler's queue policy),
against the real binary:
  - request ids: X-Request-Id taken when well-formed, else generated; echoed
    on every response (errors too) and, with --log-format json, in every log
    line of that request (each line one JSON object);
  - --api-key-file: several keys (comments and blank lines skipped), any one
    works, others get 401; an unreadable or empty file stops the start;
  - CORS: --cors-allow-origins answers allowed preflights (204) and adds the
    Access-Control-* headers for allowed origins only;
  - SSE keep-alive: a stream whose prompt takes long to prefill receives
    ": keep-alive" comments before its first token;
  - --max-queue-time: a request still waiting for a seat gets 503 +
    Retry-After (code queue_timeout), a stream too (its headers wait for the
    seat), while the running one is untouched;
  - priority: with one seat, waiting requests start lowest value first.
"""
import http.client
import json
import re
import subprocess
import threading
import time

import pytest

from conftest import HTTP_TIMEOUT, Server, assert_error, get_metrics, post_json, request, \
    slimserve_bin

RID = re.compile(r"[0-9a-f]{32}")


def waiting(srv):
    return get_metrics(srv)[0][("slimserve:num_requests_waiting", "")]


def wait_for(cond, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def open_stream(srv, body, headers=None):
    """Sends a streaming completion; returns the connection (response unread)."""
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=HTTP_TIMEOUT)
    c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)),
              headers={"Content-Type": "application/json", **(headers or {})})
    return c


# ---------------------------------------------------------------- request ids, JSON logs

def test_request_ids_and_json_log(models, tmp_path):
    with Server(models["spm"], tmp_path, "--log-format", "json", "--api-key", "k1",
                name="jsonlog") as srv:
        auth = {"Authorization": "Bearer k1"}
        st, body, hdrs = post_json(srv, "/v1/completions", {"prompt": "a", "max_tokens": 2},
                                   headers={**auth, "X-Request-Id": "client-id_42.x"})
        assert st == 200, body
        assert hdrs["x-request-id"] == "client-id_42.x"
        # generated when absent, and different each time
        ids = set()
        for _ in range(3):
            st, hdrs, _ = request(srv, "GET", "/health")
            assert st == 200 and RID.fullmatch(hdrs["x-request-id"]), hdrs
            ids.add(hdrs["x-request-id"])
        assert len(ids) == 3
        # malformed ones are replaced, errors carry one too
        for bad in ("has space", "x" * 200, "semi;colon"):
            st, hdrs, _ = request(srv, "GET", "/nope", headers={"X-Request-Id": bad})
            assert st == 404 and RID.fullmatch(hdrs["x-request-id"]), (bad, hdrs)
        st, hdrs, _ = request(srv, "POST", "/v1/completions", {"prompt": "a"},
                              headers={"X-Request-Id": "no-key"})
        assert st == 401 and hdrs["x-request-id"] == "no-key"
        # a stream echoes it too
        c = open_stream(srv, {"prompt": "a", "max_tokens": 3}, {**auth, "X-Request-Id": "s-1"})
        resp = c.getresponse()
        assert resp.status == 200 and resp.getheader("X-Request-Id") == "s-1"
        resp.read()
        c.close()
    lines = [ln for ln in srv.log().splitlines() if ln.strip()]
    recs = [json.loads(ln) for ln in lines]  # every line is one JSON object
    for r in recs:
        assert {"time", "level", "msg"} <= set(r), r
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]), r
    by_id = {}
    for r in recs:
        by_id.setdefault(r.get("request_id"), []).append(r["msg"])
    assert any("POST /v1/completions 200" in m for m in by_id["client-id_42.x"]), by_id
    assert any("POST /v1/completions 401" in m for m in by_id["no-key"])
    assert any("stream" in m for m in by_id["s-1"])
    # server lines (start, stop) have no request id
    assert any("serving model" in m for m in by_id[None])


def test_bad_log_format_refused(models, tmp_path):
    p = subprocess.run([slimserve_bin(), "serve", "--model", models["spm"], "--log-format", "xml"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 2 and b"--log-format" in p.stderr, p.stderr


# ---------------------------------------------------------------- API keys

def test_api_key_file(models, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team A\nsk-alpha\n\n   sk-beta  \r\n# old: sk-gamma\n")
    with Server(models["spm"], tmp_path, "--api-key-file", str(keys), "--api-key", "sk-flag",
                name="keys") as srv:
        for key in ("sk-alpha", "sk-beta", "sk-flag"):
            st, body, _ = post_json(srv, "/v1/completions", {"prompt": "a", "max_tokens": 1},
                                    headers={"Authorization": f"Bearer {key}"})
            assert st == 200, (key, body)
        for key in ("sk-gamma", "# team A", "sk-alph", ""):
            st, body, hdrs = post_json(srv, "/v1/completions", {"prompt": "a", "max_tokens": 1},
                                       headers={"Authorization": f"Bearer {key}"})
            assert_error(st, body, 401)
        assert request(srv, "GET", "/health")[0] == 200  # probes need no key


@pytest.mark.parametrize("content", [None, "# only comments\n\n"])
def test_api_key_file_unusable(models, tmp_path, content):
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    p = subprocess.run([slimserve_bin(), "serve", "--model", models["spm"], "--api-key-file",
                        str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 2, p.stderr
    assert b"--api-key-file" in p.stderr, p.stderr


# ---------------------------------------------------------------- CORS

def test_cors(models, tmp_path):
    with Server(models["spm"], tmp_path, "--cors-allow-origins",
                "https://app.example,http://localhost:3000", name="cors") as srv:
        pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
        st, hdrs, body = request(srv, "OPTIONS", "/v1/chat/completions", headers=pre)
        assert st == 204 and body == b"", (st, body)
        assert hdrs["access-control-allow-origin"] == "https://app.example"
        assert "POST" in hdrs["access-control-allow-methods"]
        assert "authorization" in hdrs["access-control-allow-headers"].lower()
        assert hdrs["vary"] == "Origin"
        # an origin not listed: no CORS (the plain 405 for OPTIONS)
        st, hdrs, _ = request(srv, "OPTIONS", "/v1/completions",
                              headers=dict(pre, Origin="https://evil.example"))
        assert st == 405 and "access-control-allow-origin" not in hdrs
        # actual requests
        st, hdrs, _ = request(srv, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 1},
                              headers={"Origin": "http://localhost:3000"})
        assert st == 200 and hdrs["access-control-allow-origin"] == "http://localhost:3000"
        assert "x-request-id" in hdrs["access-control-expose-headers"].lower()
        st, hdrs, _ = request(srv, "GET", "/v1/models", headers={"Origin": "https://x.example"})
        assert st == 200 and "access-control-allow-origin" not in hdrs
        st, hdrs, _ = request(srv, "GET", "/v1/models")  # no Origin: no CORS headers
        assert "access-control-allow-origin" not in hdrs
    with Server(models["spm"], tmp_path, "--cors-allow-origins", "*", name="cors-any") as srv:
        st, hdrs, _ = request(srv, "GET", "/v1/models", headers={"Origin": "https://x.example"})
        assert hdrs["access-control-allow-origin"] == "*" and "vary" not in hdrs
    p = subprocess.run([slimserve_bin(), "serve", "--model", models["spm"],
                        "--cors-allow-origins", "https://a.example, https://b.example"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 2 and b"--cors-allow-origins" in p.stderr


# ---------------------------------------------------------------- SSE keep-alive

def test_sse_keepalive_during_prefill(slow_model, tmp_path):
    """A 600-token prompt prefilled 16 tokens per step on one thread: the
    stream is open (admitted) long before its first token, and quiet periods
    of --sse-keepalive get a comment."""
    with Server(slow_model, tmp_path, "--sse-keepalive", "0.01", "--threads", "1",
                "--max-num-batched-tokens", "16", "--kv-cache-memory", "64MiB",
                name="keepalive") as srv:
        c = open_stream(srv, {"prompt": [10 + i % 200 for i in range(600)], "max_tokens": 2,
                              "ignore_eos": True})
        try:
            resp = c.getresponse()
            assert resp.status == 200
            comments, data = 0, []
            for _ in range(100000):
                line = resp.readline()
                if not line:
                    break
                line = line.rstrip(b"\r\n")
                if line.startswith(b":"):
                    assert line == b": keep-alive", line
                    if not data:
                        comments += 1
                elif line.startswith(b"data: "):
                    data.append(line[6:])
                    if line == b"data: [DONE]":
                        break
            assert data and data[-1] == b"[DONE]", data[-2:]
            assert comments >= 1, "no keep-alive comment before the first token"
            print(f"{comments} keep-alive comments before the first token")
        finally:
            c.close()


# ---------------------------------------------------------------- queue time, priority

def test_max_queue_time(slow_model, tmp_path):
    with Server(slow_model, tmp_path, "--max-num-seqs", "1", "--max-queue-time", "0.3",
                "--threads", "1", name="qtime") as srv:
        runner = open_stream(srv, {"prompt": "x", "max_tokens": 8000, "ignore_eos": True})
        try:
            resp = runner.getresponse()
            assert resp.status == 200 and resp.readline().startswith(b"data: ")
            st, body, hdrs = post_json(srv, "/v1/completions", {"prompt": "y", "max_tokens": 2})
            err = assert_error(st, body, 503)
            assert err["code"] == "queue_timeout" and "0.3" in err["message"], err
            assert hdrs["retry-after"]
            s2 = open_stream(srv, {"prompt": "z", "max_tokens": 2})
            r2 = s2.getresponse()  # not a 200 stream with an error event: a status
            assert r2.status == 503 and r2.getheader("Retry-After")
            assert json.loads(r2.read())["error"]["code"] == "queue_timeout"
            s2.close()
            # the running stream went on
            assert resp.readline().startswith(b"data: ") or resp.readline().startswith(b"data: ")
        finally:
            runner.close()
        samples, _ = get_metrics(srv)
        assert samples[("slimserve:request_success_total", '{finished_reason="error"}')] >= 2


def test_max_queue_time_spares_siblings_of_a_started_request(slow_model, tmp_path):
    """n = 2 with one seat: choice 0 runs (the stream has started), choice 1
    waits past --max-queue-time. The client is being served, so choice 1 must
    wait for the seat rather than end the stream with a queue_timeout error
    event (found by tools/soak.py)."""
    with Server(slow_model, tmp_path, "--max-num-seqs", "1", "--max-queue-time", "0.3",
                "--threads", "1", name="qsib") as srv:
        c = open_stream(srv, {"prompt": "x", "max_tokens": 300, "ignore_eos": True, "n": 2})
        try:
            r = c.getresponse()
            assert r.status == 200
            text = r.read().decode()
        finally:
            c.close()
        events = [l[6:] for l in text.split("\n") if l.startswith("data: ")]
        assert events[-1] == "[DONE]", events[-3:]
        assert not any('"error"' in e for e in events), [e for e in events if '"error"' in e]
        finishes = {}
        for e in events[:-1]:
            for ch in json.loads(e).get("choices", []):
                if ch.get("finish_reason"):
                    finishes[ch["index"]] = ch["finish_reason"]
        assert finishes == {0: "length", 1: "length"}, finishes


def test_priority_orders_the_queue(slow_model, tmp_path):
    """One seat, held by a long stream; five requests queue with priorities;
    when the seat frees, they start lowest value first (arrival order among
    equals). With one seat each runs to its end (40 tokens) before the next is
    admitted, so the order of their lines in the server's log (written as each
    response completes, named by X-Request-Id) is the admission order; the
    generations keep the completions apart in time (two that end in one MHD
    pass may be logged in either order, and client threads wake in any)."""
    with Server(slow_model, tmp_path, "--max-num-seqs", "1", "--threads", "1",
                name="prio") as srv:
        holder = open_stream(srv, {"prompt": "x", "max_tokens": 8000, "ignore_eos": True})
        resp = holder.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")
        prios = [("a", 5), ("b", 0), ("c", -3), ("d", 0), ("e", 10)]
        conns, threads = [], []

        def wait_start(name, c):
            c.getresponse().read()

        for i, (name, prio) in enumerate(prios):
            c = open_stream(srv, {"prompt": name, "max_tokens": 40, "ignore_eos": True,
                                  "priority": prio},
                            headers={"X-Request-Id": f"prio-{name}"})
            conns.append(c)
            wait_for(lambda: waiting(srv) == i + 1, f"{name} queued")
            t = threading.Thread(target=wait_start, args=(name, c), daemon=True)
            t.start()
            threads.append(t)
        holder.close()  # the seat frees: the queue drains in priority order
        for t in threads:
            t.join(HTTP_TIMEOUT)
        for c in conns:
            c.close()
        done = lambda: re.findall(r"\[prio-(\w)\] POST /v1/completions 200", srv.log())
        wait_for(lambda: len(done()) == 5, "five responses logged")
        assert done() == ["c", "b", "d", "a", "e"], done()
        st, body, _ = post_json(srv, "/v1/completions", {"prompt": "a", "priority": "high"})
        assert_error(st, body, 400, "priority")
