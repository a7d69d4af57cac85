/* test_cuda_math.c - the shared host/device arithmetic of the CUDA kernels
 * (kernels/cuda/kcu_math.h), compiled as C and checked on the CPU against the
 * CPU backend and the scalar references (kref_*) on the same inputs.
 *
 * Where kcu_math.h uses the same formula as the CPU backend's generic
 * (no-SIMD) code, the answers must be equal bitwise: dequantisation, half
 * conversions, RMSNorm, RoPE, SiLU/GELU, a one-split attention. Where the
 * order of operations differs by design (split-K combine, the SIMD tables) a
 * stated tolerance applies, and a double-precision softmax written here from
 * the definition is the independent yardstick. Built and run without CUDA.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/kcpu.h"
#include "kernels/cuda/kcu_math.h"
#include "kerntest.h"
#include "tu_check.h"

static struct be open_generic(void) {
    struct be be;
    ck_assert_int_eq(be_open(&be, "cpu", 1), 0);
    ck_assert_int_eq(kcpu_ctx_set_isa(&be, "generic"), 0);
    return be;
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* ------------------------------------------------------------ conversions */

START_TEST(test_half) {
    for (uint32_t h = 0; h < 65536; h++) {
        float a = kcu_f16_to_f32((uint16_t)h);
        ck_assert_msg(same_bits(a, kcpu_fp16_to_fp32((uint16_t)h)), "half %04x", h);
        if (!isnan(a))
            ck_assert_msg(same_bits(a, kref_fp16_to_fp32((uint16_t)h)), "half %04x vs kref", h);
        ck_assert(same_bits(kcu_bf16_to_f32((uint16_t)h), kref_bf16_to_fp32((uint16_t)h)));
    }
    const float edge[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 5.9604645e-8f, 2.9802322e-8f,
                          2.9802326e-8f, 6.097555e-5f, 6.1035156e-5f, 1.0f / 3, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++)
        ck_assert_uint_eq(kcu_f32_to_f16(edge[i]), kref_fp32_to_fp16(edge[i]));
    for (int i = 0; i < 400000; i++) {
        uint32_t u = rnd() << 16 ^ rnd();
        float f;
        memcpy(&f, &u, 4);
        uint16_t h = kcu_f32_to_f16(f);
        ck_assert_uint_eq(h, kcpu_fp32_to_fp16(f)); /* the CPU kv_store's conversion */
        if (isnan(f))
            ck_assert((h & 0x7c00) == 0x7c00 && (h & 0x3ff));
        else
            ck_assert_msg(h == kref_fp32_to_fp16(f), "f32 %08x", u);
    }
}
END_TEST

START_TEST(test_type_geometry) {
    for (int t = 0; t < BE_TYPE_COUNT; t++) {
        const struct be_type_info *ti = be_type_get(t);
        if (!kcpu_type_supported(t)) {
            ck_assert_int_eq(kcu_type_blck(t), 0);
            ck_assert_int_eq(kcu_type_size(t), 0);
            continue;
        }
        ck_assert_ptr_nonnull(ti);
        ck_assert_int_eq(kcu_type_blck(t), ti->blck);
        ck_assert_int_eq(kcu_type_size(t), ti->size);
    }
    ck_assert_int_eq(kcu_type_blck(-1), 0);
    ck_assert_int_eq(kcu_type_blck(1000), 0);
}
END_TEST

/* ------------------------------------------------------------ dequantisation */

/* A finite half in [2^-14, 2) or its negative: a sane block scale. */
static uint16_t rnd_half_scale(void) { return (uint16_t)((rnd() & 0x83ff) | ((1 + rnd() % 15) << 10)); }

/* rows x K elements of type: random bytes, finite scales / elements. */
static void fill_row(int type, uint8_t *p, int64_t K) {
    size_t rb = be_row_bytes(type, K);
    for (size_t i = 0; i < rb; i++)
        p[i] = (uint8_t)rnd();
    const int bs = kcu_type_size(type);
    for (size_t b = 0; b < rb / (size_t)bs; b++) {
        uint8_t *q = p + b * (size_t)bs;
        uint16_t d = rnd_half_scale(), e = rnd_half_scale();
        uint32_t f = (rnd() & 0x807fffffu) | ((100 + rnd() % 50) << 23);
        switch (type) {
        case BE_F32: memcpy(q, &f, 4); break;
        case BE_F16: memcpy(q, &d, 2); break;
        case BE_BF16: q[1] = (uint8_t)((q[1] & 0x80) | (0x30 + rnd() % 32)); break;
        case BE_Q4_K: case BE_Q5_K: memcpy(q + 2, &e, 2); /* fall through */
        case BE_Q4_0: case BE_Q5_0: case BE_Q8_0: memcpy(q, &d, 2); break;
        case BE_Q6_K: memcpy(q + 208, &d, 2); break;
        default: break;
        }
    }
}

START_TEST(test_dequant) {
    enum { K = 1024, ROWS = 3 };
    struct be be = open_generic();
    for (int ti = 0; ti < N_TYPES; ti++) {
        const int type = all_types[ti];
        const size_t rb = be_row_bytes(type, K);
        uint8_t *w = malloc(rb * ROWS);
        float *a = malloc(sizeof(float) * K), *ref = malloc(sizeof(float) * K),
              *sc = malloc(sizeof(float) * K), *gr = malloc(sizeof(float) * K * ROWS);
        ck_assert(w && a && ref && sc && gr);
        for (int r = 0; r < ROWS; r++)
            fill_row(type, w + r * rb, K);
        struct be_tensor t = {.type = type, .ne = {K, ROWS, 1, 1}, .nb1 = rb, .data = w};
        ck_assert_int_eq(be_weight_prepare(&be, &t), 0);
        const int32_t ids[ROWS] = {2, 0, 1};
        be_get_rows(&be, gr, &t, ids, ROWS);
        for (int r = 0; r < ROWS; r++) {
            const uint8_t *row = w + (size_t)ids[r] * rb;
            for (int64_t k = 0; k < K; k++)
                a[k] = kcu_dequant_row_elem(type, row, k);
            kref_dequant_row(type, row, ref, K);
            kcpu_dequant_row_scalar(type, row, sc, K);
            for (int64_t k = 0; k < K; k++) {
                ck_assert_msg(same_bits(a[k], ref[k]), "type %d elem %lld: %g vs kref %g", type,
                              (long long)k, a[k], ref[k]);
                ck_assert_msg(same_bits(a[k], sc[k]), "type %d elem %lld vs cpu scalar", type,
                              (long long)k);
                ck_assert_msg(same_bits(a[k], gr[(size_t)r * K + k]), "type %d elem %lld vs get_rows",
                              type, (long long)k);
            }
        }
        free(w), free(a), free(ref), free(sc), free(gr);
    }
    ck_assert_float_eq(kcu_dequant_row_elem(BE_Q2_K, (const uint8_t *)"\x11\x22\x33\x44", 0), 0.0f);
    be_close(&be);
}
END_TEST

/* ------------------------------------------------------------ rmsnorm, rope, glu */

START_TEST(test_rmsnorm) {
    enum { N = 5, DIM = 640 };
    struct be be = open_generic();
    static float x[N * DIM], w[DIM], o_cpu[N * DIM], o_kcu[DIM];
    for (int i = 0; i < N * DIM; i++)
        x[i] = frnd() * (i % 7 == 0 ? 30.0f : 1.0f);
    for (int i = 0; i < DIM; i++)
        w[i] = 1.0f + frnd();
    for (int with_w = 0; with_w < 2; with_w++) {
        be_rmsnorm(&be, o_cpu, x, with_w ? w : NULL, N, DIM, 1e-6f);
        for (int r = 0; r < N; r++) {
            kcu_rmsnorm_row(o_kcu, x + r * DIM, with_w ? w : NULL, DIM, 1e-6f);
            for (int k = 0; k < DIM; k++)
                ck_assert_msg(same_bits(o_kcu[k], o_cpu[r * DIM + k]), "row %d elem %d", r, k);
        }
    }
    be_close(&be);
}
END_TEST

START_TEST(test_rope) {
    enum { N = 4, H = 3, D = 64 };
    struct be be = open_generic();
    static float x[N * H * D], y_cpu[N * H * D], y_kcu[N * H * D], ff[D / 2];
    const int32_t pos[N] = {0, 1, 517, 131071};
    for (int i = 0; i < N * H * D; i++)
        x[i] = frnd();
    for (int i = 0; i < D / 2; i++)
        ff[i] = 1.0f + (float)i * 0.37f;
    for (int v = 0; v < 8; v++) {
        const int neox = v & 1, n_rot = v & 2 ? 48 : D;
        struct be_rope_params p = {.n_heads = H, .head_dim = D, .n_rot = n_rot,
                                   .theta_base = v & 4 ? 1000000.0f : 10000.0f,
                                   .freq_scale = v & 4 ? 0.25f : 1.0f, .neox = neox,
                                   .freq_factors = v & 4 ? ff : NULL};
        memcpy(y_cpu, x, sizeof x);
        memcpy(y_kcu, x, sizeof x);
        be_rope(&be, y_cpu, pos, N, &p);
        for (int t = 0; t < N; t++)
            for (int i = 0; i < n_rot / 2; i++) {
                float cs, sn;
                kcu_rope_cs(pos[t], p.freq_scale,
                            kcu_rope_inv_freq(i, n_rot, p.theta_base, p.freq_factors), &cs, &sn);
                int i0, i1;
                kcu_rope_pair(neox, i, n_rot, &i0, &i1);
                for (int h = 0; h < H; h++) {
                    float *row = y_kcu + ((size_t)t * H + h) * D;
                    kcu_rope_rotate(&row[i0], &row[i1], cs, sn);
                }
            }
        for (int i = 0; i < N * H * D; i++)
            ck_assert_msg(same_bits(y_kcu[i], y_cpu[i]), "variant %d elem %d: %g vs %g", v, i,
                          y_kcu[i], y_cpu[i]);
    }
    be_close(&be);
}
END_TEST

START_TEST(test_glu) {
    enum { N = 4096 };
    static float g[N], u[N], o[N];
    for (int i = 0; i < N; i++) {
        g[i] = frnd() * (i % 5 == 0 ? 40.0f : 6.0f);
        u[i] = frnd();
    }
    g[0] = 0.0f, g[1] = -0.0f, g[2] = 88.0f, g[3] = -88.0f, g[4] = 1e-30f;
    struct be be;
    ck_assert_int_eq(be_open(&be, "cpu", 1), 0);
    for (int s = 0; s < N_ISAS; s++) {
        if (kcpu_ctx_set_isa(&be, isas[s]) != 0)
            continue; /* not on this CPU */
        for (int act = 0; act < 2; act++) {
            be_glu(&be, o, g, u, N, act);
            for (int i = 0; i < N; i++) {
                float k = kcu_glu(g[i], u[i], act);
                if (s == 0) /* the same formula: bitwise */
                    ck_assert_msg(same_bits(k, o[i]), "act %d g %g: %g vs %g", act, g[i], k, o[i]);
                else /* the SIMD tables use their own exp/tanh: a few ulp */
                    ck_assert_msg(fabsf(k - o[i]) <= 4e-6f * fmaxf(1.0f, fabsf(o[i])),
                                  "%s act %d g %g: %g vs %g", isas[s], act, g[i], k, o[i]);
            }
        }
    }
    be_close(&be);
}
END_TEST

/* ------------------------------------------------------------ softmax, split-K */

enum { AT_D = 64, AT_H = 4, AT_KVH = 2, AT_N = 333, AT_CHUNK = 32 };
#define AT_KVD (AT_KVH * AT_D)

/* Keys [a, b] of head h as one partial, in chunks of AT_CHUNK from a (the CPU
 * attention's walk): sequential float dot products and accumulation. */
static void kcu_partial(const float *q, const float *K, const float *V, int h, int a, int b,
                        const struct be_attn_params *p, struct kcu_sm *s, float *acc) {
    const size_t off = (size_t)(h / (AT_H / AT_KVH)) * AT_D;
    kcu_sm_init(s);
    for (int d = 0; d < AT_D; d++)
        acc[d] = 0.0f;
    for (int c0 = a; c0 <= b; c0 += AT_CHUNK) {
        int cnt = b - c0 + 1 < AT_CHUNK ? b - c0 + 1 : AT_CHUNK;
        float sc[AT_CHUNK], mx = -INFINITY;
        for (int i = 0; i < cnt; i++) {
            float dot = 0.0f;
            for (int d = 0; d < AT_D; d++)
                dot = kcu_add(dot, kcu_mul(q[d], K[(size_t)(c0 + i) * AT_KVD + off + d]));
            sc[i] = kcu_att_logit(dot, p->scale, p->softcap);
            mx = sc[i] > mx ? sc[i] : mx;
        }
        float corr = kcu_sm_rescale(s, mx);
        for (int i = 0; i < cnt; i++) {
            sc[i] = kcu_sm_weight(s, sc[i]);
            s->l = kcu_add(s->l, sc[i]);
        }
        for (int d = 0; d < AT_D; d++) {
            float v = kcu_mul(acc[d], corr);
            for (int i = 0; i < cnt; i++)
                v = kcu_add(v, kcu_mul(sc[i], V[(size_t)(c0 + i) * AT_KVD + off + d]));
            acc[d] = v;
        }
    }
}

START_TEST(test_attention_split) {
    static float K[AT_N * AT_KVD], V[AT_N * AT_KVD], q[AT_H * AT_D], o_cpu[AT_H * AT_D];
    static int32_t pages[(AT_N + BE_PAGE_SLOTS - 1) / BE_PAGE_SLOTS];
    for (int i = 0; i < AT_N * AT_KVD; i++) {
        K[i] = frnd();
        V[i] = frnd();
    }
    for (int i = 0; i < AT_H * AT_D; i++)
        q[i] = 3.0f * frnd();
    for (int i = 0; i < (int)(sizeof pages / sizeof pages[0]); i++)
        pages[i] = i; /* identity block table: cache rows are positions */
    /* the cache: pages of 16 slots, identity table, so row P of K/V is slot P */
    static float kc[((AT_N + 15) / 16) * 16 * AT_KVD], vc[((AT_N + 15) / 16) * 16 * AT_KVD];
    memcpy(kc, K, sizeof K);
    memcpy(vc, V, sizeof V);
    struct be_kv_layer kv = {.k = kc, .v = vc, .kv_type = BE_F32};
    struct be_attn_seq seq = {.tok0 = 0, .n_tok = 1, .n_past = AT_N - 1, .pages = pages};
    struct be be = open_generic();
    const int splits[] = {1, 2, 5, 11};
    for (int v = 0; v < 4; v++) {
        struct be_attn_params p = {.n_heads = AT_H, .n_kv_heads = AT_KVH, .head_dim = AT_D,
                                   .scale = 0.125f, .window = v & 1 ? 100 : 0,
                                   .softcap = v & 2 ? 2.0f : 0.0f};
        be_attention(&be, o_cpu, q, &kv, &seq, 1, &p);
        const int qpos = AT_N - 1, lo = p.window ? qpos - p.window + 1 : 0;
        for (int h = 0; h < AT_H; h++) {
            /* independent yardstick: softmax in double, from the definition */
            double w[AT_N], wsum = 0.0, wmax = -INFINITY, ref[AT_D] = {0};
            const size_t off = (size_t)(h / (AT_H / AT_KVH)) * AT_D;
            for (int P = lo; P <= qpos; P++) {
                double dot = 0.0;
                for (int d = 0; d < AT_D; d++)
                    dot += (double)q[h * AT_D + d] * K[(size_t)P * AT_KVD + off + d];
                dot *= p.scale;
                if (p.softcap > 0)
                    dot = p.softcap * tanh(dot / p.softcap);
                w[P] = dot;
                wmax = dot > wmax ? dot : wmax;
            }
            for (int P = lo; P <= qpos; P++)
                wsum += (w[P] = exp(w[P] - wmax));
            for (int P = lo; P <= qpos; P++)
                for (int d = 0; d < AT_D; d++)
                    ref[d] += w[P] / wsum * V[(size_t)P * AT_KVD + off + d];
            for (int si = 0; si < 4; si++) {
                const int S = splits[si], len = qpos - lo + 1;
                struct kcu_sm tot, part;
                float acc[AT_D], pacc[AT_D], ca, cb;
                kcu_sm_init(&tot);
                for (int d = 0; d < AT_D; d++)
                    acc[d] = 0.0f;
                for (int s = 0; s < S; s++) { /* split s: keys [a, b], last may be empty */
                    int a = lo + (int)((int64_t)len * s / S), b = lo + (int)((int64_t)len * (s + 1) / S) - 1;
                    kcu_partial(q + h * AT_D, K, V, h, a, b, &p, &part, pacc);
                    kcu_sm_combine(&tot, &part, &ca, &cb);
                    for (int d = 0; d < AT_D; d++)
                        acc[d] = kcu_sm_mix(acc[d], ca, pacc[d], cb);
                }
                const float inv = kcu_sm_inv(&tot);
                for (int d = 0; d < AT_D; d++) {
                    float o = kcu_mul(acc[d], inv), c = o_cpu[h * AT_D + d];
                    if (S == 1) /* one split walks the keys as the CPU does: bitwise */
                        ck_assert_msg(same_bits(o, c), "v %d h %d d %d: %g vs %g", v, h, d, o, c);
                    else /* other grouping of the same sums: float rounding only */
                        ck_assert_msg(fabsf(o - c) <= 2e-6f, "v %d S %d h %d d %d: %g vs %g", v, S, h,
                                      d, o, c);
                    ck_assert_msg(fabs(o - ref[d]) <= 1e-5, "v %d S %d h %d d %d: %g vs double %g", v,
                                  S, h, d, o, ref[d]);
                }
            }
        }
    }
    be_close(&be);
}
END_TEST

START_TEST(test_combine_empty) {
    struct kcu_sm a = {.m = 1.5f, .l = 3.25f}, e, e2;
    float ca, cb;
    kcu_sm_init(&e);
    kcu_sm_combine(&a, &e, &ca, &cb); /* x + empty = x, bitwise */
    ck_assert(same_bits(a.m, 1.5f) && same_bits(a.l, 3.25f) && ca == 1.0f && cb == 0.0f);
    ck_assert(same_bits(kcu_sm_mix(0.7f, ca, 123.0f, cb), 0.7f));
    kcu_sm_init(&e2);
    kcu_sm_combine(&e2, &a, &ca, &cb); /* empty + x = x */
    ck_assert(same_bits(e2.m, 1.5f) && same_bits(e2.l, 3.25f) && ca == 0.0f && cb == 1.0f);
    kcu_sm_init(&e2);
    kcu_sm_combine(&e2, &e, &ca, &cb); /* empty + empty = empty, no NaN */
    ck_assert(e2.m == -INFINITY && e2.l == 0.0f && ca == 0.0f && cb == 0.0f);
    ck_assert_float_eq(kcu_sm_inv(&e2), 0.0f);
}
END_TEST

START_TEST(test_softcap) {
    ck_assert(same_bits(kcu_softcap(7.25f, 0.0f), 7.25f));
    for (int i = 0; i < 10000; i++) {
        float x = frnd() * 200.0f, y = kcu_softcap(x, 30.0f);
        ck_assert(fabsf(y) <= 30.0f);
        ck_assert(same_bits(kcu_softcap(-x, 30.0f), -y)); /* odd */
        ck_assert(fabs(y - 30.0 * tanh((double)x / 30.0)) <= 4e-6 * 30.0);
        float x2 = x + 1.0f;
        ck_assert(kcu_softcap(x2, 30.0f) >= y); /* monotone */
    }
}
END_TEST

/* ------------------------------------------------------------ SUBLLM compaction */

START_TEST(test_sub_compact) {
    enum { N = 1000 };
    static float s[N];
    static int32_t idx[N], src[N];
    for (int rep = 0; rep < 20; rep++) {
        for (int i = 0; i < N; i++) {
            switch (rnd() % 6) {
            case 0: s[i] = 0.0f; break;
            case 1: s[i] = i % 2 ? -0.0f : NAN; break;
            case 2: s[i] = 1e-30f; break;
            default: s[i] = frnd() * (rep % 2 ? 3.0f : 0.1f); break;
            }
        }
        /* the engine's rule (engine/subllm.c subsample): walk the rows, keep
         * iff s > 0, append to the compacted frame */
        int32_t n_kept = 0;
        for (int i = 0; i < N; i++)
            if (s[i] > 0.0f)
                src[n_kept++] = i;
        int32_t c = kcu_sub_compact_index(s, N, idx);
        ck_assert_int_eq(c, n_kept);
        for (int i = 0, seen = 0; i < N; i++) {
            ck_assert_int_eq(idx[i], seen); /* exclusive prefix sum */
            if (kcu_sub_keep(s[i])) {
                ck_assert_int_eq(src[idx[i]], i);
                float w = kcu_sub_weight(s[i]);
                ck_assert(w > 0.0f && w <= 1.0f && (s[i] >= 1.0f ? w == 1.0f : w == s[i]));
                seen++;
            }
        }
    }
    ck_assert_int_eq(kcu_sub_compact_index(s, 0, idx), 0);
}
END_TEST

/* ------------------------------------------------------------ GEMM operands */

/* nearest bfloat16 of x from the definition (double distances, ties to the
 * even mantissa) */
static uint16_t bf16_ref(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    if ((u & 0xffff) == 0)
        return lo;
    double dl = fabs((double)kcu_bf16_to_f32(lo) - x), dh = fabs((double)kcu_bf16_to_f32(hi) - x);
    if (dl != dh)
        return dl < dh ? lo : hi;
    return (lo & 1) ? hi : lo;
}

START_TEST(test_gemm_operands) {
    ck_assert_int_eq(kcu_gemm_type(BE_F32), BE_F32);
    ck_assert_int_eq(kcu_gemm_type(BE_BF16), BE_BF16);
    const int f16_types[] = {BE_F16, BE_Q8_0, BE_Q4_0, BE_Q5_0, BE_Q4_K, BE_Q5_K, BE_Q6_K};
    for (int i = 0; i < 7; i++)
        ck_assert_int_eq(kcu_gemm_type(f16_types[i]), BE_F16);
    for (int i = 0; i < 200000; i++) {
        uint32_t u = rnd() ^ (rnd() << 16);
        float x;
        memcpy(&x, &u, 4);
        if (isnan(x)) {
            ck_assert(isnan(kcu_bf16_to_f32(kcu_f32_to_bf16(x))));
            ck_assert(isnan(kcu_f16_to_f32(kcu_f32_to_f16_sat(x))));
            continue;
        }
        if (!isinf(x) && fabsf(x) < 3.3e38f) /* past bf16's largest finite: rounds to inf */
            ck_assert_msg(kcu_f32_to_bf16(x) == bf16_ref(x), "bf16 of %a: %04x vs %04x", x,
                          kcu_f32_to_bf16(x), bf16_ref(x));
        const float small = x / 1e34f; /* also values in half's range */
        ck_assert_int_eq(kcu_f32_to_f16_sat(small), kref_fp32_to_fp16(small));
        const uint16_t h = kcu_f32_to_f16_sat(x);
        if (fabsf(x) <= 65504.0f)
            ck_assert_int_eq(h, kref_fp32_to_fp16(x));
        else /* saturates (never inf) */
            ck_assert_int_eq(h, x > 0 ? 0x7bff : 0xfbff);
    }
    ck_assert_int_eq(kcu_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);          /* tie, even stays */
    ck_assert_int_eq(kcu_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);      /* tie, odd rounds up */
    ck_assert_int_eq(kcu_f32_to_f16_sat(1e6f), 0x7bff);
    ck_assert_int_eq(kcu_f32_to_f16_sat(-INFINITY), 0xfbff);
}
END_TEST

/* ------------------------------------------------------------ attention kernel, emulated */

/* The walk of kcu_attn.cu's kernel (attn_walk) for (row R, head h) on the
 * host: the kernel's own inner steps (kcu_attn_score, kcu_chunk_max,
 * kcu_sm_rescale, kcu_sm_weight, kcu_sm_add, kcu_attn_accum) in its order;
 * leaves (m, l) in s and the unnormalised accumulator in acc[D]. */
static void emu_walk(struct kcu_sm *s, float *acc, const struct kcu_attn_row *R, const int32_t *pages,
                     const float *q, const struct be_kv_layer *kv, const struct be_attn_params *p, int h) {
    const int D = p->head_dim, group = p->n_heads / p->n_kv_heads;
    const int kv_dim = p->n_kv_heads * D, qdim = p->n_heads * D;
    float qs[KCU_ATT_MAX_HEAD], sc[KCU_ATT_CHUNK];
    size_t offs[KCU_ATT_CHUNK];
    memcpy(qs, q + (size_t)R->row * qdim + (size_t)h * D, sizeof(float) * D);
    for (int d = 0; d < D; d++)
        acc[d] = 0.0f;
    kcu_sm_init(s);
    const int32_t *pg = pages + R->pages_off;
    for (int64_t p0 = R->lo; p0 <= R->hi; p0 += KCU_ATT_CHUNK) {
        int cnt = R->hi - p0 + 1 < KCU_ATT_CHUNK ? (int)(R->hi - p0 + 1) : KCU_ATT_CHUNK;
        for (int i = 0; i < cnt; i++) {
            offs[i] = kcu_kv_offset(pg, p0 + i, kv_dim, h / group, D);
            sc[i] = kcu_attn_score(qs, kv->k, kv->kv_type, offs[i], D, p->scale, p->softcap);
        }
        const float corr = kcu_sm_rescale(s, kcu_chunk_max(sc, cnt));
        for (int i = 0; i < cnt; i++)
            sc[i] = kcu_sm_weight(s, sc[i]);
        kcu_sm_add(s, sc, cnt);
        for (int d = 0; d < D; d++)
            acc[d] = kcu_attn_accum(acc[d], corr, sc, offs, cnt, kv->v, kv->kv_type, d);
    }
}

/* The unsplit kernel (kcu_attn_kernel<0>) row by row: walk, then acc / l. */
static void emu_plain(float *out, const struct kcu_attn_row *rows, size_t nr, const int32_t *pages,
                      const float *q, const struct be_kv_layer *kv, const struct be_attn_params *p) {
    const int D = p->head_dim, qdim = p->n_heads * D;
    float acc[KCU_ATT_MAX_HEAD];
    for (size_t r = 0; r < nr; r++)
        for (int h = 0; h < p->n_heads; h++) {
            struct kcu_sm s;
            emu_walk(&s, acc, &rows[r], pages, q, kv, p, h);
            const float inv = kcu_sm_inv(&s);
            float *o = out + (size_t)rows[r].row * qdim + (size_t)h * D;
            for (int d = 0; d < D; d++)
                o[d] = kcu_mul(acc[d], inv);
        }
}

/* The backend's attention on the host, as be_cuda.c launches it: rows from
 * kcu_attn_pack sorted by kcu_split_pack under the cap pcap (1: all
 * unsplit); plain rows as the unsplit kernel; split rows in launch groups of
 * at most `slots` partitions (kcu_split_group) through a scratch laid out as
 * the device's (record (i - base) * H + h of kcu_split_rec floats), the
 * partial kernel's walk per partition, then kcu_split_out per element. */
static void attn_emulate_split(float *out, const float *q, const struct be_kv_layer *kv,
                               const struct be_attn_seq *seqs, int n_seqs, const struct be_attn_params *p,
                               int pcap, int64_t slots) {
    size_t nr, np, n[3];
    kcu_attn_count(seqs, n_seqs, &nr, &np);
    struct kcu_attn_row *rows = malloc(sizeof *rows * nr), *plain = malloc(sizeof *plain * nr);
    int32_t *pages = malloc(sizeof *pages * (np ? np : 1));
    ck_assert(rows && plain && pages);
    kcu_attn_pack(seqs, n_seqs, p->window, rows, pages);
    kcu_split_pack(rows, nr, pcap, NULL, NULL, NULL, n);
    struct kcu_attn_row *parts = malloc(sizeof *parts * (n[1] + 1));
    struct kcu_split_row *comb = malloc(sizeof *comb * (n[2] + 1));
    const int H = p->n_heads, D = p->head_dim, qdim = H * D;
    const size_t rec = kcu_split_rec(D), stride = (size_t)H * rec;
    float *scr = malloc(sizeof(float) * (size_t)slots * stride);
    ck_assert(parts && comb && scr);
    kcu_split_pack(rows, nr, pcap, plain, parts, comb, n);
    emu_plain(out, plain, n[0], pages, q, kv, p);
    for (size_t c0 = 0, c1; c0 < n[2]; c0 = c1) {
        c1 = kcu_split_group(comb, n[2], c0, slots);
        const int base = comb[c0].part0, npart = comb[c1 - 1].part0 + comb[c1 - 1].n_part - base;
        ck_assert_int_le(npart, slots);
        for (int r = 0; r < npart; r++) /* the partial kernel: record r of head h */
            for (int h = 0; h < H; h++) {
                struct kcu_sm s;
                float *rc = scr + (size_t)r * stride + (size_t)h * rec;
                emu_walk(&s, rc + 2, &parts[base + r], pages, q, kv, p, h);
                rc[0] = s.m;
                rc[1] = s.l;
            }
        for (size_t c = c0; c < c1; c++) /* the combine kernel */
            for (int h = 0; h < H; h++)
                for (int d = 0; d < D; d++)
                    out[(size_t)comb[c].row * qdim + (size_t)h * D + d] =
                        kcu_split_out(scr + (size_t)(comb[c].part0 - base) * stride + (size_t)h * rec, stride,
                                      comb[c].n_part, d);
    }
    free(rows), free(plain), free(pages), free(parts), free(comb), free(scr);
}

/* The unsplit walk for every row (the kernel before split-K, and the
 * backend with kcu_ctx_set_attn_split(be, 0)). */
static void attn_emulate(float *out, const float *q, const struct be_kv_layer *kv,
                         const struct be_attn_seq *seqs, int n_seqs, const struct be_attn_params *p) {
    attn_emulate_split(out, q, kv, seqs, n_seqs, p, 1, 1);
}

/* A ragged batch over a shuffled block table for the emulation tests:
 * sequences (n_past, n_tok) with tables drawn from a permutation of n_pages
 * physical pages, random K/V for every slot, q with two spare rows past the
 * batch (no sequence covers them). */
enum { EB_H = 4, EB_KVH = 2, EB_D = 64, EB_KVD = EB_KVH * EB_D, EB_QD = EB_H * EB_D, EB_MAXSEQ = 16 };
struct emu_batch {
    struct be_attn_seq seqs[EB_MAXSEQ];
    int n_seqs, n_tok, n_rows, n_pages;
    int32_t *perm;
    float *kin, *vin, *q, *o_cpu, *o_emu;
};

static void emu_batch_init(struct emu_batch *b, const int *past, const int *ntok, int n) {
    ck_assert_int_le(n, EB_MAXSEQ);
    b->n_seqs = n;
    b->n_tok = b->n_pages = 0;
    for (int s = 0; s < n; s++)
        b->n_pages += (past[s] + ntok[s] + BE_PAGE_SLOTS - 1) / BE_PAGE_SLOTS;
    b->n_pages += 3; /* pages no table uses */
    b->perm = malloc(sizeof(int32_t) * b->n_pages);
    ck_assert(b->perm);
    for (int i = 0; i < b->n_pages; i++)
        b->perm[i] = i;
    for (int i = b->n_pages - 1; i > 0; i--) {
        int j = (int)(rnd() % (uint32_t)(i + 1)), t = b->perm[i];
        b->perm[i] = b->perm[j];
        b->perm[j] = t;
    }
    int pg = 0;
    for (int s = 0; s < n; s++) {
        b->seqs[s] = (struct be_attn_seq){.tok0 = b->n_tok, .n_tok = ntok[s], .n_past = past[s], .pages = b->perm + pg};
        pg += (int)kcu_attn_seq_pages(&b->seqs[s]);
        b->n_tok += ntok[s];
    }
    b->n_rows = b->n_tok + 2;
    const size_t nkv = (size_t)b->n_pages * BE_PAGE_SLOTS * EB_KVD, nq = (size_t)b->n_rows * EB_QD;
    b->kin = malloc(sizeof(float) * nkv), b->vin = malloc(sizeof(float) * nkv);
    b->q = malloc(sizeof(float) * nq), b->o_cpu = malloc(sizeof(float) * nq), b->o_emu = malloc(sizeof(float) * nq);
    ck_assert(b->kin && b->vin && b->q && b->o_cpu && b->o_emu);
    for (size_t i = 0; i < nkv; i++)
        b->kin[i] = frnd(), b->vin[i] = frnd();
    for (size_t i = 0; i < nq; i++)
        b->q[i] = 2.0f * frnd();
}

static void emu_batch_free(struct emu_batch *b) {
    free(b->perm), free(b->kin), free(b->vin), free(b->q), free(b->o_cpu), free(b->o_emu);
}

/* A cache of kv_type on be holding the batch's K/V in every slot (kv_store). */
static struct be_kv_layer emu_batch_cache(struct be *be, const struct emu_batch *b, int kv_type) {
    const int ns = b->n_pages * BE_PAGE_SLOTS;
    const size_t bytes = sizeof(float) * (size_t)ns * EB_KVD;
    struct be_kv_layer kv = {.k = be_alloc(be, bytes), .v = be_alloc(be, bytes), .kv_type = kv_type};
    int32_t *slots = malloc(sizeof(int32_t) * ns);
    ck_assert(kv.k && kv.v && slots);
    for (int i = 0; i < ns; i++)
        slots[i] = i;
    be_kv_store(be, &kv, b->kin, b->vin, slots, ns, EB_KVD);
    free(slots);
    return kv;
}

/* Variant v (0..7) of the layer: cache type, window, soft-capping. */
static struct be_attn_params emu_params(int v, int window) {
    return (struct be_attn_params){.n_heads = EB_H, .n_kv_heads = EB_KVH, .head_dim = EB_D, .scale = 0.125f,
                                   .window = v & 2 ? window : 0, .softcap = v & 4 ? 30.0f : 0.0f};
}

/* A ragged batch (prefill, decode at 3 pages, a prefill chunk after 40
 * cached entries, a long decode over 13 pages) on shuffled pages, both cache
 * types, windows and soft-capping: the emulated kernel equals the CPU
 * backend's generic attention bitwise, rows outside the batch untouched. */
START_TEST(test_attention_emulated) {
    static const int past[] = {0, 35, 40, 190}, ntok[] = {21, 1, 9, 1};
    struct emu_batch b;
    emu_batch_init(&b, past, ntok, 4);
    struct be be = open_generic();
    const size_t nq = (size_t)b.n_rows * EB_QD;
    for (int v = 0; v < 8; v++) {
        struct be_kv_layer kv = emu_batch_cache(&be, &b, v & 1 ? BE_F16 : BE_F32);
        struct be_attn_params p = emu_params(v, 20);
        memcpy(b.o_cpu, b.q, sizeof(float) * nq);
        memcpy(b.o_emu, b.q, sizeof(float) * nq);
        be_attention(&be, b.o_cpu, b.q, &kv, b.seqs, b.n_seqs, &p);
        attn_emulate(b.o_emu, b.q, &kv, b.seqs, b.n_seqs, &p);
        for (size_t i = 0; i < nq; i++)
            ck_assert_msg(same_bits(b.o_emu[i], b.o_cpu[i]), "variant %d row %zu col %zu: %g vs cpu %g", v,
                          i / EB_QD, i % EB_QD, b.o_emu[i], b.o_cpu[i]);
        for (size_t i = (size_t)b.n_tok * EB_QD; i < nq; i++)
            ck_assert(same_bits(b.o_emu[i], b.q[i]));
        be_dealloc(&be, kv.k);
        be_dealloc(&be, kv.v);
    }
    emu_batch_free(&b);
    be_close(&be);
}
END_TEST

/* The split-K plan for every L up to 40000 keys under several caps: P = 1
 * exactly when L <= KCU_SPLIT_KEYS (or the cap forbids splitting), P <= cap,
 * whole chunks per partition, every partition non-empty, and kcu_split_pack
 * tiles [lo, hi] with them in order. */
START_TEST(test_split_plan) {
    static const int caps[] = {KCU_SPLIT_MAX, 5, 2, 1};
    for (int ci = 0; ci < 4; ci++)
        for (int64_t L = 1; L <= 40000; L++) {
            int64_t ps;
            const int cap = caps[ci], P = kcu_split_plan(L, cap, &ps);
            if (cap < 2 || L <= KCU_SPLIT_KEYS) {
                ck_assert_msg(P == 1 && ps == L, "L %lld cap %d: P %d", (long long)L, cap, P);
                continue;
            }
            ck_assert_msg(P >= 2 && P <= cap && ps % KCU_ATT_CHUNK == 0 && ps >= KCU_SPLIT_KEYS &&
                              (P - 1) * ps < L && L <= P * ps,
                          "L %lld cap %d: P %d ps %lld", (long long)L, cap, P, (long long)ps);
            ck_assert(ps == KCU_SPLIT_KEYS || P * KCU_SPLIT_KEYS < L); /* grown only at the cap */
        }
    struct kcu_attn_row row = {.lo = 7, .hi = 7 + 9999, .row = 3, .pages_off = 11}, parts[KCU_SPLIT_MAX];
    struct kcu_split_row comb[1];
    size_t n[3];
    kcu_split_pack(&row, 1, KCU_SPLIT_MAX, NULL, parts, comb, n);
    ck_assert(n[0] == 0 && n[2] == 1 && (int)n[1] == comb[0].n_part && comb[0].part0 == 0 && comb[0].row == 3);
    for (size_t k = 0; k < n[1]; k++) {
        ck_assert_int_eq(parts[k].lo, k ? parts[k - 1].hi + 1 : row.lo);
        ck_assert(parts[k].lo <= parts[k].hi && parts[k].row == 3 && parts[k].pages_off == 11);
    }
    ck_assert_int_eq(parts[n[1] - 1].hi, row.hi);
    ck_assert_int_eq(kcu_split_cap(EB_H, EB_D), KCU_SPLIT_MAX);
    ck_assert_int_lt(kcu_split_cap(128, 1024), KCU_SPLIT_MAX); /* a shape whose row fills the scratch */
    ck_assert_int_ge(kcu_split_slots(128, 1024), kcu_split_cap(128, 1024));
}
END_TEST

/* Split-K emulated (the partial and combine kernels' walk, from the same
 * kcu_math.h functions) against the CPU backend's generic attention, for
 * contexts of 1 to 4000 keys: decode rows around the split threshold and up
 * to 250 pages, a prefill chunk after 3000 cached entries, a prefill from 0;
 * F32 and F16 caches, a 1000-key window, soft-capping. Checked:
 *  - rows of one partition (L <= 256) are bitwise the CPU's (the unsplit walk);
 *  - split rows within |emu - cpu| <= 2e-6 + 2e-5 |cpu| (the same sums grouped
 *    by partition: float rounding only; outputs are weighted means of values
 *    in [-1, 1], and the largest error seen here is ~1.5e-7);
 *  - the same result bitwise under a tight scratch (launch groups of 40
 *    partitions) and each sequence run alone: the batch and its grouping do
 *    not change a row;
 *  - with the cap at 5 (partitions grown past KCU_SPLIT_KEYS) the same
 *    tolerance. */
START_TEST(test_attention_split_emulated) {
    static const int past[] = {0, 255, 256, 300, 511, 1000, 2047, 3999, 3000, 0},
                     ntok[] = {1, 1, 1, 1, 1, 1, 1, 1, 5, 40};
    enum { NS = 10 };
    struct emu_batch b;
    emu_batch_init(&b, past, ntok, NS);
    struct be be = open_generic();
    const size_t nq = (size_t)b.n_rows * EB_QD;
    float *o_alt = malloc(sizeof(float) * nq);
    ck_assert(o_alt);
    const int pcap = kcu_split_cap(EB_H, EB_D);
    const int64_t slots = kcu_split_slots(EB_H, EB_D);
    double worst = 0.0;
    for (int v = 0; v < 8; v++) {
        struct be_kv_layer kv = emu_batch_cache(&be, &b, v & 1 ? BE_F16 : BE_F32);
        struct be_attn_params p = emu_params(v, 1000);
        memcpy(b.o_cpu, b.q, sizeof(float) * nq);
        memcpy(b.o_emu, b.q, sizeof(float) * nq);
        be_attention(&be, b.o_cpu, b.q, &kv, b.seqs, NS, &p);
        attn_emulate_split(b.o_emu, b.q, &kv, b.seqs, NS, &p, pcap, slots);
        for (int s = 0; s < NS; s++)
            for (int j = 0; j < b.seqs[s].n_tok; j++) {
                int64_t lo, hi, ps;
                kcu_attn_range(b.seqs[s].n_past, j, p.window, &lo, &hi);
                const int P = kcu_split_plan(hi - lo + 1, pcap, &ps);
                const size_t r0 = (size_t)(b.seqs[s].tok0 + j) * EB_QD;
                for (size_t i = r0; i < r0 + EB_QD; i++) {
                    const float e = b.o_emu[i], c = b.o_cpu[i];
                    const double err = fabs((double)e - c);
                    worst = err > worst ? err : worst;
                    if (P == 1)
                        ck_assert_msg(same_bits(e, c), "v %d seq %d tok %d: %g vs cpu %g", v, s, j, e, c);
                    else
                        ck_assert_msg(err <= 2e-6 + 2e-5 * fabs(c), "v %d seq %d tok %d P %d: %g vs cpu %g", v,
                                      s, j, P, e, c);
                }
            }
        for (size_t i = (size_t)b.n_tok * EB_QD; i < nq; i++)
            ck_assert(same_bits(b.o_emu[i], b.q[i]));
        memcpy(o_alt, b.q, sizeof(float) * nq); /* tight scratch: several launch groups */
        attn_emulate_split(o_alt, b.q, &kv, b.seqs, NS, &p, pcap, 40);
        ck_assert(memcmp(o_alt, b.o_emu, sizeof(float) * nq) == 0);
        for (int s = 0; s < NS; s++) /* each sequence alone */
            attn_emulate_split(o_alt, b.q, &kv, &b.seqs[s], 1, &p, pcap, slots);
        ck_assert(memcmp(o_alt, b.o_emu, sizeof(float) * nq) == 0);
        attn_emulate_split(o_alt, b.q, &kv, b.seqs, NS, &p, 5, slots); /* partitions grown at the cap */
        for (size_t i = 0; i < (size_t)b.n_tok * EB_QD; i++)
            ck_assert_msg(fabs((double)o_alt[i] - b.o_cpu[i]) <= 2e-6 + 2e-5 * fabs(b.o_cpu[i]),
                          "v %d cap 5 row %zu: %g vs cpu %g", v, i / EB_QD, o_alt[i], b.o_cpu[i]);
        be_dealloc(&be, kv.k);
        be_dealloc(&be, kv.v);
    }
    printf("test_attention_split_emulated: largest |split - cpu| %.3e\n", worst);
    free(o_alt);
    emu_batch_free(&b);
    be_close(&be);
}
END_TEST

static Suite *cuda_math_suite(void) {
    Suite *s = suite_create("cuda_math");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_half);
    tcase_add_test(tc, test_type_geometry);
    tcase_add_test(tc, test_dequant);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_glu);
    tcase_add_test(tc, test_attention_split);
    tcase_add_test(tc, test_combine_empty);
    tcase_add_test(tc, test_softcap);
    tcase_add_test(tc, test_sub_compact);
    tcase_add_test(tc, test_gemm_operands);
    tcase_add_test(tc, test_attention_emulated);
    tcase_add_test(tc, test_split_plan);
    tcase_add_test(tc, test_attention_split_emulated);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    int failed = tu_check_run(cuda_math_suite());
    return failed != 0;
}
