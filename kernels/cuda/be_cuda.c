/* be_cuda.c - the CUDA backend: the ops table of kernels/backend.h on device
 * memory (C, CUDA runtime + cuBLAS C API; the kernels are in kcu_rows.cu and
 * kcu_attn.cu, launched through kcu_launch.h), plus the device probe.
 *
 * NOTE: written and checked without a GPU (compiled, resource-checked, its
 * arithmetic tested on the CPU by test_cuda_math). It has NOT run on a GPU
 * yet: be_open("cuda") refuses unless SLIMSERVE_CUDA_UNVERIFIED=1
 * (kernels/registry.c), which tools/gpu_check.sh sets for its runs.
 *
 * Memory: every buffer of be_alloc is device memory (cudaMalloc, zeroed).
 * Index arrays the engine passes in host memory (positions, slots, block
 * tables, LTE's expert grouping built from the host mask) are copied to a
 * device scratch per call, through a pinned host ring (pin_stage: the host
 * buffer may be reused at once, and the copy does not wait for the stream);
 * stream order keeps the scratch alive for the kernel that reads it. get_rows'
 * rows (and index arrays too big for the ring) go from pageable memory, whose
 * cudaMemcpyAsync returns once the bytes are staged.
 * Weights (weight_prepare): uploaded once, dequantised on the host by the CPU
 * backend's reference dequantiser (kref_dequant_row) and stored in the type
 * kcu_gemm_type() names: F32 weights as F32 (4 bytes per element), BF16 as
 * BF16 and F16 and every quantised type as F16 (2 bytes per element: a Q4_K
 * matrix takes ~3.6x its file size). Released by be_close.
 * get_rows reads the host copy (the mmapped file) and dequantises there, so
 * the embedding rows are bitwise the CPU backend's; only n rows are uploaded.
 *
 * Streams: one per context; every op enqueues on it and returns; download
 * waits for it. cuBLAS runs on the same stream, with the context's own
 * workspace. fork2 (layer-parallel pairs) runs its two tasks on two shares,
 * contexts with their own stream, cuBLAS handle and scratch, ordered after
 * and joined back into the forking stream by events (kcu_fork2).
 * Errors: the entries return void, so the first CUDA/cuBLAS error is kept in
 * the context and printed once on stderr; later results are undefined (the
 * conformance runner and gpu_check.sh catch that).
 * DETERMINISM: every kernel here computes a row (a head) from that row only,
 * in a fixed order: bitwise independent of the batch (LTE's grouped path
 * included; its dense fallback runs gate/up through cuBLAS, see below).
 * Attention's split-K plan for a row depends only on its number of keys and
 * the layer's shape (kcu_split_plan), never on the batch or on how the batch
 * is grouped through the partial scratch. matmul is cuBLAS: its
 * algorithm (tiling, split-K) may change with n, so y[t] may differ in the
 * last bits between batch sizes; for one shape it is repeatable on one GPU
 * model. So the GPU keeps "a token's output does not depend on the batch" only
 * within tolerance (backend.h matmul contract, README "CUDA").
 * Thread: one host thread at a time per context (any thread: each entry makes
 * the context's device current first).
 */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "kernels/backend.h"
#include "kernels/cpu/kcpu.h"
#include "kernels/cuda/kcu.h"
#include "kernels/cuda/kcu_launch.h"
#include "kernels/cuda/kcu_lte.h"
#include "kernels/cuda/kcu_math.h"

/* one weight copy on the device (freed by kcu_free) */
struct kcu_wbuf {
    struct kcu_wbuf *next;
    void *dev;
};

struct kcu_ctx {
    int dev;
    cudaStream_t st;
    cublasHandle_t blas;
    void *idx;           /* device scratch: index arrays of one call */
    size_t idx_cap;
    void *act;           /* device scratch: activations converted for a GEMM */
    size_t act_cap;
    void *host;          /* host scratch: staging of index arrays / dequantised rows */
    size_t host_cap;
    float *part;         /* device scratch of split-K partials: KCU_SPLIT_SCRATCH bytes, from open */
    int split;           /* 1: long rows go split-K (the default); 0: every row unsplit */
    uint8_t *pin;        /* pinned host ring (KCU_PIN_BYTES) staging index uploads, NULL: none */
    size_t pin_off;      /* next free byte of the ring */
    int pin_tried;       /* 1 once its allocation was tried */
    void *blas_ws;       /* device: this handle's own cuBLAS workspace (KCU_BLAS_WS bytes) */
    struct kcu_wbuf *weights;
    size_t weight_bytes; /* device bytes of the prepared weights */
    int err;             /* first error seen (cudaError_t or 1000 + cublasStatus_t), 0 = none */
    /* fork2 (kcu_fork2): a share is a context of its own (stream, cuBLAS
     * handle + workspace, scratch) on the same device, whose weights belong
     * to `root`; made on the first fork, kept until the root is freed. */
    struct kcu_ctx *root;     /* the forking context (NULL: this is one) */
    struct kcu_ctx *share[2]; /* the root's two shares (NULL until made) */
    cudaEvent_t ev_fork;      /* recorded on st at a fork (root only) */
    cudaEvent_t ev_join[2];   /* recorded on share[j]->st at the join (root only) */
    int have_events;
};

/* Bytes of every handle's cuBLAS workspace. NOTE: each context's handle gets
 * its own workspace of this one size (cublasSetWorkspace, after
 * cublasSetStream, which resets it): cuBLAS promises bitwise repeatable
 * results for concurrent streams only with a workspace per stream, and a
 * handle's algorithm choice may depend on its workspace size, so a share
 * computes exactly what the root would. 32 MiB is cuBLAS's default on
 * Hopper (4 MiB before). */
#define KCU_BLAS_WS ((size_t)32 << 20)

/* ---------------------------------------------------------------- errors */

static int cu_ok(struct kcu_ctx *c, cudaError_t e, const char *what) {
    if (e == cudaSuccess)
        return 1;
    if (!c->err) {
        c->err = (int)e;
        fprintf(stderr, "slimserve: CUDA error in %s: %s (%d)\n", what, cudaGetErrorString(e), (int)e);
    }
    return 0;
}

static int blas_ok(struct kcu_ctx *c, cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS)
        return 1;
    if (!c->err) {
        c->err = 1000 + (int)s;
        fprintf(stderr, "slimserve: cuBLAS error in %s: status %d\n", what, (int)s);
    }
    return 0;
}

/* the context, with its device current on this thread */
static struct kcu_ctx *use(void *ctx) {
    struct kcu_ctx *c = ctx;
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != c->dev)
        cu_ok(c, cudaSetDevice(c->dev), "cudaSetDevice");
    return c;
}

/* ---------------------------------------------------------------- scratch */

/* device scratch of at least `need` bytes (grown geometrically; NULL on failure) */
static void *dev_scratch(struct kcu_ctx *c, void **p, size_t *cap, size_t need) {
    if (need <= *cap)
        return *p;
    size_t n = need < 2 * *cap ? 2 * *cap : need;
    cu_ok(c, cudaStreamSynchronize(c->st), "cudaStreamSynchronize");
    cudaFree(*p);
    *p = NULL;
    *cap = 0;
    if (!cu_ok(c, cudaMalloc(p, n), "cudaMalloc (scratch)")) {
        *p = NULL;
        return NULL;
    }
    *cap = n;
    return *p;
}

static void *host_scratch(struct kcu_ctx *c, size_t need) {
    if (need <= c->host_cap)
        return c->host;
    size_t n = need < 2 * c->host_cap ? 2 * c->host_cap : need;
    void *p = realloc(c->host, n);
    if (!p) {
        if (!c->err) {
            c->err = 2000;
            fprintf(stderr, "slimserve: CUDA backend: out of host memory (%zu bytes)\n", n);
        }
        return NULL;
    }
    c->host = p;
    c->host_cap = n;
    return p;
}

/* Index uploads are staged in a pinned ring: a copy from pinned memory
 * returns at once, where one from pageable memory may first wait for the
 * stream (CUDA's API sync behaviour), which would hold the host back from
 * issuing fork2's other task. A staged region is reused only after the
 * stream has drained (a wrap of the ring, or a download), so no copy reads
 * bytes overwritten after it was enqueued. */
#define KCU_PIN_BYTES ((size_t)1 << 20)

/* src copied into the ring; NULL when it does not fit or there is no ring
 * (the caller then copies from src itself) */
static const void *pin_stage(struct kcu_ctx *c, const void *src, size_t bytes) {
    if (!c->pin_tried) {
        c->pin_tried = 1;
        if (cudaMallocHost((void **)&c->pin, KCU_PIN_BYTES) != cudaSuccess) {
            (void)cudaGetLastError(); /* no pinned memory: pageable copies, as before */
            c->pin = NULL;
        }
    }
    const size_t need = (bytes + 255) & ~(size_t)255;
    if (!c->pin || need > KCU_PIN_BYTES)
        return NULL;
    if (c->pin_off + need > KCU_PIN_BYTES) { /* wrap: every copy out of the ring is done once the stream is */
        if (!cu_ok(c, cudaStreamSynchronize(c->st), "cudaStreamSynchronize (pinned ring)"))
            return NULL;
        c->pin_off = 0;
    }
    uint8_t *p = c->pin + c->pin_off;
    memcpy(p, src, bytes);
    c->pin_off += need;
    return p;
}

/* bytes of host memory copied to the device index scratch; NULL on failure */
static void *upload_idx(struct kcu_ctx *c, const void *src, size_t bytes) {
    void *d = dev_scratch(c, &c->idx, &c->idx_cap, bytes ? bytes : 1);
    if (!d)
        return NULL;
    const void *staged = bytes ? pin_stage(c, src, bytes) : NULL;
    if (!cu_ok(c, cudaMemcpyAsync(d, staged ? staged : src, bytes, cudaMemcpyHostToDevice, c->st),
               "upload (index)"))
        return NULL;
    return d;
}

/* ---------------------------------------------------------------- lifecycle */

/* Stream, cuBLAS handle on it and the handle's own workspace of c (device
 * current): 0 or SS_ENODEVICE, with whatever was made released. */
static int ctx_stream_open(struct kcu_ctx *c) {
    if (cudaStreamCreate(&c->st) != cudaSuccess) {
        (void)cudaGetLastError();
        return SS_ENODEVICE;
    }
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(c->st);
        return SS_ENODEVICE;
    }
    /* NOTE: the split-K scratch is sized once here, never per call: a batch
     * whose partials do not fit runs in launch groups through it
     * (kcu_split_group), and kcu_split_cap keeps one row within it. Each
     * share has its own: the two branches of a fork run at once. */
    if (cublasSetStream(c->blas, c->st) != CUBLAS_STATUS_SUCCESS ||
        cudaMalloc(&c->blas_ws, KCU_BLAS_WS) != cudaSuccess ||
        cublasSetWorkspace(c->blas, c->blas_ws, KCU_BLAS_WS) != CUBLAS_STATUS_SUCCESS ||
        cudaMalloc((void **)&c->part, KCU_SPLIT_SCRATCH) != cudaSuccess) {
        (void)cudaGetLastError();
        cudaFree(c->part);
        cudaFree(c->blas_ws);
        cublasDestroy(c->blas);
        cudaStreamDestroy(c->st);
        return SS_ENODEVICE;
    }
    return 0;
}

/* Releases what ctx_stream_open made and the scratch (not the weights). */
static void ctx_stream_close(struct kcu_ctx *c) {
    cudaStreamSynchronize(c->st);
    cudaFree(c->idx);
    cudaFree(c->act);
    free(c->host);
    cudaFreeHost(c->pin);
    cudaFree(c->part);
    cublasDestroy(c->blas);
    cudaFree(c->blas_ws);
    cudaStreamDestroy(c->st);
}

int kcu_ctx_open(void **out, int dev) {
    struct kcu_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return SS_ENOMEM;
    c->dev = dev;
    if (cudaSetDevice(dev) != cudaSuccess || ctx_stream_open(c) < 0) {
        (void)cudaGetLastError();
        free(c);
        return SS_ENODEVICE;
    }
    c->split = 1;
    *out = c;
    return 0;
}

static int kcu_init(void **out, int n_threads) {
    (void)n_threads; /* the GPU parallelises itself */
    return kcu_ctx_open(out, 0);
}

static void kcu_free(void *ctx) {
    struct kcu_ctx *c = ctx;
    if (!c)
        return;
    use(c);
    for (int j = 0; j < 2; j++) {
        if (c->share[j]) {
            ctx_stream_close(c->share[j]);
            free(c->share[j]);
        }
    }
    if (c->have_events) {
        cudaEventDestroy(c->ev_fork);
        cudaEventDestroy(c->ev_join[0]);
        cudaEventDestroy(c->ev_join[1]);
    }
    cudaStreamSynchronize(c->st);
    for (struct kcu_wbuf *w = c->weights, *nx; w; w = nx) {
        nx = w->next;
        cudaFree(w->dev);
        free(w);
    }
    ctx_stream_close(c);
    free(c);
}

/* ---------------------------------------------------------------- memory */

static void *kcu_alloc(void *ctx, size_t bytes) {
    struct kcu_ctx *c = use(ctx);
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is an answer (NULL), not a sticky error */
        return NULL;
    }
    if (!cu_ok(c, cudaMemsetAsync(p, 0, bytes, c->st), "cudaMemsetAsync")) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void kcu_dealloc(void *ctx, void *p) {
    use(ctx);
    cudaFree(p); /* waits for the device to finish with it */
}

static void kcu_upload(void *ctx, void *dst, const void *src, size_t bytes) {
    struct kcu_ctx *c = use(ctx);
    if (bytes)
        cu_ok(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->st), "upload");
}

static void kcu_download(void *ctx, void *dst, const void *src, size_t bytes) {
    struct kcu_ctx *c = use(ctx);
    if (bytes)
        cu_ok(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->st), "download");
    if (cu_ok(c, cudaStreamSynchronize(c->st), "download (synchronize)"))
        c->pin_off = 0; /* the stream has drained: the whole ring is free */
}

static int kcu_type_supported(void *ctx, int type) {
    (void)ctx;
    return kcpu_type_supported(type); /* the host dequantiser is the CPU backend's */
}

/* Converts rows [r0, r0+nr) of w to the GEMM type gt into dst (host). */
static void convert_rows(const struct be_tensor *w, int gt, int64_t r0, int64_t nr, void *dst, float *row) {
    const int64_t K = w->ne[0];
    const size_t es = gt == BE_F32 ? 4 : 2;
    for (int64_t r = 0; r < nr; r++) {
        const uint8_t *src = (const uint8_t *)w->data + (size_t)(r0 + r) * w->nb1;
        uint8_t *o = (uint8_t *)dst + (size_t)r * (size_t)K * es;
        if (w->type == gt) { /* F32, F16, BF16: the bytes as they are */
            memcpy(o, src, (size_t)K * es);
            continue;
        }
        kref_dequant_row(w->type, src, row, K);
        uint16_t *h = (uint16_t *)o;
        for (int64_t k = 0; k < K; k++)
            h[k] = gt == BE_BF16 ? kcu_f32_to_bf16(row[k]) : kcu_f32_to_f16_sat(row[k]);
    }
}

#define PREP_CHUNK ((size_t)8 << 20) /* host bytes converted per upload */

static int kcu_weight_prepare(void *ctx, struct be_tensor *w) {
    struct kcu_ctx *c = use(ctx);
    if (!kcpu_type_supported(w->type))
        return SS_EUNSUPPORTED;
    const int64_t K = w->ne[0], R = w->ne[1];
    size_t rb = be_row_bytes(w->type, K);
    if (K <= 0 || R <= 0 || K > INT_MAX || R > INT_MAX || rb == 0 || (w->nb1 && w->nb1 < rb) || !w->data)
        return SS_EINVAL;
    if (w->be_data)
        return 0; /* already on the device */
    if (!w->nb1)
        w->nb1 = rb;
    const int gt = kcu_gemm_type(w->type);
    const size_t es = gt == BE_F32 ? 4 : 2, row_out = (size_t)K * es;
    if ((size_t)R > SIZE_MAX / row_out)
        return SS_ENOMEM;
    const size_t total = row_out * (size_t)R;
    int64_t per = (int64_t)(PREP_CHUNK / row_out);
    if (per < 1)
        per = 1;
    if (per > R)
        per = R;
    struct kcu_wbuf *wb = calloc(1, sizeof *wb);
    float *row = malloc(sizeof(float) * (size_t)K);
    void *stage = malloc(row_out * (size_t)per);
    int rc = 0;
    if (!wb || !row || !stage) {
        rc = SS_ENOMEM;
    } else if (cudaMalloc(&wb->dev, total) != cudaSuccess) {
        (void)cudaGetLastError();
        wb->dev = NULL;
        rc = SS_ENOMEM;
    } else {
        for (int64_t r0 = 0; r0 < R && rc == 0; r0 += per) {
            int64_t nr = R - r0 < per ? R - r0 : per;
            convert_rows(w, gt, r0, nr, stage, row);
            if (cudaMemcpy((uint8_t *)wb->dev + (size_t)r0 * row_out, stage, (size_t)nr * row_out,
                           cudaMemcpyHostToDevice) != cudaSuccess)
                rc = SS_EIO;
        }
    }
    free(row);
    free(stage);
    if (rc < 0) {
        if (wb && wb->dev)
            cudaFree(wb->dev);
        free(wb);
        (void)cudaGetLastError();
        return rc;
    }
    struct kcu_ctx *own = c->root ? c->root : c; /* a share's weights belong to its root */
    wb->next = own->weights;
    own->weights = wb;
    own->weight_bytes += total;
    w->be_data = wb->dev;
    return 0;
}

/* ---------------------------------------------------------------- compute */

static void zero(struct kcu_ctx *c, void *p, size_t bytes) {
    if (bytes)
        cu_ok(c, cudaMemsetAsync(p, 0, bytes, c->st), "cudaMemsetAsync");
}

/* y[n][R] = x[n][K] . W^T with W [R][K] row-major = a K x R column-major
 * matrix: in cuBLAS's column-major terms y^T (R x n) = W^T-op(A) . x^T. */
static void kcu_matmul(void *ctx, float *y, const float *x, const struct be_tensor *w, int n) {
    struct kcu_ctx *c = use(ctx);
    const int64_t K = w->ne[0], R = w->ne[1];
    if (n <= 0 || R <= 0)
        return;
    const size_t ybytes = sizeof(float) * (size_t)n * (size_t)R;
    if (!w->be_data || !kcpu_type_supported(w->type) || K <= 0 || K > INT_MAX || R > INT_MAX ||
        be_row_bytes(w->type, K) == 0) {
        zero(c, y, ybytes); /* the contract: unsupported -> y = 0 */
        return;
    }
    const int gt = kcu_gemm_type(w->type);
    const void *b = x;
    cudaDataType dt = CUDA_R_32F;
    if (gt != BE_F32) {
        uint16_t *a = dev_scratch(c, &c->act, &c->act_cap, sizeof(uint16_t) * (size_t)n * (size_t)K);
        if (!a || !cu_ok(c, kcu_launch_to_half(c->st, a, x, (int64_t)n * K, gt), "to_half")) {
            zero(c, y, ybytes);
            return;
        }
        b = a;
        dt = gt == BE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    }
    const float one = 1.0f, nil = 0.0f;
    blas_ok(c, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)R, n, (int)K, &one, w->be_data, dt,
                            (int)K, b, dt, (int)K, &nil, y, CUDA_R_32F, (int)R, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
}

static void kcu_get_rows(void *ctx, float *out, const struct be_tensor *w, const int32_t *ids, int n) {
    struct kcu_ctx *c = use(ctx);
    const int64_t K = w->ne[0], R = w->ne[1];
    if (n <= 0 || K <= 0)
        return;
    float *h = host_scratch(c, sizeof(float) * (size_t)n * (size_t)K);
    if (!h)
        return;
    const size_t nb1 = w->nb1 ? w->nb1 : be_row_bytes(w->type, K);
    const int ok = w->data && kcpu_type_supported(w->type) && be_row_bytes(w->type, K) != 0;
    for (int i = 0; i < n; i++) {
        float *o = h + (size_t)i * (size_t)K;
        if (ok && ids[i] >= 0 && ids[i] < R)
            kref_dequant_row(w->type, (const uint8_t *)w->data + (size_t)ids[i] * nb1, o, K);
        else
            memset(o, 0, sizeof(float) * (size_t)K);
    }
    cu_ok(c, cudaMemcpyAsync(out, h, sizeof(float) * (size_t)n * (size_t)K, cudaMemcpyHostToDevice, c->st),
          "get_rows (upload)");
}

static void kcu_rmsnorm(void *ctx, float *out, const float *x, const float *w, int n, int dim, float eps) {
    struct kcu_ctx *c = use(ctx);
    cu_ok(c, kcu_launch_rmsnorm(c->st, out, x, w, n, dim, eps), "rmsnorm");
}

static void kcu_rope(void *ctx, float *x, const int32_t *pos, int n, const struct be_rope_params *p) {
    struct kcu_ctx *c = use(ctx);
    const int nr = p->n_rot;
    if (n <= 0 || p->n_heads <= 0 || p->head_dim <= 0 || nr <= 1 || nr > p->head_dim || nr % 2 ||
        nr / 2 > 512)
        return; /* as the CPU backend: nonsense shapes leave x alone */
    const int32_t *dpos = upload_idx(c, pos, sizeof(int32_t) * (size_t)n);
    if (dpos)
        cu_ok(c, kcu_launch_rope(c->st, x, dpos, n, p), "rope");
}

static void kcu_kv_store(void *ctx, struct be_kv_layer *kv, const float *k, const float *v,
                         const int32_t *slots, int n, int kv_dim) {
    struct kcu_ctx *c = use(ctx);
    if (n <= 0 || kv_dim <= 0)
        return;
    const int32_t *ds = upload_idx(c, slots, sizeof(int32_t) * (size_t)n);
    if (ds)
        cu_ok(c, kcu_launch_kv_store(c->st, kv->k, kv->v, kv->kv_type, k, v, ds, n, kv_dim), "kv_store");
}

/* Runs the split rows comb[0..n[2]) (host copy; device copies at dparts,
 * dcomb) in launch groups that fit the partial scratch. */
static void attn_split_groups(struct kcu_ctx *c, float *out, const float *q, const struct be_kv_layer *kv,
                              const struct kcu_split_row *comb, size_t n_comb,
                              const struct kcu_attn_row *dparts, const struct kcu_split_row *dcomb,
                              const int32_t *dpages, const struct be_attn_params *p) {
    const int64_t slots = kcu_split_slots(p->n_heads, p->head_dim);
    for (size_t c0 = 0, c1; c0 < n_comb; c0 = c1) {
        c1 = kcu_split_group(comb, n_comb, c0, slots);
        const int base = comb[c0].part0, np = comb[c1 - 1].part0 + comb[c1 - 1].n_part - base;
        if (!cu_ok(c, kcu_launch_attention_split(c->st, out, q, kv->k, kv->v, kv->kv_type, dparts + base, np,
                                                 dcomb + c0, (int)(c1 - c0), base, dpages, c->part, p),
                   "attention (split-K)"))
            return;
    }
}

/* The rows (one per query token) and block tables of a ragged batch
 * (kcu_attn_pack), sorted by the split-K plan (kcu_split_pack) and packed
 * for one upload (host scratch; the first two parts are staging):
 *   [rows x n_rows | pages | pad] [plain x n0 | parts x n1 | comb x n2 | pages]
 *                                  \____________ uploaded ______________/
 * Plain rows run the unsplit kernel, split rows the partial + combine
 * kernels (attn_split_groups). */
static void kcu_attention(void *ctx, float *out, const float *q, const struct be_kv_layer *kv,
                          const struct be_attn_seq *seqs, int n_seqs, const struct be_attn_params *p) {
    struct kcu_ctx *c = use(ctx);
    if (n_seqs <= 0 || p->n_heads <= 0 || p->n_kv_heads <= 0 || p->head_dim <= 0 ||
        p->head_dim > KCU_ATT_MAX_HEAD || p->n_heads % p->n_kv_heads != 0)
        return;
    size_t n_rows, n_pages, n[3];
    kcu_attn_count(seqs, n_seqs, &n_rows, &n_pages);
    if (n_rows == 0 || n_rows > INT_MAX || n_pages > INT_MAX)
        return;
    const size_t rows_b = sizeof(struct kcu_attn_row) * n_rows, pages_b = sizeof(int32_t) * n_pages;
    uint8_t *h = host_scratch(c, rows_b + pages_b);
    if (!h)
        return;
    const struct kcu_attn_row *rows = (const struct kcu_attn_row *)h;
    kcu_attn_pack(seqs, n_seqs, p->window, (struct kcu_attn_row *)h, (int32_t *)(h + rows_b));
    const int split = (c->root ? c->root : c)->split; /* a share follows its root */
    const int pcap = split ? kcu_split_cap(p->n_heads, p->head_dim) : 1;
    kcu_split_pack(rows, n_rows, pcap, NULL, NULL, NULL, n);
    if (n[1] > INT_MAX)
        return;
    const size_t fin = (rows_b + pages_b + 7) & ~(size_t)7;
    const size_t plain_b = sizeof(struct kcu_attn_row) * (n[0] + n[1]), comb_b = sizeof(struct kcu_split_row) * n[2];
    if (!(h = host_scratch(c, fin + plain_b + comb_b + pages_b))) /* realloc: the staging is kept */
        return;
    rows = (const struct kcu_attn_row *)h;
    struct kcu_attn_row *plain = (struct kcu_attn_row *)(h + fin);
    struct kcu_split_row *comb = (struct kcu_split_row *)(h + fin + plain_b);
    kcu_split_pack(rows, n_rows, pcap, plain, plain + n[0], comb, n);
    memcpy(h + fin + plain_b + comb_b, h + rows_b, pages_b);
    uint8_t *d = upload_idx(c, h + fin, plain_b + comb_b + pages_b);
    if (!d)
        return;
    const struct kcu_attn_row *dplain = (const struct kcu_attn_row *)d;
    const int32_t *dpages = (const int32_t *)(d + plain_b + comb_b);
    if (n[0] && !cu_ok(c, kcu_launch_attention(c->st, out, q, kv->k, kv->v, kv->kv_type, dplain, dpages,
                                               (int)n[0], p),
                       "attention"))
        return;
    attn_split_groups(c, out, q, kv, comb, n[2], dplain + n[0], (const struct kcu_split_row *)(d + plain_b),
                      dpages, p);
}

static void kcu_glu_op(void *ctx, float *out, const float *g, const float *u, int64_t n, int act) {
    struct kcu_ctx *c = use(ctx);
    cu_ok(c, kcu_launch_glu(c->st, out, g, u, n, act), "glu");
}

static void kcu_add_op(void *ctx, float *y, const float *x, int64_t n) {
    struct kcu_ctx *c = use(ctx);
    cu_ok(c, kcu_launch_add(c->st, y, x, n), "add");
}

static void kcu_scale_op(void *ctx, float *y, float s, int64_t n) {
    struct kcu_ctx *c = use(ctx);
    cu_ok(c, kcu_launch_scale(c->st, y, s, n), "scale");
}

/* ---------------------------------------------------------------- LTE */

/* 1 if p's tensors are on the device with the shapes of backend.h
 * struct be_lte_ffn: gate, up [dim -> E*S], down [E*dim rows][S]. */
static int lte_shapes_ok(const struct be_lte_ffn *p) {
    const struct be_tensor *g = p->gate, *u = p->up, *d = p->down;
    const int64_t E = p->n_experts, S = p->expert_size, dim = g->ne[0];
    return E > 0 && S > 0 && dim > 0 && g->be_data && u->be_data && d->be_data && g->ne[1] == E * S &&
           u->ne[0] == dim && u->ne[1] == E * S && d->ne[0] == S && d->ne[1] == E * dim &&
           E * S <= INT_MAX && E * dim <= INT_MAX && dim <= INT_MAX;
}

/* The grouping of the host mask (kcu_lte.h) in the host scratch, uploaded in
 * one copy:
 *   host:   [off E+1][cur E][items n_items][tok P][rowoff n+1][ents P]
 *   device:                 [items        ][tok  ][rowoff    ][ents  ]
 * Returns the device address of items (NULL on failure). */
static uint8_t *lte_upload_groups(struct kcu_ctx *c, const uint8_t *mask, int n, int E, int dense,
                                  int64_t *n_items, size_t *o_tok, size_t *o_row, size_t *o_ents) {
    const size_t head = sizeof(int32_t) * (2 * (size_t)E + 1);
    int32_t *off = host_scratch(c, head);
    if (!off)
        return NULL;
    *n_items = kcu_lte_offsets(mask, n, E, off);
    const size_t P = (size_t)off[E];
    *o_tok = sizeof(struct kcu_lte_item) * (size_t)*n_items;
    *o_row = *o_tok + sizeof(int32_t) * P;
    *o_ents = *o_row + sizeof(int32_t) * ((size_t)n + 1);
    const size_t bytes = *o_ents + sizeof(struct kcu_lte_ent) * P;
    uint8_t *h = host_scratch(c, head + bytes); /* realloc keeps off */
    if (!h)
        return NULL;
    off = (int32_t *)h;
    uint8_t *b = h + head;
    kcu_lte_fill(mask, n, E, dense, off, off + E + 1, (int32_t *)(b + *o_tok), (struct kcu_lte_item *)b,
                 (int32_t *)(b + *o_row), (struct kcu_lte_ent *)(b + *o_ents));
    return upload_idx(c, b, bytes);
}

/* backend.h lte_ffn. Grouped: phase A (kcu_lte_gate_up_kernel) writes h of
 * every active pair into scr_b; dense: gate and up as two cuBLAS matmuls over
 * every row into scr_a, scr_b, then glu over all of scr_a in place (values of
 * inactive experts are computed and never read: the mask acts in phase B).
 * Phase B (kcu_lte_down_kernel) adds each row's active experts in increasing
 * order. DETERMINISM: grouped, y[t] depends only on x[t] and mask[t]
 * (kcu_lte.h: a fixed order per row), bitwise whatever the batch; dense, g
 * and u are cuBLAS values (batch-independent only within tolerance, backend.h
 * matmul), so the two paths agree within tolerance, not bitwise. Shapes that
 * do not fit or tensors not prepared give y = 0 (as matmul). */
static void kcu_lte_ffn(void *ctx, float *y, const float *x, const uint8_t *mask, int n,
                        const struct be_lte_ffn *p, float *scr_a, float *scr_b) {
    struct kcu_ctx *c = use(ctx);
    if (n <= 0)
        return;
    const int E = p->n_experts, S = p->expert_size;
    const int64_t dim = p->gate->ne[0];
    int64_t n_items = 0;
    size_t o_tok = 0, o_row = 0, o_ents = 0;
    uint8_t *d = NULL;
    if (lte_shapes_ok(p) && (int64_t)n * E <= INT_MAX)
        d = lte_upload_groups(c, mask, n, E, p->dense, &n_items, &o_tok, &o_row, &o_ents);
    if (!d || n_items > INT_MAX) {
        zero(c, y, sizeof(float) * (size_t)n * (size_t)(dim > 0 ? dim : 0));
        return;
    }
    const float *h = scr_b;
    if (p->dense) {
        kcu_matmul(c, scr_a, x, p->gate, n);
        kcu_matmul(c, scr_b, x, p->up, n);
        cu_ok(c, kcu_launch_glu(c->st, scr_a, scr_a, scr_b, (int64_t)n * E * S, p->act), "lte glu");
        h = scr_a;
    } else {
        cu_ok(c, kcu_launch_lte_gate_up(c->st, scr_b, x, p->gate->be_data, kcu_gemm_type(p->gate->type),
                                        p->up->be_data, kcu_gemm_type(p->up->type), dim, S,
                                        (const struct kcu_lte_item *)d, (int)n_items,
                                        (const int32_t *)(d + o_tok), p->act),
              "lte gate_up");
    }
    cu_ok(c, kcu_launch_lte_down(c->st, y, h, p->down->be_data, kcu_gemm_type(p->down->type), dim, S,
                                 (const int32_t *)(d + o_row), (const struct kcu_lte_ent *)(d + o_ents), n),
          "lte down");
}

/* ---------------------------------------------------------------- fork2 */

/* Makes the root's two shares and events if missing: 0, or a negative SS_E*
 * code (then the caller runs the tasks on the root). */
static int make_shares(struct kcu_ctx *c) {
    if (!c->have_events) {
        cudaEvent_t e[3];
        int k = 0;
        for (; k < 3; k++)
            if (cudaEventCreateWithFlags(&e[k], cudaEventDisableTiming) != cudaSuccess)
                break;
        if (k < 3) {
            while (k-- > 0)
                cudaEventDestroy(e[k]);
            (void)cudaGetLastError();
            return SS_ENODEVICE;
        }
        c->ev_fork = e[0], c->ev_join[0] = e[1], c->ev_join[1] = e[2];
        c->have_events = 1;
    }
    for (int j = 0; j < 2; j++) {
        if (c->share[j])
            continue;
        struct kcu_ctx *h = calloc(1, sizeof *h);
        if (!h)
            return SS_ENOMEM;
        h->dev = c->dev;
        h->root = c;
        if (ctx_stream_open(h) < 0) {
            free(h);
            return SS_ENODEVICE;
        }
        c->share[j] = h;
    }
    return 0;
}

/* fork2: task j issues its work on share j (own stream, cuBLAS handle +
 * workspace, device and host scratch), so the GPU may run the two at once:
 *
 *   root st:  ...prior work... [ev_fork]                 wait(join0) wait(join1) ...
 *   share 0:              wait(ev_fork) task 0 [join0] ---^
 *   share 1:              wait(ev_fork) task 1 [join1] --------------^
 *
 * The host issues task 0 then task 1 on this thread (kernel launches return
 * at once, so the GPU overlaps them); a host step inside a task (download,
 * get_rows' host dequantisation + upload, index uploads) uses that share's
 * own scratch and waits, if at all, for that share's stream only, which
 * holds the fork's prior work through ev_fork.
 * NOTE (overlap): the index arrays of RoPE, kv_store and attention go
 * through each context's pinned ring (pin_stage), whose copies return at
 * once, so issuing task 0 does not wait for its GPU work and task 1 follows
 * right away. What still waits: a download inside a task, a ring wrap (1
 * MiB of index data), growing a scratch, and get_rows (pageable: its rows
 * may be large); the engine's pair tasks have none of these in the steady
 * state.
 * After the join the root's stream is ordered after both tasks, so later
 * root work and downloads see their results; a share's first error is
 * passed to the root.
 * DETERMINISM: the tasks run the same kernels with the same launch shapes on
 * the same inputs as on the root; each kernel computes its rows in a fixed
 * order whatever else runs on the GPU, and every handle has its own
 * workspace of one size (KCU_BLAS_WS), so cuBLAS picks the same algorithm and
 * stays bitwise repeatable under concurrent streams. The results are bitwise
 * those of running the tasks one after the other on the root (the runner's
 * "fork2" case checks it on the GPU). If the shares cannot be made, or c is
 * itself a share (no nested forks), the tasks run one after the other on c. */
static void kcu_fork2(void *ctx, be_task_fn fn, void *a0, void *a1) {
    struct kcu_ctx *c = use(ctx);
    struct be self = {&kcu_ops, c};
    if (c->root || c->err || make_shares(c) < 0) {
        fn(&self, a0);
        fn(&self, a1);
        return;
    }
    void *arg[2] = {a0, a1};
    cu_ok(c, cudaEventRecord(c->ev_fork, c->st), "fork2 (record)");
    for (int j = 0; j < 2; j++)
        cu_ok(c, cudaStreamWaitEvent(c->share[j]->st, c->ev_fork, 0), "fork2 (wait)");
    for (int j = 0; j < 2; j++) {
        struct be h = {&kcu_ops, c->share[j]};
        fn(&h, arg[j]);
    }
    use(c); /* a task may have left another device current */
    for (int j = 0; j < 2; j++) {
        struct kcu_ctx *s = c->share[j];
        cu_ok(c, cudaEventRecord(c->ev_join[j], s->st), "fork2 (join record)");
        cu_ok(c, cudaStreamWaitEvent(c->st, c->ev_join[j], 0), "fork2 (join wait)");
        if (s->err && !c->err)
            c->err = s->err; /* already printed by the share */
        s->err = 0;
    }
}

static void kcu_copy2d(void *ctx, float *dst, int64_t ds, const float *src, int64_t ss, int n, int64_t w) {
    struct kcu_ctx *c = use(ctx);
    if (n > 0 && w > 0)
        cu_ok(c, cudaMemcpy2DAsync(dst, sizeof(float) * (size_t)ds, src, sizeof(float) * (size_t)ss,
                                   sizeof(float) * (size_t)w, (size_t)n, cudaMemcpyDeviceToDevice, c->st),
              "copy2d");
}

/* fp32 activations only (the GEMM operands are converted to the weight's
 * F16/BF16 for cuBLAS, see kcu_gemm_type: that is the F32 path here) */
static int kcu_set_act_precision(void *ctx, int prec) {
    (void)ctx;
    if (prec == BE_ACT_F32 || prec == BE_ACT_AUTO)
        return BE_ACT_F32;
    return prec == BE_ACT_INT8 || prec == BE_ACT_MIXED || prec == BE_ACT_BF16 ? SS_EUNSUPPORTED : SS_EINVAL;
}

const struct be_ops kcu_ops = {
    .name = "cuda",
    .init = kcu_init,
    .free = kcu_free,
    .alloc = kcu_alloc,
    .dealloc = kcu_dealloc,
    .upload = kcu_upload,
    .download = kcu_download,
    .weight_prepare = kcu_weight_prepare,
    .type_supported = kcu_type_supported,
    .matmul = kcu_matmul,
    .get_rows = kcu_get_rows,
    .rmsnorm = kcu_rmsnorm,
    .rope = kcu_rope,
    .kv_store = kcu_kv_store,
    .attention = kcu_attention,
    .glu = kcu_glu_op,
    .add = kcu_add_op,
    .scale = kcu_scale_op,
    .lte_ffn = kcu_lte_ffn,
    .fork2 = kcu_fork2, /* layer-parallel pairs: one stream per branch */
    .copy2d = kcu_copy2d,
    .merge_pairs = 1,   /* pairs as wider GEMMs (engine/forward_lp.c) */
    .set_act_precision = kcu_set_act_precision,
};

int kcu_ctx_error(const struct be *be) {
    if (!be || be->ops != &kcu_ops)
        return 0;
    const struct kcu_ctx *c = be->ctx;
    return c->err;
}

int kcu_ctx_set_attn_split(struct be *be, int on) {
    if (!be || be->ops != &kcu_ops)
        return SS_EINVAL;
    struct kcu_ctx *c = be->ctx;
    const int was = c->split;
    c->split = on != 0;
    return was;
}

size_t kcu_ctx_weight_bytes(const struct be *be) {
    if (!be || be->ops != &kcu_ops)
        return 0;
    const struct kcu_ctx *c = be->ctx;
    return c->weight_bytes;
}

/* ---------------------------------------------------------------- probe */

int kcu_probe(int dev, int *n_dev, char *why, size_t why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    *n_dev = 0;
    if (e != cudaSuccess) {
        const char *kind = e == cudaErrorInsufficientDriver ? "no CUDA driver"
                           : e == cudaErrorNoDevice         ? "no CUDA device"
                                                            : "CUDA runtime error";
        if (why && why_len)
            snprintf(why, why_len, "%s (cudaGetDeviceCount: error %d, %s)", kind, (int)e,
                     cudaGetErrorString(e));
        (void)cudaGetLastError();
        return SS_ENODEVICE;
    }
    if (n <= 0 || dev < 0 || dev >= n) {
        if (why && why_len)
            snprintf(why, why_len, "no CUDA device %d (%d found)", dev, n);
        return SS_ENODEVICE;
    }
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess) {
        if (why && why_len)
            snprintf(why, why_len, "%d CUDA device(s); device %d: %s (sm_%d%d, %.1f GiB)", n, dev,
                     prop.name, prop.major, prop.minor,
                     (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    } else if (why && why_len) {
        snprintf(why, why_len, "%d CUDA device(s)", n);
    }
    *n_dev = n;
    return 0;
}
