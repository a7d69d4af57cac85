"""/v1/completions beyond the basics: n > 1, logprobs, echo, penalties and
logit_bias, min_tokens; /tokenize and /detokenize."""
import math

from conftest import assert_error, complete, post_json, stream_events

PROMPT = "The quick brown fox jumps over the lazy dog"


def by_index(body):
    return {c["index"]: c for c in body["choices"]}


def test_n_greedy_identical(srv):
    one = complete(srv, prompt=PROMPT, max_tokens=12, temperature=0)
    two = complete(srv, prompt=PROMPT, max_tokens=12, temperature=0, n=2)
    assert [c["index"] for c in two["choices"]] == [0, 1]
    a, b = two["choices"]
    assert a["text"] == b["text"] == one["choices"][0]["text"]
    assert a["finish_reason"] == b["finish_reason"] == one["choices"][0]["finish_reason"]
    u1, u2 = one["usage"], two["usage"]
    assert u2["prompt_tokens"] == u1["prompt_tokens"]  # the prompt counts once
    assert u2["completion_tokens"] == 2 * u1["completion_tokens"]
    assert u2["total_tokens"] == u2["prompt_tokens"] + u2["completion_tokens"]


def test_n_seeds(srv):
    """With a seed, choice i samples exactly like a single request seeded seed+i."""
    params = dict(prompt=PROMPT, max_tokens=10, temperature=1.0, ignore_eos=True)
    three = complete(srv, n=3, seed=40, **params)
    texts = [c["text"] for c in three["choices"]]
    for i in range(3):
        single = complete(srv, seed=40 + i, **params)
        assert single["choices"][0]["text"] == texts[i], i
    assert three["usage"]["completion_tokens"] == 30


def test_n_stream(srv):
    want = complete(srv, prompt=PROMPT, max_tokens=10, temperature=0, n=2)
    st, events = stream_events(srv, dict(prompt=PROMPT, max_tokens=10, temperature=0, n=2,
                                         stream_options={"include_usage": True}))
    assert st == 200 and events[-1] == "[DONE]"
    texts, finishes = {0: "", 1: ""}, {0: [], 1: []}
    for ev in events[:-2]:
        assert len(ev["choices"]) == 1 and ev["usage"] is None
        ch = ev["choices"][0]
        texts[ch["index"]] += ch["text"]
        if ch["finish_reason"] is not None:
            finishes[ch["index"]].append(ch["finish_reason"])
    for i in (0, 1):
        assert texts[i] == want["choices"][i]["text"]
        assert finishes[i] == [want["choices"][i]["finish_reason"]]
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"] == want["usage"]


def check_logprobs(choice, n_top, n_tokens):
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == \
        len(lp["text_offset"]) == n_tokens
    assert lp["text_offset"] == sorted(lp["text_offset"])
    for tok, tlp, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        if tlp is None:
            assert top is None
            continue
        assert isinstance(tok, str) and tlp <= 0
        assert 1 <= len(top) <= n_top + 1  # the top n plus the chosen token
        assert all(v <= 1e-6 for v in top.values())
        assert top.get(tok, -math.inf) >= tlp - 1e-4  # the chosen token is in the dict
    return lp


def test_logprobs_greedy(srv):
    body = complete(srv, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3)
    ch = body["choices"][0]
    lp = check_logprobs(ch, 3, body["usage"]["completion_tokens"])
    for tlp, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        # greedy: the chosen token is the most likely one
        assert abs(tlp - max(top.values())) < 1e-4, (tlp, top)
    if "\ufffd" not in ch["text"]:
        assert "".join(lp["tokens"]) == ch["text"]
    # logprobs 0: the chosen token only
    body = complete(srv, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0)
    lp = check_logprobs(body["choices"][0], 0, body["usage"]["completion_tokens"])
    assert all(len(t) == 1 for t in lp["top_logprobs"])


def test_logprobs_stream(srv):
    want = complete(srv, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2)
    st, events = stream_events(srv, dict(prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2))
    assert st == 200 and events[-1] == "[DONE]"
    tokens, lps = [], []
    for ev in events[:-1]:
        lp = ev["choices"][0]["logprobs"]
        tokens += lp["tokens"]
        lps += lp["token_logprobs"]
    wl = want["choices"][0]["logprobs"]
    assert tokens == wl["tokens"]
    assert all(abs(a - b) < 1e-5 for a, b in zip(lps, wl["token_logprobs"]))


def test_echo(srv):
    body = complete(srv, prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    plain = complete(srv, prompt=PROMPT, max_tokens=4, temperature=0)
    assert body["choices"][0]["text"] == PROMPT + plain["choices"][0]["text"]
    assert body["choices"][0]["logprobs"] is None
    # with logprobs, prompt tokens come first; the very first one has no logprob
    body = complete(srv, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1)
    u = body["usage"]
    lp = check_logprobs(body["choices"][0], 1, u["prompt_tokens"] + u["completion_tokens"])
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(x is not None for x in lp["token_logprobs"][1:])
    assert lp["text_offset"][u["prompt_tokens"]] == len(PROMPT.encode())
    # max_tokens 0 with echo: the prompt's logprobs only (lm-eval's loglikelihood)
    body = complete(srv, prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    ch, u = body["choices"][0], body["usage"]
    assert ch["text"] == PROMPT and u["completion_tokens"] == 0
    assert ch["finish_reason"] == "length"
    assert check_logprobs(ch, 2, u["prompt_tokens"])["token_logprobs"][1:] == \
        lp["token_logprobs"][1:u["prompt_tokens"]]
    st, err, _ = post_json(srv, "/v1/completions", {"prompt": PROMPT, "max_tokens": 0})
    assert_error(st, err, 400, "max_tokens")
    # token-id prompts echo their decoded text; streaming sends it first
    ids = post_json(srv, "/tokenize", {"prompt": PROMPT, "add_special_tokens": False})[1]["tokens"]
    body = complete(srv, prompt=ids, max_tokens=3, temperature=0, echo=True)
    assert body["choices"][0]["text"].startswith(PROMPT)
    st, events = stream_events(srv, dict(prompt=PROMPT, max_tokens=3, temperature=0, echo=True))
    assert st == 200 and events[0]["choices"][0]["text"].startswith(PROMPT)
    streamed = "".join(e["choices"][0]["text"] for e in events[:-1])
    assert streamed == PROMPT + complete(srv, prompt=PROMPT, max_tokens=3,
                                         temperature=0)["choices"][0]["text"]


def test_penalties_and_bias(srv):
    base = dict(prompt=PROMPT, max_tokens=6, temperature=0)
    for extra in ({"presence_penalty": 1.5}, {"frequency_penalty": -1.0},
                  {"repetition_penalty": 1.3}, {"presence_penalty": 2, "frequency_penalty": 2},
                  {"min_tokens": 6}, {"logit_bias": {}}):
        body = complete(srv, **base, **extra)
        assert body["choices"][0]["finish_reason"] in ("stop", "length"), extra
    # a +100 bias makes greedy decoding pick that token every time
    tid = post_json(srv, "/tokenize", {"prompt": "the", "add_special_tokens": False})[1]["tokens"][-1]
    body = complete(srv, **base, logprobs=0, logit_bias={str(tid): 100})
    toks = body["choices"][0]["logprobs"]["tokens"]
    assert len(toks) == 6 and len(set(toks)) == 1
    # a -100 bias on the greedy first token changes it (when its text is one token)
    first = complete(srv, **base, logprobs=0)["choices"][0]["logprobs"]["tokens"][0]
    ids = post_json(srv, "/tokenize", {"prompt": first, "add_special_tokens": False})[1]["tokens"]
    if len(ids) == 1 and first.strip():
        body = complete(srv, **base, logprobs=0, logit_bias={str(ids[0]): -100})
        assert body["choices"][0]["logprobs"]["tokens"][0] != first


def test_min_tokens(srv):
    body = complete(srv, prompt=PROMPT, max_tokens=12, min_tokens=12, temperature=0.8, seed=3)
    assert body["usage"]["completion_tokens"] == 12
    assert body["choices"][0]["finish_reason"] == "length"


def test_tokenize_roundtrip(srv):
    st, body, _ = post_json(srv, "/tokenize", {"prompt": PROMPT, "add_special_tokens": False})
    assert st == 200, body
    assert body["count"] == len(body["tokens"]) > 3 and body["max_model_len"] == 256
    st, back, _ = post_json(srv, "/detokenize", {"tokens": body["tokens"]})
    assert st == 200 and back == {"prompt": PROMPT}
    # the default adds what a completion prompt gets: same count as usage
    st, full, _ = post_json(srv, "/tokenize", {"model": "tiny", "prompt": PROMPT})
    usage = complete(srv, prompt=PROMPT, max_tokens=1)["usage"]
    assert full["count"] == usage["prompt_tokens"]
    assert full["tokens"][-len(body["tokens"]):] == body["tokens"]
    # errors
    st, err, _ = post_json(srv, "/detokenize", {"tokens": [1, 10 ** 6]})
    assert_error(st, err, 400, "tokens")
    st, err, _ = post_json(srv, "/detokenize", {"tokens": "abc"})
    assert_error(st, err, 400, "tokens")
    st, err, _ = post_json(srv, "/tokenize", {"text": "x"})
    assert_error(st, err, 400, "prompt")
    st, err, _ = post_json(srv, "/tokenize", {"prompt": "x", "model": "nope"})
    assert_error(st, err, 404, "model")
    st, err, _ = post_json(srv, "/tokenize", "{")
    assert_error(st, err, 400)
    # no chat template on this model: tokenizing messages says so
    st, err, _ = post_json(srv, "/tokenize", {"messages": [{"role": "user", "content": "x"}]})
    assert_error(st, err, 400, "messages")
