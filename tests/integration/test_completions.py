"""Non-streamed and streamed completions, token-id prompts, models and health."""
import json
import threading
import time

from conftest import complete, request, stream_events

PROMPT = "The quick brown fox jumps over the lazy dog"


def check_shape(body, model="tiny"):
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == model
    assert len(body["choices"]) == 1
    ch = body["choices"][0]
    assert ch["index"] == 0
    assert isinstance(ch["text"], str)
    assert ch["logprobs"] is None
    assert ch["finish_reason"] in ("stop", "length")
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    return ch


def test_health_and_models(srv):
    status, hdrs, data = request(srv, "GET", "/health")
    assert status == 200 and data == b'{"status":"ok"}'
    assert hdrs["content-type"] == "application/json"
    status, _, data = request(srv, "HEAD", "/health")
    assert status == 200
    status, _, data = request(srv, "GET", "/v1/models")
    assert status == 200
    body = json.loads(data)
    assert body["object"] == "list"
    assert len(body["data"]) == 1
    m = body["data"][0]
    assert m["id"] == "tiny" and m["object"] == "model"
    assert m["max_model_len"] == 256


def test_greedy_is_deterministic(srv):
    a = complete(srv, prompt=PROMPT, max_tokens=24, temperature=0)
    b = complete(srv, prompt=PROMPT, max_tokens=24, temperature=0)
    ch = check_shape(a)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    cached_b = b["usage"].pop("prompt_tokens_details")["cached_tokens"]
    cached_a = a["usage"].pop("prompt_tokens_details")["cached_tokens"]
    assert a["usage"] == b["usage"]
    # the second request finds the first one's full prompt pages in the prefix cache
    assert cached_b == (a["usage"]["prompt_tokens"] - 1) // 16 * 16 and cached_b >= cached_a
    assert a["id"] != b["id"]
    u = a["usage"]
    assert u["prompt_tokens"] > 1
    if ch["finish_reason"] == "length":
        assert u["completion_tokens"] == 24


def test_model_field_accepted(srv):
    body = complete(srv, model="tiny", prompt=PROMPT, max_tokens=4, temperature=0)
    check_shape(body)


def test_seed_reproducible(srv):
    params = dict(prompt=PROMPT, max_tokens=24, temperature=0.9, top_p=0.95, seed=1234,
                  ignore_eos=True)
    a = complete(srv, **params)
    b = complete(srv, **params)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"]["completion_tokens"] == 24
    # different seeds: at least one of a few differs (random model, 24 tokens)
    texts = {complete(srv, **dict(params, seed=s))["choices"][0]["text"] for s in (1, 2, 3)}
    assert len(texts) > 1


def test_default_max_tokens(srv):
    body = complete(srv, prompt=PROMPT, temperature=0, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 16
    assert body["choices"][0]["finish_reason"] == "length"


def test_token_id_prompt(srv):
    ids = [5, 17, 42, 99, 100, 7]
    a = complete(srv, prompt=ids, max_tokens=12, temperature=0)
    check_shape(a)
    assert a["usage"]["prompt_tokens"] == len(ids)
    b = complete(srv, prompt=[ids], max_tokens=12, temperature=0)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_single_string_array_prompt(srv):
    a = complete(srv, prompt=PROMPT, max_tokens=8, temperature=0)
    b = complete(srv, prompt=[PROMPT], max_tokens=8, temperature=0)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"] == b["usage"]


def test_stop_string(srv):
    full = complete(srv, prompt=PROMPT, max_tokens=40, temperature=0, ignore_eos=True)
    text = full["choices"][0]["text"]
    # pick a stop string from the middle of the greedy text
    cut = None
    for i in range(2, len(text) - 2):
        piece = text[i:i + 2]
        if piece.isascii() and piece.isprintable() and piece.strip() and text.find(piece) == i:
            cut = i
            break
    if cut is None:
        return  # degenerate text: nothing to test
    stopped = complete(srv, prompt=PROMPT, max_tokens=40, temperature=0, ignore_eos=True,
                       stop=[text[cut:cut + 2]])
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["text"] == text[:cut]


def collect_stream(srv, **params):
    status, events = stream_events(srv, params)
    assert status == 200, events
    assert events and events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    return events[:-1]


def test_stream_matches_non_stream(srv):
    want = complete(srv, prompt=PROMPT, max_tokens=32, temperature=0)
    events = collect_stream(srv, prompt=PROMPT, max_tokens=32, temperature=0)
    text = ""
    ids = set()
    for i, ev in enumerate(events):
        assert "error" not in ev, ev
        assert ev["object"] == "text_completion" and ev["model"] == "tiny"
        assert len(ev["choices"]) == 1
        ch = ev["choices"][0]
        assert ch["index"] == 0
        text += ch["text"]
        ids.add(ev["id"])
        if i < len(events) - 1:
            assert ch["finish_reason"] is None
        assert "usage" not in ev
    assert len(ids) == 1
    assert events[-1]["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert text == want["choices"][0]["text"]


def test_stream_include_usage(srv):
    want = complete(srv, prompt=PROMPT, max_tokens=10, temperature=0, ignore_eos=True)
    events = collect_stream(srv, prompt=PROMPT, max_tokens=10, temperature=0, ignore_eos=True,
                            stream_options={"include_usage": True})
    usage = events[-1]
    assert usage["choices"] == []
    assert usage["usage"] == want["usage"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    for ev in events[:-1]:
        assert ev["usage"] is None
    text = "".join(ev["choices"][0]["text"] for ev in events[:-1])
    assert text == want["choices"][0]["text"]


def test_stream_token_ids(srv):
    want = complete(srv, prompt=[3, 4, 5], max_tokens=6, temperature=0)
    events = collect_stream(srv, prompt=[3, 4, 5], max_tokens=6, temperature=0)
    assert "".join(ev["choices"][0]["text"] for ev in events) == want["choices"][0]["text"]


def test_parallel_clients(srv):
    """10 concurrent clients (half streaming) each get what the prompt gives alone."""
    prompts = [f"{PROMPT} number {i}" for i in range(10)]
    alone = [complete(srv, prompt=p, max_tokens=20, temperature=0)["choices"][0]["text"]
             for p in prompts]
    results = [None] * len(prompts)
    errors = []

    def worker(i):
        try:
            if i % 2:
                events = collect_stream(srv, prompt=prompts[i], max_tokens=20, temperature=0)
                results[i] = "".join(ev["choices"][0]["text"] for ev in events)
            else:
                body = complete(srv, prompt=prompts[i], max_tokens=20, temperature=0)
                results[i] = body["choices"][0]["text"]
        except Exception as e:  # reported below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "clients still running after 120s"
    assert not errors, errors
    assert results == alone
    assert time.monotonic() - t0 < 120


def test_keep_alive_reuse(srv):
    """One connection carries several requests of every kind in turn."""
    import http.client
    from conftest import read_sse
    want = complete(srv, prompt=PROMPT, max_tokens=8, temperature=0)["choices"][0]["text"]
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=60)
    try:
        for _ in range(3):
            conn.request("POST", "/v1/completions",
                         body=json.dumps({"prompt": PROMPT, "max_tokens": 8, "temperature": 0}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read())["choices"][0]["text"] == want
            conn.request("POST", "/v1/completions",
                         body=json.dumps({"prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                                          "stream": True}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            events = read_sse(resp)
            assert events[-1] == "[DONE]"
            assert "".join(e["choices"][0]["text"] for e in events[:-1]) == want
            conn.request("POST", "/v1/completions", body="{bad",
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 400
            resp.read()
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b'{"status":"ok"}'
    finally:
        conn.close()
