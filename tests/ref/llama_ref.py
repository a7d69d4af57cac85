#!/usr/bin/env python3
"""Independent NumPy float64 reference of the llama forward pass.

Reads a GGUF file with the PyPI `gguf` package (metadata and raw tensor bytes
only; dequantisation is done here), runs a full causal forward over a token
sequence in float64 and writes the logits of every position.

    python3 tests/ref/llama_ref.py MODEL --tokens 1,5,9 --out logits.f32

writes float32 [n_tokens][n_vocab] (row-major, no header). Without --out the
top-5 logits of each position are printed. Architectures: llama (adjacent-pair
RoPE, as produced by llama.cpp's converter; optional rope_freqs.weight
divisors, llama3-style) and qwen2 (rotate-half RoPE, q/k/v biases).

This file shares no code with the C engine on purpose: it is the yardstick the
engine's numerics are tested against.
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader

ARCHS = {
    # name: (neox rope, qkv biases)
    "llama": (False, False),
    "qwen2": (True, True),
}


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError("missing key " + key)
        return default
    return f.contents()


def raw_bytes(reader, t):
    return np.asarray(reader.data[t.data_offset:t.data_offset + t.n_bytes], dtype=np.uint8)


def dequant(reader, t):
    """Tensor as float64 numpy array shaped [ne1][ne0] (or [ne0] for vectors)."""
    ne = [int(x) for x in t.shape]
    n = 1
    for x in ne:
        n *= x
    b = raw_bytes(reader, t)
    ty = int(t.tensor_type)
    if ty == 0:  # F32
        v = b[:4 * n].view("<f4").astype(np.float64)
    elif ty == 1:  # F16
        v = b[:2 * n].view("<f2").astype(np.float64)
    elif ty == 30:  # BF16: the top half of an IEEE float32
        u = b[:2 * n].view("<u2").astype(np.uint32) << 16
        v = u.view("<f4").astype(np.float64)
    elif ty == 8:  # Q8_0: blocks of {f16 scale d; int8 q[32]}, x = d * q
        nb = n // 32
        blk = b[:34 * nb].reshape(nb, 34)
        d = blk[:, :2].copy().view("<f2").astype(np.float64)  # [nb][1]
        q = blk[:, 2:].copy().view(np.int8).astype(np.float64)  # [nb][32]
        v = (d * q).reshape(n)
    else:
        raise ValueError("tensor %s: unsupported type %d" % (t.name, ty))
    if len(ne) == 1 or all(x == 1 for x in ne[1:]):
        return v
    return v.reshape(list(reversed(ne)))


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, n_heads, hd, n_rot, theta, freq_scale, neox, factors=None):
    """x: [T][n_heads*hd]; rotates the first n_rot dims of each head. Pair i
    turns by pos * freq_scale * theta^(-2i/n_rot) / factors[i]."""
    T = x.shape[0]
    x = x.reshape(T, n_heads, hd).copy()
    half = n_rot // 2
    inv = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)  # [half]
    if factors is not None:
        inv = inv / factors
    ang = (pos.astype(np.float64) * freq_scale)[:, None] * inv[None, :]  # [T][half]
    cos = np.cos(ang)[:, None, :]
    sin = np.sin(ang)[:, None, :]
    if neox:
        a, b = x[:, :, :half].copy(), x[:, :, half:n_rot].copy()
        x[:, :, :half] = a * cos - b * sin
        x[:, :, half:n_rot] = a * sin + b * cos
    else:
        a, b = x[:, :, 0:n_rot:2].copy(), x[:, :, 1:n_rot:2].copy()
        x[:, :, 0:n_rot:2] = a * cos - b * sin
        x[:, :, 1:n_rot:2] = a * sin + b * cos
    return x.reshape(T, n_heads * hd)


def attention(q, k, v, n_heads, n_kv, hd):
    """Causal multi-head attention with grouped K/V heads. q: [T][n_heads*hd]."""
    T = q.shape[0]
    q = q.reshape(T, n_heads, hd)
    k = k.reshape(T, n_kv, hd)
    v = v.reshape(T, n_kv, hd)
    group = n_heads // n_kv
    out = np.zeros((T, n_heads, hd))
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for h in range(n_heads):
        kh = h // group
        s = q[:, h, :] @ k[:, kh, :].T / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=1, keepdims=True))
        s /= s.sum(axis=1, keepdims=True)
        out[:, h, :] = s @ v[:, kh, :]
    return out.reshape(T, n_heads * hd)


def silu(g):
    return g / (1.0 + np.exp(-g))


def dense_ffn(il, h, W):
    """The plain SwiGLU FFN of layer il on normalised rows h [T][dim]."""
    p = "blk.%d." % il
    return (silu(h @ W(p + "ffn_gate.weight").T) * (h @ W(p + "ffn_up.weight").T)) @ W(p + "ffn_down.weight").T


def forward(path, tokens, ffn=dense_ffn, hidden=False):
    """ffn(il, h, W) computes layer il's FFN of the normalised rows h (W
    dequantises a tensor by name); lte_ref.py passes its sparse one.
    hidden=True returns the final hidden states [T][dim] (after the output
    norm, before the output projection: what embeddings pool) instead of
    the logits."""
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    if arch not in ARCHS:
        raise ValueError("unsupported architecture " + arch)
    neox, biases = ARCHS[arch]
    tensors = {t.name: t for t in r.tensors}

    def W(name):
        return dequant(r, tensors[name])

    n_layers = int(field(r, arch + ".block_count"))
    dim = int(field(r, arch + ".embedding_length"))
    n_heads = int(field(r, arch + ".attention.head_count"))
    n_kv = int(field(r, arch + ".attention.head_count_kv", n_heads))
    hd = int(field(r, arch + ".attention.key_length", dim // n_heads))
    n_rot = int(field(r, arch + ".rope.dimension_count", hd))
    eps = float(field(r, arch + ".attention.layer_norm_rms_epsilon", 1e-5))
    theta = float(field(r, arch + ".rope.freq_base", 10000.0))
    freq_scale = 1.0
    if arch + ".rope.scaling.type" in r.fields and field(r, arch + ".rope.scaling.type") == "linear":
        freq_scale = 1.0 / float(field(r, arch + ".rope.scaling.factor", 1.0))

    factors = W("rope_freqs.weight") if "rope_freqs.weight" in tensors else None
    emb = W("token_embd.weight")  # [n_vocab][dim]
    out_w = W("output.weight") if "output.weight" in tensors else emb
    toks = np.asarray(tokens, dtype=np.int64)
    pos = np.arange(len(toks))
    x = emb[toks].copy()  # [T][dim]
    for il in range(n_layers):
        p = "blk.%d." % il
        h = rmsnorm(x, W(p + "attn_norm.weight"), eps)
        q = h @ W(p + "attn_q.weight").T
        k = h @ W(p + "attn_k.weight").T
        v = h @ W(p + "attn_v.weight").T
        if biases:
            q += W(p + "attn_q.bias")
            k += W(p + "attn_k.bias")
            v += W(p + "attn_v.bias")
        q = rope(q, pos, n_heads, hd, n_rot, theta, freq_scale, neox, factors)
        k = rope(k, pos, n_kv, hd, n_rot, theta, freq_scale, neox, factors)
        a = attention(q, k, v, n_heads, n_kv, hd)
        x = x + a @ W(p + "attn_output.weight").T
        h = rmsnorm(x, W(p + "ffn_norm.weight"), eps)
        x = x + ffn(il, h, W)
    x = rmsnorm(x, W("output_norm.weight"), eps)
    if hidden:
        return x
    return x @ out_w.T  # [T][n_vocab]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", help="write float32 [n_tokens][n_vocab] logits here")
    a = ap.parse_args()
    tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    if not tokens:
        ap.error("no tokens")
    logits = forward(a.model, tokens)
    if a.out:
        logits.astype("<f4").tofile(a.out)
    else:
        for i, row in enumerate(logits):
            top = np.argsort(-row)[:5]
            print(i, " ".join("%d:%.6f" % (t, row[t]) for t in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
