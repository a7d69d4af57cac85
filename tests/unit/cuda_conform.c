/* cuda_conform.c - conformance of the CUDA backend against the CPU backend:
 * every op of the backend table on both, on the same random inputs, with the
 * max abs / rel error per case and its tolerance. Needs a GPU: it is the
 * first thing tools/gpu_check.sh runs.
 *
 *   cuda_conform [--device N] [--seed S] [--self-test] [--bench-attention]
 *
 * --self-test runs every case with a second CPU backend in the GPU's place
 * (no device needed): every case must pass, which checks the runner itself
 * (its inputs, block tables and comparisons) on a machine without a GPU;
 * --self-test-int8 does the same with int8 activations in the stand-in's
 * matmul, which the GEMM tolerances must catch (the runner can fail).
 * --bench-attention runs no cases: it times decode attention at long
 * contexts with the split-K path and with the unsplit one (the benchmark step
 * of tools/gpu_check.sh; see bench_attention).
 * Links kernels/ only (CPU backend + CUDA backend; no libuv, MHD or check),
 * so tools/gpu_check.sh builds it with nvcc + cc + libc alone on a host that
 * has nothing but the CUDA toolkit. It opens the CUDA backend itself (it is
 * the check that the SLIMSERVE_CUDA_UNVERIFIED gate waits for).
 * Exit: 0 all cases pass, 1 a case failed, 77 no CUDA device (or CUDA not
 * compiled in): the meson test 'cuda_conform' then shows SKIP.
 *
 * Errors are measured as max |gpu - cpu| and max |gpu - cpu| / max |cpu| over
 * the case (relative to the output's scale, so near-zero outputs do not blow
 * up the ratio). Tolerances: bitwise (0) where both backends do the same IEEE
 * steps (get_rows, kv_store, add, scale, memory); the GEMMs by the precision
 * of the GPU operands (kcu_gemm_type: F32 1e-5, F16 2e-3, BF16 1e-2 of the
 * scale); libm-dependent ops (glu, rope, attention) a few ulp; lte_ffn by path
 * and type (lte_tol).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/backend.h"
#include "kerntest.h"
#if HAVE_CUDA
#include "kernels/cuda/kcu.h"
#endif

static struct be cpu, gpu;
static int n_fail, n_case, self_test;

/* ---------------------------------------------------------------- helpers */

/* n floats of host data copied into a new buffer of each backend */
static void *put(struct be *b, const void *h, size_t bytes) {
    void *d = be_alloc(b, bytes);
    if (!d) {
        fprintf(stderr, "cuda_conform: be_alloc(%s, %zu) failed\n", b->ops->name, bytes);
        exit(1);
    }
    if (h)
        be_upload(b, d, h, bytes);
    return d;
}
static void get(struct be *b, void *h, const void *d, size_t bytes) { be_download(b, h, d, bytes); }

/* Compares GPU output g with CPU output c (n floats); prints one line. */
static void check(const char *op, const char *what, const float *g, const float *c, size_t n, double tol) {
    double mabs = 0.0, scale = 0.0;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(g[i]) != isnan(c[i]))
            nan = 1;
        double d = fabs((double)g[i] - c[i]);
        if (d > mabs || d != d)
            mabs = d;
        if (fabs(c[i]) > scale)
            scale = fabs(c[i]);
    }
    double rel = scale > 0.0 ? mabs / scale : mabs;
    int ok = !nan && (tol == 0.0 ? memcmp(g, c, n * sizeof *g) == 0 : rel <= tol);
    n_case++;
    n_fail += !ok;
    printf("%-10s %-34s max_abs %.3e max_rel %.3e tol %.1e %s\n", op, what, mabs, rel, tol,
           ok ? "ok" : "FAIL");
}

static float *frand_buf(size_t n, float amp) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = amp * frnd();
    return p;
}

/* ---------------------------------------------------------------- memory */

static void case_memory(void) {
    enum { N = 4099 };
    float *h = frand_buf(N, 1.0f), back[N], zero[N] = {0};
    float *d = put(&gpu, NULL, sizeof back);
    get(&gpu, back, d, sizeof back);
    check("memory", "alloc is zeroed", back, zero, N, 0);
    be_upload(&gpu, d, h, sizeof back);
    get(&gpu, back, d, sizeof back);
    check("memory", "upload/download round trip", back, h, N, 0);
    be_dealloc(&gpu, d);
    free(h);
    int bad = 0;
    for (int t = 0; t < BE_TYPE_COUNT; t++)
        bad += be_type_supported(&gpu, t) != be_type_supported(&cpu, t);
    n_case++;
    n_fail += bad != 0;
    printf("%-10s %-34s %s\n", "types", "type_supported as the CPU's", bad ? "FAIL" : "ok");
    if (self_test) /* the CPU has int8 kernels: nothing to check here */
        return;
    int p8 = be_set_act_precision(&gpu, BE_ACT_INT8), pa = be_set_act_precision(&gpu, BE_ACT_AUTO);
    be_set_act_precision(&gpu, BE_ACT_F32);
    n_case++;
    n_fail += !(p8 == -7 && pa == BE_ACT_F32);
    printf("%-10s %-34s %s\n", "precision", "int8 refused, auto = f32", p8 == -7 && pa == BE_ACT_F32 ? "ok" : "FAIL");
}

/* ---------------------------------------------------------------- weights */

static double gemm_tol(int type) {
    return type == BE_F32 ? 1e-5 : type == BE_BF16 ? 1e-2 : 2e-3;
}

static void case_weights(int type) {
    const int64_t K = 512, R = 96;
    const char *tn = be_type_get(type)->name;
    char what[64];
    size_t rb = be_row_bytes(type, K);
    uint8_t *wdata = malloc(rb * (size_t)R);
    fill_weights(type, wdata, R, K);
    struct be_tensor wc = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = wdata};
    struct be_tensor wg = wc;
    if (be_weight_prepare(&cpu, &wc) < 0 || be_weight_prepare(&gpu, &wg) < 0) {
        printf("%-10s %-34s FAIL (weight_prepare)\n", "prepare", tn);
        n_fail++;
        free(wdata);
        return;
    }
    /* get_rows: ids inside, and outside (-1, R): rows of zeros */
    const int32_t ids[] = {0, 5, (int32_t)R - 1, -1, (int32_t)R, 17, 17};
    const int ni = 7;
    float *oc = put(&cpu, NULL, sizeof(float) * ni * K), *og = put(&gpu, NULL, sizeof(float) * ni * K);
    float *hc = malloc(sizeof(float) * ni * K), *hg = malloc(sizeof(float) * ni * K);
    be_get_rows(&cpu, oc, &wc, ids, ni);
    be_get_rows(&gpu, og, &wg, ids, ni);
    get(&cpu, hc, oc, sizeof(float) * ni * K);
    get(&gpu, hg, og, sizeof(float) * ni * K);
    snprintf(what, sizeof what, "%s K=%lld", tn, (long long)K);
    check("get_rows", what, hg, hc, (size_t)ni * K, 0);
    be_dealloc(&cpu, oc);
    be_dealloc(&gpu, og);
    free(hc);
    free(hg);

    /* matmul at several batch sizes; row 0 of each against n = 1 on the GPU */
    static const int ns[] = {1, 7, 64};
    float *row0 = malloc(sizeof(float) * R), *x = frand_buf((size_t)64 * K, 1.0f);
    for (int k = 0; k < 3; k++) {
        const int n = ns[k];
        float *xc = put(&cpu, x, sizeof(float) * n * K), *xg = put(&gpu, x, sizeof(float) * n * K);
        float *yc = put(&cpu, NULL, sizeof(float) * n * R), *yg = put(&gpu, NULL, sizeof(float) * n * R);
        float *hyc = malloc(sizeof(float) * n * R), *hyg = malloc(sizeof(float) * n * R);
        be_matmul(&cpu, yc, xc, &wc, n);
        be_matmul(&gpu, yg, xg, &wg, n);
        get(&cpu, hyc, yc, sizeof(float) * n * R);
        get(&gpu, hyg, yg, sizeof(float) * n * R);
        snprintf(what, sizeof what, "%s K=%lld R=%lld n=%d", tn, (long long)K, (long long)R, n);
        check("matmul", what, hyg, hyc, (size_t)n * R, gemm_tol(type));
        if (n == 1) {
            memcpy(row0, hyg, sizeof(float) * R);
        } else {
            snprintf(what, sizeof what, "%s row 0, n=%d vs n=1 (gpu)", tn, n);
            check("batch-inv", what, hyg, row0, (size_t)R, 1e-5);
        }
        be_dealloc(&cpu, xc), be_dealloc(&gpu, xg), be_dealloc(&cpu, yc), be_dealloc(&gpu, yg);
        free(hyc);
        free(hyg);
    }
    free(row0);
    free(x);
    free(wdata);
}

/* ---------------------------------------------------------------- row ops */

/* runs op on both backends over copies of the same inputs, compares out */
static void case_rows(void) {
    const int n = 5, dim = 640;
    const size_t N = (size_t)n * dim;
    float *x = frand_buf(N, 3.0f), *w = frand_buf(dim, 1.0f), *hc = malloc(N * 4), *hg = malloc(N * 4);
    float *xc = put(&cpu, x, N * 4), *xg = put(&gpu, x, N * 4), *wc = put(&cpu, w, dim * 4), *wg = put(&gpu, w, dim * 4);
    float *oc = put(&cpu, NULL, N * 4), *og = put(&gpu, NULL, N * 4);
    for (int withw = 0; withw < 2; withw++) {
        be_rmsnorm(&cpu, oc, xc, withw ? wc : NULL, n, dim, 1e-6f);
        be_rmsnorm(&gpu, og, xg, withw ? wg : NULL, n, dim, 1e-6f);
        get(&cpu, hc, oc, N * 4);
        get(&gpu, hg, og, N * 4);
        check("rmsnorm", withw ? "5 x 640, weight" : "5 x 640, no weight", hg, hc, N, 1e-6);
    }
    for (int act = 0; act < 2; act++) { /* glu(x, w-broadcast-free): gate = x, up = x reversed */
        be_upload(&cpu, oc, x, N * 4);
        be_upload(&gpu, og, x, N * 4);
        be_glu(&cpu, oc, oc, xc, (int64_t)N, act); /* out aliases gate, as the engine does */
        be_glu(&gpu, og, og, xg, (int64_t)N, act);
        get(&cpu, hc, oc, N * 4);
        get(&gpu, hg, og, N * 4);
        check("glu", act ? "gelu-tanh, out = gate" : "silu, out = gate", hg, hc, N, 1e-6);
    }
    be_upload(&cpu, oc, x, N * 4);
    be_upload(&gpu, og, x, N * 4);
    be_add(&cpu, oc, xc, (int64_t)N);
    be_add(&gpu, og, xg, (int64_t)N);
    be_scale(&cpu, oc, 0.37f, (int64_t)N);
    be_scale(&gpu, og, 0.37f, (int64_t)N);
    get(&cpu, hc, oc, N * 4);
    get(&gpu, hg, og, N * 4);
    check("add+scale", "3200 elements", hg, hc, N, 0);
    /* copy2d: columns [100, 300) of x into the rows of a 200-wide buffer,
     * then that into columns [440, 640) of the output */
    be_upload(&cpu, oc, x, N * 4);
    be_upload(&gpu, og, x, N * 4);
    float *tc = put(&cpu, NULL, (size_t)n * 200 * 4), *tg = put(&gpu, NULL, (size_t)n * 200 * 4);
    be_copy2d(&cpu, tc, 200, xc + 100, dim, n, 200);
    be_copy2d(&gpu, tg, 200, xg + 100, dim, n, 200);
    be_scale(&cpu, tc, -2.0f, (int64_t)n * 200);
    be_scale(&gpu, tg, -2.0f, (int64_t)n * 200);
    be_copy2d(&cpu, oc + 440, dim, tc, 200, n, 200);
    be_copy2d(&gpu, og + 440, dim, tg, 200, n, 200);
    get(&cpu, hc, oc, N * 4);
    get(&gpu, hg, og, N * 4);
    check("copy2d", "column blocks out and back", hg, hc, N, 0);
    be_dealloc(&cpu, tc), be_dealloc(&gpu, tg);
    be_dealloc(&cpu, xc), be_dealloc(&gpu, xg), be_dealloc(&cpu, wc), be_dealloc(&gpu, wg);
    be_dealloc(&cpu, oc), be_dealloc(&gpu, og);
    free(x), free(w), free(hc), free(hg);
}

static void case_rope(void) {
    const int n = 6, H = 4, D = 128;
    const size_t N = (size_t)n * H * D;
    const int32_t pos[] = {0, 1, 17, 511, 4096, 100000};
    float *x = frand_buf(N, 2.0f), *ff = malloc(64 * 4), *hc = malloc(N * 4), *hg = malloc(N * 4);
    for (int i = 0; i < 64; i++)
        ff[i] = 1.0f + (float)(i % 7);
    float *ffc = put(&cpu, ff, 64 * 4), *ffg = put(&gpu, ff, 64 * 4);
    float *xc = put(&cpu, NULL, N * 4), *xg = put(&gpu, NULL, N * 4);
    for (int v = 0; v < 6; v++) {
        struct be_rope_params p = {.n_heads = H, .head_dim = D, .n_rot = v >= 4 ? 64 : D,
                                   .theta_base = v & 1 ? 1000000.0f : 10000.0f,
                                   .freq_scale = v == 3 ? 0.25f : 1.0f, .neox = v & 1};
        be_upload(&cpu, xc, x, N * 4);
        be_upload(&gpu, xg, x, N * 4);
        p.freq_factors = v == 2 ? ffc : NULL;
        be_rope(&cpu, xc, pos, n, &p);
        p.freq_factors = v == 2 ? ffg : NULL;
        be_rope(&gpu, xg, pos, n, &p);
        get(&cpu, hc, xc, N * 4);
        get(&gpu, hg, xg, N * 4);
        char what[64];
        snprintf(what, sizeof what, "%s n_rot=%d%s%s", p.neox ? "neox" : "adjacent", p.n_rot,
                 v == 2 ? " freq_factors" : "", v == 3 ? " freq_scale" : "");
        check("rope", what, hg, hc, N, 1e-6);
    }
    be_dealloc(&cpu, ffc), be_dealloc(&gpu, ffg), be_dealloc(&cpu, xc), be_dealloc(&gpu, xg);
    free(x), free(ff), free(hc), free(hg);
}

/* ---------------------------------------------------------------- LTE FFN */

/* lte_ffn tolerance by path: grouped reads fp32 activations and the device
 * weights (quantised types as F16) in a fixed order; dense runs gate/up
 * through the GEMM (operands F16/BF16), then glu and the down product. */
static double lte_tol(int type, int dense) {
    if (dense)
        return type == BE_F32 ? 2e-5 : type == BE_BF16 ? 2e-2 : 5e-3;
    return type == BE_F32 || type == BE_F16 || type == BE_BF16 ? 2e-5 : 3e-3;
}

/* gate/up of `type` (down too where its blocks fit S = 32, else Q8_0, as an
 * LTE file needs), dim 512, 8 experts; masks: row 1 all, row 2 none, the
 * rest random, and whole batches with none / all. Both paths at n = 1, 7,
 * 64 against the CPU backend; the grouped path's row 0 (a random row) and
 * row 5 at n = 64 against n = 1 on the GPU, bitwise (its order is fixed per
 * row); a row without experts is +0 on the GPU. */
static void case_lte(int type) {
    const int E = 8, S = 32, dim = 512, dtype = be_type_get(type)->blck > S ? BE_Q8_0 : type, NMAX = 64;
    const char *tn = be_type_get(type)->name;
    const size_t rb = be_row_bytes(type, dim), rbd = be_row_bytes(dtype, S);
    uint8_t *g = malloc(rb * E * S), *u = malloc(rb * E * S), *d = malloc(rbd * E * dim), *mask = malloc(NMAX * E);
    fill_weights(type, g, E * S, dim);
    fill_weights(type, u, E * S, dim);
    fill_weights(dtype, d, E * dim, S);
    struct be_tensor tg = {.type = type, .ne = {dim, E * S, 1, 1}, .nb1 = rb, .data = g}, tu = tg;
    tu.data = u;
    struct be_tensor td = {.type = dtype, .ne = {S, E * dim, 1, 1}, .nb1 = rbd, .data = d};
    struct be_tensor gg = tg, gu = tu, gd = td;
    if (be_weight_prepare(&cpu, &tg) < 0 || be_weight_prepare(&cpu, &tu) < 0 || be_weight_prepare(&cpu, &td) < 0 ||
        be_weight_prepare(&gpu, &gg) < 0 || be_weight_prepare(&gpu, &gu) < 0 || be_weight_prepare(&gpu, &gd) < 0) {
        printf("%-10s %-34s FAIL (weight_prepare)\n", "lte_ffn", tn);
        n_fail++;
        free(g), free(u), free(d), free(mask);
        return;
    }
    const size_t NX = (size_t)NMAX * dim, NS = (size_t)NMAX * E * S;
    float *x = frand_buf(NX, 0.2f), *hc = malloc(NX * 4), *hg = malloc(NX * 4), *row1 = malloc(2 * (size_t)dim * 4);
    float *xc = put(&cpu, x, NX * 4), *xg = put(&gpu, x, NX * 4), *yc = put(&cpu, NULL, NX * 4);
    float *yg = put(&gpu, NULL, NX * 4), *ac = put(&cpu, NULL, NS * 4), *bc = put(&cpu, NULL, NS * 4);
    float *ag = put(&gpu, NULL, NS * 4), *bg = put(&gpu, NULL, NS * 4);
    struct be_lte_ffn pc = {.gate = &tg, .up = &tu, .down = &td, .n_experts = E, .expert_size = S, .act = type % 2};
    struct be_lte_ffn pg = pc;
    pg.gate = &gg, pg.up = &gu, pg.down = &gd;
    static const int ns[] = {1, 7, 64};
    char what[64];
    for (int mode = 0; mode < 3; mode++) { /* 0: random rows, 1: no expert, 2: every expert */
        for (int i = 0; i < NMAX * E; i++)
            mask[i] = mode == 1 ? 0 : mode == 2 ? 1 : i < E || i >= 3 * E ? rnd() % 2 : i < 2 * E;
        for (int k = 0; k < 3; k++)
            for (int dense = 0; dense < 2; dense++) {
                const int n = ns[k];
                pc.dense = pg.dense = dense;
                be_lte_ffn(&cpu, yc, xc, mask, n, &pc, ac, bc);
                be_lte_ffn(&gpu, yg, xg, mask, n, &pg, ag, bg);
                get(&cpu, hc, yc, (size_t)n * dim * 4);
                get(&gpu, hg, yg, (size_t)n * dim * 4);
                snprintf(what, sizeof what, "%s %s n=%d %s", tn, dense ? "dense" : "grouped", n,
                         mode == 1 ? "none on" : mode == 2 ? "all on" : "mixed");
                check("lte_ffn", what, hg, hc, (size_t)n * dim, lte_tol(type, dense));
                if (dense || mode == 1)
                    continue;
                if (n == 1) {
                    memcpy(row1, hg, (size_t)dim * 4);
                    be_lte_ffn(&gpu, yg, xg + (size_t)5 * dim, mask + (size_t)5 * E, 1, &pg, ag, bg);
                    get(&gpu, row1 + dim, yg, (size_t)dim * 4);
                } else if (n == 64) {
                    snprintf(what, sizeof what, "%s grouped rows 0, 5 n=64 vs n=1", tn);
                    check("batch-inv", what, hg, row1, (size_t)dim, 0);
                    check("batch-inv", what, hg + (size_t)5 * dim, row1 + dim, (size_t)dim, 0);
                }
                if (mode == 0 && n > 2) { /* row 2 has no expert on: +0 */
                    int plus0 = 1;
                    for (int i = 0; i < dim; i++)
                        plus0 &= hg[2 * dim + i] == 0.0f && !signbit(hg[2 * dim + i]);
                    n_case++;
                    n_fail += !plus0;
                    printf("%-10s %-34s %s\n", "lte_ffn", "a row without experts is +0", plus0 ? "ok" : "FAIL");
                }
            }
    }
    be_dealloc(&cpu, xc), be_dealloc(&gpu, xg), be_dealloc(&cpu, yc), be_dealloc(&gpu, yg);
    be_dealloc(&cpu, ac), be_dealloc(&cpu, bc), be_dealloc(&gpu, ag), be_dealloc(&gpu, bg);
    free(x), free(hc), free(hg), free(row1), free(g), free(u), free(d), free(mask);
}

/* ---------------------------------------------------------------- KV + attention */

struct att_case {
    const char *name;
    int H, KVH, D, window;
    float softcap;
    int kv_type;
};

/* A ragged batch of sequences (n_past cached entries, n_tok rows this step);
 * block tables use shuffled physical pages. */
#define AT_MAXSEQ 8
struct att_batch {
    const char *name;
    int n;
    int past[AT_MAXSEQ], ntok[AT_MAXSEQ];
};
/* short: prefill from 0, a decode over 19 pages, a prefill chunk after 50
 * cached entries, a long decode (2000 cached: 126 pages), a 1-token prefill.
 * Rows of more than KCU_SPLIT_KEYS (256) keys take the CUDA split-K path. */
static const struct att_batch at_short = {"", 5, {0, 300, 50, 2000, 0}, {37, 1, 20, 1, 1}};
/* long: decodes at 4000, 9000 and 20000 cached entries (250 to 1250 pages:
 * 16 to 64 partitions, the last past the partition cap so its partitions
 * grow), a 16-row prefill chunk after 2500 entries (every row split) next to
 * short prefills and decodes just past the split threshold. */
static const struct att_batch at_long = {
    "long ", 8, {0, 4000, 50, 9000, 2500, 20000, 700, 300}, {37, 1, 20, 1, 16, 1, 1, 3}};

/* Each sequence of the batch alone on the GPU: its rows bitwise as in the
 * batch (ref = the batch's output, N floats; qg the GPU's q). */
static void check_alone(const struct att_batch *B, const struct be_attn_seq *seqs, const struct be_kv_layer *kg,
                        const float *qg, const float *ref, size_t N, int qd, const struct be_attn_params *p,
                        const char *name) {
    float *o = put(&gpu, NULL, N * 4), *h = malloc(N * 4), *r = malloc(N * 4);
    for (int s = 0; s < B->n; s++) {
        be_attention(&gpu, o, qg, kg, &seqs[s], 1, p);
        get(&gpu, h, o, N * 4);
        const size_t r0 = (size_t)seqs[s].tok0 * qd, nr = (size_t)seqs[s].n_tok * qd;
        memcpy(r + r0, h + r0, nr * 4);
    }
    const size_t n_tok_f = (size_t)(seqs[B->n - 1].tok0 + seqs[B->n - 1].n_tok) * qd;
    char what[160];
    snprintf(what, sizeof what, "%s, each seq alone", name);
    check("batch-inv", what, r, ref, n_tok_f, 0);
    be_dealloc(&gpu, o);
    free(h), free(r);
}

/* The GPU's split-K output against its unsplit path (kcu_ctx_set_attn_split),
 * same inputs: the same sums grouped by partition (ref = split output). */
static void check_unsplit(const struct att_batch *B, const struct be_attn_seq *seqs, const struct be_kv_layer *kg,
                          const float *qg, const float *ref, size_t N, const struct be_attn_params *p,
                          const char *name) {
#if HAVE_CUDA
    if (self_test)
        return; /* the CPU in the GPU's place has one path */
    float *o = put(&gpu, NULL, N * 4), *h = malloc(N * 4);
    kcu_ctx_set_attn_split(&gpu, 0);
    be_attention(&gpu, o, qg, kg, seqs, B->n, p);
    kcu_ctx_set_attn_split(&gpu, 1);
    get(&gpu, h, o, N * 4);
    char what[160];
    snprintf(what, sizeof what, "%s, split vs unsplit (gpu)", name);
    const size_t n_tok_f = (size_t)(seqs[B->n - 1].tok0 + seqs[B->n - 1].n_tok) * p->n_heads * p->head_dim;
    check("split-k", what, h, ref, n_tok_f, 2e-5);
    be_dealloc(&gpu, o);
    free(h);
#else
    (void)B, (void)seqs, (void)kg, (void)qg, (void)ref, (void)N, (void)p, (void)name;
#endif
}

static void case_attention(const struct att_batch *B, const struct att_case *ac, int in_place) {
    const int kvd = ac->KVH * ac->D, qd = ac->H * ac->D;
    int n_pages = 0, n_tok = 0, np[AT_MAXSEQ];
    for (int s = 0; s < B->n; s++) {
        np[s] = (B->past[s] + B->ntok[s] + BE_PAGE_SLOTS - 1) / BE_PAGE_SLOTS;
        n_pages += np[s];
        n_tok += B->ntok[s];
    }
    int32_t *perm = malloc(sizeof(int32_t) * n_pages);
    for (int i = 0; i < n_pages; i++)
        perm[i] = i;
    for (int i = n_pages - 1; i > 0; i--) {
        int j = (int)(rnd() % (uint32_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    /* fill every cached position (past + this step) with kv_store, slots from the tables */
    struct be_attn_seq seqs[AT_MAXSEQ];
    const size_t es = ac->kv_type == BE_F16 ? 2 : 4, cache_b = (size_t)n_pages * BE_PAGE_SLOTS * kvd * es;
    struct be_kv_layer kc = {.k = put(&cpu, NULL, cache_b), .v = put(&cpu, NULL, cache_b), .kv_type = ac->kv_type};
    struct be_kv_layer kg = {.k = put(&gpu, NULL, cache_b), .v = put(&gpu, NULL, cache_b), .kv_type = ac->kv_type};
    int pg = 0, tok = 0;
    for (int s = 0; s < B->n; s++) {
        const int total = B->past[s] + B->ntok[s];
        int32_t *slots = malloc(sizeof(int32_t) * total);
        for (int P = 0; P < total; P++)
            slots[P] = perm[pg + P / BE_PAGE_SLOTS] * BE_PAGE_SLOTS + P % BE_PAGE_SLOTS;
        if (s == 0)
            slots[3] = -1; /* a skipped row: the slot keeps what it had (zeros) on both */
        float *k = frand_buf((size_t)total * kvd, 1.0f), *v = frand_buf((size_t)total * kvd, 1.0f);
        float *k1 = put(&cpu, k, (size_t)total * kvd * 4), *v1 = put(&cpu, v, (size_t)total * kvd * 4);
        float *k2 = put(&gpu, k, (size_t)total * kvd * 4), *v2 = put(&gpu, v, (size_t)total * kvd * 4);
        be_kv_store(&cpu, &kc, k1, v1, slots, total, kvd);
        be_kv_store(&gpu, &kg, k2, v2, slots, total, kvd);
        be_dealloc(&cpu, k1), be_dealloc(&cpu, v1), be_dealloc(&gpu, k2), be_dealloc(&gpu, v2);
        free(k), free(v), free(slots);
        seqs[s] = (struct be_attn_seq){.tok0 = tok, .n_tok = B->ntok[s], .n_past = B->past[s], .pages = perm + pg};
        pg += np[s];
        tok += B->ntok[s];
    }
    char what[96];
    if (!in_place) { /* the caches, bitwise (the kv_store check) */
        uint8_t *c1 = malloc(cache_b), *c2 = malloc(cache_b);
        get(&cpu, c1, kc.k, cache_b);
        get(&gpu, c2, kg.k, cache_b);
        int same = memcmp(c1, c2, cache_b) == 0;
        get(&cpu, c1, kc.v, cache_b);
        get(&gpu, c2, kg.v, cache_b);
        same = same && memcmp(c1, c2, cache_b) == 0;
        n_case++;
        n_fail += !same;
        snprintf(what, sizeof what, "%s%s cache, a skipped slot", B->name, ac->kv_type == BE_F16 ? "f16" : "f32");
        printf("%-10s %-34s %s\n", "kv_store", what, same ? "ok" : "FAIL");
        free(c1), free(c2);
    }
    /* rows past the batch's tokens stay as they were: one spare row */
    const size_t N = (size_t)(n_tok + 1) * qd;
    float *q = frand_buf(N, 2.0f), *hc = malloc(N * 4), *hg = malloc(N * 4);
    float *qc = put(&cpu, q, N * 4), *qg = put(&gpu, q, N * 4);
    float *oc = in_place ? qc : put(&cpu, q, N * 4), *og = in_place ? qg : put(&gpu, q, N * 4);
    struct be_attn_params p = {.n_heads = ac->H, .n_kv_heads = ac->KVH, .head_dim = ac->D,
                               .scale = 1.0f / sqrtf((float)ac->D), .window = ac->window,
                               .softcap = ac->softcap};
    be_attention(&cpu, oc, qc, &kc, seqs, B->n, &p);
    be_attention(&gpu, og, qg, &kg, seqs, B->n, &p);
    get(&cpu, hc, oc, N * 4);
    get(&gpu, hg, og, N * 4);
    snprintf(what, sizeof what, "%s%s%s", B->name, ac->name, in_place ? " out=q" : "");
    check("attention", what, hg, hc, N, 2e-5);
    if (!in_place) { /* q is intact: the GPU's own consistency */
        check_alone(B, seqs, &kg, qg, hg, N, qd, &p, what);
        check_unsplit(B, seqs, &kg, qg, hg, N, &p, what);
    }
    be_dealloc(&cpu, kc.k), be_dealloc(&cpu, kc.v), be_dealloc(&gpu, kg.k), be_dealloc(&gpu, kg.v);
    be_dealloc(&cpu, qc), be_dealloc(&gpu, qg);
    if (!in_place)
        be_dealloc(&cpu, oc), be_dealloc(&gpu, og);
    free(q), free(hc), free(hg), free(perm);
}

/* ---------------------------------------------------------------- benchmark */

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* ms per attention call on b (one warm-up call; each timed call includes the
 * host packing and the upload of its index arrays, as in the server) */
static double time_attention(struct be *b, float *o, const float *q, const struct be_kv_layer *kv,
                             const struct be_attn_seq *seqs, int n, const struct be_attn_params *p, int iters) {
    float sink;
    be_attention(b, o, q, kv, seqs, n, p);
    get(b, &sink, o, sizeof sink);
    const double t0 = now_ms();
    for (int i = 0; i < iters; i++)
        be_attention(b, o, q, kv, seqs, n, p);
    get(b, &sink, o, sizeof sink);
    return (now_ms() - t0) / iters;
}

/* --bench-attention: decode attention (one row per sequence) over long
 * contexts on the GPU backend, split-K against the unsplit path
 * (kcu_ctx_set_attn_split), Llama-3-8B's shape (32 query heads, 8 KV heads,
 * head_dim 128, F16 cache). One line per batch:
 *   bench-attn decode B=.. ctx=..: split-K X ms (G GB/s of KV), unsplit Y ms, Z.ZZx
 * With --self-test (the CPU in the GPU's place) contexts are 8x shorter and
 * there is no unsplit switch: it checks the runner only. */
static int bench_attention(void) {
    static const int cfg[][2] = {{1, 32768}, {16, 8192}, {64, 4096}}; /* batch, context */
    const int H = 32, KVH = 8, D = 128, kvd = KVH * D, iters = self_test ? 1 : 20;
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        const int B = cfg[c][0], ctx = self_test ? cfg[c][1] / 8 : cfg[c][1];
        const int pps = (ctx + BE_PAGE_SLOTS - 1) / BE_PAGE_SLOTS, n_slots = B * pps * BE_PAGE_SLOTS;
        const size_t cache_b = (size_t)n_slots * kvd * 2;
        uint16_t *hk = malloc(cache_b);
        int32_t *pages = malloc(sizeof(int32_t) * B * pps);
        struct be_attn_seq *seqs = malloc(sizeof *seqs * B);
        for (size_t i = 0; i < (size_t)n_slots * kvd; i++) /* halves in about [-1, 1] */
            hk[i] = (uint16_t)((rnd() & 0x83ff) | ((10 + rnd() % 5) << 10));
        for (int i = 0; i < B * pps; i++)
            pages[i] = i;
        for (int s = 0; s < B; s++)
            seqs[s] = (struct be_attn_seq){.tok0 = s, .n_tok = 1, .n_past = ctx - 1, .pages = pages + s * pps};
        struct be_kv_layer kv = {.k = put(&gpu, hk, cache_b), .v = put(&gpu, hk, cache_b), .kv_type = BE_F16};
        float *hq = frand_buf((size_t)B * H * D, 1.0f), *q = put(&gpu, hq, sizeof(float) * B * H * D),
              *o = put(&gpu, NULL, sizeof(float) * B * H * D);
        struct be_attn_params p = {.n_heads = H, .n_kv_heads = KVH, .head_dim = D,
                                   .scale = 1.0f / sqrtf((float)D)};
        const double ms = time_attention(&gpu, o, q, &kv, seqs, B, &p, iters);
        const double gbs = 2.0 * B * (double)ctx * kvd * 2 / (ms * 1e6); /* K and V, 2 bytes each */
        printf("bench-attn decode B=%d ctx=%d: split-K %.3f ms (%.1f GB/s of KV)", B, ctx, ms, gbs);
#if HAVE_CUDA
        if (!self_test) {
            kcu_ctx_set_attn_split(&gpu, 0);
            const double mu = time_attention(&gpu, o, q, &kv, seqs, B, &p, iters);
            kcu_ctx_set_attn_split(&gpu, 1);
            printf(", unsplit %.3f ms, %.2fx", mu, mu / ms);
        }
#endif
        printf("%s\n", self_test ? ", unsplit n/a (cpu in the GPU's place)" : "");
        be_dealloc(&gpu, kv.k), be_dealloc(&gpu, kv.v), be_dealloc(&gpu, q), be_dealloc(&gpu, o);
        free(hk), free(pages), free(seqs), free(hq);
    }
#if HAVE_CUDA
    if (kcu_ctx_error(&gpu)) {
        printf("bench-attn: FAIL: CUDA error %d\n", kcu_ctx_error(&gpu));
        return 1;
    }
#endif
    return 0;
}

/* ---------------------------------------------------------------- index ring */

/* 80 kv_store calls of 4096 slots each (16 KiB of index data per call, 1.3
 * MiB in all, no download between them: the CUDA backend's 1 MiB pinned
 * index ring wraps), each call skipping a random half of its rows and
 * mapping the rest through its own permutation, so a slot's final value
 * comes from the last call that wrote it: an index array overwritten before
 * its copy ran would show. Bitwise against the CPU. */
static void case_index_ring(void) {
    enum { NS = 4096, KVD = 8, CALLS = 80 };
    const size_t cache_b = sizeof(float) * NS * KVD;
    float *k = frand_buf((size_t)NS * KVD, 1.0f), *v = frand_buf((size_t)NS * KVD, 1.0f);
    float *kc = put(&cpu, k, cache_b), *vc = put(&cpu, v, cache_b), *kg = put(&gpu, k, cache_b), *vg = put(&gpu, v, cache_b);
    struct be_kv_layer lc = {.k = put(&cpu, NULL, cache_b), .v = put(&cpu, NULL, cache_b), .kv_type = BE_F32};
    struct be_kv_layer lg = {.k = put(&gpu, NULL, cache_b), .v = put(&gpu, NULL, cache_b), .kv_type = BE_F32};
    int32_t *slots = malloc(sizeof(int32_t) * NS);
    for (int c = 0; c < CALLS; c++) {
        for (int i = 0; i < NS; i++)
            slots[i] = i;
        for (int i = NS - 1; i > 0; i--) {
            int j = (int)(rnd() % (uint32_t)(i + 1)), t = slots[i];
            slots[i] = slots[j];
            slots[j] = t;
        }
        for (int i = 0; i < NS; i++)
            if (rnd() & 1)
                slots[i] = -1;
        be_kv_store(&cpu, &lc, kc, vc, slots, NS, KVD);
        be_kv_store(&gpu, &lg, kg, vg, slots, NS, KVD);
    }
    float *hc = malloc(2 * cache_b), *hg = malloc(2 * cache_b);
    get(&cpu, hc, lc.k, cache_b);
    get(&cpu, hc + NS * KVD, lc.v, cache_b);
    get(&gpu, hg, lg.k, cache_b);
    get(&gpu, hg + NS * KVD, lg.v, cache_b);
    check("kv_store", "80 calls, 1.3 MiB of slots", hg, hc, (size_t)2 * NS * KVD, 0);
    be_dealloc(&cpu, kc), be_dealloc(&cpu, vc), be_dealloc(&gpu, kg), be_dealloc(&gpu, vg);
    be_dealloc(&cpu, lc.k), be_dealloc(&cpu, lc.v), be_dealloc(&gpu, lg.k), be_dealloc(&gpu, lg.v);
    free(k), free(v), free(slots), free(hc), free(hg);
}

/* ---------------------------------------------------------------- fork2 */

/* One branch of a layer pair as the engine runs it (engine/forward_lp.c),
 * with every kind of step a task may hold: a be_alloc/be_dealloc of its own,
 * get_rows from a host-only view (host dequantisation + upload), rmsnorm,
 * GEMMs, RoPE and kv_store (host index uploads), a download into host
 * memory in the middle, attention, GLU. */
enum { FK_DIM = 256, FK_H = 4, FK_KVH = 2, FK_D = 64, FK_N = 13, FK_PAGES = 3, FK_PEEK = 96 };
struct fk_task {
    const float *x, *nw;                             /* shared input [FK_N][FK_DIM], norm weight */
    const struct be_tensor *emb, *wq, *wk, *wv, *wo; /* this branch's weights (emb: host view) */
    const int32_t *ids, *pos, *slots;                /* host */
    const struct be_attn_seq *seqs;
    struct be_kv_layer kv;  /* this branch's cache (zeroed) */
    float *q, *k, *v, *xb;  /* this branch's buffers */
    float peek[FK_PEEK];    /* host: q after RoPE, downloaded inside the task */
};

static void fk_run(struct be *b, void *arg) {
    struct fk_task *t = arg;
    const int64_t nd = (int64_t)FK_N * FK_DIM;
    float *e = be_alloc(b, sizeof(float) * (size_t)nd);
    if (!e)
        return; /* the outputs stay zero: the comparison fails */
    be_get_rows(b, e, t->emb, t->ids, FK_N);
    be_add(b, e, t->x, nd);
    be_rmsnorm(b, t->xb, e, t->nw, FK_N, FK_DIM, 1e-6f);
    be_matmul(b, t->q, t->xb, t->wq, FK_N);
    be_matmul(b, t->k, t->xb, t->wk, FK_N);
    be_matmul(b, t->v, t->xb, t->wv, FK_N);
    struct be_rope_params rp = {.n_heads = FK_H, .head_dim = FK_D, .n_rot = FK_D, .theta_base = 10000.0f,
                                .freq_scale = 1.0f, .neox = 1};
    be_rope(b, t->q, t->pos, FK_N, &rp);
    rp.n_heads = FK_KVH;
    be_rope(b, t->k, t->pos, FK_N, &rp);
    be_download(b, t->peek, t->q, sizeof t->peek);
    be_kv_store(b, &t->kv, t->k, t->v, t->slots, FK_N, FK_KVH * FK_D);
    struct be_attn_params ap = {.n_heads = FK_H, .n_kv_heads = FK_KVH, .head_dim = FK_D,
                                .scale = 0.125f, .window = 0, .softcap = 0.0f};
    be_attention(b, t->q, t->q, &t->kv, t->seqs, 2, &ap);
    be_matmul(b, t->xb, t->q, t->wo, FK_N);
    be_glu(b, t->xb, t->xb, e, nd, 0);
    be_dealloc(b, e);
}

/* the branch's buffers and cache on b, zeroed */
static void fk_alloc(struct be *b, struct fk_task *t) {
    const size_t cache = sizeof(float) * FK_PAGES * BE_PAGE_SLOTS * FK_KVH * FK_D;
    t->kv = (struct be_kv_layer){.k = put(b, NULL, cache), .v = put(b, NULL, cache), .kv_type = BE_F32};
    t->q = put(b, NULL, sizeof(float) * FK_N * FK_H * FK_D);
    t->k = put(b, NULL, sizeof(float) * FK_N * FK_KVH * FK_D);
    t->v = put(b, NULL, sizeof(float) * FK_N * FK_KVH * FK_D);
    t->xb = put(b, NULL, sizeof(float) * FK_N * FK_DIM);
}

static void fk_free(struct be *b, struct fk_task *t) {
    be_dealloc(b, t->kv.k), be_dealloc(b, t->kv.v), be_dealloc(b, t->q), be_dealloc(b, t->k);
    be_dealloc(b, t->v), be_dealloc(b, t->xb);
}

/* what one run of the pair leaves: x + y_a + y_b, each branch's output,
 * its cache and its peek (host copies) */
struct fk_result {
    float x[FK_N * FK_DIM], y[2][FK_N * FK_DIM], peek[2][FK_PEEK];
    float kc[2][FK_PAGES * BE_PAGE_SLOTS * FK_KVH * FK_D];
};

/* Runs the pair on b (fork2 through be_fork2, else one task after the other
 * on b itself), then x += y_a; x += y_b on b, as forward_lp.c does. */
static void fk_pair(struct be *b, int fork, const float *hx, const float *nw, struct be_tensor w[2][5],
                    const int32_t *ids, const int32_t *pos, const int32_t *slots,
                    const struct be_attn_seq *seqs, struct fk_result *r) {
    float *x = put(b, hx, sizeof r->x);
    struct fk_task t[2];
    for (int j = 0; j < 2; j++) {
        t[j] = (struct fk_task){.x = x, .nw = nw, .emb = &w[j][0], .wq = &w[j][1], .wk = &w[j][2],
                                .wv = &w[j][3], .wo = &w[j][4], .ids = ids + j * FK_N, .pos = pos,
                                .slots = slots, .seqs = seqs};
        fk_alloc(b, &t[j]);
    }
    if (fork) {
        be_fork2(b, fk_run, &t[0], &t[1]);
    } else {
        fk_run(b, &t[0]);
        fk_run(b, &t[1]);
    }
    for (int j = 0; j < 2; j++)
        be_add(b, x, t[j].xb, (int64_t)FK_N * FK_DIM);
    get(b, r->x, x, sizeof r->x);
    for (int j = 0; j < 2; j++) {
        get(b, r->y[j], t[j].xb, sizeof r->y[j]);
        get(b, r->kc[j], t[j].kv.k, sizeof r->kc[j]);
        memcpy(r->peek[j], t[j].peek, sizeof r->peek[j]);
        fk_free(b, &t[j]);
    }
    be_dealloc(b, x);
}

static void fk_same(const char *what, const struct fk_result *a, const struct fk_result *b) {
    int live = 0; /* the pair computed something: both outputs and peeks not all zero */
    for (int j = 0; j < 2; j++) {
        int y = 0, p = 0;
        for (int i = 0; i < FK_N * FK_DIM; i++)
            y |= b->y[j][i] != 0.0f;
        for (int i = 0; i < FK_PEEK; i++)
            p |= b->peek[j][i] != 0.0f;
        live += y && p;
    }
    int same = live == 2 && memcmp(a, b, sizeof *a) == 0;
    n_case++;
    n_fail += !same;
    printf("%-10s %-34s %s\n", "fork2", what, same ? "ok" : "FAIL");
}

/* fork2: the pair through be_fork2 (two streams on the GPU) must give
 * bitwise what the same calls give one after the other on the backend
 * itself (x, both outputs, both caches, the in-task downloads), twice (the
 * second fork reuses the shares), and the CPU's values within tolerance. */
/* the fork2 case's host weights: the prepared tensors may point at them until
 * the backends close, so main frees them after be_close */
static float *fk_host[2][5];

static void case_fork2(void) {
    static const int64_t rows[5] = {50, FK_H * FK_D, FK_KVH * FK_D, FK_KVH * FK_D, FK_DIM};
    struct be_tensor wg[2][5], wc[2][5];
    float *(*host)[5] = fk_host;
    for (int j = 0; j < 2; j++) {
        for (int i = 0; i < 5; i++) {
            const int64_t K = i == 4 ? FK_H * FK_D : FK_DIM;
            host[j][i] = frand_buf((size_t)(rows[i] * K), 0.2f);
            wc[j][i] = (struct be_tensor){.type = BE_F32, .ne = {K, rows[i], 1, 1},
                                          .nb1 = sizeof(float) * (size_t)K, .data = host[j][i]};
            wg[j][i] = wc[j][i];
            if (i > 0 && (be_weight_prepare(&cpu, &wc[j][i]) < 0 || be_weight_prepare(&gpu, &wg[j][i]) < 0)) {
                printf("%-10s %-34s FAIL (weight_prepare)\n", "fork2", "f32 weights");
                n_fail++;
                return; /* the test exits with a failure; the weights are the process's */
            }
        }
    }
    /* two sequences, prefill from 0: 9 tokens on page 2, 4 tokens on page 0 */
    static const int32_t pages0[1] = {2}, pages1[1] = {0};
    const struct be_attn_seq seqs[2] = {{.tok0 = 0, .n_tok = 9, .n_past = 0, .pages = pages0},
                                        {.tok0 = 9, .n_tok = 4, .n_past = 0, .pages = pages1}};
    int32_t ids[2 * FK_N], pos[FK_N], slots[FK_N];
    for (int i = 0; i < FK_N; i++) {
        pos[i] = i < 9 ? i : i - 9;
        slots[i] = i < 9 ? 2 * BE_PAGE_SLOTS + i : i - 9;
        ids[i] = (int32_t)(rnd() % 50);
        ids[FK_N + i] = i == 5 ? 50 : (int32_t)(rnd() % 50); /* one id out of range: zeros */
    }
    float *hx = frand_buf((size_t)FK_N * FK_DIM, 1.0f), *nw = frand_buf(FK_DIM, 1.0f);
    float *nwg = put(&gpu, nw, sizeof(float) * FK_DIM), *nwc = put(&cpu, nw, sizeof(float) * FK_DIM);
    struct fk_result *seq = calloc(1, sizeof *seq), *fk = calloc(1, sizeof *fk), *ref = calloc(1, sizeof *ref);
    fk_pair(&gpu, 0, hx, nwg, wg, ids, pos, slots, seqs, seq);
    fk_pair(&gpu, 1, hx, nwg, wg, ids, pos, slots, seqs, fk);
    fk_same("pair vs in sequence, bitwise", fk, seq);
    memset(fk, 0, sizeof *fk);
    fk_pair(&gpu, 1, hx, nwg, wg, ids, pos, slots, seqs, fk);
    fk_same("second fork (shares reused)", fk, seq);
    fk_pair(&cpu, 0, hx, nwc, wc, ids, pos, slots, seqs, ref);
    check("fork2", "x + y_a + y_b vs cpu, f32", fk->x, ref->x, (size_t)FK_N * FK_DIM, 1e-4);
    be_dealloc(&gpu, nwg), be_dealloc(&cpu, nwc);
    free(seq), free(fk), free(ref), free(hx), free(nw);
    /* fk_host stays until the backends are closed (main) */
}

int main(int argc, char **argv) {
    int dev = 0, self = 0, int8 = 0, bench = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc)
            dev = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            rs = strtoull(argv[++i], NULL, 0) | 1;
        else if (!strcmp(argv[i], "--self-test"))
            self = 1;
        else if (!strcmp(argv[i], "--self-test-int8")) /* must FAIL: int8 activations in the GPU's place */
            self = int8 = 1;
        else if (!strcmp(argv[i], "--bench-attention")) /* the benchmark only, no cases */
            bench = 1;
        else {
            fprintf(stderr, "usage: cuda_conform [--device N] [--seed S] [--self-test] [--bench-attention]\n");
            return 2;
        }
    }
    setenv("SLIMSERVE_CUDA_UNVERIFIED", "1", 1); /* this runner is the verification */
    char why[320] = "", name[32];
    if (self) {
        snprintf(why, sizeof why, "self-test: a second CPU backend in the GPU's place");
        snprintf(name, sizeof name, "cpu");
    } else if (!be_cuda_device_available(dev, why, sizeof why)) {
        printf("cuda_conform: SKIP: %s\n", why);
        return 77;
    } else {
        snprintf(name, sizeof name, "cuda:%d", dev);
    }
    if (be_open(&cpu, "cpu", 0) < 0 || be_open(&gpu, name, 0) < 0) {
        printf("cuda_conform: FAIL: cannot open the backends (%s)\n", why);
        return 1;
    }
    printf("cuda_conform: %s\n", why);
    self_test = self;
    if (int8)
        be_set_act_precision(&gpu, BE_ACT_INT8);
    if (bench) {
        const int rc = bench_attention();
        be_close(&gpu);
        be_close(&cpu);
        return rc;
    }
    case_memory();
    for (int t = 0; t < N_TYPES; t++)
        case_weights(all_types[t]);
    case_rows();
    case_rope();
    for (int t = 0; t < N_TYPES; t++)
        case_lte(all_types[t]);
    static const struct att_case acs[] = {
        {"gqa 8/2 d128 f16", 8, 2, 128, 0, 0.0f, BE_F16},
        {"gqa 8/2 d128 f32", 8, 2, 128, 0, 0.0f, BE_F32},
        {"mha 4/4 d256 window 40 f16", 4, 4, 256, 40, 0.0f, BE_F16},
        {"gqa 4/1 d64 window 512 cap 50 f32", 4, 1, 64, 512, 50.0f, BE_F32},
    };
    for (size_t i = 0; i < sizeof acs / sizeof acs[0]; i++)
        case_attention(&at_short, &acs[i], 0);
    case_attention(&at_short, &acs[0], 1);
    static const struct att_case lcs[] = {
        {"gqa 8/2 d128 f16", 8, 2, 128, 0, 0.0f, BE_F16},
        {"gqa 8/2 d128 window 4096 cap 50 f32", 8, 2, 128, 4096, 50.0f, BE_F32},
        {"mha 4/4 d256 f32", 4, 4, 256, 0, 0.0f, BE_F32},
    };
    for (size_t i = 0; i < sizeof lcs / sizeof lcs[0]; i++)
        case_attention(&at_long, &lcs[i], 0);
    case_attention(&at_long, &lcs[0], 1);
    case_index_ring();
    case_fork2();
#if HAVE_CUDA
    int err = kcu_ctx_error(&gpu);
    n_case++;
    n_fail += err != 0;
    printf("%-10s %-34s %s (%d)\n", "errors", "no CUDA/cuBLAS error", err ? "FAIL" : "ok", err);
#endif
    be_close(&gpu);
    be_close(&cpu);
    for (int j = 0; j < 2; j++)
        for (int i = 0; i < 5; i++) free(fk_host[j][i]);
    printf("cuda_conform: %d/%d cases passed%s\n", n_case - n_fail, n_case, n_fail ? " -- FAILED" : "");
    return n_fail ? 1 : 0;
}
