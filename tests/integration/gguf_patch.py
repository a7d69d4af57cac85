"""Rewrites a GGUF file with a chat template and renamed special tokens.

The model generator (`slimserve gen-model`) writes no tokenizer.chat_template,
so the chat tests patch one in with the PyPI `gguf` package: every key/value
and tensor is copied as is, tokenizer.chat_template is set, and chosen tokens
(padding tokens of the generated vocabulary) are renamed and typed as control
tokens so that e.g. "<|im_start|>" and "<|im_end|>" exist as single tokens.

    python3 gguf_patch.py SRC DST --template-file T [--rename OLD=NEW ...]
"""
import argparse
import sys

CONTROL = 3  # llama.cpp token type of control tokens

# A ChatML template as Qwen2-style models ship it (no bos_token).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def patch(src, dst, template, rename=None, u32=None):
    """Copies src to dst with tokenizer.chat_template = template (None: no
    template key at all); rename maps token texts to new texts (the renamed
    tokens become control tokens); u32 maps more keys to uint32 values (set or
    replaced)."""
    import gguf  # imported here so that conftest can import this module without it

    rename = dict(rename or {})
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    renamed = set()
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    for i, t in enumerate(tokens):
        if t in rename:
            renamed.add(i)
    missing = set(rename) - {tokens[i] for i in renamed}
    if missing:
        raise ValueError(f"tokens not in the vocabulary: {sorted(missing)}")
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "tokenizer.chat_template"):
            continue
        if name in (u32 or {}):
            continue
        val = f.contents()
        if name == "tokenizer.ggml.tokens":
            val = [rename.get(t, t) for t in val]
        elif name == "tokenizer.ggml.token_type":
            val = [CONTROL if i in renamed else t for i, t in enumerate(val)]
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, val, f.types[0], sub_type=sub)
    if template is not None:
        w.add_key_value("tokenizer.chat_template", template, gguf.GGUFValueType.STRING)
    for name, v in (u32 or {}).items():
        w.add_key_value(name, v, gguf.GGUFValueType.UINT32)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=list(reversed([int(x) for x in t.shape])),
                     raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def truncate_vocab(src, dst, keep):
    """Copies src to dst with only the first `keep` tokens in the tokenizer
    (tokens, scores, token_type) while the embedding keeps all its rows: a
    padded vocabulary, as some converted models have. For SPM models, whose
    special tokens come first."""
    import gguf

    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        val = f.contents()
        if name in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            val = val[:keep]
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, val, f.types[0], sub_type=sub)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=list(reversed([int(x) for x in t.shape])),
                     raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--template-file")
    ap.add_argument("--rename", action="append", default=[], metavar="OLD=NEW")
    a = ap.parse_args(argv)
    template = CHATML_TEMPLATE
    if a.template_file:
        with open(a.template_file, encoding="utf-8") as f:
            template = f.read()
    patch(a.src, a.dst, template, dict(x.split("=", 1) for x in a.rename))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
