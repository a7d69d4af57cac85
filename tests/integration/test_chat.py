"""/v1/chat/completions against a generated model whose GGUF carries a ChatML
chat template (conftest.chat_model), non-streamed and streamed."""
import pytest

from conftest import Server, assert_error, chat, post_json, stream_events

MESSAGES = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "What is the capital of France?"}]
IM_END = 1021  # conftest.chat_model renames <pad1021> to <|im_end|>


@pytest.fixture(scope="module")
def chat_srv(chat_model, tmp_path_factory):
    s = Server(chat_model, tmp_path_factory.mktemp("chat"), "--served-model-name", "chatty",
               name="chat")
    try:
        yield s
    finally:
        s.stop_checked()


def test_chat_completion(chat_srv):
    body = chat(chat_srv, messages=MESSAGES, max_tokens=10, temperature=0)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "chatty"
    (ch,) = body["choices"]
    assert ch["index"] == 0 and ch["logprobs"] is None
    assert ch["message"]["role"] == "assistant" and isinstance(ch["message"]["content"], str)
    assert ch["finish_reason"] in ("stop", "length")
    # the prompt is the template's rendering: /tokenize of the same messages agrees
    st, tk, _ = post_json(chat_srv, "/tokenize", {"messages": MESSAGES})
    assert st == 200 and body["usage"]["prompt_tokens"] == tk["count"]
    assert tk["tokens"].count(1020) == 3  # <|im_start|> x (2 messages + generation prompt)
    assert tk["tokens"].count(IM_END) == 2
    # content as text parts is the same conversation
    parts = [MESSAGES[0], {"role": "user", "content": [
        {"type": "text", "text": "What is the capital of France?"}]}]
    same = chat(chat_srv, messages=parts, max_tokens=10, temperature=0)
    assert same["choices"][0]["message"] == ch["message"]


def test_chat_stream_matches(chat_srv):
    want = chat(chat_srv, messages=MESSAGES, max_tokens=16, temperature=0)
    st, events = stream_events(chat_srv, dict(messages=MESSAGES, max_tokens=16, temperature=0,
                                              stream_options={"include_usage": True}),
                               path="/v1/chat/completions")
    assert st == 200 and events[-1] == "[DONE]"
    chunks = events[:-2]
    for ev in chunks:
        assert ev["object"] == "chat.completion.chunk" and ev["id"] == chunks[0]["id"]
        assert ev["usage"] is None
    first = chunks[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""}
    content = "".join(ev["choices"][0]["delta"].get("content", "") for ev in chunks)
    assert content == want["choices"][0]["message"]["content"]
    finishes = [ev["choices"][0]["finish_reason"] for ev in chunks]
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    assert finishes[-1] == want["choices"][0]["finish_reason"]
    assert events[-2]["choices"] == [] and events[-2]["usage"] == want["usage"]


def test_chat_n_and_logprobs(chat_srv):
    body = chat(chat_srv, messages=MESSAGES, max_tokens=8, temperature=0, n=2, logprobs=True,
                top_logprobs=2)
    a, b = body["choices"]
    assert (a["index"], b["index"]) == (0, 1)
    assert a["message"]["content"] == b["message"]["content"]
    assert body["usage"]["completion_tokens"] == 2 * len(a["logprobs"]["content"])
    for e in a["logprobs"]["content"]:
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(e["top_logprobs"]) == 2
        assert abs(e["logprob"] - e["top_logprobs"][0]["logprob"]) < 1e-4  # greedy
        assert e["top_logprobs"][0]["logprob"] >= e["top_logprobs"][1]["logprob"]
        if "\ufffd" not in e["token"]:
            assert bytes(e["bytes"]).decode() == e["token"]
    # streamed: the first chunk has no logprobs, the others carry theirs
    st, events = stream_events(chat_srv, dict(messages=MESSAGES, max_tokens=8, temperature=0,
                                              logprobs=True), path="/v1/chat/completions")
    got = [e for ev in events[1:-1] for e in ev["choices"][0]["logprobs"]["content"]]
    assert [e["token"] for e in got] == [e["token"] for e in a["logprobs"]["content"]]


def test_chat_stops_at_end_of_turn(chat_srv):
    """<|im_end|> is an end-of-generation token: forcing it ends the turn."""
    body = chat(chat_srv, messages=MESSAGES, max_tokens=20, temperature=0,
                logit_bias={str(IM_END): 100})
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == ""
    assert body["usage"]["completion_tokens"] == 1


def test_chat_sampling_fields(chat_srv):
    body = chat(chat_srv, messages=MESSAGES, max_completion_tokens=5, temperature=0.7, seed=9,
                top_p=0.9, presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.1,
                stop=["\n"], min_tokens=1)
    assert body["usage"]["completion_tokens"] <= 5
    again = chat(chat_srv, messages=MESSAGES, max_completion_tokens=5, temperature=0.7, seed=9,
                 top_p=0.9, presence_penalty=0.5, frequency_penalty=0.5, repetition_penalty=1.1,
                 stop=["\n"], min_tokens=1)
    assert again["choices"][0]["message"] == body["choices"][0]["message"]


def test_chat_errors(chat_srv):
    cases = [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                     "image_url": {"url": "x"}}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages"),
        ({"messages": MESSAGES, "top_logprobs": 3}, "top_logprobs"),
        ({"messages": MESSAGES, "logprobs": True, "top_logprobs": 30}, "top_logprobs"),
        ({"messages": MESSAGES, "n": 0}, "n"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": MESSAGES, "model": "other"}, "model"),
    ]
    for body, param in cases:
        st, err, _ = post_json(chat_srv, "/v1/chat/completions", body)
        assert_error(st, err, 404 if param == "model" else 400, param)


def test_chat_without_template(server):
    """The generated model has no chat template: a clear 400."""
    st, err, _ = post_json(server, "/v1/chat/completions", {"messages": MESSAGES})
    e = assert_error(st, err, 400, "messages")
    assert "chat template" in e["message"] and "--chat-template" in e["message"]


def test_chat_template_flag(models, tmp_path):
    """--chat-template NAME serves a model without one; a bad name exits 2."""
    with Server(models["spm"], tmp_path, "--chat-template", "llama2", name="l2") as s:
        body = chat(s, messages=MESSAGES, max_tokens=4, temperature=0)
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        st, tk, _ = post_json(s, "/tokenize", {"messages": MESSAGES})
        assert tk["tokens"][0] == 1  # llama2 renders BOS ("<s>", id 1 in the spm vocab)
        assert tk["tokens"].count(1) == 1
    import subprocess
    from conftest import slimserve_bin
    p = subprocess.run([slimserve_bin(), "serve", "--model", models["spm"], "--port", "0",
                        "--chat-template", "nonsense"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2 and "chat-template" in p.stderr


def test_chat_family_from_vocabulary(model_dir, tmp_path):
    """A model without tokenizer.chat_template whose vocabulary has Gemma's turn
    markers (like the Gemma 3 270M GGUF) is served with the gemma family."""
    pytest.importorskip("gguf")
    from conftest import gen_model
    from gguf_patch import patch
    src = gen_model(model_dir / "gemma-vocab-src.gguf", "bpe", "--vocab", "1024", "--ctx", "256",
                    "--seed", "6")
    dst = str(tmp_path / "gemma-vocab.gguf")
    patch(src, dst, None, {"<pad1020>": "<start_of_turn>", "<pad1021>": "<end_of_turn>"})
    with Server(dst, tmp_path, name="gv") as s:
        st, tk, _ = post_json(s, "/tokenize", {"messages": [{"role": "user", "content": "Hi"}]})
        assert st == 200
        ids = tk["tokens"]
        assert ids[0] == 1022  # BOS (<|begin_of_text|> in the generated bpe vocab)
        assert ids[1] == 1020 and ids.count(1020) == 2 and ids.count(1021) == 1
        st, body, _ = post_json(s, "/detokenize", {"tokens": ids})
        assert body["prompt"].endswith("<start_of_turn>model\n")
        body = chat(s, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
