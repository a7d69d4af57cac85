#!/usr/bin/env python3
"""Convert a SUBLLM checkpoint of the authors' code (XiaoMi/subllm,
modeling/modeling_subllm_inference.py) into a slimserve GGUF file
(general.architecture = "subllm", DESIGN.md section 4).

    python3 tools/convert_subllm.py CHECKPOINT --config config.json \\
        --tokenizer-gguf some-llama-vocab.gguf --out model.gguf [--outtype f16]

CHECKPOINT: a PyTorch state dict (.pt / .bin / .pth, needs torch), a NumPy
.npz, or a .safetensors file (read here without the safetensors package).
Keys may carry any prefix ending in "decoder." (the authors' model nests the
decoder as `decoder`). The config is the authors' JSON (num_embeddings,
decoder_embed_dim, decoder_ffn_embed_dim, decoder_layers,
decoder_attention_heads, structure, tie_weights, qk_bias, tokens_per_sample /
n_positions); --structure overrides its structure string.

What changes on the way (checked numerically against the authors' code):
  - q_proj / k_proj rows: their RoPE is rotate-half over the whole head, ours
    (llama.cpp's "llama" convention) rotates adjacent pairs, so in every head
    their row i goes to our row 2i and their row i + hd/2 to our row 2i + 1;
  - feedforward.swiglu.w12 [2*ffn, d] packs gate | up (silu on the first
    half): split into ffn_gate and ffn_up; w3 is ffn_down;
  - downsamplers.k.to_scores.weight [1, d] -> sub.k.score.weight (k counts
    '(' in order); bypasses.j.bypass_scale -> sub.i.bypass.weight where the
    j-th ')' to appear closes the i-th '(' (theirs are numbered in closing
    order, inner first);
  - layer_norm -> output_norm, output_projection -> output (absent when
    tie_weights: the engine then reuses token_embd);
  - rotary inv_freq buffers are checked against base 10000 and dropped.
RMSNorm epsilon is 1e-5 (their LayerNorm factory's default) and RoPE base
10000 over the full head dimension. Their attention has no grouped K/V heads.
Projection biases (qk_bias / bias) are not supported by the subllm
architecture: all-zero ones are dropped, others are an error.

The tokenizer: the authors' model uses a 32000-token LLaMA SentencePiece
vocabulary; --tokenizer-gguf copies every tokenizer.* key from a GGUF that
has it (for instance a llama.cpp conversion of a LLaMA/LLaMA-2 model).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover
    sys.exit("convert_subllm: the PyPI package `gguf` is required (pip install gguf)")


class ConvertError(Exception):
    pass


# ---------------------------------------------------------------- loading

def _load_safetensors(path):
    """Minimal reader: u64 header size, JSON header, raw little-endian data."""
    dtypes = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
              "I32": np.int32, "BF16": None}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = np.asarray(data[base + a:base + b])
        dt = info["dtype"]
        if dt not in dtypes:
            raise ConvertError("%s: unsupported safetensors dtype %s" % (name, dt))
        if dt == "BF16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view("<f4")
        else:
            arr = raw.view(np.dtype(dtypes[dt]).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"])
    return out


def load_state(path):
    """The checkpoint as {name: float numpy array}."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if ext == ".safetensors":
        return _load_safetensors(path)
    try:
        import torch
    except ImportError:
        raise ConvertError("%s: reading a PyTorch checkpoint needs torch; convert it to .npz or "
                           ".safetensors first" % path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def strip_prefix(state):
    """Drops everything up to and including "decoder." from each key."""
    out = {}
    for k, v in state.items():
        i = k.find("decoder.")
        out[k[i + len("decoder."):] if i >= 0 else k] = v
    return out


# -------------------------------------------------------------- structure

def parse_structure(s):
    """Checks s; returns (n_T, n_sub, bypass_to_sub) where bypass_to_sub[j]
    is the '(' index closed by the j-th ')'."""
    stack, closing, n_t, n_sub = [], [], 0, 0
    for pos, ch in enumerate(s):
        if ch == "T":
            n_t += 1
        elif ch == "(":
            stack.append(n_sub)
            n_sub += 1
        elif ch == ")":
            if not stack:
                raise ConvertError("structure %r: ')' at %d closes nothing" % (s, pos))
            closing.append(stack.pop())
        else:
            raise ConvertError("structure %r: bad character %r" % (s, ch))
    if stack:
        raise ConvertError("structure %r: unclosed '('" % s)
    return n_t, n_sub, closing


# ------------------------------------------------------------- conversion

def rope_rows_to_pairs(w, n_heads):
    """Row permutation of a q/k projection [n_heads*hd, d]: per head, their
    row i -> our row 2i, their row hd/2 + i -> our row 2i + 1."""
    rows, d = w.shape
    hd = rows // n_heads
    if hd * n_heads != rows or hd % 2:
        raise ConvertError("projection with %d rows does not split into %d heads of even size" % (rows, n_heads))
    return w.reshape(n_heads, 2, hd // 2, d).transpose(0, 2, 1, 3).reshape(rows, d)


def convert(state, cfg, structure=None):
    """Returns (hyper-parameters dict, [(gguf name, array)])."""
    st = strip_prefix(state)
    used = set()

    def take(name, shape=None):
        if name not in st:
            raise ConvertError("checkpoint has no tensor %s" % name)
        a = np.asarray(st[name], dtype=np.float32)
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ConvertError("tensor %s has shape %s, expected %s" % (name, tuple(a.shape), tuple(shape)))
        used.add(name)
        return a

    structure = structure or cfg.get("structure")
    if not structure:
        raise ConvertError("no structure string (config 'structure' or --structure)")
    n_t, n_sub, closing = parse_structure(structure)
    emb = take("embed_tokens.weight")
    V, d = emb.shape
    n_layers = int(cfg.get("decoder_layers", n_t))
    if n_layers != n_t:
        raise ConvertError("structure has %d blocks but decoder_layers is %d" % (n_t, n_layers))
    if int(cfg.get("decoder_embed_dim", d)) != d or int(cfg.get("num_embeddings", V)) != V:
        raise ConvertError("embed_tokens.weight %s does not match the config" % (emb.shape,))
    heads = int(cfg["decoder_attention_heads"])
    ffn = int(cfg.get("decoder_ffn_embed_dim", st["layers.0.feedforward.swiglu.w3.weight"].shape[1]))
    if d % heads:
        raise ConvertError("dim %d is not a multiple of %d heads" % (d, heads))
    hd = d // heads
    tensors = [("token_embd.weight", emb)]
    for n in range(n_layers):
        p = "layers.%d." % n
        o = "blk.%d." % n
        for b in ("q_proj", "k_proj", "v_proj", "out_proj"):
            bias = st.get(p + "self_attn.%s.bias" % b)
            if bias is not None:
                used.add(p + "self_attn.%s.bias" % b)
                if np.any(np.asarray(bias) != 0):
                    raise ConvertError("%sself_attn.%s.bias is not zero: projection biases are not supported" % (p, b))
        inv = st.get(p + "self_attn.position.inv_freq")
        if inv is not None:
            used.add(p + "self_attn.position.inv_freq")
            want = 1.0 / (10000.0 ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
            if inv.shape != want.shape or np.max(np.abs(inv - want)) > 1e-5 * np.max(want):
                raise ConvertError("%sself_attn.position.inv_freq is not base 10000 over %d dims" % (p, hd))
        tensors += [
            (o + "attn_norm.weight", take(p + "self_attn_layer_norm.weight", (d,))),
            (o + "attn_q.weight", rope_rows_to_pairs(take(p + "self_attn.q_proj.weight", (d, d)), heads)),
            (o + "attn_k.weight", rope_rows_to_pairs(take(p + "self_attn.k_proj.weight", (d, d)), heads)),
            (o + "attn_v.weight", take(p + "self_attn.v_proj.weight", (d, d))),
            (o + "attn_output.weight", take(p + "self_attn.out_proj.weight", (d, d))),
            (o + "ffn_norm.weight", take(p + "final_layer_norm.weight", (d,))),
        ]
        w12 = take(p + "feedforward.swiglu.w12.weight", (2 * ffn, d))
        tensors += [
            (o + "ffn_gate.weight", w12[:ffn]),
            (o + "ffn_up.weight", w12[ffn:]),
            (o + "ffn_down.weight", take(p + "feedforward.swiglu.w3.weight", (d, ffn))),
        ]
        for b in ("w12", "w3"):
            if p + "feedforward.swiglu.%s.bias" % b in st:
                raise ConvertError("%sfeedforward.swiglu.%s.bias: biases are not supported" % (p, b))
    bypass = {}
    for j, i in enumerate(closing):
        bypass[i] = take("bypasses.%d.bypass_scale" % j, (d,))
    for i in range(n_sub):
        tensors.append(("sub.%d.score.weight" % i, take("downsamplers.%d.to_scores.weight" % i, (1, d)).reshape(d)))
        tensors.append(("sub.%d.bypass.weight" % i, bypass[i]))
    tensors.append(("output_norm.weight", take("layer_norm.weight", (d,))))
    tied = bool(cfg.get("tie_weights", False))
    if "output_projection.weight" in st:
        out_w = take("output_projection.weight", (V, d))
        if not tied or not np.array_equal(out_w, emb):
            tensors.append(("output.weight", out_w))
    elif not tied:
        raise ConvertError("checkpoint has no output_projection.weight and tie_weights is false")
    unused = sorted(k for k in st if k not in used)
    hp = {"n_layers": n_layers, "dim": d, "ffn": ffn, "heads": heads, "vocab": V, "structure": structure,
          "ctx": int(cfg.get("n_positions", cfg.get("tokens_per_sample", 2048))), "unused": unused}
    return hp, tensors


# ----------------------------------------------------------------- writing

def copy_tokenizer(w, path):
    r = gguf.GGUFReader(path)
    T = gguf.GGUFValueType
    n = 0
    for name, f in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vt = f.types[0]
        if vt == T.ARRAY:
            w.add_key_value(name, list(f.contents()), T.ARRAY, sub_type=f.types[-1])
        else:
            w.add_key_value(name, f.contents(), vt)
        n += 1
    if n == 0:
        raise ConvertError("%s has no tokenizer.* keys" % path)


def write_gguf(out, hp, tensors, tokenizer_gguf, outtype="f32", name=None):
    a = "subllm"
    w = gguf.GGUFWriter(out, a)
    w.add_string("general.name", name or "subllm")
    w.add_uint32("general.file_type", 1 if outtype == "f16" else 0)
    w.add_uint32(a + ".block_count", hp["n_layers"])
    w.add_uint32(a + ".context_length", hp["ctx"])
    w.add_uint32(a + ".embedding_length", hp["dim"])
    w.add_uint32(a + ".feed_forward_length", hp["ffn"])
    w.add_uint32(a + ".attention.head_count", hp["heads"])
    w.add_uint32(a + ".attention.head_count_kv", hp["heads"])
    w.add_uint32(a + ".rope.dimension_count", hp["dim"] // hp["heads"])
    w.add_float32(a + ".rope.freq_base", 10000.0)
    w.add_float32(a + ".attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32(a + ".vocab_size", hp["vocab"])
    w.add_string(a + ".structure", hp["structure"])
    copy_tokenizer(w, tokenizer_gguf)
    for tname, arr in tensors:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if outtype == "f16" and arr.ndim == 2:
            arr = arr.astype(np.float16)  # matrices; norms and sub vectors stay f32
        w.add_tensor(tname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--config", required=True, help="the authors' JSON config")
    ap.add_argument("--tokenizer-gguf", required=True, help="GGUF whose tokenizer.* keys are copied")
    ap.add_argument("--out", required=True)
    ap.add_argument("--outtype", choices=("f32", "f16"), default="f32")
    ap.add_argument("--structure", help="overrides the config's structure string")
    ap.add_argument("--name", help="general.name (default: the checkpoint's base name)")
    a = ap.parse_args(argv)
    try:
        with open(a.config) as f:
            cfg = json.load(f)
        hp, tensors = convert(load_state(a.checkpoint), cfg, a.structure)
        for k in hp["unused"]:
            print("convert_subllm: note: ignoring %s" % k, file=sys.stderr)
        write_gguf(a.out, hp, tensors, a.tokenizer_gguf, a.outtype,
                   a.name or os.path.splitext(os.path.basename(a.checkpoint))[0])
    except (ConvertError, OSError, KeyError, ValueError) as e:
        print("convert_subllm: %s" % e, file=sys.stderr)
        return 1
    print("convert_subllm: wrote %s: %d layers, dim %d, ffn %d, %d heads, vocab %d, structure %s, %s" % (
        a.out, hp["n_layers"], hp["dim"], hp["ffn"], hp["heads"], hp["vocab"], hp["structure"], a.outtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
