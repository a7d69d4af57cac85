/* structured.c - request fields that constrain the output, turned into the
 * grammar compiler's input (engine/grammar.h); the compiled grammar goes into
 * req_params.grammar.
 *
 * Accepted spellings (at most one constraint per request):
 *   OpenAI     response_format {"type": "text" | "json_object" |
 *              "json_schema", "json_schema": {"name", "schema", "strict"}}
 *              (llama.cpp's {"type": "json_object", "schema": {...}} too)
 *   vLLM       structured_outputs {"json" | "regex" | "choice" | "grammar" |
 *              "json_object"}, and the older guided_json / guided_regex /
 *              guided_choice / guided_grammar top-level fields
 *   llama.cpp  json_schema {...}, grammar "..." (top level)
 * An invalid schema, regex or grammar is a 400 whose message carries the
 * compiler's position ("line L col C", "at offset N", a JSON pointer).
 *
 * NOTE: compiling runs on the loop thread while the request is parsed, like
 * tokenisation; the compiler's limits (grammar.h) bound its time and memory.
 */
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "engine/grammar.h"
#include "kernels/ss_error.h"

/* One constraint found in the request. */
struct constraint {
    const char *param;       /* field name for errors, e.g. "response_format.json_schema.schema" */
    enum { C_SCHEMA, C_JSON_OBJECT, C_REGEX, C_CHOICE, C_GRAMMAR } kind;
    const cJSON *value;      /* schema object/string, regex/grammar string, choice array */
};

static int type_error(struct api_error *err, const char *param, const char *want) {
    api_error_set(err, SS_EINVAL, param, "invalid_type", "'%s' must be %s", param, want);
    return SS_EINVAL;
}

static int add(struct constraint *c, int *n, const char *param, int kind, const cJSON *value,
               struct api_error *err) {
    if (*n > 0) {
        api_error_set(err, SS_EINVAL, param, "invalid_value",
                      "only one output constraint may be given, but both '%s' and '%s' are set",
                      c->param, param);
        return SS_EINVAL;
    }
    c->param = param;
    c->kind = kind;
    c->value = value;
    (*n)++;
    return 0;
}

static int from_response_format(const cJSON *rf, struct constraint *c, int *n, struct api_error *err) {
    if (!cJSON_IsObject(rf)) return type_error(err, "response_format", "an object");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rf, "type");
    if (!cJSON_IsString(t)) return type_error(err, "response_format.type", "a string");
    if (strcmp(t->valuestring, "text") == 0) return 0;
    if (strcmp(t->valuestring, "json_object") == 0) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(rf, "schema"); /* llama.cpp's extension */
        return s && !cJSON_IsNull(s) ? add(c, n, "response_format.schema", C_SCHEMA, s, err)
                                     : add(c, n, "response_format", C_JSON_OBJECT, NULL, err);
    }
    if (strcmp(t->valuestring, "json_schema") == 0) {
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
        if (!cJSON_IsObject(js)) return type_error(err, "response_format.json_schema", "an object");
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(js, "schema");
        if (!s || cJSON_IsNull(s)) return add(c, n, "response_format.json_schema", C_JSON_OBJECT, NULL, err);
        return add(c, n, "response_format.json_schema.schema", C_SCHEMA, s, err);
    }
    api_error_set(err, SS_EINVAL, "response_format.type", "invalid_value",
                  "'response_format.type' must be 'text', 'json_object' or 'json_schema', got '%s'",
                  t->valuestring);
    return SS_EINVAL;
}

struct spelling {
    const char *obj;   /* enclosing object, NULL for top level */
    const char *name;
    const char *param; /* as reported */
    int kind;
};

static const struct spelling SPELLINGS[] = {
    {"structured_outputs", "json", "structured_outputs.json", C_SCHEMA},
    {"structured_outputs", "regex", "structured_outputs.regex", C_REGEX},
    {"structured_outputs", "choice", "structured_outputs.choice", C_CHOICE},
    {"structured_outputs", "grammar", "structured_outputs.grammar", C_GRAMMAR},
    {NULL, "guided_json", "guided_json", C_SCHEMA},
    {NULL, "guided_regex", "guided_regex", C_REGEX},
    {NULL, "guided_choice", "guided_choice", C_CHOICE},
    {NULL, "guided_grammar", "guided_grammar", C_GRAMMAR},
    {NULL, "json_schema", "json_schema", C_SCHEMA},
    {NULL, "grammar", "grammar", C_GRAMMAR},
};

static int collect(const cJSON *root, struct constraint *c, int *n, struct api_error *err) {
    const cJSON *rf = api_field(root, "response_format");
    int rc;
    if (rf && (rc = from_response_format(rf, c, n, err)) < 0) return rc;
    const cJSON *so = api_field(root, "structured_outputs");
    if (so && !cJSON_IsObject(so)) return type_error(err, "structured_outputs", "an object");
    if (so) {
        int jo = 0;
        if ((rc = api_get_bool(so, "json_object", &jo, err)) < 0) return rc;
        if (jo && (rc = add(c, n, "structured_outputs.json_object", C_JSON_OBJECT, NULL, err)) < 0) return rc;
    }
    for (size_t i = 0; i < sizeof SPELLINGS / sizeof SPELLINGS[0]; i++) {
        const struct spelling *sp = &SPELLINGS[i];
        const cJSON *holder = sp->obj ? so : root;
        const cJSON *v = holder ? api_field(holder, sp->name) : NULL;
        if (v && (rc = add(c, n, sp->param, sp->kind, v, err)) < 0) return rc;
    }
    return 0;
}

#define MAX_CHOICES 1024

static int compile_choice(const struct constraint *c, struct gram **g, char *msg, size_t cap,
                          struct api_error *err) {
    int k = cJSON_GetArraySize(c->value);
    if (!cJSON_IsArray(c->value) || k < 1 || k > MAX_CHOICES)
        return type_error(err, c->param, "a non-empty array of at most 1024 strings");
    const char **list = malloc(sizeof(char *) * (size_t)k);
    if (!list) return SS_ENOMEM;
    int i = 0;
    for (const cJSON *x = c->value->child; x; x = x->next) {
        if (!cJSON_IsString(x)) {
            free(list);
            return type_error(err, c->param, "an array of strings");
        }
        list[i++] = x->valuestring;
    }
    int rc = gram_compile_choice(g, list, k, msg, cap);
    free(list);
    return rc;
}

static int compile(const struct constraint *c, struct gram **g, struct api_error *err) {
    char msg[256] = "";
    int rc;
    const cJSON *v = c->value;
    switch (c->kind) {
    case C_JSON_OBJECT:
        rc = gram_compile_schema(g, NULL, 0, 1, msg, sizeof msg);
        break;
    case C_SCHEMA:
        if (cJSON_IsString(v)) { /* a schema given as JSON text */
            rc = gram_compile_schema(g, v->valuestring, strlen(v->valuestring), 0, msg, sizeof msg);
        } else if (cJSON_IsObject(v) || cJSON_IsBool(v)) {
            char *text = cJSON_PrintUnformatted(v);
            if (!text) return SS_ENOMEM;
            rc = gram_compile_schema(g, text, strlen(text), 0, msg, sizeof msg);
            free(text);
        } else {
            return type_error(err, c->param, "a JSON Schema object");
        }
        break;
    case C_REGEX:
    case C_GRAMMAR:
        if (!cJSON_IsString(v)) return type_error(err, c->param, "a string");
        rc = c->kind == C_REGEX ? gram_compile_regex(g, v->valuestring, strlen(v->valuestring), msg, sizeof msg)
                                : gram_compile_gbnf(g, v->valuestring, strlen(v->valuestring), msg, sizeof msg);
        break;
    default:
        rc = compile_choice(c, g, msg, sizeof msg, err);
        if (rc < 0 && !msg[0]) return rc; /* type error already set */
        break;
    }
    if (rc == SS_ENOMEM) return rc;
    if (rc < 0)
        api_error_set(err, rc == SS_EUNSUPPORTED ? SS_EINVAL : rc == SS_ETOOLONG ? SS_EINVAL : rc, c->param,
                      rc == SS_EUNSUPPORTED ? "unsupported" : "invalid_value", "invalid '%s': %s", c->param, msg);
    return rc;
}

int api_parse_structured(const cJSON *root, struct req_params *p, struct api_error *err) {
    struct constraint c = {0};
    int n = 0;
    int rc = collect(root, &c, &n, err);
    if (rc < 0 || n == 0) return rc;
    struct gram *g = NULL;
    rc = compile(&c, &g, err);
    if (rc == SS_ENOMEM) api_error_set(err, SS_ENOMEM, c.param, "server_error", "out of memory");
    if (rc < 0) return rc;
    gram_unref(p->grammar);
    p->grammar = g;
    return 0;
}
