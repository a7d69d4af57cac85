"""The official `openai` Python SDK (PyPI `openai`) against the real server.

Completions, chat, streaming with usage (cached_tokens included), n, logprobs,
errors mapped to the SDK's exception classes, structured outputs through
response_format and `chat.completions.parse` with a Pydantic model. The model
is a generated tiny one (a ChatML template for chat), so outputs are random
text; the checks are on shapes, counts and the constraints.
"""
import json

import pytest

from conftest import Server

openai = pytest.importorskip("openai")
pydantic = pytest.importorskip("pydantic")
jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def sdk(chat_model, tmp_path_factory):
    s = Server(chat_model, tmp_path_factory.mktemp("sdk"), "--served-model-name", "tiny",
               "--api-key", "sk-test", name="sdk")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="sk-test",
                           max_retries=0, timeout=60)
    try:
        yield client, s
    finally:
        s.stop_checked()


MSG = [{"role": "user", "content": "Say something about the quick brown fox."}]


def test_models_and_completion(sdk):
    client, _ = sdk
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=8,
                                  temperature=0, n=2, logprobs=2)
    assert len(r.choices) == 2 and {c.index for c in r.choices} == {0, 1}
    assert r.choices[0].text == r.choices[1].text  # greedy twice
    assert r.choices[0].finish_reason in ("length", "stop")
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == r.usage.completion_tokens // 2 and len(lp.top_logprobs[0]) == 2
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_and_logprobs(sdk):
    client, _ = sdk
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, seed=7,
                                       logprobs=True, top_logprobs=3)
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str)
    assert len(c.logprobs.content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 for t in c.logprobs.content)


def test_stream_with_usage_and_cached_tokens(sdk):
    client, _ = sdk
    long_msg = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 6}]
    first = client.chat.completions.create(model="tiny", messages=long_msg, max_tokens=4, temperature=0)
    assert first.usage.prompt_tokens > 32
    stream = client.chat.completions.create(model="tiny", messages=long_msg, max_tokens=4,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    text, usage, finishes = "", None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for ch in chunk.choices:
            text += ch.delta.content or ""
            if ch.finish_reason:
                finishes.append(ch.finish_reason)
    assert text == first.choices[0].message.content
    assert finishes == [first.choices[0].finish_reason]
    assert usage.completion_tokens == first.usage.completion_tokens
    # the second identical prompt reuses the cached full pages (16 tokens each)
    cached = usage.prompt_tokens_details.cached_tokens
    assert cached >= 16 and cached % 16 == 0 and cached <= usage.prompt_tokens


def test_error_classes(sdk, chat_model, tmp_path):
    client, s = sdk
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=0)
    assert e.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSG)
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="tiny", messages=MSG,
            response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string", "format": "uri"}}}}})
    assert "unsupported keyword 'format'" in str(e.value) and "/properties/a" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", extra_body={"grammar": "root ::= \"a\" (\"b\""})
    assert e.value.status_code == 400 and "line 1 col 14: unclosed '('" in str(e.value)


def test_json_modes(sdk):
    client, _ = sdk
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "n": {"type": "integer", "minimum": -5, "maximum": 500},
                                               "ok": {"type": "boolean"}},
              "required": ["name", "n", "ok"], "additionalProperties": False}
    done = 0
    for seed in range(6):
        r = client.chat.completions.create(
            model="tiny", messages=MSG, max_tokens=120, seed=seed, n=2,
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}})
        for c in r.choices:
            if c.finish_reason == "length":
                continue
            assert c.finish_reason == "stop"
            jsonschema.validate(json.loads(c.message.content), schema)
            done += 1
        r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=120, seed=seed,
                                           response_format={"type": "json_object"})
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert done >= 6


def test_parse_with_pydantic(sdk):
    client, _ = sdk

    class Pet(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        kind: str = pydantic.Field(max_length=10)
        legs: int = pydantic.Field(ge=0, le=8)

    class Owner(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        name: str = pydantic.Field(max_length=16)
        pets: list[Pet] = pydantic.Field(max_length=2)

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    parsed = 0
    for seed in range(8):
        try:
            r = parse(model="tiny", messages=MSG, response_format=Owner, max_tokens=200, seed=seed)
        except openai.LengthFinishReasonError:
            continue  # the SDK refuses a partial document; the grammar kept it a prefix
        owner = r.choices[0].message.parsed
        assert isinstance(owner, Owner) and len(owner.pets) <= 2
        parsed += 1
    assert parsed >= 2


def test_other_constraints(sdk):
    client, _ = sdk
    r = client.completions.create(model="tiny", prompt="Answer:", max_tokens=10, seed=1,
                                  extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}})
    assert r.choices[0].text in ("yes", "no", "maybe") and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="tiny", prompt="Code:", max_tokens=20, seed=2,
                                  extra_body={"guided_regex": "[A-Z]{3}-[0-9]{2,4}"})
    import re
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2,4}", r.choices[0].text)
    r = client.completions.create(model="tiny", prompt="List:", max_tokens=30, seed=3,
                                  extra_body={"grammar": 'root ::= item ("," item){0,2}\nitem ::= [a-c]+'})
    assert re.fullmatch(r"[a-c]+(,[a-c]+){0,2}", r.choices[0].text) or r.choices[0].finish_reason == "length"
    # a finish by max_tokens is "length" with the partial output as is
    r = client.completions.create(model="tiny", prompt="x", max_tokens=3, seed=4,
                                  extra_body={"json_schema": {"type": "array", "items": {"type": "string"},
                                                              "minItems": 5}})
    assert r.choices[0].finish_reason == "length" and r.choices[0].text.startswith("[")
