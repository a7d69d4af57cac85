#!/usr/bin/env python3
"""Independent NumPy float64 reference of the SUBLLM forward pass.

Reads a GGUF file of architecture "subllm" with the PyPI `gguf` package and
runs a full causal forward over a token sequence in float64, per DESIGN.md
section 5:

  - `T`: a pre-norm llama block (adjacent-pair RoPE at the tokens' absolute
    positions, causal attention among the tokens present at its level);
  - the i-th `(`: s_t = sub.i.score.weight . x_t (raw residual); token t is
    kept iff s_t > 0, with weight w_t = clip(s_t, 0, 1); the kept tokens go
    on, unchanged, with their absolute positions;
  - the matching `)`: u_t = w_t y_t + (1 - w_t) x_t for kept tokens, x_t for
    dropped ones; out_t = x_t + c (u_t - x_t), c = sub.i.bypass.weight.

    python3 tests/ref/subllm_ref.py MODEL --tokens 1,5,9 --out logits.f32 \
        [--kept kept.txt]

writes float32 [n_tokens][n_vocab] logits (row-major, no header).

    python3 tests/ref/subllm_ref.py MODEL --ppl-tokens-file ids.txt --ctx 64

prints the perplexity JSON of tests/ref/ppl_ref.py computed with this
forward pass instead of the llama one.

For tools/convert_subllm.py (the authors' conventions, listed in that
tool's docstring):

    python3 tests/ref/subllm_ref.py MODEL --export-theirs ckpt.npz --export-config cfg.json

writes MODEL (a subllm GGUF with full K/V heads) as a state dict with the
authors' names and layouts (.npz or .safetensors by extension): rotate-half
row order of q/k, w12 = gate|up, downsamplers by '(' order, bypasses by ')'
order, "decoder." prefix, inv_freq buffers; and their JSON config.

    python3 tests/ref/subllm_ref.py --theirs ckpt.npz --config cfg.json --tokens ... --out logits.f32

runs such a state dict with a second, separate float64 forward written in
the authors' conventions (rotate-half RoPE, packed w12, bypass numbering). --kept
writes one line per subsampler: "i n_kept min|s|" (min|s| = the smallest
score magnitude seen there, so a caller can tell when fp32 rounding could
flip a keep decision). Without --out the top-5 logits of each position are
printed.

Shares no code with the C engine: the GGUF decoding, norms, RoPE and
attention come from tests/ref/llama_ref.py (the same independent yardstick).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_ref import GGUFReader, attention, dequant, field, rmsnorm, rope  # noqa: E402


def parse_structure(s):
    """Checks the string; returns (number of T, number of '(')."""
    depth = n_t = n_sub = 0
    for ch in s:
        if ch == "T":
            n_t += 1
        elif ch == "(":
            depth += 1
            n_sub += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced structure " + s)
        else:
            raise ValueError("bad character %r in structure" % ch)
    if depth:
        raise ValueError("unbalanced structure " + s)
    return n_t, n_sub


def forward(path, tokens, stats=None, hidden=False):
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    if arch != "subllm":
        raise ValueError("not a subllm file: " + arch)
    tensors = {t.name: t for t in r.tensors}

    def W(name):
        return dequant(r, tensors[name])

    a = "subllm."
    structure = field(r, a + "structure")
    n_layers = int(field(r, a + "block_count"))
    n_t, n_sub = parse_structure(structure)
    if n_t != n_layers:
        raise ValueError("structure has %d T for %d layers" % (n_t, n_layers))
    dim = int(field(r, a + "embedding_length"))
    n_heads = int(field(r, a + "attention.head_count"))
    n_kv = int(field(r, a + "attention.head_count_kv", n_heads))
    hd = int(field(r, a + "attention.key_length", dim // n_heads))
    n_rot = int(field(r, a + "rope.dimension_count", hd))
    eps = float(field(r, a + "attention.layer_norm_rms_epsilon", 1e-5))
    theta = float(field(r, a + "rope.freq_base", 10000.0))

    emb = W("token_embd.weight")
    out_w = W("output.weight") if "output.weight" in tensors else emb
    toks = np.asarray(tokens, dtype=np.int64)
    x = emb[toks].copy()                 # rows present at the current level
    pos = np.arange(len(toks))           # their absolute positions
    stack = []                           # (x_outer, pos_outer, keep mask, weights, sub index)
    il = 0
    n_open = 0
    for ch in structure:
        if ch == "(":
            i = n_open
            n_open += 1
            s = x @ W("sub.%d.score.weight" % i)          # [rows]
            keep = s > 0
            w = np.clip(s, 0.0, 1.0)
            if stats is not None:
                stats.append((i, int(keep.sum()), float(np.min(np.abs(s))) if len(s) else float("inf")))
            stack.append((x, pos, keep, w, i))
            x, pos = x[keep].copy(), pos[keep]
        elif ch == ")":
            x_outer, pos_outer, keep, w, i = stack.pop()
            c = W("sub.%d.bypass.weight" % i)
            u = x_outer.copy()
            wk = w[keep][:, None]
            u[keep] = wk * x + (1.0 - wk) * x_outer[keep]
            x = x_outer + c * (u - x_outer)
            pos = pos_outer
        else:
            p = "blk.%d." % il
            il += 1
            if len(x) == 0:
                continue
            h = rmsnorm(x, W(p + "attn_norm.weight"), eps)
            q = rope(h @ W(p + "attn_q.weight").T, pos, n_heads, hd, n_rot, theta, 1.0, False)
            k = rope(h @ W(p + "attn_k.weight").T, pos, n_kv, hd, n_rot, theta, 1.0, False)
            v = h @ W(p + "attn_v.weight").T
            x = x + attention(q, k, v, n_heads, n_kv, hd) @ W(p + "attn_output.weight").T
            h = rmsnorm(x, W(p + "ffn_norm.weight"), eps)
            g = h @ W(p + "ffn_gate.weight").T
            u = h @ W(p + "ffn_up.weight").T
            x = x + (g / (1.0 + np.exp(-g)) * u) @ W(p + "ffn_down.weight").T
    x = rmsnorm(x, W("output_norm.weight"), eps)
    if hidden:  # the final hidden states [T][dim] (embeddings)
        return x
    return x @ out_w.T


# ------------------------------------------------ the authors' conventions

def structure_closing(structure):
    """closing[j] = index of the '(' closed by the j-th ')'."""
    stack, closing, n = [], [], 0
    for ch in structure:
        if ch == "(":
            stack.append(n)
            n += 1
        elif ch == ")":
            closing.append(stack.pop())
    return closing


def export_theirs(path, out, config_out):
    r = GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}

    def W(name):
        return dequant(r, tensors[name])

    a = "subllm."
    structure = field(r, a + "structure")
    n_layers = int(field(r, a + "block_count"))
    dim = int(field(r, a + "embedding_length"))
    heads = int(field(r, a + "attention.head_count"))
    if int(field(r, a + "attention.head_count_kv", heads)) != heads:
        raise ValueError("the authors' attention has no grouped K/V heads")
    hd = dim // heads
    ffn = int(field(r, a + "feed_forward_length"))

    def unpair(w):  # our adjacent-pair rows -> their rotate-half rows, per head
        return w.reshape(heads, hd // 2, 2, dim).transpose(0, 2, 1, 3).reshape(heads * hd, dim)

    sd = {"decoder.embed_tokens.weight": W("token_embd.weight")}
    inv = 1.0 / (10000.0 ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    for n in range(n_layers):
        p, o = "decoder.layers.%d." % n, "blk.%d." % n
        sd[p + "self_attn_layer_norm.weight"] = W(o + "attn_norm.weight")
        sd[p + "final_layer_norm.weight"] = W(o + "ffn_norm.weight")
        sd[p + "self_attn.q_proj.weight"] = unpair(W(o + "attn_q.weight"))
        sd[p + "self_attn.k_proj.weight"] = unpair(W(o + "attn_k.weight"))
        sd[p + "self_attn.v_proj.weight"] = W(o + "attn_v.weight")
        sd[p + "self_attn.out_proj.weight"] = W(o + "attn_output.weight")
        sd[p + "self_attn.position.inv_freq"] = inv
        sd[p + "feedforward.swiglu.w12.weight"] = np.concatenate([W(o + "ffn_gate.weight"), W(o + "ffn_up.weight")])
        sd[p + "feedforward.swiglu.w3.weight"] = W(o + "ffn_down.weight")
    for j, i in enumerate(structure_closing(structure)):
        sd["decoder.bypasses.%d.bypass_scale" % j] = W("sub.%d.bypass.weight" % i)
        sd["decoder.downsamplers.%d.to_scores.weight" % i] = W("sub.%d.score.weight" % i).reshape(1, dim)
    sd["decoder.layer_norm.weight"] = W("output_norm.weight")
    tied = "output.weight" not in tensors
    sd["decoder.output_projection.weight"] = W("output.weight") if not tied else sd["decoder.embed_tokens.weight"]
    sd = {k: np.asarray(v, dtype=np.float32) for k, v in sd.items()}
    if out.endswith(".safetensors"):
        write_safetensors(out, sd)
    else:
        np.savez(out, **sd)
    cfg = {"num_embeddings": int(sd["decoder.embed_tokens.weight"].shape[0]), "decoder_embed_dim": dim,
           "decoder_ffn_embed_dim": ffn, "hidden_size": dim, "decoder_layers": n_layers,
           "decoder_attention_heads": heads, "norm_name": "rmsnorm", "mlp_name": "swiglu", "qk_bias": False,
           "tokens_per_sample": 4096, "n_positions": 4096, "padding_idx": 0, "tie_weights": tied,
           "structure": structure}
    with open(config_out, "w") as f:
        json.dump(cfg, f)


def write_safetensors(path, sd):
    header, off, blobs = {}, 0, []
    for k, v in sd.items():
        b = np.ascontiguousarray(v, dtype="<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_state(path):
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k].astype(np.float64) for k in z.files}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype="<f4")
            .reshape(v["shape"]).astype(np.float64) for k, v in header.items() if k != "__metadata__"}


def forward_theirs(ckpt, config, tokens):
    """Float64 forward of a state dict in the authors' layout: rotate-half RoPE
    (cos/sin over cat(freqs, freqs)), w12 = silu(first half) * second half,
    downsampler k = k-th '(', bypass j = j-th ')'. Absolute positions at every
    level; attention softmax in float64."""
    sd = {k.split("decoder.", 1)[-1]: v for k, v in read_state(ckpt).items()}
    with open(config) as f:
        cfg = json.load(f)
    structure = cfg["structure"]
    heads = int(cfg["decoder_attention_heads"])
    d = int(cfg["decoder_embed_dim"])
    ffn = int(cfg["decoder_ffn_embed_dim"])
    hd = d // heads
    eps = 1e-5
    closing = structure_closing(structure)
    bypass_of = {i: j for j, i in enumerate(closing)}

    def norm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rot(x, pos):  # x [T, heads, hd]
        inv = 1.0 / (10000.0 ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        fr = pos[:, None].astype(np.float64) * inv[None, :]
        emb = np.concatenate([fr, fr], axis=-1)[:, None, :]
        half = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)
        return x * np.cos(emb) + half * np.sin(emb)

    def block(n, x, pos):
        p = "layers.%d." % n
        T = len(x)
        h = norm(x, sd[p + "self_attn_layer_norm.weight"])
        q = rot((h @ sd[p + "self_attn.q_proj.weight"].T).reshape(T, heads, hd), pos) * hd ** -0.5
        k = rot((h @ sd[p + "self_attn.k_proj.weight"].T).reshape(T, heads, hd), pos)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).reshape(T, heads, hd)
        sc = np.einsum("qhd,khd->hqk", q, k) + np.triu(np.full((T, T), -np.inf), 1)[None]
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", sc, v).reshape(T, d)
        x = x + att @ sd[p + "self_attn.out_proj.weight"].T
        h = norm(x, sd[p + "final_layer_norm.weight"])
        gu = h @ sd[p + "feedforward.swiglu.w12.weight"].T
        g, u = gu[:, :ffn], gu[:, ffn:]
        return x + (g / (1 + np.exp(-g)) * u) @ sd[p + "feedforward.swiglu.w3.weight"].T

    toks = np.asarray(tokens)
    x, pos, stack, n_t, n_open = sd["embed_tokens.weight"][toks], np.arange(len(toks)), [], 0, 0
    for ch in structure:
        if ch == "T":
            if len(x):
                x = block(n_t, x, pos)
            n_t += 1
        elif ch == "(":
            sc = (x @ sd["downsamplers.%d.to_scores.weight" % n_open].T)[:, 0]
            keep = np.nonzero(sc > 0)[0]
            stack.append((x, pos, keep, np.clip(sc[keep], 0, 1), n_open))
            x, pos = x[keep], pos[keep]
            n_open += 1
        else:
            xo, po, keep, w, i = stack.pop()
            up = xo.copy()  # their upsample: scatter w*y over the kept frames, (1-w)*x_orig added back
            up[keep] = w[:, None] * x + (1 - w[:, None]) * xo[keep]
            x = xo + (up - xo) * sd["bypasses.%d.bypass_scale" % bypass_of[i]]
            pos = po
    x = norm(x, sd["layer_norm.weight"])
    return x @ sd["output_projection.weight"].T


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--export-theirs", help="write MODEL as a state dict in the authors' layout")
    ap.add_argument("--export-config", help="with --export-theirs: their JSON config")
    ap.add_argument("--theirs", help="run a state dict in the authors' layout (with --config)")
    ap.add_argument("--config")
    ap.add_argument("--tokens", help="comma-separated token ids")
    ap.add_argument("--ppl-tokens-file", help="perplexity mode (see tests/ref/ppl_ref.py)")
    ap.add_argument("--ctx", type=int, default=0)
    ap.add_argument("--max-windows", type=int, default=0)
    ap.add_argument("--out", help="write float32 [n_tokens][n_vocab] logits here")
    ap.add_argument("--kept", help="write per-subsampler kept counts and min |score| here")
    a = ap.parse_args()
    if a.export_theirs:
        export_theirs(a.model, a.export_theirs, a.export_config)
        return 0
    if a.ppl_tokens_file:
        import re
        import types
        import ppl_ref
        ppl_ref.llama_ref = types.SimpleNamespace(forward=forward)
        with open(a.ppl_tokens_file) as f:
            ids = [int(t) for t in re.split(r"[\s,]+", f.read()) if t]
        print(json.dumps(ppl_ref.perplexity(a.model, ids, a.ctx, ppl_ref.bos_of(a.model), a.max_windows)))
        return 0
    if not a.tokens:
        ap.error("--tokens or --ppl-tokens-file is required")
    tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    if not tokens:
        ap.error("no tokens")
    stats = []
    if a.theirs:
        logits = forward_theirs(a.theirs, a.config, tokens)
    else:
        logits = forward(a.model, tokens, stats)
    if a.kept:
        with open(a.kept, "w") as f:
            for i, n, mn in stats:
                f.write("%d %d %.9g\n" % (i, n, mn))
    if a.out:
        logits.astype("<f4").tofile(a.out)
    else:
        for i, n, mn in stats:
            print("sub %d: kept %d, min |s| %.3g" % (i, n, mn))
        for i, row in enumerate(logits):
            top = np.argsort(-row)[:5]
            print(i, " ".join("%d:%.6f" % (t, row[t]) for t in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
