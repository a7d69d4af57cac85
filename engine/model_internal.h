/* model_internal.h - the model's private layout, shared by model.c (loading)
 * and forward.c (the forward pass). Private to engine/: nothing outside engine/
 * includes this file.
 *
 * Ownership: a struct eng_model owns its gguf mapping (matrix weights point
 * into it unless the backend keeps its own copy), the tokenizer, the backend,
 * every backend buffer below (norm vectors, biases, KV cache, scratch) and the
 * host index buffers. eng_model_free() releases all of it.
 */
#ifndef SS_ENGINE_MODEL_INTERNAL_H
#define SS_ENGINE_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"

/* Optional architecture features. A per-layer tensor spec names the feature it
 * belongs to; it is required iff the architecture has that feature. */
enum eng_feature {
    ENG_FEAT_QKV_BIAS = 1u << 0,  /* blk.N.attn_{q,k,v}.bias (qwen2) */
    ENG_FEAT_QK_NORM = 1u << 1,   /* blk.N.attn_{q,k}_norm.weight (gemma3) */
    ENG_FEAT_POST_NORMS = 1u << 2 /* blk.N.post_{attention,ffw}_norm.weight (gemma3) */
};

/* One architecture, as data. Adding an architecture = one row here (plus the
 * forward code for any feature bit that is new). */
struct eng_arch_desc {
    const char *name;      /* general.architecture value and key prefix */
    int arch;              /* enum eng_arch */
    unsigned features;     /* enum eng_feature bits */
    int rope_neox;         /* 1 = rotate-half, 0 = adjacent pairs */
    int act;               /* FFN gate activation: 0 silu, 1 gelu(tanh) */
    int forward_ready;     /* 0: recognised but eng_forward does not run it yet */
    int embd_scale_sqrt;   /* 1: token embeddings are multiplied by sqrt(dim) (gemma) */
    int swa_pattern;       /* > 0: the architecture may have sliding-window layers; the
                            * default <arch>.attention.sliding_window_pattern P, layer l
                            * local iff l % P < P - 1 (llama.cpp's rule; 6 for gemma3).
                            * 0: sliding-window keys are ignored. */
};

const struct eng_arch_desc *eng_arch_find(const char *name, size_t len); /* NULL if unknown */

/* Rows of logits computed per output matmul (bounds the logits scratch). */
#define ENG_LOGIT_CHUNK 64

/* Activation scratch, allocated once at load for max_batch_tokens (T) rows.
 * Backend memory unless marked host. */
struct eng_scratch {
    float *x;     /* [T][dim] residual stream */
    float *xb;    /* [T][dim] normalised input of a sub-layer; final-norm rows */
    float *xb2;   /* [T][dim] sub-layer output before the residual add */
    float *q;     /* [T][n_heads*head_dim] */
    float *k;     /* [T][kv_dim] */
    float *v;     /* [T][kv_dim] */
    float *att;   /* [T][n_heads*head_dim] attention output */
    float *hb;    /* [T][ffn_dim] gate, then glu output */
    float *hb2;   /* [T][ffn_dim] up */
    float *logits; /* [ENG_LOGIT_CHUNK][n_vocab] */
    /* host memory (index arrays are passed to the backend as host pointers) */
    int32_t *pos;              /* [T] absolute position of each batch row */
    int32_t *slots;            /* [T] KV slot of each batch row */
    struct be_attn_seq *aseq;  /* [T] per-sequence attention view */
};

struct eng_model {
    struct eng_config cfg;
    const struct eng_arch_desc *desc;
    struct gguf_file *gguf;   /* kept open: weights point into the mapping */
    struct tok *tok;
    struct be be;
    int be_open;

    struct be_tensor tok_embd;  /* [n_vocab rows][dim] */
    struct be_tensor output;    /* [n_vocab rows][dim]; == tok_embd when tied */
    const float *output_norm;   /* backend memory, [dim] */
    const float *rope_freqs;    /* backend memory, [n_rot/2] divisors of each pair's frequency
                                 * (rope_freqs.weight, llama3-style scaling); NULL if absent */
    struct eng_layer *layers;   /* [n_layers] */

    /* KV page pool: per layer, k and v of n_pages*BE_PAGE_SLOTS*kv_dim elements,
     * so a page id addresses the same page in every layer. */
    int32_t n_pages;
    int kv_type;              /* BE_F16 or BE_F32 */
    int n_ctx;
    int max_batch_tokens;     /* T */
    size_t weight_bytes;      /* matrix bytes read per decoded token */

    struct eng_scratch s;
};

/* Convenience dimensions. */
static inline int eng_qdim(const struct eng_config *c) { return c->n_heads * c->head_dim; }
static inline int eng_kvdim(const struct eng_config *c) { return c->n_kv_heads * c->head_dim; }

#endif
