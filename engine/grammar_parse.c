/* grammar_parse.c - the GBNF-style grammar parser: text -> struct gram.
 *
 * One pass of recursive descent builds each rule as an element vector;
 * groups, repetitions and non-ASCII character classes become generated
 * rules. Then the rules are flattened and checked: every referenced rule
 * defined, the root able to produce something, and no left recursion that
 * would grow the parse stack without bound (grammar_check.c).
 *
 * Character classes work on code points and are lowered to UTF-8 byte
 * sequences (the usual split of a code point range into ranges whose
 * encodings differ only in their last bytes), so the matcher sees bytes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/grammar_internal.h"
#include "kernels/ss_error.h"

/* ---------- small shared helpers ---------- */

void gram_errf(char *err, size_t err_len, const char *fmt, ...) {
    if (!err || err_len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

void gbuf_put(struct gbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

void gbuf_puts(struct gbuf *b, const char *s) { gbuf_put(b, s, strlen(s)); }

void gbuf_printf(struct gbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)n < sizeof(tmp)) {
        gbuf_put(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1); /* a long %s: format again at full size */
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    gbuf_put(b, big, (size_t)n);
    free(big);
}

void gbuf_literal(struct gbuf *b, const char *s, size_t n) {
    gbuf_put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[8];
        if (c == '"' || c == '\\') {
            e[0] = '\\';
            e[1] = (char)c;
            gbuf_put(b, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(e, sizeof(e), "\\x%02X", c);
            gbuf_put(b, e, 4);
        } else {
            gbuf_put(b, (const char *)&c, 1);
        }
    }
    gbuf_put(b, "\"", 1);
}

/* ---------- builder ---------- */

struct evec {
    struct gram_elem *e;
    int32_t n, cap;
};

struct rname {
    const char *s; /* into the source text */
    size_t len;
    int32_t id;
    int defined;
    size_t first_use; /* offset of the first reference (error position) */
};

struct parser {
    const char *src;
    size_t len, pos;
    struct evec *rules; /* [n_rules] */
    int32_t n_rules, cap_rules;
    struct rname *names;
    int32_t n_names, cap_names;
    uint32_t (*sets)[8];
    int32_t n_sets, cap_sets;
    int32_t byte_set[256]; /* set index of each single-byte set, -1 if none yet */
    int64_t n_elems;
    int depth;
    int rc;
    char *err;
    size_t err_len;
};

static void line_col(const char *s, size_t off, int *line, int *col) {
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (s[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static int fail(struct parser *P, int rc, size_t at, const char *msg) {
    if (P->rc) return P->rc;
    int line, col;
    line_col(P->src, at > P->len ? P->len : at, &line, &col);
    gram_errf(P->err, P->err_len, "grammar: line %d col %d: %s", line, col, msg);
    P->rc = rc;
    return rc;
}

static int evec_push(struct parser *P, struct evec *v, int32_t op, int32_t arg) {
    if (P->rc) return P->rc;
    if (++P->n_elems > GRAM_MAX_ELEMS) return fail(P, SS_ETOOLONG, P->pos, "grammar too large");
    if (v->n == v->cap) {
        int32_t cap = v->cap ? v->cap * 2 : 8;
        struct gram_elem *ne = realloc(v->e, sizeof(*ne) * (size_t)cap);
        if (!ne) return fail(P, SS_ENOMEM, P->pos, "out of memory");
        v->e = ne;
        v->cap = cap;
    }
    v->e[v->n].op = op;
    v->e[v->n].arg = arg;
    v->n++;
    return 0;
}

static int32_t new_rule(struct parser *P) {
    if (P->rc) return -1;
    if (P->n_rules >= GRAM_MAX_RULES) {
        fail(P, SS_ETOOLONG, P->pos, "too many rules");
        return -1;
    }
    if (P->n_rules == P->cap_rules) {
        int32_t cap = P->cap_rules ? P->cap_rules * 2 : 16;
        struct evec *nr = realloc(P->rules, sizeof(*nr) * (size_t)cap);
        if (!nr) {
            fail(P, SS_ENOMEM, P->pos, "out of memory");
            return -1;
        }
        P->rules = nr;
        P->cap_rules = cap;
    }
    memset(&P->rules[P->n_rules], 0, sizeof(P->rules[0]));
    return P->n_rules++;
}

static int32_t add_set(struct parser *P, const uint32_t set[8]) {
    if (P->rc) return -1;
    if (P->n_sets == P->cap_sets) {
        int32_t cap = P->cap_sets ? P->cap_sets * 2 : 64;
        uint32_t (*ns)[8] = realloc(P->sets, sizeof(*ns) * (size_t)cap);
        if (!ns) {
            fail(P, SS_ENOMEM, P->pos, "out of memory");
            return -1;
        }
        P->sets = ns;
        P->cap_sets = cap;
    }
    memcpy(P->sets[P->n_sets], set, sizeof(uint32_t) * 8);
    return P->n_sets++;
}

static int32_t range_set(struct parser *P, unsigned lo, unsigned hi) {
    if (lo == hi && P->byte_set[lo] >= 0) return P->byte_set[lo];
    uint32_t set[8] = {0};
    for (unsigned b = lo; b <= hi; b++) set[b >> 5] |= 1u << (b & 31);
    int32_t id = add_set(P, set);
    if (lo == hi && id >= 0) P->byte_set[lo] = id;
    return id;
}

static int push_byte(struct parser *P, struct evec *v, unsigned b) {
    int32_t s = range_set(P, b, b);
    return s < 0 ? P->rc : evec_push(P, v, GE_SET, s);
}

/* ---------- lexing ---------- */

static int peek(const struct parser *P) { return P->pos < P->len ? (unsigned char)P->src[P->pos] : -1; }

static void skip_ws(struct parser *P) {
    while (P->pos < P->len) {
        char c = P->src[P->pos];
        if (c == '#') {
            while (P->pos < P->len && P->src[P->pos] != '\n') P->pos++;
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            P->pos++;
        } else {
            break;
        }
    }
}

static int is_name_char(int c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

static size_t name_len_at(const struct parser *P, size_t at) {
    size_t i = at;
    while (i < P->len && is_name_char((unsigned char)P->src[i])) i++;
    return i - at;
}

/* 1 if a rule definition `name ::=` starts at the current position. */
static int at_definition(const struct parser *P) {
    size_t n = name_len_at(P, P->pos);
    if (n == 0) return 0;
    size_t i = P->pos + n;
    while (i < P->len && (P->src[i] == ' ' || P->src[i] == '\t')) i++;
    return i + 3 <= P->len && memcmp(P->src + i, "::=", 3) == 0;
}

int gram_utf8_decode(const unsigned char *s, size_t left, uint32_t *cp) {
    if (left == 0) return 0;
    unsigned c = s[0];
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || (size_t)n > left) return 0;
    uint32_t v = n == 1 ? c : c & (0x7Fu >> n);
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    *cp = v;
    return n;
}

/* Decodes one UTF-8 code point at P->pos (advances); invalid bytes are an error. */
static int32_t next_cp(struct parser *P) {
    uint32_t cp;
    int n = gram_utf8_decode((const unsigned char *)P->src + P->pos, P->len - P->pos, &cp);
    if (n == 0) {
        fail(P, SS_EINVAL, P->pos, "invalid UTF-8");
        return -1;
    }
    P->pos += (size_t)n;
    return (int32_t)cp;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One character of a literal or class, escapes decoded, as a code point
 * (\xNN is U+00NN, as in llama.cpp's GBNF); INT32_MIN on error. */
static int32_t next_char(struct parser *P) {
    if (P->pos >= P->len) {
        fail(P, SS_EINVAL, P->pos, "unexpected end of grammar");
        return INT32_MIN;
    }
    if (P->src[P->pos] != '\\') {
        int32_t cp = next_cp(P);
        return cp < 0 ? INT32_MIN : cp;
    }
    size_t at = P->pos;
    P->pos++;
    int c = peek(P);
    P->pos++;
    switch (c) {
    case 'n': return '\n';
    case 't': return '\t';
    case 'r': return '\r';
    case '0': return 0;
    case '\\': case '"': case '[': case ']': case '-': case '^': case '/': case '\'':
        return c;
    case 'x': case 'u': case 'U': {
        int nd = c == 'x' ? 2 : c == 'u' ? 4 : 8;
        uint32_t v = 0;
        for (int i = 0; i < nd; i++) {
            int h = P->pos < P->len ? hexval((unsigned char)P->src[P->pos]) : -1;
            if (h < 0) {
                fail(P, SS_EINVAL, at, "bad hex escape");
                return INT32_MIN;
            }
            v = v * 16 + (uint32_t)h;
            P->pos++;
        }
        if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
            fail(P, SS_EINVAL, at, "escape is not a Unicode scalar value");
            return INT32_MIN;
        }
        return (int32_t)v;
    }
    default:
        fail(P, SS_EINVAL, at, "unknown escape");
        return INT32_MIN;
    }
}

static int utf8_encode(uint32_t cp, unsigned char *o) {
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---------- character classes ---------- */

static int cmp_range(const void *a, const void *b) {
    const struct cprange *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Appends to rule v the byte sequences of code points [lo, hi], split so
 * that each sequence is a product of byte ranges; alternatives are
 * separated by GE_ALT (*first: no separator before the first one). */
static void utf8_split(struct parser *P, int32_t v, uint32_t lo, uint32_t hi, int *first) {
    static const uint32_t bounds[] = {0x7F, 0x7FF, 0xFFFF};
    for (int i = 0; i < 3; i++)
        if (lo <= bounds[i] && hi > bounds[i]) {
            utf8_split(P, v, lo, bounds[i], first);
            utf8_split(P, v, bounds[i] + 1, hi, first);
            return;
        }
    unsigned char a[4], b[4];
    int n = utf8_encode(lo, a);
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if ((lo & m) != 0) {
                utf8_split(P, v, lo, lo | m, first);
                utf8_split(P, v, (lo | m) + 1, hi, first);
                return;
            }
            if ((hi & m) != m) {
                utf8_split(P, v, lo, (hi & ~m) - 1, first);
                utf8_split(P, v, hi & ~m, hi, first);
                return;
            }
        }
    }
    utf8_encode(hi, b);
    if (!*first) evec_push(P, &P->rules[v], GE_ALT, 0);
    *first = 0;
    for (int i = 0; i < n; i++) {
        int32_t s = range_set(P, a[i], b[i]);
        if (s >= 0) evec_push(P, &P->rules[v], GE_SET, s);
    }
}

/* Lowers sorted, merged code point ranges to one SET element (all ASCII) or
 * a REF to a generated rule: [ascii set] | utf-8 sequences... */
static int emit_class(struct parser *P, struct evec *out, const struct cprange *r, int n) {
    uint32_t ascii[8] = {0};
    int has_multi = 0, has_ascii = 0;
    for (int i = 0; i < n; i++) {
        for (uint32_t c = r[i].lo; c <= r[i].hi && c < 0x80; c++) {
            ascii[c >> 5] |= 1u << (c & 31);
            has_ascii = 1;
        }
        if (r[i].hi >= 0x80) has_multi = 1;
    }
    if (!has_multi) {
        int32_t s = add_set(P, ascii);
        return s < 0 ? P->rc : evec_push(P, out, GE_SET, s);
    }
    int32_t id = new_rule(P);
    if (id < 0) return P->rc;
    int first = 1;
    if (has_ascii) {
        int32_t s = add_set(P, ascii);
        if (s >= 0) evec_push(P, &P->rules[id], GE_SET, s);
        first = 0;
    }
    for (int i = 0; i < n && !P->rc; i++) {
        uint32_t lo = r[i].lo < 0x80 ? 0x80 : r[i].lo, hi = r[i].hi;
        if (lo > hi) continue;
        if (lo <= 0xDFFF && hi >= 0xD800) { /* surrogates have no UTF-8 form */
            if (lo < 0xD800) utf8_split(P, id, lo, 0xD7FF, &first);
            if (hi > 0xDFFF) utf8_split(P, id, 0xE000, hi, &first);
        } else {
            utf8_split(P, id, lo, hi, &first);
        }
    }
    evec_push(P, &P->rules[id], GE_END, 0);
    return evec_push(P, out, GE_REF, id);
}

#define MAX_CLASS_RANGES 1024

int gram_ranges_normalise(struct cprange *r, int n, int neg) {
    qsort(r, (size_t)n, sizeof(r[0]), cmp_range);
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m > 0 && r[i].lo <= r[m - 1].hi + 1) {
            if (r[i].hi > r[m - 1].hi) r[m - 1].hi = r[i].hi;
        } else {
            r[m++] = r[i];
        }
    }
    if (!neg) return m;
    uint32_t next = 0;
    int k = 0;
    for (int i = 0; i < m; i++) { /* k <= i: writing behind the reader is safe */
        uint32_t lo = r[i].lo, hi = r[i].hi;
        if (lo > next) r[k++] = (struct cprange){next, lo - 1};
        next = hi + 1;
    }
    if (next <= 0x10FFFF) r[k++] = (struct cprange){next, 0x10FFFF};
    return k;
}

/* Parses [..] at P->pos (on '[') and emits it. */
static int parse_class(struct parser *P, struct evec *out) {
    size_t at = P->pos;
    P->pos++; /* '[' */
    int neg = 0;
    if (peek(P) == '^') {
        neg = 1;
        P->pos++;
    }
    struct cprange r[MAX_CLASS_RANGES + 1];
    int n = 0;
    while (peek(P) != ']') {
        if (peek(P) < 0) return fail(P, SS_EINVAL, at, "unterminated character class");
        int32_t lo = next_char(P);
        if (lo == INT32_MIN) return P->rc;
        int32_t hi = lo;
        if (peek(P) == '-' && P->pos + 1 < P->len && P->src[P->pos + 1] != ']') {
            P->pos++;
            hi = next_char(P);
            if (hi == INT32_MIN) return P->rc;
        }
        if (lo > hi) return fail(P, SS_EINVAL, at, "class range out of order");
        if (n >= MAX_CLASS_RANGES) return fail(P, SS_ETOOLONG, at, "character class too long");
        r[n].lo = (uint32_t)lo;
        r[n].hi = (uint32_t)hi;
        n++;
    }
    P->pos++; /* ']' */
    n = gram_ranges_normalise(r, n, neg);
    return emit_class(P, out, r, n);
}

/* ---------- rules, sequences, repetition ---------- */

static int32_t lookup_name(struct parser *P, const char *s, size_t len, size_t at, int define) {
    for (int32_t i = 0; i < P->n_names; i++)
        if (P->names[i].len == len && memcmp(P->names[i].s, s, len) == 0) {
            if (define && P->names[i].defined) {
                fail(P, SS_EINVAL, at, "rule defined twice");
                return -1;
            }
            if (define) P->names[i].defined = 1;
            return P->names[i].id;
        }
    if (P->n_names == P->cap_names) {
        int32_t cap = P->cap_names ? P->cap_names * 2 : 16;
        struct rname *nn = realloc(P->names, sizeof(*nn) * (size_t)cap);
        if (!nn) {
            fail(P, SS_ENOMEM, at, "out of memory");
            return -1;
        }
        P->names = nn;
        P->cap_names = cap;
    }
    int32_t id = new_rule(P);
    if (id < 0) return -1;
    P->names[P->n_names++] = (struct rname){s, len, id, define, at};
    return id;
}

/* Moves v->e[from..] into a new rule and leaves one REF to it in their place. */
static int32_t wrap_tail(struct parser *P, struct evec *v, int32_t from) {
    int32_t id = new_rule(P);
    if (id < 0) return -1;
    for (int32_t i = from; i < v->n; i++) evec_push(P, &P->rules[id], v->e[i].op, v->e[i].arg);
    evec_push(P, &P->rules[id], GE_END, 0);
    v->n = from;
    return id;
}

#define OPT_SELF (-2)
/* New rule: x rest | "" (rest == -1: x alone; OPT_SELF: the rule itself,
 * which gives x*). */
static int32_t opt_rule(struct parser *P, struct gram_elem x, int32_t rest) {
    int32_t id = new_rule(P);
    if (id < 0) return -1;
    evec_push(P, &P->rules[id], x.op, x.arg);
    if (rest != -1) evec_push(P, &P->rules[id], GE_REF, rest == OPT_SELF ? id : rest);
    evec_push(P, &P->rules[id], GE_ALT, 0);
    evec_push(P, &P->rules[id], GE_END, 0);
    return id;
}

/* Applies {min,max} (max < 0: unbounded) to the item v->e[from..]. */
static int repeat(struct parser *P, struct evec *v, int32_t from, long min, long max, size_t at) {
    if (max >= 0 && min > max) return fail(P, SS_EINVAL, at, "repetition {m,n} with m > n");
    if (min > GRAM_MAX_REPEAT || max > GRAM_MAX_REPEAT) return fail(P, SS_ETOOLONG, at, "repetition bound above 4096");
    if (v->n - from != 1) {
        int32_t id = wrap_tail(P, v, from);
        if (id < 0) return P->rc;
        evec_push(P, v, GE_REF, id);
    }
    if (P->rc) return P->rc;
    struct gram_elem x = v->e[from];
    v->n = from;
    for (long i = 0; i < min; i++) evec_push(P, v, x.op, x.arg);
    if (max < 0) {
        int32_t star = opt_rule(P, x, OPT_SELF); /* star ::= x star | "" */
        return star < 0 ? P->rc : evec_push(P, v, GE_REF, star);
    }
    int32_t chain = -1; /* o_k ::= x o_{k-1} | "" */
    for (long k = min; k < max && !P->rc; k++) chain = opt_rule(P, x, chain);
    return chain < 0 ? P->rc : evec_push(P, v, GE_REF, chain);
}

static long parse_number(struct parser *P) {
    long v = 0;
    int any = 0;
    while (peek(P) >= '0' && peek(P) <= '9') {
        v = v * 10 + (peek(P) - '0');
        if (v > 1000000) v = 1000000;
        P->pos++;
        any = 1;
    }
    return any ? v : -1;
}

static int parse_postfix(struct parser *P, struct evec *v, int32_t from) {
    for (;;) {
        size_t at = P->pos;
        int c = peek(P);
        if (c == '*') {
            P->pos++;
            repeat(P, v, from, 0, -1, at);
        } else if (c == '+') {
            P->pos++;
            repeat(P, v, from, 1, -1, at);
        } else if (c == '?') {
            P->pos++;
            repeat(P, v, from, 0, 1, at);
        } else if (c == '{') {
            P->pos++;
            skip_ws(P);
            long min = parse_number(P), max;
            skip_ws(P);
            if (min < 0) return fail(P, SS_EINVAL, at, "expected a number after '{'");
            if (peek(P) == ',') {
                P->pos++;
                skip_ws(P);
                max = parse_number(P);
                skip_ws(P);
            } else {
                max = min;
            }
            if (peek(P) != '}') return fail(P, SS_EINVAL, at, "expected '}'");
            P->pos++;
            repeat(P, v, from, min, max, at);
        } else {
            return P->rc;
        }
        if (P->rc) return P->rc;
    }
}

static int parse_alternatives(struct parser *P, struct evec *v);

/* One primary (literal, class, '.', reference or group) appended to v. */
static int parse_primary(struct parser *P, struct evec *v) {
    size_t at = P->pos;
    int c = peek(P);
    if (c == '"') {
        P->pos++;
        while (peek(P) != '"') {
            if (peek(P) < 0 || peek(P) == '\n') return fail(P, SS_EINVAL, at, "unterminated string literal");
            int32_t cp = next_char(P);
            if (cp == INT32_MIN) return P->rc;
            unsigned char b[4];
            int n = utf8_encode((uint32_t)cp, b);
            for (int i = 0; i < n; i++) push_byte(P, v, b[i]);
        }
        P->pos++;
        return P->rc;
    }
    if (c == '[') return parse_class(P, v);
    if (c == '.') {
        P->pos++;
        struct cprange any = {0, 0x10FFFF};
        return emit_class(P, v, &any, 1);
    }
    if (c == '(') {
        if (++P->depth > GRAM_MAX_NEST) return fail(P, SS_ETOOLONG, at, "groups nested too deeply");
        P->pos++;
        int32_t id = new_rule(P);
        if (id < 0) return P->rc;
        struct evec body = {0};
        parse_alternatives(P, &body);
        skip_ws(P);
        if (!P->rc && peek(P) != ')') fail(P, SS_EINVAL, at, "unclosed '('");
        P->pos++;
        for (int32_t i = 0; i < body.n; i++) evec_push(P, &P->rules[id], body.e[i].op, body.e[i].arg);
        free(body.e);
        P->n_elems -= body.n; /* counted twice */
        evec_push(P, &P->rules[id], GE_END, 0);
        P->depth--;
        return evec_push(P, v, GE_REF, id);
    }
    size_t n = name_len_at(P, P->pos);
    if (n == 0) return fail(P, SS_EINVAL, at, "expected a literal, class, rule name or group");
    int32_t id = lookup_name(P, P->src + P->pos, n, at, 0);
    P->pos += n;
    return id < 0 ? P->rc : evec_push(P, v, GE_REF, id);
}

/* alt ('|' alt)* until ')', the end, or the next `name ::=`. */
static int parse_alternatives(struct parser *P, struct evec *v) {
    for (;;) {
        skip_ws(P);
        while (!P->rc && peek(P) >= 0 && peek(P) != '|' && peek(P) != ')' && !at_definition(P)) {
            int32_t from = v->n;
            if (parse_primary(P, v) || parse_postfix(P, v, from)) return P->rc;
            skip_ws(P);
        }
        if (P->rc || peek(P) != '|') return P->rc;
        P->pos++;
        evec_push(P, v, GE_ALT, 0);
    }
}

static int parse_rules(struct parser *P) {
    skip_ws(P);
    while (!P->rc && P->pos < P->len) {
        size_t at = P->pos;
        size_t n = name_len_at(P, P->pos);
        if (n == 0 || !at_definition(P)) return fail(P, SS_EINVAL, at, "expected `name ::=`");
        int32_t id = lookup_name(P, P->src + P->pos, n, at, 1);
        if (id < 0) return P->rc;
        P->pos += n;
        skip_ws(P);
        P->pos += 3; /* ::= */
        struct evec body = {0};
        parse_alternatives(P, &body);
        if (!P->rc && peek(P) == ')') fail(P, SS_EINVAL, P->pos, "unbalanced ')'");
        for (int32_t i = 0; i < body.n; i++) evec_push(P, &P->rules[id], body.e[i].op, body.e[i].arg);
        P->n_elems -= body.n;
        free(body.e);
        evec_push(P, &P->rules[id], GE_END, 0);
        skip_ws(P);
    }
    return P->rc;
}

/* ---------- flattening ---------- */

static int flatten(struct parser *P, struct gram *g) {
    int64_t n_el = 0, n_alts = 0;
    for (int32_t r = 0; r < P->n_rules; r++) {
        n_el += P->rules[r].n;
        for (int32_t i = 0; i < P->rules[r].n; i++)
            if (P->rules[r].e[i].op <= GE_ALT) n_alts++;
    }
    int32_t *start = malloc(sizeof(int32_t) * (size_t)(P->n_rules + 1));
    g->el = malloc(sizeof(*g->el) * (size_t)(n_el + 1));
    g->alts = malloc(sizeof(int32_t) * (size_t)(n_alts + 1));
    g->alt_off = malloc(sizeof(int32_t) * (size_t)(P->n_rules + 1));
    if (!start || !g->el || !g->alts || !g->alt_off) {
        free(start);
        return fail(P, SS_ENOMEM, 0, "out of memory");
    }
    int32_t w = 0, a = 0;
    for (int32_t r = 0; r < P->n_rules; r++) {
        start[r] = w;
        memcpy(g->el + w, P->rules[r].e, sizeof(*g->el) * (size_t)P->rules[r].n);
        w += P->rules[r].n;
    }
    for (int32_t r = 0; r < P->n_rules; r++) {
        g->alt_off[r] = a;
        g->alts[a++] = start[r];
        for (int32_t i = start[r]; g->el[i].op != GE_END; i++)
            if (g->el[i].op == GE_ALT) g->alts[a++] = i + 1;
    }
    g->alt_off[P->n_rules] = a;
    g->el[w].op = GE_END; /* sentinel */
    g->n_el = w;
    g->n_rules = P->n_rules;
    free(start);
    return 0;
}

int gram_check(struct gram *g, char *err, size_t err_len); /* grammar_check.c */

static void parser_free(struct parser *P) {
    for (int32_t r = 0; r < P->n_rules; r++) free(P->rules[r].e);
    free(P->rules);
    free(P->names);
    free(P->sets);
}

int gram_compile_gbnf(struct gram **out, const char *text, size_t len, char *err, size_t err_len) {
    *out = NULL;
    if (err && err_len) err[0] = 0;
    if (len > GRAM_MAX_TEXT) {
        gram_errf(err, err_len, "grammar: longer than %u bytes", GRAM_MAX_TEXT);
        return SS_ETOOLONG;
    }
    struct parser P = {.src = text, .len = len, .err = err, .err_len = err_len};
    memset(P.byte_set, -1, sizeof(P.byte_set));
    parse_rules(&P);
    int32_t root = -1;
    for (int32_t i = 0; !P.rc && i < P.n_names; i++) {
        if (!P.names[i].defined) {
            char msg[160];
            snprintf(msg, sizeof(msg), "undefined rule '%.*s'", (int)(P.names[i].len > 64 ? 64 : P.names[i].len),
                     P.names[i].s);
            fail(&P, SS_EINVAL, P.names[i].first_use, msg);
        }
        if (P.names[i].len == 4 && memcmp(P.names[i].s, "root", 4) == 0) root = P.names[i].id;
    }
    if (!P.rc && root < 0) fail(&P, SS_EINVAL, len, "no 'root' rule");
    struct gram *g = NULL;
    if (!P.rc) {
        g = calloc(1, sizeof(*g));
        if (!g) fail(&P, SS_ENOMEM, 0, "out of memory");
    }
    if (!P.rc && flatten(&P, g) == 0) {
        g->refs = 1;
        g->root = root;
        g->sets = P.sets;
        g->n_sets = P.n_sets;
        P.sets = NULL;
        uint32_t h = 2166136261u; /* FNV-1a over the content */
        const unsigned char *parts[4] = {(const void *)g->el, (const void *)g->alts, (const void *)g->alt_off,
                                         (const void *)g->sets};
        size_t lens[4] = {sizeof(*g->el) * (size_t)g->n_el, sizeof(int32_t) * (size_t)g->alt_off[g->n_rules],
                          sizeof(int32_t) * (size_t)(g->n_rules + 1), sizeof(g->sets[0]) * (size_t)g->n_sets};
        for (int k = 0; k < 4; k++)
            for (size_t i = 0; i < lens[k]; i++) h = (h ^ parts[k][i]) * 16777619u;
        g->hash = h ^ (uint32_t)root;
        P.rc = gram_check(g, err, err_len);
    }
    int rc = P.rc;
    parser_free(&P);
    if (rc) {
        if (g) {
            g->refs = 1;
            gram_unref(g);
        }
        return rc;
    }
    *out = g;
    return 0;
}

void gram_ref(struct gram *g) {
    if (g) __atomic_add_fetch(&g->refs, 1, __ATOMIC_RELAXED);
}

void gram_unref(struct gram *g) {
    if (!g || __atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) > 0) return;
    free(g->el);
    free(g->alts);
    free(g->alt_off);
    free(g->sets);
    free(g);
}
