/* bench_kernels.c - CPU kernel benchmark (not a test).
 *
 * Prints, side by side in one run:
 *   - the machine's read bandwidth (read-sum loop over 1 GiB on all threads) and
 *     memcpy bandwidth, and an FMA peak estimate (independent FMA chains);
 *   - decode: matmul n=1 and n=4 on a ~100 MB weight per type, GB/s of weight
 *     bytes streamed and the fraction of the read bandwidth;
 *   - prefill: matmul n=512 on a 2048x2048 weight per type, GFLOP/s and the
 *     fraction of the FMA peak.
 *
 * usage: bench_kernels [threads [isa [cpu]]]   (isa: avx512 | avx2 | generic,
 *            each optionally +int8 (int8 activations) or +bf16 (BF16), e.g. avx512+int8;
 *            cpu: time with process CPU time instead of wall time)
 *        bench_kernels gemma [threads]   (Gemma-3-270M matmul shapes)
 *        bench_kernels attn [threads [reps [f32|f16]]]
 *        bench_kernels lte [threads [reps [cpu|wall [max_n]]]]   (LTE FFN: dense vs grouped vs
 *            dense fallback; dim 1024, ffn 4096, experts of 32; the crossover)
 *        bench_kernels micro TYPE N ITERS [isa [K R [threads]]]
 *            by default one thread and an L2-resident 2048x128 weight of ggml
 *            type number TYPE, N tokens, ITERS calls: run under
 *            `perf stat -e cycles` to get cycles per weight element independent
 *            of other load on the machine.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/backend.h"
#include "kernels/cpu/kcpu.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_now(void) { /* CPU time of the calling thread */
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double proc_cpu_now(void) { /* CPU time of all threads of the process */
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Clock used by the tables: wall time, or (with the "cpu" argument) CPU time of
 * the whole process, which is what to read on a machine shared with other
 * load (a time slice lost to another process is then not counted). */
static double (*clk)(void) = now;

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}
static float frnd(void) { return (float)(rnd() & 0xffffff) / 8388608.0f - 1.0f; }

/* Random weights of a type: random quant bytes, sane fp16 scales. */
static void fill_weights(int type, uint8_t *p, int64_t rows, int64_t K) {
    size_t rb = be_row_bytes(type, K);
    const struct be_type_info *ti = be_type_get(type);
    for (size_t i = 0; i < rb * (size_t)rows; i++)
        p[i] = (uint8_t)rnd();
    int64_t nblk = (int64_t)(rb * (size_t)rows / (size_t)ti->size);
    uint16_t d = kref_fp32_to_fp16(0.01f);
    for (int64_t b = 0; b < nblk; b++) {
        uint8_t *q = p + (size_t)b * ti->size;
        switch (type) {
        case BE_F32: { float f = frnd(); memcpy(q, &f, 4); break; }
        case BE_F16: { uint16_t h = kref_fp32_to_fp16(frnd()); memcpy(q, &h, 2); break; }
        case BE_BF16: { float f = frnd(); uint32_t u; memcpy(&u, &f, 4); uint16_t h = (uint16_t)(u >> 16); memcpy(q, &h, 2); break; }
        case BE_Q4_K: case BE_Q5_K: memcpy(q, &d, 2); memcpy(q + 2, &d, 2); break;
        case BE_Q6_K: memcpy(q + 208, &d, 2); break;
        default: memcpy(q, &d, 2); break;
        }
    }
}

/* Sum of 64-byte lines with 4 independent vector accumulators: the loop is
 * bound by memory, not by the adds. */
__attribute__((target("avx2"))) static double read_sum_part(const float *a, size_t n) {
    typedef float v8 __attribute__((vector_size(32)));
    v8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (size_t i = 0; i + 32 <= n; i += 32) {
        v8 a0, a1, a2, a3;
        memcpy(&a0, a + i, 32);
        memcpy(&a1, a + i + 8, 32);
        memcpy(&a2, a + i + 16, 32);
        memcpy(&a3, a + i + 24, 32);
        s0 += a0;
        s1 += a1;
        s2 += a2;
        s3 += a3;
    }
    v8 s = s0 + s1 + s2 + s3;
    return s[0] + s[7];
}

struct bw_job {
    const float *a;
    size_t n;
    double tot[KCPU_POOL_MAX_THREADS];
};

static void bw_task(void *arg, int t, int k) {
    struct bw_job *J = arg;
    size_t per = J->n / k / 32 * 32;
    J->tot[t] = read_sum_part(J->a + per * t, per);
}

static double read_bw(size_t bytes, int nth) {
    struct kcpu_pool *pool;
    if (kcpu_pool_init(&pool, nth, -1) < 0)
        return 0;
    float *a = aligned_alloc(64, bytes);
    if (!a) {
        kcpu_pool_free(pool);
        return 0;
    }
    size_t n = bytes / sizeof(float);
    memset(a, 0, bytes);
    double best = 0;
    volatile double sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        struct bw_job J = {a, n, {0}};
        double t0 = clk(), tot = 0;
        kcpu_pool_run(pool, nth, bw_task, &J);
        double t = clk() - t0;
        for (int k = 0; k < kcpu_pool_size(pool); k++)
            tot += J.tot[k];
        sink += tot;
        if (bytes / t > best)
            best = bytes / t;
    }
    (void)sink;
    free(a);
    kcpu_pool_free(pool);
    return best / 1e9;
}

static double memcpy_bw(size_t bytes) {
    char *a = aligned_alloc(64, bytes), *b = aligned_alloc(64, bytes);
    if (!a || !b) {
        free(a);
        free(b);
        return 0;
    }
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        memcpy(b, a, bytes);
        double t = now() - t0;
        if (bytes / t > best)
            best = bytes / t; /* bytes read per second (as much is written) */
    }
    free(a);
    free(b);
    return best / 1e9;
}

/* FMA peak of one core: 12 independent 512-bit (or 256-bit) FMA chains. */
__attribute__((target("avx512f,fma"))) static double peak_avx512(void) {
    typedef float v16 __attribute__((vector_size(64)));
    v16 a[12], m = {0}, c = {0};
    for (int i = 0; i < 16; i++) {
        m[i] = 0.999999f;
        c[i] = 1e-7f;
    }
    for (int i = 0; i < 12; i++)
        a[i] = m * (float)(i + 1);
    long it = 20000000;
    double t0 = clk();
    for (long k = 0; k < it; k++)
        for (int i = 0; i < 12; i++)
            a[i] = a[i] * m + c; /* contracted to vfmadd (default -ffp-contract=fast) */
    double t = clk() - t0;
    float s = 0;
    for (int i = 0; i < 12; i++)
        s += a[i][0];
    if (s == 12345.0f)
        printf("!");
    return 2.0 * 16 * 12 * it / t / 1e9;
}

static void bench_type(struct be *be, int type, int nth_avail, double rbw, double peak) {
    const struct be_type_info *ti = be_type_get(type);
    /* decode: ~100 MB of weights, K = 4096 */
    int64_t K = 4096;
    size_t rb = be_row_bytes(type, K);
    int64_t rows = (int64_t)(100e6 / rb);
    rows -= rows % 16;
    uint8_t *w = aligned_alloc(64, (rb * rows + 63) / 64 * 64);
    float *x = aligned_alloc(64, sizeof(float) * 512 * 4096);
    float *y = aligned_alloc(64, sizeof(float) * 4 * rows + 64 * 512 * 2048);
    if (!w || !x || !y) {
        printf("%-6s out of memory\n", ti->name);
        goto out;
    }
    fill_weights(type, w, rows, K);
    for (int i = 0; i < 512 * 4096; i++)
        x[i] = frnd();
    struct be_tensor t = {.type = type, .ne = {K, rows, 1, 1}, .nb1 = rb, .data = w};
    double gbs[2];
    for (int v = 0; v < 2; v++) {
        int n = v ? 4 : 1;
        be_matmul(be, y, x, &t, n); /* warm */
        double best = 1e9;
        for (int rep = 0; rep < 8; rep++) {
            double t0 = clk();
            be_matmul(be, y, x, &t, n);
            double dt = clk() - t0;
            best = dt < best ? dt : best;
        }
        gbs[v] = (double)rb * rows / best / 1e9;
    }
    /* prefill: n = 512, 2048 x 2048 */
    int64_t PK = 2048, PR = 2048;
    int pn = 512;
    size_t prb = be_row_bytes(type, PK);
    struct be_tensor pt = {.type = type, .ne = {PK, PR, 1, 1}, .nb1 = prb, .data = w};
    fill_weights(type, w, PR, PK);
    be_matmul(be, y, x, &pt, pn);
    double best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = clk();
        be_matmul(be, y, x, &pt, pn);
        double dt = clk() - t0;
        best = dt < best ? dt : best;
    }
    double gf = 2.0 * pn * PK * PR / best / 1e9;
    printf("%-6s decode n=1 %6.1f GB/s (%3.0f%% of read bw)  n=4 %6.1f GB/s  | prefill n=512 %7.1f GFLOP/s (%3.0f%% of peak)\n",
           ti->name, gbs[0], 100 * gbs[0] / rbw, gbs[1], gf, peak > 0 ? 100 * gf / peak : 0);
    (void)nth_avail;
out:
    free(w);
    free(x);
    free(y);
}

/* "ISA", "ISA+int8" (int8 activations) or "ISA+bf16" (BF16 weights and
 * activations); 0 or a negative SS_E* code */
static int set_isa(struct be *be, const char *arg) {
    char name[32];
    const char *plus = strchr(arg, '+');
    size_t len = plus ? (size_t)(plus - arg) : strlen(arg);
    if (len >= sizeof name)
        return -1;
    memcpy(name, arg, len);
    name[len] = 0;
    int rc = kcpu_ctx_set_isa(be, name);
    if (rc == 0 && plus)
        rc = !strcmp(plus, "+int8")   ? (be_set_act_precision(be, BE_ACT_INT8) < 0 ? -1 : 0)
             : !strcmp(plus, "+bf16") ? (be_set_act_precision(be, BE_ACT_BF16) < 0 ? -1 : 0)
                                      : -1;
    return rc;
}

static int micro(int argc, char **argv) {
    if (argc < 5)
        return 2;
    int type = atoi(argv[2]), n = atoi(argv[3]);
    long iters = atol(argv[4]);
    struct be be;
    int64_t K = argc > 7 ? atol(argv[6]) : 2048, R = argc > 7 ? atol(argv[7]) : 128;
    int nth = argc > 8 ? atoi(argv[8]) : 1;
    if (n < 1 || n > 512 || K < 256 || R < 1 || be_open(&be, "cpu", nth) != 0)
        return 2;
    if (!be_type_supported(&be, type)) {
        be_close(&be);
        return 2;
    }
    if (argc > 5 && set_isa(&be, argv[5]) != 0)
        return 2;
    size_t rb = be_row_bytes(type, K);
    uint8_t *w = aligned_alloc(64, (rb * R + 63) / 64 * 64);
    float *x = aligned_alloc(64, sizeof(float) * 512 * K), *y = aligned_alloc(64, sizeof(float) * 512 * R);
    fill_weights(type, w, R, K);
    for (int64_t i = 0; i < 512 * K; i++)
        x[i] = frnd();
    struct be_tensor t = {.type = type, .ne = {K, R, 1, 1}, .nb1 = rb, .data = w};
    be_matmul(&be, y, x, &t, n); /* warm */
    double t0 = now(), c0 = cpu_now();
    for (long i = 0; i < iters; i++)
        be_matmul(&be, y, x, &t, n);
    double dt = now() - t0, dc = cpu_now() - c0;
    printf("%s n=%d: %.3f ns per weight element per call, %.1f GFLOP/s, %.1f GB/s of weights "
           "(wall); per CPU-second of this thread: %.1f GFLOP/s, %.1f GB/s\n",
           be_type_get(type)->name, n, dt * 1e9 / ((double)iters * K * R),
           2.0 * n * K * R * iters / dt / 1e9, (double)rb * R * iters / dt / 1e9,
           2.0 * n * K * R * iters / dc / 1e9, (double)rb * R * iters / dc / 1e9);
    printf("elements x iters = %.0f (divide perf cycles by this)\n", (double)iters * K * R);
    be_close(&be);
    free(w);
    free(x);
    free(y);
    return 0;
}

/* Attention with Gemma-3-270M shapes (4 query heads, 1 KV head, head_dim 256):
 * a 512-token prefill from an empty cache and one decode token at 4096. */
static void bench_attention(struct be *be, int kv_type, int reps) {
    const int H = 4, KVH = 1, D = 256, kvd = KVH * D, ctx = 4096, n = 512;
    size_t esz = kv_type == BE_F16 ? 2 : 4;
    int pages = ctx / BE_PAGE_SLOTS + 1;
    struct be_kv_layer kv = {.k = be_alloc(be, (size_t)pages * BE_PAGE_SLOTS * kvd * esz),
                             .v = be_alloc(be, (size_t)pages * BE_PAGE_SLOTS * kvd * esz), .kv_type = kv_type};
    int32_t *table = malloc(sizeof(int32_t) * pages), *slots = malloc(sizeof(int32_t) * ctx);
    float *kx = malloc(sizeof(float) * (size_t)ctx * kvd), *q = malloc(sizeof(float) * n * H * D);
    float *o = malloc(sizeof(float) * n * H * D);
    if (!kv.k || !kv.v || !table || !slots || !kx || !q || !o)
        goto out;
    for (int i = 0; i < pages; i++)
        table[i] = (i * 7) % pages; /* scattered pages */
    for (int i = 0; i < ctx; i++)
        slots[i] = table[i / BE_PAGE_SLOTS] * BE_PAGE_SLOTS + i % BE_PAGE_SLOTS;
    for (size_t i = 0; i < (size_t)ctx * kvd; i++)
        kx[i] = frnd();
    for (int i = 0; i < n * H * D; i++)
        q[i] = frnd();
    be_kv_store(be, &kv, kx, kx, slots, ctx, kvd);
    struct be_attn_params p = {.n_heads = H, .n_kv_heads = KVH, .head_dim = D, .scale = 0.0625f};
    struct be_attn_seq pre = {.tok0 = 0, .n_tok = n, .n_past = 0, .pages = table};
    struct be_attn_seq dec = {.tok0 = 0, .n_tok = 1, .n_past = ctx - 1, .pages = table};
    double best_p = 1e9, best_d = 1e9;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = clk();
        be_attention(be, o, q, &kv, &pre, 1, &p);
        double t1 = clk();
        be_attention(be, o, q, &kv, &dec, 1, &p);
        double t2 = clk();
        best_p = t1 - t0 < best_p ? t1 - t0 : best_p;
        best_d = t2 - t1 < best_d ? t2 - t1 : best_d;
    }
    double fl = 4.0 * D * H * ((double)n * (n + 1) / 2); /* q.k and p.v */
    printf("attention %s cache: prefill 512 tok %.2f ms (%.1f GFLOP/s), decode at 4096 %.3f ms (%.1f GB/s of KV)\n",
           kv_type == BE_F16 ? "f16" : "f32", best_p * 1e3, fl / best_p / 1e9, best_d * 1e3,
           2.0 * ctx * kvd * esz / best_d / 1e9);
out:
    be_dealloc(be, kv.k);
    be_dealloc(be, kv.v);
    free(table);
    free(slots);
    free(kx);
    free(q);
    free(o);
}

/* All matmuls of Gemma-3-270M Q4_K_M (18 layers, real shapes and types, random
 * weights) plus the tied 262144-row output: one decode token (n=1), a decode
 * batch of 4, and a 512-token prefill (where the output matmul is skipped:
 * only the last token needs logits). */
static void bench_gemma(struct be *be) {
    enum { L = 18, NW = 7 };
    static const struct { int64_t K, R; int type[2]; } shp[NW] = {
        {640, 1024, {BE_Q5_0, BE_Q5_0}},  /* attn_q */
        {640, 256, {BE_Q5_0, BE_Q8_0}},   /* attn_k (Q8_0 in every other layer) */
        {640, 256, {BE_Q5_0, BE_Q5_0}},   /* attn_v */
        {1024, 640, {BE_Q4_K, BE_Q4_K}},  /* attn_output */
        {640, 2048, {BE_Q5_0, BE_Q5_0}},  /* ffn_gate */
        {640, 2048, {BE_Q5_0, BE_Q5_0}},  /* ffn_up */
        {2048, 640, {BE_Q4_K, BE_Q6_K}},  /* ffn_down */
    };
    struct be_tensor w[L][NW], out;
    size_t bytes = 0;
    double flop = 0;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < NW; i++) {
            int type = shp[i].type[l % 2];
            size_t rb = be_row_bytes(type, shp[i].K);
            uint8_t *p = aligned_alloc(64, (rb * shp[i].R + 63) / 64 * 64);
            fill_weights(type, p, shp[i].R, shp[i].K);
            w[l][i] = (struct be_tensor){.type = type, .ne = {shp[i].K, shp[i].R, 1, 1}, .nb1 = rb, .data = p};
            bytes += rb * shp[i].R;
            flop += 2.0 * shp[i].K * shp[i].R;
        }
    size_t orb = be_row_bytes(BE_Q8_0, 640);
    uint8_t *op = aligned_alloc(64, (orb * 262144 + 63) / 64 * 64);
    fill_weights(BE_Q8_0, op, 262144, 640);
    out = (struct be_tensor){.type = BE_Q8_0, .ne = {640, 262144, 1, 1}, .nb1 = orb, .data = op};
    float *x = aligned_alloc(64, sizeof(float) * 512 * 2048), *y = aligned_alloc(64, sizeof(float) * 4 * 262144);
    for (int i = 0; i < 512 * 2048; i++)
        x[i] = frnd();
    double best[3] = {1e9, 1e9, 1e9}, cpu[3] = {1e9, 1e9, 1e9};
    const int ns[3] = {1, 4, 512};
    for (int rep = 0; rep < 4; rep++)
        for (int v = 0; v < 3; v++) {
            double t0 = now(), c0 = proc_cpu_now();
            for (int l = 0; l < L; l++)
                for (int i = 0; i < NW; i++)
                    be_matmul(be, y, x, &w[l][i], ns[v]);
            if (ns[v] <= 4)
                be_matmul(be, y, x, &out, ns[v]);
            double dt = now() - t0, dc = proc_cpu_now() - c0;
            best[v] = dt < best[v] ? dt : best[v];
            cpu[v] = dc < cpu[v] ? dc : cpu[v];
        }
    double ob = (double)orb * 262144;
    printf("gemma-3-270m matmuls (wall; CPU-seconds of all threads in brackets):\n");
    printf("  decode n=1   %7.2f ms/token [%7.2f] (%.1f GB/s: %.0f MB layers + %.0f MB output)\n",
           best[0] * 1e3, cpu[0] * 1e3, (bytes + ob) / best[0] / 1e9, bytes / 1e6, ob / 1e6);
    printf("  decode n=4   %7.2f ms/step  [%7.2f] (%.1f tokens/s of matmul)\n", best[1] * 1e3,
           cpu[1] * 1e3, 4 / best[1]);
    printf("  prefill 512  %7.1f ms       [%7.1f] (%.1f GFLOP/s, output matmul excluded)\n",
           best[2] * 1e3, cpu[2] * 1e3, flop * 512 / best[2] / 1e9);
    for (int l = 0; l < L; l++)
        for (int i = 0; i < NW; i++)
            free((void *)w[l][i].data);
    free(op);
    free(x);
    free(y);
}

/* LTE FFN of the FFN-heavy shape (dim 1024, ffn 4096, S 32: 128 experts),
 * 4 layers' weights in rotation (> L3), per type and batch n: the plain dense
 * FFN (3 matmuls + glu) and lte_ffn's grouped and dense-fallback paths at
 * per-row active fractions f (each row's experts drawn independently, so the
 * step's union grows with n). Runs alternate, medians of reps. Prints the
 * smallest f at which the fallback beats grouped: the crossover. */
static int cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void bench_lte(struct be *be, int reps, int max_n) {
    enum { DIM = 1024, FFN = 4096, S = 32, E = FFN / S, NL = 4, NMAX = 256 };
    static const int types[] = {BE_Q8_0, BE_Q4_0, BE_F16};
    static const int ns[] = {1, 4, 16, 64, 256};
    static const double fs[] = {0.1, 0.3, 0.5, 0.7, 0.9, 1.0};
    float *x = malloc(sizeof(float) * NMAX * DIM), *y = malloc(sizeof(float) * NMAX * DIM);
    float *sa = malloc(sizeof(float) * NMAX * FFN), *sb = malloc(sizeof(float) * NMAX * FFN);
    uint8_t *mask = malloc((size_t)NMAX * E);
    for (int i = 0; i < NMAX * DIM; i++) x[i] = frnd() * 0.1f;
    printf("LTE FFN dim %d ffn %d experts %d x %d, %d layers rotating; ms per layer call (median of %d, %s)\n", DIM,
           FFN, E, S, NL, reps, clk == now ? "wall clock" : "process CPU time");
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        int type = types[ti];
        size_t rb = be_row_bytes(type, DIM), rbd = be_row_bytes(type, FFN), rbs = be_row_bytes(type, S);
        struct be_tensor g[NL], u[NL], d[NL], dx[NL];
        for (int l = 0; l < NL; l++) {
            uint8_t *pg = malloc(rb * FFN), *pu = malloc(rb * FFN), *pd = malloc(rbd * DIM), *px = malloc(rbs * E * DIM);
            fill_weights(type, pg, FFN, DIM), fill_weights(type, pu, FFN, DIM);
            fill_weights(type, pd, DIM, FFN), fill_weights(type, px, (int64_t)E * DIM, S);
            g[l] = (struct be_tensor){.type = type, .ne = {DIM, FFN, 1, 1}, .nb1 = rb, .data = pg};
            u[l] = g[l], u[l].data = pu;
            d[l] = (struct be_tensor){.type = type, .ne = {FFN, DIM, 1, 1}, .nb1 = rbd, .data = pd};
            dx[l] = (struct be_tensor){.type = type, .ne = {S, (int64_t)E * DIM, 1, 1}, .nb1 = rbs, .data = px};
        }
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0] && ns[ni] <= max_n; ni++) {
            int n = ns[ni];
            double cross = -1;
            for (size_t fi = 0; fi < sizeof fs / sizeof fs[0]; fi++) {
                int uni = 0;
                for (int i = 0; i < n * E; i++) mask[i] = (rnd() % 1000) < fs[fi] * 1000;
                for (int e = 0; e < E; e++) {
                    int on = 0;
                    for (int t = 0; t < n; t++) on |= mask[t * E + e];
                    uni += on;
                }
                double t3[3][64];
                int nr = reps > 64 ? 64 : reps;
                for (int r = 0; r < nr; r++)
                    for (int v = 0; v < 3; v++) { /* alternating: dense, grouped, fallback */
                        int l = (r * 3 + v) % NL;
                        double t0 = clk();
                        if (v == 0) {
                            be_matmul(be, sa, x, &g[l], n), be_matmul(be, sb, x, &u[l], n);
                            be_glu(be, sa, sa, sb, (int64_t)n * FFN, 0), be_matmul(be, y, sa, &d[l], n);
                        } else {
                            struct be_lte_ffn p = {.gate = &g[l], .up = &u[l], .down = &dx[l], .n_experts = E,
                                                   .expert_size = S, .act = 0, .dense = v == 2};
                            be_lte_ffn(be, y, x, mask, n, &p, sa, sb);
                        }
                        t3[v][r] = clk() - t0;
                    }
                double md[3];
                for (int v = 0; v < 3; v++) {
                    qsort(t3[v], (size_t)nr, sizeof(double), cmp_dbl);
                    md[v] = t3[v][nr / 2] * 1e3;
                }
                if (cross < 0 && md[2] < md[1]) cross = fs[fi];
                printf("  %-5s n %3d f %.1f union %.2f: dense %7.3f  grouped %7.3f (%.2fx)  fallback %7.3f (%.2fx)\n",
                       be_type_get(type)->name, n, fs[fi], (double)uni / E, md[0], md[1], md[0] / md[1], md[2],
                       md[0] / md[2]);
            }
            printf("  %-5s n %3d: crossover (fallback faster than grouped) at f = %s%.1f\n", be_type_get(type)->name,
                   n, cross < 0 ? ">" : "", cross < 0 ? 1.0 : cross);
        }
        for (int l = 0; l < NL; l++)
            free((void *)g[l].data), free((void *)u[l].data), free((void *)d[l].data), free((void *)dx[l].data);
    }
    free(x), free(y), free(sa), free(sb), free(mask);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "lte") == 0) {
        struct be be;
        if (be_open(&be, "cpu", argc > 2 ? atoi(argv[2]) : 0) != 0)
            return 1;
        if (argc > 4 && strcmp(argv[4], "cpu") == 0)
            clk = proc_cpu_now;
        bench_lte(&be, argc > 3 ? atoi(argv[3]) : 5, argc > 5 ? atoi(argv[5]) : 256);
        be_close(&be);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "gemma") == 0) {
        struct be be;
        if (be_open(&be, "cpu", argc > 2 ? atoi(argv[2]) : 0) != 0)
            return 1;
        bench_gemma(&be);
        be_close(&be);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "micro") == 0)
        return micro(argc, argv);
    if (argc > 1 && strcmp(argv[1], "attn") == 0) {
        struct be be;
        if (be_open(&be, "cpu", argc > 2 ? atoi(argv[2]) : 0) != 0)
            return 1;
        int reps = argc > 3 ? atoi(argv[3]) : 5;
        if (argc <= 4 || strcmp(argv[4], "f16") != 0)
            bench_attention(&be, BE_F32, reps);
        if (argc <= 4 || strcmp(argv[4], "f32") != 0)
            bench_attention(&be, BE_F16, reps);
        be_close(&be);
        return 0;
    }
    int nth = argc > 1 ? atoi(argv[1]) : kcpu_pool_cpus();
    struct be be;
    if (be_open(&be, "cpu", nth) != 0) {
        fprintf(stderr, "be_open failed\n");
        return 1;
    }
    if (argc > 2 && set_isa(&be, argv[2]) != 0) {
        fprintf(stderr, "isa %s not usable here\n", argv[2]);
        return 1;
    }
    if (argc > 3 && strcmp(argv[3], "cpu") == 0)
        clk = proc_cpu_now;
    double rbw = read_bw((size_t)1 << 30, nth), rbw1 = read_bw((size_t)1 << 30, 1);
    double cbw = memcpy_bw((size_t)256 << 20);
    double pk1 = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        pk1 = peak_avx512();
    printf("threads %d, isa %s%s, clock: %s\n", nth, kcpu_ctx_isa_name(&be),
           argc > 2 && strchr(argv[2], '+') ? strchr(argv[2], '+') : "",
           clk == now ? "wall" : "process CPU time");
    printf("read-sum bandwidth: %.1f GB/s (%d threads), %.1f GB/s (1 thread); memcpy %.1f GB/s (1 thread)\n",
           rbw, nth, rbw1, cbw);
    printf("FMA peak: %.0f GFLOP/s per core (avx512), %.0f GFLOP/s for %d threads\n", pk1, pk1 * nth, nth);
    const int types[] = {BE_F32, BE_F16, BE_BF16, BE_Q8_0, BE_Q4_0, BE_Q5_0, BE_Q4_K, BE_Q5_K, BE_Q6_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        bench_type(&be, types[i], nth, rbw, pk1 * nth);
    bench_attention(&be, BE_F32, 5);
    bench_attention(&be, BE_F16, 5);
    bench_gemma(&be);
    be_close(&be);
    return 0;
}
