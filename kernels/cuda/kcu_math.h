/* kcu_math.h - the arithmetic of the CUDA kernels, shared by host and device.
 *
 * Compiles as C (tests/unit/test_cuda_math.c checks it on the CPU against the
 * CPU backend and the kref_* references) and as CUDA (KCU_HD =
 * __host__ __device__ under nvcc). Every function works on one element, one
 * row or one pair of partial results, so a device kernel calls it per thread
 * and the CPU test calls it in a loop: the same source line computes both.
 *
 * Contents: half/bfloat conversions, dequantisation of one element of a block
 * (Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16, F32; layouts in
 * kernels/cpu/kcpu.h), the online softmax (running max and sum) and the
 * split-K combine of partial (max, sum, acc) triples with the split-K plan
 * (partitions of a long row, launch groups, the merged output), RoPE angles for both pair
 * conventions with freq factors, RMSNorm, SiLU / GELU(tanh), attention and
 * logit soft-capping, the paged attention's KV range and cache offsets, the
 * GEMM operand conversions (F16 saturating, BF16) and the SUBLLM compaction
 * index (exclusive prefix sum of the keep flags).
 *
 * NOTE (bitwise agreement): nvcc fuses a*b+c into one FMA by default, the CPU
 * backend is compiled with -ffp-contract=off. Products and sums that must
 * round like the CPU's go through kcu_mul/kcu_add/kcu_sub, which are the
 * non-contractible __fmul_rn/__fadd_rn/__fsub_rn on the device and plain
 * operators in C. What then still differs between host and device is the
 * libm: expf, tanhf, sin, cos, pow of CUDA are within a few ulp of glibc's, not
 * equal, so SiLU/GELU, softmax weights, soft-capping and RoPE angles may differ
 * in the last bits; dequantisation, RMSNorm's scaling of a row (given the same
 * sum of squares), the combine's arithmetic and the compaction index do not
 * (pure IEEE operations). The CPU test holds the C side bitwise to the CPU
 * backend's generic code where the formulas are the same.
 *
 * Thread: pure functions (no state), callable from any host thread or device
 * thread.
 */
#ifndef SS_KCU_MATH_H
#define SS_KCU_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/backend.h"

#if defined(__CUDACC__)
#define KCU_HD __host__ __device__
#else
#define KCU_HD
#endif
#define KCU_FN static inline KCU_HD

/* ------------------------------------------------------ exact fp32 steps */

#if defined(__CUDA_ARCH__)
KCU_FN float kcu_mul(float a, float b) { return __fmul_rn(a, b); }
KCU_FN float kcu_add(float a, float b) { return __fadd_rn(a, b); }
KCU_FN float kcu_sub(float a, float b) { return __fsub_rn(a, b); }
KCU_FN float kcu_bits_f32(uint32_t u) { return __uint_as_float(u); }
KCU_FN uint32_t kcu_f32_bits(float f) { return __float_as_uint(f); }
#else
KCU_FN float kcu_mul(float a, float b) { return a * b; }
KCU_FN float kcu_add(float a, float b) { return a + b; }
KCU_FN float kcu_sub(float a, float b) { return a - b; }
KCU_FN float kcu_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
KCU_FN uint32_t kcu_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
#endif

/* ------------------------------------------------------ half / bfloat */

/* IEEE half -> float, exact (NaN payloads kept). */
KCU_FN float kcu_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 31, m = h & 1023, u;
    if (e == 31) {
        u = sign | 0x7f800000u | (m << 13);
    } else if (e != 0) {
        u = sign | ((e + 112) << 23) | (m << 13);
    } else if (m == 0) {
        u = sign;
    } else { /* subnormal: renormalise (at most 10 steps) */
        uint32_t sh = 0;
        while (!(m & 1024)) {
            m <<= 1;
            sh++;
        }
        u = sign | ((113 - sh) << 23) | ((m & 1023) << 13);
    }
    return kcu_bits_f32(u);
}

/* float -> IEEE half, round to nearest even; overflow gives inf, NaN stays a
 * quiet NaN. (The KV cache's F16 store.) */
KCU_FN uint16_t kcu_f32_to_f16(float f) {
    uint32_t u = kcu_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a >= 0x7f800000u)
        return (uint16_t)(sign | 0x7c00 | (a > 0x7f800000u ? 0x200 | ((a >> 13) & 0x3ff) : 0));
    if (a >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00);
    if (a >= 0x38800000u) { /* normal half: rebias, round off 13 bits */
        uint32_t r = a - 0x38000000u, half = r >> 13, rem = r & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    if (a < 0x33000000u)
        return (uint16_t)sign;
    uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000; /* subnormal half */
    uint32_t sh = 126 - e, half = m >> sh, rem = m & ((1u << sh) - 1), mid = 1u << (sh - 1);
    if (rem > mid || (rem == mid && (half & 1)))
        half++;
    return (uint16_t)(sign | half);
}

KCU_FN float kcu_bf16_to_f32(uint16_t h) { return kcu_bits_f32((uint32_t)h << 16); }

/* float -> bfloat16, round to nearest even; NaN stays a quiet NaN. (The
 * activations fed to a BF16 GEMM.) */
KCU_FN uint16_t kcu_f32_to_bf16(float f) {
    uint32_t u = kcu_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* float -> half for a GEMM operand (weights dequantised at load, activations
 * before each F16 GEMM): round to nearest even, but a finite value past the
 * half range saturates to +-65504 instead of becoming inf (one huge
 * activation must not turn a whole output row into inf/NaN). NaN stays NaN. */
KCU_FN uint16_t kcu_f32_to_f16_sat(float f) {
    if (f > 65504.0f)
        f = 65504.0f;
    else if (f < -65504.0f)
        f = -65504.0f;
    return kcu_f32_to_f16(f);
}

/* The element type a weight of `type` is stored in on the device for cuBLAS:
 * F32 stays F32 (FP32 GEMM), BF16 stays BF16, F16 and every quantised type
 * become F16 (11 significant bits: closer to the dequantised value than BF16's
 * 8). The activations are converted to the same type on the device. */
KCU_FN int kcu_gemm_type(int type) {
    return type == BE_F32 ? BE_F32 : type == BE_BF16 ? BE_BF16 : BE_F16;
}

/* ------------------------------------------------------ dequantisation */

KCU_FN uint32_t kcu_rd16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

/* Elements and bytes per block of the types the CUDA kernels compute with;
 * 0 for any other type (also the CUDA side's type_supported answer). */
KCU_FN int kcu_type_blck(int type) {
    switch (type) {
    case BE_F32: case BE_F16: case BE_BF16: return 1;
    case BE_Q4_0: case BE_Q5_0: case BE_Q8_0: return 32;
    case BE_Q4_K: case BE_Q5_K: case BE_Q6_K: return 256;
    default: return 0;
    }
}
KCU_FN int kcu_type_size(int type) {
    switch (type) {
    case BE_F32: return 4;
    case BE_F16: case BE_BF16: return 2;
    case BE_Q4_0: return 18;
    case BE_Q5_0: return 22;
    case BE_Q8_0: return 34;
    case BE_Q4_K: return 144;
    case BE_Q5_K: return 176;
    case BE_Q6_K: return 210;
    default: return 0;
    }
}

/* 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K scales[12]. */
KCU_FN void kcu_k_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Element j of Q4_K (qh NULL) or Q5_K block b: (d*sc)*q - dmin*m. */
KCU_FN float kcu_dq_qk45(const uint8_t *b, const uint8_t *qh, const uint8_t *qs, int j) {
    int s = j >> 5, l = j & 31, sc, m;
    kcu_k_scale_min(s, b + 4, &sc, &m);
    float ds = kcu_mul(kcu_f16_to_f32((uint16_t)kcu_rd16(b)), (float)sc);
    float ms = kcu_mul(kcu_f16_to_f32((uint16_t)kcu_rd16(b + 2)), (float)m);
    int byte = qs[32 * (s >> 1) + l];
    int v = (s & 1) ? (byte >> 4) : (byte & 15);
    if (qh && ((qh[l] >> s) & 1))
        v += 16;
    return kcu_sub(kcu_mul(ds, (float)v), ms);
}

/* Element j of Q6_K block b: (d*scales[..])*(q-32). */
KCU_FN float kcu_dq_q6_k(const uint8_t *b, int j) {
    int h = j >> 7, k = (j & 127) >> 5, l = j & 31;
    int lb = b[64 * h + 32 * (k & 1) + l];
    int q = (k < 2 ? (lb & 15) : (lb >> 4)) | (((b[128 + 32 * h + l] >> (2 * k)) & 3) << 4);
    float d = kcu_f16_to_f32((uint16_t)kcu_rd16(b + 208));
    float ds = kcu_mul(d, (float)(int8_t)b[192 + 8 * h + l / 16 + 2 * k]);
    return kcu_mul(ds, (float)(q - 32));
}

/* Element j (0 <= j < kcu_type_blck(type)) of the block at b; 0 for a type
 * the kernels do not compute with. Equal bitwise to the CPU backend's scalar
 * dequantiser on both host and device. */
KCU_FN float kcu_dequant_elem(int type, const uint8_t *b, int j) {
    switch (type) {
    case BE_F32: return kcu_bits_f32((uint32_t)b[0] | ((uint32_t)b[1] << 8) |
                                     ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24));
    case BE_F16: return kcu_f16_to_f32((uint16_t)kcu_rd16(b));
    case BE_BF16: return kcu_bf16_to_f32((uint16_t)kcu_rd16(b));
    case BE_Q4_0: {
        int byte = b[2 + (j & 15)];
        return kcu_mul(kcu_f16_to_f32((uint16_t)kcu_rd16(b)), (float)((j < 16 ? byte & 15 : byte >> 4) - 8));
    }
    case BE_Q5_0: {
        uint32_t qh = kcu_rd16(b + 2) | (kcu_rd16(b + 4) << 16);
        int byte = b[6 + (j & 15)];
        int q = (j < 16 ? byte & 15 : byte >> 4) | (int)(((qh >> j) & 1) << 4);
        return kcu_mul(kcu_f16_to_f32((uint16_t)kcu_rd16(b)), (float)(q - 16));
    }
    case BE_Q8_0:
        return kcu_mul(kcu_f16_to_f32((uint16_t)kcu_rd16(b)), (float)(int8_t)b[2 + j]);
    case BE_Q4_K: return kcu_dq_qk45(b, NULL, b + 16, j);
    case BE_Q5_K: return kcu_dq_qk45(b, b + 16, b + 48, j);
    case BE_Q6_K: return kcu_dq_q6_k(b, j);
    default: return 0.0f;
    }
}

/* Element k of a row of n elements at row (bytes): k must be < n. */
KCU_FN float kcu_dequant_row_elem(int type, const uint8_t *row, int64_t k) {
    int bl = kcu_type_blck(type);
    if (bl == 0)
        return 0.0f;
    return kcu_dequant_elem(type, row + (size_t)(k / bl) * (size_t)kcu_type_size(type), (int)(k % bl));
}

/* ------------------------------------------------------ softmax */

/* Online softmax over a stream of scores, in chunks (as the CPU attention):
 *     mx   = largest score of the chunk
 *     corr = kcu_sm_rescale(&s, mx)     (new max; l *= corr; acc *= corr)
 *     p_i  = kcu_sm_weight(&s, score_i) (e^(score_i - m)); l += p_i; acc += p_i v_i
 *     out  = acc * kcu_sm_inv(&s)
 * m = -inf and l = 0 mean "no score yet". */
struct kcu_sm {
    float m; /* running max */
    float l; /* sum of e^(score - m) */
};

KCU_FN void kcu_sm_init(struct kcu_sm *s) {
    s->m = -INFINITY;
    s->l = 0.0f;
}
/* Returns the factor that rescales what was accumulated under the old max
 * (0 before the first chunk, 1 while the max holds) and applies it to l. */
KCU_FN float kcu_sm_rescale(struct kcu_sm *s, float mx) {
    float mnew = mx > s->m ? mx : s->m;
    float corr = s->m == -INFINITY ? 0.0f : expf(kcu_sub(s->m, mnew));
    s->m = mnew;
    s->l = kcu_mul(s->l, corr);
    return corr;
}
KCU_FN float kcu_sm_weight(const struct kcu_sm *s, float score) { return expf(kcu_sub(score, s->m)); }
KCU_FN float kcu_sm_inv(const struct kcu_sm *s) { return s->l > 0.0f ? 1.0f / s->l : 0.0f; }
/* The two sequential steps of a chunk of cnt scores (every thread of the
 * attention kernel runs them alike, so all hold the same m and l): the
 * chunk's largest score (-inf for none), and l += the chunk's weights in key
 * order. A chunk is then
 *     corr = kcu_sm_rescale(&s, kcu_chunk_max(sc, cnt));
 *     w_i = kcu_sm_weight(&s, sc_i);  kcu_sm_add(&s, w, cnt);
 *     acc[d] = kcu_attn_accum(acc[d], corr, w, ...)  */
KCU_FN float kcu_chunk_max(const float *sc, int cnt) {
    float mx = -INFINITY;
    for (int i = 0; i < cnt; i++)
        mx = sc[i] > mx ? sc[i] : mx;
    return mx;
}
KCU_FN void kcu_sm_add(struct kcu_sm *s, const float *w, int cnt) {
    for (int i = 0; i < cnt; i++)
        s->l = kcu_add(s->l, w[i]);
}

/* Split-K combine (flash decoding): partial a (max ma, sum la, acc_a) and
 * partial b over disjoint key ranges give the partial over their union:
 *     m = max(ma, mb), ca = e^(ma-m), cb = e^(mb-m)  (0 for an empty partial)
 *     l = la*ca + lb*cb,  acc[d] = acc_a[d]*ca + acc_b[d]*cb  (kcu_sm_mix)
 * Combining with an empty partial (m = -inf, l = 0) returns the other one
 * bitwise. */
KCU_FN void kcu_sm_combine(struct kcu_sm *a, const struct kcu_sm *b, float *ca, float *cb) {
    float m = a->m > b->m ? a->m : b->m;
    if (m == -INFINITY) {
        *ca = *cb = 0.0f;
        return;
    }
    *ca = a->m == -INFINITY ? 0.0f : (a->m == m ? 1.0f : expf(kcu_sub(a->m, m)));
    *cb = b->m == -INFINITY ? 0.0f : (b->m == m ? 1.0f : expf(kcu_sub(b->m, m)));
    a->m = m;
    a->l = kcu_add(kcu_mul(a->l, *ca), kcu_mul(b->l, *cb));
}
KCU_FN float kcu_sm_mix(float acc_a, float ca, float acc_b, float cb) {
    return kcu_add(kcu_mul(acc_a, ca), kcu_mul(acc_b, cb));
}

/* ------------------------------------------------------ paged attention */

/* KV positions token j of a sequence attends: [*lo, *hi] with
 * hi = n_past + j, lo = max(0, hi - window + 1) (window 0 = full causal). */
KCU_FN void kcu_attn_range(int32_t n_past, int32_t j, int32_t window, int64_t *lo, int64_t *hi) {
    *hi = (int64_t)n_past + j;
    int64_t l = window > 0 ? *hi - window + 1 : 0;
    *lo = l < 0 ? 0 : l;
}
/* Element offset of position P's K (or V) row of KV head g in a layer's cache
 * (pages = the sequence's block table):
 *   slot = pages[P / 16] * 16 + P % 16;  offset = slot * kv_dim + g * head_dim */
KCU_FN size_t kcu_kv_offset(const int32_t *pages, int64_t P, int kv_dim, int g, int head_dim) {
    size_t slot = (size_t)pages[P / BE_PAGE_SLOTS] * BE_PAGE_SLOTS + (size_t)(P % BE_PAGE_SLOTS);
    return slot * (size_t)kv_dim + (size_t)g * (size_t)head_dim;
}
/* Element i of a K/V cache of kv_type (BE_F16 or BE_F32). */
KCU_FN float kcu_kv_load(const void *cache, int kv_type, size_t i) {
    return kv_type == BE_F16 ? kcu_f16_to_f32(((const uint16_t *)cache)[i]) : ((const float *)cache)[i];
}

#define KCU_ATT_CHUNK 32      /* keys per step of the online softmax (as the CPU's) */
#define KCU_ATT_MAX_HEAD 1024 /* head_dim limit (backend.h) */

/* One query row of a ragged batch as the attention kernel sees it: q/out row
 * `row`, keys [lo, hi] (kcu_attn_range) of the block table at
 * pages + pages_off of the packed tables (kcu_attn_pack). */
struct kcu_attn_row {
    int64_t lo, hi;
    int32_t row;
    int32_t pages_off;
};
/* Pages of a sequence's block table that the step reads (n_past + n_tok
 * entries); 0 for a sequence without tokens. */
KCU_FN size_t kcu_attn_seq_pages(const struct be_attn_seq *s) {
    return s->n_tok <= 0 ? 0 : ((size_t)s->n_past + (size_t)s->n_tok + BE_PAGE_SLOTS - 1) / BE_PAGE_SLOTS;
}
/* Rows and pages of a batch, for sizing kcu_attn_pack's arrays. */
KCU_FN void kcu_attn_count(const struct be_attn_seq *seqs, int n_seqs, size_t *n_rows, size_t *n_pages) {
    *n_rows = *n_pages = 0;
    for (int s = 0; s < n_seqs; s++) {
        *n_rows += seqs[s].n_tok > 0 ? (size_t)seqs[s].n_tok : 0;
        *n_pages += kcu_attn_seq_pages(&seqs[s]);
    }
}
/* The host side of the attention launch: one row per query token, the
 * sequences' block tables concatenated (host memory; be_cuda.c uploads both
 * in one copy):
 *   rows:  s0 j0, s0 j1, ..., s1 j0, ...  -> {lo, hi, tok0 + j, offset of s's table}
 *   pages: [s0's table | s1's table | ...] */
KCU_FN void kcu_attn_pack(const struct be_attn_seq *seqs, int n_seqs, int32_t window,
                          struct kcu_attn_row *rows, int32_t *pages) {
    size_t r = 0, pg = 0;
    for (int s = 0; s < n_seqs; s++) {
        const struct be_attn_seq *q = &seqs[s];
        const size_t np = kcu_attn_seq_pages(q);
        for (size_t i = 0; i < np; i++)
            pages[pg + i] = q->pages[i];
        for (int32_t j = 0; j < q->n_tok; j++, r++) {
            kcu_attn_range(q->n_past, j, window, &rows[r].lo, &rows[r].hi);
            rows[r].row = q->tok0 + j;
            rows[r].pages_off = (int32_t)pg;
        }
        pg += np;
    }
}

/* ------------------------------------------------------ split-K attention */

/* Split-K (flash decoding) for long rows: the keys [lo, hi] of a row are cut
 * into P partitions of ps keys (the last one shorter); one block per (row,
 * head, partition) walks its partition as the unsplit kernel walks a row
 * (chunks of KCU_ATT_CHUNK from the partition's first key) and leaves the
 * unnormalised partial (m, l, acc[D]) in a scratch record; a combine block
 * per (row, head) merges the records in increasing partition order
 * (kcu_split_out) and normalises.
 *
 *   keys  lo                                                   hi
 *         |<-- ps -->|<-- ps -->|<-- ps -->| ...  |<- rest ->|
 *         part 0      part 1     part 2            part P-1
 *
 * The plan (kcu_split_plan) depends only on the row's own number of keys L
 * and on the layer's shape through pcap (kcu_split_cap): never on the batch,
 * the device or the thread count, so a row's output never depends on the
 * rest of the batch. L <= KCU_SPLIT_KEYS: one partition, i.e. the unsplit
 * kernel (bitwise its walk). Otherwise ps = KCU_SPLIT_KEYS (8 chunks: enough
 * work per block to hide the combine) until P would pass pcap; beyond that ps
 * grows (rounded up to whole chunks) so that P <= pcap. Every partition is
 * non-empty and starts on a chunk boundary of the unsplit walk, so partition 0
 * walks exactly the unsplit walk's first chunks.
 * NOTE: no number of SMs goes in: a fixed partition size keeps a row's
 * result the same on every GPU model (only CUDA's libm differs), and with
 * P up to 64 partitions times the heads a long decode row already yields
 * hundreds of blocks. */
#define KCU_SPLIT_KEYS 256 /* keys per partition up to the cap */
#define KCU_SPLIT_MAX 64   /* partitions per row at most */
/* Bytes of the device scratch of the partials, allocated once per context
 * (be_cuda.c kcu_ctx_open): a launch group holds as many partials as fit. */
#define KCU_SPLIT_SCRATCH ((size_t)32 << 20)

/* Floats of one partial record of a head: m, l, acc[head_dim]. */
KCU_FN size_t kcu_split_rec(int head_dim) { return (size_t)head_dim + 2; }
/* Partitions (all heads of each) the scratch holds for this layer shape. */
KCU_FN int64_t kcu_split_slots(int n_heads, int head_dim) {
    return (int64_t)(KCU_SPLIT_SCRATCH / sizeof(float) / ((size_t)n_heads * kcu_split_rec(head_dim)));
}
/* The most partitions a row of this layer shape gets: KCU_SPLIT_MAX, less if
 * one row's partials would not fit the scratch (< 2: never split). */
KCU_FN int kcu_split_cap(int n_heads, int head_dim) {
    int64_t s = kcu_split_slots(n_heads, head_dim);
    return s < KCU_SPLIT_MAX ? (int)s : KCU_SPLIT_MAX;
}
/* Partitions P of a row of L keys (L >= 1) under the cap pcap, and their
 * size in keys *ps (a multiple of KCU_ATT_CHUNK); P = 1 (ps = L): unsplit. */
KCU_FN int kcu_split_plan(int64_t L, int pcap, int64_t *ps) {
    if (pcap < 2 || L <= KCU_SPLIT_KEYS) {
        *ps = L;
        return 1;
    }
    int64_t s = KCU_SPLIT_KEYS;
    if ((L + s - 1) / s > pcap) {
        s = (L + pcap - 1) / pcap;
        s = (s + KCU_ATT_CHUNK - 1) / KCU_ATT_CHUNK * KCU_ATT_CHUNK;
    }
    *ps = s;
    return (int)((L + s - 1) / s);
}

/* One split row as the combine kernel sees it: q/out row `row`, its
 * partitions part0 .. part0 + n_part - 1 (indices into the partition rows). */
struct kcu_split_row {
    int32_t row;
    int32_t part0;
    int32_t n_part;
    int32_t pad;
};
/* Sorts the rows of kcu_attn_pack by the plan: rows with one partition to
 * plain[] (the unsplit kernel), every partition of the others to parts[] as a
 * row of its own (same row and table, keys of the partition; in row order,
 * then partition order) and one entry per split row to comb[]. Any output
 * may be NULL to count only; n[0..2] = entries of plain, parts, comb.
 * pcap 1 (or less): nothing is split. */
KCU_FN void kcu_split_pack(const struct kcu_attn_row *rows, size_t n_rows, int pcap,
                           struct kcu_attn_row *plain, struct kcu_attn_row *parts,
                           struct kcu_split_row *comb, size_t n[3]) {
    n[0] = n[1] = n[2] = 0;
    for (size_t r = 0; r < n_rows; r++) {
        int64_t ps;
        const int P = kcu_split_plan(rows[r].hi - rows[r].lo + 1, pcap, &ps);
        if (P == 1) {
            if (plain)
                plain[n[0]] = rows[r];
            n[0]++;
            continue;
        }
        if (comb) {
            comb[n[2]].row = rows[r].row;
            comb[n[2]].part0 = (int32_t)n[1];
            comb[n[2]].n_part = P;
            comb[n[2]].pad = 0;
        }
        n[2]++;
        for (int k = 0; k < P; k++, n[1]++) {
            if (!parts)
                continue;
            parts[n[1]] = rows[r];
            parts[n[1]].lo = rows[r].lo + (int64_t)k * ps;
            parts[n[1]].hi = k == P - 1 ? rows[r].hi : parts[n[1]].lo + ps - 1;
        }
    }
}
/* A launch group: split rows [c0, returned end) whose partitions fit `slots`
 * records of the scratch (at least one row: kcu_split_cap keeps one row's
 * partitions within it). Groups run one after the other through the scratch. */
KCU_FN size_t kcu_split_group(const struct kcu_split_row *comb, size_t n_comb, size_t c0, int64_t slots) {
    size_t c = c0 + 1;
    const int64_t base = comb[c0].part0;
    while (c < n_comb && comb[c].part0 + comb[c].n_part - base <= slots)
        c++;
    return c;
}
/* Element d of a split row's output (one head): the records of its n
 * partitions, rec[k * stride] = {m_k, l_k, acc_k[D]}, merged in increasing k
 * by kcu_sm_combine / kcu_sm_mix, then normalised. Partition 0 comes out of
 * the first merge bitwise (merging into an empty partial). */
KCU_FN float kcu_split_out(const float *rec, size_t stride, int n, int d) {
    struct kcu_sm t;
    float a = 0.0f, ca, cb;
    kcu_sm_init(&t);
    for (int k = 0; k < n; k++) {
        const float *r = rec + (size_t)k * stride;
        struct kcu_sm pk = {r[0], r[1]};
        kcu_sm_combine(&t, &pk, &ca, &cb);
        a = kcu_sm_mix(a, ca, r[2 + d], cb);
    }
    return kcu_mul(a, kcu_sm_inv(&t));
}

/* ------------------------------------------------------ soft-capping */

/* cap * tanh(x / cap) for cap > 0, x unchanged otherwise (final logits). */
KCU_FN float kcu_softcap(float x, float cap) { return cap > 0.0f ? cap * tanhf(x / cap) : x; }
/* One attention logit: scale * q.k, then soft-capped (as the CPU attention). */
KCU_FN float kcu_att_logit(float dot, float scale, float cap) { return kcu_softcap(kcu_mul(dot, scale), cap); }

/* The attention kernel's two inner steps (kcu_attn.cu), shared with the
 * host emulation in test_cuda_math:
 * the soft-capped, scaled logit of q [D] against the K row at element off,
 * a sequential dot product (as the CPU's generic kernel); */
KCU_FN float kcu_attn_score(const float *q, const void *kc, int kv_type, size_t off, int D,
                            float scale, float softcap) {
    float dot = 0.0f;
    for (int d = 0; d < D; d++)
        dot = kcu_add(dot, kcu_mul(q[d], kcu_kv_load(kc, kv_type, off + d)));
    return kcu_att_logit(dot, scale, softcap);
}
/* and element d of the accumulator after a chunk of cnt keys with softmax
 * weights w[] and V rows at offs[]: acc*corr + sum_i w_i v_i[d], in key order. */
KCU_FN float kcu_attn_accum(float acc, float corr, const float *w, const size_t *offs, int cnt,
                            const void *vc, int kv_type, int d) {
    float a = kcu_mul(acc, corr);
    for (int i = 0; i < cnt; i++)
        a = kcu_add(a, kcu_mul(w[i], kcu_kv_load(vc, kv_type, offs[i] + d)));
    return a;
}

/* ------------------------------------------------------ RoPE */

/* Inverse frequency of pair i: base^(-2i/n_rot) / freq_factors[i], in double. */
KCU_FN double kcu_rope_inv_freq(int i, int n_rot, float theta_base, const float *freq_factors) {
    double v = pow((double)theta_base, -2.0 * i / n_rot);
    if (freq_factors)
        v /= (double)freq_factors[i];
    return v;
}
/* cos and sin of the angle pos * freq_scale * inv, computed in double. */
KCU_FN void kcu_rope_cs(int32_t pos, float freq_scale, double inv, float *cs, float *sn) {
    double th = (double)pos * (double)freq_scale * inv;
    *cs = (float)cos(th);
    *sn = (float)sin(th);
}
/* Elements of pair i (of n_rot/2): neox (i, i + n_rot/2), else (2i, 2i+1). */
KCU_FN void kcu_rope_pair(int neox, int i, int n_rot, int *i0, int *i1) {
    *i0 = neox ? i : 2 * i;
    *i1 = neox ? i + n_rot / 2 : 2 * i + 1;
}
/* (a, b) rotated: (a cs - b sn, a sn + b cs), each product rounded. */
KCU_FN void kcu_rope_rotate(float *a, float *b, float cs, float sn) {
    float x = *a, y = *b;
    *a = kcu_sub(kcu_mul(x, cs), kcu_mul(y, sn));
    *b = kcu_add(kcu_mul(x, sn), kcu_mul(y, cs));
}

/* ------------------------------------------------------ RMSNorm */

/* 1 / sqrt(ss/dim + eps) from the row's sum of squares ss (double). */
KCU_FN float kcu_rms_scale(double ss, int dim, float eps) {
    return 1.0f / sqrtf(kcu_add((float)(ss / dim), eps));
}
/* One output element: (x * sc) * w, or x * sc without a weight. */
KCU_FN float kcu_rms_apply(float x, float sc, const float *w, int k) {
    float v = kcu_mul(x, sc);
    return w ? kcu_mul(v, w[k]) : v;
}
/* A whole row, sequentially (the host's reference use; the device sums the
 * squares in a block reduction and calls the two functions above). */
KCU_FN void kcu_rmsnorm_row(float *out, const float *x, const float *w, int dim, float eps) {
    double ss = 0.0;
    for (int k = 0; k < dim; k++)
        ss += (double)x[k] * x[k];
    float sc = kcu_rms_scale(ss, dim, eps);
    for (int k = 0; k < dim; k++)
        out[k] = kcu_rms_apply(x[k], sc, w, k);
}

/* ------------------------------------------------------ activations */

/* x / (1 + e^-x) */
KCU_FN float kcu_silu(float x) { return x / kcu_add(1.0f, expf(-x)); }
/* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
KCU_FN float kcu_gelu_tanh(float x) {
    float x3 = kcu_mul(kcu_mul(kcu_mul(0.044715f, x), x), x);
    float t = tanhf(kcu_mul(0.7978845608028654f, kcu_add(x, x3)));
    return kcu_mul(kcu_mul(0.5f, x), kcu_add(1.0f, t));
}
/* act(g) * u; act 0 = SiLU, 1 = GELU(tanh) (the backend's glu op). */
KCU_FN float kcu_glu(float g, float u, int act) {
    return kcu_mul(act == 0 ? kcu_silu(g) : kcu_gelu_tanh(g), u);
}

/* ------------------------------------------------------ SUBLLM compaction */

/* A row is kept iff its score is > 0 (NaN: dropped); its weight is
 * min(score, 1) (engine/subllm.c). */
KCU_FN int kcu_sub_keep(float score) { return score > 0.0f; }
KCU_FN float kcu_sub_weight(float score) { return score < 1.0f ? score : 1.0f; }
/* Exclusive prefix sum of the keep flags of scores[n]: idx[i] = number of
 * kept rows before row i (row i goes to idx[i] in the compacted frame if
 * kept). Returns the number kept. The device computes the same sums with a
 * block scan; this sequential form is their reference. */
KCU_FN int32_t kcu_sub_compact_index(const float *scores, int32_t n, int32_t *idx) {
    int32_t c = 0;
    for (int32_t i = 0; i < n; i++) {
        idx[i] = c;
        c += kcu_sub_keep(scores[i]);
    }
    return c;
}

#endif
