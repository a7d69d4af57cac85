"""Speculative decoding without a draft model (issue 12 item 4; README
"Speculative decoding").

The real binary with n-gram drafts (the default) against `--speculative off`
on the same model: greedy text, token ids and logprobs, seeded sampled text,
stop strings and JSON-constrained output are identical, alone and with
concurrent mixed traffic (speculative and plain sequences share steps); the
per-request opt-out ("speculative": false) proposes nothing; the
spec_decode counters move and /metrics still parses; bad request fields get
a 400 naming the field, bad flags exit 2.

Runs on a generated Gemma 3 model (sliding window 32, so rollbacks cross
recycled pages) and, when SLIMSERVE_GEMMA_GGUF is set, on the real Gemma 3
270M.
"""
import concurrent.futures
import os
import subprocess

import pytest

from conftest import Server, assert_error, complete, gen_model, get_metrics, post_json, slimserve_bin

CODE = """def parse(path):
    out = {}
    with open(path) as handle:
        for line in handle:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out
"""

PROMPTS = [
    "Rewrite this code, renaming handle to f:\n\n" + CODE + "\nRewritten:\n",
    "one two three four one two three four one two three four one two",
    "Write a short story about a lighthouse keeper.",
    "List the days of the week: Monday, Tuesday,",
]


@pytest.fixture(scope="module", params=["generated", "gemma"])
def model(request, model_dir):
    if request.param == "gemma":
        path = os.environ.get("SLIMSERVE_GEMMA_GGUF")
        if not path or not os.path.exists(path):
            pytest.skip("SLIMSERVE_GEMMA_GGUF not set")
        if os.environ.get("SLIMSERVE_SANITIZED"):
            # the sanitizer pass: the real model's module takes many minutes under ASan
            # and pushed the whole integration suite past its timeout; the release
            # pass runs it, the generated gemma3 model runs in both
            pytest.skip("real Gemma speculative cases run in the release pass, not under the sanitizer")
        return path
    return gen_model(model_dir / "spec-gemma3.gguf", "spm", "--arch", "gemma3", "--swa-window", "32",
                     "--layers", "5", "--ctx", "1024", "--seed", "29")


@pytest.fixture(scope="module")
def servers(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    with Server(model, d, "--speculative", "off", name="plain") as plain, \
            Server(model, d, "--spec-tokens", "4", "--spec-max-batch-tokens", "8", name="spec") as spec:
        yield plain, spec


def spec_counts(srv):
    samples, types = get_metrics(srv)
    out = {k: samples[(f"slimserve:spec_decode_{k}", "")]
           for k in ("num_drafts_total", "num_draft_tokens_total", "num_accepted_tokens_total")}
    for k in ("num_drafts_total", "num_draft_tokens_total", "num_accepted_tokens_total"):
        assert types[f"vllm:spec_decode_{k}"] == "counter"
    assert types["slimserve:spec_decode_accepted_tokens_per_step"] == "histogram"
    return out


def gen(srv, prompt, **kw):
    body = complete(srv, prompt=prompt, max_tokens=kw.pop("max_tokens", 48), logprobs=2, **kw)
    ch = body["choices"][0]
    lp = ch["logprobs"]
    return ch["text"], ch["finish_reason"], lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], \
        body["usage"]["completion_tokens"]


def test_greedy_identical_and_metrics_move(servers):
    plain, spec = servers
    c0 = spec_counts(spec)
    for p in PROMPTS:
        assert gen(spec, p, temperature=0) == gen(plain, p, temperature=0), p
    c1 = spec_counts(spec)
    assert c1["num_drafts_total"] > c0["num_drafts_total"]
    assert c1["num_draft_tokens_total"] >= c1["num_drafts_total"]
    assert c1["num_accepted_tokens_total"] > c0["num_accepted_tokens_total"]
    assert c1["num_accepted_tokens_total"] <= c1["num_draft_tokens_total"]
    assert spec_counts(plain)["num_drafts_total"] == 0


def test_seeded_sampling_identical(servers):
    plain, spec = servers
    for i, p in enumerate(PROMPTS):
        kw = dict(temperature=0.9, top_p=0.95, seed=100 + i)
        assert gen(spec, p, **kw) == gen(plain, p, **kw), p
    # penalties read the accepted tokens as plain decoding does
    kw = dict(temperature=0.7, seed=5, frequency_penalty=0.5, presence_penalty=0.3, repetition_penalty=1.1)
    assert gen(spec, PROMPTS[1], **kw) == gen(plain, PROMPTS[1], **kw)


def test_concurrent_mixed_traffic(servers):
    plain, spec = servers
    jobs = [(p, dict(temperature=0)) for p in PROMPTS] + [(p, dict(temperature=0.8, seed=7 + i))
                                                          for i, p in enumerate(PROMPTS)]
    jobs.append((PROMPTS[0], dict(temperature=0, speculative=False)))  # opted out, in the same steps
    want = [gen(plain, p, **kw) for p, kw in jobs]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        got = list(ex.map(lambda j: gen(spec, j[0], **j[1]), jobs))
    assert got == want


def test_stop_string_identical(servers):
    plain, spec = servers
    text = gen(plain, PROMPTS[0], temperature=0)[0]
    assert len(text) > 12
    # a piece first seen in the second half of the text: the stop lands inside it
    at = len(text) // 2
    while at + 3 < len(text) and text[at:at + 3] in text[:at + 2]:
        at += 1
    stop = text[at:at + 3]
    a = gen(spec, PROMPTS[0], temperature=0, stop=[stop])
    b = gen(plain, PROMPTS[0], temperature=0, stop=[stop])
    assert a == b
    assert b[1] == "stop" and stop not in b[0]


def test_json_constrained_identical(servers):
    plain, spec = servers
    kw = dict(temperature=0, response_format={"type": "json_object"}, max_tokens=40)
    p = 'Describe a user as JSON, for example {"name": "Ann", "age": 31}:'
    assert gen(spec, p, **kw) == gen(plain, p, **kw)


def test_opt_out_proposes_nothing(servers):
    _, spec = servers
    c0 = spec_counts(spec)
    off = gen(spec, PROMPTS[1], temperature=0, speculative=False)
    c1 = spec_counts(spec)
    assert c1["num_drafts_total"] == c0["num_drafts_total"]
    zero = gen(spec, PROMPTS[1], temperature=0, speculative={"n_max": 0})
    assert spec_counts(spec)["num_drafts_total"] == c0["num_drafts_total"]
    one = gen(spec, PROMPTS[1], temperature=0, speculative={"n_max": 1})
    c2 = spec_counts(spec)
    assert off == zero == one
    assert c2["num_drafts_total"] > c1["num_drafts_total"]
    assert c2["num_draft_tokens_total"] - c1["num_draft_tokens_total"] <= c2["num_drafts_total"] - c1[
        "num_drafts_total"]  # at most one draft per step


@pytest.mark.parametrize("value", ["yes", 1, [], {"n_max": 17}, {"n_max": -1}, {"n_max": 1.5},
                                   {"n_max": "2"}, {"k": 2}])
def test_bad_field_400(servers, value):
    _, spec = servers
    status, body, _ = post_json(spec, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "speculative": value})
    err = assert_error(status, body, 400)
    assert err["param"] in ("speculative", "speculative.n_max"), err


@pytest.mark.parametrize("flags", [["--speculative", "eagle"], ["--spec-tokens", "0"], ["--spec-tokens", "17"],
                                   ["--spec-ngram-min", "4", "--spec-ngram-max", "3"],
                                   ["--spec-max-batch-tokens", "0"]])
def test_bad_flags_exit_2(model, flags):
    r = subprocess.run([slimserve_bin(), "serve", "--model", model, "--port", "0", *flags],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 2, r.stderr
    assert b"spec" in r.stderr, r.stderr
