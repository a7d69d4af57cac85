/* gguf.h - GGUF v3 reader (memory-mapped, fully validated) and a small writer.
 *
 * gguf_open() maps the file read-only and validates everything before returning:
 * magic, version (2 or 3), counts, every string length, every key/value type,
 * array lengths, tensor names, dims, types, offsets, alignment and that each
 * tensor's bytes lie inside the file. After a successful open, no accessor can
 * read outside the mapping. On failure it returns a negative SS_E* code and
 * writes a message naming the problem into err.
 *
 * Any thread may use a gguf_file after open; it is read-only.
 */
#ifndef SS_GGUF_H
#define SS_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_vtype {
    GGUF_T_UINT8 = 0, GGUF_T_INT8 = 1, GGUF_T_UINT16 = 2, GGUF_T_INT16 = 3,
    GGUF_T_UINT32 = 4, GGUF_T_INT32 = 5, GGUF_T_FLOAT32 = 6, GGUF_T_BOOL = 7,
    GGUF_T_STRING = 8, GGUF_T_ARRAY = 9, GGUF_T_UINT64 = 10, GGUF_T_INT64 = 11,
    GGUF_T_FLOAT64 = 12, GGUF_T_COUNT
};

struct gguf_str {
    uint64_t len;
    const char *s; /* points into the mapping, NOT NUL-terminated */
};

struct gguf_kv {
    struct gguf_str key;
    int type;            /* enum gguf_vtype */
    int arr_type;        /* element type when type == GGUF_T_ARRAY */
    uint64_t arr_n;      /* element count when array */
    const uint8_t *data; /* value bytes (scalars) or first element (arrays) */
    /* Reader-private: byte offset from data of each element of a string array,
     * so gguf_arr_str is O(1). NULL for other kvs. Do not use or set. */
    const uint64_t *str_off_;
};

struct gguf_tensor_info {
    struct gguf_str name;
    uint32_t n_dims;
    int64_t ne[4]; /* unused dims are 1 */
    int type;      /* enum be_type (ggml numbering) */
    uint64_t offset; /* relative to the data section */
    size_t nbytes;
    const void *data; /* absolute pointer into the mapping */
};

struct gguf_file; /* opaque */

int gguf_open(struct gguf_file **out, const char *path, char *err, size_t err_len);
/* Same validation over a caller-owned buffer (not copied; must outlive the file). */
int gguf_open_mem(struct gguf_file **out, const void *buf, size_t len, char *err, size_t err_len);
void gguf_close(struct gguf_file *f); /* NULL ok */

uint32_t gguf_version(const struct gguf_file *f);
size_t gguf_alignment(const struct gguf_file *f);

/* metadata */
int64_t gguf_n_kv(const struct gguf_file *f);
const struct gguf_kv *gguf_kv_at(const struct gguf_file *f, int64_t i);
const struct gguf_kv *gguf_find(const struct gguf_file *f, const char *key); /* NULL if absent */
/* Typed getters: return 0 and set *out, or SS_ENOTFOUND if absent, SS_EBADMODEL if
 * the stored type does not fit (integer getters accept any integer type whose
 * value fits; the float getter accepts f32/f64). */
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i64(const struct gguf_file *f, const char *key, int64_t *out);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out);
int gguf_get_bool(const struct gguf_file *f, const char *key, int *out);
int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out);
/* Array access: element i of an array kv. Strings: gguf_arr_str. Returns 0/neg. */
int gguf_arr_str(const struct gguf_kv *kv, uint64_t i, struct gguf_str *out);
/* numeric element as double (any numeric element type) */
int gguf_arr_num(const struct gguf_kv *kv, uint64_t i, double *out);

/* tensors */
int64_t gguf_n_tensors(const struct gguf_file *f);
const struct gguf_tensor_info *gguf_tensor_at(const struct gguf_file *f, int64_t i);
const struct gguf_tensor_info *gguf_find_tensor(const struct gguf_file *f, const char *name);

/* 1 if s equals the NUL-terminated c */
int gguf_str_eq(struct gguf_str s, const char *c);

/* ---- writer (used by the model generator and tests) ----
 * Build in memory, then gguf_writer_save(). Values are copied. Tensor data is
 * copied too and aligned to 32 bytes. */
struct gguf_writer;
struct gguf_writer *gguf_writer_new(void);
void gguf_writer_free(struct gguf_writer *w);
void gguf_w_u32(struct gguf_writer *w, const char *key, uint32_t v);
void gguf_w_i32(struct gguf_writer *w, const char *key, int32_t v);
void gguf_w_f32(struct gguf_writer *w, const char *key, float v);
void gguf_w_bool(struct gguf_writer *w, const char *key, int v);
void gguf_w_str(struct gguf_writer *w, const char *key, const char *v);
void gguf_w_arr_str(struct gguf_writer *w, const char *key, const char *const *v, uint64_t n);
void gguf_w_arr_f32(struct gguf_writer *w, const char *key, const float *v, uint64_t n);
void gguf_w_arr_i32(struct gguf_writer *w, const char *key, const int32_t *v, uint64_t n);
/* ne[0] is the row length. nbytes must equal the type's size for ne. */
void gguf_w_tensor(struct gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne,
                   const void *data, size_t nbytes);
/* Returns 0 or a negative code (err filled). */
int gguf_writer_save(struct gguf_writer *w, const char *path, char *err, size_t err_len);

/* ---- writer extensions ----
 * Errors in the gguf_w_* calls (out of memory, bad arguments) are sticky: the
 * call does nothing more and gguf_writer_save/_to_mem report the first one.
 * A NULL writer is accepted everywhere (so an OOM in gguf_writer_new surfaces
 * at save time as SS_ENOMEM). The writer does not check for duplicate keys or
 * tensor names: the reader does.
 *
 * Alignment: 32, or the value of a "general.alignment" key written as u32
 * (must be a power of two) which then also governs the data layout.
 *
 * Any scalar type except STRING/ARRAY (the value is copied, gguf_vtype size): */
void gguf_w_val(struct gguf_writer *w, const char *key, int type, const void *v);
void gguf_w_u64(struct gguf_writer *w, const char *key, uint64_t v);
void gguf_w_i64(struct gguf_writer *w, const char *key, int64_t v);
void gguf_w_f64(struct gguf_writer *w, const char *key, double v);
/* Array of n scalars of elem_type (not STRING/ARRAY); v holds n packed
 * little-endian elements (bool: one byte each, 0 or 1). */
void gguf_w_arr(struct gguf_writer *w, const char *key, int elem_type, const void *v, uint64_t n);
/* Copies one key/value read from an open file (any type) under the name key. */
void gguf_w_copy_kv(struct gguf_writer *w, const char *key, const struct gguf_kv *kv);
/* Tensor whose bytes are produced at save time by gen(ctx, dst, nbytes), which
 * must fill dst completely and return 0 (or a negative code to abort the
 * save). ctx must stay valid until the last save. Lets the model generator
 * write files larger than memory one tensor at a time. */
typedef int (*gguf_gen_fn)(void *ctx, void *dst, size_t nbytes);
void gguf_w_tensor_gen(struct gguf_writer *w, const char *name, int type, int n_dims,
                       const int64_t *ne, gguf_gen_fn gen, void *ctx);
/* Serialise to a malloc'd buffer (caller frees *out). Returns 0 or negative. */
int gguf_writer_to_mem(struct gguf_writer *w, uint8_t **out, size_t *out_len, char *err,
                       size_t err_len);

#endif
