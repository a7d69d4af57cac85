#!/usr/bin/env python3
"""Independent NumPy float64 reference of layer parallelism (DESIGN.md 5).

Layers [S, E) of a llama, qwen2 or gemma3 GGUF run as pairs (S, S+1),
(S+2, S+3), ...; for a pair (a, b):

    h = x + Attn_a(x) + Attn_b(x)
    y = h + MLP_a(h) + MLP_b(h)

where each branch is that layer's own sub-layer, unchanged:
    Attn_l(x) = post_attn_norm_l( Wo_l . attention_l( norm_l(x) ) )
    MLP_l(h)  = post_ffw_norm_l( Wdown_l . (act(Wgate_l n) * Wup_l n) ), n = ffn_norm_l(h)
with the layer's q/k/v biases (qwen2), per-head q/k norms and sliding window
and RoPE base (gemma3); post-norms are the identity where the file has none
(llama, qwen2). Every layer attends over its own K/V of the same tokens.
Layers outside the range run in sequence. An empty range is the plain model.

Weights are dequantised with gemma_ref.tensor_f64 (the PyPI gguf package);
RoPE is llama_ref.rope; everything else (the pairing, the attention with its
window mask, the sub-layers) is written here in float64. Nothing is shared
with the C engine.

Usage:
    lp_ref.py MODEL --tokens 1,5,9 --range 2:6 --out logits.f32
writes float32 [n_tokens][n_vocab] logits of every position (row-major);
--range off (default) runs the plain model.
"""
import argparse
import math
import os
import sys

import numpy as np
from gguf import GGUFReader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemma_ref import field, tensor_f64, gelu_tanh  # noqa: E402
from llama_ref import rope  # noqa: E402

ARCHS = ("llama", "qwen2", "gemma3")


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


class LPRef:
    def __init__(self, path):
        r = GGUFReader(path)
        arch = field(r, "general.architecture")
        if arch not in ARCHS:
            raise ValueError("unsupported architecture " + arch)
        self.arch = arch
        A = arch + "."
        self.n_layers = int(field(r, A + "block_count"))
        self.dim = int(field(r, A + "embedding_length"))
        self.n_heads = int(field(r, A + "attention.head_count"))
        self.n_kv = int(field(r, A + "attention.head_count_kv", self.n_heads))
        self.hd = int(field(r, A + "attention.key_length", self.dim // self.n_heads))
        self.n_rot = int(field(r, A + "rope.dimension_count", self.hd))
        self.eps = float(field(r, A + "attention.layer_norm_rms_epsilon",
                               1e-6 if arch == "gemma3" else 1e-5))
        self.base = float(field(r, A + "rope.freq_base", 1e6 if arch == "gemma3" else 1e4))
        self.base_swa = float(field(r, A + "rope.freq_base_swa", 10000.0, required=False))
        self.scale = 1.0
        if field(r, A + "rope.scaling.type", required=False) == "linear":
            fac = float(field(r, A + "rope.scaling.factor", 1.0))
            if fac > 0:
                self.scale = 1.0 / fac
        self.neox = arch != "llama"
        self.gemma = arch == "gemma3"
        self.softcap = float(field(r, A + "final_logit_softcapping", 0.0, required=False))
        self.window = int(field(r, A + "attention.sliding_window", 0, required=False)) if self.gemma else 0
        pat = field(r, A + "attention.sliding_window_pattern", required=False)
        if self.window <= 0:
            self.swa = [False] * self.n_layers
        elif isinstance(pat, list):
            self.swa = [bool(v) for v in pat][:self.n_layers]
        else:
            P = 6 if pat is None else int(pat)
            self.swa = [P == 0 or (l % P) < P - 1 for l in range(self.n_layers)]
        self.tensors = {t.name: t for t in r.tensors}
        self._cache = {}
        self.factors = self.W("rope_freqs.weight") if "rope_freqs.weight" in self.tensors else None
        self.emb = self.W("token_embd.weight")
        self.n_vocab = self.emb.shape[0]

    def W(self, name):
        if name not in self._cache:
            self._cache[name] = tensor_f64(self.tensors[name])
        return self._cache[name]

    def has(self, name):
        return name in self.tensors

    # ---- one layer's two sub-layers, as functions of their input
    def attn(self, l, x, pos):
        T, H, G, D = x.shape[0], self.n_heads, self.n_kv, self.hd
        p = "blk.%d." % l
        n = rmsnorm(x, self.W(p + "attn_norm.weight"), self.eps)
        q = n @ self.W(p + "attn_q.weight").T
        k = n @ self.W(p + "attn_k.weight").T
        v = n @ self.W(p + "attn_v.weight").T
        if self.has(p + "attn_q.bias"):
            q = q + self.W(p + "attn_q.bias")
            k = k + self.W(p + "attn_k.bias")
            v = v + self.W(p + "attn_v.bias")
        if self.has(p + "attn_q_norm.weight"):
            q = rmsnorm(q.reshape(T, H, D), self.W(p + "attn_q_norm.weight"), self.eps).reshape(T, H * D)
            k = rmsnorm(k.reshape(T, G, D), self.W(p + "attn_k_norm.weight"), self.eps).reshape(T, G * D)
        base = self.base_swa if self.swa[l] else self.base
        fs = 1.0 if self.swa[l] else self.scale
        q = rope(q, pos, H, D, self.n_rot, base, fs, self.neox, self.factors).reshape(T, H, D)
        k = rope(k, pos, G, D, self.n_rot, base, fs, self.neox, self.factors).reshape(T, G, D)
        v = v.reshape(T, G, D)
        diff = pos[:, None] - pos[None, :]
        ok = diff >= 0
        if self.swa[l]:
            ok &= diff < self.window
        scale = 1.0 / math.sqrt(D)
        a = np.zeros((T, H, D))
        for h in range(H):
            g = h // (H // G)
            s = np.where(ok, (q[:, h, :] @ k[:, g, :].T) * scale, -np.inf)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            a[:, h, :] = s @ v[:, g, :]
        o = a.reshape(T, H * D) @ self.W(p + "attn_output.weight").T
        if self.has(p + "post_attention_norm.weight"):
            o = rmsnorm(o, self.W(p + "post_attention_norm.weight"), self.eps)
        return o

    def ffn(self, l, x):
        p = "blk.%d." % l
        n = rmsnorm(x, self.W(p + "ffn_norm.weight"), self.eps)
        g = n @ self.W(p + "ffn_gate.weight").T
        u = n @ self.W(p + "ffn_up.weight").T
        act = gelu_tanh(g) if self.gemma else g / (1.0 + np.exp(-g))
        f = (act * u) @ self.W(p + "ffn_down.weight").T
        if self.has(p + "post_ffw_norm.weight"):
            f = rmsnorm(f, self.W(p + "post_ffw_norm.weight"), self.eps)
        return f

    def logits(self, tokens, start=0, end=0):
        """All-position logits [T][n_vocab] with layers [start, end) paired."""
        if start != end and (start < 0 or end > self.n_layers or start > end or (end - start) % 2):
            raise ValueError("bad range %d:%d" % (start, end))
        toks = np.asarray(tokens, dtype=np.int64)
        pos = np.arange(len(toks))
        x = self.emb[toks].copy()
        if self.gemma:
            x = x * math.sqrt(self.dim)
        l = 0
        while l < self.n_layers:
            if start <= l < end:  # a pair (l, l+1): both branches see the same input
                h = x + self.attn(l, x, pos) + self.attn(l + 1, x, pos)
                x = h + self.ffn(l, h) + self.ffn(l + 1, h)
                l += 2
            else:
                x = x + self.attn(l, x, pos)
                x = x + self.ffn(l, x)
                l += 1
        out = self.W("output.weight") if self.has("output.weight") else self.emb
        y = rmsnorm(x, self.W("output_norm.weight"), self.eps) @ out.T
        if self.softcap > 0:
            y = self.softcap * np.tanh(y / self.softcap)
        return y


def parse_range(s):
    if s in ("off", "none", ""):
        return 0, 0
    a, b = s.split(":")
    return int(a), int(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--range", default="off", help="START:END paired layers, or off")
    ap.add_argument("--out", help="write float32 [n_tokens][n_vocab] logits here")
    a = ap.parse_args()
    tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    if not tokens:
        ap.error("no tokens")
    m = LPRef(a.model)
    s, e = parse_range(a.range)
    lg = m.logits(tokens, s, e)
    if a.out:
        np.asarray(lg, dtype="<f4").tofile(a.out)
    else:
        for i, row in enumerate(lg):
            top = np.argsort(-row)[:5]
            print(i, " ".join("%d:%.6f" % (t, row[t]) for t in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
