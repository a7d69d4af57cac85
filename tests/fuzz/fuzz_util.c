/* fuzz_util.c - see fuzz_util.h. */
#include "fuzz_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "tools/genmodel.h"

static char dir[64];
static char paths[2][96];
static const struct tok *toks[2];
static struct gguf_file *files[2]; /* kept open (and reachable) for the tokenizers */

void fz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FUZZ PROPERTY FAILED: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

static void cleanup(void) {
    for (int k = 0; k < 2; k++)
        if (paths[k][0]) unlink(paths[k]);
    if (dir[0]) rmdir(dir);
}

const char *fz_model_path(int kind) {
    if (paths[kind][0]) return paths[kind];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s", "/tmp/slimserve-fuzz-XXXXXX");
        if (!mkdtemp(dir)) fz_fail("mkdtemp failed");
        atexit(cleanup);
    }
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.tokenizer = kind == FZ_BPE ? "bpe" : "spm";
    char path[96], err[256];
    snprintf(path, sizeof path, "%s/%s.gguf", dir, o.tokenizer);
    if (genmodel_write(&o, path, err, sizeof err) != 0) fz_fail("genmodel_write: %s", err);
    memcpy(paths[kind], path, sizeof path);
    return paths[kind];
}

const struct tok *fz_tok(int kind) {
    if (toks[kind]) return toks[kind];
    struct gguf_file *f;
    struct tok *t;
    char err[256];
    if (gguf_open(&f, fz_model_path(kind), err, sizeof err) != 0) fz_fail("gguf_open: %s", err);
    if (tok_load(&t, f, err, sizeof err) != 0) fz_fail("tok_load: %s", err);
    files[kind] = f; /* stays open: the tokenizer may point into its mapping */
    toks[kind] = t;
    return t;
}

uint8_t fz_u8(struct fz_in *in) {
    if (in->n == 0) return 0;
    uint8_t v = in->p[0];
    in->p++;
    in->n--;
    return v;
}

uint16_t fz_u16(struct fz_in *in) {
    uint16_t lo = fz_u8(in);
    return (uint16_t)(lo | (uint16_t)fz_u8(in) << 8);
}

int fz_utf8_ok(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}
