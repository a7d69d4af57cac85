/* testutil.h - helpers shared by the model unit tests (test_forward,
 * test_gemma, test_lp, test_subllm, test_convert_subllm, test_api,
 * test_api_chat): temp paths, locating the NumPy reference scripts, loading
 * a model, a synthetic prompt, one-sequence forward passes,
 * running a reference script and reading its float32 logits, comparing
 * logits, load-error checks, and a generated tokenizer for the API tests.
 * Single-threaded test code; helpers that can fail use Check assertions
 * (ck_assert), so they may only be called inside a test, except
 * tu_init, tu_tmp_file, tu_find_ref, tu_copy_kv and tu_copy_tensors, which
 * main() may call too.
 */
#ifndef SLIMSERVE_TESTUTIL_H
#define SLIMSERVE_TESTUTIL_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"

/* SLIMSERVE_TEST_TMP, else /tmp (set by tu_init). */
extern char tu_tmp_dir[PATH_MAX - 64];
/* The source root (set by tu_find_ref): SLIMSERVE_SRC_DIR, else derived from
 * this file's location. */
extern char tu_src_dir[PATH_MAX - 64];

/* Sets tu_tmp_dir; prefix (e.g. "test_forward", kept by pointer) names temp
 * files "<tmp>/<prefix>_<pid>_<name>". */
void tu_init(const char *prefix);
void tu_tmp_file(char *out, size_t cap, const char *name);

/* Sets tu_src_dir and writes <src>/tests/ref/<script> to path. Returns 1 when
 * the script is readable and python3 imports numpy and gguf, else 0 with a
 * NOTE on stderr. */
int tu_find_ref(const char *script, char *path, size_t cap);

/* 1 if have_ref; else fails the test when SLIMSERVE_REQUIRE_REF=1, or prints
 * "SKIP <what> (python3/numpy/gguf missing)" and returns 0. */
int tu_ref_available(int have_ref, const char *what);

/* eng_model_load, asserting success. The caller frees the model. */
struct eng_model *tu_load(const char *path, const struct eng_options *o);

/* toks[i] = (i*37 + 11 + salt*101) % n_vocab. */
void tu_prompt(int32_t *toks, int n, int n_vocab, int salt);

/* One sequence of n tokens at n_past on the pages of a page list (identity
 * per-layer tables, eng_kv_identity_tables; pages NULL: no tables); logits
 * for the last token, or all n when all != 0. Returns eng_forward's code. */
int tu_run1(struct eng_model *m, const int32_t *toks, int n, int n_past, const int32_t *pages, int n_pages,
            int all, float *logits);

/* Reads n float32 values from path (asserts it can). Caller frees. */
float *tu_read_f32(const char *path, size_t n);

/* Reads a whole file (asserts it can); *len gets its size. Caller frees. */
uint8_t *tu_slurp(const char *path, size_t *len);

/* Asserts eng_model_load(path, default options) fails with code, clears the
 * model pointer and gives a message containing needle (printed). */
void tu_expect_load_error(const char *path, int code, const char *needle);

/* Runs `python3 'script' 'model' --tokens t0,t1,... <extra> --out <tmp>`
 * (extra may be "" and is pasted as is) and returns its n_floats float32
 * output (malloc, caller frees); asserts the script succeeded. */
float *tu_run_ref(const char *script, const char *model, const int32_t *toks, int n, const char *extra,
                  size_t n_floats);

/* SUBLLM reference (tests/ref/subllm_ref.py at script) on toks: returns
 * logits [n][V] (malloc, caller frees), fills ref_kept[sub] (kept count at
 * each '(', n_sub of them) and *margin (min |score|). */
float *tu_subllm_ref(const char *script, const char *model, const int32_t *toks, int n, int V, int *ref_kept,
                     int n_sub, double *margin);

/* max |a[i] - b[i]|; NaN anywhere gives NaN. */
/* Independent fp16 / bf16 decoders (not the kernels' conversions). */
float tu_half(uint16_t h);
float tu_bf16(uint16_t h);

double tu_max_abs_diff(const float *a, const float *b, size_t n);

/* Index of the first largest value. */
int tu_argmax(const float *v, int n);

/* got vs want, n rows of V logits: returns the max abs difference (NaN
 * caught), and sets *maxref to max |want| and *argmax_same to the number of
 * rows whose argmax agrees. */
double tu_compare_logits(const float *got, const float *want, int n, int V, double *maxref, int *argmax_same);

/* Copies one key/value of an open file to w under the name key (any type). */
void tu_copy_kv(struct gguf_writer *w, const char *key, const struct gguf_kv *kv);
/* Copies every tensor of f to w unchanged. */
void tu_copy_tensors(struct gguf_writer *w, const struct gguf_file *f);

/* A real tokenizer from a generated one-layer model (n_ctx 128, tokenizer
 * kind "spm" or "bpe") written to "<SLIMSERVE_TEST_TMP or /tmp>/<prefix>_
 * <kind>_<pid>.gguf". tu_gen_tok_free closes both and removes the file. */
struct tu_gen_tok {
    char path[512];
    struct gguf_file *f;
    struct tok *t;
};
void tu_gen_tok_load(struct tu_gen_tok *g, const char *prefix, const char *kind);
void tu_gen_tok_free(struct tu_gen_tok *g);

#endif
