#!/usr/bin/env python3
"""Independent NumPy float64 reference of LTE sparse FFNs (DESIGN.md 4, 5).

Reads the GGUF with the PyPI `gguf` package and runs the llama/qwen2 forward
of llama_ref.py or the gemma3 forward of gemma_ref.py with the FFN of every
layer that has a router replaced by the LTE one:

    n      = the FFN input after the FFN norm              [T][dim]
    r      = n . W_r^T + b        (blk.N.ffn_router.weight [n_experts][dim],
                                   blk.N.ffn_router.bias, absent = 0)
    on     = r > logit(tau)       (tau = lte.threshold, default 0.5, or --threshold)
    mask   = on repeated S times along the neurons (expert e = neurons [eS, (e+1)S),
             S = lte.expert_size, default 32)
    FFN(n) = ((act(n Wgate^T) * (n Wup^T)) * mask) Wdown^T
             act = SiLU (llama, qwen2), GELU-tanh (gemma3); no rescaling

Layers without a router keep the dense FFN. Nothing here is shared with the
C engine.

Usage:
    lte_ref.py MODEL --tokens 1,5,9 --out logits.f32 [--threshold T] [--dense]
        [--masks masks.u8]
writes float32 [n_tokens][n_vocab]; --dense ignores the routers (every expert
on); --masks writes uint8 [layer][token][expert] (0 for layers without a
router) and --margin prints min |r - logit(tau)| over all decisions.
"""
import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gemma_ref  # noqa: E402
import llama_ref  # noqa: E402
from gguf import GGUFReader  # noqa: E402


class Lte:
    """Routers of one file; .ffn(il, h, W, act) is the LTE FFN of layer il."""

    def __init__(self, path, threshold=None, dense=False):
        r = GGUFReader(path)
        f = r.fields
        self.S = int(f["lte.expert_size"].contents()) if "lte.expert_size" in f else 32
        tau = float(f["lte.threshold"].contents()) if "lte.threshold" in f else 0.5
        if threshold is not None:
            tau = threshold
        self.cut = math.log(tau / (1.0 - tau))
        self.dense = dense
        self.names = {t.name for t in r.tensors}
        self.masks = {}
        self.margin = float("inf")

    def ffn(self, il, h, W, act):
        p = "blk.%d." % il
        a = act(h @ W(p + "ffn_gate.weight").T) * (h @ W(p + "ffn_up.weight").T)  # [T][ffn]
        if not self.dense and p + "ffn_router.weight" in self.names:
            rl = h @ W(p + "ffn_router.weight").T  # [T][n_experts]
            if p + "ffn_router.bias" in self.names:
                rl = rl + W(p + "ffn_router.bias")
            self.margin = min(self.margin, float(np.min(np.abs(rl - self.cut))))
            on = rl > self.cut
            self.masks[il] = on
            a = a * np.repeat(on, self.S, axis=1)
        return a @ W(p + "ffn_down.weight").T


class GemmaLte(gemma_ref.GemmaRef):
    def __init__(self, path, lte):
        super().__init__(path)
        self.lte = lte

    def ffn(self, l, h):
        return self.lte.ffn(l, h, self.W, self.act)


def logits(path, tokens, lte):
    arch = GGUFReader(path).fields["general.architecture"].contents()
    if arch == "gemma3":
        return GemmaLte(path, lte).logits(tokens)
    return llama_ref.forward(path, tokens, ffn=lambda il, h, W: lte.ffn(il, h, W, llama_ref.silu))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", help="write float32 [n_tokens][n_vocab] logits here")
    ap.add_argument("--threshold", type=float, help="tau overriding lte.threshold")
    ap.add_argument("--dense", action="store_true", help="every expert on (routers ignored)")
    ap.add_argument("--masks", help="write uint8 [layer][token][expert] masks here")
    ap.add_argument("--margin", action="store_true", help="print min |r - logit(tau)|")
    a = ap.parse_args()
    tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    if not tokens:
        ap.error("no tokens")
    lte = Lte(a.model, a.threshold, a.dense)
    lg = np.asarray(logits(a.model, tokens, lte))
    if a.out:
        lg.astype("<f4").tofile(a.out)
    if a.masks:
        r = GGUFReader(a.model)
        arch = r.fields["general.architecture"].contents()
        n_layers = int(r.fields[arch + ".block_count"].contents())
        E = int(r.fields[arch + ".feed_forward_length"].contents()) // lte.S
        out = np.zeros((n_layers, len(tokens), E), dtype=np.uint8)
        for il, m in lte.masks.items():
            out[il] = m
        out.tofile(a.masks)
    if a.margin:
        print("margin %.6g" % lte.margin)
    if not a.out:
        for i, row in enumerate(lg):
            top = np.argsort(-row)[:5]
            print(i, " ".join("%d:%.6f" % (t, row[t]) for t in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
