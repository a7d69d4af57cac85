/* toktest.h - what the tokenizer suites share (toktest.c): small SPM and
 * byte-level BPE vocabularies built with the GGUF writer and loaded from
 * memory, and the encode / round-trip assertions. */
#ifndef SLIMSERVE_TOKTEST_H
#define SLIMSERVE_TOKTEST_H

#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

struct vb {
    const char *tok[512];
    float score[512];
    int32_t type[512];
    int n;
    const char *merges[64];
    int n_merges;
};

double now_s(void);
int load_writer(struct gguf_writer *w, struct tok **out, char *err, size_t err_len);
int valid_utf8(const char *s, size_t n);
int64_t enc(const struct tok *t, const char *s, int add_bos, int special, int32_t *out, int64_t cap);
void expect_ids(const struct tok *t, const char *s, int add_bos, int special, const int32_t *want,
                       int nwant);
void expect_roundtrip(const struct tok *t, const char *s, size_t len);
int vb_add(struct vb *v, const char *text, float score, int type);
void spm_vocab(struct vb *v);
struct gguf_writer *spm_writer(const struct vb *v, int add_space_prefix);
struct tok *spm_load(int add_space_prefix);
void bpe_vocab(struct vb *v);
struct gguf_writer *bpe_writer(const struct vb *v, const char *pre);
struct tok *bpe_load(const char *pre);
#define EXPECT(t, s, bos, sp, ...)                                                          \
    do {                                                                                    \
        static const int32_t w_[] = { __VA_ARGS__ };                                        \
        expect_ids(t, s, bos, sp, w_, NELEM(w_));                                           \
    } while (0)

#endif
