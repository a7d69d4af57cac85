"""Every bad input gets the exact status and the OpenAI error shape, and the
srv keeps serving afterwards."""
import http.client
import json
import socket
import time

from conftest import Server, assert_error, complete, get_metrics, post_json, request

CTX = 256  # the fixture models' context
VOCAB = 512

# (body, status, param) - param None means "error.param is null"
BAD_BODIES = [
    ('{', 400, None),
    ('{"prompt": "x",}', 400, None),
    ('[1, 2, 3]', 400, None),
    ('"just a string"', 400, None),
    ('null', 400, None),
    ('', 400, None),
    ('{}', 400, "prompt"),
    ('{"prompt": null}', 400, "prompt"),
    ('{"prompt": ""}', 400, "prompt"),
    ('{"prompt": []}', 400, "prompt"),
    ('{"prompt": 5}', 400, "prompt"),
    ('{"prompt": {"a": 1}}', 400, "prompt"),
    ('{"prompt": [1, "a"]}', 400, "prompt"),
    ('{"prompt": [1, 2.5]}', 400, "prompt"),
    ('{"prompt": [%d]}' % VOCAB, 400, "prompt"),
    ('{"prompt": [-1]}', 400, "prompt"),
    ('{"prompt": ["a", "b"]}', 400, "prompt"),
    ('{"prompt": "hi", "model": "no-such-model"}', 404, "model"),
    ('{"prompt": "hi", "model": 7}', 400, "model"),
    ('{"prompt": "hi", "max_tokens": 0}', 400, "max_tokens"),
    ('{"prompt": "hi", "max_tokens": %d}' % (CTX + 1), 400, "max_tokens"),
    ('{"prompt": "hi", "max_tokens": "8"}', 400, "max_tokens"),
    ('{"prompt": "hi", "max_tokens": 2.5}', 400, "max_tokens"),
    ('{"prompt": "hi", "temperature": -1}', 400, "temperature"),
    ('{"prompt": "hi", "temperature": 2.5}', 400, "temperature"),
    ('{"prompt": "hi", "temperature": "warm"}', 400, "temperature"),
    ('{"prompt": "hi", "top_p": 0}', 400, "top_p"),
    ('{"prompt": "hi", "top_p": 1.01}', 400, "top_p"),
    ('{"prompt": "hi", "top_p": "x"}', 400, "top_p"),
    ('{"prompt": "hi", "top_k": -5}', 400, "top_k"),
    ('{"prompt": "hi", "top_k": "x"}', 400, "top_k"),
    ('{"prompt": "hi", "min_p": 1.5}', 400, "min_p"),
    ('{"prompt": "hi", "min_p": "x"}', 400, "min_p"),
    ('{"prompt": "hi", "seed": 0.5}', 400, "seed"),
    ('{"prompt": "hi", "seed": "x"}', 400, "seed"),
    ('{"prompt": "hi", "stop": 3}', 400, "stop"),
    ('{"prompt": "hi", "stop": ["a", 3]}', 400, "stop"),
    ('{"prompt": "hi", "stop": ["1","2","3","4","5","6","7","8","9"]}', 400, "stop"),
    ('{"prompt": "hi", "stream": "yes"}', 400, "stream"),
    ('{"prompt": "hi", "stream_options": {"include_usage": true}}', 400, "stream_options"),
    ('{"prompt": "hi", "stream": true, "stream_options": 1}', 400, "stream_options"),
    ('{"prompt": "hi", "n": 17}', 400, "n"),
    ('{"prompt": "hi", "n": 0}', 400, "n"),
    ('{"prompt": "hi", "n": "1"}', 400, "n"),
    ('{"prompt": "hi", "echo": "yes"}', 400, "echo"),
    ('{"prompt": "hi", "logprobs": 21}', 400, "logprobs"),
    ('{"prompt": "hi", "logprobs": "2"}', 400, "logprobs"),
    ('{"prompt": "hi", "user": 5, "n": 99}', 400, "n"),
    ('{"prompt": "hi", "best_of": 2}', 400, "best_of"),
    ('{"prompt": "hi", "presence_penalty": 2.5}', 400, "presence_penalty"),
    ('{"prompt": "hi", "frequency_penalty": -3}', 400, "frequency_penalty"),
    ('{"prompt": "hi", "repetition_penalty": 0}', 400, "repetition_penalty"),
    ('{"prompt": "hi", "logit_bias": {"%d": 1}}' % VOCAB, 400, "logit_bias"),
    ('{"prompt": "hi", "logit_bias": {"x": 1}}', 400, "logit_bias"),
    ('{"prompt": "hi", "logit_bias": {"5": 101}}', 400, "logit_bias"),
    ('{"prompt": "hi", "logit_bias": [5]}', 400, "logit_bias"),
    ('{"prompt": "hi", "max_tokens": 4, "min_tokens": 5}', 400, "min_tokens"),
    ('{"prompt": "hi", "ignore_eos": "yes"}', 400, "ignore_eos"),
    ('{"prompt": "hi", "suffix": "end"}', 400, "suffix"),
]


def test_bad_bodies(srv):
    for body, status, param in BAD_BODIES:
        st, parsed, hdrs = post_json(srv, "/v1/completions", body)
        assert parsed is not None, (body, st)
        err = assert_error(st, parsed, status)
        assert err["param"] == param, (body, err)
        assert hdrs["content-type"] == "application/json"
    # a streaming request that is invalid gets a plain JSON error, not SSE
    st, parsed, hdrs = post_json(srv, "/v1/completions", {"prompt": "", "stream": True})
    assert_error(st, parsed, 400, "prompt")
    assert hdrs["content-type"] == "application/json"


def test_messages_are_helpful(srv):
    st, body, _ = post_json(srv, "/v1/completions", {"prompt": "hi", "n": 17})
    assert "16" in body["error"]["message"]
    st, body, _ = post_json(srv, "/v1/completions", {"prompt": "hi", "logit_bias": {"9999": 1}})
    assert "9999" in body["error"]["message"] and str(VOCAB - 1) in body["error"]["message"]
    st, body, _ = post_json(srv, "/v1/completions", {"prompt": "hi", "model": "gpt-x"})
    assert body["error"]["code"] == "model_not_found"
    st, body, _ = post_json(srv, "/v1/completions", {"prompt": [VOCAB + 5]})
    assert str(VOCAB + 5) in body["error"]["message"]


def test_prompt_longer_than_context(srv):
    st, body, _ = post_json(srv, "/v1/completions", {"prompt": [7] * CTX})
    err = assert_error(st, body, 400, "prompt")
    assert str(CTX) in err["message"] and "context" in err["message"]
    st, body, _ = post_json(srv, "/v1/completions", {"prompt": [7] * (CTX + 100)})
    err = assert_error(st, body, 400, "prompt")
    assert str(CTX + 100) in err["message"]
    # fits alone, but not with max_tokens (vLLM rejects this too)
    st, body, _ = post_json(srv, "/v1/completions", {"prompt": [7] * 200, "max_tokens": 100})
    err = assert_error(st, body, 400, "max_tokens")
    assert "200" in err["message"] and "100" in err["message"]
    # a long text prompt is measured in tokens
    st, body, _ = post_json(srv, "/v1/completions", {"prompt": "lorem ipsum " * 300})
    assert_error(st, body, 400, "prompt")
    # exactly at the limit is fine
    body = complete(srv, prompt=[7] * 200, max_tokens=CTX - 200, temperature=0)
    assert body["usage"]["prompt_tokens"] == 200


def test_routes_and_methods(srv):
    st, hdrs, data = request(srv, "GET", "/v2/nothing")
    assert_error(st, json.loads(data), 404)
    st, hdrs, data = request(srv, "GET", "/")
    assert_error(st, json.loads(data), 404)
    st, hdrs, data = request(srv, "GET", "/v1/completions")
    assert_error(st, json.loads(data), 405)
    assert hdrs["allow"] == "POST"
    st, hdrs, data = request(srv, "DELETE", "/v1/models")
    assert_error(st, json.loads(data), 405)
    assert "GET" in hdrs["allow"]
    st, hdrs, data = request(srv, "POST", "/health", b"{}")
    assert_error(st, json.loads(data), 405)
    assert "GET" in hdrs["allow"]


def raw_exchange(srv, head, body=b"", read_timeout=10):
    """Sends raw bytes, returns (status, headers, body) of the first response."""
    with socket.create_connection((srv.host, srv.port), timeout=read_timeout) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, hdrs, rest[:n]


def test_body_too_large_content_length(srv):
    # the fixture srv runs with --max-body 65536. A client that sends its body
    # at once gets the 413 after the body was read and dropped (answering
    # earlier would reset the connection while it is still writing).
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n")
    st, hdrs, body = raw_exchange(srv, head, body=b" " * 1000000)
    err = assert_error(st, json.loads(body), 413)
    assert "65536" in err["message"]
    # with Expect: 100-continue the client gets the 413 instead of 100, before sending anything
    st, _, body = raw_exchange(srv, head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    assert_error(st, json.loads(body), 413)


def test_body_too_large_chunked(srv):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
    try:
        piece = b" " * 8192

        def gen():
            yield b'{"prompt": "hi", "pad": "'
            for _ in range(12):  # ~96 KiB > 64 KiB
                yield piece
            yield b'"}'

        conn.request("POST", "/v1/completions", body=gen(), encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        assert_error(resp.status, json.loads(resp.read()), 413)
    finally:
        conn.close()
    # a chunked body under the limit works
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
    try:
        parts = [b'{"prompt": [1, 2, 3], ', b'"max_tokens": 3}']
        conn.request("POST", "/v1/completions", body=iter(parts), encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["usage"]["completion_tokens"] <= 3
    finally:
        conn.close()


def test_still_serving(srv):
    st, _, data = request(srv, "GET", "/health")
    assert st == 200
    body = complete(srv, prompt="still here", max_tokens=4, temperature=0)
    assert body["usage"]["prompt_tokens"] > 0
    assert srv.alive()


# ---------------------------------------------------------------- API key

def test_api_key(models, tmp_path):
    with Server(models["spm"], tmp_path, env={"SLIMSERVE_API_KEY": "s3cret"}) as srv:
        st, hdrs, data = request(srv, "GET", "/health")
        assert st == 200  # never needs a key
        for path, method, body in (("/v1/models", "GET", None),
                                   ("/v1/completions", "POST", {"prompt": "hi"}),
                                   ("/v1/nothing", "GET", None)):
            for auth in (None, "Bearer wrong", "s3cret", "Basic s3cret", "Bearer s3cretX"):
                h = {"Authorization": auth} if auth else {}
                st, hdrs, data = request(srv, method, path, body, h)
                err = assert_error(st, json.loads(data), 401)
                assert err["code"] == "invalid_api_key"
        st, hdrs, data = request(srv, "GET", "/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert st == 200
        st, body, _ = post_json(srv, "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                                headers={"Authorization": "Bearer s3cret"})
        assert st == 200 and body["object"] == "text_completion"


# ---------------------------------------------------------------- queue full

def test_queue_full_503(slow_model, tmp_path):
    with Server(slow_model, tmp_path, "--max-num-seqs", "1", "--max-queued-requests", "1",
                "--threads", "1") as srv:
        conns = []
        try:
            def send_stream():
                c = http.client.HTTPConnection(srv.host, srv.port, timeout=60)
                c.request("POST", "/v1/completions",
                          body=json.dumps({"prompt": "x", "max_tokens": 8000, "stream": True,
                                           "ignore_eos": True, "temperature": 0}),
                          headers={"Content-Type": "application/json"})
                conns.append(c)
                return c

            first = send_stream().getresponse()
            assert first.status == 200
            assert first.readline().startswith(b"data: ")  # running now
            # The next one waits for the seat (a stream's headers go out only
            # once it is admitted, so nothing is read from it here)...
            send_stream()
            deadline = time.monotonic() + 30
            while get_metrics(srv)[0][("slimserve:num_requests_waiting", "")] < 1:
                assert time.monotonic() < deadline, "the second stream never queued"
                time.sleep(0.02)
            # ...and one more is refused: the queue holds one.
            got = send_stream().getresponse()
            assert got.status == 503
            assert got.getheader("Retry-After") is not None
            err = assert_error(503, json.loads(got.read()), 503)
            assert err["code"] == "queue_full"
        finally:
            for c in conns:
                c.close()
        # the cancelled streams free their slots (asynchronously): the server answers again
        deadline = time.monotonic() + 10
        while True:
            st, body, hdrs = post_json(srv, "/v1/completions",
                                       {"prompt": "x", "max_tokens": 2, "temperature": 0})
            if st != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert st == 200, body
        assert body["usage"]["completion_tokens"] <= 2
