/* gguf_writer.c - build a GGUF v3 file in memory, then write it out.
 *
 * Keys/values are serialised into one growing byte buffer as they are added;
 * tensors keep their metadata plus either a private copy of the bytes or a
 * generator callback run at save time (so the model generator never holds more
 * than one tensor). Layout on save:
 *
 *   header | kv bytes | tensor infos | pad to A | t0 | pad | t1 | pad | ... | tn
 *
 * with A = 32 unless a u32 "general.alignment" key says otherwise; each
 * tensor's offset is a multiple of A and there is no padding after the last.
 *
 * Errors are sticky (first one wins) and reported by save/to_mem. A writer is
 * used by one thread at a time.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "kernels/backend.h"

struct gw_tensor {
    char *name;
    int type;
    int n_dims;
    int64_t ne[4];
    size_t nbytes;
    void *data; /* owned copy, or NULL when gen is set */
    gguf_gen_fn gen;
    void *gen_ctx;
};

struct gguf_writer {
    uint8_t *kv;
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    struct gw_tensor *t;
    size_t n_t, cap_t;
    size_t alignment;
    int err;
    char msg[256];
};

static const uint8_t w_vsize[GGUF_T_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

__attribute__((format(printf, 3, 4))) static void w_fail(struct gguf_writer *w, int code, const char *fmt, ...) {
    if (w->err)
        return;
    w->err = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg, sizeof w->msg, fmt, ap);
    va_end(ap);
}

struct gguf_writer *gguf_writer_new(void) {
    struct gguf_writer *w = calloc(1, sizeof *w);
    if (w)
        w->alignment = 32;
    return w;
}

void gguf_writer_free(struct gguf_writer *w) {
    if (!w)
        return;
    for (size_t i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free(w->t);
    free(w->kv);
    free(w);
}

/* Append n raw bytes to the kv buffer. */
static void put(struct gguf_writer *w, const void *p, size_t n) {
    if (w->err)
        return;
    if (n > SIZE_MAX / 2 - w->kv_len) {
        w_fail(w, SS_ENOMEM, "gguf writer: metadata too large");
        return;
    }
    if (w->kv_len + n > w->kv_cap) {
        size_t nc = w->kv_cap ? w->kv_cap : 1024;
        while (nc < w->kv_len + n)
            nc *= 2;
        uint8_t *q = realloc(w->kv, nc);
        if (!q) {
            w_fail(w, SS_ENOMEM, "gguf writer: out of memory");
            return;
        }
        w->kv = q;
        w->kv_cap = nc;
    }
    if (n)
        memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
}

static void put_u32(struct gguf_writer *w, uint32_t v) { put(w, &v, 4); }
static void put_u64(struct gguf_writer *w, uint64_t v) { put(w, &v, 8); }

static void put_str(struct gguf_writer *w, const char *s) {
    size_t n = strlen(s);
    put_u64(w, n);
    put(w, s, n);
}

/* Key and type tag; returns 0 if the writer may go on. */
static int begin_kv(struct gguf_writer *w, const char *key, int type) {
    if (!w || w->err)
        return -1;
    if (!key || !key[0]) {
        w_fail(w, SS_EINVAL, "gguf writer: empty key");
        return -1;
    }
    put_str(w, key);
    put_u32(w, (uint32_t)type);
    w->n_kv++;
    return w->err ? -1 : 0;
}

void gguf_w_val(struct gguf_writer *w, const char *key, int type, const void *v) {
    if (w && !w->err && (type < 0 || type >= GGUF_T_COUNT || !w_vsize[type] || !v)) {
        w_fail(w, SS_EINVAL, "gguf writer: key '%s': bad scalar type %d", key ? key : "", type);
        return;
    }
    if (begin_kv(w, key, type))
        return;
    put(w, v, w_vsize[type]);
    if (type == GGUF_T_UINT32 && strcmp(key, "general.alignment") == 0) {
        uint32_t a;
        memcpy(&a, v, 4);
        if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 30))
            w_fail(w, SS_EINVAL, "gguf writer: general.alignment %u is not a power of two", a);
        else
            w->alignment = a;
    }
}

void gguf_w_u32(struct gguf_writer *w, const char *key, uint32_t v) { gguf_w_val(w, key, GGUF_T_UINT32, &v); }
void gguf_w_i32(struct gguf_writer *w, const char *key, int32_t v) { gguf_w_val(w, key, GGUF_T_INT32, &v); }
void gguf_w_f32(struct gguf_writer *w, const char *key, float v) { gguf_w_val(w, key, GGUF_T_FLOAT32, &v); }
void gguf_w_u64(struct gguf_writer *w, const char *key, uint64_t v) { gguf_w_val(w, key, GGUF_T_UINT64, &v); }
void gguf_w_i64(struct gguf_writer *w, const char *key, int64_t v) { gguf_w_val(w, key, GGUF_T_INT64, &v); }
void gguf_w_f64(struct gguf_writer *w, const char *key, double v) { gguf_w_val(w, key, GGUF_T_FLOAT64, &v); }

void gguf_w_bool(struct gguf_writer *w, const char *key, int v) {
    uint8_t b = v != 0;
    gguf_w_val(w, key, GGUF_T_BOOL, &b);
}

void gguf_w_str(struct gguf_writer *w, const char *key, const char *v) {
    if (w && !w->err && !v) {
        w_fail(w, SS_EINVAL, "gguf writer: key '%s': NULL string", key ? key : "");
        return;
    }
    if (begin_kv(w, key, GGUF_T_STRING))
        return;
    put_str(w, v);
}

void gguf_w_arr(struct gguf_writer *w, const char *key, int elem_type, const void *v, uint64_t n) {
    if (w && !w->err &&
        (elem_type < 0 || elem_type >= GGUF_T_COUNT || !w_vsize[elem_type] || (n && !v) ||
         n > (SIZE_MAX / 4) / w_vsize[elem_type])) {
        w_fail(w, SS_EINVAL, "gguf writer: key '%s': bad array (type %d, n %llu)", key ? key : "", elem_type,
               (unsigned long long)n);
        return;
    }
    if (begin_kv(w, key, GGUF_T_ARRAY))
        return;
    put_u32(w, (uint32_t)elem_type);
    put_u64(w, n);
    put(w, v, (size_t)n * w_vsize[elem_type]);
}

void gguf_w_arr_f32(struct gguf_writer *w, const char *key, const float *v, uint64_t n) {
    gguf_w_arr(w, key, GGUF_T_FLOAT32, v, n);
}

void gguf_w_arr_i32(struct gguf_writer *w, const char *key, const int32_t *v, uint64_t n) {
    gguf_w_arr(w, key, GGUF_T_INT32, v, n);
}

void gguf_w_arr_str(struct gguf_writer *w, const char *key, const char *const *v, uint64_t n) {
    if (w && !w->err && n && !v) {
        w_fail(w, SS_EINVAL, "gguf writer: key '%s': NULL string array", key ? key : "");
        return;
    }
    for (uint64_t i = 0; w && !w->err && i < n; i++)
        if (!v[i]) {
            w_fail(w, SS_EINVAL, "gguf writer: key '%s': element %llu is NULL", key ? key : "",
                   (unsigned long long)i);
            return;
        }
    if (begin_kv(w, key, GGUF_T_ARRAY))
        return;
    put_u32(w, GGUF_T_STRING);
    put_u64(w, n);
    for (uint64_t i = 0; i < n && !w->err; i++)
        put_str(w, v[i]);
}

/* Shared part of the two tensor adders: validates and appends metadata.
 * Returns the new entry or NULL (error recorded). */
static struct gw_tensor *add_tensor(struct gguf_writer *w, const char *name, int type, int n_dims,
                                    const int64_t *ne) {
    if (!w || w->err)
        return NULL;
    if (!name || !name[0] || n_dims < 1 || n_dims > 4 || !ne) {
        w_fail(w, SS_EINVAL, "gguf writer: tensor '%s': bad name or n_dims %d", name ? name : "", n_dims);
        return NULL;
    }
    int64_t rows = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] <= 0 || (d > 0 && __builtin_mul_overflow(rows, ne[d], &rows))) {
            w_fail(w, SS_EINVAL, "gguf writer: tensor '%s': bad dim %d", name, d);
            return NULL;
        }
    }
    size_t row = be_row_bytes(type, ne[0]), nbytes;
    if (row == 0 || __builtin_mul_overflow(row, (size_t)rows, &nbytes)) {
        w_fail(w, SS_EINVAL, "gguf writer: tensor '%s': type %d cannot hold rows of %lld", name, type,
               (long long)ne[0]);
        return NULL;
    }
    if (w->n_t == w->cap_t) {
        size_t nc = w->cap_t ? w->cap_t * 2 : 32;
        struct gw_tensor *p = realloc(w->t, nc * sizeof *p);
        if (!p) {
            w_fail(w, SS_ENOMEM, "gguf writer: out of memory");
            return NULL;
        }
        w->t = p;
        w->cap_t = nc;
    }
    struct gw_tensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) {
        w_fail(w, SS_ENOMEM, "gguf writer: out of memory");
        return NULL;
    }
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < 4; d++)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    t->nbytes = nbytes;
    w->n_t++;
    return t;
}

void gguf_w_tensor(struct gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne,
                   const void *data, size_t nbytes) {
    struct gw_tensor *t = add_tensor(w, name, type, n_dims, ne);
    if (!t)
        return;
    if (t->nbytes != nbytes || !data) {
        w_fail(w, SS_EINVAL, "gguf writer: tensor '%s': %zu bytes given, shape needs %zu", name, nbytes,
               t->nbytes);
        return;
    }
    t->data = malloc(nbytes);
    if (!t->data) {
        w_fail(w, SS_ENOMEM, "gguf writer: out of memory for tensor '%s'", name);
        return;
    }
    memcpy(t->data, data, nbytes);
}

void gguf_w_tensor_gen(struct gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne,
                       gguf_gen_fn gen, void *ctx) {
    if (w && !w->err && !gen) {
        w_fail(w, SS_EINVAL, "gguf writer: tensor '%s': NULL generator", name ? name : "");
        return;
    }
    struct gw_tensor *t = add_tensor(w, name, type, n_dims, ne);
    if (t) {
        t->gen = gen;
        t->gen_ctx = ctx;
    }
}

/* ------------------------------------------------------------------- save */

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Header + kvs + tensor infos, unpadded; offsets assigned from 0. Returns a
 * malloc'd buffer, *data_off = aligned start of data, *total = file size. */
static uint8_t *build_head(struct gguf_writer *w, size_t *head_len, size_t *data_off, size_t *total) {
    struct gguf_writer h = {0}; /* reuse put() on a scratch writer */
    put(&h, "GGUF", 4);
    put_u32(&h, 3);
    put_u64(&h, w->n_t);
    put_u64(&h, w->n_kv);
    put(&h, w->kv, w->kv_len);
    size_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const struct gw_tensor *t = &w->t[i];
        off = align_up(off, w->alignment);
        put_str(&h, t->name);
        put_u32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++)
            put_u64(&h, (uint64_t)t->ne[d]);
        put_u32(&h, (uint32_t)t->type);
        put_u64(&h, off);
        off += t->nbytes;
    }
    if (h.err) {
        free(h.kv);
        w_fail(w, h.err, "%s", h.msg);
        return NULL;
    }
    *head_len = h.kv_len;
    *data_off = w->n_t ? align_up(h.kv_len, w->alignment) : h.kv_len;
    *total = *data_off + off;
    return h.kv;
}

static int report(struct gguf_writer *w, char *err, size_t err_len) {
    if (!w) {
        if (err && err_len)
            snprintf(err, err_len, "gguf writer: out of memory");
        return SS_ENOMEM;
    }
    if (w->err && err && err_len)
        snprintf(err, err_len, "%s", w->msg);
    return w->err;
}

/* Fill one tensor's bytes into dst. */
static int tensor_bytes(struct gguf_writer *w, const struct gw_tensor *t, void *dst) {
    if (!t->gen) {
        memcpy(dst, t->data, t->nbytes);
        return 0;
    }
    int rc = t->gen(t->gen_ctx, dst, t->nbytes);
    if (rc)
        w_fail(w, rc < 0 ? rc : SS_EINTERNAL, "gguf writer: generator for tensor '%s' failed (%d)", t->name, rc);
    return rc;
}

int gguf_writer_to_mem(struct gguf_writer *w, uint8_t **out, size_t *out_len, char *err, size_t err_len) {
    if (!w || w->err)
        return report(w, err, err_len);
    size_t hl, doff, total;
    uint8_t *head = build_head(w, &hl, &doff, &total);
    if (!head)
        return report(w, err, err_len);
    uint8_t *buf = calloc(1, total ? total : 1);
    if (!buf) {
        free(head);
        w_fail(w, SS_ENOMEM, "gguf writer: out of memory for a %zu-byte file", total);
        int rc = report(w, err, err_len);
        w->err = 0;
        return rc;
    }
    memcpy(buf, head, hl);
    free(head);
    size_t off = doff;
    for (size_t i = 0; i < w->n_t; i++) {
        off = doff + align_up(off - doff, w->alignment);
        if (tensor_bytes(w, &w->t[i], buf + off)) {
            free(buf);
            int rc = report(w, err, err_len);
            w->err = 0;
            return rc;
        }
        off += w->t[i].nbytes;
    }
    *out = buf;
    *out_len = total;
    return 0;
}

static int write_all(FILE *fp, const void *p, size_t n) { return fwrite(p, 1, n, fp) == n ? 0 : -1; }

/* Streams to "<path>.tmp.<pid>", then renames over path. */
int gguf_writer_save(struct gguf_writer *w, const char *path, char *err, size_t err_len) {
    static const uint8_t zeros[64];
    if (!w || w->err)
        return report(w, err, err_len);
    size_t hl, doff, total;
    uint8_t *head = build_head(w, &hl, &doff, &total);
    if (!head)
        return report(w, err, err_len);
    size_t max_gen = 0;
    for (size_t i = 0; i < w->n_t; i++)
        if (w->t[i].gen && w->t[i].nbytes > max_gen)
            max_gen = w->t[i].nbytes;
    uint8_t *scratch = max_gen ? malloc(max_gen) : NULL;
    char tmp[4096];
    FILE *fp = NULL;
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (max_gen && !scratch)
        w_fail(w, SS_ENOMEM, "gguf writer: out of memory (%zu-byte tensor)", max_gen);
    else if (n < 0 || (size_t)n >= sizeof tmp)
        w_fail(w, SS_EINVAL, "gguf writer: path too long");
    else if (!(fp = fopen(tmp, "wb")))
        w_fail(w, SS_EIO, "gguf writer: cannot create '%s': %s", tmp, strerror(errno));
    if (!w->err && write_all(fp, head, hl))
        w_fail(w, SS_EIO, "gguf writer: write to '%s' failed", tmp);
    size_t pos = hl, rel = 0;
    for (size_t i = 0; i < w->n_t && !w->err; i++) {
        const struct gw_tensor *t = &w->t[i];
        rel = align_up(rel, w->alignment);
        size_t at = doff + rel;
        while (pos < at && !w->err) {
            size_t k = at - pos < sizeof zeros ? at - pos : sizeof zeros;
            if (write_all(fp, zeros, k))
                w_fail(w, SS_EIO, "gguf writer: write to '%s' failed", tmp);
            pos += k;
        }
        const void *src = t->data;
        if (t->gen) {
            if (tensor_bytes(w, t, scratch))
                break;
            src = scratch;
        }
        if (!w->err && write_all(fp, src, t->nbytes))
            w_fail(w, SS_EIO, "gguf writer: write to '%s' failed: %s", tmp, strerror(errno));
        pos += t->nbytes;
        rel += t->nbytes;
    }
    if (fp && fclose(fp) != 0)
        w_fail(w, SS_EIO, "gguf writer: closing '%s' failed", tmp);
    if (!w->err && pos != total)
        w_fail(w, SS_EINTERNAL, "gguf writer: wrote %zu bytes, expected %zu", pos, total);
    if (!w->err && rename(tmp, path) != 0)
        w_fail(w, SS_EIO, "gguf writer: cannot rename to '%s': %s", path, strerror(errno));
    if (w->err && fp)
        unlink(tmp);
    free(scratch);
    free(head);
    int rc = report(w, err, err_len);
    w->err = 0; /* errors raised while saving do not poison the writer */
    return rc;
}

void gguf_w_copy_kv(struct gguf_writer *w, const char *key, const struct gguf_kv *kv) {
    if (kv->type == GGUF_T_ARRAY && kv->arr_type == GGUF_T_STRING) {
        char **v = calloc(kv->arr_n ? kv->arr_n : 1, sizeof *v);
        if (!v) return; /* the saved file then lacks the key and fails to load */
        for (uint64_t j = 0; j < kv->arr_n; j++) {
            struct gguf_str gs;
            gguf_arr_str(kv, j, &gs);
            v[j] = strndup(gs.s, gs.len);
        }
        gguf_w_arr_str(w, key, (const char *const *)v, kv->arr_n);
        for (uint64_t j = 0; j < kv->arr_n; j++) free(v[j]);
        free(v);
    } else if (kv->type == GGUF_T_ARRAY) {
        gguf_w_arr(w, key, kv->arr_type, kv->data, kv->arr_n);
    } else if (kv->type == GGUF_T_STRING) {
        uint64_t len;
        memcpy(&len, kv->data, 8);
        char *v = strndup((const char *)kv->data + 8, len);
        gguf_w_str(w, key, v);
        free(v);
    } else {
        gguf_w_val(w, key, kv->type, kv->data);
    }
}
