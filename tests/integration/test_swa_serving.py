"""Sliding-window KV recycling over HTTP (issue 12; README "Sliding-window KV").

A generated gemma3 model whose local layers see 32 tokens serves prompts of
several windows: greedy text and logprobs are identical with recycling (the
default) and with --no-swa-recycle, batched or alone; a repeated prompt longer
than the window is served from the prefix cache with the same output; the
startup log names the window and the recycling.
"""
import concurrent.futures

import pytest

from conftest import Server, complete, gen_model

WINDOW = 32


@pytest.fixture(scope="module")
def swa_model(model_dir):
    return gen_model(model_dir / "swa-gemma3.gguf", "spm", "--arch", "gemma3", "--swa-window", str(WINDOW),
                     "--layers", "7", "--ctx", "1024", "--seed", "13")


def prompt(salt, n_words):
    return " ".join(f"w{(salt * 7 + i * 13) % 97}" for i in range(n_words))


def run(srv, text):
    body = complete(srv, prompt=text, max_tokens=16, temperature=0, logprobs=3, ignore_eos=True)
    ch = body["choices"][0]
    return ch["text"], ch["logprobs"]["token_logprobs"], ch["logprobs"]["top_logprobs"], body["usage"]


def test_recycled_equals_kept(swa_model, tmp_path):
    texts = [prompt(s, n) for s, n in ((1, 40), (2, 120), (3, 260))]
    with Server(swa_model, tmp_path, "--no-swa-recycle", "--no-prefix-cache", name="keep") as keep:
        want = [run(keep, t) for t in texts]
        assert "their KV pages are all kept" in keep.log()
    # recycling, small steps (chunked prefill), all three at once
    with Server(swa_model, tmp_path, "--no-prefix-cache", "--max-num-batched-tokens", "48",
                name="recycle") as rec:
        assert f"see the last {WINDOW} tokens; their KV pages behind the window go back" in rec.log()
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            got = list(ex.map(lambda t: run(rec, t), texts))
    assert want[2][3]["prompt_tokens"] > 4 * WINDOW  # several windows long
    for w, g in zip(want, got):
        assert g[:3] == w[:3]


def test_prefix_longer_than_window(swa_model, tmp_path):
    text = prompt(5, 200)
    with Server(swa_model, tmp_path, "--no-prefix-cache", name="nocache") as ref_srv:
        want = run(ref_srv, text)
    with Server(swa_model, tmp_path, name="cache") as srv:
        first = run(srv, text)
        second = run(srv, text)
    n = want[3]["prompt_tokens"]
    assert first[3]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second[3]["prompt_tokens_details"]["cached_tokens"]
    assert cached > WINDOW and cached == (n - 1) // 16 * 16, (cached, n)
    assert first[:3] == want[:3] and second[:3] == want[:3]
