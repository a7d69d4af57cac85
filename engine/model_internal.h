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

/* The work buffers of one branch of a layer (eng_attention_block,
 * eng_ffn_block), backend memory for max_batch_tokens (T) rows. The model has
 * one set (m->s.b); layer parallelism a second one for a pair's other layer. */
struct eng_bufs {
    float *xb;    /* [T][dim] normalised input of a sub-layer; final-norm rows */
    float *xb2;   /* [T][dim] sub-layer output before its post-norm */
    float *q;     /* [T][n_heads*head_dim] */
    float *k;     /* [T][kv_dim] */
    float *v;     /* [T][kv_dim] */
    float *att;   /* [T][n_heads*head_dim] attention output */
    float *hb;    /* [T][ffn_dim] gate, then glu output */
    float *hb2;   /* [T][ffn_dim] up */
    /* LTE models only (NULL otherwise) */
    float *rl;    /* [T][n_experts] router logits */
    float *rlh;   /* host [T][n_experts] the same, downloaded */
    uint8_t *mask; /* host [T][n_experts] 1 = expert active for the row */
};

/* Activation scratch, allocated once at load for max_batch_tokens (T) rows.
 * Backend memory unless marked host. */
struct eng_scratch {
    float *x;     /* [T][dim] residual stream */
    struct eng_bufs b; /* the layer's work buffers */
    float *logits; /* [ENG_LOGIT_CHUNK][n_vocab] */
    /* host memory, NOT owned: positions of the current frame's rows (set by
     * eng_frames_begin / eng_sub_steps; index arrays go to the backend as
     * host pointers) */
    const int32_t *pos;        /* [n] absolute position of each row of the current frame */
};

/* ---- KV units, frames and SUBLLM ----
 *
 * KV pool: kv_k / kv_v hold n_units = n_pages * n_layers units of
 * BE_PAGE_SLOTS slots of one layer (unit u = slots [u*16, u*16+16)); the
 * backend view m->kv_pool is its base, so slots are absolute:
 *     slot of KV index i in layer l = layer_pages[l][i / 16] * 16 + i % 16
 *
 * Frames: the rows a layer runs on. Frame 0 is the whole batch; each '(' of a
 * SUBLLM structure pushes a frame holding the rows its subsampler kept (a
 * smaller ragged batch, compacted, sequence order kept), each ')' pops it.
 *
 *   frame 0  rows: s0t0 s0t1 s0t2 s0t3 | s1t0 s1t1      (level 0)
 *   '(' keeps s0t1, s0t3, s1t1
 *   frame 1  rows: s0t1 s0t3 | s1t1                      (level 1)
 *            src:  1    3      5     (row in frame 0)
 *            kvi:  lnp0+0 lnp0+1 | lnp1+0   (lnp = that sequence's level_n_past[1])
 */
struct eng_fseq {          /* one sequence's rows in a frame */
    int32_t seq;           /* index in the batch */
    int32_t row0;          /* first row in the frame */
    int32_t n_tok;         /* rows (>= 1) */
    int32_t n_past;        /* KV entries of the frame's level cached before this step */
};

struct eng_frame {
    int level;             /* KV level of its rows */
    int sub;               /* subsampler that made it; -1 for frame 0 */
    int32_t n;             /* rows; 0 = every token was dropped (inner layers skip) */
    int32_t n_seqs;        /* sequences with at least one row */
    struct eng_fseq *seqs; /* [T] */
    int32_t *pos;          /* [T] absolute positions */
    int32_t *kvi;          /* [T] KV index of each row at this level */
    /* frames made by a subsampler */
    int32_t *src;          /* [T] row in the parent frame */
    float *w;              /* [T] w_t = clamp(s_t, 0, 1) of each kept row */
    float *xp;             /* host [T][dim]: the parent's residual rows at the '(' */
};

/* K/V addressing of one layer for the rows of the current frame. */
struct eng_kv_view {
    struct be_kv_layer *kv;         /* cache view the slots and tables refer to */
    const int32_t *slots;           /* [n] */
    const struct be_attn_seq *aseq; /* [n_seqs] */
    int32_t n, n_seqs;
};

/* One step of a structure string other than T. */
enum { ENG_SUB_DOWN = 1, ENG_SUB_UP = 2 };
struct eng_sub_step {
    int op;                /* ENG_SUB_DOWN '(' or ENG_SUB_UP ')' */
    int sub;               /* subsampler index i (the i-th '(' and its matching ')') */
};

struct eng_subllm {
    int n_sub;             /* subsamplers ('(' count); 0 for dense models */
    int max_depth;         /* deepest bracket nesting */
    char *structure;       /* the structure string (NUL-terminated), NULL for dense */
    float *score;          /* host [n_sub][dim]  sub.{i}.score.weight */
    float *bypass;         /* host [n_sub][dim]  sub.{i}.bypass.weight */
    int parent_level[ENG_MAX_LEVELS]; /* level k > 0: level of the rows its subsampler scores */
    int *layer_level;      /* [n_layers] from the string (copied into eng_layer.level) */
    struct eng_sub_step *steps; /* [n_sub*2] in string order */
    int32_t *step0;        /* [n_layers + 2]: steps [step0[l], step0[l+1]) run before layer l
                            * (l == n_layers: after the last layer) */
    /* forward state */
    struct eng_frame *frames; /* [max_depth + 1]; frames[0] is the whole batch */
    int depth;             /* current frame: frames[depth] */
    float *stage;          /* host [T][dim] gather/scatter staging */
    int32_t *vslots[2];    /* [T] slots of a layer's view (view buffers 0, 1) */
    struct be_attn_seq *vaseq[2]; /* [T] attention views of a layer (view buffers 0, 1) */
    const struct eng_batch *batch; /* the running batch (valid during eng_forward) */
};

/* ---- LTE (engine/lte.c; DESIGN.md sections 4, 5) ----
 * Expert e of a layer with a router = FFN neurons [e*S, (e+1)*S): rows of
 * gate and up, the same columns of down. At load, down is copied
 * expert-major (down_x: expert e = rows [e*dim, (e+1)*dim) of S elements,
 * the file's blocks moved unchanged), so the sparse kernel streams only the
 * bytes of active experts; the file's down pages are then never read. */
struct eng_lte_layer {
    struct be_tensor router;  /* [dim -> n_experts]; router.data NULL = dense layer */
    float *bias;              /* host [n_experts] (zeros when the file has no bias) */
    void *down_mem;           /* host memory (posix_memalign) holding down_x's blocks; NULL
                               * once the backend keeps its own copy (down_x.be_data) */
    struct be_tensor down_x;  /* [n_experts*dim rows][S], type of ffn_down */
    /* statistics (engine thread: the FFN block of this layer writes,
     * eng_model_lte_stats reads; the two layers of a layer-parallel pair
     * write their own): */
    double active_sum;        /* sum over rows of the active-expert fraction */
    int64_t n_tok;
    int64_t union_hist[ENG_LTE_UNION_BINS]; /* per step: union fraction bins (engine.h) */
    double union_sum;
};

struct eng_lte {
    int n_experts;            /* ffn_dim / S; 0 = no layer has a router */
    int expert_size;          /* S */
    int n_routed;             /* layers with a router */
    int enabled;              /* routers present and not turned off */
    int path;                 /* ENG_LTE_AUTO / _GROUPED / _DENSE (eng_options.lte_path) */
    float tau;                /* threshold in force (file or option) */
    float logit_tau;          /* log(tau / (1 - tau)): expert on iff r > logit_tau */
    struct eng_lte_layer *layers; /* [n_layers] */
};

struct eng_model {
    struct eng_config cfg;
    const struct eng_arch_desc *desc;
    struct gguf_file *gguf;   /* kept open: weights point into the mapping */
    struct tok *tok;
    struct be be;
    int be_open;
    int act_precision;          /* the one in effect: ENG_ACT_F32, _INT8 or _MIXED */

    struct be_tensor tok_embd;  /* [n_vocab rows][dim] */
    struct be_tensor output;    /* [n_vocab rows][dim]; == tok_embd when tied */
    const float *output_norm;   /* backend memory, [dim] */
    const float *rope_freqs;    /* backend memory, [n_rot/2] divisors of each pair's frequency
                                 * (rope_freqs.weight, llama3-style scaling); NULL if absent */
    struct eng_layer *layers;   /* [n_layers] */

    /* KV unit pool (see "KV units" above): n_pages * n_layers units */
    int32_t n_pages;
    int32_t n_units;
    void *kv_k, *kv_v;        /* backend memory, [n_units][16][kv_dim] of kv_type */
    struct be_kv_layer kv_pool; /* view at the pool base: absolute slots */
    int n_levels;             /* 1 + subsamplers */
    int kv_type;              /* BE_F16 or BE_F32 */
    int n_ctx;
    int max_batch_tokens;     /* T */
    size_t weight_bytes;      /* matrix bytes read per decoded token */

    struct eng_scratch s;
    struct eng_subllm sub;    /* structure and frames (every model has frame 0) */
    struct eng_lp *lp;        /* layer parallelism (forward_lp.c), NULL = off */
    int lp_exec;              /* ENG_LP_EXEC_* (eng_options.lp_exec), read when a range is set */
    struct eng_lte lte;       /* LTE routers (lte.c); lte.n_routed == 0 for dense files */
    eng_ffn_probe_fn probe;   /* eng_model_set_ffn_probe, NULL = none */
    void *probe_ctx;
    float *probe_buf;         /* host [T][dim] */
};

/* model.c: writes the printf-style message into err (when err and len) and
 * returns code: the one way engine/ files fail with a message. */
int eng_fail(char *err, size_t len, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* model.c: a 1-D tensor [n] checked and converted to fp32 (by the backend's
 * get_rows) into host memory out (SS_EBADMODEL with a message naming it when
 * absent or mis-shaped, SS_ENOMEM when the backend has no room for it). */
int eng_host_vector(struct eng_model *m, const char *name, int64_t n, float *out, char *err,
                    size_t err_len);

/* model.c: binds a 2-D weight [ne0, ne1] (checked for presence, exact shape
 * and a supported type; SS_EBADMODEL with a message naming it). */
int eng_bind_matrix(struct eng_model *m, struct be_tensor *w, const char *name, int64_t ne0,
                    int64_t ne1, char *err, size_t err_len);

/* lte.c. eng_lte_load after the tensors and options (reads lte.* keys and
 * blk.N.ffn_router.*, validates, makes the expert-major down copies and the
 * forward buffers); eng_lte_free releases it all (safe on a partial load).
 * eng_lte_ffn is the ENG_FFN_LTE case of eng_ffn_block: B->xb2[n][dim] = sum
 * over each row's active experts of down_e(act(gate_e xn) * up_e xn), xn =
 * B->xb; it uses B->rl, rlh, mask, hb, hb2. Engine thread or a fork2 task. */
int eng_lte_load(struct eng_model *m, const struct eng_options *o, char *err, size_t err_len);
void eng_lte_free(struct eng_model *m);
void eng_lte_ffn(const struct eng_model *m, struct be *be, const struct eng_layer *L,
                 const struct eng_bufs *B, int n);
/* model.c: a buffer set for max_batch_tokens rows on the model's backend.
 * Returns 0 or SS_ENOMEM (b partly set then: free it). eng_bufs_free
 * releases and zeroes (NULL members ok). */
int eng_bufs_alloc(struct eng_model *m, struct eng_bufs *b);
void eng_bufs_free(struct eng_model *m, struct eng_bufs *b);

/* forward.c: the layer body, written once for the sequential model and both
 * branches of a layer pair (forward_lp.c). Each reads its input x [n][dim]
 * (never written), works in the buffer set B on backend be (the model's, or
 * a share of it given by be_fork2) and returns its output, the sub-layer's
 * contribution to the residual stream: a [n][dim] buffer of B that the
 * caller adds. Positions are m->s.pos (the current frame's).
 * eng_attention_block also stores the layer's K/V of the n rows through kv
 * (n = kv->n). eng_ffn_block computes the FFN variant ffn (enum
 * eng_ffn_kind). Engine thread, or a fork2 task (which writes only B and
 * the layer's own K/V units). */
const float *eng_attention_block(const struct eng_model *m, struct be *be, const struct eng_layer *L,
                                 const struct eng_bufs *B, const float *x, const struct eng_kv_view *kv);
const float *eng_ffn_block(const struct eng_model *m, struct be *be, const struct eng_layer *L,
                           const struct eng_bufs *B, const float *x, int n, int ffn);

/* forward.c, pieces of the layer body that a merged layer pair
 * (lp_merge.c) runs around its wider GEMMs:
 * eng_attention_core: B->att = attention of B->q, B->k, B->v (the layer's
 * q/k norms, RoPE, K/V stored through kv) for kv->n rows;
 * eng_post_norm: y, or rmsnorm(y) * norm into B->xb when norm (the layer's
 * post-norm) is not NULL; eng_add_bias: y[r] += bias for n rows of width d
 * (nothing when bias is NULL). Threads as the blocks above. */
void eng_attention_core(const struct eng_model *m, struct be *be, const struct eng_layer *L,
                        const struct eng_bufs *B, const struct eng_kv_view *kv);
const float *eng_post_norm(const struct eng_model *m, struct be *be, const struct eng_bufs *B, const float *y,
                           const float *norm, int n);
void eng_add_bias(struct be *be, float *y, const float *bias, int n, int d);

/* subllm.c. Load: eng_subllm_parse after the hyper-parameters (reads
 * subllm.structure, sets layer levels; dense models: one level),
 * eng_subllm_bind after the tensors, eng_frames_alloc after the options;
 * eng_subllm_free releases everything (safe on a partly loaded model). */
int eng_subllm_parse(struct eng_model *m, char *err, size_t err_len);
int eng_subllm_bind(struct eng_model *m, char *err, size_t err_len);
int eng_frames_alloc(struct eng_model *m, char *err, size_t err_len);
void eng_subllm_free(struct eng_model *m);

/* Forward (subllm.c), engine thread, after the batch was validated:
 * eng_frames_begin makes frame 0 of the batch; eng_sub_steps runs the '(' / ')' steps placed before layer il
 * (il == n_layers: the ones after the last layer), moving rows between frames
 * and the residual stream m->s.x, and writes level_kept. */
void eng_frames_begin(struct eng_model *m, const struct eng_batch *b);
void eng_sub_steps(struct eng_model *m, const struct eng_batch *b, int il);
static inline struct eng_frame *eng_frame_cur(struct eng_model *m) {
    return &m->sub.frames[m->sub.depth];
}
/* The K/V addressing of layer il for the current frame's rows, built from
 * the batch's layer_pages[il] into view buffer `buf` (0 or 1: two layers may
 * be viewed at once, e.g. by layer parallelism's two branches). */
void eng_layer_view(struct eng_model *m, int il, int buf, struct eng_kv_view *v);

/* Convenience dimensions. */
static inline int eng_qdim(const struct eng_config *c) { return c->n_heads * c->head_dim; }
static inline int eng_kvdim(const struct eng_config *c) { return c->n_kv_heads * c->head_dim; }

#endif
