"""Structured outputs validated by an independent checker (Python's jsonschema).

240 (schema, seed, prompt) cases on a generated tiny model: hand-written
schemas plus schemas generated from a seeded RNG (nested objects with
required subsets, arrays with bounds, enums, consts, integer ranges, string
lengths and patterns, anyOf, $defs/$ref), sent 8 at a time alongside
unconstrained requests (mixed batches). Every output that finishes with "stop"
must parse and validate; "length" finishes are counted and reported. A smaller
run (8 cases) does the same on the default Gemma 3 270M when SLIMSERVE_GEMMA_GGUF is set.
"""
import json
import os
import random
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Server, post_json

jsonschema = pytest.importorskip("jsonschema")

FIXED = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 130}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": -20, "maximum": 20}, "minItems": 1, "maxItems": 4},
    {"enum": ["red", "green", "blue", 7, None, True]},
    {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[A-F0-9]{4}-[a-z]{2,3}$"},
                                      "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3}},
     "required": ["id"]},
    {"$defs": {"leaf": {"type": "object", "properties": {"v": {"type": "number"}}, "required": ["v"]}},
     "type": "object", "properties": {"a": {"$ref": "#/$defs/leaf"}, "b": {"$ref": "#/$defs/leaf"}},
     "required": ["a"]},
    {"anyOf": [{"type": "boolean"}, {"type": "string", "maxLength": 5}, {"type": "null"}]},
    {"type": "object", "properties": {"k": {"const": {"x": [1, 2]}}, "s": {"type": "string", "minLength": 2,
                                                                          "maxLength": 4}},
     "required": ["k", "s"]},
    {"type": ["integer", "boolean"]},
]

PATTERNS = ["^[a-z]{1,5}$", "^\\d{2,3}$", "^(ab|cd)+x?$", "^[A-Z][a-z]{0,4}$"]


def gen_schema(rng, depth=0):
    kinds = ["string", "integer", "number", "boolean", "null", "enum", "const"]
    if depth < 3:
        kinds += ["object", "object", "array", "anyOf"]
    k = rng.choice(kinds)
    if k == "string":
        r = rng.random()
        if r < 0.3:
            return {"type": "string", "pattern": rng.choice(PATTERNS)}
        lo = rng.randint(0, 3)
        return {"type": "string", "minLength": lo, "maxLength": lo + rng.randint(0, 10)}
    if k == "integer":
        lo = rng.randint(-1000, 1000)
        s = {"type": "integer"}
        if rng.random() < 0.7:
            s["minimum"] = lo
        if rng.random() < 0.7:
            s["maximum"] = lo + rng.randint(0, 2000)
        if rng.random() < 0.2:
            s.pop("minimum", None)
            s["exclusiveMinimum"] = lo
        return s
    if k == "number":
        return {"type": "number"} if rng.random() < 0.7 else {"type": "number", "minimum": 0}
    if k in ("boolean", "null"):
        return {"type": k}
    if k == "enum":
        pool = ["a", "b c", "\u00e9t\u00e9", 1, -2.5, None, False, "\"q\""]
        return {"enum": rng.sample(pool, rng.randint(1, 4))}
    if k == "const":
        return {"const": rng.choice(["fixed", 42, {"n": [None]}])}
    if k == "object":
        n = rng.randint(1, 4)
        props = {f"p{i}_{rng.randint(0, 99)}": gen_schema(rng, depth + 1) for i in range(n)}
        req = [p for p in props if rng.random() < 0.6]
        s = {"type": "object", "properties": props, "required": req}
        if rng.random() < 0.5:
            s["additionalProperties"] = False
        return s
    if k == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": gen_schema(rng, depth + 1), "minItems": lo,
                "maxItems": lo + rng.randint(0, 2)}
    # anyOf over distinct types
    opts = [{"type": "boolean"}, {"type": "null"}, {"type": "integer", "minimum": 0, "maximum": 9},
            {"type": "string", "maxLength": 4}]
    return {"anyOf": rng.sample(opts, 2)}


def with_defs(rng, schema):
    """Moves the schema under $defs and refers to it, sometimes."""
    if rng.random() < 0.2:
        return {"$defs": {"main": schema}, "$ref": "#/$defs/main"}
    return schema


PROMPTS = ["Output:", "The answer in JSON is", "Data for the fox and the dog:", "{\"", "Result ="]


def run_cases(srv, cases, max_tokens, workers):
    """cases: (schema, seed, prompt). Returns (validated, length, failures)."""
    def one(case):
        schema, seed, prompt = case
        st, body, _ = post_json(srv, "/v1/completions", {
            "prompt": prompt, "max_tokens": max_tokens, "seed": seed, "temperature": 1.0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}})
        if st != 200:
            return ("fail", f"HTTP {st}: {body} for {json.dumps(schema)}")
        ch = body["choices"][0]
        if ch["finish_reason"] == "length":
            return ("length", None)
        try:
            jsonschema.validate(json.loads(ch["text"]), schema)
        except Exception as e:  # noqa: BLE001 - any parse or validation error is a failure
            return ("fail", f"{type(e).__name__}: {str(e)[:200]} | text={ch['text']!r} | schema={json.dumps(schema)}")
        return ("ok", None)

    def free(i):  # unconstrained requests in the same batches
        st, _, _ = post_json(srv, "/v1/completions", {"prompt": "free", "max_tokens": 16, "seed": i})
        return st

    with ThreadPoolExecutor(workers) as ex:
        frees = [ex.submit(free, i) for i in range(len(cases) // 8)]
        results = list(ex.map(one, cases))
        assert all(f.result() == 200 for f in frees)
    fails = [m for r, m in results if r == "fail"]
    return sum(r == "ok" for r, _ in results), sum(r == "length" for r, _ in results), fails


def make_cases(n, seed):
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        schema = FIXED[i % len(FIXED)] if i < 3 * len(FIXED) else with_defs(rng, gen_schema(rng))
        cases.append((schema, i, PROMPTS[i % len(PROMPTS)]))
    return cases


def report(capsys, what, ok, length, fails):
    with capsys.disabled():
        print(f"\n[structured outputs] {what}: {ok} validated, {length} length finishes, {len(fails)} failures")


def test_jsonschema_cases_tiny(models, tmp_path, capsys):
    with Server(models["spm"], tmp_path, "--max-num-seqs", "16", name="structured") as s:
        cases = make_cases(240, 2026)
        ok, length, fails = run_cases(s, cases, 200, 8)
        report(capsys, "tiny model, 240 cases", ok, length, fails)
        assert not fails, "\n".join(fails[:5])
        assert ok + length == 240 and ok >= 200


def test_regex_and_choice_cases_tiny(models, tmp_path):
    with Server(models["bpe"], tmp_path, name="regex") as s:
        for i in range(24):
            pat = ["[a-z]{2,6}@[a-z]{3}\\.(com|org)", "\\(\\d{3}\\) \\d{3}-\\d{4}", "(yes|no)!{0,2}"][i % 3]
            st, body, _ = post_json(s, "/v1/completions", {"prompt": "x", "max_tokens": 40, "seed": i,
                                                           "structured_outputs": {"regex": pat}})
            ch = body["choices"][0]
            assert st == 200 and (ch["finish_reason"] == "length" or re.fullmatch(pat, ch["text"])), ch
            opts = ["alpha", "beta", "gamma delta", "\u00fcber"]
            st, body, _ = post_json(s, "/v1/completions",
                                    {"prompt": "y", "max_tokens": 16, "seed": i, "guided_choice": opts})
            assert body["choices"][0]["text"] in opts and body["choices"][0]["finish_reason"] == "stop", body


def test_jsonschema_cases_gemma(tmp_path, capsys):
    gguf = os.environ.get("SLIMSERVE_GEMMA_GGUF")
    if not gguf or not os.path.exists(gguf):
        pytest.skip("SLIMSERVE_GEMMA_GGUF not set")
    with Server(gguf, tmp_path, name="gemma-structured") as s:
        # under the sanitizers (CI's second pass) 3 of the 8 cases: each takes ~5 s there
        k = 3 if os.environ.get("SLIMSERVE_SANITIZED") else 8
        cases = make_cases(8, 7)[:k]
        ok, length, fails = run_cases(s, cases, 120, 4)
        report(capsys, f"Gemma 3 270M, {k} cases", ok, length, fails)
        assert not fails, "\n".join(fails[:5])
