/* grammar_internal.h - the compiled grammar shared by grammar_*.c.
 *
 * A grammar is a flat element array. Rule r occupies el[rule_start[r] ..]:
 * alternatives separated by GE_ALT, the last one closed by GE_END. An
 * alternative is a sequence of GE_SET (one byte out of a 256-bit set) and
 * GE_REF (another rule) elements; an empty alternative is allowed.
 *
 *   rule_start[r]
 *   v
 *   SET SET REF ALT SET ALT END      rule ::= [a] [b] other | [c] | ""
 *
 * A parse position is an element index p with el[p] a SET or REF; after
 * matching it the parse continues at p + 1 unless that is ALT/END (the
 * alternative is finished: return to the caller's continuation).
 */
#ifndef SS_GRAMMAR_INTERNAL_H
#define SS_GRAMMAR_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/grammar.h"

enum { GE_END = 0, GE_ALT = 1, GE_REF = 2, GE_SET = 3 };

struct gram_elem {
    int32_t op;  /* GE_* */
    int32_t arg; /* GE_REF: rule id; GE_SET: set index */
};

struct gram {
    int refs;
    struct gram_elem *el;  /* [n_el] */
    int32_t n_el;
    int32_t n_rules;
    int32_t root;
    int32_t *alt_off;      /* [n_rules + 1]: rule r's alternatives are alts[alt_off[r] .. alt_off[r+1]) */
    int32_t *alts;         /* element index of each alternative's first element */
    uint32_t (*sets)[8];   /* [n_sets] 256-bit byte sets */
    int32_t n_sets;
    uint32_t hash;         /* of the content (grammar_store.c compares equal grammars) */
};

/* grammar_store.c: masks by (grammar class, canonical state). */
int gram_store_class(struct gram_store *s, const struct gram *g, uint32_t *gen);
int gram_store_class_valid(const struct gram_store *s, int cls, uint32_t gen);
const uint32_t *gram_store_find(struct gram_store *s, int cls, uint32_t cls_gen, const int32_t *key, int32_t n,
                                uint32_t h, int32_t *slot, uint32_t *gen);
const uint32_t *gram_store_get(const struct gram_store *s, int32_t slot, uint32_t gen);
/* A slot to fill with the mask of key (evicting the oldest); NULL on OOM. */
uint32_t *gram_store_insert(struct gram_store *s, int cls, uint32_t cls_gen, const int32_t *key, int32_t n,
                            uint32_t h, int32_t *slot, uint32_t *gen);

static inline int gram_set_has(const uint32_t *set, unsigned b) { return (set[b >> 5] >> (b & 31)) & 1u; }
static inline int gram_alt_done(const struct gram *g, int32_t p) {
    return g->el[p].op == GE_END || g->el[p].op == GE_ALT;
}

/* Growable text buffer (schema and regex compilers write GBNF into one). */
struct gbuf {
    char *s;
    size_t n, cap;
    int oom;
};
void gbuf_put(struct gbuf *b, const char *s, size_t n);
void gbuf_puts(struct gbuf *b, const char *s);
void gbuf_printf(struct gbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A GBNF string literal for bytes s[n]: quotes and escapes. */
void gbuf_literal(struct gbuf *b, const char *s, size_t n);

/* Code point ranges (classes). */
struct cprange {
    uint32_t lo, hi;
};
/* Sorts and merges r[n] in place, complements it over [0, 0x10FFFF] when neg;
 * returns the new count (at most n + 1: r needs room for one more). */
int gram_ranges_normalise(struct cprange *r, int n, int neg);

/* Regex -> GBNF expression (no rule header) appended to out. json_string: the
 * expression produces the JSON-escaped form of the matched text (a string
 * value's pattern): '"', '\\' and control characters in literals come out
 * escaped and are left out of classes and '.'. 0 or a negative code with err
 * ("regex: at offset N: ..."). */
int gram_regex_expr(struct gbuf *out, const char *re, size_t len, int json_string, char *err,
                    size_t err_len);

/* Decodes one UTF-8 sequence at s (left bytes available): its length (1-4)
 * and *cp, or 0 if the bytes are not a well-formed start. */
int gram_utf8_decode(const unsigned char *s, size_t left, uint32_t *cp);

void gram_errf(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
