/* backend.h - the compute backend interface (ggml-backend style).
 *
 * Module kernels/ (bottom of the layer order): owns the backend table, the
 * CPU (cpu/) and CUDA (cuda/) implementations with their scalar references,
 * and the shared error codes (ss_error.h). Includes nothing above it.
 *
 * A backend is a const table of function pointers plus an opaque context. The
 * engine calls only the be_* wrappers below; it never touches device memory or
 * an AVX/CUDA function directly. Activation buffers are float arrays allocated by
 * the backend (be_alloc): for the CPU backend they are host memory, for CUDA they
 * are device memory, and the engine reads them back with be_download.
 *
 * Weights are described by struct be_tensor (ggml type numbering, row-major rows
 * of ne[0] elements, ne[1] rows). A backend may convert weights once at load
 * (be_weight_prepare) and keep its own copy.
 *
 * Threading: a backend context is used by one thread at a time (the engine
 * thread); the CPU backend parallelises inside each call over its own workers.
 */
#ifndef SS_BACKEND_H
#define SS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

/* Tensor element types, numbered as in ggml/GGUF so file values map directly. */
enum be_type {
    BE_F32 = 0,
    BE_F16 = 1,
    BE_Q4_0 = 2,
    BE_Q4_1 = 3,
    BE_Q5_0 = 6,
    BE_Q5_1 = 7,
    BE_Q8_0 = 8,
    BE_Q8_1 = 9,
    BE_Q2_K = 10,
    BE_Q3_K = 11,
    BE_Q4_K = 12,
    BE_Q5_K = 13,
    BE_Q6_K = 14,
    BE_Q8_K = 15,
    BE_BF16 = 30,
    BE_TYPE_COUNT = 40
};

/* Block geometry of a type: elements per block and bytes per block (0/0 if the
 * type is unknown or unsupported). */
struct be_type_info {
    const char *name;
    int blck; /* elements per block */
    int size; /* bytes per block */
};
const struct be_type_info *be_type_get(int type); /* NULL if unknown */
/* Bytes of one row of n elements; 0 if n is not a multiple of the block size or
 * the type is unknown. */
size_t be_row_bytes(int type, int64_t n);
/* Which types a backend computes with is a fact of that backend: see the
 * type_supported entry and be_type_supported() below. */

/* A weight matrix: ne[1] rows of ne[0] elements, rows contiguous, nb1 = bytes
 * per row. data points into the mmapped file or into backend memory. */
struct be_tensor {
    int type;
    int64_t ne[4];
    size_t nb1;
    const void *data;
    void *be_data; /* backend's own copy (NULL = use data) */
};

/* One sequence's slice of a ragged batch, as seen by attention. */
struct be_attn_seq {
    int32_t tok0;          /* first row of q/out belonging to this sequence */
    int32_t n_tok;         /* rows of this sequence in the batch */
    int32_t n_past;        /* KV entries already cached before this step */
    const int32_t *pages;  /* block table: logical page i -> physical page id */
};

/* KV storage of one layer: n_pages pages of BE_PAGE_SLOTS slots; each slot holds
 * kv_dim = n_kv_heads*head_dim elements of K and of V, in kv_type (F32 or F16).
 *   k[page][slot][kv_dim], v[page][slot][kv_dim] */
#define BE_PAGE_SLOTS 16
struct be_kv_layer {
    void *k;
    void *v;
    int kv_type; /* BE_F32 or BE_F16 */
};

struct be_attn_params {
    int n_heads;
    int n_kv_heads;
    int head_dim;
    float scale;      /* multiplies q.k (usually 1/sqrt(head_dim)) */
    int32_t window;   /* sliding window in KV entries, 0 = full causal */
    float softcap;    /* attention logit soft-capping, 0 = none */
};

struct be_rope_params {
    int n_heads;
    int head_dim;
    int n_rot;         /* rotated dimensions (<= head_dim) */
    float theta_base;  /* e.g. 10000 */
    float freq_scale;  /* linear position scaling, 1 = none */
    int neox;          /* 1: rotate-half pairs (i, i+n_rot/2); 0: adjacent pairs (2i, 2i+1) */
    const float *freq_factors; /* per-pair divisors (llama3 rope scaling), NULL = none */
};

/* One LTE layer's FFN (DESIGN.md section 5 "LTE"): n_experts experts of
 * expert_size S neurons. gate and up are the file's [dim -> ffn] matrices
 * (expert e = rows [e*S, (e+1)*S)); down is the expert-major copy of ffn_down:
 * n_experts*dim rows of S elements, expert e = rows [e*dim, (e+1)*dim), so
 * its row d is the columns [e*S, (e+1)*S) of the file's down row d. */
struct be_lte_ffn {
    const struct be_tensor *gate, *up, *down;
    int n_experts;
    int expert_size;
    int act;   /* 0 silu, 1 gelu(tanh), as glu */
    int dense; /* path: 0 grouped (each active expert runs on the rows that chose
                * it), 1 dense fallback (gate and up for every row and neuron as
                * two plain matmuls, then masked) */
};
struct be;
/* A task for be_fork2: makes its backend calls on `be`, the handle it is
 * given (a share of the forking backend, valid during the call only). */
typedef void (*be_task_fn)(struct be *be, void *arg);
/* Activation precision of matmul (be_set_act_precision):
 *   BE_ACT_F32    fp32 activations: the exact reference path (the default)
 *   BE_ACT_INT8   activations quantised to int8 per row and block, integer dot
 *                 products (quantised weight types; others stay fp32)
 *   BE_ACT_MIXED  int8 for the types with 32-element blocks (Q4_0, Q5_0,
 *                 Q8_0: one activation scale per 32 values), fp32 for the
 *                 K-quants (whose int8 activations share one scale per 256)
 *   BE_ACT_BF16   weights (dequantised) and activations rounded to BF16,
 *                 products summed in fp32 (vdpbf16ps: twice fp32 FMA's
 *                 multiply-adds per instruction); F32 weights stay fp32
 *   BE_ACT_AUTO   the backend's measured choice (set_act_precision returns
 *                 the precision it took) */
enum { BE_ACT_F32 = 0, BE_ACT_INT8 = 1, BE_ACT_AUTO = 2, BE_ACT_MIXED = 3, BE_ACT_BF16 = 4 };

struct be_ops {
    const char *name;
    int (*init)(void **ctx, int n_threads);
    void (*free)(void *ctx);

    /* memory */
    void *(*alloc)(void *ctx, size_t bytes);  /* zeroed; NULL on failure */
    void (*dealloc)(void *ctx, void *p);
    void (*upload)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*download)(void *ctx, void *dst, const void *src, size_t bytes);
    int (*weight_prepare)(void *ctx, struct be_tensor *w); /* optional */
    /* 1 if matmul, get_rows and weight_prepare compute with weights of this
     * type (any int: unknown types give 0), else 0. Any thread. */
    int (*type_supported)(void *ctx, int type);

    /* y[n][w->ne[1]] = x[n][w->ne[0]] . W^T
     * DETERMINISM: y[t][r] is bitwise identical whatever n is, whatever the
     * other rows of x are and whatever the thread count is (within one process:
     * the CPU backend picks one instruction set at be_open). The CUDA backend
     * (cuBLAS) keeps this only within tolerance: cuBLAS may pick another
     * algorithm for another n, so y[t] may change in the last bits with the
     * batch size (repeatable for one shape on one GPU model). An unsupported
     * type or a row size that is not a whole number of blocks gives y = 0.
     * y must not overlap x. */
    void (*matmul)(void *ctx, float *y, const float *x, const struct be_tensor *w, int n);
    /* out[n][w->ne[0]] = rows ids[] of w, dequantised (an id outside
     * [0, ne[1]) gives a row of zeros). w may also be a view never passed to
     * weight_prepare (be_data NULL, data in host memory): the engine's load
     * path turns 1-D tensors into fp32 this way. */
    void (*get_rows)(void *ctx, float *out, const struct be_tensor *w, const int32_t *ids, int n);
    /* out[i] = x[i] / rms(x[i]) * w (w NULL: no weight), rows of dim */
    void (*rmsnorm)(void *ctx, float *out, const float *x, const float *w, int n, int dim, float eps);
    /* in place rotation of x[n][n_heads*head_dim] at positions pos[n]
     * (n_rot even, <= head_dim, <= 1024; dims past n_rot are left as they are) */
    void (*rope)(void *ctx, float *x, const int32_t *pos, int n, const struct be_rope_params *p);
    /* write K/V rows of the batch into the cache: row i goes to slot slots[i]
     * (slot = page*BE_PAGE_SLOTS + offset); slots[i] < 0: row i is skipped.
     * F16 caches round to nearest even. */
    void (*kv_store)(void *ctx, struct be_kv_layer *kv, const float *k, const float *v,
                     const int32_t *slots, int n, int kv_dim);
    /* causal paged attention for a ragged batch. q: [n][n_heads*head_dim],
     * out: same shape (out may be q). Token j of sequence s attends KV entries
     * [max(0, n_past+j-window+1), n_past+j] of its block table, which must
     * already hold them (kv_store first). Rows of q not covered by any
     * sequence are left untouched. A head's output does not depend on the rest
     * of the batch. head_dim <= 1024. */
    void (*attention)(void *ctx, float *out, const float *q, const struct be_kv_layer *kv,
                      const struct be_attn_seq *seqs, int n_seqs, const struct be_attn_params *p);
    /* out[i] = act(gate[i]) * up[i]; act 0 = silu, 1 = gelu(tanh); element-wise
     * (a value never depends on n or on its index) */
    void (*glu)(void *ctx, float *out, const float *gate, const float *up, int64_t n, int act);
    /* y[i] += x[i] */
    void (*add)(void *ctx, float *y, const float *x, int64_t n);
    /* LTE sparse FFN, optional (NULL: the backend cannot run LTE layers).
     * y[n][dim] (overwritten) from x[n][dim] and the host mask[n][n_experts]
     * (1 = expert active for that row):
     *     h[t][e*S+j] = act(g) * u,  g, u = rows e*S+j of gate, up times x[t]
     *     y[t][d] = sum over active e in increasing order of
     *               dot(down row e*dim+d, h[t][e*S .. e*S+S))
     * scr_a, scr_b: backend scratch of n * n_experts * S floats each.
     * DETERMINISM: g and u are matmul values (bitwise as be_matmul gives them
     * for that row of the weight, whatever n); each partial dot over S is a
     * matmul value of the down tensor with K = S; y[t][d] starts at +0 and
     * adds the partials of t's active experts one by one in increasing e
     * (inactive experts are skipped, never added as zeros). So y[t] depends
     * only on x[t] and mask[t]: bitwise the same whatever n, the other rows,
     * the thread count and p->dense are. The CUDA backend keeps this bitwise
     * on the grouped path only (its own gate/up kernel, a fixed order per
     * row); its dense path's g and u are its matmul (cuBLAS) values, so
     * there y[t] follows matmul's CUDA note: within tolerance of the grouped
     * result and across batch sizes. */
    void (*lte_ffn)(void *ctx, float *y, const float *x, const uint8_t *mask, int n,
                    const struct be_lte_ffn *p, float *scr_a, float *scr_b);
    /* y[i] *= s */
    void (*scale)(void *ctx, float *y, float s, int64_t n);

    /* optional: fork/join of two independent tasks (layer parallelism's
     * pair). Runs fn(h0, a0) and fn(h1, a1), at once if the backend can split
     * itself (the CPU backend: one core each), and returns when both have
     * finished. h0, h1 are shares of this backend: memory allocated on it is
     * valid through them; they are valid during the call only. The tasks
     * must not write memory the other reads or writes. By the determinism
     * contract the results are bitwise those of running them one after the
     * other. NULL: the wrapper runs fn(be, a0) then fn(be, a1). */
    void (*fork2)(void *ctx, be_task_fn fn, void *a0, void *a1);
    /* optional: dst[r][0..w) = src[r][0..w) for the n rows r, rows dst_stride
     * and src_stride floats apart (a column block of a wider buffer to or
     * from a narrower one); bitwise copies, the regions must not overlap.
     * NULL: the backend cannot run merged layer pairs (merge_pairs). */
    void (*copy2d)(void *ctx, float *dst, int64_t dst_stride, const float *src, int64_t src_stride, int n,
                   int64_t w);
    /* 1: the engine should run layer-parallel pairs merged (both layers'
     * projections as one wider GEMM over a shared normalised input,
     * engine/forward_lp.c) on this backend; needs copy2d. 0: branch by
     * branch through fork2 (bitwise the per-layer kernels). */
    int merge_pairs;
    /* optional: choose the activation precision of matmul (BE_ACT_*); returns
     * the precision in effect (never BE_ACT_AUTO), or SS_EUNSUPPORTED (a
     * precision asked that has no kernels here), SS_EINVAL, SS_ENOMEM. The
     * determinism contract of matmul holds for each precision. */
    int (*set_act_precision)(void *ctx, int prec);
};

/* A live backend: ops table plus its context. */
struct be {
    const struct be_ops *ops;
    void *ctx;
};

/* Backend registry. name: "cpu" (NULL means "cpu"), "cuda" (device 0) or
 * "cuda:N" (device N); n_threads <= 0 means one per core (the CUDA backend
 * ignores it). Returns 0, or a negative SS_E* code: -11 no CUDA
 * device/driver (or no device N), -7 CUDA not compiled in or not enabled
 * (the CUDA backend has not been verified on a GPU yet: it opens only with
 * SLIMSERVE_CUDA_UNVERIFIED=1, see tools/gpu_check.sh), -9 unknown name, -1
 * no memory. The CPU backend honours SLIMSERVE_CPU_ISA
 * (generic | avx2 | avx512) when the CPU supports the named set, and
 * SLIMSERVE_LP_EXEC (seq | split) for how fork2 runs (kernels/cpu/fork.c). */
int be_open(struct be *be, const char *name, int n_threads);
void be_close(struct be *be);
/* 1 if be_open("cuda") (device 0) / be_open("cuda:N") would succeed; 0
 * otherwise, with the reason (no driver, no device, not built, not enabled)
 * written into why. On success why describes the device. */
int be_cuda_available(char *why, size_t why_len);
int be_cuda_device_available(int dev, char *why, size_t why_len);
/* The gate of the never-yet-run CUDA backend: 1 if SLIMSERVE_CUDA_UNVERIFIED
 * is "1" (tools/gpu_check.sh sets it once its conformance run has passed),
 * else 0 with what to do in why. be_open("cuda") checks it after finding a
 * device. Any thread (reads the environment). */
int be_cuda_gate_open(char *why, size_t why_len);

/* Wrappers (inline, so calls cost nothing). */
static inline void *be_alloc(struct be *b, size_t n) { return b->ops->alloc(b->ctx, n); }
static inline void be_dealloc(struct be *b, void *p) { if (p) b->ops->dealloc(b->ctx, p); }
static inline void be_upload(struct be *b, void *d, const void *s, size_t n) { b->ops->upload(b->ctx, d, s, n); }
static inline void be_download(struct be *b, void *d, const void *s, size_t n) { b->ops->download(b->ctx, d, s, n); }
static inline int be_weight_prepare(struct be *b, struct be_tensor *w) {
    return b->ops->weight_prepare ? b->ops->weight_prepare(b->ctx, w) : 0;
}
static inline int be_type_supported(const struct be *b, int type) {
    return b->ops->type_supported(b->ctx, type);
}
static inline void be_matmul(struct be *b, float *y, const float *x, const struct be_tensor *w, int n) {
    b->ops->matmul(b->ctx, y, x, w, n);
}
static inline void be_get_rows(struct be *b, float *o, const struct be_tensor *w, const int32_t *ids, int n) {
    b->ops->get_rows(b->ctx, o, w, ids, n);
}
static inline void be_rmsnorm(struct be *b, float *o, const float *x, const float *w, int n, int dim, float eps) {
    b->ops->rmsnorm(b->ctx, o, x, w, n, dim, eps);
}
static inline void be_rope(struct be *b, float *x, const int32_t *pos, int n, const struct be_rope_params *p) {
    b->ops->rope(b->ctx, x, pos, n, p);
}
static inline void be_kv_store(struct be *b, struct be_kv_layer *kv, const float *k, const float *v,
                               const int32_t *slots, int n, int kv_dim) {
    b->ops->kv_store(b->ctx, kv, k, v, slots, n, kv_dim);
}
static inline void be_attention(struct be *b, float *o, const float *q, const struct be_kv_layer *kv,
                                const struct be_attn_seq *s, int ns, const struct be_attn_params *p) {
    b->ops->attention(b->ctx, o, q, kv, s, ns, p);
}
static inline void be_glu(struct be *b, float *o, const float *g, const float *u, int64_t n, int act) {
    b->ops->glu(b->ctx, o, g, u, n, act);
}
static inline void be_add(struct be *b, float *y, const float *x, int64_t n) { b->ops->add(b->ctx, y, x, n); }
static inline void be_scale(struct be *b, float *y, float s, int64_t n) { b->ops->scale(b->ctx, y, s, n); }
static inline int be_has_lte(const struct be *b) { return b->ops->lte_ffn != NULL; }
static inline void be_lte_ffn(struct be *b, float *y, const float *x, const uint8_t *mask, int n,
                              const struct be_lte_ffn *p, float *scr_a, float *scr_b) {
    b->ops->lte_ffn(b->ctx, y, x, mask, n, p, scr_a, scr_b);
}
static inline void be_fork2(struct be *b, be_task_fn fn, void *a0, void *a1) {
    if (b->ops->fork2) {
        b->ops->fork2(b->ctx, fn, a0, a1);
        return;
    }
    fn(b, a0);
    fn(b, a1);
}
static inline int be_has_copy2d(const struct be *b) { return b->ops->copy2d != NULL; }
static inline void be_copy2d(struct be *b, float *d, int64_t ds, const float *s, int64_t ss, int n, int64_t w) {
    b->ops->copy2d(b->ctx, d, ds, s, ss, n, w);
}
/* a backend without the entry computes in fp32 (-7 = SS_EUNSUPPORTED if int8
 * or bf16 is demanded) */
static inline int be_set_act_precision(struct be *b, int prec) {
    if (b->ops->set_act_precision)
        return b->ops->set_act_precision(b->ctx, prec);
    return prec == BE_ACT_INT8 || prec == BE_ACT_BF16 ? -7 : BE_ACT_F32;
}

/* Scalar reference routines (kernels/cpu/ref.c): plain C, no SIMD, no threads.
 * Optimised kernels are tested against these. */
void kref_dequant_row(int type, const void *src, float *dst, int64_t n);
void kref_matmul(float *y, const float *x, const struct be_tensor *w, int n);
float kref_fp16_to_fp32(uint16_t h);
uint16_t kref_fp32_to_fp16(float f);
float kref_bf16_to_fp32(uint16_t h);
/* The LTE FFN of struct be_lte_ffn from its definition (double sums). */
void kref_lte_ffn(float *y, const float *x, const uint8_t *mask, int n, const struct be_lte_ffn *p);

#endif
