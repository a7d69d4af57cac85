/* grammar_schema.c - JSON Schema to GBNF text.
 *
 * Each subschema becomes a rule "sN ::= ..."; $ref targets (local JSON
 * pointers: "#", "#/$defs/x", "#/definitions/x", any "#/...") get one rule
 * each, named before their body is written, so recursive schemas work.
 * Output is compact JSON with optional whitespace (at most 20 characters of
 * [ \t\n] between tokens); objects list their properties in schema order.
 *
 * Supported: type (one or a list), properties, required, additionalProperties
 * (false, true, or a schema; absent counts as false when properties are
 * given, like strict mode), enum, const, items, minItems, maxItems, anyOf,
 * oneOf (as anyOf: exclusivity is not enforced), allOf with one schema,
 * $defs/definitions/$ref, minLength/maxLength, pattern (gram_regex_expr's
 * subset, matched against the whole string), integer minimum/maximum/
 * exclusiveMinimum/exclusiveMaximum, number minimum 0. Annotations (title,
 * description, default, examples, $schema, $id, $comment, deprecated,
 * readOnly, writeOnly) are ignored; any other keyword is an error naming it.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/grammar_internal.h"
#include "kernels/ss_error.h"

#define PATH_MAX_LEN 256
#define MAX_REFS 1024

struct sref {
    const cJSON *node;
    int rule;
};

struct sc {
    const cJSON *root;
    struct gbuf rules; /* every generated rule */
    int n_rules;
    struct sref refs[MAX_REFS];
    int n_refs;
    char path[PATH_MAX_LEN];
    size_t path_len;
    int depth;
    int rc;
    char *err;
    size_t err_len;
};

static const char *COMMON =
    "ws ::= [ \\t\\n]{0,20}\n"
    "json-char ::= [^\"\\\\\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})\n"
    "json-string ::= \"\\\"\" json-char* \"\\\"\"\n"
    "json-uint ::= \"0\" | [1-9] [0-9]{0,18}\n"
    "json-int ::= \"-\"? json-uint\n"
    "json-frac ::= (\".\" [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?\n"
    "json-number ::= json-int json-frac\n"
    "json-bool ::= \"true\" | \"false\"\n"
    "json-null ::= \"null\"\n"
    "json-value ::= json-object | json-array | json-string | json-number | json-bool | json-null\n"
    "json-member ::= json-string ws \":\" ws json-value\n"
    "json-object ::= \"{\" ws (json-member ws (\",\" ws json-member ws)*)? \"}\"\n"
    "json-array ::= \"[\" ws (json-value ws (\",\" ws json-value ws)*)? \"]\"\n";

static int sfail(struct sc *S, int rc, const char *fmt, const char *arg) {
    if (S->rc) return S->rc;
    char msg[200];
    snprintf(msg, sizeof(msg), fmt, arg ? arg : "");
    const char *path = S->path_len ? S->path : "/";
    int cut = S->path_len > 100; /* keep the message: show the end of a long path */
    gram_errf(S->err, S->err_len, "schema: at %s%s: %s", cut ? "..." : "", cut ? S->path + S->path_len - 100 : path, msg);
    S->rc = rc;
    return rc;
}

static size_t path_push(struct sc *S, const char *seg) {
    size_t old = S->path_len;
    int n = snprintf(S->path + old, sizeof(S->path) - old, "/%s", seg);
    if (n > 0) S->path_len = old + (size_t)n < sizeof(S->path) ? old + (size_t)n : sizeof(S->path) - 1;
    return old;
}

static void path_pop(struct sc *S, size_t old) {
    S->path_len = old;
    S->path[old] = 0;
}

static int schema_rule(struct sc *S, const cJSON *node, const char *seg);

/* A JSON value as a GBNF literal of its compact serialisation. */
static void json_literal(struct sc *S, struct gbuf *out, const cJSON *v) {
    char *t = cJSON_PrintUnformatted(v);
    if (!t) {
        sfail(S, SS_ENOMEM, "out of memory", NULL);
        return;
    }
    gbuf_literal(out, t, strlen(t));
    free(t);
}

static const char *const KNOWN[] = {
    "type", "properties", "required", "additionalProperties", "enum", "const", "items", "minItems",
    "maxItems", "anyOf", "oneOf", "allOf", "$defs", "definitions", "$ref", "minLength", "maxLength",
    "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "title", "description",
    "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly", "writeOnly", NULL};

static int check_keywords(struct sc *S, const cJSON *node) {
    for (const cJSON *k = node->child; k; k = k->next) {
        int ok = 0;
        for (int i = 0; KNOWN[i] && !ok; i++) ok = strcmp(k->string, KNOWN[i]) == 0;
        if (!ok) return sfail(S, SS_EUNSUPPORTED, "unsupported keyword '%s'", k->string);
    }
    return 0;
}

static int get_count(struct sc *S, const cJSON *node, const char *key, long dflt, long *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(node, key);
    *out = dflt;
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble))
        return sfail(S, SS_EINVAL, "'%s' must be a non-negative integer", key);
    if (v->valuedouble > GRAM_MAX_REPEAT) return sfail(S, SS_ETOOLONG, "'%s' above 4096 is not supported", key);
    *out = (long)v->valuedouble;
    return 0;
}

/* ---- integers in a range ---- */

/* Fixed-length decimal strings from lo to hi (same length, lo <= hi). */
static void digits_range(struct gbuf *o, const char *lo, const char *hi, int n) {
    if (n == 0) return;
    if (lo[0] == hi[0]) {
        gbuf_printf(o, "\"%c\" ", lo[0]);
        digits_range(o, lo + 1, hi + 1, n - 1);
        return;
    }
    int rest_lo = 1, rest_hi = 1; /* lo[1..] all '0', hi[1..] all '9' */
    for (int i = 1; i < n; i++) {
        rest_lo &= lo[i] == '0';
        rest_hi &= hi[i] == '9';
    }
    char nines[24], zeros[24];
    memset(nines, '9', sizeof(nines));
    memset(zeros, '0', sizeof(zeros));
    gbuf_puts(o, "(");
    char a = rest_lo ? lo[0] : (char)(lo[0] + 1), b = rest_hi ? hi[0] : (char)(hi[0] - 1);
    int any = 0;
    if (!rest_lo) {
        gbuf_printf(o, "\"%c\" (", lo[0]);
        digits_range(o, lo + 1, nines, n - 1);
        gbuf_puts(o, ")");
        any = 1;
    }
    if (a <= b) {
        gbuf_printf(o, "%s[%c-%c] [0-9]{%d}", any ? " | " : "", a, b, n - 1);
        any = 1;
    }
    if (!rest_hi) {
        gbuf_printf(o, "%s\"%c\" (", any ? " | " : "", hi[0]);
        digits_range(o, zeros, hi + 1, n - 1);
        gbuf_puts(o, ")");
    }
    gbuf_puts(o, ")");
}

/* Non-negative integers in [a, b] without leading zeros; b < 0: unbounded
 * (up to 19 digits). */
static void uint_range(struct gbuf *o, long long a, long long b) {
    char sa[24], sb[24];
    int la = snprintf(sa, sizeof(sa), "%lld", a);
    if (b < 0) { /* a's length from a up, then any longer number */
        char nines[24];
        memset(nines, '9', (size_t)la);
        nines[la] = 0;
        gbuf_puts(o, "((");
        if (la == 1) gbuf_printf(o, "[%c-9]", sa[0]);
        else digits_range(o, sa, nines, la);
        gbuf_printf(o, ") | [1-9] [0-9]{%d,18})", la);
        return;
    }
    int lb = snprintf(sb, sizeof(sb), "%lld", b);
    gbuf_puts(o, "(");
    for (int L = la; L <= lb; L++) {
        char lo[24], hi[24];
        if (L == la) memcpy(lo, sa, (size_t)L + 1);
        else snprintf(lo, sizeof(lo), "1%0*d", L - 1, 0);
        if (b >= 0 && L == lb) memcpy(hi, sb, (size_t)L + 1);
        else memset(hi, '9', (size_t)L), hi[L] = 0;
        if (L > la) gbuf_puts(o, " | ");
        gbuf_puts(o, "(");
        if (L == 1) gbuf_printf(o, "[%c-%c]", lo[0], hi[0]);
        else digits_range(o, lo, hi, L);
        gbuf_puts(o, ")");
    }
    gbuf_puts(o, ")");
}

#define INT_LIM 1000000000000000000.0 /* |bounds| up to 1e18 */

static int bound(struct sc *S, const cJSON *node, const char *key, int is_min, double *v, int *has) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(node, key);
    if (!x) return 0;
    if (!cJSON_IsNumber(x) || fabs(x->valuedouble) > INT_LIM) return sfail(S, SS_EUNSUPPORTED, "'%s' must be a number within +-1e18", key);
    double d = x->valuedouble;
    int excl = key[0] == 'e';
    double r = is_min ? (excl ? floor(d) + 1 : ceil(d)) : (excl ? ceil(d) - 1 : floor(d));
    if (!*has || (is_min ? r > *v : r < *v)) *v = r;
    *has = 1;
    return 0;
}

static int integer_expr(struct sc *S, const cJSON *node, struct gbuf *o) {
    double lo = 0, hi = 0;
    int hlo = 0, hhi = 0;
    bound(S, node, "minimum", 1, &lo, &hlo);
    bound(S, node, "exclusiveMinimum", 1, &lo, &hlo);
    bound(S, node, "maximum", 0, &hi, &hhi);
    bound(S, node, "exclusiveMaximum", 0, &hi, &hhi);
    if (S->rc) return S->rc;
    if (!hlo && !hhi) {
        gbuf_puts(o, "json-int");
        return 0;
    }
    if (hlo && hhi && lo > hi) return sfail(S, SS_EINVAL, "no integer satisfies the bounds", NULL);
    gbuf_puts(o, "(");
    int any = 0;
    if (!hlo || lo < 0) { /* negatives: "-" then [max(1, -hi), -lo] */
        long long a = hhi && hi < 0 ? (long long)-hi : 1, b = hlo ? (long long)-lo : -1;
        gbuf_puts(o, "\"-\" ");
        uint_range(o, a, b);
        any = 1;
    }
    if (!hhi || hi >= 0) {
        if (any) gbuf_puts(o, " | ");
        uint_range(o, hlo && lo > 0 ? (long long)lo : 0, hhi ? (long long)hi : -1);
    }
    gbuf_puts(o, ")");
    return 0;
}

/* ---- strings, arrays, objects ---- */

static int string_expr(struct sc *S, const cJSON *node, struct gbuf *o) {
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(node, "pattern");
    long mn, mx;
    if (get_count(S, node, "minLength", 0, &mn) || get_count(S, node, "maxLength", -1, &mx)) return S->rc;
    if (pat) {
        if (!cJSON_IsString(pat)) return sfail(S, SS_EINVAL, "'pattern' must be a string", NULL);
        if (mn > 0 || mx >= 0) return sfail(S, SS_EUNSUPPORTED, "'pattern' together with minLength/maxLength is not supported", NULL);
        gbuf_puts(o, "\"\\\"\" ");
        char err[150];
        if (gram_regex_expr(o, pat->valuestring, strlen(pat->valuestring), 1, err, sizeof(err)) != 0)
            return sfail(S, SS_EINVAL, "pattern: %s", err);
        gbuf_puts(o, " \"\\\"\"");
        return 0;
    }
    if (mx >= 0 && mn > mx) return sfail(S, SS_EINVAL, "minLength > maxLength", NULL);
    if (mn == 0 && mx < 0) gbuf_puts(o, "json-string");
    else if (mx < 0) gbuf_printf(o, "\"\\\"\" json-char{%ld,} \"\\\"\"", mn);
    else gbuf_printf(o, "\"\\\"\" json-char{%ld,%ld} \"\\\"\"", mn, mx);
    return 0;
}

static int array_expr(struct sc *S, const cJSON *node, struct gbuf *o) {
    long mn, mx;
    if (get_count(S, node, "minItems", 0, &mn) || get_count(S, node, "maxItems", -1, &mx)) return S->rc;
    if (mx >= 0 && mn > mx) return sfail(S, SS_EINVAL, "minItems > maxItems", NULL);
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(node, "items");
    char item[32] = "json-value";
    if (items) {
        int r = schema_rule(S, items, "items");
        if (r < 0) return S->rc;
        snprintf(item, sizeof(item), "s%d", r);
    }
    if (mx == 0) {
        gbuf_puts(o, "\"[\" ws \"]\"");
        return 0;
    }
    gbuf_printf(o, "\"[\" ws %s%s ws", mn == 0 ? "(" : "", item);
    long rmin = mn > 0 ? mn - 1 : 0;
    if (mx < 0) gbuf_printf(o, " (\",\" ws %s ws){%ld,}", item, rmin);
    else if (mx > 1) gbuf_printf(o, " (\",\" ws %s ws){%ld,%ld}", item, rmin, mx - 1);
    gbuf_printf(o, "%s \"]\"", mn == 0 ? ")?" : "");
    return 0;
}

static int in_required(const cJSON *req, const char *name) {
    for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
        if (cJSON_IsString(r) && strcmp(r->valuestring, name) == 0) return 1;
    return 0;
}

/* Properties in order, optional ones skippable, commas between the present
 * ones. With kv_i the i-th member and k members:
 *   F_i ::= kv_i T_{i+1}         | F_{i+1}   (second branch only if i is optional)
 *   T_i ::= "," ws kv_i T_{i+1}  | T_{i+1}   (ditto)          F_k ::= ""  T_k ::= ""
 * and the object is "{" ws F_0 "}". Extra keys are never generated, which
 * is valid whatever additionalProperties says. */
static int object_props(struct sc *S, const cJSON *node, const cJSON *props, struct gbuf *o) {
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(node, "required");
    if (req && !cJSON_IsArray(req)) return sfail(S, SS_EINVAL, "'required' must be an array", NULL);
    for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
        if (!cJSON_IsString(r) || !cJSON_GetObjectItemCaseSensitive(props, r->valuestring))
            return sfail(S, SS_EINVAL, "'required' names '%s', which is not in properties",
                         cJSON_IsString(r) ? r->valuestring : "?");
    int k = cJSON_GetArraySize(props), base = S->n_rules;
    S->n_rules += 2 * k + 2; /* F_i = base + 2i, T_i = base + 2i + 1 */
    int i = 0;
    size_t old = path_push(S, "properties");
    for (const cJSON *p = props->child; p && !S->rc; p = p->next, i++) {
        int vr = schema_rule(S, p, p->string);
        if (vr < 0) break;
        int opt = !in_required(req, p->string);
        struct gbuf kv = {0};
        cJSON *key = cJSON_CreateString(p->string);
        if (!key) return sfail(S, SS_ENOMEM, "out of memory", NULL);
        json_literal(S, &kv, key);
        cJSON_Delete(key);
        gbuf_printf(&kv, " ws \":\" ws s%d ws", vr);
        int F = base + 2 * i, T = F + 1;
        gbuf_printf(&S->rules, "s%d ::= %s s%d", F, kv.s ? kv.s : "", T + 2);
        if (opt) gbuf_printf(&S->rules, " | s%d", F + 2);
        gbuf_printf(&S->rules, "\ns%d ::= \",\" ws %s s%d", T, kv.s ? kv.s : "", T + 2);
        if (opt) gbuf_printf(&S->rules, " | s%d", T + 2);
        gbuf_puts(&S->rules, "\n");
        free(kv.s);
    }
    gbuf_printf(&S->rules, "s%d ::= \"\"\ns%d ::= \"\"\n", base + 2 * k, base + 2 * k + 1);
    path_pop(S, old);
    if (!S->rc) gbuf_printf(o, "\"{\" ws s%d \"}\"", base);
    return S->rc;
}

static int object_expr(struct sc *S, const cJSON *node, struct gbuf *o) {
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(node, "properties");
    if (props && !cJSON_IsObject(props)) return sfail(S, SS_EINVAL, "'properties' must be an object", NULL);
    if (props && props->child) return object_props(S, node, props, o);
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(node, "additionalProperties");
    if (cJSON_IsFalse(addl)) {
        gbuf_puts(o, "\"{\" ws \"}\"");
        return 0;
    }
    if (!addl || cJSON_IsTrue(addl)) {
        gbuf_puts(o, "json-object");
        return 0;
    }
    int vr = schema_rule(S, addl, "additionalProperties");
    if (vr < 0) return S->rc;
    gbuf_printf(o, "\"{\" ws (json-string ws \":\" ws s%d ws (\",\" ws json-string ws \":\" ws s%d ws)*)? \"}\"",
                vr, vr);
    return 0;
}

/* ---- dispatch ---- */

static int type_expr(struct sc *S, const cJSON *node, const char *type, struct gbuf *o) {
    if (strcmp(type, "string") == 0) return string_expr(S, node, o);
    if (strcmp(type, "integer") == 0) return integer_expr(S, node, o);
    if (strcmp(type, "number") == 0) {
        const cJSON *mn = cJSON_GetObjectItemCaseSensitive(node, "minimum");
        if (cJSON_GetObjectItemCaseSensitive(node, "maximum") ||
            cJSON_GetObjectItemCaseSensitive(node, "exclusiveMinimum") ||
            cJSON_GetObjectItemCaseSensitive(node, "exclusiveMaximum") ||
            (mn && !(cJSON_IsNumber(mn) && mn->valuedouble == 0)))
            return sfail(S, SS_EUNSUPPORTED, "bounds on a number are not supported (only minimum 0; use integer bounds)", NULL);
        gbuf_puts(o, mn ? "json-uint json-frac" : "json-number");
        return 0;
    }
    if (strcmp(type, "boolean") == 0) return gbuf_puts(o, "json-bool"), 0;
    if (strcmp(type, "null") == 0) return gbuf_puts(o, "json-null"), 0;
    if (strcmp(type, "object") == 0) return object_expr(S, node, o);
    if (strcmp(type, "array") == 0) return array_expr(S, node, o);
    return sfail(S, SS_EINVAL, "unknown type '%s'", type);
}

/* Resolves a local reference "#/a/b" (JSON pointer, ~0 ~1 escapes). */
static const cJSON *resolve_ref(struct sc *S, const char *ref) {
    if (ref[0] != '#') {
        sfail(S, SS_EUNSUPPORTED, "only local references (\"#/...\") are supported, not '%s'", ref);
        return NULL;
    }
    const cJSON *cur = S->root;
    const char *p = ref + 1;
    while (*p == '/' && cur) {
        p++;
        char seg[128];
        size_t n = 0;
        while (*p && *p != '/' && n + 1 < sizeof(seg)) {
            if (p[0] == '~' && (p[1] == '0' || p[1] == '1')) {
                seg[n++] = p[1] == '0' ? '~' : '/';
                p += 2;
            } else {
                seg[n++] = *p++;
            }
        }
        seg[n] = 0;
        cur = cJSON_IsArray(cur) ? cJSON_GetArrayItem(cur, atoi(seg)) : cJSON_GetObjectItemCaseSensitive(cur, seg);
    }
    if (!cur || *p) sfail(S, SS_EINVAL, "unresolvable $ref '%s'", ref);
    return S->rc ? NULL : cur;
}

static int alternatives(struct sc *S, const cJSON *list, const char *key, struct gbuf *o) {
    if (!cJSON_IsArray(list) || !list->child) return sfail(S, SS_EINVAL, "'%s' must be a non-empty array", key);
    size_t old = path_push(S, key);
    gbuf_puts(o, "(");
    int i = 0;
    for (const cJSON *x = list->child; x && !S->rc; x = x->next, i++) {
        char seg[16];
        snprintf(seg, sizeof(seg), "%d", i);
        int r = schema_rule(S, x, seg);
        if (r >= 0) gbuf_printf(o, "%ss%d", i ? " | " : "", r);
    }
    gbuf_puts(o, ")");
    path_pop(S, old);
    return S->rc;
}

static int schema_expr(struct sc *S, const cJSON *node, struct gbuf *o) {
    if (cJSON_IsTrue(node)) return gbuf_puts(o, "json-value"), 0;
    if (!cJSON_IsObject(node)) return sfail(S, SS_EINVAL, "a schema must be an object or true", NULL);
    if (check_keywords(S, node)) return S->rc;
    const cJSON *v;
    if ((v = cJSON_GetObjectItemCaseSensitive(node, "$ref"))) {
        if (!cJSON_IsString(v)) return sfail(S, SS_EINVAL, "'$ref' must be a string", NULL);
        const cJSON *target = resolve_ref(S, v->valuestring);
        if (!target) return S->rc;
        int r = schema_rule(S, target, "$ref");
        if (r >= 0) gbuf_printf(o, "s%d", r);
        return S->rc;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(node, "const"))) return json_literal(S, o, v), S->rc;
    if ((v = cJSON_GetObjectItemCaseSensitive(node, "enum"))) {
        if (!cJSON_IsArray(v) || !v->child) return sfail(S, SS_EINVAL, "'enum' must be a non-empty array", NULL);
        gbuf_puts(o, "(");
        for (const cJSON *x = v->child; x; x = x->next) {
            if (x != v->child) gbuf_puts(o, " | ");
            json_literal(S, o, x);
        }
        gbuf_puts(o, ")");
        return S->rc;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(node, "anyOf"))) return alternatives(S, v, "anyOf", o);
    if ((v = cJSON_GetObjectItemCaseSensitive(node, "oneOf"))) return alternatives(S, v, "oneOf", o);
    if ((v = cJSON_GetObjectItemCaseSensitive(node, "allOf"))) {
        if (cJSON_GetArraySize(v) != 1) return sfail(S, SS_EUNSUPPORTED, "'allOf' with more than one schema is not supported", NULL);
        return alternatives(S, v, "allOf", o);
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (cJSON_IsString(type)) return type_expr(S, node, type->valuestring, o);
    if (cJSON_IsArray(type) && type->child) {
        gbuf_puts(o, "(");
        for (const cJSON *t = type->child; t && !S->rc; t = t->next) {
            if (!cJSON_IsString(t)) return sfail(S, SS_EINVAL, "'type' entries must be strings", NULL);
            if (t != type->child) gbuf_puts(o, " | ");
            type_expr(S, node, t->valuestring, o);
        }
        gbuf_puts(o, ")");
        return S->rc;
    }
    if (type) return sfail(S, SS_EINVAL, "'type' must be a string or a non-empty array", NULL);
    if (cJSON_GetObjectItemCaseSensitive(node, "properties") || cJSON_GetObjectItemCaseSensitive(node, "additionalProperties"))
        return object_expr(S, node, o);
    if (cJSON_GetObjectItemCaseSensitive(node, "items")) return array_expr(S, node, o);
    gbuf_puts(o, "json-value");
    return 0;
}

/* Rule for a subschema (seg: its path segment); returns its number or -1.
 * $ref targets are memoised by node, so recursion ends. */
static int schema_rule(struct sc *S, const cJSON *node, const char *seg) {
    if (S->rc) return -1;
    int memo = strcmp(seg, "$ref") == 0 || node == S->root;
    for (int i = 0; memo && i < S->n_refs; i++)
        if (S->refs[i].node == node) return S->refs[i].rule;
    if (S->depth >= GRAM_MAX_NEST) {
        sfail(S, SS_ETOOLONG, "schema nested deeper than 64", NULL);
        return -1;
    }
    if (S->n_rules >= GRAM_MAX_RULES / 2) {
        sfail(S, SS_ETOOLONG, "schema too large", NULL);
        return -1;
    }
    int id = S->n_rules++;
    if (memo) {
        if (S->n_refs >= MAX_REFS) {
            sfail(S, SS_ETOOLONG, "too many $ref targets", NULL);
            return -1;
        }
        S->refs[S->n_refs++] = (struct sref){node, id};
    }
    size_t old = memo ? S->path_len : path_push(S, seg);
    S->depth++;
    struct gbuf body = {0};
    schema_expr(S, node, &body);
    S->depth--;
    if (!memo) path_pop(S, old);
    if (body.oom) sfail(S, SS_ENOMEM, "out of memory", NULL);
    if (!S->rc) gbuf_printf(&S->rules, "s%d ::= %s\n", id, body.s);
    free(body.s);
    return S->rc ? -1 : id;
}

/* Parses schema (NULL/empty: none) into *root; 0 or a negative code with err set. */
static int schema_parse(const char *schema, size_t len, cJSON **root, char *err, size_t err_len) {
    *root = NULL;
    if (err && err_len) err[0] = 0;
    if (!schema || len == 0) return 0;
    if (len > GRAM_MAX_TEXT) {
        gram_errf(err, err_len, "schema: longer than %u bytes", GRAM_MAX_TEXT);
        return SS_EINVAL;
    }
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(schema, len, &end, 0);
    if (!*root) {
        gram_errf(err, err_len, "schema: invalid JSON at offset %ld", end ? (long)(end - schema) : 0L);
        return SS_EINVAL;
    }
    return 0;
}

/* Appends root's rules, numbered from *next (advanced), the schema's own
 * rule being s<first>; "any" schemas become json-object / json-value. */
static int schema_append(const cJSON *root, int object_only, int *next, struct gbuf *out, char *err,
                         size_t err_len) {
    struct sc S = {.root = root, .err = err, .err_len = err_len, .n_rules = *next};
    int first = *next;
    int any = !root || cJSON_IsTrue(root) || (cJSON_IsObject(root) && !root->child);
    if (any) {
        gbuf_printf(out, "s%d ::= %s\n", first, object_only ? "json-object" : "json-value");
        S.n_rules = first + 1;
    } else {
        schema_rule(&S, root, "");
        gbuf_put(out, S.rules.s ? S.rules.s : "", S.rules.n);
    }
    free(S.rules.s);
    if (S.rc || out->oom || S.rules.oom) {
        if (!S.rc) gram_errf(err, err_len, "schema: out of memory");
        return S.rc ? S.rc : SS_ENOMEM;
    }
    *next = S.n_rules;
    return 0;
}

/* The GBNF text, or NULL with *rc and err set. */
static char *schema_gbnf(const char *schema, size_t len, int object_only, char *err, size_t err_len, int *rc) {
    cJSON *root = NULL;
    *rc = schema_parse(schema, len, &root, err, err_len);
    if (*rc) return NULL;
    struct gbuf out = {0};
    gbuf_puts(&out, COMMON);
    gbuf_puts(&out, "root ::= s0\n");
    int next = 0;
    *rc = schema_append(root, object_only, &next, &out, err, err_len);
    cJSON_Delete(root);
    if (*rc) {
        free(out.s);
        return NULL;
    }
    return out.s;
}

const char *gram_json_rules(void) {
    return COMMON;
}

int gram_schema_rules(const char *schema, size_t len, int object_only, int *next, char **out, char *err,
                      size_t err_len) {
    *out = NULL;
    cJSON *root = NULL;
    int rc = schema_parse(schema, len, &root, err, err_len);
    if (rc) return rc;
    struct gbuf b = {0};
    rc = schema_append(root, object_only, next, &b, err, err_len);
    cJSON_Delete(root);
    if (rc) {
        free(b.s);
        return rc;
    }
    *out = b.s ? b.s : calloc(1, 1);
    return *out ? 0 : SS_ENOMEM;
}

char *gram_schema_to_gbnf(const char *schema, size_t len, int object_only, char *err, size_t err_len) {
    int rc;
    return schema_gbnf(schema, len, object_only, err, err_len, &rc);
}

int gram_compile_schema(struct gram **out, const char *schema, size_t len, int object_only, char *err,
                        size_t err_len) {
    *out = NULL;
    int rc;
    char *text = schema_gbnf(schema, len, object_only, err, err_len, &rc);
    if (!text) return rc;
    rc = gram_compile_gbnf(out, text, strlen(text), err, err_len);
    free(text);
    return rc;
}
