/* genmodel.c - deterministic synthetic llama/qwen2/gemma3/subllm GGUF models (see genmodel.h
 * for the exact file contents) and the `slimserve gen-model` command.
 *
 * Tensors are registered with the GGUF writer as generator callbacks, so even
 * a 300M-parameter f32 model is written one tensor at a time. Each tensor's
 * values come from its own splitmix64 stream seeded by (seed, name): integer
 * draws scaled by one float multiply, so no libm call and no order dependence
 * can change a byte.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "kernels/backend.h"
#include "tools/genmodel.h"

/* ------------------------------------------------------------------- opts */

void genmodel_opts_default(struct genmodel_opts *o) {
    memset(o, 0, sizeof *o);
    o->arch = "llama";
    o->tokenizer = "spm";
    o->name = NULL;
    o->dim = 64;
    o->n_layers = 2;
    o->n_heads = 4;
    o->n_kv_heads = 2;
    o->ffn_dim = 192;
    o->n_vocab = 512;
    o->n_ctx = 512;
    o->wtype = BE_F32;
    o->seed = 1;
    o->tied = 0;
    o->rope_theta = 10000.0f;
    o->norm_eps = 1e-5f;
    o->keep = 0.5f;
    o->keep_noise = 0.1f;
    o->lte_sparsity = 0.5f;
}

struct gm_preset {
    const char *size;
    int dim, n_layers, n_heads, n_kv_heads, ffn_dim, n_vocab, n_ctx;
};

/* Head dim 32 (1M) or 64; every row length a multiple of 32 (Q8_0 blocks). */
static const struct gm_preset presets[] = {
    {"1M", 128, 4, 4, 2, 352, 1024, 1024},
    {"10M", 256, 10, 8, 4, 704, 4096, 2048},
    {"100M", 768, 14, 12, 4, 2048, 8192, 2048},
    {"300M", 1024, 22, 16, 8, 2816, 16384, 4096},
};

int genmodel_opts_preset(struct genmodel_opts *o, const char *size) {
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        const struct gm_preset *p = &presets[i];
        if (size && strcmp(size, p->size) == 0) {
            o->dim = p->dim;
            o->n_layers = p->n_layers;
            o->n_heads = p->n_heads;
            o->n_kv_heads = p->n_kv_heads;
            o->ffn_dim = p->ffn_dim;
            o->n_vocab = p->n_vocab;
            o->n_ctx = p->n_ctx;
            return 0;
        }
    }
    return SS_EINVAL;
}

static const char *wtype_name(int t) {
    switch (t) {
    case BE_F32: return "f32";
    case BE_F16: return "f16";
    case BE_BF16: return "bf16";
    case BE_Q8_0: return "q8_0";
    case BE_Q4_0: return "q4_0";
    default: return NULL;
    }
}

/* llama.cpp's general.file_type (enum llama_ftype) for the matrix type. */
static uint32_t wtype_ftype(int t) {
    return t == BE_F16 ? 1 : t == BE_Q8_0 ? 7 : t == BE_Q4_0 ? 2 : t == BE_BF16 ? 32 : 0;
}

/* Architecture of the options: 0 llama, 1 qwen2, 2 gemma3, 3 subllm, -1 unknown. */
enum { GM_LLAMA, GM_QWEN2, GM_GEMMA3, GM_SUBLLM };
static int gm_arch(const struct genmodel_opts *o) {
    if (!o->arch) return -1;
    return strcmp(o->arch, "llama") == 0 ? GM_LLAMA : strcmp(o->arch, "qwen2") == 0 ? GM_QWEN2
           : strcmp(o->arch, "gemma3") == 0 ? GM_GEMMA3 : strcmp(o->arch, "subllm") == 0 ? GM_SUBLLM : -1;
}

#define GM_MAX_SUB 7          /* subsamplers the engine accepts (ENG_MAX_LEVELS - 1) */
#define GM_MAX_STRUCTURE 4096

/* The subllm structure string of the options into buf (cap bytes): opts.structure,
 * or the default for n_layers. Returns its subsampler count, or -1 with *why
 * set when it is malformed or does not match n_layers. */
static int gm_structure(const struct genmodel_opts *o, char *buf, size_t cap, const char **why) {
    const char *st = o->structure;
    if (!st) {
        int n = o->n_layers, k = n / 4 > 1 ? n / 4 : 1;
        if (n < 3 || (size_t)n + 3 > cap) {
            *why = "the default subllm structure needs 3 or more layers (or give --structure)";
            return -1;
        }
        size_t j = 0;
        for (int i = 0; i < n; i++) {
            if (i == k) buf[j++] = '(';
            buf[j++] = 'T';
            if (i == n - k - 1) buf[j++] = ')';
        }
        buf[j] = 0;
        st = buf;
    } else if (strlen(st) + 1 > cap) {
        *why = "structure string too long";
        return -1;
    } else {
        memcpy(buf, st, strlen(st) + 1);
    }
    int depth = 0, n_sub = 0, n_t = 0, own[GM_MAX_SUB + 1] = {0}, stack[GM_MAX_SUB];
    for (const char *p = buf; *p; p++) {
        int level = depth ? stack[depth - 1] + 1 : 0;
        if (*p == 'T') {
            n_t++;
            own[level]++;
        } else if (*p == '(') {
            if (n_sub == GM_MAX_SUB) {
                *why = "structure has more than 7 subsamplers";
                return -1;
            }
            stack[depth++] = n_sub++;
        } else if (*p == ')') {
            if (!depth || !own[stack[depth - 1] + 1]) {
                *why = "structure has an unmatched ')' or a bracket without a block of its own";
                return -1;
            }
            depth--;
        } else {
            *why = "structure may hold only T, ( and )";
            return -1;
        }
    }
    if (depth) {
        *why = "structure has an unclosed '('";
        return -1;
    }
    if (n_t != o->n_layers) {
        *why = "structure's T count differs from the layer count";
        return -1;
    }
    return n_sub;
}

/* Head dimension: opts.head_dim, or dim / n_heads when 0. */
static int gm_head_dim(const struct genmodel_opts *o) {
    return o->head_dim > 0 ? o->head_dim : o->n_heads > 0 ? o->dim / o->n_heads : 0;
}

static int opts_check(const struct genmodel_opts *o, char *err, size_t err_len) {
    const char *why = NULL;
    int hd = gm_head_dim(o);
    char st[GM_MAX_STRUCTURE];
    if (gm_arch(o) < 0)
        why = "unsupported architecture (llama, qwen2, gemma3 or subllm)";
    else if (!o->tokenizer || (strcmp(o->tokenizer, "spm") != 0 && strcmp(o->tokenizer, "bpe") != 0))
        why = "tokenizer must be \"spm\" or \"bpe\"";
    else if (o->dim <= 0 || o->dim > 65536 || o->n_layers <= 0 || o->n_layers > 1024 || o->n_heads <= 0 ||
             o->n_kv_heads <= 0 || o->ffn_dim <= 0 || o->ffn_dim > (1 << 20) || o->n_ctx <= 0 ||
             o->n_vocab <= 0 || o->n_vocab > (1 << 22))
        why = "a dimension is out of range";
    else if (o->head_dim == 0 && (o->dim % o->n_heads != 0 || (o->dim / o->n_heads) % 2 != 0))
        why = "dim must be a multiple of heads with an even head dim";
    else if (o->head_dim < 0 || o->head_dim > 1024 || hd % 2 != 0 || o->n_heads > 4096)
        why = "head dim must be even and at most 1024";
    else if (gm_arch(o) != GM_GEMMA3 &&
             (o->swa_window || o->swa_pattern > 0 || o->rope_theta_swa != 0.0f || o->logit_softcap != 0.0f))
        why = "sliding-window and soft-capping options need arch gemma3";
    else if (o->swa_window < 0 || o->swa_pattern < 0 || !(o->rope_theta_swa >= 0.0f) ||
             !(o->logit_softcap >= 0.0f))
        why = "sliding-window and soft-capping options must not be negative";
    else if (o->n_heads % o->n_kv_heads != 0)
        why = "heads must be a multiple of kv-heads";
    else if (!wtype_name(o->wtype))
        why = "type must be f32, f16, bf16, q8_0 or q4_0";
    else if ((o->wtype == BE_Q8_0 || o->wtype == BE_Q4_0) &&
             (o->dim % 32 != 0 || o->ffn_dim % 32 != 0 || (hd * o->n_kv_heads) % 32 != 0 ||
              (hd * o->n_heads) % 32 != 0))
        why = "q8_0 and q4_0 need dim, ffn, q and kv widths to be multiples of 32";
    else if (!(o->rope_theta > 0.0f) || !(o->norm_eps > 0.0f))
        why = "rope_theta and norm_eps must be positive";
    else if (gm_arch(o) != GM_SUBLLM && o->structure)
        why = "a structure string needs arch subllm";
    else if (gm_arch(o) == GM_SUBLLM) {
        int n_sub = gm_structure(o, st, sizeof st, &why);
        if (n_sub >= 0 && !(o->keep >= 0.0f && o->keep <= 1.0f))
            why = "keep must be in [0, 1]";
        else if (n_sub >= 0 && !(o->keep_noise >= 0.0f && o->keep_noise <= 1e6f))
            why = "keep noise must be >= 0";
        else if (n_sub >= 0 && o->dim < 4 * (n_sub + 1))
            why = "subllm needs dim >= 4 * (subsamplers + 1) (reserved channels)";
    }
    if (!why && o->lte_expert_size == 0 &&
        (o->lte_sparsity != 0.5f || o->lte_threshold != 0.0f || o->lte_dense_layers || o->lte_no_bias))
        why = "the LTE options (--lte-sparsity, --lte-threshold, --lte-dense-layers, --lte-no-bias) "
              "need --lte-expert-size";
    else if (!why && o->lte_expert_size &&
        (o->lte_expert_size < 0 || o->ffn_dim % o->lte_expert_size != 0 ||
         ((o->wtype == BE_Q8_0 || o->wtype == BE_Q4_0) && o->lte_expert_size % 32 != 0)))
        why = "lte expert size must divide ffn (and be a multiple of 32 for q8_0 and q4_0)";
    else if (!why && (!(o->lte_sparsity > 0.0f && o->lte_sparsity < 1.0f) ||
                      !(o->lte_threshold >= 0.0f && o->lte_threshold < 1.0f)))
        why = "lte sparsity must be in (0, 1) and the lte threshold in (0, 1)";
    if (why) {
        snprintf(err, err_len, "gen-model: %s", why);
        return SS_EINVAL;
    }
    return 0;
}

int64_t genmodel_n_params(const struct genmodel_opts *o) {
    char e[8];
    if (opts_check(o, e, sizeof e))
        return 0;
    int64_t d = o->dim, hd = gm_head_dim(o), q = hd * o->n_heads, kv = hd * o->n_kv_heads;
    int64_t f = o->ffn_dim, v = o->n_vocab;
    int64_t layer = 2 * d + d * q + 2 * d * kv + q * d + 3 * d * f;
    if (gm_arch(o) == GM_QWEN2)
        layer += q + 2 * kv; /* q/k/v biases */
    if (gm_arch(o) == GM_GEMMA3)
        layer += 2 * hd + 2 * d; /* q/k norms, post-attention and post-FFN norms */
    int64_t extra = 0;
    if (gm_arch(o) == GM_SUBLLM) {
        char st[GM_MAX_STRUCTURE];
        const char *why;
        extra = 2 * d * gm_structure(o, st, sizeof st, &why); /* score + bypass vectors */
    }
    if (o->lte_expert_size > 0)
        for (int l = 0; l < o->n_layers; l++)
            if (l >= 64 || !(o->lte_dense_layers >> l & 1))
                extra += (f / o->lte_expert_size) * (d + (o->lte_no_bias ? 0 : 1));
    return v * d * (o->tied ? 1 : 2) + d + layer * o->n_layers + extra;
}

/* ---------------------------------------------------------------- numbers */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520: infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: half subnormal */
        if (ax <= 0x33000000u)
            return (uint16_t)sign;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - (ax >> 23);
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = (ax >> 13) - (112u << 10), rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

static uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16); /* values are finite */
}

static float f16_to_f32(uint16_t h) { /* for Q8_0: the d actually stored */
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, x;
    if (e == 0) {
        if (!m) {
            x = sign;
        } else {
            e = 113;
            while (!(m & 0x400)) {
                m <<= 1;
                e--;
            }
            x = sign | (e << 23) | ((m & 0x3ff) << 13);
        }
    } else if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else {
        x = sign | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* One Q8_0 block: fp16 d = max|x|/127, then 32 int8 q = round(x/d). */
void genmodel_q8_0_block(const float *x, uint8_t *out) {
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) {
        float a = x[i] < 0 ? -x[i] : x[i];
        if (a > amax)
            amax = a;
    }
    uint16_t dh = f32_to_f16(amax / 127.0f);
    float d = f16_to_f32(dh);
    memcpy(out, &dh, 2);
    for (int i = 0; i < 32; i++) {
        float q = d > 0.0f ? x[i] / d : 0.0f;
        q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
        int v = (int)(q < 0 ? q - 0.5f : q + 0.5f); /* round half away from zero */
        out[2 + i] = (uint8_t)(int8_t)v;
    }
}

/* One Q4_0 block: m = the value of largest magnitude (first one on ties), fp16
 * d = m / -8, q = round(x/d) + 8 clamped to [0, 15]; element j in the low
 * nibble of byte j, element j+16 in its high nibble. */
void genmodel_q4_0_block(const float *x, uint8_t *out) {
    float m = 0.0f;
    for (int i = 0; i < 32; i++)
        if ((x[i] < 0 ? -x[i] : x[i]) > (m < 0 ? -m : m))
            m = x[i];
    uint16_t dh = f32_to_f16(m / -8.0f);
    float d = f16_to_f32(dh);
    memcpy(out, &dh, 2);
    int q[32];
    for (int i = 0; i < 32; i++) {
        float v = d != 0.0f ? x[i] / d : 0.0f;
        int r = (int)(v < 0 ? v - 0.5f : v + 0.5f) + 8; /* round half away from zero */
        q[i] = r < 0 ? 0 : r > 15 ? 15 : r;
    }
    for (int j = 0; j < 16; j++)
        out[2 + j] = (uint8_t)(q[j] | (q[j + 16] << 4));
}

/* ----------------------------------------------------------------- tensors */

/* Everything the writer's callback needs to produce one tensor. */
struct gm_tensor {
    char name[48];
    int type;
    int64_t ne0, rows;
    uint64_t seed;
    float center; /* 0 for matrices and biases, 1 for norms */
    float scale;  /* value = center + k * scale, k uniform in [-2^23, 2^23) */
    /* subllm extras (0 = none) */
    int64_t zero_from;  /* rows >= zero_from are zero (0: none) */
    int n_res;          /* reserved channels A = ne0-1, B_i = ne0-2-i (token_embd, scores) */
    float res_r;        /* token_embd: their amplitude r */
    uint64_t res_seed;  /* token_embd: u_i(token) stream seed */
    int score_sub;      /* 1 + i for the score vector of subsampler i, else 0 */
    float score_a, score_b; /* its weights on B_i and on A (alpha/r, beta/r) */
};

static uint64_t name_seed(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = name; *p; p++) {
        h ^= (unsigned char)*p;
        h *= 0x100000001b3ull;
    }
    uint64_t s = seed ^ h;
    return splitmix64(&s);
}

/* u_i(token) uniform in [-1, 1): 24 bits of splitmix64 seeded by (seed, token, i). */
static float gm_keep_u(uint64_t seed, int64_t token, int i) {
    uint64_t s = seed ^ ((uint64_t)token * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)(i + 1) << 56);
    int32_t k = (int32_t)(splitmix64(&s) >> 40) - (1 << 23);
    return (float)k / 8388608.0f;
}

/* The subllm rewrites of generated row r (see genmodel.h). */
static void gm_subllm_row(const struct gm_tensor *t, int64_t r, float *row) {
    if (t->zero_from > 0 && r >= t->zero_from)
        for (int64_t i = 0; i < t->ne0; i++) row[i] = 0.0f;
    if (t->score_sub > 0) { /* score vector: only A, B_i and the noise channels */
        for (int i = 1; i < t->n_res; i++) row[t->ne0 - 1 - i] = 0.0f;
        row[t->ne0 - 1] = t->score_b;
        row[t->ne0 - 1 - t->score_sub] = t->score_a;
    } else if (t->n_res > 0) { /* token embedding row r = token r */
        row[t->ne0 - 1] = t->res_r;
        for (int i = 1; i < t->n_res; i++) row[t->ne0 - 1 - i] = t->res_r * gm_keep_u(t->res_seed, r, i - 1);
    }
}

static int gm_fill(void *ctx, void *dst, size_t nbytes) {
    const struct gm_tensor *t = ctx;
    uint64_t s = t->seed;
    float *row = malloc((size_t)t->ne0 * sizeof *row);
    if (!row)
        return SS_ENOMEM;
    size_t rb = be_row_bytes(t->type, t->ne0);
    uint8_t *out = dst;
    for (int64_t r = 0; r < t->rows; r++) {
        for (int64_t i = 0; i < t->ne0; i++) {
            int32_t k = (int32_t)(splitmix64(&s) >> 40) - (1 << 23);
            float v = (float)k * t->scale;
            row[i] = t->center + v;
        }
        if (t->zero_from > 0 || t->n_res > 0 || t->score_sub > 0)
            gm_subllm_row(t, r, row);
        uint8_t *o = out + (size_t)r * rb;
        if (t->type == BE_F32) {
            memcpy(o, row, rb);
        } else if (t->type == BE_F16 || t->type == BE_BF16) {
            for (int64_t i = 0; i < t->ne0; i++) {
                uint16_t h = t->type == BE_F16 ? f32_to_f16(row[i]) : f32_to_bf16(row[i]);
                memcpy(o + 2 * i, &h, 2);
            }
        } else if (t->type == BE_Q4_0) {
            for (int64_t b = 0; b < t->ne0 / 32; b++)
                genmodel_q4_0_block(row + 32 * b, o + 18 * b);
        } else {
            for (int64_t b = 0; b < t->ne0 / 32; b++)
                genmodel_q8_0_block(row + 32 * b, o + 34 * b);
        }
    }
    free(row);
    (void)nbytes;
    return 0;
}

/* Writer context: tensors stay alive until the save. */
struct gm_build {
    struct gguf_writer *w;
    struct gm_tensor *t;
    int n_t;
    uint64_t seed;
};

static const float SQRT3_OVER_2P23 = 1.7320508f / 8388608.0f;

static struct gm_tensor *add_matrix(struct gm_build *b, const char *name, int type, int64_t ne0, int64_t ne1,
                                    float gain) {
    struct gm_tensor *t = &b->t[b->n_t++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->ne0 = ne0;
    t->rows = ne1;
    t->seed = name_seed(b->seed, name);
    t->center = 0.0f;
    t->scale = gain / sqrtf((float)ne0) * SQRT3_OVER_2P23; /* std = gain/sqrt(fan_in) */
    int64_t ne[2] = {ne0, ne1};
    gguf_w_tensor_gen(b->w, t->name, type, ne1 > 1 ? 2 : 1, ne, gm_fill, t);
    return t; /* the callback runs at the save: fields may still be adjusted */
}

static void add_norm(struct gm_build *b, const char *name, int64_t dim) {
    struct gm_tensor *t = &b->t[b->n_t++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = BE_F32;
    t->ne0 = dim;
    t->rows = 1;
    t->seed = name_seed(b->seed, name);
    t->center = 1.0f;
    t->scale = 0.05f / 8388608.0f; /* 1 +- 0.05 */
    gguf_w_tensor_gen(b->w, t->name, BE_F32, 1, &t->ne0, gm_fill, t);
}

/* An F32 bias vector, uniform in [-0.5, 0.5). */
static void add_bias(struct gm_build *b, const char *name, int64_t n) {
    struct gm_tensor *t = &b->t[b->n_t++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = BE_F32;
    t->ne0 = n;
    t->rows = 1;
    t->seed = name_seed(b->seed, name);
    t->center = 0.0f;
    t->scale = 0.5f / 8388608.0f;
    gguf_w_tensor_gen(b->w, t->name, BE_F32, 1, &t->ne0, gm_fill, t);
}

/* subllm: the amplitude r of the reserved embedding channels (genmodel.h). */
static float gm_res_r(int64_t d) { return 1.7320508f * 2.0f / sqrtf((float)d); }

/* ln(x) for x > 0 in plain arithmetic (no libm: byte-identical files
 * everywhere): ln x = 2 atanh(z), z = (x-1)/(x+1), after scaling x into
 * [0.5, 2) by powers of two. */
static double gm_log(double x) {
    double k = 0.0;
    while (x >= 2.0) x *= 0.5, k += 1.0;
    while (x < 0.5) x *= 2.0, k -= 1.0;
    double z = (x - 1.0) / (x + 1.0), z2 = z * z, term = z, sum = 0.0;
    for (int i = 0; i < 60; i++, term *= z2) sum += term / (2 * i + 1);
    return 2.0 * sum + k * 0.69314718055994530942;
}
static double gm_logit(double p) { return gm_log(p / (1.0 - p)); }

/* LTE: blk.N.ffn_router.weight / .bias of layer l (see genmodel.h). */
static void add_router(struct gm_build *b, const struct genmodel_opts *o, int l) {
    char n[48];
    int64_t ne = o->ffn_dim / o->lte_expert_size;
    snprintf(n, sizeof n, "blk.%d.ffn_router.weight", l);
    add_matrix(b, n, BE_F32, o->dim, ne, 1.0f);
    if (o->lte_no_bias)
        return;
    double tau = o->lte_threshold > 0.0f ? o->lte_threshold : 0.5;
    snprintf(n, sizeof n, "blk.%d.ffn_router.bias", l);
    add_bias(b, n, ne);
    struct gm_tensor *t = &b->t[b->n_t - 1];
    t->center = (float)(gm_logit(tau) - gm_logit(o->lte_sparsity) / 1.702);
    t->scale = 0.25f / 8388608.0f;
}

/* llama layout, plus q/k/v biases (qwen2) or q/k and post-sub-layer norms
 * (gemma3) after each layer's llama tensors; subllm (n_sub >= 0): reserved
 * embedding channels and zero output rows for them (genmodel.h). */
static void add_llama_tensors(struct gm_build *b, const struct genmodel_opts *o, int n_sub) {
    int64_t d = o->dim, hd = gm_head_dim(o), q = hd * o->n_heads, kv = hd * o->n_kv_heads, f = o->ffn_dim;
    int wt = o->wtype, n_res = n_sub >= 0 ? n_sub + 1 : 0;
    float emb = 2.0f; /* std 2/sqrt(dim): logits with std ~2 */
    struct gm_tensor *te = add_matrix(b, "token_embd.weight", wt, d, o->n_vocab, emb);
    if (n_res) {
        te->n_res = n_res;
        te->res_r = gm_res_r(d);
        te->res_seed = name_seed(b->seed, "subllm.keep");
    }
    add_norm(b, "output_norm.weight", d);
    if (!o->tied)
        add_matrix(b, "output.weight", wt, d, o->n_vocab, emb);
    for (int l = 0; l < o->n_layers; l++) {
        char n[48];
#define GM_NAME(s) (snprintf(n, sizeof n, "blk.%d.%s.weight", l, s), n)
        add_norm(b, GM_NAME("attn_norm"), d);
        add_matrix(b, GM_NAME("attn_q"), wt, d, q, 1.0f);
        add_matrix(b, GM_NAME("attn_k"), wt, d, kv, 1.0f);
        add_matrix(b, GM_NAME("attn_v"), wt, d, kv, 1.0f);
        if (n_res) add_matrix(b, GM_NAME("attn_output"), wt, q, d, 0.5f)->zero_from = d - n_res;
        else add_matrix(b, GM_NAME("attn_output"), wt, q, d, 0.5f);
        add_norm(b, GM_NAME("ffn_norm"), d);
        add_matrix(b, GM_NAME("ffn_gate"), wt, d, f, 1.0f);
        add_matrix(b, GM_NAME("ffn_up"), wt, d, f, 1.0f);
        if (n_res) add_matrix(b, GM_NAME("ffn_down"), wt, f, d, 0.5f)->zero_from = d - n_res;
        else add_matrix(b, GM_NAME("ffn_down"), wt, f, d, 0.5f);
        if (gm_arch(o) == GM_QWEN2) {
            snprintf(n, sizeof n, "blk.%d.attn_q.bias", l);
            add_bias(b, n, q);
            snprintf(n, sizeof n, "blk.%d.attn_k.bias", l);
            add_bias(b, n, kv);
            snprintf(n, sizeof n, "blk.%d.attn_v.bias", l);
            add_bias(b, n, kv);
        } else if (gm_arch(o) == GM_GEMMA3) {
            add_norm(b, GM_NAME("attn_q_norm"), hd);
            add_norm(b, GM_NAME("attn_k_norm"), hd);
            add_norm(b, GM_NAME("post_attention_norm"), d);
            add_norm(b, GM_NAME("post_ffw_norm"), d);
        }
        if (o->lte_expert_size > 0 && (l >= 64 || !(o->lte_dense_layers >> l & 1)))
            add_router(b, o, l);
#undef GM_NAME
    }
}

/* subllm: sub.{i}.score.weight and sub.{i}.bypass.weight (F32 [dim]). */
static void add_sub_tensors(struct gm_build *b, const struct genmodel_opts *o, int n_sub) {
    const int64_t d = o->dim;
    const float alpha = 2.0f, r = gm_res_r(d);
    float beta = alpha * (2.0f * o->keep - 1.0f);
    int exact = o->keep == 0.0f || o->keep == 1.0f;
    if (o->keep == 0.0f) beta -= 0.05f;
    if (o->keep == 1.0f) beta += 0.05f;
    for (int i = 0; i < n_sub; i++) {
        struct gm_tensor *t = &b->t[b->n_t++];
        snprintf(t->name, sizeof t->name, "sub.%d.score.weight", i);
        t->type = BE_F32;
        t->ne0 = d;
        t->rows = 1;
        t->seed = name_seed(b->seed, t->name);
        t->scale = exact ? 0.0f : o->keep_noise * 0.5f * SQRT3_OVER_2P23; /* std keep_noise / 2 */
        t->n_res = n_sub + 1;
        t->score_sub = i + 1;
        t->score_a = alpha / r;
        t->score_b = beta / r;
        gguf_w_tensor_gen(b->w, t->name, BE_F32, 1, &t->ne0, gm_fill, t);

        t = &b->t[b->n_t++];
        snprintf(t->name, sizeof t->name, "sub.%d.bypass.weight", i);
        t->type = BE_F32;
        t->ne0 = d;
        t->rows = 1;
        t->seed = name_seed(b->seed, t->name);
        t->center = 0.75f;
        t->scale = 0.25f / 8388608.0f; /* uniform in [0.5, 1.0) */
        gguf_w_tensor_gen(b->w, t->name, BE_F32, 1, &t->ne0, gm_fill, t);
    }
}

static void add_llama_keys(struct gguf_writer *w, const struct genmodel_opts *o, const char *arch) {
    char k[96];
#define GM_KEY(s) (snprintf(k, sizeof k, "%s.%s", arch, s), k)
    gguf_w_u32(w, GM_KEY("block_count"), (uint32_t)o->n_layers);
    gguf_w_u32(w, GM_KEY("context_length"), (uint32_t)o->n_ctx);
    gguf_w_u32(w, GM_KEY("embedding_length"), (uint32_t)o->dim);
    gguf_w_u32(w, GM_KEY("feed_forward_length"), (uint32_t)o->ffn_dim);
    gguf_w_u32(w, GM_KEY("attention.head_count"), (uint32_t)o->n_heads);
    gguf_w_u32(w, GM_KEY("attention.head_count_kv"), (uint32_t)o->n_kv_heads);
    gguf_w_f32(w, GM_KEY("attention.layer_norm_rms_epsilon"), o->norm_eps);
    gguf_w_f32(w, GM_KEY("rope.freq_base"), o->rope_theta);
    gguf_w_u32(w, GM_KEY("rope.dimension_count"), (uint32_t)gm_head_dim(o));
    gguf_w_u32(w, GM_KEY("vocab_size"), (uint32_t)o->n_vocab);
    if (gm_arch(o) == GM_GEMMA3 || gm_head_dim(o) * o->n_heads != o->dim) {
        gguf_w_u32(w, GM_KEY("attention.key_length"), (uint32_t)gm_head_dim(o));
        gguf_w_u32(w, GM_KEY("attention.value_length"), (uint32_t)gm_head_dim(o));
    }
    if (o->swa_window > 0)
        gguf_w_u32(w, GM_KEY("attention.sliding_window"), (uint32_t)o->swa_window);
    if (o->swa_pattern > 0)
        gguf_w_u32(w, GM_KEY("attention.sliding_window_pattern"), (uint32_t)o->swa_pattern);
    if (o->rope_theta_swa > 0.0f)
        gguf_w_f32(w, GM_KEY("rope.freq_base_swa"), o->rope_theta_swa);
    if (o->logit_softcap > 0.0f)
        gguf_w_f32(w, GM_KEY("final_logit_softcapping"), o->logit_softcap);
#undef GM_KEY
}

static void add_tokenizer_keys(struct gguf_writer *w, const struct genmodel_vocab *v, int spm) {
    gguf_w_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    if (!spm)
        gguf_w_str(w, "tokenizer.ggml.pre", "default");
    gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens, (uint64_t)v->n);
    if (spm)
        gguf_w_arr_f32(w, "tokenizer.ggml.scores", v->scores, (uint64_t)v->n);
    gguf_w_arr_i32(w, "tokenizer.ggml.token_type", v->types, (uint64_t)v->n);
    if (!spm)
        gguf_w_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merges, (uint64_t)v->n_merges);
    gguf_w_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    gguf_w_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (v->unk >= 0)
        gguf_w_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk);
    gguf_w_bool(w, "tokenizer.ggml.add_bos_token", 1);
    gguf_w_bool(w, "tokenizer.ggml.add_eos_token", 0);
    if (spm)
        gguf_w_bool(w, "tokenizer.ggml.add_space_prefix", 1);
}

static int write_model(const struct genmodel_opts *o, const char *path, int64_t *n_learned, char *err,
                       size_t err_len) {
    int spm = strcmp(o->tokenizer, "spm") == 0;
    struct genmodel_vocab v;
    int rc = genmodel_vocab_build(&v, spm ? GENMODEL_TOK_SPM : GENMODEL_TOK_BPE, o->n_vocab, err, err_len);
    if (rc)
        return rc;
    *n_learned = v.n_learned;
    char st[GM_MAX_STRUCTURE];
    const char *why = NULL;
    int n_sub = gm_arch(o) == GM_SUBLLM ? gm_structure(o, st, sizeof st, &why) : -1; /* checked */
    struct gm_build b = {0};
    b.w = gguf_writer_new();
    b.t = calloc((size_t)o->n_layers * 15 + 3 + 2 * (size_t)(n_sub > 0 ? n_sub : 0), sizeof *b.t);
    b.seed = o->seed;
    if (!b.w || !b.t) {
        snprintf(err, err_len, "gen-model: out of memory");
        rc = SS_ENOMEM;
    } else {
        gguf_w_str(b.w, "general.architecture", o->arch);
        gguf_w_str(b.w, "general.name", o->name ? o->name : "genmodel");
        gguf_w_u32(b.w, "general.file_type", wtype_ftype(o->wtype));
        add_llama_keys(b.w, o, o->arch);
        if (n_sub >= 0)
            gguf_w_str(b.w, "subllm.structure", st);
        if (o->lte_expert_size > 0)
            gguf_w_u32(b.w, "lte.expert_size", (uint32_t)o->lte_expert_size);
        if (o->lte_expert_size > 0 && o->lte_threshold > 0.0f)
            gguf_w_f32(b.w, "lte.threshold", o->lte_threshold);
        add_tokenizer_keys(b.w, &v, spm);
        add_llama_tensors(&b, o, n_sub);
        if (n_sub > 0)
            add_sub_tensors(&b, o, n_sub);
        rc = gguf_writer_save(b.w, path, err, err_len);
    }
    gguf_writer_free(b.w);
    free(b.t);
    genmodel_vocab_free(&v);
    return rc;
}

int genmodel_write(const struct genmodel_opts *o, const char *path, char *err, size_t err_len) {
    char dummy[8];
    int64_t learned;
    if (!err || !err_len)
        err = dummy, err_len = sizeof dummy;
    err[0] = 0;
    if (!o || !path) {
        snprintf(err, err_len, "gen-model: no options or path");
        return SS_EINVAL;
    }
    int rc = opts_check(o, err, err_len);
    return rc ? rc : write_model(o, path, &learned, err, err_len);
}

/* --------------------------------------------------------------------- CLI */

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: slimserve gen-model --out PATH [options]\n"
            "Writes a deterministic random-weight GGUF (llama, qwen2 or gemma3 layout)\n"
            "with a trained tokenizer.\n"
            "  --out PATH            output file (required)\n"
            "  --size 1M|10M|100M|300M  preset shape (flags below override it)\n"
            "  --tokenizer spm|bpe   tokenizer kind (default spm)\n"
            "  --dim N --layers N --heads N --kv-heads N --ffn N --vocab N --ctx N\n"
            "  --type f32|f16|bf16|q8_0|q4_0  matrix type (default f32; norms stay f32)\n"
            "  --seed N              PRNG seed (default 1)\n"
            "  --tied                no output.weight (share token_embd)\n"
            "  --rope-theta X --norm-eps X --name NAME\n"
            "  --arch llama|qwen2|gemma3|subllm  qwen2 adds q/k/v biases; gemma3 adds q/k\n"
            "                        norms and post-attention/post-FFN norms\n"
            "  --structure S         subllm: blocks and brackets, e.g. 'TT(TT(T)TT)TT' (sets\n"
            "                        --layers to its T count; default T*k ( T.. ) T*k)\n"
            "  --keep FRAC           subllm: fraction kept at each subsampler (default 0.5;\n"
            "                        0 and 1 are exact)\n"
            "  --keep-noise X        subllm: context-dependent part of the score (default 0.1)\n"
            "  --head-dim N          head dim independent of dim/heads (default dim/heads)\n"
            "  --swa-window N --swa-pattern N --rope-theta-swa X   gemma3 sliding window\n"
            "  --logit-softcap X     gemma3 final logit soft-capping\n"
            "  --lte-expert-size S   LTE routers (experts of S FFN neurons) on every layer\n"
            "  --lte-sparsity F      LTE: target fraction of experts off (default 0.5)\n"
            "  --lte-threshold T     LTE: lte.threshold key (default absent = 0.5)\n"
            "  --lte-dense-layers L  LTE: comma-separated layers left without a router\n"
            "  --lte-no-bias         LTE: routers without a bias\n"
            "  --help                this text\n");
}

static int parse_int(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* Applies one --flag value. Returns 0, or -1 on a bad flag/value. */
static int apply_flag(struct genmodel_opts *o, const char *flag, const char *val, const char **out) {
    static const struct { const char *flag; size_t off; } ints[] = {
        {"--dim", offsetof(struct genmodel_opts, dim)},
        {"--layers", offsetof(struct genmodel_opts, n_layers)},
        {"--heads", offsetof(struct genmodel_opts, n_heads)},
        {"--kv-heads", offsetof(struct genmodel_opts, n_kv_heads)},
        {"--ffn", offsetof(struct genmodel_opts, ffn_dim)},
        {"--vocab", offsetof(struct genmodel_opts, n_vocab)},
        {"--ctx", offsetof(struct genmodel_opts, n_ctx)},
        {"--head-dim", offsetof(struct genmodel_opts, head_dim)},
        {"--swa-window", offsetof(struct genmodel_opts, swa_window)},
        {"--swa-pattern", offsetof(struct genmodel_opts, swa_pattern)},
        {"--lte-expert-size", offsetof(struct genmodel_opts, lte_expert_size)},
    };
    long long v;
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (strcmp(flag, ints[i].flag) == 0) {
            if (parse_int(val, 1, 1 << 30, &v))
                return -1;
            *(int *)((char *)o + ints[i].off) = (int)v;
            return 0;
        }
    if (strcmp(flag, "--out") == 0) {
        *out = val;
    } else if (strcmp(flag, "--tokenizer") == 0) {
        o->tokenizer = val;
    } else if (strcmp(flag, "--arch") == 0) {
        o->arch = val;
    } else if (strcmp(flag, "--name") == 0) {
        o->name = val;
    } else if (strcmp(flag, "--seed") == 0) {
        char *end;
        errno = 0;
        o->seed = strtoull(val, &end, 0);
        if (errno || end == val || *end)
            return -1;
    } else if (strcmp(flag, "--type") == 0) {
        static const int types[] = {BE_F32, BE_F16, BE_BF16, BE_Q8_0, BE_Q4_0};
        int found = 0;
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (strcmp(val, wtype_name(types[i])) == 0)
                o->wtype = types[i], found = 1;
        if (!found)
            return -1;
    } else if (strcmp(flag, "--rope-theta") == 0 || strcmp(flag, "--norm-eps") == 0 ||
               strcmp(flag, "--rope-theta-swa") == 0 || strcmp(flag, "--logit-softcap") == 0) {
        char *end;
        float x = strtof(val, &end);
        if (end == val || *end || !(x > 0.0f) || x > 1e30f)
            return -1;
        *(strcmp(flag, "--rope-theta-swa") == 0  ? &o->rope_theta_swa
          : strcmp(flag, "--logit-softcap") == 0 ? &o->logit_softcap
          : flag[2] == 'r'                       ? &o->rope_theta
                                                 : &o->norm_eps) = x;
    } else if (strcmp(flag, "--structure") == 0) {
        int n_t = 0;
        for (const char *p = val; *p; p++)
            n_t += *p == 'T';
        o->structure = val;
        if (n_t > 0)
            o->n_layers = n_t; /* a later --layers that disagrees is reported by the check */
    } else if (strcmp(flag, "--keep") == 0 || strcmp(flag, "--keep-noise") == 0) {
        char *end;
        float x = strtof(val, &end);
        if (end == val || *end || !(x >= 0.0f) || x > 1e6f)
            return -1;
        *(flag[6] == 0 ? &o->keep : &o->keep_noise) = x;
    } else if (strcmp(flag, "--lte-sparsity") == 0 || strcmp(flag, "--lte-threshold") == 0) {
        char *end;
        float x = strtof(val, &end);
        if (end == val || *end || !(x > 0.0f && x < 1.0f))
            return -1;
        *(flag[6] == 's' ? &o->lte_sparsity : &o->lte_threshold) = x;
    } else if (strcmp(flag, "--lte-dense-layers") == 0) {
        for (const char *p = val; *p;) {
            char *end;
            long l = strtol(p, &end, 10);
            if (end == p || l < 0 || l > 63 || (*end && *end != ','))
                return -1;
            o->lte_dense_layers |= 1ull << l;
            p = *end ? end + 1 : end;
        }
    } else if (strcmp(flag, "--size") == 0) {
        return 0; /* applied before the other flags */
    } else {
        return -1;
    }
    return 0;
}

int tool_genmodel_main(int argc, char **argv) {
    struct genmodel_opts o;
    const char *out = NULL;
    genmodel_opts_default(&o);
    /* pass 1: --help and --size (so explicit flags override the preset) */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        const char *sz = strncmp(argv[i], "--size=", 7) == 0 ? argv[i] + 7
                         : (strcmp(argv[i], "--size") == 0 && i + 1 < argc) ? argv[i + 1] : NULL;
        if (sz && genmodel_opts_preset(&o, sz) != 0) {
            fprintf(stderr, "gen-model: unknown --size '%s' (1M, 10M, 100M, 300M)\n", sz);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        char flag[64];
        const char *val, *eq = strchr(argv[i], '=');
        if (strcmp(argv[i], "--tied") == 0 || strcmp(argv[i], "--lte-no-bias") == 0) {
            *(argv[i][2] == 't' ? &o.tied : &o.lte_no_bias) = 1;
            continue;
        }
        if (strncmp(argv[i], "--", 2) == 0 && eq && (size_t)(eq - argv[i]) < sizeof flag) {
            memcpy(flag, argv[i], (size_t)(eq - argv[i]));
            flag[eq - argv[i]] = 0;
            val = eq + 1;
        } else if (strncmp(argv[i], "--", 2) == 0 && strlen(argv[i]) < sizeof flag && i + 1 < argc) {
            snprintf(flag, sizeof flag, "%s", argv[i]);
            val = argv[++i];
        } else {
            fprintf(stderr, "gen-model: unexpected argument '%s' (try --help)\n", argv[i]);
            return 2;
        }
        if (strcmp(flag, "--tied") == 0 && (strcmp(val, "0") == 0 || strcmp(val, "1") == 0)) {
            o.tied = val[0] == '1';
            continue;
        }
        if (apply_flag(&o, flag, val, &out) != 0) {
            fprintf(stderr, "gen-model: bad option %s '%s' (try --help)\n", flag, val);
            return 2;
        }
    }
    if (!out) {
        fprintf(stderr, "gen-model: --out PATH is required (try --help)\n");
        return 2;
    }
    char err[512];
    int64_t learned = 0;
    int rc = opts_check(&o, err, sizeof err);
    if (!rc)
        rc = write_model(&o, out, &learned, err, sizeof err);
    if (rc) {
        fprintf(stderr, "%s\n", err[0] ? err : ss_strerror(rc));
        return 1;
    }
    struct stat st;
    long long bytes = stat(out, &st) == 0 ? (long long)st.st_size : -1;
    int64_t np = genmodel_n_params(&o);
    printf("gen-model: wrote %s: %s, %.3fM parameters, %lld bytes (%.1f MiB), %s vocab %d (%lld merges), "
           "dim %d, layers %d, heads %d/%d, ffn %d, ctx %d, %s%s, seed %llu",
           out, o.arch, (double)np / 1e6, bytes, (double)bytes / 1048576.0, o.tokenizer, o.n_vocab,
           (long long)learned, o.dim, o.n_layers, o.n_heads, o.n_kv_heads, o.ffn_dim, o.n_ctx,
           wtype_name(o.wtype), o.tied ? ", tied" : "", (unsigned long long)o.seed);
    if (gm_arch(&o) == GM_SUBLLM) {
        char st[GM_MAX_STRUCTURE];
        const char *why;
        gm_structure(&o, st, sizeof st, &why);
        printf(", structure %s, keep %g, keep noise %g", st, (double)o.keep, (double)o.keep_noise);
    }
    if (o.lte_expert_size > 0)
        printf(", LTE experts of %d (target sparsity %g)", o.lte_expert_size, (double)o.lte_sparsity);
    printf("\n");
    return 0;
}
