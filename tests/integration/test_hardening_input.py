"""Issue 14, part B: input defects and no long work on the loop thread.

Each test is a regression test of one defect of the issue (numbers as there):
5 tokenising on the loop thread, prompts far over the context, /detokenize
unbounded, /tokenize without the API key; 6 stop strings; 7 padded
vocabularies; 8 NUL in JSON strings, logit_bias keys, a second signal during
teardown, numeric flags. The Gemma tests need SLIMSERVE_GEMMA_GGUF (the real
tokenizer is what makes megabytes of text slow).
"""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import (Server, assert_error, gen_model, post_json, request, slimserve_bin)

KEY = "sk-hardening"


def gemma_path():
    path = os.environ.get("SLIMSERVE_GEMMA_GGUF")
    if not path or not os.path.exists(path):
        pytest.skip("SLIMSERVE_GEMMA_GGUF not set")
    return path


def words(nbytes):
    w = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
    return (w * (nbytes // len(w) + 1))[:nbytes]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    s = Server(gemma_path(), tmp_path_factory.mktemp("gemma"), "--threads", "1",
               "--ctx", "4096", "--max-body", "32MiB", name="gemma")
    try:
        yield s
    finally:
        s.stop_checked()


@pytest.fixture(scope="module")
def keyed(models, tmp_path_factory):
    s = Server(models["spm"], tmp_path_factory.mktemp("keyed"), "--api-key", KEY,
               "--max-body", "32MiB", name="keyed")
    try:
        yield s
    finally:
        s.stop_checked()


# ---------------------------------------------------------------- defect 5

def test_health_answers_while_a_big_tokenize_runs(gemma):
    """8 MiB through the Gemma tokenizer takes about a second: on the loop
    thread every other client waited for it."""
    body = json.dumps({"prompt": words(8 << 20)}).encode()
    result = {}

    def tokenize():
        t0 = time.monotonic()
        result["status"], _, result["data"] = request(gemma, "POST", "/tokenize", body,
                                                      timeout=120)
        result["elapsed"] = time.monotonic() - t0
        # The answer (several MB of JSON) is parsed after the probing ends: json.loads
        # holds the GIL for ~100 ms and would show up as a slow /health here.

    th = threading.Thread(target=tokenize)
    th.start()
    time.sleep(0.15)  # the upload (loopback) is done well within this
    lat = []
    while th.is_alive():
        t0 = time.monotonic()
        st, _, _ = request(gemma, "GET", "/health", timeout=30)
        lat.append(time.monotonic() - t0)
        assert st == 200
        time.sleep(0.02)
    th.join()
    assert result["status"] == 200, result["status"]
    count = json.loads(result["data"]).get("count")
    assert count > 1_000_000, count
    assert max(lat) < 0.1, f"/health took {max(lat) * 1000:.0f} ms while /tokenize ran ({lat})"
    assert len(lat) >= 3, f"the tokenize was too quick to measure ({result['elapsed']:.2f}s)"


def test_a_prompt_far_over_the_context_is_refused_without_tokenising_it(gemma):
    """13 MB of text against a 4096-token context: the answer must not wait
    for the whole text to be tokenised (compared with /tokenize of the same)."""
    text = words(13_000_000)
    refuse, full = [], []
    for _ in range(2):  # alternating, the best of two: a loaded machine slows either one
        t0 = time.monotonic()
        st, body, _ = post_json(gemma, "/v1/completions", {"prompt": text, "max_tokens": 1},
                                timeout=120)
        refuse.append(time.monotonic() - t0)
        err = assert_error(st, body, 400, "prompt")
        assert err["code"] == "context_length_exceeded", err
        assert "4096" in err["message"], err
        t0 = time.monotonic()
        st, _, _ = request(gemma, "POST", "/tokenize", {"prompt": text}, timeout=120)
        full.append(time.monotonic() - t0)
        assert st == 200
    assert min(refuse) < 0.5 * min(full), f"refused in {refuse} s, a full tokenize takes {full} s"
    # chat prompts too
    st, body, _ = post_json(gemma, "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": text[:4_000_000]}]},
                            timeout=120)
    assert assert_error(st, body, 400, "messages")["code"] == "context_length_exceeded"


def test_tokenize_and_detokenize_need_the_api_key(keyed):
    for path, obj in (("/tokenize", {"prompt": "hello"}), ("/detokenize", {"tokens": [5, 6]})):
        st, body, hdrs = post_json(keyed, path, obj)
        assert_error(st, body, 401)
        assert hdrs.get("www-authenticate") == "Bearer"
        st, body, _ = post_json(keyed, path, obj, headers={"Authorization": "Bearer wrong"})
        assert_error(st, body, 401)
        st, body, _ = post_json(keyed, path, obj, headers={"Authorization": f"Bearer {KEY}"})
        assert st == 200, body
    st, _, _ = request(keyed, "GET", "/health")
    assert st == 200


def test_detokenize_is_bounded(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    ids = ",".join(["5"] * 300_000)
    st, body, _ = post_json(keyed, "/detokenize", json.loads(f'{{"tokens":[{ids}]}}'),
                            headers=auth)
    err = assert_error(st, body, 400, "tokens")
    assert "262144" in err["message"], err
    ok = ",".join(["5"] * 262_144)
    st, body, _ = post_json(keyed, "/detokenize", json.loads(f'{{"tokens":[{ok}]}}'), headers=auth)
    assert st == 200 and isinstance(body["prompt"], str), body


# ---------------------------------------------------------------- defect 6

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_stop_strings_are_capped_and_shared(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    base = {"prompt": "once upon a time", "max_tokens": 8, "n": 16, "temperature": 1.0}
    rss0 = rss_kib(keyed.proc.pid)
    for _ in range(3):
        st, body, _ = post_json(keyed, "/v1/completions", dict(base, stop="x" * (4 << 20)),
                                headers=auth)
        err = assert_error(st, body, 400, "stop")
        assert "1024" in err["message"], err
    grew = rss_kib(keyed.proc.pid) - rss0
    assert grew < 64 * 1024, f"RSS grew by {grew} KiB"
    # the limits themselves are fine: 8 stop strings of 1024 bytes for 16 choices
    stops = [chr(ord("a") + i) * 1024 for i in range(8)]
    st, body, _ = post_json(keyed, "/v1/completions", dict(base, stop=stops), headers=auth)
    assert st == 200 and len(body["choices"]) == 16, body
    st, body, _ = post_json(keyed, "/v1/completions", dict(base, stop=["a"] * 9), headers=auth)
    assert_error(st, body, 400, "stop")


# ---------------------------------------------------------------- defect 7

def test_padded_vocabulary_never_samples_unknown_ids(model_dir, tmp_path):
    pytest.importorskip("gguf")
    from gguf_patch import truncate_vocab
    src = gen_model(model_dir / "pad-src.gguf", "spm", "--vocab", "512", "--ctx", "256",
                    "--seed", "11")
    dst = str(model_dir / "padded.gguf")
    keep = 300  # 212 embedding rows past the tokenizer: most of the probability mass
    truncate_vocab(src, dst, keep)
    with Server(dst, tmp_path, name="padded") as s:
        for seed in range(3):
            st, body, _ = post_json(s, "/v1/completions", {
                "prompt": "the cat", "max_tokens": 48, "n": 4, "temperature": 1.5,
                "seed": seed, "logprobs": 5, "ignore_eos": True})
            assert st == 200, body
            for ch in body["choices"]:
                assert ch["finish_reason"] == "length"
                lp = ch["logprobs"]
                assert len(lp["tokens"]) == 48
        assert "are padding, never sampled" in s.log()
        # the padding ids are no tokens for the api either
        st, body, _ = post_json(s, "/detokenize", {"tokens": [keep]})
        assert_error(st, body, 400, "tokens")
        st, body, _ = post_json(s, "/v1/completions", {"prompt": [5, keep + 3], "max_tokens": 2})
        assert_error(st, body, 400, "prompt")


# ---------------------------------------------------------------- defect 8

def test_nul_in_json_strings_is_refused(keyed):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bad = [
        ("/v1/completions", '{"prompt":"ab\\u0000cd","max_tokens":1}'),
        ("/v1/completions", '{"prompt":"ab","stop":["x\\u0000y"],"max_tokens":1}'),
        ("/tokenize", '{"prompt":"ab\\u0000"}'),
        ("/v1/completions", '{"prompt":"ab\x00cd","max_tokens":1}'),
    ]
    for path, raw in bad:
        st, _, data = request(keyed, "POST", path, raw.encode(), headers=auth)
        err = assert_error(st, json.loads(data), 400)
        assert "NUL" in err["message"], err
    # an escaped backslash followed by "u0000" is text, not a NUL
    st, _, data = request(keyed, "POST", "/tokenize", b'{"prompt":"a\\\\u0000"}', headers=auth)
    assert st == 200, data


def test_logit_bias_keys_are_canonical(keyed):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for raw in ('{"prompt":"a","max_tokens":1,"logit_bias":{"01":100}}',
                '{"prompt":"a","max_tokens":1,"logit_bias":{"1":100,"0001":100}}',
                '{"prompt":"a","max_tokens":1,"logit_bias":{"+1":1}}',
                '{"prompt":"a","max_tokens":1,"logit_bias":{"1":60,"1":60}}'):
        st, _, data = request(keyed, "POST", "/v1/completions", raw.encode(), headers=auth)
        assert_error(st, json.loads(data), 400, "logit_bias")
    st, body, _ = post_json(keyed, "/v1/completions",
                            {"prompt": "a", "max_tokens": 1, "logit_bias": {"0": 5, "10": -5}},
                            headers=auth)
    assert st == 200, body


def test_signals_during_teardown_keep_the_clean_exit(models, tmp_path):
    s = Server(models["spm"], tmp_path, "--shutdown-timeout", "1", name="sig")
    try:
        s.signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while s.alive() and time.monotonic() < deadline:
            s.signal(signal.SIGTERM if int(time.monotonic() * 1000) % 2 else signal.SIGINT)
            time.sleep(0.0005)
        rc = s.wait(timeout=20)
    finally:
        s.stop()
    assert rc == 0, f"exit status {rc}:\n{s.log()[-2000:]}"


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-1", "garbage", "1e400", "-nan", ""])
def test_size_flags_refuse_non_numbers(value):
    p = subprocess.run([slimserve_bin(), "serve", "--model", "/nonexistent.gguf",
                        "--max-body", value], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "--max-body" in p.stderr


def test_lte_calibrate_int_flags_do_not_wrap():
    p = subprocess.run([slimserve_bin(), "lte-calibrate", "--model", "/nonexistent.gguf",
                        "--out", "/nonexistent-out.gguf", "--text", "/nonexistent.txt",
                        "--sparsity", "0.5", "--expert-size", "4294967297"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "--expert-size" in p.stderr, p.stderr
