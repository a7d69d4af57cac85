#!/usr/bin/env python3
"""Independent NumPy float64 reference of the Gemma 3 forward pass.

Reads a GGUF file (architecture gemma3) with the PyPI `gguf` package, whose
gguf.quants.dequantize turns every weight (F32/F16/BF16/Q8_0/Q5_0/Q4_K/Q6_K...)
into floats; all arithmetic after that is float64 NumPy. Nothing here is
shared with the C engine: it is the yardstick the engine is tested against.

The model, as llama.cpp's gemma3 graph computes it (and as Google describes
Gemma 3):

    x = token_embd[tok] * sqrt(dim)
    per layer l:
        h = rmsnorm(x) * attn_norm                 (GGUF norm weights already hold 1 + w)
        q, k, v = h Wq, h Wk, h Wv                 (head_dim = key_length, may differ from dim/heads)
        q, k = rmsnorm per head * attn_q_norm / attn_k_norm
        q, k = RoPE rotate-half (NeoX); base = rope.freq_base_swa (default 10000)
               on sliding-window layers, rope.freq_base on global ones; a linear
               rope.scaling.factor applies to global layers only
        a = softmax(q k^T * 1/sqrt(head_dim) + mask) v, grouped K/V heads;
            mask: causal, and on sliding layers key position p0 is hidden from
            query position p1 when p1 - p0 >= sliding_window
        x = x + rmsnorm(a Wo) * post_attention_norm
        h = rmsnorm(x) * ffn_norm
        x = x + rmsnorm((gelu_tanh(h Wgate) * (h Wup)) Wdown) * post_ffw_norm
    logits = rmsnorm(x) * output_norm . output^T   (output = token_embd when absent)
    final_logit_softcapping c > 0 (absent for gemma3): logits = c * tanh(logits / c)

Sliding layers: with attention.sliding_window > 0, layer l is local iff
l % P < P - 1, P = attention.sliding_window_pattern (default 6: every sixth
layer, 5, 11, 17, ..., is global); P may also be a per-layer bool array.

Usage:
    gemma_ref.py MODEL --tokens 2,651,... [--out logits.f32] [--last]
        writes float32 [n_tokens][n_vocab] (or only the last row with --last)
    gemma_ref.py MODEL --tokens ... --greedy N
        prints the N greedy continuation tokens (KV-cached incremental decode)

As a module: GemmaRef(path) has .logits(tokens) (full recompute) and
.greedy(tokens, n) (incremental, with the per-step top-2 margin).
"""
import argparse
import math
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from gguf.constants import GGMLQuantizationType


def field(reader, key, default=None, required=True):
    f = reader.fields.get(key)
    if f is None:
        if required and default is None:
            raise KeyError("missing key " + key)
        return default
    return f.contents()


def tensor_f64(t):
    """A GGUF tensor as float64, shaped [ne1][ne0] (or [ne0] for vectors)."""
    ne = [int(x) for x in t.shape]
    qt = GGMLQuantizationType(int(t.tensor_type))
    raw = np.asarray(t.data)
    if qt == GGMLQuantizationType.F32:
        v = raw.astype(np.float64).reshape(-1)
    elif qt == GGMLQuantizationType.F16:
        v = raw.view(np.float16).astype(np.float64).reshape(-1)
    else:
        v = dequantize(raw.view(np.uint8).reshape(-1), qt).astype(np.float64).reshape(-1)
    if len(ne) == 1 or all(x == 1 for x in ne[1:]):
        return v[:ne[0]]
    return v.reshape(ne[1], ne[0])


def rmsnorm(x, w, eps):
    """x: [..., d]; w: [d]. float64 throughout."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def rope_neox(x, pos, n_rot, base, freq_scale):
    """x: [T][H][D]; rotates pairs (i, i + n_rot/2) of the first n_rot dims by
    angle pos * freq_scale * base^(-2i/n_rot)."""
    half = n_rot // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)
    ang = (pos.astype(np.float64) * freq_scale)[:, None] * inv[None, :]  # [T][half]
    c = np.cos(ang)[:, None, :]
    s = np.sin(ang)[:, None, :]
    y = x.copy()
    a, b = x[:, :, :half], x[:, :, half:n_rot]
    y[:, :, :half] = a * c - b * s
    y[:, :, half:n_rot] = a * s + b * c
    return y


def f16(x):
    return x.astype(np.float16).astype(np.float64)


class GemmaRef:
    """gelu_f16=True rounds the GELU input and output to fp16 as ggml's CPU
    GELU table does, so llama.cpp can be compared with the reference at the
    1e-4 level (make_fixture.py --check-llama-cpp); the default is exact
    float64 arithmetic."""

    def __init__(self, path, gelu_f16=False):
        self.gelu_f16 = gelu_f16
        r = GGUFReader(path)
        arch = field(r, "general.architecture")
        if arch != "gemma3":
            raise ValueError("gemma_ref.py handles gemma3 only, not " + arch)
        A = arch + "."
        self.n_layers = int(field(r, A + "block_count"))
        self.dim = int(field(r, A + "embedding_length"))
        self.n_heads = int(field(r, A + "attention.head_count"))
        self.n_kv = int(field(r, A + "attention.head_count_kv", self.n_heads))
        self.hd = int(field(r, A + "attention.key_length", 256))
        self.n_rot = int(field(r, A + "rope.dimension_count", self.hd))
        self.eps = float(field(r, A + "attention.layer_norm_rms_epsilon", 1e-6))
        self.base = float(field(r, A + "rope.freq_base", 1e6))
        self.base_swa = float(field(r, A + "rope.freq_base_swa", 10000.0))
        self.scale_global = 1.0
        if field(r, A + "rope.scaling.type", required=False) == "linear":
            fac = float(field(r, A + "rope.scaling.factor", 1.0))
            if fac > 0:
                self.scale_global = 1.0 / fac
        self.softcap = float(field(r, A + "final_logit_softcapping", 0.0))
        self.window = int(field(r, A + "attention.sliding_window", 0))
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
        self.emb = self.W("token_embd.weight")  # [n_vocab][dim]
        self.n_vocab = self.emb.shape[0]
        self.out_w = self.W("output.weight") if "output.weight" in self.tensors else self.emb

    def mm(self, x, name):
        """x [T][K] times the weight matrix name [N][K] transposed."""
        return x @ self.W(name).T

    def W(self, name):
        if name not in self._cache:
            self._cache[name] = tensor_f64(self.tensors[name])
        return self._cache[name]

    def act(self, g):
        return f16(gelu_tanh(f16(g))) if self.gelu_f16 else gelu_tanh(g)

    def ffn(self, l, h):
        """The FFN of layer l on normalised rows h [T][dim] (lte_ref.py
        overrides it with the sparse one)."""
        p = "blk.%d." % l
        return self.mm(self.act(self.mm(h, p + "ffn_gate.weight")) * self.mm(h, p + "ffn_up.weight"),
                       p + "ffn_down.weight")

    # -- one forward over new tokens at positions pos, with per-layer K/V caches
    def _forward(self, tokens, pos, kv):
        T = len(tokens)
        H, G, D, eps = self.n_heads, self.n_kv, self.hd, self.eps
        x = self.emb[np.asarray(tokens)] * np.float64(math.sqrt(self.dim))  # [T][dim]
        for l in range(self.n_layers):
            p = "blk.%d." % l
            h = rmsnorm(x, self.W(p + "attn_norm.weight"), eps)
            q = self.mm(h, p + "attn_q.weight").reshape(T, H, D)
            k = self.mm(h, p + "attn_k.weight").reshape(T, G, D)
            v = self.mm(h, p + "attn_v.weight").reshape(T, G, D)
            q = rmsnorm(q, self.W(p + "attn_q_norm.weight"), eps)
            k = rmsnorm(k, self.W(p + "attn_k_norm.weight"), eps)
            base = self.base_swa if self.swa[l] else self.base
            fs = 1.0 if self.swa[l] else self.scale_global
            q = rope_neox(q, pos, self.n_rot, base, fs)
            k = rope_neox(k, pos, self.n_rot, base, fs)
            kp, vp, pp = kv[l]
            K = np.concatenate([kp, k]) if kp is not None else k
            V = np.concatenate([vp, v]) if vp is not None else v
            P = np.concatenate([pp, pos]) if pp is not None else pos
            kv[l] = (K, V, P)
            # mask[i][j]: query pos[i] may see key P[j]
            diff = pos[:, None] - P[None, :]
            ok = diff >= 0
            if self.swa[l]:
                ok &= diff < self.window
            a = np.zeros((T, H, D))
            grp = H // G
            for hh in range(H):
                s = (q[:, hh, :] @ K[:, hh // grp, :].T) / math.sqrt(D)
                s = np.where(ok, s, -np.inf)
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
                a[:, hh, :] = s @ V[:, hh // grp, :]
            o = self.mm(a.reshape(T, H * D), p + "attn_output.weight")
            x = x + rmsnorm(o, self.W(p + "post_attention_norm.weight"), eps)
            h = rmsnorm(x, self.W(p + "ffn_norm.weight"), eps)
            x = x + rmsnorm(self.ffn(l, h), self.W(p + "post_ffw_norm.weight"), eps)
        return x

    def _logits(self, x):
        y = self.mm(rmsnorm(x, self.W("output_norm.weight"), self.eps),
                    "output.weight" if "output.weight" in self.tensors else "token_embd.weight")
        if self.softcap > 0:
            y = self.softcap * np.tanh(y / self.softcap)
        return y

    def hidden(self, tokens):
        """Final hidden states [T][dim] after the output norm (what embeddings
        pool), full forward from position 0."""
        kv = [(None, None, None)] * self.n_layers
        x = self._forward(tokens, np.arange(len(tokens)), kv)
        return rmsnorm(x, self.W("output_norm.weight"), self.eps)

    def logits(self, tokens, last_only=False):
        """Full forward from position 0; logits [T][n_vocab] (or [n_vocab])."""
        kv = [(None, None, None)] * self.n_layers
        x = self._forward(tokens, np.arange(len(tokens)), kv)
        return self._logits(x[-1:])[0] if last_only else self._logits(x)

    def greedy(self, tokens, n):
        """Prompt logits (last row) and n greedy tokens, decoded incrementally
        with K/V caches. Returns (last_prompt_logits, continuation, margins),
        margins[i] = top1 - top2 logit at the step that chose continuation[i]."""
        kv = [(None, None, None)] * self.n_layers
        x = self._forward(tokens, np.arange(len(tokens)), kv)
        row = self._logits(x[-1:])[0]
        first = row
        out, margins = [], []
        pos = len(tokens)
        for _ in range(n):
            top = np.argsort(-row)[:2]
            out.append(int(top[0]))
            margins.append(float(row[top[0]] - row[top[1]]))
            x = self._forward([out[-1]], np.array([pos]), kv)
            pos += 1
            row = self._logits(x)[0]
        return first, out, margins


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", help="write float32 logits here (no header)")
    ap.add_argument("--last", action="store_true", help="only the last position's logits")
    ap.add_argument("--greedy", type=int, default=0, help="print N greedy continuation tokens")
    ap.add_argument("--gelu-f16", action="store_true",
                    help="round GELU input/output to fp16 like ggml's CPU table")
    a = ap.parse_args()
    tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    if not tokens:
        ap.error("no tokens")
    m = GemmaRef(a.model, gelu_f16=a.gelu_f16)
    if any(t < 0 or t >= m.n_vocab for t in tokens):
        ap.error("token id out of range")
    if a.greedy > 0:
        _, cont, margins = m.greedy(tokens, a.greedy)
        print(",".join(str(t) for t in cont))
        print("min top1-top2 margin %.4f" % min(margins))
        return 0
    lg = m.logits(tokens, last_only=a.last)
    if a.out:
        np.asarray(lg, dtype="<f4").tofile(a.out)
    else:
        rows = [lg] if a.last else lg
        for i, row in enumerate(rows):
            top = np.argsort(-row)[:5]
            print(i, " ".join("%d:%.6f" % (t, row[t]) for t in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
