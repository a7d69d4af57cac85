/* test_gguf.c - GGUF reader/writer and the model generator.
 *
 * - round trip writer -> reader for every value type, arrays and tensor types,
 *   from memory and from a file;
 * - every proper prefix of a small file fails cleanly (buffers are malloc'd at
 *   the exact length so ASan sees any overread);
 * - targeted corruptions, each SS_EBADMODEL with a message naming the problem;
 * - a few hundred random mutations that must open or fail cleanly, and when
 *   they open every accessor is walked.
 * The generated models themselves are tested in test_genmodel.c.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "kernels/backend.h"
#include "tools/genmodel.h"
#include "tests/unit/testutil.h"
#include "tu_check.h"


/* ----------------------------------------------------------------- helpers */

static void tmp_path(char *out, size_t cap, const char *name) {
    const char *d = getenv("SLIMSERVE_TEST_TMP");
    snprintf(out, cap, "%s/test_gguf_%ld_%s", d && d[0] ? d : "/tmp", (long)getpid(), name);
}

static uint8_t *read_file_all(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    ck_assert(b != NULL);
    ck_assert(fread(b, 1, (size_t)n, fp) == (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return b;
}

static void write_file_all(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert(fp != NULL);
    ck_assert(fwrite(p, 1, n, fp) == n);
    fclose(fp);
}

static uint64_t t_rng(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static void put_u32_at(uint8_t *b, size_t at, uint32_t v) { memcpy(b + at, &v, 4); }
static void put_u64_at(uint8_t *b, size_t at, uint64_t v) { memcpy(b + at, &v, 8); }

/* Open buf[0..len) from an exact-size heap copy (ASan catches overreads). */
static int open_copy(const uint8_t *buf, size_t len, struct gguf_file **f, uint8_t **copy, char *err,
                     size_t err_len) {
    *copy = malloc(len ? len : 1);
    ck_assert(*copy != NULL);
    memcpy(*copy, buf, len);
    return gguf_open_mem(f, *copy, len, err, err_len);
}

/* Touch everything an opened file exposes. Returns a checksum. */
static uint64_t walk_all(const struct gguf_file *f) {
    uint64_t sum = 0;
    for (int64_t i = 0; i < gguf_n_kv(f); i++) {
        const struct gguf_kv *kv = gguf_kv_at(f, i);
        ck_assert(kv != NULL);
        for (uint64_t j = 0; j < kv->key.len; j++)
            sum += (uint8_t)kv->key.s[j];
        ck_assert(gguf_find(f, "") == NULL);
        if (kv->type == GGUF_T_ARRAY && kv->arr_type == GGUF_T_STRING) {
            for (uint64_t j = 0; j < kv->arr_n; j++) {
                struct gguf_str s;
                ck_assert_int_eq(gguf_arr_str(kv, j, &s), 0);
                for (uint64_t k = 0; k < s.len; k++)
                    sum += (uint8_t)s.s[k];
            }
        } else if (kv->type == GGUF_T_ARRAY) {
            for (uint64_t j = 0; j < kv->arr_n; j++) {
                double d;
                ck_assert_int_eq(gguf_arr_num(kv, j, &d), 0);
                sum += (uint64_t)(d != d ? 1 : 0);
            }
        } else if (kv->type == GGUF_T_STRING) {
            char key[256];
            struct gguf_str s;
            if (kv->key.len < sizeof key && !memchr(kv->key.s, 0, kv->key.len)) {
                memcpy(key, kv->key.s, kv->key.len);
                key[kv->key.len] = 0;
                ck_assert_int_eq(gguf_get_str(f, key, &s), 0);
                for (uint64_t k = 0; k < s.len; k++)
                    sum += (uint8_t)s.s[k];
            }
        } else {
            sum += kv->data[0];
        }
    }
    for (int64_t i = 0; i < gguf_n_tensors(f); i++) {
        const struct gguf_tensor_info *t = gguf_tensor_at(f, i);
        const uint8_t *d = t->data;
        ck_assert(t->nbytes > 0);
        for (size_t k = 0; k < t->nbytes; k += 61)
            sum += d[k];
        sum += d[t->nbytes - 1];
    }
    return sum;
}

/* ------------------------------------------------------ the small test file */

/* Layout facts the corruption tests rely on: the first kv is
 * "general.architecture" (20-byte key) at byte 24, so its type is at 52. */
static uint8_t *small_file(size_t *len) {
    struct gguf_writer *w = gguf_writer_new();
    gguf_w_str(w, "general.architecture", "test");
    gguf_w_u32(w, "general.alignment", 32);
    gguf_w_u32(w, "k.aaa", 1);
    gguf_w_u32(w, "k.bbb", 2);
    gguf_w_bool(w, "k.flag", 1);
    float fa[3] = {1, 2, 3};
    gguf_w_arr_f32(w, "k.farr", fa, 3);
    const char *sa[3] = {"x", "yy", "zzz"};
    gguf_w_arr_str(w, "k.sarr", sa, 3);
    float t0[16];
    for (int i = 0; i < 16; i++)
        t0[i] = (float)i;
    int64_t ne0[2] = {8, 2};
    gguf_w_tensor(w, "t.aaa", BE_F32, 2, ne0, t0, sizeof t0);
    uint8_t q[34] = {0x00, 0x3c}; /* d = 1.0 */
    for (int i = 0; i < 32; i++)
        q[2 + i] = (uint8_t)(i - 16);
    int64_t ne1[1] = {32};
    gguf_w_tensor(w, "t.bbb", BE_Q8_0, 1, ne1, q, sizeof q);
    uint8_t *buf;
    char err[256];
    ck_assert_msg(gguf_writer_to_mem(w, &buf, len, err, sizeof err) == 0, "%s", err);
    gguf_writer_free(w);
    return buf;
}

/* ------------------------------------------------------------- round trip */

static struct gguf_writer *all_types_writer(void) {
    struct gguf_writer *w = gguf_writer_new();
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    gguf_w_val(w, "v.u8", GGUF_T_UINT8, &u8);
    gguf_w_val(w, "v.i8", GGUF_T_INT8, &i8);
    gguf_w_val(w, "v.u16", GGUF_T_UINT16, &u16);
    gguf_w_val(w, "v.i16", GGUF_T_INT16, &i16);
    gguf_w_u32(w, "v.u32", 4000000000u);
    gguf_w_i32(w, "v.i32", -2000000000);
    gguf_w_f32(w, "v.f32", 1.5f);
    gguf_w_bool(w, "v.bool", 1);
    gguf_w_str(w, "v.str", "h\xc3\xa9llo");
    gguf_w_str(w, "v.empty", "");
    gguf_w_u64(w, "v.u64", (1ull << 63) + 5);
    gguf_w_i64(w, "v.i64", INT64_MIN);
    gguf_w_f64(w, "v.f64", -2.25);
    uint8_t a_u8[3] = {1, 2, 255};
    int8_t a_i8[3] = {-1, 0, 127};
    uint16_t a_u16[3] = {1, 2, 65535};
    int16_t a_i16[3] = {-32768, 0, 5};
    uint32_t a_u32[3] = {7, 8, 4294967295u};
    int32_t a_i32[3] = {-7, 0, 2147483647};
    float a_f32[3] = {0.5f, -1.0f, 3.25f};
    uint8_t a_bool[3] = {1, 0, 1};
    uint64_t a_u64[3] = {1, 2, UINT64_MAX};
    int64_t a_i64[3] = {INT64_MIN, -1, INT64_MAX};
    double a_f64[3] = {1e300, -0.125, 0};
    gguf_w_arr(w, "a.u8", GGUF_T_UINT8, a_u8, 3);
    gguf_w_arr(w, "a.i8", GGUF_T_INT8, a_i8, 3);
    gguf_w_arr(w, "a.u16", GGUF_T_UINT16, a_u16, 3);
    gguf_w_arr(w, "a.i16", GGUF_T_INT16, a_i16, 3);
    gguf_w_arr(w, "a.u32", GGUF_T_UINT32, a_u32, 3);
    gguf_w_arr_i32(w, "a.i32", a_i32, 3);
    gguf_w_arr_f32(w, "a.f32", a_f32, 3);
    gguf_w_arr(w, "a.bool", GGUF_T_BOOL, a_bool, 3);
    gguf_w_arr(w, "a.u64", GGUF_T_UINT64, a_u64, 3);
    gguf_w_arr(w, "a.i64", GGUF_T_INT64, a_i64, 3);
    gguf_w_arr(w, "a.f64", GGUF_T_FLOAT64, a_f64, 3);
    const char *strs[3] = {"a", "", "c\xe2\x96\x81"};
    gguf_w_arr_str(w, "a.str", strs, 3);
    gguf_w_arr_i32(w, "a.empty", NULL, 0);
    gguf_w_arr_str(w, "a.estr", NULL, 0);

    float f5[5] = {1, -2, 3, -4, 5};
    int64_t n1[1] = {5};
    gguf_w_tensor(w, "w.f32", BE_F32, 1, n1, f5, sizeof f5);
    uint16_t h12[12];
    for (int i = 0; i < 12; i++)
        h12[i] = (uint16_t)(0x3c00 + i);
    int64_t n2[2] = {4, 3};
    gguf_w_tensor(w, "w.f16", BE_F16, 2, n2, h12, sizeof h12);
    int64_t n3[3] = {2, 2, 2};
    gguf_w_tensor(w, "w.bf16", BE_BF16, 3, n3, h12, 16);
    uint8_t q[4 * 34];
    for (int i = 0; i < (int)sizeof q; i++)
        q[i] = (uint8_t)(i * 7);
    int64_t n4[4] = {32, 2, 1, 2};
    gguf_w_tensor(w, "w.q8_0", BE_Q8_0, 4, n4, q, sizeof q);
    return w;
}

static void check_all_types(const struct gguf_file *f, const uint8_t *base) {
    uint32_t u;
    int64_t i;
    float x;
    int b;
    struct gguf_str s;
    ck_assert_uint_eq(gguf_version(f), 3);
    ck_assert_uint_eq(gguf_alignment(f), 32);
    ck_assert_int_eq(gguf_n_kv(f), 27);
    ck_assert_int_eq(gguf_n_tensors(f), 4);
    /* kv order and types as written */
    static const int types[13] = {GGUF_T_UINT8, GGUF_T_INT8, GGUF_T_UINT16, GGUF_T_INT16, GGUF_T_UINT32,
                                  GGUF_T_INT32, GGUF_T_FLOAT32, GGUF_T_BOOL, GGUF_T_STRING, GGUF_T_STRING,
                                  GGUF_T_UINT64, GGUF_T_INT64, GGUF_T_FLOAT64};
    for (int k = 0; k < 13; k++)
        ck_assert_int_eq(gguf_kv_at(f, k)->type, types[k]);
    ck_assert(gguf_kv_at(f, 27) == NULL && gguf_kv_at(f, -1) == NULL);
    ck_assert(gguf_str_eq(gguf_kv_at(f, 0)->key, "v.u8"));
    /* integer getters accept any integer type whose value fits */
    ck_assert_int_eq(gguf_get_u32(f, "v.u8", &u), 0);
    ck_assert_uint_eq(u, 200);
    ck_assert_int_eq(gguf_get_u32(f, "v.u16", &u), 0);
    ck_assert_uint_eq(u, 60000);
    ck_assert_int_eq(gguf_get_u32(f, "v.u32", &u), 0);
    ck_assert_uint_eq(u, 4000000000u);
    ck_assert_int_eq(gguf_get_u32(f, "v.i8", &u), SS_EBADMODEL);
    ck_assert_int_eq(gguf_get_u32(f, "v.u64", &u), SS_EBADMODEL);
    ck_assert_int_eq(gguf_get_u32(f, "v.f32", &u), SS_EBADMODEL);
    ck_assert_int_eq(gguf_get_u32(f, "v.bool", &u), SS_EBADMODEL);
    ck_assert_int_eq(gguf_get_u32(f, "nope", &u), SS_ENOTFOUND);
    ck_assert_int_eq(gguf_get_i64(f, "v.i8", &i), 0);
    ck_assert_int_eq(i, -100);
    ck_assert_int_eq(gguf_get_i64(f, "v.i16", &i), 0);
    ck_assert_int_eq(i, -30000);
    ck_assert_int_eq(gguf_get_i64(f, "v.i32", &i), 0);
    ck_assert_int_eq(i, -2000000000);
    ck_assert_int_eq(gguf_get_i64(f, "v.i64", &i), 0);
    ck_assert(i == INT64_MIN);
    ck_assert_int_eq(gguf_get_i64(f, "v.u64", &i), SS_EBADMODEL);
    ck_assert_int_eq(gguf_get_i64(f, "v.str", &i), SS_EBADMODEL);
    ck_assert_int_eq(gguf_get_f32(f, "v.f32", &x), 0);
    ck_assert(x == 1.5f);
    ck_assert_int_eq(gguf_get_f32(f, "v.f64", &x), 0);
    ck_assert(x == -2.25f);
    ck_assert_int_eq(gguf_get_f32(f, "v.u32", &x), SS_EBADMODEL);
    ck_assert_int_eq(gguf_get_bool(f, "v.bool", &b), 0);
    ck_assert_int_eq(b, 1);
    ck_assert_int_eq(gguf_get_bool(f, "v.u8", &b), SS_EBADMODEL);
    ck_assert_int_eq(gguf_get_str(f, "v.str", &s), 0);
    ck_assert(gguf_str_eq(s, "h\xc3\xa9llo"));
    ck_assert_int_eq(gguf_get_str(f, "v.empty", &s), 0);
    ck_assert(s.len == 0 && gguf_str_eq(s, ""));
    ck_assert_int_eq(gguf_get_str(f, "v.u32", &s), SS_EBADMODEL);
    ck_assert_int_eq(gguf_get_str(f, "absent", &s), SS_ENOTFOUND);
    /* raw scalar bytes */
    uint64_t u64;
    memcpy(&u64, gguf_find(f, "v.u64")->data, 8);
    ck_assert(u64 == (1ull << 63) + 5);
    /* numeric arrays */
    static const struct { const char *k; int t; double v[3]; } arrs[] = {
        {"a.u8", GGUF_T_UINT8, {1, 2, 255}},
        {"a.i8", GGUF_T_INT8, {-1, 0, 127}},
        {"a.u16", GGUF_T_UINT16, {1, 2, 65535}},
        {"a.i16", GGUF_T_INT16, {-32768, 0, 5}},
        {"a.u32", GGUF_T_UINT32, {7, 8, 4294967295.0}},
        {"a.i32", GGUF_T_INT32, {-7, 0, 2147483647.0}},
        {"a.f32", GGUF_T_FLOAT32, {0.5, -1.0, 3.25}},
        {"a.bool", GGUF_T_BOOL, {1, 0, 1}},
        {"a.u64", GGUF_T_UINT64, {1, 2, 18446744073709551615.0}},
        {"a.i64", GGUF_T_INT64, {-9223372036854775808.0, -1, 9223372036854775807.0}},
        {"a.f64", GGUF_T_FLOAT64, {1e300, -0.125, 0}},
    };
    for (size_t k = 0; k < sizeof arrs / sizeof arrs[0]; k++) {
        const struct gguf_kv *kv = gguf_find(f, arrs[k].k);
        ck_assert_msg(kv != NULL, "%s", arrs[k].k);
        ck_assert_int_eq(kv->type, GGUF_T_ARRAY);
        ck_assert_int_eq(kv->arr_type, arrs[k].t);
        ck_assert_uint_eq(kv->arr_n, 3);
        for (int j = 0; j < 3; j++) {
            double d;
            ck_assert_int_eq(gguf_arr_num(kv, (uint64_t)j, &d), 0);
            ck_assert_msg(d == arrs[k].v[j], "%s[%d] = %g", arrs[k].k, j, d);
        }
        double d;
        ck_assert_int_eq(gguf_arr_num(kv, 3, &d), SS_EINVAL);
        ck_assert_int_eq(gguf_arr_str(kv, 0, &s), SS_EBADMODEL);
    }
    const struct gguf_kv *kv = gguf_find(f, "a.str");
    ck_assert(kv && kv->arr_type == GGUF_T_STRING && kv->arr_n == 3);
    ck_assert_int_eq(gguf_arr_str(kv, 2, &s), 0);
    ck_assert(gguf_str_eq(s, "c\xe2\x96\x81"));
    ck_assert_int_eq(gguf_arr_str(kv, 1, &s), 0);
    ck_assert(s.len == 0);
    ck_assert_int_eq(gguf_arr_str(kv, 0, &s), 0);
    ck_assert(gguf_str_eq(s, "a"));
    ck_assert_int_eq(gguf_arr_str(kv, 3, &s), SS_EINVAL);
    double d;
    ck_assert_int_eq(gguf_arr_num(kv, 0, &d), SS_EBADMODEL);
    ck_assert_int_eq(gguf_arr_num(gguf_find(f, "v.u8"), 0, &d), SS_EBADMODEL);
    ck_assert_uint_eq(gguf_find(f, "a.empty")->arr_n, 0);
    ck_assert_uint_eq(gguf_find(f, "a.estr")->arr_n, 0);
    ck_assert_int_eq(gguf_arr_str(gguf_find(f, "a.estr"), 0, &s), SS_EINVAL);
    /* tensors */
    static const struct { const char *n; int type; uint32_t nd; int64_t ne[4]; size_t nb; } ts[] = {
        {"w.f32", BE_F32, 1, {5, 1, 1, 1}, 20},
        {"w.f16", BE_F16, 2, {4, 3, 1, 1}, 24},
        {"w.bf16", BE_BF16, 3, {2, 2, 2, 1}, 16},
        {"w.q8_0", BE_Q8_0, 4, {32, 2, 1, 2}, 136},
    };
    for (int k = 0; k < 4; k++) {
        const struct gguf_tensor_info *t = gguf_find_tensor(f, ts[k].n);
        ck_assert_msg(t != NULL, "%s", ts[k].n);
        ck_assert(t == gguf_tensor_at(f, k));
        ck_assert_int_eq(t->type, ts[k].type);
        ck_assert_uint_eq(t->n_dims, ts[k].nd);
        for (int j = 0; j < 4; j++)
            ck_assert_int_eq(t->ne[j], ts[k].ne[j]);
        ck_assert_uint_eq(t->nbytes, ts[k].nb);
        ck_assert_uint_eq(t->offset % 32, 0);
        ck_assert_uint_eq(((const uint8_t *)t->data - base) % 32, 0);
    }
    const struct gguf_tensor_info *t = gguf_find_tensor(f, "w.f32");
    float f5[5];
    memcpy(f5, t->data, 20);
    ck_assert(f5[0] == 1 && f5[4] == 5);
    t = gguf_find_tensor(f, "w.q8_0");
    for (int j = 0; j < 136; j++)
        ck_assert_uint_eq(((const uint8_t *)t->data)[j], (uint8_t)(j * 7));
    ck_assert(gguf_find_tensor(f, "w.f3") == NULL);
    ck_assert(gguf_find_tensor(f, "w.f322") == NULL);
    ck_assert(gguf_tensor_at(f, 4) == NULL);
}

START_TEST(test_roundtrip) {
    struct gguf_writer *w = all_types_writer();
    uint8_t *buf;
    size_t len;
    char err[256], path[512];
    ck_assert_msg(gguf_writer_to_mem(w, &buf, &len, err, sizeof err) == 0, "%s", err);
    struct gguf_file *f = NULL;
    ck_assert_msg(gguf_open_mem(&f, buf, len, err, sizeof err) == 0, "%s", err);
    check_all_types(f, buf);
    gguf_close(f);

    tmp_path(path, sizeof path, "rt.gguf");
    ck_assert_msg(gguf_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    size_t flen;
    uint8_t *fb = read_file_all(path, &flen);
    ck_assert_uint_eq(flen, len);
    ck_assert(memcmp(fb, buf, len) == 0); /* save and to_mem agree byte for byte */
    free(fb);
    ck_assert_msg(gguf_open(&f, path, err, sizeof err) == 0, "%s", err);
    const uint8_t *base = (const uint8_t *)gguf_kv_at(f, 0)->key.s - 32; /* key at byte 32 */
    check_all_types(f, base);
    gguf_close(f);
    unlink(path);

    /* version 2 has the same layout and is accepted */
    put_u32_at(buf, 4, 2);
    ck_assert_msg(gguf_open_mem(&f, buf, len, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(gguf_version(f), 2);
    gguf_close(f);
    free(buf);
    gguf_writer_free(w);
    gguf_close(NULL);
}
END_TEST

START_TEST(test_alignment_and_empty) {
    struct gguf_writer *w = gguf_writer_new();
    gguf_w_u32(w, "general.alignment", 64);
    gguf_w_str(w, "pad", "abc");
    uint8_t data[3 * 4] = {0};
    int64_t n[1] = {3};
    gguf_w_tensor(w, "a", BE_F32, 1, n, data, 12);
    gguf_w_tensor(w, "b", BE_F32, 1, n, data, 12);
    uint8_t *buf;
    size_t len;
    char err[256];
    ck_assert_msg(gguf_writer_to_mem(w, &buf, &len, err, sizeof err) == 0, "%s", err);
    struct gguf_file *f;
    ck_assert_msg(gguf_open_mem(&f, buf, len, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(gguf_alignment(f), 64);
    ck_assert_uint_eq(gguf_find_tensor(f, "b")->offset, 64);
    ck_assert_uint_eq(((const uint8_t *)gguf_find_tensor(f, "a")->data - buf) % 64, 0);
    gguf_close(f);
    free(buf);
    gguf_writer_free(w);

    /* no kvs, no tensors: just the header */
    w = gguf_writer_new();
    ck_assert_int_eq(gguf_writer_to_mem(w, &buf, &len, err, sizeof err), 0);
    ck_assert_uint_eq(len, 24);
    ck_assert_int_eq(gguf_open_mem(&f, buf, len, err, sizeof err), 0);
    ck_assert_int_eq(gguf_n_kv(f) + gguf_n_tensors(f), 0);
    ck_assert(gguf_find(f, "x") == NULL && gguf_find_tensor(f, "x") == NULL);
    gguf_close(f);
    free(buf);
    gguf_writer_free(w);
}
END_TEST

static int zero_fill(void *ctx, void *dst, size_t nbytes) {
    (void)ctx;
    memset(dst, 0, nbytes);
    return 0;
}

START_TEST(test_writer_errors) {
    char err[256];
    uint8_t *buf;
    size_t len;
    float x[4] = {0};
    int64_t n[1] = {4};
    struct gguf_writer *w = gguf_writer_new();
    gguf_w_tensor(w, "t", BE_F32, 1, n, x, 15); /* wrong size */
    gguf_w_u32(w, "after", 1);                 /* ignored: error is sticky */
    ck_assert_int_eq(gguf_writer_to_mem(w, &buf, &len, err, sizeof err), SS_EINVAL);
    ck_assert_msg(strstr(err, "'t'") != NULL, "%s", err);
    gguf_writer_free(w);

    w = gguf_writer_new();
    int64_t n33[1] = {33};
    gguf_w_tensor_gen(w, "q", BE_Q8_0, 1, n33, zero_fill, NULL); /* 33 not a Q8_0 row */
    ck_assert_int_eq(gguf_writer_to_mem(w, &buf, &len, err, sizeof err), SS_EINVAL);
    gguf_writer_free(w);

    w = gguf_writer_new();
    gguf_w_u32(w, "general.alignment", 48);
    ck_assert_int_eq(gguf_writer_to_mem(w, &buf, &len, err, sizeof err), SS_EINVAL);
    ck_assert_msg(strstr(err, "power of two") != NULL, "%s", err);
    gguf_writer_free(w);

    w = gguf_writer_new();
    gguf_w_str(w, "", "x");
    ck_assert_int_eq(gguf_writer_save(w, "/nonexistent/x", err, sizeof err), SS_EINVAL);
    gguf_writer_free(w);

    w = gguf_writer_new();
    gguf_w_u32(w, "a", 1);
    ck_assert_int_eq(gguf_writer_save(w, "/nonexistent-dir/x.gguf", err, sizeof err), SS_EIO);
    ck_assert_msg(strstr(err, "nonexistent-dir") != NULL, "%s", err);
    /* save-time errors do not poison the writer */
    ck_assert_int_eq(gguf_writer_to_mem(w, &buf, &len, err, sizeof err), 0);
    free(buf);
    gguf_writer_free(w);

    /* NULL writer (as after an allocation failure) */
    gguf_w_u32(NULL, "a", 1);
    ck_assert_int_eq(gguf_writer_save(NULL, "/tmp/x", err, sizeof err), SS_ENOMEM);
    gguf_writer_free(NULL);
}
END_TEST

/* -------------------------------------------------------------- open errors */

START_TEST(test_open_errors) {
    struct gguf_file *f = (struct gguf_file *)1;
    char err[256], path[512];
    ck_assert_int_eq(gguf_open(&f, "/nonexistent/model.gguf", err, sizeof err), SS_EIO);
    ck_assert(f == NULL);
    ck_assert_msg(strstr(err, "/nonexistent/model.gguf") != NULL, "%s", err);
    ck_assert_int_eq(gguf_open(&f, "/", err, sizeof err), SS_EIO);
    tmp_path(path, sizeof path, "empty.gguf");
    write_file_all(path, "", 0);
    ck_assert_int_eq(gguf_open(&f, path, err, sizeof err), SS_EBADMODEL);
    ck_assert_msg(strstr(err, "truncated") != NULL, "%s", err);
    unlink(path);
    ck_assert_int_eq(gguf_open_mem(&f, NULL, 0, err, sizeof err), SS_EBADMODEL);
    ck_assert_int_eq(gguf_open_mem(&f, "GGUF", 4, NULL, 0), SS_EBADMODEL); /* no err buffer: fine */
}
END_TEST

/* --------------------------------------------------------------- truncation */

START_TEST(test_truncation_every_prefix) {
    size_t len;
    uint8_t *buf = small_file(&len);
    char err[256];
    struct gguf_file *f;
    uint8_t *copy;
    ck_assert_int_eq(open_copy(buf, len, &f, &copy, err, sizeof err), 0);
    gguf_close(f);
    free(copy);
    for (size_t n = 0; n < len; n++) {
        err[0] = 0;
        int rc = open_copy(buf, n, &f, &copy, err, sizeof err);
        ck_assert_msg(rc == SS_EBADMODEL, "prefix %zu of %zu: rc %d", n, len, rc);
        ck_assert_msg(strncmp(err, "gguf: byte ", 11) == 0 && strlen(err) > 20, "prefix %zu: '%s'", n, err);
        ck_assert(f == NULL);
        free(copy);
    }
    /* the mmap path too, on a sample of lengths */
    char path[512];
    tmp_path(path, sizeof path, "trunc.gguf");
    for (size_t n = 0; n < len; n += 13) {
        write_file_all(path, buf, n);
        ck_assert_int_eq(gguf_open(&f, path, err, sizeof err), SS_EBADMODEL);
    }
    unlink(path);
    free(buf);
}
END_TEST

START_TEST(test_truncation_generated) {
    /* a generated model: header prefixes (tokenizer arrays) and data prefixes */
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.dim = 32, o.n_heads = 2, o.n_kv_heads = 1, o.ffn_dim = 64, o.n_layers = 1, o.n_vocab = 300;
    o.tokenizer = "bpe";
    char path[512], err[256];
    tmp_path(path, sizeof path, "trunc_gen.gguf");
    ck_assert_msg(genmodel_write(&o, path, err, sizeof err) == 0, "%s", err);
    size_t len;
    uint8_t *buf = read_file_all(path, &len);
    unlink(path);
    struct gguf_file *f;
    uint8_t *copy;
    size_t n_tried = 0;
    for (size_t n = 0; n < len; n += (n < 8192 ? 7 : 997)) {
        int rc = open_copy(buf, n, &f, &copy, err, sizeof err);
        ck_assert_msg(rc == SS_EBADMODEL, "prefix %zu of %zu: rc %d", n, len, rc);
        free(copy);
        n_tried++;
    }
    ck_assert_int_eq(open_copy(buf, len - 1, &f, &copy, err, sizeof err), SS_EBADMODEL);
    ck_assert_msg(strstr(err, "outside the data section") != NULL, "%s", err);
    free(copy);
    ck_assert(n_tried > 1000);
    free(buf);
}
END_TEST

/* -------------------------------------------------------------- corruptions */

/* Byte positions of one tensor's info fields in the small file. */
struct tpos {
    size_t name, n_dims, ne, type, offset;
};

static struct tpos tensor_pos(const uint8_t *buf, size_t len, const char *name) {
    struct gguf_file *f;
    char err[256];
    ck_assert_msg(gguf_open_mem(&f, buf, len, err, sizeof err) == 0, "%s", err);
    const struct gguf_tensor_info *t = gguf_find_tensor(f, name);
    ck_assert(t != NULL);
    struct tpos p;
    p.name = (size_t)((const uint8_t *)t->name.s - buf);
    p.n_dims = p.name + t->name.len;
    p.ne = p.n_dims + 4;
    p.type = p.ne + 8 * t->n_dims;
    p.offset = p.type + 4;
    gguf_close(f);
    return p;
}

static size_t kv_data_pos(const uint8_t *buf, size_t len, const char *key) {
    struct gguf_file *f;
    char err[256];
    ck_assert(gguf_open_mem(&f, buf, len, err, sizeof err) == 0);
    size_t at = (size_t)(gguf_find(f, key)->data - buf);
    gguf_close(f);
    return at;
}

enum corr {
    C_MAGIC, C_VERSION4, C_VERSION1, C_BIGENDIAN, C_HUGE_STRLEN, C_HUGE_KV, C_HUGE_TENSORS, C_VTYPE,
    C_NESTED, C_ARR_ETYPE, C_HUGE_ARR, C_HUGE_STRARR, C_BOOL, C_EMPTY_KEY, C_DUP_KEY, C_ALIGN_NP2,
    C_ALIGN_TYPE, C_OFF_RANGE, C_MISALIGNED, C_DUP_TENSOR, C_NDIMS0, C_NDIMS5, C_TTYPE99, C_TTYPE4,
    C_DIM_OVERFLOW, C_DIM0, C_BLOCK, C_TOO_BIG, C_COUNT
};

static const char *const corr_expect[C_COUNT] = {
    [C_MAGIC] = "bad magic", [C_VERSION4] = "unsupported version 4", [C_VERSION1] = "unsupported version 1",
    [C_BIGENDIAN] = "big-endian", [C_HUGE_STRLEN] = "string length", [C_HUGE_KV] = "kv count",
    [C_HUGE_TENSORS] = "tensor count", [C_VTYPE] = "unknown value type 99",
    [C_NESTED] = "arrays of arrays", [C_ARR_ETYPE] = "unknown array element type",
    [C_HUGE_ARR] = "exceeds the", [C_HUGE_STRARR] = "cannot fit", [C_BOOL] = "bool value 2",
    [C_EMPTY_KEY] = "empty key", [C_DUP_KEY] = "duplicate key 'k.aaa'",
    [C_ALIGN_NP2] = "not a power of two", [C_ALIGN_TYPE] = "not an integer",
    [C_OFF_RANGE] = "outside the data section", [C_MISALIGNED] = "not aligned to 32",
    [C_DUP_TENSOR] = "duplicate tensor name 't.aaa'", [C_NDIMS0] = "n_dims 0", [C_NDIMS5] = "n_dims 5",
    [C_TTYPE99] = "unknown tensor type 99", [C_TTYPE4] = "unknown tensor type 4",
    [C_DIM_OVERFLOW] = "overflow", [C_DIM0] = "must be > 0", [C_BLOCK] = "block size",
    [C_TOO_BIG] = "outside the data section",
};

static void corrupt(uint8_t *b, size_t len, int c) {
    struct tpos a = tensor_pos(b, len, "t.aaa"), q = tensor_pos(b, len, "t.bbb");
    size_t farr = kv_data_pos(b, len, "k.farr"), sarr = kv_data_pos(b, len, "k.sarr");
    size_t align = kv_data_pos(b, len, "general.alignment");
    switch (c) {
    case C_MAGIC: b[0] = 'X'; break;
    case C_VERSION4: put_u32_at(b, 4, 4); break;
    case C_VERSION1: put_u32_at(b, 4, 1); break;
    case C_BIGENDIAN: put_u32_at(b, 4, 0x03000000u); break;
    case C_HUGE_STRLEN: put_u64_at(b, 24, 1ull << 62); break;
    case C_HUGE_KV: put_u64_at(b, 16, 1ull << 60); break;
    case C_HUGE_TENSORS: put_u64_at(b, 8, UINT64_MAX); break;
    case C_VTYPE: put_u32_at(b, 52, 99); break;
    case C_NESTED: put_u32_at(b, farr - 12, GGUF_T_ARRAY); break;
    case C_ARR_ETYPE: put_u32_at(b, farr - 12, 13); break;
    case C_HUGE_ARR: put_u64_at(b, farr - 8, 1ull << 61); break;
    case C_HUGE_STRARR: put_u64_at(b, sarr - 8, 1ull << 40); break;
    case C_BOOL: b[kv_data_pos(b, len, "k.flag")] = 2; break;
    case C_EMPTY_KEY: put_u64_at(b, 24, 0); break;
    case C_DUP_KEY: memcpy(b + kv_data_pos(b, len, "k.bbb") - 4 - 5, "k.aaa", 5); break;
    case C_ALIGN_NP2: put_u32_at(b, align, 48); break;
    case C_ALIGN_TYPE: put_u32_at(b, align - 4, GGUF_T_FLOAT32); break;
    case C_OFF_RANGE: put_u64_at(b, q.offset, 1ull << 40); break;
    case C_MISALIGNED: {
        uint64_t off;
        memcpy(&off, b + q.offset, 8);
        put_u64_at(b, q.offset, off + 4);
        break;
    }
    case C_DUP_TENSOR: memcpy(b + q.name, "t.aaa", 5); break;
    case C_NDIMS0: put_u32_at(b, a.n_dims, 0); break;
    case C_NDIMS5: put_u32_at(b, a.n_dims, 5); break;
    case C_TTYPE99: put_u32_at(b, a.type, 99); break;
    case C_TTYPE4: put_u32_at(b, a.type, 4); break;
    case C_DIM_OVERFLOW:
        put_u64_at(b, a.ne, 1ull << 40);
        put_u64_at(b, a.ne + 8, 1ull << 40);
        break;
    case C_DIM0: put_u64_at(b, a.ne + 8, 0); break;
    case C_BLOCK: put_u64_at(b, q.ne, 33); break;
    case C_TOO_BIG: put_u64_at(b, a.ne + 8, 1000); break;
    }
}

START_TEST(test_corruptions) {
    size_t len;
    uint8_t *base = small_file(&len);
    for (int c = 0; c < C_COUNT; c++) {
        uint8_t *b = malloc(len);
        memcpy(b, base, len);
        corrupt(b, len, c);
        struct gguf_file *f = NULL;
        char err[256] = "";
        int rc = gguf_open_mem(&f, b, len, err, sizeof err);
        if (getenv("TEST_GGUF_VERBOSE"))
            fprintf(stderr, "corruption %2d: %s\n", c, err);
        ck_assert_msg(rc == SS_EBADMODEL, "corruption %d: rc %d (%s)", c, rc, err);
        ck_assert_msg(strstr(err, corr_expect[c]) != NULL, "corruption %d: expected '%s' in '%s'", c,
                      corr_expect[c], err);
        ck_assert_msg(strncmp(err, "gguf: byte ", 11) == 0, "corruption %d: no byte offset in '%s'", c, err);
        ck_assert(f == NULL);
        free(b);
    }
    /* unknown tensor type also fails via the mmap path, naming the tensor */
    uint8_t *b = malloc(len);
    memcpy(b, base, len);
    corrupt(b, len, C_TTYPE99);
    char path[512], err[256];
    tmp_path(path, sizeof path, "corrupt.gguf");
    write_file_all(path, b, len);
    struct gguf_file *f;
    ck_assert_int_eq(gguf_open(&f, path, err, sizeof err), SS_EBADMODEL);
    ck_assert_msg(strstr(err, "tensor 't.aaa'") != NULL, "%s", err);
    unlink(path);
    free(b);
    free(base);
}
END_TEST

/* ---------------------------------------------------------------- mutations */

static void mutate_and_open(const uint8_t *base, size_t len, size_t hot, uint64_t *rng, int iters, int *n_ok,
                            int *n_bad) {
    for (int it = 0; it < iters; it++) {
        uint8_t *b = malloc(len);
        memcpy(b, base, len);
        int n_flips = 1 + (int)(t_rng(rng) % 4);
        for (int k = 0; k < n_flips; k++) {
            size_t at = (t_rng(rng) % 10 < 9) ? t_rng(rng) % hot : t_rng(rng) % len;
            switch (t_rng(rng) % 4) {
            case 0: b[at] ^= (uint8_t)(1u << (t_rng(rng) % 8)); break;
            case 1: b[at] = 0xff; break;
            case 2: b[at] = 0; break;
            default: b[at] = (uint8_t)t_rng(rng); break;
            }
        }
        struct gguf_file *f = NULL;
        char err[256] = "";
        int rc = gguf_open_mem(&f, b, len, err, sizeof err);
        if (rc == 0) {
            walk_all(f);
            gguf_close(f);
            (*n_ok)++;
        } else {
            ck_assert_msg(rc == SS_EBADMODEL, "mutation %d: rc %d", it, rc);
            ck_assert(err[0] != 0 && f == NULL);
            (*n_bad)++;
        }
        free(b);
    }
}

START_TEST(test_random_mutations) {
    uint64_t rng = 0x1234567887654321ull;
    int ok = 0, bad = 0, scale = 1;
    if (getenv("TEST_GGUF_MUTATION_SCALE")) /* longer fuzzing runs by hand */
        scale = atoi(getenv("TEST_GGUF_MUTATION_SCALE"));
    if (getenv("TEST_GGUF_MUTATION_SEED"))
        rng = strtoull(getenv("TEST_GGUF_MUTATION_SEED"), NULL, 0) | 1;
    size_t len;
    uint8_t *small = small_file(&len);
    mutate_and_open(small, len, len, &rng, 300 * scale, &ok, &bad);
    free(small);

    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.dim = 32, o.n_heads = 2, o.n_kv_heads = 1, o.ffn_dim = 64, o.n_layers = 1, o.n_vocab = 300;
    char path[512], err[256];
    tmp_path(path, sizeof path, "mut.gguf");
    ck_assert_msg(genmodel_write(&o, path, err, sizeof err) == 0, "%s", err);
    uint8_t *gen = read_file_all(path, &len);
    unlink(path);
    struct gguf_file *f;
    ck_assert(gguf_open_mem(&f, gen, len, err, sizeof err) == 0);
    size_t hot = (size_t)((const uint8_t *)gguf_tensor_at(f, 0)->data - gen); /* header bytes */
    gguf_close(f);
    mutate_and_open(gen, len, hot, &rng, 200 * scale, &ok, &bad);
    free(gen);
    fprintf(stderr, "test_gguf: random mutations: %d opened, %d rejected\n", ok, bad);
    ck_assert(ok > 10 && bad > 100);
}
END_TEST

static Suite *gguf_suite(void) {
    Suite *s = suite_create("gguf");
    const struct tu_case tests[] = {
        {"roundtrip", test_roundtrip},
        {"alignment", test_alignment_and_empty},
        {"writer_errors", test_writer_errors},
        {"open_errors", test_open_errors},
        {"truncation", test_truncation_every_prefix},
        {"truncation_gen", test_truncation_generated},
        {"corruptions", test_corruptions},
        {"mutations", test_random_mutations},
    };
    tu_check_add(s, tests, TU_NCASES(tests), 120);
    return s;
}

int main(void) {
    int failed = tu_check_run(gguf_suite());
    return failed != 0;
}
