/* gguf.c - GGUF v2/v3 reader: memory-mapped, every byte validated at open.
 *
 * File layout (little-endian):
 *
 *   "GGUF" u32 version  u64 n_tensors  u64 n_kv
 *   n_kv x      { str key, u32 type, value }
 *   n_tensors x { str name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset }
 *   padding to `alignment` (general.alignment, default 32)
 *   data section: tensor i at data_off + offset_i
 *
 *   str   = u64 len, len bytes (no NUL)
 *   value = scalar | str | { u32 elem_type, u64 n, n elements }  (no nested arrays)
 *
 * gguf_parse() walks the header once with a bounds-checked cursor and records
 * pointers into the buffer; after it succeeds no accessor can read outside the
 * buffer. Every failure is SS_EBADMODEL (SS_ENOMEM for allocation failure) with
 * a message naming the byte offset and the key or tensor concerned.
 *
 * Lookups use two small open-addressing hash tables (keys, tensor names) that
 * are also what rejects duplicates while parsing.
 */
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/ss_error.h"
#include "kernels/backend.h"

#define GGUF_HEADER_BYTES 24
#define GGUF_DEFAULT_ALIGNMENT 32
/* Smallest possible encodings, used to reject impossible counts up front. */
#define GGUF_MIN_KV_BYTES 14     /* u64 len + 1 key byte + u32 type + 1 value byte */
#define GGUF_MIN_TENSOR_BYTES 33 /* u64 len + 1 name byte + u32 + u64 ne + u32 + u64 */

/* Open-addressing hash set of indices (stored as index + 1, 0 = empty). */
struct gguf_htab {
    int64_t *slot;
    size_t cap; /* power of two */
    size_t n;
};

struct gguf_file {
    const uint8_t *base;
    size_t len;
    void *map; /* non-NULL when gguf_open mapped the file */
    uint32_t version;
    size_t alignment;
    size_t data_off;
    struct gguf_kv *kv;
    int64_t n_kv;
    struct gguf_tensor_info *ti;
    int64_t n_ti;
    struct gguf_htab kh; /* keys */
    struct gguf_htab th; /* tensor names */
};

/* Bytes of one scalar of each value type (0: string/array, variable). */
static const uint8_t vt_size[GGUF_T_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static const char *const vt_name[GGUF_T_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};

/* ---------------------------------------------------------------- helpers */

static uint64_t ld_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint32_t ld_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

/* Copy at most 48 bytes of a file string into dst for messages, replacing
 * anything not printable ASCII by '?'. */
static const char *san(char *dst, size_t cap, struct gguf_str s) {
    size_t n = s.len < 48 ? (size_t)s.len : 48, o = 0;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)s.s[i];
        dst[o++] = (c >= 32 && c < 127) ? (char)c : '?';
    }
    if (s.len > n && o + 4 < cap) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = 0;
    return dst;
}

int gguf_str_eq(struct gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.s, c, n) == 0);
}

/* ------------------------------------------------------------- hash table */

static struct gguf_str hname(const struct gguf_file *f, int tensors, int64_t i) {
    return tensors ? f->ti[i].name : f->kv[i].key;
}

static int64_t htab_find(const struct gguf_file *f, int tensors, const char *s, size_t n) {
    const struct gguf_htab *h = tensors ? &f->th : &f->kh;
    if (!h->cap)
        return -1;
    size_t m = h->cap - 1;
    for (size_t j = hash_bytes(s, n) & m;; j = (j + 1) & m) {
        int64_t v = h->slot[j];
        if (!v)
            return -1;
        struct gguf_str t = hname(f, tensors, v - 1);
        if (t.len == n && memcmp(t.s, s, n) == 0)
            return v - 1;
    }
}

static void htab_put_raw(struct gguf_htab *h, uint64_t hash, int64_t idx) {
    size_t m = h->cap - 1, j = hash & m;
    while (h->slot[j])
        j = (j + 1) & m;
    h->slot[j] = idx + 1;
    h->n++;
}

/* Insert index idx (its name must not be present). Grows at load 1/2.
 * Returns 0 or SS_ENOMEM. */
static int htab_add(struct gguf_file *f, int tensors, int64_t idx) {
    struct gguf_htab *h = tensors ? &f->th : &f->kh;
    if ((h->n + 1) * 2 > h->cap) {
        size_t ncap = h->cap ? h->cap * 2 : 64;
        int64_t *ns = calloc(ncap, sizeof *ns);
        if (!ns)
            return SS_ENOMEM;
        struct gguf_htab nh = {ns, ncap, 0};
        for (size_t j = 0; j < h->cap; j++)
            if (h->slot[j]) {
                struct gguf_str t = hname(f, tensors, h->slot[j] - 1);
                htab_put_raw(&nh, hash_bytes(t.s, t.len), h->slot[j] - 1);
            }
        free(h->slot);
        *h = nh;
    }
    struct gguf_str t = hname(f, tensors, idx);
    htab_put_raw(h, hash_bytes(t.s, t.len), idx);
    return 0;
}

/* ----------------------------------------------------------------- cursor */

struct rd {
    const uint8_t *b;
    size_t len;
    size_t pos;
    char *err;
    size_t err_len;
    uint64_t bad; /* see rd_str */
};

__attribute__((format(printf, 3, 4))) static int fail(struct rd *r, size_t at, const char *fmt, ...) {
    if (r->err && r->err_len) {
        int n = snprintf(r->err, r->err_len, "gguf: byte %zu: ", at);
        if (n >= 0 && (size_t)n < r->err_len) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(r->err + n, r->err_len - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return SS_EBADMODEL;
}

static size_t rd_left(const struct rd *r) { return r->len - r->pos; }

static int rd_need(struct rd *r, size_t n, const char *what) {
    if (rd_left(r) < n)
        return fail(r, r->pos, "truncated: %s needs %zu bytes, %zu remain", what, n, rd_left(r));
    return 0;
}

static int rd_u32(struct rd *r, uint32_t *v, const char *what) {
    int rc = rd_need(r, 4, what);
    if (rc)
        return rc;
    *v = ld_u32(r->b + r->pos);
    r->pos += 4;
    return 0;
}

static int rd_u64(struct rd *r, uint64_t *v, const char *what) {
    int rc = rd_need(r, 8, what);
    if (rc)
        return rc;
    *v = ld_u64(r->b + r->pos);
    r->pos += 8;
    return 0;
}

/* Reads a string without reporting: returns 0, or SS_EBADMODEL with r->bad
 * set to the offending length (UINT64_MAX: the length field itself is cut
 * off). The caller names the string in str_fail(). */
static int rd_str(struct rd *r, struct gguf_str *s) {
    if (rd_left(r) < 8) {
        r->bad = UINT64_MAX;
        return SS_EBADMODEL;
    }
    uint64_t n = ld_u64(r->b + r->pos);
    if (n > rd_left(r) - 8) {
        r->bad = n;
        return SS_EBADMODEL;
    }
    s->len = n;
    s->s = (const char *)(r->b + r->pos + 8);
    r->pos += 8 + (size_t)n;
    return 0;
}

/* Message for a failed rd_str at byte at; fmt/... name the string. */
__attribute__((format(printf, 3, 4))) static int str_fail(struct rd *r, size_t at, const char *fmt, ...) {
    char what[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (r->bad == UINT64_MAX)
        return fail(r, at, "truncated: %s: string length needs 8 bytes, %zu remain", what, r->len - at);
    return fail(r, at, "%s: string length %llu exceeds the %zu bytes remaining", what,
                (unsigned long long)r->bad, r->len - at - 8);
}

/* -------------------------------------------------------------- key/values */

static int check_bools(struct rd *r, const uint8_t *p, uint64_t n, const char *key) {
    for (uint64_t i = 0; i < n; i++)
        if (p[i] > 1)
            return fail(r, (size_t)(p + i - r->b), "key '%s': bool value %u is not 0 or 1", key, p[i]);
    return 0;
}

/* Array body after the u32 element type has been read and checked. */
static int parse_array(struct rd *r, struct gguf_kv *kv, const char *key) {
    size_t at = r->pos;
    int rc = rd_u64(r, &kv->arr_n, "array length");
    if (rc)
        return rc;
    uint64_t n = kv->arr_n;
    kv->data = r->b + r->pos;
    if (kv->arr_type == GGUF_T_STRING) {
        if (n > rd_left(r) / 8)
            return fail(r, at, "key '%s': array of %llu strings cannot fit in the %zu bytes remaining", key,
                        (unsigned long long)n, rd_left(r));
        if (n == 0)
            return 0;
        uint64_t *off = malloc((size_t)n * sizeof *off);
        if (!off)
            return SS_ENOMEM;
        kv->str_off_ = off;
        for (uint64_t i = 0; i < n; i++) {
            struct gguf_str s;
            off[i] = (uint64_t)(r->pos - (size_t)(kv->data - r->b));
            if (rd_str(r, &s))
                return str_fail(r, r->pos, "key '%s': element %llu of %llu", key, (unsigned long long)i,
                                (unsigned long long)n);
        }
        return 0;
    }
    size_t es = vt_size[kv->arr_type];
    if (n > rd_left(r) / es)
        return fail(r, at, "key '%s': array of %llu %s (%zu bytes each) exceeds the %zu bytes remaining", key,
                    (unsigned long long)n, vt_name[kv->arr_type], es, rd_left(r));
    if (kv->arr_type == GGUF_T_BOOL && (rc = check_bools(r, kv->data, n, key)) != 0)
        return rc;
    r->pos += (size_t)n * es;
    return 0;
}

static int parse_kv(struct gguf_file *f, struct rd *r, int64_t i) {
    struct gguf_kv *kv = &f->kv[i];
    char key[64];
    size_t at = r->pos;
    memset(kv, 0, sizeof *kv);
    if (rd_str(r, &kv->key))
        return str_fail(r, at, "kv %lld: key", (long long)i);
    if (kv->key.len == 0)
        return fail(r, at, "kv %lld: empty key", (long long)i);
    san(key, sizeof key, kv->key);
    if (htab_find(f, 0, kv->key.s, (size_t)kv->key.len) >= 0)
        return fail(r, at, "kv %lld: duplicate key '%s'", (long long)i, key);
    uint32_t t;
    size_t tat = r->pos;
    int rc = rd_u32(r, &t, "value type");
    if (rc)
        return rc;
    if (t >= GGUF_T_COUNT)
        return fail(r, tat, "key '%s': unknown value type %u", key, t);
    kv->type = (int)t;
    if (t == GGUF_T_ARRAY) {
        if ((rc = rd_u32(r, &t, "array element type")) != 0)
            return rc;
        if (t >= GGUF_T_COUNT)
            return fail(r, tat + 4, "key '%s': unknown array element type %u", key, t);
        if (t == GGUF_T_ARRAY)
            return fail(r, tat + 4, "key '%s': arrays of arrays are not supported", key);
        kv->arr_type = (int)t;
        rc = parse_array(r, kv, key);
    } else if (t == GGUF_T_STRING) {
        struct gguf_str s;
        kv->data = r->b + r->pos;
        if (rd_str(r, &s))
            rc = str_fail(r, tat + 4, "key '%s': string value", key);
    } else {
        kv->data = r->b + r->pos;
        if (rd_left(r) < vt_size[t])
            rc = fail(r, r->pos, "truncated: key '%s': %s value needs %u bytes, %zu remain", key, vt_name[t],
                      vt_size[t], rd_left(r));
        else if (t == GGUF_T_BOOL)
            rc = check_bools(r, kv->data, 1, key);
        if (!rc)
            r->pos += vt_size[t];
    }
    if (rc)
        return rc;
    f->n_kv = i + 1; /* visible to htab_find from now on */
    return htab_add(f, 0, i);
}

/* Grow *arr (elements of size es) to hold at least need; cap doubles. */
static int grow(void **arr, int64_t *cap, int64_t need, size_t es) {
    if (need <= *cap)
        return 0;
    int64_t nc = *cap ? *cap * 2 : 64;
    while (nc < need)
        nc *= 2;
    void *p = realloc(*arr, (size_t)nc * es);
    if (!p)
        return SS_ENOMEM;
    memset((char *)p + (size_t)*cap * es, 0, (size_t)(nc - *cap) * es);
    *arr = p;
    *cap = nc;
    return 0;
}

static int parse_kvs(struct gguf_file *f, struct rd *r, uint64_t n_kv) {
    int64_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        int rc = grow((void **)&f->kv, &cap, (int64_t)i + 1, sizeof *f->kv);
        if (rc)
            return rc;
        if ((rc = parse_kv(f, r, (int64_t)i)) != 0) {
            f->n_kv = (int64_t)i + 1; /* so gguf_close frees this kv's index */
            return rc;
        }
    }
    return 0;
}

/* general.alignment: any integer type, a power of two; default 32. */
static int read_alignment(struct gguf_file *f, struct rd *r) {
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t i = htab_find(f, 0, "general.alignment", 17);
    if (i < 0)
        return 0;
    const struct gguf_kv *kv = &f->kv[i];
    int64_t v;
    if (gguf_get_i64(f, "general.alignment", &v) != 0)
        return fail(r, (size_t)((const uint8_t *)kv->key.s - r->b),
                    "key 'general.alignment': type %s is not an integer", vt_name[kv->type]);
    if (v <= 0 || v > (int64_t)1 << 30 || (v & (v - 1)) != 0)
        return fail(r, (size_t)(kv->data - r->b), "key 'general.alignment': %lld is not a power of two",
                    (long long)v);
    f->alignment = (size_t)v;
    return 0;
}

/* ----------------------------------------------------------------- tensors */

static int parse_tensor(struct gguf_file *f, struct rd *r, int64_t i) {
    struct gguf_tensor_info *t = &f->ti[i];
    char nm[64];
    size_t at = r->pos;
    if (rd_str(r, &t->name))
        return str_fail(r, at, "tensor %lld: name", (long long)i);
    if (t->name.len == 0)
        return fail(r, at, "tensor %lld: empty name", (long long)i);
    san(nm, sizeof nm, t->name);
    if (htab_find(f, 1, t->name.s, (size_t)t->name.len) >= 0)
        return fail(r, at, "tensor %lld: duplicate tensor name '%s'", (long long)i, nm);
    size_t dat = r->pos;
    int rc = rd_u32(r, &t->n_dims, "n_dims");
    if (rc)
        return rc;
    if (t->n_dims < 1 || t->n_dims > 4)
        return fail(r, dat, "tensor '%s': n_dims %u outside 1..4", nm, t->n_dims);
    int64_t nel = 1, rows = 1;
    for (int d = 0; d < 4; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t v;
        size_t eat = r->pos;
        if ((rc = rd_u64(r, &v, "tensor dim")) != 0)
            return rc;
        if (v == 0 || v > (uint64_t)INT64_MAX)
            return fail(r, eat, "tensor '%s': dim %u is %lld (must be > 0)", nm, d, (long long)v);
        t->ne[d] = (int64_t)v;
        if (__builtin_mul_overflow(nel, t->ne[d], &nel))
            return fail(r, eat, "tensor '%s': element count overflows (dims product too large)", nm);
        if (d > 0)
            rows *= t->ne[d]; /* <= nel, cannot overflow */
    }
    uint32_t type;
    size_t tat = r->pos;
    if ((rc = rd_u32(r, &type, "tensor type")) != 0)
        return rc;
    const struct be_type_info *ti = type < BE_TYPE_COUNT ? be_type_get((int)type) : NULL;
    if (!ti || ti->blck <= 0 || ti->size <= 0)
        return fail(r, tat, "tensor '%s': unknown tensor type %u", nm, type);
    t->type = (int)type;
    size_t row = be_row_bytes(t->type, t->ne[0]);
    if (row == 0)
        return fail(r, dat, "tensor '%s': row of %lld elements is not a multiple of the %s block size %d", nm,
                    (long long)t->ne[0], ti->name ? ti->name : "type", ti->blck);
    if (__builtin_mul_overflow(row, (size_t)rows, &t->nbytes))
        return fail(r, dat, "tensor '%s': byte size overflows", nm);
    if ((rc = rd_u64(r, &t->offset, "tensor offset")) != 0)
        return rc;
    f->n_ti = i + 1;
    return htab_add(f, 1, i);
}

/* Second pass once the data section start is known. */
static int place_tensor(struct gguf_file *f, struct rd *r, struct gguf_tensor_info *t) {
    char nm[64];
    san(nm, sizeof nm, t->name);
    size_t at = (size_t)((const uint8_t *)t->name.s - r->b); /* name bytes of its info record */
    size_t avail = f->len - f->data_off;
    if (t->offset % f->alignment != 0)
        return fail(r, at, "tensor '%s': offset %llu is not aligned to %zu", nm, (unsigned long long)t->offset,
                    f->alignment);
    if (t->offset > avail || t->nbytes > avail - (size_t)t->offset)
        return fail(r, at,
                    "tensor '%s': data [%llu, +%zu) lies outside the data section (%zu bytes at file offset %zu)",
                    nm, (unsigned long long)t->offset, t->nbytes, avail, f->data_off);
    t->data = f->base + f->data_off + (size_t)t->offset;
    return 0;
}

static int parse_tensors(struct gguf_file *f, struct rd *r, uint64_t n) {
    int64_t cap = 0;
    for (uint64_t i = 0; i < n; i++) {
        int rc = grow((void **)&f->ti, &cap, (int64_t)i + 1, sizeof *f->ti);
        if (rc)
            return rc;
        if ((rc = parse_tensor(f, r, (int64_t)i)) != 0)
            return rc;
    }
    size_t a = f->alignment, pad = (a - r->pos % a) % a;
    f->data_off = r->pos + pad; /* pos <= len, pad < 2^30: no overflow */
    if (n > 0 && f->data_off > f->len)
        return fail(r, r->pos, "truncated: data section would start at byte %zu, file has %zu", f->data_off,
                    f->len);
    for (int64_t i = 0; i < f->n_ti; i++) {
        int rc = place_tensor(f, r, &f->ti[i]);
        if (rc)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------ header */

static int gguf_parse(struct gguf_file *f, char *err, size_t err_len) {
    struct rd r = {f->base, f->len, 0, err, err_len, 0};
    if (f->len < GGUF_HEADER_BYTES)
        return fail(&r, 0, "truncated: file is %zu bytes, smaller than the %d-byte GGUF header", f->len,
                    GGUF_HEADER_BYTES);
    if (memcmp(f->base, "GGUF", 4) != 0)
        return fail(&r, 0, "bad magic %02x %02x %02x %02x (expected \"GGUF\")", f->base[0], f->base[1],
                    f->base[2], f->base[3]);
    r.pos = 4;
    uint32_t ver;
    rd_u32(&r, &ver, "version");
    if (ver != 2 && ver != 3) {
        uint32_t sw = __builtin_bswap32(ver);
        return fail(&r, 4, "unsupported version %u (only 2 and 3)%s", ver,
                    (sw == 2 || sw == 3) ? ", file looks big-endian" : "");
    }
    f->version = ver;
    uint64_t n_ti, n_kv;
    rd_u64(&r, &n_ti, "tensor count");
    rd_u64(&r, &n_kv, "kv count");
    if (n_kv > rd_left(&r) / GGUF_MIN_KV_BYTES)
        return fail(&r, 16, "kv count %llu impossible in the %zu bytes that follow", (unsigned long long)n_kv,
                    rd_left(&r));
    if (n_ti > rd_left(&r) / GGUF_MIN_TENSOR_BYTES)
        return fail(&r, 8, "tensor count %llu impossible in the %zu bytes that follow",
                    (unsigned long long)n_ti, rd_left(&r));
    int rc = parse_kvs(f, &r, n_kv);
    if (!rc)
        rc = read_alignment(f, &r);
    if (!rc)
        rc = parse_tensors(f, &r, n_ti);
    if (rc == SS_ENOMEM && err && err_len)
        snprintf(err, err_len, "gguf: out of memory while indexing the header");
    return rc;
}

/* -------------------------------------------------------------- open/close */

static int open_common(struct gguf_file **out, const void *buf, size_t len, void *map, char *err,
                       size_t err_len) {
    struct gguf_file *f = calloc(1, sizeof *f);
    if (!f) {
        if (err && err_len)
            snprintf(err, err_len, "gguf: out of memory");
        if (map)
            munmap(map, len);
        return SS_ENOMEM;
    }
    f->base = buf;
    f->len = len;
    f->map = map;
    int rc = gguf_parse(f, err, err_len);
    if (rc) {
        gguf_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int gguf_open_mem(struct gguf_file **out, const void *buf, size_t len, char *err, size_t err_len) {
    if (err && err_len)
        err[0] = 0;
    if (!out || (!buf && len)) {
        if (err && err_len)
            snprintf(err, err_len, "gguf: invalid arguments");
        return SS_EINVAL;
    }
    *out = NULL;
    static const uint8_t empty[1];
    return open_common(out, buf ? buf : empty, len, NULL, err, err_len);
}

int gguf_open(struct gguf_file **out, const char *path, char *err, size_t err_len) {
    if (err && err_len)
        err[0] = 0;
    if (!out || !path) {
        if (err && err_len)
            snprintf(err, err_len, "gguf: invalid arguments");
        return SS_EINVAL;
    }
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (err && err_len)
            snprintf(err, err_len, "gguf: cannot open '%s': %s", path, strerror(errno));
        return SS_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (err && err_len)
            snprintf(err, err_len, "gguf: '%s' is not a regular file", path);
        close(fd);
        return SS_EIO;
    }
    size_t len = (size_t)st.st_size;
    if (len < GGUF_HEADER_BYTES) {
        close(fd);
        if (err && err_len)
            snprintf(err, err_len, "gguf: byte 0: truncated: '%s' is %zu bytes, smaller than a GGUF header",
                     path, len);
        return SS_EBADMODEL;
    }
    /* NOTE: a file truncated by someone else while mapped raises SIGBUS on
     * access; nothing portable prevents that, and model files are not edited
     * in place. */
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) {
        if (err && err_len)
            snprintf(err, err_len, "gguf: cannot map '%s': %s", path, strerror(e));
        return SS_EIO;
    }
    return open_common(out, map, len, map, err, err_len);
}

void gguf_close(struct gguf_file *f) {
    if (!f)
        return;
    for (int64_t i = 0; i < f->n_kv; i++)
        free((void *)f->kv[i].str_off_);
    free(f->kv);
    free(f->ti);
    free(f->kh.slot);
    free(f->th.slot);
    if (f->map)
        munmap(f->map, f->len);
    free(f);
}

/* --------------------------------------------------------------- accessors */

uint32_t gguf_version(const struct gguf_file *f) { return f ? f->version : 0; }
size_t gguf_alignment(const struct gguf_file *f) { return f ? f->alignment : 0; }
int64_t gguf_n_kv(const struct gguf_file *f) { return f ? f->n_kv : 0; }
int64_t gguf_n_tensors(const struct gguf_file *f) { return f ? f->n_ti : 0; }

const struct gguf_kv *gguf_kv_at(const struct gguf_file *f, int64_t i) {
    return (f && i >= 0 && i < f->n_kv) ? &f->kv[i] : NULL;
}

const struct gguf_tensor_info *gguf_tensor_at(const struct gguf_file *f, int64_t i) {
    return (f && i >= 0 && i < f->n_ti) ? &f->ti[i] : NULL;
}

const struct gguf_kv *gguf_find(const struct gguf_file *f, const char *key) {
    if (!f || !key)
        return NULL;
    int64_t i = htab_find(f, 0, key, strlen(key));
    return i >= 0 ? &f->kv[i] : NULL;
}

const struct gguf_tensor_info *gguf_find_tensor(const struct gguf_file *f, const char *name) {
    if (!f || !name)
        return NULL;
    int64_t i = htab_find(f, 1, name, strlen(name));
    return i >= 0 ? &f->ti[i] : NULL;
}

/* Integer scalar at p of type t: *neg set for negative values, *mag the
 * absolute value. Returns 0, or -1 if t is not an integer type. */
static int load_int(int t, const uint8_t *p, int *neg, uint64_t *mag) {
    int64_t s;
    *neg = 0;
    switch (t) {
    case GGUF_T_UINT8: *mag = p[0]; return 0;
    case GGUF_T_UINT16: { uint16_t v; memcpy(&v, p, 2); *mag = v; return 0; }
    case GGUF_T_UINT32: *mag = ld_u32(p); return 0;
    case GGUF_T_UINT64: *mag = ld_u64(p); return 0;
    case GGUF_T_INT8: s = (int8_t)p[0]; break;
    case GGUF_T_INT16: { int16_t v; memcpy(&v, p, 2); s = v; break; }
    case GGUF_T_INT32: { int32_t v; memcpy(&v, p, 4); s = v; break; }
    case GGUF_T_INT64: memcpy(&s, p, 8); break;
    default: return -1;
    }
    *neg = s < 0;
    *mag = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
    return 0;
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out) {
    const struct gguf_kv *kv = gguf_find(f, key);
    int neg;
    uint64_t mag;
    if (!kv)
        return SS_ENOTFOUND;
    if (load_int(kv->type, kv->data, &neg, &mag) != 0 || neg || mag > UINT32_MAX)
        return SS_EBADMODEL;
    *out = (uint32_t)mag;
    return 0;
}

int gguf_get_i64(const struct gguf_file *f, const char *key, int64_t *out) {
    const struct gguf_kv *kv = gguf_find(f, key);
    int neg;
    uint64_t mag;
    if (!kv)
        return SS_ENOTFOUND;
    if (load_int(kv->type, kv->data, &neg, &mag) != 0)
        return SS_EBADMODEL;
    if (!neg && mag > (uint64_t)INT64_MAX)
        return SS_EBADMODEL;
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag; /* INT64_MIN round-trips */
    return 0;
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out) {
    const struct gguf_kv *kv = gguf_find(f, key);
    if (!kv)
        return SS_ENOTFOUND;
    if (kv->type == GGUF_T_FLOAT32) {
        memcpy(out, kv->data, 4);
    } else if (kv->type == GGUF_T_FLOAT64) {
        double d;
        memcpy(&d, kv->data, 8);
        *out = (float)d;
    } else {
        return SS_EBADMODEL;
    }
    return 0;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, int *out) {
    const struct gguf_kv *kv = gguf_find(f, key);
    if (!kv)
        return SS_ENOTFOUND;
    if (kv->type != GGUF_T_BOOL)
        return SS_EBADMODEL;
    *out = kv->data[0] != 0;
    return 0;
}

int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out) {
    const struct gguf_kv *kv = gguf_find(f, key);
    if (!kv)
        return SS_ENOTFOUND;
    if (kv->type != GGUF_T_STRING)
        return SS_EBADMODEL;
    out->len = ld_u64(kv->data);
    out->s = (const char *)kv->data + 8;
    return 0;
}

int gguf_arr_str(const struct gguf_kv *kv, uint64_t i, struct gguf_str *out) {
    if (!kv || !out)
        return SS_EINVAL;
    if (kv->type != GGUF_T_ARRAY || kv->arr_type != GGUF_T_STRING)
        return SS_EBADMODEL;
    if (i >= kv->arr_n)
        return SS_EINVAL;
    const uint8_t *p;
    if (kv->str_off_) {
        p = kv->data + kv->str_off_[i];
    } else { /* a kv not made by the reader: walk (caller vouches for bounds) */
        p = kv->data;
        for (uint64_t j = 0; j < i; j++)
            p += 8 + ld_u64(p);
    }
    out->len = ld_u64(p);
    out->s = (const char *)p + 8;
    return 0;
}

int gguf_arr_num(const struct gguf_kv *kv, uint64_t i, double *out) {
    if (!kv || !out)
        return SS_EINVAL;
    if (kv->type != GGUF_T_ARRAY || kv->arr_type < 0 || kv->arr_type >= GGUF_T_COUNT ||
        kv->arr_type == GGUF_T_STRING || kv->arr_type == GGUF_T_ARRAY)
        return SS_EBADMODEL;
    if (i >= kv->arr_n)
        return SS_EINVAL;
    const uint8_t *p = kv->data + (size_t)i * vt_size[kv->arr_type];
    int neg = 0;
    uint64_t mag = 0;
    if (kv->arr_type == GGUF_T_FLOAT32) {
        float v;
        memcpy(&v, p, 4);
        *out = v;
    } else if (kv->arr_type == GGUF_T_FLOAT64) {
        memcpy(out, p, 8);
    } else if (kv->arr_type == GGUF_T_BOOL) {
        *out = p[0] != 0;
    } else {
        load_int(kv->arr_type, p, &neg, &mag);
        *out = neg ? -(double)mag : (double)mag;
    }
    return 0;
}
