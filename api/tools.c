/* tools.c - the tool-calling fields of a chat request: tools, tool_choice,
 * parallel_tool_calls (functions / function_call are refused), and the
 * grammar that forces a call for tool_choice "required" or a named function.
 *
 * Pure functions; any thread.
 *
 *   tools        [{"type": "function", "function": {"name": N, "description": D,
 *                  "parameters": JSON Schema of an object, "strict": bool}}], 1..128,
 *                names [A-Za-z0-9_-]{1,64} and distinct
 *   tool_choice  "auto" (default) | "none" | "required" |
 *                {"type": "function", "function": {"name": N}}
 *
 * The forcing grammar writes exactly the family's call syntax (tool_parse.c
 * reads it back), each function's arguments constrained by its parameters
 * schema through the JSON Schema compiler (engine/grammar.h):
 *   chatml, gemma  "<tool_call>\n{\"name\": \"N\", \"arguments\": " ARGS "}\n</tool_call>"
 *   llama3         "{\"name\": \"N\", \"parameters\": " ARGS "}"
 *   mistral        "[" CALL (", " CALL)* "]" with CALL = {"name": "N", "arguments": ARGS}
 * calls separated by "\n" (chatml, gemma, llama3) when parallel_tool_calls
 * allows more than one (at most API_MAX_PARALLEL). "auto" adds no grammar:
 * the model answers freely and its text is parsed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "engine/grammar.h"
#include "kernels/ss_error.h"

#define API_MAX_PARALLEL 16

void api_tools_free(struct api_tools *t) {
    if (!t)
        return;
    for (int i = 0; i < t->n; i++) {
        free(t->t[i].name);
        free(t->t[i].json);
        free(t->t[i].json4);
    }
    free(t->t);
    free(t);
}

/* ---- JSON in Python json.dumps style (", " and ": ", or indent) ---- */

static void py_number(struct api_buf *b, double d) {
    if (!isfinite(d)) {
        api_buf_puts(b, "null");
        return;
    }
    if (d == floor(d) && fabs(d) < 1e15) {
        api_buf_printf(b, "%lld", (long long)d);
        return;
    }
    char tmp[40];
    for (int prec = 15; prec <= 17; prec++) { /* shortest text that reads back the same */
        snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    api_buf_puts(b, tmp);
}

static void py_newline(struct api_buf *b, int indent, int level) {
    api_buf_puts(b, "\n");
    for (int i = 0; i < indent * level; i++)
        api_buf_puts(b, " ");
}

void api_json_py(struct api_buf *b, const cJSON *v, int indent, int level) {
    if (cJSON_IsString(v)) {
        api_buf_json_str(b, v->valuestring, strlen(v->valuestring));
    } else if (cJSON_IsNumber(v)) {
        py_number(b, v->valuedouble);
    } else if (cJSON_IsBool(v)) {
        api_buf_puts(b, cJSON_IsTrue(v) ? "true" : "false");
    } else if (cJSON_IsArray(v) || cJSON_IsObject(v)) {
        int obj = cJSON_IsObject(v);
        api_buf_puts(b, obj ? "{" : "[");
        for (const cJSON *c = v->child; c; c = c->next) {
            if (indent > 0)
                py_newline(b, indent, level + 1);
            if (obj) {
                api_buf_json_str(b, c->string ? c->string : "", c->string ? strlen(c->string) : 0);
                api_buf_puts(b, ": ");
            }
            api_json_py(b, c, indent, level + 1);
            if (c->next)
                api_buf_puts(b, indent > 0 ? "," : ", ");
        }
        if (indent > 0 && v->child)
            py_newline(b, indent, level);
        api_buf_puts(b, obj ? "}" : "]");
    } else {
        api_buf_puts(b, "null");
    }
}

/* ---- request fields ---- */

static int tool_error(struct api_error *err, const char *param, int i, const char *what) {
    if (i >= 0)
        api_error_set(err, SS_EINVAL, param, "invalid_value", "tools[%d]: %s", i, what);
    else
        api_error_set(err, SS_EINVAL, param, "invalid_value", "%s", what);
    return SS_EINVAL;
}

static int valid_name(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* A parameters schema: checked by the schema compiler (the message names the
 * problem), and required to describe an object. */
static int check_params(const cJSON *params, int i, struct api_error *err) {
    if (!params || cJSON_IsNull(params))
        return 0;
    if (!cJSON_IsObject(params))
        return tool_error(err, "tools", i, "'function.parameters' must be a JSON Schema object");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(params, "type");
    if (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "object") == 0))
        return tool_error(err, "tools", i,
                          "'function.parameters' must describe an object (\"type\": \"object\")");
    char *text = cJSON_PrintUnformatted(params);
    if (!text)
        return SS_ENOMEM;
    char msg[256] = "", *rules = NULL;
    int next = 0;
    int rc = gram_schema_rules(text, strlen(text), 1, &next, &rules, msg, sizeof msg);
    free(text);
    free(rules);
    if (rc == SS_ENOMEM)
        return rc;
    if (rc < 0) {
        api_error_set(err, SS_EINVAL, "tools", rc == SS_EUNSUPPORTED ? "unsupported" : "invalid_value",
                      "tools[%d].function.parameters: %s", i, msg);
        return SS_EINVAL;
    }
    return 0;
}

/* tools[i] -> t (name, prompt JSON). */
static int parse_tool(const cJSON *item, int i, struct api_tool *t, struct api_error *err) {
    if (!cJSON_IsObject(item))
        return tool_error(err, "tools", i, "each tool must be an object");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(item, "type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0)
        return tool_error(err, "tools", i, "'type' must be \"function\"");
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(item, "function");
    if (!cJSON_IsObject(fn))
        return tool_error(err, "tools", i, "'function' must be an object");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
    if (!cJSON_IsString(name) || !valid_name(name->valuestring))
        return tool_error(err, "tools", i,
                          "'function.name' must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -");
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(fn, "description");
    if (desc && !cJSON_IsNull(desc) && !cJSON_IsString(desc))
        return tool_error(err, "tools", i, "'function.description' must be a string");
    const cJSON *strict = cJSON_GetObjectItemCaseSensitive(fn, "strict");
    if (strict && !cJSON_IsNull(strict) && !cJSON_IsBool(strict))
        return tool_error(err, "tools", i, "'function.strict' must be a boolean");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
    int rc = check_params(params, i, err);
    if (rc < 0)
        return rc;
    /* the prompt's copy: {"type": "function", "function": {name, description, parameters}} */
    cJSON *o = cJSON_CreateObject(), *f = cJSON_CreateObject();
    if (!o || !f) {
        cJSON_Delete(o);
        cJSON_Delete(f);
        return SS_ENOMEM;
    }
    cJSON_AddItemToObject(o, "type", cJSON_CreateString("function"));
    cJSON_AddItemToObject(o, "function", f);
    cJSON_AddItemToObject(f, "name", cJSON_CreateString(name->valuestring));
    if (cJSON_IsString(desc))
        cJSON_AddItemToObject(f, "description", cJSON_CreateString(desc->valuestring));
    if (cJSON_IsObject(params))
        cJSON_AddItemToObject(f, "parameters", cJSON_Duplicate(params, 1));
    struct api_buf a, b;
    api_buf_init(&a);
    api_buf_init(&b);
    api_json_py(&a, o, 0, 0);
    api_json_py(&b, o, 4, 0);
    cJSON_Delete(o);
    t->name = strdup(name->valuestring);
    t->json = a.data;
    t->json4 = b.data;
    if (a.oom || b.oom || !t->name || !t->json || !t->json4)
        return SS_ENOMEM;
    return 0;
}

/* tool_choice -> tools->choice / named (tools may be NULL: only auto / none). */
static int parse_choice(const cJSON *root, struct api_tools *tools, struct api_error *err) {
    const cJSON *v = api_field(root, "tool_choice");
    int choice = API_TOOLS_AUTO, named = -1;
    if (!v)
        goto done;
    if (cJSON_IsString(v)) {
        const char *s = v->valuestring;
        if (!strcmp(s, "auto"))
            choice = API_TOOLS_AUTO;
        else if (!strcmp(s, "none"))
            choice = API_TOOLS_NONE;
        else if (!strcmp(s, "required"))
            choice = API_TOOLS_REQUIRED;
        else
            return tool_error(err, "tool_choice", -1,
                              "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                              "{\"type\": \"function\", \"function\": {\"name\": ...}}");
        goto done;
    }
    const cJSON *type = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "type") : NULL;
    const cJSON *fn = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "function") : NULL;
    const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0 ||
        !cJSON_IsString(name))
        return tool_error(err, "tool_choice", -1,
                          "'tool_choice' as an object must be {\"type\": \"function\", "
                          "\"function\": {\"name\": ...}}");
    choice = API_TOOLS_NAMED;
    for (int i = 0; tools && i < tools->n; i++)
        if (strcmp(tools->t[i].name, name->valuestring) == 0)
            named = i;
    if (named < 0) {
        api_error_set(err, SS_EINVAL, "tool_choice", "invalid_value",
                      "'tool_choice' names the function '%.64s', which is not in 'tools'",
                      name->valuestring);
        return SS_EINVAL;
    }
done:
    if (!tools) {
        if (choice == API_TOOLS_REQUIRED)
            return tool_error(err, "tool_choice", -1,
                              "'tool_choice' \"required\" needs a non-empty 'tools' list");
        return 0;
    }
    tools->choice = choice;
    tools->named = named;
    return 0;
}

static int parse_list(const cJSON *v, struct api_tools *tools, struct api_error *err) {
    int n = cJSON_GetArraySize(v);
    if (n > API_MAX_TOOLS)
        return tool_error(err, "tools", -1, "'tools' may hold at most 128 functions");
    tools->t = calloc((size_t)n, sizeof(*tools->t));
    if (!tools->t)
        return SS_ENOMEM;
    int i = 0, rc;
    for (const cJSON *item = v->child; item; item = item->next, i++) {
        tools->n = i + 1;
        if ((rc = parse_tool(item, i, &tools->t[i], err)) < 0)
            return rc;
        for (int j = 0; j < i; j++)
            if (strcmp(tools->t[j].name, tools->t[i].name) == 0) {
                api_error_set(err, SS_EINVAL, "tools", "invalid_value",
                              "tools[%d]: the function name '%s' is already used by tools[%d]", i,
                              tools->t[i].name, j);
                return SS_EINVAL;
            }
    }
    return 0;
}

/* ---- the forcing grammar ---- */

/* One function's call, rule fN: everything after the opening {"name": " up
 * to the end of the arguments. */
static int grammar_function(struct api_buf *g, const cJSON *params, const char *name, int fam,
                            int idx, int *next, int ti, struct api_error *err) {
    /* no parameters: an empty parameter list (OpenAI's reading), the object {} */
    char *text = cJSON_IsObject(params)
                     ? cJSON_PrintUnformatted(params)
                     : strdup("{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}");
    if (!text)
        return SS_ENOMEM;
    char msg[256] = "", *rules = NULL;
    int first = *next;
    int rc = gram_schema_rules(text, strlen(text), 1, next, &rules, msg, sizeof msg);
    free(text);
    if (rc < 0) {
        free(rules);
        if (rc == SS_ENOMEM)
            return rc;
        api_error_set(err, SS_EINVAL, "tools", "invalid_value", "tools[%d].function.parameters: %s",
                      ti, msg);
        return SS_EINVAL;
    }
    /* names are [A-Za-z0-9_-]: no escaping needed inside a GBNF literal */
    api_buf_printf(g, "f%d ::= \"%s\\\", \\\"%s\\\": \" s%d\n", idx, name,
                   fam == API_TMPL_LLAMA3 ? "parameters" : "arguments", first);
    api_buf_puts(g, rules);
    free(rules);
    return 0;
}

/* The GBNF text forcing a call in the family's syntax (tools in the request
 * order; cj: the request's tools array, for the parameter schemas). */
static int build_grammar(const struct api_tools *t, const cJSON *cj, struct api_buf *g,
                         struct api_error *err) {
    api_buf_puts(g, gram_json_rules());
    int fam = t->family, next = 0, k = 0, rc = 0;
    const char *open = "", *close = "", *sep = "\\n", *pre = "", *post = "";
    if (fam == API_TMPL_CHATML || fam == API_TMPL_GEMMA) {
        open = "<tool_call>\\n";
        close = "\\n</tool_call>";
    } else if (fam == API_TMPL_MISTRAL) {
        pre = "\"[\" ";
        post = " \"]\"";
        sep = ", ";
    }
    api_buf_printf(g, "call ::= \"%s{\\\"name\\\": \\\"\" (", open);
    int i = 0;
    for (const cJSON *item = cj->child; item; item = item->next, i++) {
        if (t->choice == API_TOOLS_NAMED && i != t->named)
            continue;
        api_buf_printf(g, "%sf%d", k++ ? " | " : "", i);
    }
    api_buf_printf(g, ") \"}%s\"\n", close);
    if (t->parallel && t->choice != API_TOOLS_NAMED)
        api_buf_printf(g, "root ::= %scall (\"%s\" call){0,%d}%s\n", pre, sep,
                       API_MAX_PARALLEL - 1, post);
    else
        api_buf_printf(g, "root ::= %scall%s\n", pre, post);
    i = 0;
    for (const cJSON *item = cj->child; item && rc == 0; item = item->next, i++) {
        if (t->choice == API_TOOLS_NAMED && i != t->named)
            continue;
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(item, "function");
        rc = grammar_function(g, cJSON_GetObjectItemCaseSensitive(fn, "parameters"),
                              t->t[i].name, fam, i, &next, i, err);
    }
    if (rc == 0 && g->oom)
        rc = SS_ENOMEM;
    return rc;
}

static int force_call(const struct api_tools *t, const cJSON *cj, struct req_params *p,
                      struct api_error *err) {
    if (p->grammar) {
        api_error_set(err, SS_EINVAL, "tool_choice", "invalid_value",
                      "tool_choice \"required\" or a named function cannot be combined with "
                      "another output constraint (response_format, structured_outputs, ...)");
        return SS_EINVAL;
    }
    struct api_buf g;
    api_buf_init(&g);
    int rc = build_grammar(t, cj, &g, err);
    if (rc == 0) {
        char msg[256] = "";
        struct gram *gr = NULL;
        rc = gram_compile_gbnf(&gr, g.data, g.len, msg, sizeof msg);
        if (rc == 0)
            p->grammar = gr;
        else if (rc != SS_ENOMEM)
            api_error_set(err, SS_EINVAL, "tools", "invalid_value",
                          "the tool-call grammar could not be built: %s", msg);
    }
    api_buf_free(&g);
    return rc;
}

int api_parse_tools(const struct api_model_info *mi, const cJSON *root, struct api_completion *c,
                    struct api_error *err) {
    static const char *const legacy[] = {"functions", "function_call"};
    for (int i = 0; i < 2; i++) {
        const cJSON *l = api_field(root, legacy[i]);
        if (l && !(cJSON_IsArray(l) && !l->child)) {
            api_error_set(err, SS_EUNSUPPORTED, legacy[i], "unsupported",
                          "'%s' (the legacy function-calling API) is not supported: use 'tools' "
                          "and 'tool_choice'",
                          legacy[i]);
            return SS_EUNSUPPORTED;
        }
    }
    int par = 1, rc;
    if ((rc = api_get_bool(root, "parallel_tool_calls", &par, err)) < 0)
        return rc;
    const cJSON *v = api_field(root, "tools");
    if (v && !cJSON_IsArray(v))
        return tool_error(err, "tools", -1, "'tools' must be an array of tool objects");
    if (!v || !v->child)
        return parse_choice(root, NULL, err);
    struct api_tools *t = calloc(1, sizeof(*t));
    if (!t)
        rc = SS_ENOMEM;
    else {
        t->parallel = par;
        t->family = mi->chat_family;
        rc = parse_list(v, t, err);
    }
    if (rc == 0)
        rc = parse_choice(root, t, err);
    if (rc == 0 && mi->chat_family == API_TMPL_LLAMA2) {
        api_error_set(err, SS_EUNSUPPORTED, "tools", "unsupported",
                      "tool calling is not supported with the llama2 chat template (supported: "
                      "chatml, llama3, mistral, gemma)");
        rc = SS_EUNSUPPORTED;
    }
    if (rc == 0 && (t->choice == API_TOOLS_REQUIRED || t->choice == API_TOOLS_NAMED))
        rc = force_call(t, v, &c->p, err);
    if (rc == SS_ENOMEM)
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
    if (rc < 0) {
        api_tools_free(t);
        return rc;
    }
    if (t->choice == API_TOOLS_NONE) { /* no tools in the prompt, no parsing */
        api_tools_free(t);
        t = NULL;
    }
    c->tools = t;
    return 0;
}
