/* grammar_regex.c - regular expressions (a documented subset) to GBNF text.
 *
 * Recursive descent over the pattern, writing the equivalent GBNF expression:
 *   alt    := concat ('|' concat)*          -> ( a | b )
 *   concat := (atom quantifier?)*           -> a b c
 *   atom   := literal | . | \escape | [class] | ( alt ) | (?: alt ) | (?P<n> alt)
 * Classes become explicit code point ranges (\d \w \s and their negations
 * folded in), so GBNF sees only plain ranges. Lazy quantifiers match the same
 * strings and are accepted. The whole output must match: ^ at the start and $
 * at the end are accepted and dropped; elsewhere they are errors, like
 * backreferences, lookaround and \b.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/grammar_internal.h"
#include "kernels/ss_error.h"

#define RE_MAX_RANGES 1024

struct rx {
    const char *s;
    size_t len, pos;
    int depth;
    int json; /* see gram_regex_expr */
    int rc;
    char *err;
    size_t err_len;
    struct gbuf *out;
};

static int rx_fail(struct rx *R, size_t at, const char *msg) {
    if (!R->rc) {
        gram_errf(R->err, R->err_len, "regex: at offset %zu: %s", at, msg);
        R->rc = SS_EINVAL;
    }
    return R->rc;
}

static int rx_peek(const struct rx *R) { return R->pos < R->len ? (unsigned char)R->s[R->pos] : -1; }

/* Decodes one UTF-8 code point (invalid bytes are an error). */
static int32_t rx_cp(struct rx *R) {
    uint32_t cp;
    int n = gram_utf8_decode((const unsigned char *)R->s + R->pos, R->len - R->pos, &cp);
    if (n == 0) {
        rx_fail(R, R->pos, "invalid UTF-8");
        return -1;
    }
    R->pos += (size_t)n;
    return (int32_t)cp;
}

/* Adds the ranges of a class escape letter (d w s, upper case negated);
 * returns the new count, or -1 if c is not one. */
static int class_escape(int c, struct cprange *r, int n) {
    static const struct cprange d[] = {{'0', '9'}};
    static const struct cprange w[] = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
    static const struct cprange s[] = {{'\t', '\r'}, {' ', ' '}};
    const struct cprange *src;
    int k;
    switch (c | 0x20) {
    case 'd': src = d, k = 1; break;
    case 'w': src = w, k = 4; break;
    case 's': src = s, k = 2; break;
    default: return -1;
    }
    struct cprange tmp[8];
    memcpy(tmp, src, sizeof(*src) * (size_t)k);
    if (c >= 'A' && c <= 'Z') k = gram_ranges_normalise(tmp, k, 1);
    memcpy(r + n, tmp, sizeof(*tmp) * (size_t)k);
    return n + k;
}

static int hexv(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A single-character escape after '\' (R->pos past it): its code point, or
 * -1 on error. */
static int32_t char_escape(struct rx *R, int c, size_t at) {
    switch (c) {
    case 'n': return '\n';
    case 't': return '\t';
    case 'r': return '\r';
    case 'f': return '\f';
    case 'v': return '\v';
    case '0': return 0;
    case 'x': case 'u': {
        int nd = c == 'x' ? 2 : 4;
        uint32_t v = 0;
        for (int i = 0; i < nd; i++) {
            int h = hexv(rx_peek(R));
            if (h < 0) return rx_fail(R, at, "bad hex escape"), -1;
            v = v * 16 + (uint32_t)h;
            R->pos++;
        }
        if (v >= 0xD800 && v <= 0xDFFF) return rx_fail(R, at, "surrogate escape"), -1;
        return (int32_t)v;
    }
    }
    if ((c >= '1' && c <= '9') || c == 'k') return rx_fail(R, at, "backreferences are not supported"), -1;
    if (c == 'b' || c == 'B' || c == 'A' || c == 'z' || c == 'Z' || c == 'G')
        return rx_fail(R, at, "assertions (\\b, \\A, \\z) are not supported"), -1;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return rx_fail(R, at, "unknown escape"), -1;
    return c; /* an escaped punctuation character stands for itself */
}

/* In json mode: removes '"', '\\' and control characters from a class. */
static int json_safe(struct rx *R, struct cprange *r, int n) {
    if (!R->json) return n;
    struct cprange bad[3] = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}};
    struct cprange nb[4];
    memcpy(nb, bad, sizeof(bad));
    int k = gram_ranges_normalise(nb, 3, 1); /* allowed = complement of bad */
    struct cprange out[RE_MAX_RANGES + 8];
    int m = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) {
            uint32_t lo = r[i].lo > nb[j].lo ? r[i].lo : nb[j].lo;
            uint32_t hi = r[i].hi < nb[j].hi ? r[i].hi : nb[j].hi;
            if (lo <= hi && m < RE_MAX_RANGES) out[m++] = (struct cprange){lo, hi};
        }
    memcpy(r, out, sizeof(*r) * (size_t)m);
    return m;
}

static void emit_ranges(struct rx *R, struct cprange *r, int n) {
    n = json_safe(R, r, n);
    gbuf_puts(R->out, "[");
    for (int i = 0; i < n; i++) {
        gbuf_printf(R->out, "\\U%08X", r[i].lo);
        if (r[i].hi != r[i].lo) gbuf_printf(R->out, "-\\U%08X", r[i].hi);
    }
    gbuf_puts(R->out, "]");
}

static void emit_cp(struct rx *R, uint32_t cp) {
    if (R->json && (cp < 0x20 || cp == '"' || cp == '\\')) {
        static const char hex[] = "0123456789abcdef";
        char e[7] = {'\\', 'u', '0', '0', hex[(cp >> 4) & 15], hex[cp & 15], 0};
        if (cp == '"' || cp == '\\') e[1] = (char)cp, e[2] = 0;
        else if (cp == '\n') e[1] = 'n', e[2] = 0;
        else if (cp == '\t') e[1] = 't', e[2] = 0;
        gbuf_literal(R->out, e, strlen(e));
        return;
    }
    gbuf_printf(R->out, "\"\\U%08X\"", cp);
}

static int parse_class(struct rx *R) {
    size_t at = R->pos++;
    int neg = 0;
    if (rx_peek(R) == '^') {
        neg = 1;
        R->pos++;
    }
    struct cprange r[RE_MAX_RANGES + 8];
    int n = 0, first = 1;
    while (rx_peek(R) != ']' || first) {
        first = 0;
        if (rx_peek(R) < 0) return rx_fail(R, at, "unterminated character class");
        if (n >= RE_MAX_RANGES) return rx_fail(R, at, "character class too long");
        int32_t lo;
        size_t e = R->pos;
        if (rx_peek(R) == '\\') {
            R->pos++;
            int c = rx_peek(R);
            if (c < 0) return rx_fail(R, e, "dangling backslash");
            R->pos++;
            int k = class_escape(c, r, n);
            if (k >= 0) {
                n = k;
                continue;
            }
            lo = c == 'b' ? '\b' : char_escape(R, c, e);
        } else {
            lo = rx_cp(R);
        }
        if (lo < 0) return R->rc;
        int32_t hi = lo;
        if (rx_peek(R) == '-' && R->pos + 1 < R->len && R->s[R->pos + 1] != ']') {
            R->pos++;
            if (rx_peek(R) == '\\') {
                R->pos++;
                int c = rx_peek(R);
                R->pos++;
                hi = char_escape(R, c, e);
            } else {
                hi = rx_cp(R);
            }
            if (hi < 0) return R->rc;
            if (hi < lo) return rx_fail(R, e, "class range out of order");
        }
        r[n++] = (struct cprange){(uint32_t)lo, (uint32_t)hi};
    }
    R->pos++;
    n = gram_ranges_normalise(r, n, neg);
    emit_ranges(R, r, n);
    return R->rc;
}

static int parse_alt(struct rx *R);

static int parse_atom(struct rx *R) {
    size_t at = R->pos;
    int c = rx_peek(R);
    if (c == '(') {
        R->pos++;
        if (rx_peek(R) == '?') {
            R->pos++;
            int k = rx_peek(R);
            if (k == ':') {
                R->pos++;
            } else if (k == 'P' || k == '<') { /* named group (?P<n>..) / (?<n>..) */
                if (k == 'P') R->pos++;
                if (rx_peek(R) != '<') return rx_fail(R, at, "unsupported group syntax");
                while (rx_peek(R) >= 0 && rx_peek(R) != '>') R->pos++;
                if (rx_peek(R) != '>' || (R->pos + 1 < R->len && (R->s[at + 3] == '=' || R->s[at + 3] == '!')))
                    return rx_fail(R, at, "lookaround is not supported");
                R->pos++;
            } else {
                return rx_fail(R, at, "lookaround and inline flags are not supported");
            }
        }
        if (++R->depth > GRAM_MAX_NEST) return rx_fail(R, at, "groups nested too deeply");
        gbuf_puts(R->out, "(");
        parse_alt(R);
        if (!R->rc && rx_peek(R) != ')') return rx_fail(R, at, "unclosed '('");
        R->pos++;
        R->depth--;
        gbuf_puts(R->out, ")");
        return R->rc;
    }
    if (c == '[') return parse_class(R);
    if (c == '.') {
        R->pos++;
        struct cprange r[2] = {{'\n', '\n'}};
        int n = gram_ranges_normalise(r, 1, 1);
        emit_ranges(R, r, n);
        return 0;
    }
    if (c == '\\') {
        R->pos++;
        int k = rx_peek(R);
        if (k < 0) return rx_fail(R, at, "dangling backslash");
        R->pos++;
        struct cprange r[8];
        int n = class_escape(k, r, 0);
        if (n >= 0) {
            emit_ranges(R, r, n);
            return 0;
        }
        int32_t cp = char_escape(R, k, at);
        if (cp >= 0) emit_cp(R, (uint32_t)cp);
        return R->rc;
    }
    if (c == '*' || c == '+' || c == '?' || c == ')' || c == '|')
        return rx_fail(R, at, "nothing to repeat or unbalanced ')'");
    if (c == '^' || c == '$') return rx_fail(R, at, "anchors are only allowed at the start and end");
    int32_t cp = rx_cp(R);
    if (cp >= 0) emit_cp(R, (uint32_t)cp);
    return R->rc;
}

static long rx_num(struct rx *R) {
    long v = -1;
    while (rx_peek(R) >= '0' && rx_peek(R) <= '9') {
        v = (v < 0 ? 0 : v) * 10 + (rx_peek(R) - '0');
        if (v > 100000) v = 100000;
        R->pos++;
    }
    return v;
}

/* Quantifier after an atom, copied as GBNF; a '{' that does not start a valid
 * {m}, {m,} or {m,n} is a literal '{' (as in Python's re). */
static int parse_quant(struct rx *R) {
    int c = rx_peek(R);
    if (c == '*' || c == '+' || c == '?') {
        R->pos++;
        char q[2] = {(char)c, 0};
        gbuf_puts(R->out, q);
    } else if (c == '{') {
        size_t save = R->pos;
        R->pos++;
        long m = rx_num(R), n = m;
        int comma = 0;
        if (rx_peek(R) == ',') {
            comma = 1;
            R->pos++;
            n = rx_num(R);
        }
        if (m < 0 || rx_peek(R) != '}') {
            R->pos = save;
            return 0;
        }
        R->pos++;
        if (comma && n < 0) gbuf_printf(R->out, "{%ld,}", m);
        else gbuf_printf(R->out, "{%ld,%ld}", m, n);
    } else {
        return 0;
    }
    if (rx_peek(R) == '?' || rx_peek(R) == '+') R->pos++; /* lazy / possessive: same language */
    c = rx_peek(R);
    if (c == '*' || c == '+' || c == '?') return rx_fail(R, R->pos, "multiple repeat");
    return 0;
}

static int parse_concat(struct rx *R) {
    gbuf_puts(R->out, "(\"\"");
    while (!R->rc && rx_peek(R) >= 0 && rx_peek(R) != '|' && rx_peek(R) != ')') {
        if (rx_peek(R) == '$' && R->pos + 1 == R->len) {
            R->pos++;
            break;
        }
        gbuf_puts(R->out, " ");
        if (rx_peek(R) == '{') { /* a literal '{' where no atom precedes */
            R->pos++;
            gbuf_puts(R->out, "\"{\"");
            continue;
        }
        if (parse_atom(R) == 0) parse_quant(R);
    }
    gbuf_puts(R->out, ")");
    return R->rc;
}

static int parse_alt(struct rx *R) {
    gbuf_puts(R->out, "(");
    parse_concat(R);
    while (!R->rc && rx_peek(R) == '|') {
        R->pos++;
        gbuf_puts(R->out, " | ");
        parse_concat(R);
    }
    gbuf_puts(R->out, ")");
    return R->rc;
}

int gram_regex_expr(struct gbuf *out, const char *re, size_t len, int json_string, char *err,
                    size_t err_len) {
    struct rx R = {.s = re, .len = len, .json = json_string, .err = err, .err_len = err_len, .out = out};
    if (len > GRAM_MAX_TEXT / 16) {
        gram_errf(err, err_len, "regex: longer than %u bytes", GRAM_MAX_TEXT / 16);
        return SS_ETOOLONG;
    }
    if (rx_peek(&R) == '^') R.pos++;
    parse_alt(&R);
    if (!R.rc && R.pos < R.len) rx_fail(&R, R.pos, "unbalanced ')'");
    if (!R.rc && out->oom) {
        gram_errf(err, err_len, "regex: out of memory");
        R.rc = SS_ENOMEM;
    }
    return R.rc;
}

char *gram_regex_to_gbnf(const char *re, size_t len, char *err, size_t err_len) {
    struct gbuf b = {0};
    gbuf_puts(&b, "root ::= ");
    if (gram_regex_expr(&b, re, len, 0, err, err_len) != 0 || b.oom) {
        free(b.s);
        return NULL;
    }
    gbuf_puts(&b, "\n");
    return b.oom ? (free(b.s), NULL) : b.s;
}

/* Compiles generated GBNF text; frees it. */
static int compile_text(struct gram **out, char *text, char *err, size_t err_len) {
    if (!text) return SS_EINVAL;
    int rc = gram_compile_gbnf(out, text, strlen(text), err, err_len);
    free(text);
    return rc;
}

int gram_compile_regex(struct gram **out, const char *re, size_t len, char *err, size_t err_len) {
    *out = NULL;
    char *text = gram_regex_to_gbnf(re, len, err, err_len);
    return text ? compile_text(out, text, err, err_len) : (err && err[0] ? SS_EINVAL : SS_ENOMEM);
}

int gram_compile_choice(struct gram **out, const char *const *choices, int n, char *err, size_t err_len) {
    *out = NULL;
    if (n < 1) {
        gram_errf(err, err_len, "choice: the list is empty");
        return SS_EINVAL;
    }
    struct gbuf b = {0};
    gbuf_puts(&b, "root ::= ");
    for (int i = 0; i < n; i++) {
        if (i) gbuf_puts(&b, " | ");
        gbuf_literal(&b, choices[i], strlen(choices[i]));
        if (choices[i][0] == 0) gbuf_puts(&b, " \"\"");
    }
    gbuf_puts(&b, "\n");
    if (b.oom) {
        free(b.s);
        gram_errf(err, err_len, "choice: out of memory");
        return SS_ENOMEM;
    }
    return compile_text(out, b.s, err, err_len);
}
