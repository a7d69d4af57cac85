/* grammar.h - constrained decoding: compilers to one grammar object, and a
 * token-mask matcher over the vocabulary.
 *
 * Compilers (any thread; the api calls them while validating a request, so an
 * invalid input is a 400 before anything is queued):
 *   GBNF-style grammar text  --gram_compile_gbnf-->   struct gram
 *   regular expression       --gram_compile_regex-->  (GBNF text) --> struct gram
 *   choice list              --gram_compile_choice--> (GBNF text) --> struct gram
 *   JSON Schema (JSON text)  --gram_compile_schema--> (GBNF text) --> struct gram
 * Every path goes through the one GBNF parser; gram_*_to_gbnf expose the text
 * in between (tests, debugging). Errors: a negative SS_E* code and a message
 * with the position of the problem: "line L col C" in a grammar, "at offset N"
 * in a regex, a JSON pointer ("at /properties/age") in a schema.
 *
 * The grammar language (documented in README.md, "Structured outputs"):
 *   rule ::= alt1 | alt2       one rule per definition; "root" is the start
 *   "lit"  [a-z\u00e9] [^"\\]  literals and character classes (code points,
 *                              escapes \n \t \r \\ \" \] \xNN \uNNNN)
 *   .                          any code point
 *   ( ... )  x* x+ x? x{m} x{m,} x{m,n}   grouping and repetition
 *   # to the end of the line   comment
 * Code points are matched as their UTF-8 bytes, so the matcher works on bytes
 * and only ever lets valid UTF-8 through.
 *
 * Limits (hostile input is bounded, never a crash): grammar text 1 MiB, 500k
 * elements, 20k rules, repetition bounds <= 4096, schema nesting 64, regex
 * nesting 64. Left recursion that would grow the stack without bound
 * (`a ::= a "x" | "y"`) is rejected at compile time; tail recursion and
 * nullable loops (`(a*)*`) are fine. At run time a matcher keeps at most
 * GRAM_MAX_STACKS parse stacks of depth <= GRAM_MAX_DEPTH, 4096 cached states
 * and GRAM_MASK_CACHE masks; past the first two the sequence ends with an error.
 *
 * Matcher (engine thread; one per sequence, never shared): its state is the
 * set of parse stacks after the bytes accepted so far (a lazily built DFA over
 * interned stack sets). gram_matcher_mask walks the vocabulary's byte trie
 * from the current state and caches the resulting bitset in a store shared
 * by matchers of equal grammars (grammar_store.c), so a state seen before, by
 * this request or another with the same schema, costs one lookup.
 */
#ifndef SS_GRAMMAR_H
#define SS_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

struct tok;
struct gram;         /* compiled grammar: immutable, reference counted, any thread */
struct gram_vocab;   /* byte trie of a tokenizer's pieces: immutable, any thread */
struct gram_matcher; /* per-sequence state: one thread at a time */

#define GRAM_MAX_TEXT (1u << 20)
#define GRAM_MAX_ELEMS 500000
#define GRAM_MAX_RULES 20000
#define GRAM_MAX_REPEAT 4096
#define GRAM_MAX_NEST 64
#define GRAM_MAX_STACKS 2048
#define GRAM_MAX_DEPTH 1024
#define GRAM_MASK_CACHE 32

/* ---- compilers: 0 and *out (refs = 1), or a negative code and a message in
 * err (NUL-terminated, truncated to err_len). ---- */
int gram_compile_gbnf(struct gram **out, const char *text, size_t len, char *err, size_t err_len);
/* The whole output must match re (anchors ^ and $ at the ends are accepted
 * and change nothing). Subset: literals, . \d \D \w \W \s \S, escapes,
 * [classes], (groups), (?:groups), |, * + ? {m} {m,} {m,n} (lazy forms
 * accepted, same language). Backreferences, lookaround, \b are errors. */
int gram_compile_regex(struct gram **out, const char *re, size_t len, char *err, size_t err_len);
/* Exactly one of the n strings (n >= 1). */
int gram_compile_choice(struct gram **out, const char *const *choices, int n, char *err,
                        size_t err_len);
/* schema: JSON text of a JSON Schema; NULL (or "{}"/"true") means any JSON
 * object when object_only, any JSON value otherwise (json_object mode uses
 * object_only = 1). Supported keywords are listed in README.md; any other
 * non-annotation keyword is an error that names it. */
int gram_compile_schema(struct gram **out, const char *schema, size_t len, int object_only,
                        char *err, size_t err_len);

/* The intermediate GBNF text (malloc'd, caller frees), or NULL with err set. */
char *gram_regex_to_gbnf(const char *re, size_t len, char *err, size_t err_len);
char *gram_schema_to_gbnf(const char *schema, size_t len, int object_only, char *err,
                          size_t err_len);

/* Building blocks for grammars that embed several schemas (tool calls):
 * gram_json_rules is the GBNF text of the shared JSON rules (ws, json-string,
 * json-value, json-object, ...) that schema rules refer to. gram_schema_rules
 * writes a schema's rules (without those shared rules and without a root)
 * into *out (malloc'd), numbered s<*next>, s<*next + 1>, ...: the schema's
 * own rule is "s" followed by the value *next had on entry; *next is advanced
 * past the rules used, so calls with one counter never clash. 0 or a
 * negative code with err set (as gram_compile_schema). */
const char *gram_json_rules(void);
int gram_schema_rules(const char *schema, size_t len, int object_only, int *next, char **out, char *err,
                      size_t err_len);

void gram_ref(struct gram *g);
void gram_unref(struct gram *g); /* frees at zero; NULL is a no-op */

/* ---- vocabulary trie ---- */
/* Builds the trie of tok_piece() bytes of every token; tokens with an empty
 * piece (control tokens) are never part of a mask. 0 or SS_ENOMEM. */
int gram_vocab_new(struct gram_vocab **out, const struct tok *t);
void gram_vocab_free(struct gram_vocab *v);
int32_t gram_vocab_size(const struct gram_vocab *v);

/* ---- mask store: masks shared by the matchers of equal grammars ---- */
struct gram_store; /* one thread at a time (the engine's) */
/* Room for max_masks masks of n_vocab bits (evicted round robin). 0 or SS_ENOMEM. */
int gram_store_new(struct gram_store **out, int32_t n_vocab, int max_masks);
void gram_store_free(struct gram_store *s);

/* ---- matcher ---- */
/* g, v and store must outlive the matcher (the matcher does not take a
 * reference to g; the store does, for as long as it keeps g's masks).
 * store NULL: a private store of GRAM_MASK_CACHE masks. v NULL: no masks
 * (accept and is_complete only). */
int gram_matcher_new(struct gram_matcher **out, const struct gram *g, const struct gram_vocab *v,
                     struct gram_store *store);
void gram_matcher_free(struct gram_matcher *m);
/* Advances by the bytes of token id (its tok_piece). 0 on success; SS_EINVAL
 * if the grammar rejects them (state unchanged); SS_ETOOLONG / SS_ENOMEM when
 * a run-time limit is hit. */
int gram_matcher_accept_token(struct gram_matcher *m, int32_t id);
int gram_matcher_accept_bytes(struct gram_matcher *m, const char *s, size_t n);
/* 1 if the bytes so far form a complete sentence (end of generation allowed). */
int gram_matcher_is_complete(const struct gram_matcher *m);
/* Bitset over the vocabulary (bit i of word i/32): tokens whose bytes keep the
 * input a prefix of some sentence. Owned by the matcher, valid until its next
 * call. NULL on error (*err set: SS_ETOOLONG / SS_ENOMEM). */
const uint32_t *gram_matcher_mask(struct gram_matcher *m, int *err);
/* 1 if some token may follow the bytes so far, 0 if none (the sentence can
 * only end), or a negative code as gram_matcher_mask. */
int gram_matcher_can_continue(struct gram_matcher *m);
/* Counters for benchmarks and tests: masks computed by a trie walk, and masks
 * served from the cache. */
void gram_matcher_counters(const struct gram_matcher *m, uint64_t *walks, uint64_t *hits);

/* logits[i] = -inf for every i whose mask bit is clear (i < n_vocab). */
void gram_apply_mask(float *logits, int32_t n_vocab, const uint32_t *mask);
/* The ids i < n whose mask bit is set, in increasing order, into ids[] and
 * their logits into vals[]; the count. When more than cap are set it writes
 * nothing and returns -1 (the caller masks the whole row instead). A sampler
 * run on the few allowed entries reads a few KB where a masked 262144-entry
 * row costs a write pass and the sampler's passes over 1 MB. */
int32_t gram_mask_gather(const uint32_t *mask, int32_t n, const float *logits, int32_t cap, int32_t *ids,
                         float *vals);

#endif
