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
 * first non-system message (*sys = index of the system message or -1). */
static int check_alternation(const struct api_chat_msg *m, int n, int family, int *sys,
                             struct api_error *err) {
    int first = 0;
    *sys = -1;
    if (n > 0 && m[0].role == API_ROLE_SYSTEM) {
        *sys = 0;
        first = 1;
    }
    for (int i = first; i < n; i++) {
        if (m[i].role == API_ROLE_SYSTEM)
            return render_error(err, "a system message is only supported as the first message",
                                api_tmpl_name(family));
        int want = ((i - first) % 2 == 0) ? API_ROLE_USER : API_ROLE_ASSISTANT;
        if (m[i].role != want)
            return render_error(err, "conversation roles must alternate user/assistant/user/...",
                                api_tmpl_name(family));
    }
    return first;
}

static void render_chatml(const struct api_chat_msg *m, int n, const char *bos,
                          struct api_buf *b) {
    api_buf_puts(b, bos);
    for (int i = 0; i < n; i++) {
        api_buf_puts(b, "<|im_start|>");
        api_buf_puts(b, role_name(m[i].role));
        api_buf_puts(b, "\n");
        put(b, m[i].text, m[i].len);
        api_buf_puts(b, "<|im_end|>\n");
    }
    api_buf_puts(b, "<|im_start|>assistant\n");
}

static void render_llama3(const struct api_chat_msg *m, int n, const char *bos,
                          struct api_buf *b) {
    api_buf_puts(b, bos);
    for (int i = 0; i < n; i++) {
        api_buf_puts(b, "<|start_header_id|>");
        api_buf_puts(b, role_name(m[i].role));
        api_buf_puts(b, "<|end_header_id|>\n\n");
        put_trim(b, m[i].text, m[i].len);
        api_buf_puts(b, "<|eot_id|>");
    }
    api_buf_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
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
                           const char *bos, const char *eos, struct api_buf *b) {
    api_buf_puts(b, bos);
    for (int i = first; i < n; i++) {
        if (m[i].role == API_ROLE_USER) {
            api_buf_puts(b, "[INST] ");
            if (i == first && sys >= 0) {
                put(b, m[sys].text, m[sys].len);
                api_buf_puts(b, "\n\n");
            }
            put(b, m[i].text, m[i].len);
            api_buf_puts(b, " [/INST]");
        } else {
            put(b, m[i].text, m[i].len);
            api_buf_puts(b, eos);
        }
    }
}

static void render_gemma(const struct api_chat_msg *m, int n, int first, int sys,
                         const char *bos, struct api_buf *b) {
    api_buf_puts(b, bos);
    for (int i = first; i < n; i++) {
        api_buf_puts(b, "<start_of_turn>");
        api_buf_puts(b, m[i].role == API_ROLE_USER ? "user" : "model");
        api_buf_puts(b, "\n");
        if (i == first && sys >= 0) {
            put(b, m[sys].text, m[sys].len);
            api_buf_puts(b, "\n\n");
        }
        put_trim(b, m[i].text, m[i].len);
        api_buf_puts(b, "<end_of_turn>\n");
    }
    api_buf_puts(b, "<start_of_turn>model\n");
}

int api_tmpl_render(int family, const struct api_chat_msg *msgs, int n, const char *bos,
                    const char *eos, struct api_buf *out, struct api_error *err) {
    if (!bos)
        bos = "";
    if (!eos)
        eos = "";
    if (n <= 0) {
        api_error_set(err, SS_EINVAL, "messages", "invalid_value",
                      "'messages' must hold at least one message");
        return SS_EINVAL;
    }
    int sys = -1, first = 0;
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
    case API_TMPL_CHATML: render_chatml(msgs, n, bos, out); break;
    case API_TMPL_LLAMA3: render_llama3(msgs, n, bos, out); break;
    case API_TMPL_LLAMA2: render_llama2(msgs, n, first, sys, bos, eos, out); break;
    case API_TMPL_MISTRAL: render_mistral(msgs, n, first, sys, bos, eos, out); break;
    case API_TMPL_GEMMA: render_gemma(msgs, n, first, sys, bos, out); break;
    default:
        api_error_set(err, SS_EUNSUPPORTED, "messages", "unsupported",
                      "this model has no chat template the server recognises");
        return SS_EUNSUPPORTED;
    }
    if (out->oom) {
        api_error_set(err, SS_ENOMEM, NULL, NULL, NULL);
        return SS_ENOMEM;
    }
    return 0;
}
