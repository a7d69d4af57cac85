"""POST /v1/embeddings against the real binary.

Numerics: the pooled, L2-normalised vector of a generated tiny model (llama
and gemma3 layouts, f32 weights) is compared with the NumPy float64
reference forwards of tests/ref (llama_ref.forward(hidden=True),
GemmaRef.hidden: the final hidden states after the output norm), for mean,
last and cls pooling. Determinism: an input embedded alone, inside a batch of
several inputs, chunked by a small token budget, or next to generation
traffic gives bitwise the same vector (the engine's rows are per-row bitwise
and the scheduler sums in token order). The API surface: every input form,
float and base64 (the official openai SDK's default), dimensions, usage,
/metrics, the prefix cache left untouched, and the 4xx of bad requests
(openai.BadRequestError through the SDK). The real Gemma 3 270M is used too
when SLIMSERVE_GEMMA_GGUF is set.
"""
import base64
import os
import sys
import threading

import pytest

from conftest import (Server, assert_error, gen_model, get_metrics, post_json, request,
                      stream_events)

np = pytest.importorskip("numpy")
if not os.environ.get("SLIMSERVE_REQUIRE_REF"):
    pytest.importorskip("gguf")

REF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "ref")
sys.path.insert(0, os.path.abspath(REF_DIR))
import gemma_ref  # noqa: E402
import llama_ref  # noqa: E402
import subllm_ref  # noqa: E402

CTX = 256
IDS = [[5, 17, 33, 2, 90, 41, 7, 300, 12, 64, 3, 200, 150, 9],
       [44, 45, 46],
       [1] + list(range(100, 160)),  # 61 tokens: several chunks under a small budget
       [77]]


def embed(srv, **body):
    status, out, _ = post_json(srv, "/v1/embeddings", body)
    assert status == 200, out
    assert out["object"] == "list" and out["model"] == "tiny", out
    assert [d["index"] for d in out["data"]] == list(range(len(out["data"])))
    assert all(d["object"] == "embedding" for d in out["data"])
    return out


def vecs(out):
    return [np.asarray(d["embedding"], dtype=np.float32) for d in out["data"]]


def ref_vec(hidden, pooling):
    h = np.asarray(hidden, dtype=np.float64)
    v = {"mean": h.mean(axis=0), "last": h[-1], "cls": h[0]}[pooling]
    return v / np.linalg.norm(v)


def close(got, want):
    """float32 engine (fp16 K/V) against float64 NumPy."""
    got = np.asarray(got, dtype=np.float64)
    assert abs(np.linalg.norm(got) - 1.0) < 1e-5
    assert float(np.max(np.abs(got - want))) < 5e-4, np.max(np.abs(got - want))
    assert float(got @ want) > 0.99999


@pytest.fixture(scope="module")
def llama_model(model_dir):
    return gen_model(model_dir / "embd-llama.gguf", "bpe", "--vocab", "512", "--ctx", str(CTX),
                     "--seed", "11")


@pytest.fixture(scope="module")
def gemma_model(model_dir):
    return gen_model(model_dir / "embd-gemma.gguf", "bpe", "--arch", "gemma3", "--vocab", "512",
                     "--ctx", str(CTX), "--seed", "12", "--swa-window", "8")


def start(model, tmp_path_factory, *args, name="embd"):
    return Server(model, tmp_path_factory.mktemp(name), "--served-model-name", "tiny", *args,
                  name=name)


@pytest.fixture(scope="module")
def mean_srv(llama_model, tmp_path_factory):
    s = start(llama_model, tmp_path_factory)  # the default pooling: mean
    try:
        yield s
    finally:
        s.stop_checked()


# ---------------------------------------------------------------- numerics

def test_mean_matches_numpy_and_log_says_default(mean_srv, llama_model):
    assert "embeddings: mean pooling (the default)" in mean_srv.log()
    out = embed(mean_srv, input=IDS)
    assert out["usage"] == {"prompt_tokens": sum(map(len, IDS)),
                            "total_tokens": sum(map(len, IDS))}
    for ids, got in zip(IDS, vecs(out)):
        close(got, ref_vec(llama_ref.forward(llama_model, ids, hidden=True), "mean"))


@pytest.mark.parametrize("pooling", ["last", "cls"])
def test_last_and_cls_match_numpy(pooling, llama_model, tmp_path_factory):
    with start(llama_model, tmp_path_factory, "--pooling", pooling, name=pooling) as s:
        assert f"embeddings: {pooling} pooling (--pooling)" in s.log()
        got = vecs(embed(s, input=IDS[:3]))
    for ids, g in zip(IDS[:3], got):
        close(g, ref_vec(llama_ref.forward(llama_model, ids, hidden=True), pooling))


@pytest.mark.parametrize("ptype,flag,want,why", [
    (3, None, "last", "the model's pooling_type"),
    (2, None, "cls", "the model's pooling_type"),
    (0, None, "mean", "the model's pooling_type is none"),
    (3, "mean", "mean", "--pooling"),
])
def test_pooling_type_key(ptype, flag, want, why, llama_model, model_dir, tmp_path_factory):
    from gguf_patch import patch
    m = str(model_dir / f"embd-pool{ptype}.gguf")
    if not os.path.exists(m):
        patch(llama_model, m, None, u32={"llama.pooling_type": ptype})
    args = ("--pooling", flag) if flag else ()
    with start(m, tmp_path_factory, *args, name=f"pt{ptype}") as s:
        assert f"embeddings: {want} pooling ({why})" in s.log()
        got = vecs(embed(s, input=IDS[:2]))
    for ids, g in zip(IDS[:2], got):
        close(g, ref_vec(llama_ref.forward(llama_model, ids, hidden=True), want))


def test_gemma3_layout_matches_numpy(gemma_model, tmp_path_factory):
    ref = gemma_ref.GemmaRef(gemma_model)
    with start(gemma_model, tmp_path_factory, name="gemma") as s:
        got = vecs(embed(s, input=IDS[:3]))
    for ids, g in zip(IDS[:3], got):
        close(g, ref_vec(ref.hidden(ids), "mean"))


def test_subllm_matches_numpy_and_chunks_bitwise(model_dir, tmp_path_factory):
    """SUBLLM: the hidden state is what its forward makes (tokens dropped in
    the middle layers still reach the last one); chunking changes nothing."""
    m = gen_model(model_dir / "embd-subllm.gguf", "bpe", "--arch", "subllm", "--structure",
                  "TT(TT(T)TT)TT", "--keep", "0.6", "--vocab", "512", "--ctx", str(CTX),
                  "--seed", "13")
    with start(m, tmp_path_factory, name="subllm") as s:
        whole = vecs(embed(s, input=IDS))
    with start(m, tmp_path_factory, "--max-num-batched-tokens", "16", name="subllm16") as s:
        chunked = vecs(embed(s, input=IDS))
    for ids, g, c in zip(IDS, whole, chunked):
        close(g, ref_vec(subllm_ref.forward(m, ids, hidden=True), "mean"))
        assert g.tobytes() == c.tobytes()


def test_batched_chunked_and_mixed_are_bitwise_alone(mean_srv, llama_model, tmp_path_factory):
    alone = [vecs(embed(mean_srv, input=ids))[0] for ids in IDS]
    batched = vecs(embed(mean_srv, input=IDS))
    for a, b in zip(alone, batched):
        assert a.tobytes() == b.tobytes()
    # A 16-token budget splits the 61-token input over four steps, each
    # shared with other sequences; generation traffic runs alongside.
    with start(llama_model, tmp_path_factory, "--max-num-batched-tokens", "16",
               name="chunked") as s:
        gen_done = []

        def generate():
            st, ev = stream_events(s, {"prompt": [7, 8, 9, 10], "max_tokens": 40,
                                       "ignore_eos": True})
            gen_done.append(st == 200 and ev[-1] == "[DONE]")

        threads = [threading.Thread(target=generate) for _ in range(3)]
        for t in threads:
            t.start()
        mixed = vecs(embed(s, input=IDS + IDS[::-1]))
        for t in threads:
            t.join(60)
        assert gen_done == [True] * 3
        steps = get_metrics(s)[0][("slimserve:iteration_tokens_total_count", "")]
    assert steps >= 4
    for a, b in zip(alone + alone[::-1], mixed):
        assert a.tobytes() == b.tobytes()


def test_preempted_inputs_restart_cleanly(mean_srv, llama_model, tmp_path_factory):
    """A 16-page KV pool (one context) shared by generation and long inputs:
    embedding sequences get preempted mid-prefill and recomputed from their
    first token; their vectors must not change."""
    long_in = [[1] + list(range(100 + i, 160 + i)) for i in range(6)]
    alone = vecs(embed(mean_srv, input=long_in))
    with start(llama_model, tmp_path_factory, "--kv-cache-memory", "64KiB",
               "--max-num-batched-tokens", "16", name="preempt") as s:
        assert "16 KV pages" in s.log()
        done = []

        def generate(seed):
            st, ev = stream_events(s, {"prompt": [7, 8, 9, seed], "max_tokens": 120,
                                       "ignore_eos": True})
            done.append(st == 200 and ev[-1] == "[DONE]")

        # Whether a round preempts depends on how the threads interleave, so
        # rounds repeat (at most 6) until one did; every round's vectors count.
        got = []
        for rnd in range(6):
            threads = [threading.Thread(target=generate, args=(3 * rnd + i,)) for i in range(3)]
            for t in threads:
                t.start()
            for _ in range(2):
                got.append(vecs(embed(s, input=long_in)))
            for t in threads:
                t.join(60)
            m = get_metrics(s)[0]
            if m[("slimserve:num_preemptions_total", "")] > 0:
                break
    assert done == [True] * len(done) and len(done) >= 3
    assert m[("slimserve:num_preemptions_total", "")] > 0
    assert m[("slimserve:kv_cache_usage_perc", "")] == 0.0
    for g in got:
        for a, b in zip(alone, g):
            assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------- API surface

def test_input_forms_and_text_equals_its_tokens(mean_srv):
    st, tok, _ = post_json(mean_srv, "/tokenize", {"prompt": "the quick brown fox"})
    assert st == 200, tok
    ids = tok["tokens"]
    one = vecs(embed(mean_srv, input="the quick brown fox"))[0]
    assert vecs(embed(mean_srv, input=ids))[0].tobytes() == one.tobytes()
    assert vecs(embed(mean_srv, input=[ids]))[0].tobytes() == one.tobytes()
    lst = embed(mean_srv, input=["the quick brown fox", "hello"], user="someone")
    assert len(lst["data"]) == 2 and vecs(lst)[0].tobytes() == one.tobytes()
    assert lst["usage"]["prompt_tokens"] == len(ids) + embed(mean_srv, input="hello")["usage"][
        "prompt_tokens"]


def test_base64_and_dimensions(mean_srv):
    f = vecs(embed(mean_srv, input=IDS[:2], encoding_format="float"))
    b = embed(mean_srv, input=IDS[:2], encoding_format="base64")
    for d, v in zip(b["data"], f):
        assert isinstance(d["embedding"], str)
        assert np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tobytes() == v.tobytes()
    full = f[0]
    assert len(full) == 64
    assert vecs(embed(mean_srv, input=IDS[0], dimensions=64))[0].tobytes() == full.tobytes()
    k = vecs(embed(mean_srv, input=IDS[0], dimensions=8))[0]
    want = full[:8].astype(np.float64) / np.linalg.norm(full[:8].astype(np.float64))
    assert len(k) == 8 and np.max(np.abs(k - want)) < 1e-6


BAD = [
    ({}, "input"),
    ({"input": None}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": [""]}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": 5}, "input"),
    ({"input": {"a": 1}}, "input"),
    ({"input": [1, "a"]}, "input"),
    ({"input": [1.5]}, "input"),
    ({"input": ["a", 3]}, "input"),
    ({"input": [[1], "a"]}, "input"),
    ({"input": [None]}, "input"),
    ({"input": [[1, 2], [5000]]}, "input"),  # outside the 512-token vocabulary
    ({"input": ["x"] * 129}, "input"),
    ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "x", "encoding_format": 1}, "encoding_format"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x", "dimensions": 65}, "dimensions"),
    ({"input": "x", "dimensions": "8"}, "dimensions"),
]


@pytest.mark.parametrize("body,param", BAD)
def test_bad_requests_are_400(mean_srv, body, param):
    st, out, _ = post_json(mean_srv, "/v1/embeddings", body)
    assert_error(st, out, 400, param)


def test_too_long_input_names_its_index(mean_srv):
    st, out, _ = post_json(mean_srv, "/v1/embeddings", {"input": [[1, 2], [3] * (CTX + 1)]})
    err = assert_error(st, out, 400, "input")
    assert "input[1]" in err["message"] and err["code"] == "context_length_exceeded", err
    # exactly the context is fine: nothing is generated after it
    assert len(vecs(embed(mean_srv, input=[[3] * CTX]))[0]) == 64


def test_wrong_model_is_404_and_get_is_405(mean_srv):
    st, out, _ = post_json(mean_srv, "/v1/embeddings", {"input": "x", "model": "other"})
    assert_error(st, out, 404, "model")
    st, _, _ = request(mean_srv, "GET", "/v1/embeddings")
    assert st == 405


def test_metrics_and_prefix_cache_untouched(mean_srv):
    before, _ = get_metrics(mean_srv)
    prompt = list(range(10, 74))  # 64 tokens: four full pages
    embed(mean_srv, input=[prompt, prompt[:5]])
    after, _ = get_metrics(mean_srv)

    def delta(name):
        return after[(name, "")] - before[(name, "")]
    assert delta("slimserve:embedding_inputs_total") == 2
    assert delta("slimserve:embedding_prompt_tokens_total") == 69
    assert delta("slimserve:prompt_tokens_total") == 69
    assert delta("slimserve:prefix_cache_queries_total") == 0
    assert delta("slimserve:generation_tokens_total") == 0
    assert after[("slimserve:kv_cache_usage_perc", "")] == 0.0  # every page back
    vl = 'model_name="tiny"'
    assert after[("vllm:prompt_tokens_total", "{" + vl + "}")] >= 69
    # the embedded prompt left nothing in the prefix cache
    st, out, _ = post_json(mean_srv, "/v1/completions", {"prompt": prompt, "max_tokens": 1})
    assert st == 200 and out["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, out


# ---------------------------------------------------------------- the openai SDK

def sdk_checks(client, model, dim):
    openai = pytest.importorskip("openai")
    one = client.embeddings.create(model=model, input="The quick brown fox")  # SDK default: base64
    flt = client.embeddings.create(model=model, input="The quick brown fox", encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == dim
    assert np.asarray(one.data[0].embedding, dtype=np.float32).tobytes() == \
        np.asarray(flt.data[0].embedding, dtype=np.float32).tobytes()
    assert one.usage.prompt_tokens == one.usage.total_tokens > 0
    many = client.embeddings.create(model=model, input=["a cat", "a dog", "The quick brown fox"],
                                    dimensions=16)
    assert [d.index for d in many.data] == [0, 1, 2]
    assert all(len(d.embedding) == 16 for d in many.data)
    assert abs(np.linalg.norm(many.data[0].embedding) - 1.0) < 1e-5
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=model, input=[])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=model, input="x", dimensions=dim + 1)
    return np.asarray(flt.data[0].embedding)


def test_openai_sdk(mean_srv):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{mean_srv.port}/v1", api_key="none",
                           max_retries=0, timeout=60)
    sdk_checks(client, "tiny", 64)


def test_openai_sdk_on_gemma_270m(tmp_path_factory):
    openai = pytest.importorskip("openai")
    gguf = os.environ.get("SLIMSERVE_GEMMA_GGUF")
    if not gguf or not os.path.exists(gguf):
        pytest.skip("SLIMSERVE_GEMMA_GGUF not set")
    with Server(gguf, tmp_path_factory.mktemp("gemma270m"), "--served-model-name", "tiny",
                "--ctx", "512", name="gemma270m") as s:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="none",
                               max_retries=0, timeout=120)
        v = sdk_checks(client, "tiny", 640)
        assert np.all(np.isfinite(v))
