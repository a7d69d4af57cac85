#!/usr/bin/env python3
"""Independent NumPy float64 reference of `slimserve perplexity`.

Takes the token ids of the whole text (tokenization is not re-implemented
here: the caller dumps them), cuts them into non-overlapping windows of --ctx
tokens (a shorter tail is dropped), replaces each window's first token with
BOS when the model's tokenizer adds one, runs each window on its own through
the float64 forward of tests/ref/llama_ref.py, and scores the second half:

    NLL_i = logsumexp(logits_i) - logits_i[t_{i+1}]   for i in [N/2, N-1)
    perplexity = exp(mean NLL over all windows)

    python3 tests/ref/ppl_ref.py MODEL --tokens-file ids.txt --ctx 64 [--max-windows K] [--bos ID]

ids.txt holds integers separated by whitespace or commas. Prints one JSON
object: {"perplexity", "nll_mean", "tokens" (scored), "windows", "bos"}.
--bos -1 disables BOS replacement; by default it is read from the GGUF
(tokenizer.ggml.add_bos_token, default true for "llama" vocabularies and
false otherwise, and tokenizer.ggml.bos_token_id).
"""
import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402  (the forward pass; shares no code with the C engine)
from gguf import GGUFReader  # noqa: E402


def bos_of(path):
    r = GGUFReader(path)

    def get(key, default):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    kind = get("tokenizer.ggml.model", "llama")
    add = bool(get("tokenizer.ggml.add_bos_token", kind == "llama"))
    bos = get("tokenizer.ggml.bos_token_id", None)
    return int(bos) if add and bos is not None else -1


def nll_rows(logits, targets):
    """-log softmax(logits[r])[targets[r]] per row, float64, max subtracted."""
    mx = logits.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(logits - mx).sum(axis=1))
    return lse - logits[np.arange(len(targets)), targets]


def perplexity(path, ids, ctx, bos, max_windows=0):
    n_windows = len(ids) // ctx
    if max_windows > 0:
        n_windows = min(n_windows, max_windows)
    if n_windows < 1:
        raise ValueError("fewer tokens (%d) than one window (%d)" % (len(ids), ctx))
    h = ctx // 2
    total, count = 0.0, 0
    for w in range(n_windows):
        win = list(ids[w * ctx:(w + 1) * ctx])
        inp = list(win)
        if bos >= 0:
            inp[0] = bos
        logits = np.asarray(llama_ref.forward(path, inp), dtype=np.float64)
        rows = np.arange(h, ctx - 1)
        nll = nll_rows(logits[rows], np.asarray(win, dtype=np.int64)[rows + 1])
        total += float(nll.sum())
        count += len(rows)
    mean = total / count
    return {"perplexity": float(np.exp(mean)), "nll_mean": mean, "tokens": count,
            "windows": n_windows, "bos": bos}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens-file", required=True)
    ap.add_argument("--ctx", type=int, required=True)
    ap.add_argument("--max-windows", type=int, default=0)
    ap.add_argument("--bos", type=int, default=None)
    a = ap.parse_args()
    if a.ctx < 4:
        ap.error("--ctx must be >= 4")
    with open(a.tokens_file) as f:
        ids = [int(t) for t in re.split(r"[\s,]+", f.read()) if t]
    bos = bos_of(a.model) if a.bos is None else a.bos
    print(json.dumps(perplexity(a.model, ids, a.ctx, bos, a.max_windows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
