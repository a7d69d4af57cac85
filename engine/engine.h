/* engine.h - models and the forward pass over a ragged batch.
 *
 * Module engine/: owns GGUF loading, tokenizers, model descriptions, the
 * forward pass and the sampler. Knows nothing of CPUs or GPUs: every
 * computation goes through the backend table. May include kernels/ only.
 *
 * eng_model_load() reads a GGUF file (architectures llama, qwen2, gemma3 and
 * subllm; the description is data-driven), prepares the
 * weights on a backend and allocates the KV cache as a pool of units
 * (BE_PAGE_SLOTS token slots of one layer; see "KV units and levels"). The
 * engine never allocates units: the caller (the scheduler) owns the per-layer
 * block tables and passes unit ids in each batch.
 *
 * Threading: a model and its state belong to one thread (the engine thread);
 * the backend parallelises inside each call.
 */
#ifndef SS_ENGINE_H
#define SS_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

struct gguf_file;
struct tok;
struct eng_lte_layer;

/* Token slots of one KV page (unit): what block tables count in. */
#define ENG_PAGE_SLOTS BE_PAGE_SLOTS

enum eng_arch { ENG_ARCH_LLAMA = 1, ENG_ARCH_QWEN2, ENG_ARCH_GEMMA3, ENG_ARCH_SUBLLM };

/* Hyper-parameters, read from <arch>.* keys. */
struct eng_config {
    int arch;
    char arch_name[32];
    char name[128];        /* general.name, or the file's base name */
    int n_layers;
    int dim;               /* embedding length */
    int ffn_dim;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int n_vocab;
    int n_ctx_train;       /* <arch>.context_length */
    float norm_eps;
    float rope_theta;
    float rope_freq_scale;
    int rope_neox;         /* 1 = rotate-half (qwen2, gemma3), 0 = adjacent pairs (llama) */
    int n_rot;
    int tied_output;       /* output.weight absent: use token_embd */
    /* Gemma 3 style extras; neutral values (0 / 1) for the other architectures. */
    float attn_scale;      /* multiplies q.k before the softmax: 1/sqrt(head_dim) */
    float embd_scale;      /* token embeddings are multiplied by it (gemma3: sqrt(dim)), else 1 */
    float logit_softcap;   /* <arch>.final_logit_softcapping c > 0: logits = c*tanh(logits/c); 0 none */
    int swa_window;        /* <arch>.attention.sliding_window: a local layer's token sees the
                            * swa_window latest positions, itself included; 0 = no local layers */
    int n_swa_layers;      /* how many layers are local (eng_layer.swa) */
    float rope_theta_swa;  /* RoPE base of local layers (<arch>.rope.freq_base_swa, default
                            * 10000); global layers use rope_theta and rope_freq_scale */
    int pooling_type;      /* <arch>.pooling_type, llama.cpp's numbering (ENG_POOL_*), for
                            * embeddings; ENG_POOL_UNSET when absent or not a known value */
};

/* Pooling of the per-token hidden states into one embedding vector, numbered
 * as llama.cpp's pooling_type key (the scheduler pools; the engine only hands
 * back hidden states, eng_seq.want_hidden). */
enum { ENG_POOL_UNSET = -1, ENG_POOL_NONE = 0, ENG_POOL_MEAN = 1, ENG_POOL_CLS = 2, ENG_POOL_LAST = 3,
       ENG_POOL_RANK = 4 };

/* Per-layer weights; shapes in elements, ne[0] first.
 *   attn_norm [dim]            wq [dim -> n_heads*hd]   wk, wv [dim -> n_kv*hd]
 *   wo [n_heads*hd -> dim]     ffn_norm [dim]
 *   w_gate, w_up [dim -> ffn]  w_down [ffn -> dim] */
struct eng_layer {
    const float *attn_norm; /* backend memory, [dim] */
    const float *ffn_norm;  /* [dim] */
    struct be_tensor wq, wk, wv, wo;
    struct be_tensor w_gate, w_up, w_down;
    const float *bq, *bk, *bv; /* [n_heads*hd], [n_kv*hd]; NULL if absent */
    const float *q_norm, *k_norm;        /* [hd] per-head RMSNorm of q and k; NULL if absent */
    const float *post_attn_norm, *post_ffn_norm; /* [dim] RMSNorm of each sub-layer's
                                          * output before the residual add; NULL if absent */
    int swa;                /* 1: local (sliding-window) layer, see eng_config.swa_window */
    int level;              /* SUBLLM level of the layer (0 for dense models) */
    int ffn;                /* enum eng_ffn_kind: how the FFN block computes (forward.c) */
    struct eng_lte_layer *lte; /* ENG_FFN_LTE: the layer's router and expert-major down
                                * (engine/lte.c); NULL otherwise */
};

/* FFN variants (eng_layer.ffn): ENG_FFN_DENSE, or ENG_FFN_LTE for a layer
 * with an LTE router (engine/lte.c, DESIGN.md section 5) unless LTE is off.
 * A new variant is one more value here and one more case in the switch of
 * eng_ffn_block (forward.c). */
enum eng_ffn_kind { ENG_FFN_DENSE = 0, ENG_FFN_LTE = 1 };

struct eng_model; /* opaque: config, weights, KV pool, scratch buffers */

/* eng_options.kv_type values. NOTE: BE_F32 is 0 in ggml numbering and so means
 * "unset" (fp16) here; fp32 K/V must be asked for with ENG_KV_F32. */
#define ENG_KV_F16 BE_F16
#define ENG_KV_F32 256

struct eng_options {
    const char *backend;     /* "cpu" (default), "cuda" or "auto" (eng_backend_choose) */
    int device;              /* CUDA device number for "cuda" (default 0) */
    int n_threads;           /* 0 = all cores */
    int n_ctx;               /* max tokens per sequence; 0 = n_ctx_train capped at 8192, but
                              * uncapped (as far as the pool holds one sequence with every
                              * page) for models with sliding-window layers: Gemma 3 32768 */
    size_t kv_bytes;         /* KV pool size in bytes; 0 = room for kv_default_seqs sequences
                              * of n_ctx tokens (of 8192 when n_ctx was left 0) */
    int kv_default_seqs;     /* used when kv_bytes == 0; 0 -> 4 */
    int kv_type;             /* K/V element type: 0 or ENG_KV_F16 = fp16 (default), ENG_KV_F32 = fp32 */
    int max_batch_tokens;    /* scratch sizing: max tokens per forward; 0 -> 2048 */
    /* Layer parallelism (DESIGN.md section 5, eng_model_set_layer_parallel):
     * lp_mode ENG_LP_FILE (0) = the file's lp.range key if present, else off;
     * ENG_LP_OFF = off whatever the file says; ENG_LP_RANGE = [lp_start, lp_end). */
    int lp_mode;
    int lp_start, lp_end;
    /* How a pair runs (engine/forward_lp.c, lp_merge.c): ENG_LP_EXEC_AUTO (0)
     * as the backend asks (be_ops.merge_pairs: merged on CUDA, branch by
     * branch on the CPU); ENG_LP_EXEC_BRANCHES each layer's own sub-layer
     * (bitwise the per-layer kernels); ENG_LP_EXEC_MERGED both layers'
     * projections as one wider GEMM with the norm weights folded in (load
     * fails with SS_EUNSUPPORTED where the backend has no copy2d). */
    int lp_exec;
    /* LTE sparse FFNs (DESIGN.md sections 4, 5; engine/lte.c): lte_off = 1 runs a
     * file with routers densely (every expert on, the plain FFN); lte_threshold
     * in (0, 1) overrides the file's lte.threshold, 0 keeps it. */
    int lte_off;
    float lte_threshold;
    int lte_path;            /* ENG_LTE_AUTO (0): per step by the measured crossover; or
                              * force ENG_LTE_GROUPED / ENG_LTE_DENSE (tests, benchmarks) */
    /* Activation precision of the weight matmuls: ENG_ACT_F32 (0, default) the
     * fp32 reference path; ENG_ACT_INT8 activations quantised to int8 per row
     * (load fails if the backend has no int8 kernels); ENG_ACT_MIXED int8 for
     * the 32-element-block types, fp32 for the K-quants (backend.h
     * BE_ACT_MIXED); ENG_ACT_BF16 weights and activations rounded to BF16,
     * fp32 sums (load fails without BF16 kernels); ENG_ACT_AUTO the
     * backend's measured choice. */
    int act_precision;
};

/* The backend name to load with: "cpu" stays "cpu"; "cuda" stays "cuda";
 * "auto" (or NULL) becomes "cuda" where CUDA device `device` exists and the
 * CUDA backend may be opened (kernels/registry.c: built in, device present,
 * SLIMSERVE_CUDA_UNVERIFIED=1), else "cpu". why gets one line saying which and
 * why (for the log). Any thread. */
const char *eng_backend_choose(const char *want, int device, char *why, size_t why_len);

enum { ENG_ACT_F32 = 0, ENG_ACT_INT8 = 1, ENG_ACT_AUTO = 2, ENG_ACT_MIXED = 3, ENG_ACT_BF16 = 4 };
/* "f32" | "int8" | "auto" | "mixed" | "bf16" -> ENG_ACT_*; returns 0, or -1 for anything else. */
int eng_act_parse(const char *s, int *out);
const char *eng_act_name(int prec); /* ENG_ACT_* -> its name */
/* The precision the loaded model computes with (auto resolved): ENG_ACT_F32,
 * ENG_ACT_INT8, ENG_ACT_MIXED or ENG_ACT_BF16. */
int eng_model_act_precision(const struct eng_model *m);
enum { ENG_LTE_AUTO = 0, ENG_LTE_GROUPED = 1, ENG_LTE_DENSE = 2 };
enum { ENG_LP_FILE = 0, ENG_LP_OFF = 1, ENG_LP_RANGE = 2 };
enum { ENG_LP_EXEC_AUTO = 0, ENG_LP_EXEC_BRANCHES = 1, ENG_LP_EXEC_MERGED = 2 };

int eng_model_load(struct eng_model **out, const char *path, const struct eng_options *opt,
                   char *err, size_t err_len);
void eng_model_free(struct eng_model *m);

const struct eng_config *eng_model_config(const struct eng_model *m);
const struct tok *eng_model_tok(const struct eng_model *m);
/* The model's GGUF file (metadata such as tokenizer.chat_template); valid until
 * eng_model_free. */
const struct gguf_file *eng_model_gguf(const struct eng_model *m);
int eng_model_n_ctx(const struct eng_model *m);
int32_t eng_model_n_pages(const struct eng_model *m);  /* n_units / n_layers: pages of every layer */

/* KV units and levels.
 *
 * The KV cache is a pool of units: a unit holds 16 token slots of K and V for
 * ONE layer. n_units = n_pages * n_layers. A sequence addresses it with
 * per-layer block tables: layer l's logical page i is unit layer_pages[l][i];
 * the caller (scheduler) assigns units freely, so a layer that stores fewer
 * tokens uses fewer units. (Tests and tools that think in whole pages build
 * such tables with eng_kv_identity_tables.)
 * Levels: a SUBLLM model runs its layers at levels 0..n_levels-1 (level 0 sees
 * every token; deeper levels see only the tokens their subsamplers keep). A
 * layer at level k stores its K/V at indices level_n_past[k] + i for the i-th
 * token of the sequence kept at level k in this step, so it needs
 * ceil((level_n_past[k] + kept) / 16) pages; the worst case is all kept.
 * eng_forward reports kept counts in level_kept[k] (level 0: n_tok). Dense
 * models have one level.
 * Levels of a SUBLLM structure: level k >= 1 holds the tokens kept by the
 * k-th '(' of the string (k = i + 1 for sub.{i}); a layer's level is that of
 * the innermost bracket around it. When brackets nest in a chain (the usual
 * "TT(TT(TT)TT)TT") that is the bracket depth; sibling brackets ("T(T)T(T)T")
 * keep different tokens, so each gets its own level.
 * Batch rules for levels and tables (checked by eng_forward):
 *   - 0 <= level_n_past[k] <= level_n_past[parent level] (level 0: n_past;
 *     level_n_past[0] and entries k >= n_levels are ignored);
 *   - layer_pages != NULL, and each layer_pages[l] != NULL holds at least
 *     ceil((level_n_past[k] + n_tok) / 16) unit ids in [0, n_units), k = the
 *     layer's level, and layer_n_pages >= that count;
 *   - sliding-window layers (eng_model_layer_window W > 0) never read a
 *     position before P - W + 1 for a query at P, so their entries for pages
 *     before (level_n_past[k] - W + 1) / 16 may be negative (unset: the caller
 *     recycled those units); every later entry must be a unit id.
 * level_kept, when not NULL, receives n_levels entries (only on success). */
int32_t eng_model_n_units(const struct eng_model *m);
int eng_model_n_levels(const struct eng_model *m);
int eng_model_layer_level(const struct eng_model *m, int layer);
/* The layer's sliding window in KV entries (a query at P reads [P - W + 1, P]),
 * or 0 for a layer that reads every earlier position. */
int eng_model_layer_window(const struct eng_model *m, int layer);
size_t eng_model_unit_bytes(const struct eng_model *m); /* K+V bytes of one unit */
size_t eng_model_kv_bytes_per_token(const struct eng_model *m);
size_t eng_model_weight_bytes(const struct eng_model *m); /* bytes read per token (decode) */

/* Per-layer block tables that give each layer its own unit of every page of
 * a list (for tests and tools that think in whole pages):
 *     rows[l][i] = pages[i] * n_layers + l
 * so sequences on disjoint page lists never share a unit. A page outside
 * [0, eng_model_n_pages()) gives unit -1, which eng_forward rejects. Use as
 * eng_seq.layer_pages = t->rows, eng_seq.layer_n_pages = t->n_pages.
 * Returns 0, SS_EINVAL (NULL argument, n_pages < 1) or SS_ENOMEM; the caller
 * frees t with eng_kv_tables_free (a zeroed struct is fine). Any thread. */
struct eng_kv_tables {
    int32_t n_layers;
    int32_t n_pages;           /* entries per layer */
    int32_t *units;            /* [n_layers][n_pages] */
    const int32_t **rows;      /* [n_layers]: rows[l] = units + l * n_pages */
};
int eng_kv_identity_tables(struct eng_kv_tables *t, const struct eng_model *m, const int32_t *pages,
                           int32_t n_pages);
void eng_kv_tables_free(struct eng_kv_tables *t);

/* Layer parallelism (DESIGN.md section 5; engine/forward_lp.c). Layers
 * [start, end) run as pairs (start, start+1), (start+2, start+3), ...:
 *     h = x + Attn_a(norm_a(x)) + Attn_b(norm_b(x))
 *     y = h + MLP_a(ffn_norm_a(h)) + MLP_b(ffn_norm_b(h))
 * each layer with its own norms (gemma3: q/k norms and post-norms inside its
 * branch), weights and K/V cache (both layers of a pair store K/V for every
 * token, in the usual layout). Outputs differ from the sequential model by
 * design. start == end == 0 turns it off (bitwise the sequential model).
 * Returns 0, or SS_EINVAL with a message (odd length, start >= end, out of
 * [0, n_layers], a range inside a SUBLLM bracket), SS_ENOMEM. On error the
 * previous setting stays. Engine thread only, between forwards. The file key
 * lp.range (string "S:E" or "off", or an integer array [S, E]) is the default
 * that eng_options.lp_mode overrides; eng_model_apply_layer_parallel applies
 * options and key (idempotent: eng_model_load may call it as well). */
int eng_model_set_layer_parallel(struct eng_model *m, int start, int end, char *err, size_t err_len);
int eng_model_apply_layer_parallel(struct eng_model *m, const struct eng_options *opt, char *err,
                                   size_t err_len);
/* The range in force: returns 1 and sets *start, *end, or 0 when off. */
int eng_model_layer_parallel(const struct eng_model *m, int *start, int *end);
/* 1 when the range in force runs merged (eng_options.lp_exec), else 0. */
int eng_model_lp_merged(const struct eng_model *m);
/* "auto" | "branches" | "merged" -> ENG_LP_EXEC_*; 0, or -1 for anything else. */
int eng_lp_exec_parse(const char *s, int *out);
/* Parses a --layer-parallel value, "START:END" or "off", into o->lp_*
 * (ENG_LP_RANGE or ENG_LP_OFF). Checks what it can without the model
 * (numbers, START < END, even length); the bounds are checked at load.
 * Returns 0 or SS_EINVAL with a message. Any thread. */
int eng_lp_parse_flag(const char *s, struct eng_options *o, char *err, size_t err_len);

/* LTE (engine/lte.c). eng_model_lte_info: 1 and the facts when the file has
 * routers (whether or not LTE is in force), else 0. eng_model_lte_stats:
 * statistics since load (engine thread, between forwards: the scheduler
 * publishes them with its own, scheduler/stats.c); n_layers 0 when LTE is
 * not in force. */
struct eng_lte_info {
    int n_routed;          /* layers with a router */
    int n_experts;         /* per layer: ffn_dim / expert_size */
    int expert_size;
    float tau;             /* threshold in force */
    int enabled;           /* 0: --lte off (dense) */
};
int eng_model_lte_info(const struct eng_model *m, struct eng_lte_info *out);

/* FFN input probe (tools/lte_calibrate.c): while set, every FFN block calls
 * fn(ctx, layer, xn, n) with the n normalised FFN input rows xn [n][dim]
 * (after the FFN norm; host memory valid during the call) of the rows the
 * layer runs on. Engine thread; not with layer parallelism (SS_EINVAL).
 * fn NULL clears it. Returns 0, SS_EINVAL or SS_ENOMEM. */
typedef void (*eng_ffn_probe_fn)(void *ctx, int layer, const float *xn, int n);
int eng_model_set_ffn_probe(struct eng_model *m, eng_ffn_probe_fn fn, void *ctx);

#define ENG_LTE_STAT_LAYERS 128
#define ENG_LTE_UNION_BINS 10
struct eng_lte_stats {
    int n_layers;          /* entries below: min(n_layers, ENG_LTE_STAT_LAYERS); 0 = LTE off */
    int8_t routed[ENG_LTE_STAT_LAYERS];
    double active_frac[ENG_LTE_STAT_LAYERS]; /* mean fraction of experts active per row */
    /* routed layer-steps by the fraction f of experts active for at least one
     * row of the step: bin b holds b/10 < f <= (b+1)/10 (f = 0 in bin 0) */
    uint64_t union_count[ENG_LTE_UNION_BINS];
    uint64_t union_steps;
    double union_sum;      /* sum of f over them */
};
void eng_model_lte_stats(const struct eng_model *m, struct eng_lte_stats *out);

/* A ragged batch: sequences' tokens concatenated.
 *
 *   tokens: [ s0 t0 .. s0 tk | s1 t0 .. | ... ]
 *   seq i owns tokens [seqs[i].tok0, seqs[i].tok0 + seqs[i].n_tok)
 *   their positions are n_past, n_past+1, ...; their K/V are written at KV
 *   indices n_past.. of the sequence's per-layer block tables, which must
 *   already hold units for those entries ("KV units and levels").
 */
#define ENG_MAX_LEVELS 8

struct eng_seq {
    int32_t tok0;
    int32_t n_tok;
    int32_t n_past;
    int want_logits;      /* 1: produce logits of this sequence's last token */
    int all_logits;       /* 1: produce logits for every token of it (perplexity, echo) */
    int want_hidden;      /* 1: produce the final hidden state of every token of it: the last
                           * layer's residual after the output norm, before the output
                           * projection (what embeddings pool); see eng_batch.hidden */

    /* ---- KV units and levels: see "KV units and levels" above. */
    const int32_t *const *layer_pages; /* [n_layers] per-layer block tables of unit ids */
    int32_t layer_n_pages;             /* entries in each layer_pages[l] (>= what its level needs) */
    int32_t level_n_past[ENG_MAX_LEVELS]; /* KV entries cached at level k (level 0: = n_past) */
    int32_t *level_kept;               /* out, may be NULL: tokens of this step kept at level k */
};

struct eng_batch {
    const int32_t *tokens;
    int32_t n_tokens;
    const struct eng_seq *seqs;
    int32_t n_seqs;
    /* out: host memory of eng_batch_n_hidden() * dim floats, row-major: for each
     * sequence with want_hidden, in batch order, one row per token. May be NULL
     * when no sequence wants hidden states. */
    float *hidden;
};

/* Runs the model over the batch. Logits are written row-major [n_vocab] in this
 * order: for each sequence in batch order, one row per token if all_logits, else
 * one row if want_logits, else none. Returns 0 or a negative code (SS_EINVAL
 * for a malformed batch: positions beyond n_ctx, missing pages, bad token ids).
 * logits is host memory of at least eng_batch_n_logits() * n_vocab floats
 * (may be NULL when no logits are wanted).
 *
 * Hidden states (want_hidden) go to b->hidden, which must then not be NULL.
 * Batch contract, checked before anything runs (an invalid batch changes
 * nothing, the KV cache included): 1 <= n_tokens <= max_batch_tokens; seqs tile
 * tokens in order (seqs[0].tok0 == 0, each tok0 = previous tok0 + n_tok,
 * n_tok >= 1, total == n_tokens); 0 <= n_past and n_past + n_tok <= n_ctx;
 * block tables: the rules under "KV units and levels"; token ids in
 * [0, n_vocab).
 * NOTE: not checked: that no unit written in this step (the units holding
 * entries n_past.. of a sequence) belongs to another sequence of the batch.
 * A sequence's logits are bitwise independent of the rest of the batch.
 * No allocation: all buffers are sized at load. Engine thread only. */
int eng_forward(struct eng_model *m, const struct eng_batch *b, float *logits);
int32_t eng_batch_n_logits(const struct eng_batch *b);
/* Rows eng_forward writes into b->hidden: the tokens of the want_hidden
 * sequences. A row is bitwise independent of the rest of the batch, like the
 * logits. Any thread (pure). */
int32_t eng_batch_n_hidden(const struct eng_batch *b);

#endif
