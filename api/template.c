/* template.c - chat templates: recognise a family from the GGUF template text
 * and render a conversation in C, the way each family's reference Jinja
 * template does with add_generation_prompt = true.
 *
 * Pure functions; any thread. BOS/EOS are passed in as token texts; BOS is
 * "" when the caller decided the template does not emit it. "trim" below
 * means ASCII whitespace removed at both ends (Jinja's trim / Python strip).
 *
 *   chatml   [BOS] then per message  "<|im_start|>" ROLE "\n" CONTENT "<|im_end|>\n"
 *            then "<|im_start|>assistant\n"          (content as is; any role order)
 *   llama3   BOS then per message    "<|start_header_id|>" ROLE "<|end_header_id|>\n\n"
 *                                    trim(CONTENT) "<|eot_id|>"
 *            then "<|start_header_id|>assistant<|end_header_id|>\n\n"
 *   llama2   optional first system message S; the rest alternate user/assistant:
 *            user       BOS "[INST] " trim(C) " [/INST]", the first one with
 *                       C = "<<SYS>>\n" S "\n<</SYS>>\n\n" C when S exists
 *            assistant  " " trim(C) " " EOS
 *            (no generation prefix: the model continues after "[/INST]")
 *   mistral  BOS, then alternating user/assistant:
 *            user       "[INST] " C " [/INST]"     assistant  C EOS
 *            A first system message S is folded into the first user turn as
 *            S "\n\n" C (the v0.1/v0.2 templates reject system messages).
 *   gemma    BOS, optional first system message S, the rest alternating:
 *            "<start_of_turn>" ("user" | "model") "\n" [S "\n\n" on the first turn]
 *            trim(C) "<end_of_turn>\n", then "<start_of_turn>model\n"
 *
 * Families that alternate reject (SS_EINVAL, as their templates raise) a
 * conversation whose non-system turns do not go user, assistant, user, ...
 * or that has a system message anywhere but first.
 *
 * Tools (api_tmpl_render_tools; TOOLS = each tool as {"type": "function",
 * "function": {...}} in json.dumps style, ARGS likewise):
 *   chatml   (Qwen2.5 / Hermes) the first system message (or a new one) ends with
 *            "# Tools ... <tools>
" TOOLS one per line "
</tools> ... format";
 *            assistant calls "
<tool_call>
{"name": N, "arguments": ARGS}
</tool_call>"
 *            after the content; a run of tool messages is one user turn of
 *            "
<tool_response>
" C "
</tool_response>" blocks
 *   llama3   (Llama 3.1) system turn "Environment: ipython
", knowledge and
 *            date lines, then the system text; the first user turn starts with
 *            the instructions and TOOLS with indent=4; calls are
 *            {"name": N, "parameters": ARGS} (several: one per line); results
 *            are "ipython" turns with the content as is
 *   mistral  (v0.3) "[AVAILABLE_TOOLS] [" TOOLS ", "-joined "][/AVAILABLE_TOOLS]"
 *            before the last user turn; calls "[TOOL_CALLS] [{"name": N,
 *            "arguments": ARGS, "id": ID}, ...]" EOS; results
 *            "[TOOL_RESULTS] {"content": C, "call_id": ID}[/TOOL_RESULTS]"
 *   gemma    (ours: Gemma 3 has no convention) the first user turn gets, after
 *            the system text, GEMMA_TOOLS_HEAD TOOLS one per line and
 *            GEMMA_TOOLS_TAIL; calls and results as chatml's blocks, in the
 *            model turn and in a user turn
 *   llama2   none: tools or tool history are SS_EINVAL.
 */
#include <stdio.h>
#include <string.h>

#include "api/api.h"
#include "engine/tokenizer.h"
#include "kernels/ss_error.h"

static const char *const family_names[] = {"none", "chatml", "llama3", "llama2", "mistral",
                                           "gemma"};

const char *api_tmpl_name(int family) {
    if (family < 0 || family > API_TMPL_GEMMA)
        return "none";
    return family_names[family];
}

int api_tmpl_by_name(const char *name) {
    if (!name)
        return -1;
    for (int f = API_TMPL_CHATML; f <= API_TMPL_GEMMA; f++)
        if (strcmp(name, family_names[f]) == 0)
            return f;
    return -1;
}

int api_tmpl_default_bos(int family) {
    return family != API_TMPL_CHATML && family != API_TMPL_NONE;
}

static int has(const char *src, size_t len, const char *needle) {
    return memmem(src, len, needle, strlen(needle)) != NULL;
}

int api_tmpl_detect(const char *src, size_t len, int *uses_bos) {
    if (uses_bos)
        *uses_bos = src && has(src, len, "bos_token");
    if (!src || len == 0)
        return API_TMPL_NONE;
    if (has(src, len, "<start_of_turn>"))
        return API_TMPL_GEMMA;
    if (has(src, len, "<|im_start|>"))
        return API_TMPL_CHATML;
    if (has(src, len, "<|start_header_id|>"))
        return API_TMPL_LLAMA3;
    if (has(src, len, "[INST]"))
        return has(src, len, "<<SYS>>") ? API_TMPL_LLAMA2 : API_TMPL_MISTRAL;
    return API_TMPL_NONE;
}

/* ---- rendering helpers ---- */

/* A family whose turn markers are all single tokens of the vocabulary, or
 * API_TMPL_NONE. */
static int family_from_vocab(const struct tok *t) {
    static const struct {
        int fam;
        const char *a, *b;
    } marks[] = {
        {API_TMPL_GEMMA, "<start_of_turn>", "<end_of_turn>"},
        {API_TMPL_CHATML, "<|im_start|>", "<|im_end|>"},
        {API_TMPL_LLAMA3, "<|start_header_id|>", "<|eot_id|>"},
    };
    for (size_t m = 0; t && m < sizeof(marks) / sizeof(marks[0]); m++)
        if (tok_find(t, marks[m].a) >= 0 && tok_find(t, marks[m].b) >= 0) return marks[m].fam;
    return API_TMPL_NONE;
}

int api_tmpl_for_model(const char *tmpl, size_t len, const struct tok *t, int *family, int *bos) {
    *bos = 0;
    if (tmpl && len > 0) {
        *family = api_tmpl_detect(tmpl, len, bos);
        return *family == API_TMPL_NONE ? API_TMPL_SRC_UNKNOWN : API_TMPL_SRC_TEMPLATE;
    }
    *family = family_from_vocab(t);
    if (*family == API_TMPL_NONE) return API_TMPL_SRC_NONE;
    *bos = api_tmpl_default_bos(*family);
    return API_TMPL_SRC_VOCAB;
}

static int is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static void trimmed(const char *s, size_t n, const char **out, size_t *out_n) {
    while (n > 0 && is_ws(*s)) {
        s++;
        n--;
    }
    while (n > 0 && is_ws(s[n - 1]))
        n--;
    *out = s;
    *out_n = n;
}

static void put(struct api_buf *b, const char *s, size_t n) {
    api_buf_append(b, s, n);
}

static void put_trim(struct api_buf *b, const char *s, size_t n) {
    const char *t;
    size_t tn;
    trimmed(s, n, &t, &tn);
    api_buf_append(b, t, tn);
}

static const char *role_name(int role) {
    switch (role) {
    case API_ROLE_SYSTEM: return "system";
    case API_ROLE_USER: return "user";
    default: return "assistant";
    }
}

static int render_error(struct api_error *err, const char *msg, const char *family) {
    api_error_set(err, SS_EINVAL, "messages", "invalid_value", "%s (chat template: %s)", msg,
                  family);
    return SS_EINVAL;
}

/* For the alternating families: checks the shape and returns the index of the
 * first non-system message (*sys = index of the system message or -1). Tool
 * history: mistral skips tool messages and assistant calls (as its v0.3
 * template's check does); gemma counts a run of tool messages as one user
 * turn; llama2 has no convention for them. */
static int check_alternation(const struct api_chat_msg *m, int n, int family, int *sys,
                             struct api_error *err) {
    int first = 0, expect_user = 1;
    *sys = -1;
    if (n > 0 && m[0].role == API_ROLE_SYSTEM) {
        *sys = 0;
        first = 1;
    }
    for (int i = first; i < n; i++) {
        int r = m[i].role;
        if (r == API_ROLE_SYSTEM)
            return render_error(err, "a system message is only supported as the first message",
                                api_tmpl_name(family));
        int tool_turn = r == API_ROLE_TOOL || (r == API_ROLE_ASSISTANT && m[i].n_calls > 0);
        if (family == API_TMPL_LLAMA2 && tool_turn)
            return render_error(err, "tool calls and tool messages are not supported",
                                api_tmpl_name(family));
        if (family == API_TMPL_MISTRAL && tool_turn)
            continue;
        if (r == API_ROLE_TOOL) {
            if (i > first && m[i - 1].role == API_ROLE_TOOL)
                continue;
            r = API_ROLE_USER;
        }
        if (r != (expect_user ? API_ROLE_USER : API_ROLE_ASSISTANT))
            return render_error(err, "conversation roles must alternate user/assistant/user/...",
                                api_tmpl_name(family));
        expect_user = !expect_user;
    }
    return first;
}

/* {"name": NAME, KEY: ARGS[, "id": ID]} */
static void put_call_json(struct api_buf *b, const struct api_msg_call *c, const char *key,
                          int with_id) {
    api_buf_puts(b, "{\"name\": ");
    api_buf_json_str(b, c->name, strlen(c->name));
    api_buf_printf(b, ", \"%s\": ", key);
    api_buf_puts(b, c->args);
    if (with_id && c->id && c->id[0]) {
        api_buf_puts(b, ", \"id\": ");
        api_buf_json_str(b, c->id, strlen(c->id));
    }
    api_buf_puts(b, "}");
}

/* "<tool_call>\n{...}\n</tool_call>" per call, the first preceded by
 * lead0, the others by "\n". */
static void put_tagged_calls(struct api_buf *b, const struct api_chat_msg *m, const char *lead0) {
    for (int k = 0; k < m->n_calls; k++) {
        api_buf_puts(b, k ? "\n" : lead0);
        api_buf_puts(b, "<tool_call>\n");
        put_call_json(b, &m->calls[k], "arguments", 0);
        api_buf_puts(b, "\n</tool_call>");
    }
}

static int tools_on(const struct api_tools *t) {
    return t && t->n > 0 && t->choice != API_TOOLS_NONE;
}

static const char CHATML_TOOLS_HEAD[] =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
static const char CHATML_TOOLS_TAIL[] =
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\n</tool_call>";

static void render_chatml(const struct api_chat_msg *m, int n, const struct api_tools *tools,
                          const char *bos, struct api_buf *b) {
    api_buf_puts(b, bos);
    int i = 0;
    if (tools_on(tools)) { /* Qwen2.5's layout: the tools close the (first) system message */
        api_buf_puts(b, "<|im_start|>system\n");
        if (n > 0 && m[0].role == API_ROLE_SYSTEM) {
            put(b, m[0].text, m[0].len);
            api_buf_puts(b, "\n\n");
            i = 1;
        }
        api_buf_puts(b, CHATML_TOOLS_HEAD);
        for (int k = 0; k < tools->n; k++) {
            api_buf_puts(b, "\n");
            api_buf_puts(b, tools->t[k].json);
        }
        api_buf_puts(b, CHATML_TOOLS_TAIL);
        api_buf_puts(b, "<|im_end|>\n");
    }
    for (; i < n; i++) {
        if (m[i].role == API_ROLE_TOOL) { /* a run of results shares one user turn */
            if (i == 0 || m[i - 1].role != API_ROLE_TOOL)
                api_buf_puts(b, "<|im_start|>user");
            api_buf_puts(b, "\n<tool_response>\n");
            put(b, m[i].text, m[i].len);
            api_buf_puts(b, "\n</tool_response>");
            if (i == n - 1 || m[i + 1].role != API_ROLE_TOOL)
                api_buf_puts(b, "<|im_end|>\n");
            continue;
        }
        api_buf_puts(b, "<|im_start|>");
        api_buf_puts(b, role_name(m[i].role));
        if (m[i].n_calls > 0) {
            if (m[i].len) {
                api_buf_puts(b, "\n");
                put(b, m[i].text, m[i].len);
            }
            put_tagged_calls(b, &m[i], "\n");
        } else {
            api_buf_puts(b, "\n");
            put(b, m[i].text, m[i].len);
        }
        api_buf_puts(b, "<|im_end|>\n");
    }
    api_buf_puts(b, "<|im_start|>assistant\n");
}

static const char LLAMA3_TOOLS_HEAD[] =
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": "
    "function name, \"parameters\": dictionary of argument name and its value}.Do not use "
    "variables.\n\n";

/* Llama 3.1's system turn and first user turn when tools are given. Returns
 * the index of the next message to render, or SS_EINVAL. */
static int llama3_tools_head(const struct api_chat_msg *m, int n, const struct api_tools *tools,
                             struct api_buf *b, struct api_error *err) {
    int i = 0;
    api_buf_puts(b, "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
                    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
    if (n > 0 && m[0].role == API_ROLE_SYSTEM) {
        put_trim(b, m[0].text, m[0].len);
        i = 1;
    }
    api_buf_puts(b, "<|eot_id|>");
    if (i >= n)
        return render_error(err, "tools are listed in the first user message, and there is none",
                            "llama3");
    api_buf_puts(b, "<|start_header_id|>user<|end_header_id|>\n\n");
    api_buf_puts(b, LLAMA3_TOOLS_HEAD);
    for (int k = 0; k < tools->n; k++) {
        api_buf_puts(b, tools->t[k].json4);
        api_buf_puts(b, "\n\n");
    }
    put_trim(b, m[i].text, m[i].len);
    api_buf_puts(b, "<|eot_id|>");
    return i + 1;
}

static int render_llama3(const struct api_chat_msg *m, int n, const struct api_tools *tools,
                         const char *bos, struct api_buf *b, struct api_error *err) {
    api_buf_puts(b, bos);
    int i = 0;
    if (tools_on(tools) && (i = llama3_tools_head(m, n, tools, b, err)) < 0)
        return i;
    for (; i < n; i++) {
        if (m[i].role == API_ROLE_TOOL) {
            api_buf_puts(b, "<|start_header_id|>ipython<|end_header_id|>\n\n");
            put(b, m[i].text, m[i].len);
        } else if (m[i].n_calls > 0) {
            api_buf_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
            for (int k = 0; k < m[i].n_calls; k++) {
                if (k)
                    api_buf_puts(b, "\n");
                put_call_json(b, &m[i].calls[k], "parameters", 0);
            }
        } else {
            api_buf_puts(b, "<|start_header_id|>");
            api_buf_puts(b, role_name(m[i].role));
            api_buf_puts(b, "<|end_header_id|>\n\n");
            put_trim(b, m[i].text, m[i].len);
        }
        api_buf_puts(b, "<|eot_id|>");
    }
    api_buf_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return 0;
}

static void render_llama2(const struct api_chat_msg *m, int n, int first, int sys,
                          const char *bos, const char *eos, struct api_buf *b) {
    for (int i = first; i < n; i++) {
        if (m[i].role == API_ROLE_USER) {
            api_buf_puts(b, bos);
            api_buf_puts(b, "[INST] ");
            if (i == first && sys >= 0) {
                /* strip() applies to the whole "<<SYS>>...user" string: only the
                 * system text's leading and the user text's trailing blanks go */
                struct api_buf t;
                api_buf_init(&t);
                api_buf_puts(&t, "<<SYS>>\n");
                put(&t, m[sys].text, m[sys].len);
                api_buf_puts(&t, "\n<</SYS>>\n\n");
                put(&t, m[i].text, m[i].len);
                if (t.oom)
                    b->oom = 1;
                else
                    put_trim(b, t.data, t.len);
                api_buf_free(&t);
            } else {
                put_trim(b, m[i].text, m[i].len);
            }
            api_buf_puts(b, " [/INST]");
        } else {
            api_buf_puts(b, " ");
            put_trim(b, m[i].text, m[i].len);
            api_buf_puts(b, " ");
            api_buf_puts(b, eos);
        }
    }
}

static void render_mistral(const struct api_chat_msg *m, int n, int first, int sys,
                           const struct api_tools *tools, const char *bos, const char *eos,
                           struct api_buf *b) {
    int last_user = -1;
    for (int i = first; i < n; i++)
        if (m[i].role == API_ROLE_USER)
            last_user = i;
    api_buf_puts(b, bos);
    for (int i = first; i < n; i++) {
        if (m[i].role == API_ROLE_USER) {
            if (i == last_user && tools_on(tools)) {
                api_buf_puts(b, "[AVAILABLE_TOOLS] [");
                for (int k = 0; k < tools->n; k++) {
                    api_buf_puts(b, k ? ", " : "");
                    api_buf_puts(b, tools->t[k].json);
                }
                api_buf_puts(b, "][/AVAILABLE_TOOLS]");
            }
            api_buf_puts(b, "[INST] ");
            if (i == first && sys >= 0) {
                put(b, m[sys].text, m[sys].len);
                api_buf_puts(b, "\n\n");
            }
            put(b, m[i].text, m[i].len);
            api_buf_puts(b, " [/INST]");
        } else if (m[i].role == API_ROLE_TOOL) {
            api_buf_puts(b, "[TOOL_RESULTS] {\"content\": ");
            put(b, m[i].text, m[i].len);
            api_buf_puts(b, ", \"call_id\": ");
            const char *id = m[i].call_id ? m[i].call_id : "";
            api_buf_json_str(b, id, strlen(id));
            api_buf_puts(b, "}[/TOOL_RESULTS]");
        } else if (m[i].n_calls > 0) {
            api_buf_puts(b, "[TOOL_CALLS] [");
            for (int k = 0; k < m[i].n_calls; k++) {
                api_buf_puts(b, k ? ", " : "");
                put_call_json(b, &m[i].calls[k], "arguments", 1);
            }
            api_buf_puts(b, "]");
            api_buf_puts(b, eos);
        } else {
            put(b, m[i].text, m[i].len);
            api_buf_puts(b, eos);
        }
    }
}

/* Gemma 3 has no tool format of its own; ours (README "Tool calling"): the
 * tools go into the first user turn after the system text, calls are
 * <tool_call> blocks (as chatml/hermes) in the model turn, results are
 * <tool_response> blocks in a user turn. */
static const char GEMMA_TOOLS_HEAD[] =
    "You can call functions. Their signatures are listed inside <tools></tools>, one per "
    "line:\n<tools>\n";
static const char GEMMA_TOOLS_TAIL[] =
    "</tools>\nTo call a function, answer only with a JSON object inside <tool_call></tool_call> "
    "tags, one block per call:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>\nResults come back inside <tool_response></tool_response> "
    "tags.\n\n";

static void render_gemma(const struct api_chat_msg *m, int n, int first, int sys,
                         const struct api_tools *tools, const char *bos, struct api_buf *b) {
    api_buf_puts(b, bos);
    for (int i = first; i < n; i++) {
        if (m[i].role == API_ROLE_TOOL) {
            int run_start = i == first || m[i - 1].role != API_ROLE_TOOL;
            api_buf_puts(b, run_start ? "<start_of_turn>user\n" : "\n");
            api_buf_puts(b, "<tool_response>\n");
            put_trim(b, m[i].text, m[i].len);
            api_buf_puts(b, "\n</tool_response>");
            if (i == n - 1 || m[i + 1].role != API_ROLE_TOOL)
                api_buf_puts(b, "<end_of_turn>\n");
            continue;
        }
        api_buf_puts(b, "<start_of_turn>");
        api_buf_puts(b, m[i].role == API_ROLE_USER ? "user" : "model");
        api_buf_puts(b, "\n");
        if (i == first && sys >= 0) {
            put(b, m[sys].text, m[sys].len);
            api_buf_puts(b, "\n\n");
        }
        if (i == first && tools_on(tools)) {
            api_buf_puts(b, GEMMA_TOOLS_HEAD);
            for (int k = 0; k < tools->n; k++) {
                api_buf_puts(b, tools->t[k].json);
                api_buf_puts(b, "\n");
            }
            api_buf_puts(b, GEMMA_TOOLS_TAIL);
        }
        put_trim(b, m[i].text, m[i].len);
        if (m[i].n_calls > 0) {
            const char *t;
            size_t tn;
            trimmed(m[i].text, m[i].len, &t, &tn);
            put_tagged_calls(b, &m[i], tn ? "\n" : "");
        }
        api_buf_puts(b, "<end_of_turn>\n");
    }
    api_buf_puts(b, "<start_of_turn>model\n");
}

int api_tmpl_render(int family, const struct api_chat_msg *msgs, int n, const char *bos,
                    const char *eos, struct api_buf *out, struct api_error *err) {
    return api_tmpl_render_tools(family, msgs, n, NULL, bos, eos, out, err);
}

int api_tmpl_render_tools(int family, const struct api_chat_msg *msgs, int n,
                          const struct api_tools *tools, const char *bos, const char *eos,
                          struct api_buf *out, struct api_error *err) {
    if (!bos)
        bos = "";
    if (!eos)
        eos = "";
    if (n <= 0) {
        api_error_set(err, SS_EINVAL, "messages", "invalid_value",
                      "'messages' must hold at least one message");
        return SS_EINVAL;
    }
    if (family == API_TMPL_LLAMA2 && tools_on(tools))
        return render_error(err, "tools are not supported", "llama2");
    int sys = -1, first = 0, rc = 0;
    if (family == API_TMPL_LLAMA2 || family == API_TMPL_MISTRAL || family == API_TMPL_GEMMA) {
        first = check_alternation(msgs, n, family, &sys, err);
        if (first < 0)
            return first;
        if (first >= n) /* only a system message: nothing to fold it into */
            return render_error(err, "the conversation needs a user message after the system "
                                     "message",
                                api_tmpl_name(family));
    }
    switch (family) {
    case API_TMPL_CHATML: render_chatml(msgs, n, tools, bos, out); break;
    case API_TMPL_LLAMA3: rc = render_llama3(msgs, n, tools, bos, out, err); break;
    case API_TMPL_LLAMA2: render_llama2(msgs, n, first, sys, bos, eos, out); break;
    case API_TMPL_MISTRAL: render_mistral(msgs, n, first, sys, tools, bos, eos, out); break;
    case API_TMPL_GEMMA: render_gemma(msgs, n, first, sys, tools, bos, out); break;
    default:
        api_error_set(err, SS_EUNSUPPORTED, "messages", "unsupported",
                      "this model has no chat template the server recognises");
        return SS_EUNSUPPORTED;
    }
    if (rc < 0)
        return rc;
    if (out->oom) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    return 0;
}
