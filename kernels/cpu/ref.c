/* ref.c - scalar reference routines: plain C written straight from the format
 * definitions, no SIMD, no threads, no sharing with the optimised kernels.
 * Used only by tests (and as the yardstick the kernels are compared against).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/q8.h"

static unsigned rd_u16(const unsigned char *p) { return p[0] | (p[1] << 8); }

float kref_fp16_to_fp32(uint16_t h) {
    int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 0)
        v = ldexpf((float)m, -24); /* subnormal (or zero) */
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexpf((float)(m + 1024), e - 25); /* 1.m * 2^(e-15) */
    return sign ? -v : v;
}

uint16_t kref_fp32_to_fp16(float f) {
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    float a = fabsf(f);
    if (isnan(f))
        return sign | 0x7e00;
    if (a == 0.0f)
        return sign;
    if (isinf(a))
        return sign | 0x7c00;
    int e;
    frexpf(a, &e); /* a = fr * 2^e, fr in [0.5, 1) */
    int exp_h = e - 1 + 15; /* biased half exponent if normal */
    double q;               /* value in units of the half's last place */
    if (exp_h >= 1)
        q = ldexp((double)a, 10 - (e - 1));
    else
        q = ldexp((double)a, 24); /* subnormal: units of 2^-24 */
    double r = nearbyint(q); /* default mode: round half to even */
    if (exp_h < 1) {
        /* subnormal (r may reach 1024, the smallest normal: encoding matches) */
        return sign | (uint16_t)r;
    }
    if (r >= 2048.0) { /* mantissa rounded up to the next binade */
        r /= 2;
        exp_h++;
    }
    if (exp_h >= 31)
        return sign | 0x7c00;
    return sign | (uint16_t)(exp_h << 10) | (uint16_t)((int)r - 1024);
}

float kref_bf16_to_fp32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* 6-bit scale/min pair j (0..7) of the K-quant 12-byte scales array:
 * bytes 0-3 hold sc0..3 (low 6 bits) with the top 2 bits of sc4..7,
 * bytes 4-7 hold m0..3 with the top 2 bits of m4..7,
 * bytes 8-11 hold the low 4 bits of sc4..7 (low nibble) and m4..7 (high nibble). */
static void ref_scale_min(int j, const unsigned char *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] % 64;
        *m = s[4 + j] % 64;
    } else {
        *sc = s[8 + j - 4] % 16 + 16 * (s[j - 4] / 64);
        *m = s[8 + j - 4] / 16 + 16 * (s[j] / 64);
    }
}

/* Block b of a quantised type as integers: element i is
 *     x[i] = (d * sc[i]) * q[i] - dmin * m[i]
 * (32-element types: sc = 1, m = 0, dmin = 0). Returns the elements per block. */
static int ref_parts(int type, const unsigned char *b, int *q, int *sc, int *m, float *d, float *dmin) {
    *dmin = 0.0f;
    switch (type) {
    case BE_Q4_0:
    case BE_Q5_0:
    case BE_Q8_0: {
        *d = kref_fp16_to_fp32(rd_u16(b));
        unsigned long qh = type != BE_Q5_0 ? 0
                           : b[2] | (b[3] << 8) | ((unsigned long)b[4] << 16) | ((unsigned long)b[5] << 24);
        for (int i = 0; i < 32; i++) {
            int byte = b[(type == BE_Q5_0 ? 6 : 2) + i % 16];
            int nib = i < 16 ? byte % 16 : byte / 16;
            if (type == BE_Q4_0)
                q[i] = nib - 8;
            else if (type == BE_Q5_0)
                q[i] = nib + 16 * (int)((qh >> i) & 1) - 16;
            else
                q[i] = (signed char)b[2 + i];
            sc[i] = 1;
            m[i] = 0;
        }
        return 32;
    }
    case BE_Q4_K:
    case BE_Q5_K: {
        *d = kref_fp16_to_fp32(rd_u16(b));
        *dmin = kref_fp16_to_fp32(rd_u16(b + 2));
        const unsigned char *scales = b + 4;
        const unsigned char *qh = type == BE_Q5_K ? b + 16 : NULL;
        const unsigned char *qs = type == BE_Q5_K ? b + 48 : b + 16;
        for (int i = 0; i < 256; i++) {
            int sub = i / 32, l = i % 32;
            int byte = qs[32 * (sub / 2) + l];
            q[i] = sub % 2 == 0 ? byte % 16 : byte / 16;
            if (qh)
                q[i] += 16 * ((qh[l] >> sub) & 1);
            ref_scale_min(sub, scales, &sc[i], &m[i]);
        }
        return 256;
    }
    case BE_Q6_K: {
        const unsigned char *ql = b, *qh = b + 128;
        const signed char *s = (const signed char *)(b + 192);
        *d = kref_fp16_to_fp32(rd_u16(b + 208));
        for (int i = 0; i < 256; i++) {
            int half = i / 128, k = (i % 128) / 32, l = i % 32;
            int byte = ql[64 * half + 32 * (k % 2) + l];
            int low = k < 2 ? byte % 16 : byte / 16;
            int high = (qh[32 * half + l] >> (2 * k)) % 4;
            q[i] = low + 16 * high - 32;
            sc[i] = s[8 * half + 2 * k + l / 16];
            m[i] = 0;
        }
        return 256;
    }
    default:
        return 0;
    }
}

/* 1 for the block types ref_block implements. */
static int ref_block_type(int type) {
    return type == BE_Q4_0 || type == BE_Q5_0 || type == BE_Q8_0 || type == BE_Q4_K ||
           type == BE_Q5_K || type == BE_Q6_K;
}

static void ref_block(int type, const unsigned char *b, float *y) {
    int q[256], sc[256], m[256];
    float d, dmin;
    int n = ref_parts(type, b, q, sc, m, &d, &dmin);
    for (int i = 0; i < n; i++)
        y[i] = (d * (float)sc[i]) * (float)q[i] - dmin * (float)m[i];
}

void kref_dequant_row(int type, const void *src, float *dst, int64_t n) {
    const unsigned char *p = src;
    switch (type) {
    case BE_F32:
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    case BE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = kref_fp16_to_fp32(rd_u16(p + 2 * i));
        return;
    case BE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = kref_bf16_to_fp32(rd_u16(p + 2 * i));
        return;
    default:
        break;
    }
    const struct be_type_info *ti = be_type_get(type);
    if (!ti || !ref_block_type(type) || n % ti->blck) {
        for (int64_t i = 0; i < n; i++)
            dst[i] = 0.0f;
        return;
    }
    for (int64_t i = 0; i < n / ti->blck; i++)
        ref_block(type, p + i * ti->size, dst + i * ti->blck);
}

void kref_matmul(float *y, const float *x, const struct be_tensor *w, int n) {
    int64_t K = w->ne[0], R = w->ne[1];
    const unsigned char *base = w->be_data ? w->be_data : w->data;
    float *row = malloc(sizeof(float) * (size_t)(K > 0 ? K : 1));
    if (!row)
        return;
    for (int64_t r = 0; r < R; r++) {
        kref_dequant_row(w->type, base + (size_t)r * w->nb1, row, K);
        for (int t = 0; t < n; t++) {
            double s = 0.0;
            for (int64_t k = 0; k < K; k++)
                s += (double)row[k] * (double)x[(size_t)t * K + k];
            y[(size_t)t * R + r] = (float)s;
        }
    }
    free(row);
}

/* The int8 activation rule of kernels/cpu/q8.h, written from its definition. */
static void ref_q8_block(const float *x, int B, float *d, int *q) {
    float amax = 0.0f;
    for (int i = 0; i < B; i++)
        if (fabsf(x[i]) > amax)
            amax = fabsf(x[i]);
    *d = amax / 127.0f;
    float id = *d > 0.0f ? 1.0f / *d : 0.0f;
    for (int i = 0; i < B; i++) {
        float v = x[i] * id;
        if (isnan(v))
            v = 0.0f;
        v = nearbyintf(v);
        q[i] = v > 127.0f ? 127 : (v < -127.0f ? -127 : (int)v);
    }
}

double kref_dot_q8(int type, const void *wrow, const float *x, int64_t K) {
    const struct be_type_info *ti = be_type_get(type);
    int B = type == BE_Q4_K || type == BE_Q5_K || type == BE_Q6_K ? 256 : 32;
    if (!ti || ti->blck != B || K % B || (B == 32 && type != BE_Q4_0 && type != BE_Q5_0 && type != BE_Q8_0))
        return 0.0;
    int q[256], sc[256], m[256], xq[256];
    float d, dmin, dx;
    double y = 0.0;
    for (int64_t b = 0; b < K / B; b++) {
        ref_parts(type, (const unsigned char *)wrow + b * ti->size, q, sc, m, &d, &dmin);
        ref_q8_block(x + b * B, B, &dx, xq);
        long long main_sum = 0, min_sum = 0; /* exact */
        for (int i = 0; i < B; i++) {
            main_sum += (long long)sc[i] * q[i] * xq[i];
            min_sum += (long long)m[i] * xq[i];
        }
        y += (double)d * dx * (double)main_sum - (double)dmin * dx * (double)min_sum;
    }
    return y;
}

void kref_lte_ffn(float *y, const float *x, const uint8_t *mask, int n, const struct be_lte_ffn *p) {
    const int E = p->n_experts, S = p->expert_size;
    const int64_t dim = p->gate->ne[0];
    float *row = malloc(sizeof(float) * (size_t)(dim > S ? dim : S));
    double *h = malloc(sizeof(double) * (size_t)S);
    if (!row || !h) {
        free(row);
        free(h);
        return;
    }
    for (int t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * dim;
        double *acc = calloc((size_t)dim, sizeof *acc);
        for (int e = 0; e < E && acc; e++) {
            if (!mask[(size_t)t * E + e])
                continue;
            for (int j = 0; j < S; j++) {
                double gu[2];
                for (int part = 0; part < 2; part++) {
                    const struct be_tensor *w = part ? p->up : p->gate;
                    const unsigned char *base = w->be_data ? w->be_data : w->data;
                    kref_dequant_row(w->type, base + (size_t)(e * S + j) * w->nb1, row, dim);
                    double s = 0.0;
                    for (int64_t k = 0; k < dim; k++)
                        s += (double)row[k] * (double)xt[k];
                    gu[part] = s;
                }
                double g = gu[0], a;
                if (p->act == 0)
                    a = g / (1.0 + exp(-g));
                else
                    a = 0.5 * g * (1.0 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
                h[j] = a * gu[1];
            }
            const unsigned char *dbase = p->down->be_data ? p->down->be_data : p->down->data;
            for (int64_t d = 0; d < dim; d++) {
                kref_dequant_row(p->down->type, dbase + (size_t)((int64_t)e * dim + d) * p->down->nb1, row, S);
                for (int j = 0; j < S; j++)
                    acc[d] += (double)row[j] * h[j];
            }
        }
        for (int64_t d = 0; d < dim; d++)
            y[(size_t)t * dim + d] = acc ? (float)acc[d] : 0.0f;
        free(acc);
    }
    free(row);
    free(h);
}
