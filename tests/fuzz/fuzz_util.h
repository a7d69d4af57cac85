/* fuzz_util.h - set-up shared by the libFuzzer targets in tests/fuzz/.
 *
 * Each target builds what it needs once per process (LLVMFuzzerInitialize or
 * a first call): a tiny synthetic model written by tools/genmodel into a
 * private temporary directory (removed at exit), and its tokenizer. Nothing
 * here is fuzzed; a failure to set up aborts the process with a message (the
 * harness is broken, not the code under test).
 */
#ifndef SS_FUZZ_UTIL_H
#define SS_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

struct tok;

enum fz_kind { FZ_SPM = 0, FZ_BPE = 1 };

/* Path of the tiny model (genmodel defaults: llama, dim 64, 2 layers, vocab
 * 512, ctx 512) with an SPM or a byte-level BPE tokenizer. Written on first use. */
const char *fz_model_path(int kind);
/* Its tokenizer (loaded once; never freed). */
const struct tok *fz_tok(int kind);

/* abort()s with a message: a broken property is a crash libFuzzer reports. */
void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* A cursor over the fuzzer's bytes: reads past the end give 0. */
struct fz_in {
    const uint8_t *p;
    size_t n;
};
uint8_t fz_u8(struct fz_in *in);
uint16_t fz_u16(struct fz_in *in);



/* 1 if s[0..n) is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int fz_utf8_ok(const char *s, size_t n);

#endif
