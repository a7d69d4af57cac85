/* fuzz_gguf.c - libFuzzer target: the GGUF loader over an in-memory buffer.
 *
 * The input is a GGUF file. gguf_open_mem validates it; on success every
 * accessor is called on every key/value and tensor, and the promises of
 * gguf.h are checked: array elements, strings and tensor bytes lie inside
 * the buffer, lookups by name find what the index gives. A file that opens
 * then goes through tok_load (hostile tokenizer metadata), and a file whose
 * tokenizer loads through a full eng_model_load (the path is a memfd holding
 * the same bytes; small n_ctx and batch so the KV cache and scratch stay
 * small) and eng_model_free.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "fuzz_util.h"

static const uint8_t *buf_lo, *buf_hi;

static void inside(const void *p, uint64_t n, const char *what) {
    const uint8_t *q = p;
    if (n == 0) return;
    if (q < buf_lo || q > buf_hi || n > (uint64_t)(buf_hi - q))
        fz_fail("%s: %llu bytes at offset %lld lie outside the buffer", what, (unsigned long long)n,
                (long long)(q - buf_lo));
}

static void check_str(struct gguf_str s, const char *what) {
    if (s.len && !s.s) fz_fail("%s: NULL string of length %llu", what, (unsigned long long)s.len);
    inside(s.s, s.len, what);
}

static void check_kv(const struct gguf_file *f, const struct gguf_kv *kv) {
    check_str(kv->key, "key");
    char key[256];
    size_t kl = kv->key.len < sizeof key - 1 ? kv->key.len : sizeof key - 1;
    memcpy(key, kv->key.s, kl);
    key[kl] = 0;
    /* scalar getters on the key itself: any answer, no crash */
    uint32_t u32;
    int64_t i64;
    float f32;
    int b;
    struct gguf_str s;
    (void)gguf_get_u32(f, key, &u32);
    (void)gguf_get_i64(f, key, &i64);
    (void)gguf_get_f32(f, key, &f32);
    (void)gguf_get_bool(f, key, &b);
    if (gguf_get_str(f, key, &s) == 0) check_str(s, "string value");
    if (kl == kv->key.len && !memchr(key, 0, kl) && gguf_find(f, key) == NULL)
        fz_fail("gguf_find cannot find key '%s' listed by gguf_kv_at", key);
    if (kv->type != GGUF_T_ARRAY) return;
    /* first and last 64 elements, as strings and as numbers */
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        if (i == 64 && kv->arr_n > 128) i = kv->arr_n - 64;
        double d;
        if (gguf_arr_str(kv, i, &s) == 0) check_str(s, "array string");
        (void)gguf_arr_num(kv, i, &d);
    }
    (void)gguf_arr_str(kv, kv->arr_n, &s); /* one past the end: an error, not a read */
}

static void check_tensor(const struct gguf_file *f, const struct gguf_tensor_info *ti) {
    check_str(ti->name, "tensor name");
    if (ti->n_dims > 4) fz_fail("tensor with %u dims", ti->n_dims);
    inside(ti->data, ti->nbytes, "tensor data");
    char name[256];
    if (ti->name.len >= sizeof name || memchr(ti->name.s, 0, ti->name.len)) return;
    memcpy(name, ti->name.s, ti->name.len);
    name[ti->name.len] = 0;
    if (!gguf_find_tensor(f, name)) fz_fail("gguf_find_tensor cannot find '%s'", name);
}

static void load_model(const uint8_t *data, size_t size) {
    int fd = memfd_create("fuzz-gguf", MFD_CLOEXEC);
    if (fd < 0) return;
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    if (off == size) {
        char path[64], err[512];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        struct eng_options o;
        memset(&o, 0, sizeof o);
        o.n_threads = 1;
        o.n_ctx = 32;
        o.kv_default_seqs = 1;
        o.max_batch_tokens = 16;
        o.lp_mode = ENG_LP_FILE;
        struct eng_model *m = NULL;
        if (eng_model_load(&m, path, &o, err, sizeof err) == 0) {
            if (eng_model_n_ctx(m) <= 0) fz_fail("loaded model with n_ctx %d", eng_model_n_ctx(m));
            eng_model_free(m);
        } else if (!err[0]) {
            fz_fail("eng_model_load failed without a message");
        }
    }
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct gguf_file *f = NULL;
    char err[512];
    err[0] = 0;
    /* the loader keeps pointers into the buffer: give it a heap copy ASan watches */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    buf_lo = copy;
    buf_hi = copy + size;
    int rc = gguf_open_mem(&f, copy, size, err, sizeof err);
    if (rc != 0) {
        if (rc > 0 || !err[0]) fz_fail("gguf_open_mem: rc %d without a message", rc);
        free(copy);
        return 0;
    }
    (void)gguf_version(f);
    size_t align = gguf_alignment(f);
    if (align == 0 || (align & (align - 1))) fz_fail("alignment %zu", align);
    int64_t n_kv = gguf_n_kv(f), n_t = gguf_n_tensors(f);
    for (int64_t i = 0; i < n_kv; i++) {
        const struct gguf_kv *kv = gguf_kv_at(f, i);
        if (!kv) fz_fail("gguf_kv_at(%lld) NULL below n_kv %lld", (long long)i, (long long)n_kv);
        check_kv(f, kv);
    }
    if (gguf_kv_at(f, n_kv) || gguf_kv_at(f, -1)) fz_fail("gguf_kv_at out of range not NULL");
    for (int64_t i = 0; i < n_t; i++) {
        const struct gguf_tensor_info *ti = gguf_tensor_at(f, i);
        if (!ti) fz_fail("gguf_tensor_at(%lld) NULL", (long long)i);
        check_tensor(f, ti);
    }
    if (gguf_tensor_at(f, n_t) || gguf_tensor_at(f, -1)) fz_fail("gguf_tensor_at out of range not NULL");
    struct tok *t = NULL;
    int tok_ok = tok_load(&t, f, err, sizeof err) == 0;
    if (tok_ok) {
        /* a loaded tokenizer must survive its own vocabulary */
        int32_t n = tok_n_vocab(t);
        char piece[64];
        for (int32_t id = 0; id < n && id < 4096; id++) (void)tok_piece(t, id, piece, sizeof piece);
        int64_t cnt = tok_encode(t, "Hello world <s> 123", 19, 1, 1, NULL, 0);
        if (cnt > 0 && cnt < 4096) {
            int32_t ids[4096];
            tok_encode(t, "Hello world <s> 123", 19, 1, 1, ids, cnt);
            free(tok_decode(t, ids, cnt, 0));
        }
        tok_free(t);
    }
    gguf_close(f);
    if (tok_ok) load_model(copy, size);
    free(copy);
    return 0;
}
