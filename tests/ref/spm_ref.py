#!/usr/bin/env python3
"""spm_ref.py - independent reference for the SentencePiece-style ("llama") tokenizer.

Reads tokenizer.ggml.* from a GGUF file with the PyPI `gguf` package and encodes
texts with a deliberately naive algorithm (O(n^2): rescan every adjacent pair,
merge the one whose concatenation is a token with the highest score, leftmost on
ties, until none is left), so it shares no code or data structure with
engine/tok_spm.c. Rules it implements, matching engine/tokenizer.h:
  - user-defined tokens (type 4) are always cut out of the text, control (3) and
    unknown (2) ones only with --special; leftmost-longest match;
  - spaces become U+2581; with add_space_prefix a marker goes at the start of the
    text and after each control token (a text starting with a user-defined token
    gets a lone marker);
  - merges and final pieces use only normal (1), user-defined (4) and untyped (0)
    tokens; anything else falls back to <0xNN> byte tokens (or unk).

With --check-sp it also builds a real SentencePiece BPE model from the same
vocab (pip install sentencepiece protobuf) and checks that sentencepiece gives
the same ids for texts without control tokens.

Usage: spm_ref.py FILE.gguf [--bos] [--special] [--check-sp] TEXT...
Prints one line per text: a C initializer list of the ids.
"""
import sys


def load_vocab(path):
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields

    def arr(name):
        fld = f.get(name)
        if fld is None:
            return None
        return [fld.parts[i] for i in fld.data]

    def scalar(name, default):
        fld = f.get(name)
        if fld is None:
            return default
        return fld.parts[fld.data[0]][0]

    toks = [bytes(p).decode("utf-8") for p in arr("tokenizer.ggml.tokens")]
    n = len(toks)
    sc = arr("tokenizer.ggml.scores")
    scores = [float(p[0]) for p in sc] if sc else [0.0] * n
    ty = arr("tokenizer.ggml.token_type")
    types = [int(p[0]) for p in ty] if ty else [1] * n
    v = {
        "tokens": toks, "scores": scores, "types": types,
        "bos": int(scalar("tokenizer.ggml.bos_token_id", -1)),
        "unk": int(scalar("tokenizer.ggml.unknown_token_id", -1)),
        "add_space_prefix": bool(scalar("tokenizer.ggml.add_space_prefix", True)),
    }
    ids = {}
    for i, t in enumerate(toks):
        ids.setdefault(t, i)
    v["ids"] = ids
    return v


def split_special(v, text, special):
    """[(is_token, str_or_id)] cutting out allowed special tokens, leftmost-longest."""
    allowed = {}
    for i, (t, ty) in enumerate(zip(v["tokens"], v["types"])):
        if t and (ty == 4 or (special and ty in (2, 3))):
            allowed.setdefault(t, i)
    maxlen = max((len(t.encode()) for t in allowed), default=0)
    out, raw, pos = [], "", 0
    while pos < len(text):
        hit = None
        for L in range(min(maxlen, len(text) - pos), 0, -1):
            if text[pos:pos + L] in allowed:
                hit = text[pos:pos + L]
                break
        if hit is None:
            raw += text[pos]
            pos += 1
            continue
        if raw:
            out.append((False, raw))
            raw = ""
        out.append((True, allowed[hit]))
        pos += len(hit)
    if raw:
        out.append((False, raw))
    return out


def encode_fragment(v, s, prefix):
    usable = lambda i: v["types"][i] in (0, 1, 4)
    ids = v["ids"]
    text = ("\u2581" if prefix else "") + s.replace(" ", "\u2581")
    sym = list(text)
    while True:
        best, best_score = -1, None
        for i in range(len(sym) - 1):
            j = ids.get(sym[i] + sym[i + 1])
            if j is None or not usable(j):
                continue
            if best_score is None or v["scores"][j] > best_score:
                best, best_score = i, v["scores"][j]
        if best < 0:
            break
        sym[best:best + 2] = [sym[best] + sym[best + 1]]
    out = []
    for s_ in sym:
        j = ids.get(s_)
        if j is not None and usable(j):
            out.append(j)
            continue
        unk_done = False
        for b in s_.encode("utf-8"):
            bt = ids.get("<0x%02X>" % b)
            if bt is not None:
                out.append(bt)
            elif v["unk"] >= 0 and not unk_done:
                out.append(v["unk"])
                unk_done = True
    return out


def encode(v, text, bos=False, special=False):
    out = [v["bos"]] if bos and v["bos"] >= 0 else []
    want = v["add_space_prefix"]
    for is_tok, x in split_special(v, text, special):
        if is_tok:
            user = v["types"][x] == 4
            if user and want:
                out += encode_fragment(v, "", True)
                want = False
            out.append(x)
            if not user:
                want = v["add_space_prefix"]
        else:
            out += encode_fragment(v, x, want)
            want = False
    return out


def sp_processor(v):
    """A real sentencepiece BPE model over the same pieces (cross-check only)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id = max(v["unk"], 0)
    m.trainer_spec.bos_id = -1
    m.trainer_spec.eos_id = -1
    m.trainer_spec.pad_id = -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = v["add_space_prefix"]
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for i, (t, s, ty) in enumerate(zip(v["tokens"], v["scores"], v["types"])):
        p = m.pieces.add()
        # sentencepiece matches user-defined pieces after escaping spaces, while
        # llama.cpp and HF cut them from the raw text: escape them here to match
        p.piece = t.replace(" ", "\u2581") if ty == 4 else t
        p.score = s
        p.type = 2 if i == v["unk"] else (ty if ty in (1, 3, 4, 5, 6) else 1)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    return sp


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    flags = {a for a in argv[1:] if a.startswith("--")}
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    v = load_vocab(args[0])
    sp = sp_processor(v) if "--check-sp" in flags else None
    bad = 0
    for text in args[1:]:
        ids = encode(v, text, "--bos" in flags, "--special" in flags)
        print("{" + ", ".join(str(i) for i in ids) + "}")
        if sp is not None:
            ref = sp.encode(text)
            mine = ids[1:] if "--bos" in flags and ids and ids[0] == v["bos"] else ids
            if ref != mine:
                bad += 1
                print("  sentencepiece disagrees: {%s}" % ", ".join(map(str, ref)), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
