/* types.c - ggml/GGUF tensor type geometry, half-precision conversions and the
 * scalar dequantiser used by the generic (no SIMD) kernels and get_rows.
 *
 * Geometry is listed for every type a GGUF file may carry (so a loader can size
 * tensors it will not compute with); kcpu_type_supported() says which the CPU
 * kernels compute with. Block layouts: see kcpu.h.
 */
#include <math.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/cpu/kcpu.h"

static const struct be_type_info type_table[BE_TYPE_COUNT] = {
    [0] = {"f32", 1, 4},
    [1] = {"f16", 1, 2},
    [2] = {"q4_0", 32, 18},
    [3] = {"q4_1", 32, 20},
    [6] = {"q5_0", 32, 22},
    [7] = {"q5_1", 32, 24},
    [8] = {"q8_0", 32, 34},
    [9] = {"q8_1", 32, 36},
    [10] = {"q2_K", 256, 84},
    [11] = {"q3_K", 256, 110},
    [12] = {"q4_K", 256, 144},
    [13] = {"q5_K", 256, 176},
    [14] = {"q6_K", 256, 210},
    [15] = {"q8_K", 256, 292},
    [16] = {"iq2_xxs", 256, 66},
    [17] = {"iq2_xs", 256, 74},
    [18] = {"iq3_xxs", 256, 98},
    [19] = {"iq1_s", 256, 50},
    [20] = {"iq4_nl", 32, 18},
    [21] = {"iq3_s", 256, 110},
    [22] = {"iq2_s", 256, 82},
    [23] = {"iq4_xs", 256, 136},
    [24] = {"i8", 1, 1},
    [25] = {"i16", 1, 2},
    [26] = {"i32", 1, 4},
    [27] = {"i64", 1, 8},
    [28] = {"f64", 1, 8},
    [29] = {"iq1_m", 256, 56},
    [30] = {"bf16", 1, 2},
    [34] = {"tq1_0", 256, 54},
    [35] = {"tq2_0", 256, 66},
    [39] = {"mxfp4", 32, 17},
};

const struct be_type_info *be_type_get(int type) {
    if (type < 0 || type >= BE_TYPE_COUNT || type_table[type].name == NULL)
        return NULL;
    return &type_table[type];
}

size_t be_row_bytes(int type, int64_t n) {
    const struct be_type_info *ti = be_type_get(type);
    if (!ti || n < 0 || n % ti->blck != 0)
        return 0;
    return (size_t)(n / ti->blck) * (size_t)ti->size;
}

int kcpu_type_supported(int type) {
    switch (type) {
    case BE_F32: case BE_F16: case BE_BF16: case BE_Q8_0: case BE_Q4_0: case BE_Q5_0:
    case BE_Q4_K: case BE_Q5_K: case BE_Q6_K:
        return 1;
    default:
        return 0;
    }
}

float kcpu_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 31, m = h & 1023, u;
    if (e == 31) {
        u = sign | 0x7f800000u | (m << 13); /* inf / nan */
    } else if (e != 0) {
        u = sign | ((e + 112) << 23) | (m << 13);
    } else if (m == 0) {
        u = sign;
    } else { /* subnormal: renormalise */
        int sh = 0;
        while (!(m & 1024)) {
            m <<= 1;
            sh++;
        }
        u = sign | ((uint32_t)(113 - sh) << 23) | ((m & 1023) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t kcpu_fp32_to_fp16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf or nan (quiet nan kept quiet) */
        return (uint16_t)(sign | 0x7c00 | (a > 0x7f800000u ? 0x200 | ((a >> 13) & 0x3ff) : 0));
    if (a >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (a >= 0x38800000u) { /* normal half */
        uint32_t r = a - 0x38000000u; /* rebias exponent by (127-15)<<23 */
        uint32_t half = r >> 13, rem = r & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    if (a < 0x33000000u) /* below half of the smallest subnormal: +-0 */
        return (uint16_t)sign;
    /* subnormal half: value = m * 2^-24 */
    uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000;
    int sh = (int)(126 - e); /* 24-bit mantissa to units of 2^-24: 14..24 */
    uint32_t half = m >> sh, rem = m & ((1u << sh) - 1), mid = 1u << (sh - 1);
    if (rem > mid || (rem == mid && (half & 1)))
        half++;
    return (uint16_t)(sign | half);
}

static void dq_q4_0(const uint8_t *b, float *y) {
    float d = kcpu_fp16_to_fp32(kcpu_rd16(b));
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((qs[j] & 15) - 8);
        y[j + 16] = d * (float)((qs[j] >> 4) - 8);
    }
}

static void dq_q5_0(const uint8_t *b, float *y) {
    float d = kcpu_fp16_to_fp32(kcpu_rd16(b));
    uint32_t qh = kcpu_rd32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 15) | (int)(((qh >> j) & 1) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = d * (float)(lo - 16);
        y[j + 16] = d * (float)(hi - 16);
    }
}

static void dq_q8_0(const uint8_t *b, float *y) {
    float d = kcpu_fp16_to_fp32(kcpu_rd16(b));
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++)
        y[j] = d * (float)qs[j];
}

/* Q4_K and Q5_K share everything but the fifth bit (qh NULL for Q4_K). */
static void dq_qk45(const uint8_t *b, const uint8_t *qh, const uint8_t *qs, float *y) {
    float d = kcpu_fp16_to_fp32(kcpu_rd16(b));
    float dmin = kcpu_fp16_to_fp32(kcpu_rd16(b + 2));
    const uint8_t *scales = b + 4;
    for (int s = 0; s < 8; s++) {
        int sc, m;
        kcpu_k_scale_min(s, scales, &sc, &m);
        float ds = d * (float)sc, ms = dmin * (float)m;
        const uint8_t *q = qs + 32 * (s / 2);
        for (int l = 0; l < 32; l++) {
            int v = (s & 1) ? (q[l] >> 4) : (q[l] & 15);
            if (qh && ((qh[l] >> s) & 1))
                v += 16;
            y[32 * s + l] = ds * (float)v - ms;
        }
    }
}

static void dq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = kcpu_fp16_to_fp32(kcpu_rd16(b + 208));
    for (int h = 0; h < 2; h++) {
        for (int k = 0; k < 4; k++) {
            for (int l = 0; l < 32; l++) {
                uint8_t lb = ql[64 * h + 32 * (k & 1) + l];
                int q = (k < 2 ? (lb & 15) : (lb >> 4)) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
                float ds = d * (float)sc[8 * h + l / 16 + 2 * k];
                y[128 * h + 32 * k + l] = ds * (float)(q - 32);
            }
        }
    }
}

void kcpu_dequant_row_scalar(int type, const uint8_t *src, float *dst, int64_t n) {
    const struct be_type_info *ti = be_type_get(type);
    if (!ti || !kcpu_type_supported(type) || n % ti->blck) {
        memset(dst, 0, sizeof(float) * (size_t)(n > 0 ? n : 0));
        return;
    }
    int64_t nb = n / ti->blck;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = src + (size_t)i * (size_t)ti->size;
        float *y = dst + i * ti->blck;
        switch (type) {
        case BE_F32: memcpy(y, b, 4); break;
        case BE_F16: y[0] = kcpu_fp16_to_fp32(kcpu_rd16(b)); break;
        case BE_BF16: y[0] = kcpu_bf16_to_fp32(kcpu_rd16(b)); break;
        case BE_Q4_0: dq_q4_0(b, y); break;
        case BE_Q5_0: dq_q5_0(b, y); break;
        case BE_Q8_0: dq_q8_0(b, y); break;
        case BE_Q4_K: dq_qk45(b, NULL, b + 16, y); break;
        case BE_Q5_K: dq_qk45(b, b + 16, b + 48, y); break;
        case BE_Q6_K: dq_q6_k(b, y); break;
        default: break;
        }
    }
}
