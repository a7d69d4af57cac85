/* output.c - response bodies and SSE chunks of /v1/completions and
 * /v1/chat/completions, logprobs objects included.
 *
 * Pure functions; any thread. JSON is written by hand (fixed shapes, no tree
 * allocation on the per-token path). Numbers: a log-probability of -inf is
 * written as -9999.0 (JSON has no infinities), NaN (the first prompt token,
 * which has no logprob) as null.
 *
 * Completions logprobs (OpenAI legacy shape):
 *   {"tokens":[str], "token_logprobs":[num|null], "top_logprobs":[{str:num}|null],
 *    "text_offset":[int]}
 * top_logprobs dicts hold the top N tokens plus the chosen one (OpenAI: "up to
 * logprobs+1 elements"); tokens whose texts coincide are merged, keeping the
 * larger logprob.
 * Chat logprobs: {"content":[{"token","logprob","bytes":[int],
 *   "top_logprobs":[{"token","logprob","bytes"}]}]} with exactly the top N.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"

#define LP_FLOOR (-9999.0)

const char *api_finish_reason(int finish) {
    switch (finish) {
    case REQ_FINISH_STOP: return "stop";
    case REQ_FINISH_LENGTH: return "length";
    default: return NULL;
    }
}

static void put_lp(struct api_buf *b, float lp) {
    if (isnan(lp))
        api_buf_puts(b, "null");
    else if (!isfinite(lp) || lp < LP_FLOOR)
        api_buf_puts(b, "-9999.0");
    else
        api_buf_printf(b, "%.9g", (double)lp);
}

/* Scratch for token pieces: big enough for any piece of the vocabulary. */
struct piece_buf {
    char *s;
    size_t cap;
    char small[256];
};

static void piece_init(struct piece_buf *pb, const struct tok *t) {
    pb->s = pb->small;
    pb->cap = sizeof(pb->small);
    if (t) {
        size_t need = (size_t)tok_max_piece_len(t) + 16;
        if (need > pb->cap) {
            char *m = malloc(need);
            if (m) {
                pb->s = m;
                pb->cap = need;
            }
        }
    }
}

static void piece_free(struct piece_buf *pb) {
    if (pb->s != pb->small)
        free(pb->s);
}

/* Bytes of token id's text ("" without a tokenizer or for an unknown id). */
static size_t piece(struct piece_buf *pb, const struct tok *t, int32_t id) {
    if (!t)
        return 0;
    int n = tok_piece(t, id, pb->s, pb->cap);
    return n > 0 ? (size_t)n : 0;
}

/* ---- completions logprobs ---- */

struct top_entry {
    struct api_buf key; /* the token text as a JSON string literal */
    float lp;
};

/* {"text": lp, ...}: top list plus the chosen token. Entries are merged by
 * their JSON text (different byte tokens may all read as U+FFFD), keeping the
 * larger logprob, so the object never repeats a key. */
static void completion_top(struct api_buf *b, const struct tok *t, struct piece_buf *pb,
                           const struct req_tok *rt) {
    struct top_entry e[REQ_MAX_LOGPROBS + 1];
    int n = 0;
    int n_top = rt->n_top < 0 ? 0 : rt->n_top > REQ_MAX_LOGPROBS ? REQ_MAX_LOGPROBS : rt->n_top;
    for (int i = 0; i <= n_top; i++) {
        int32_t id = i < n_top ? rt->top_ids[i] : rt->id;
        float lp = i < n_top ? rt->top_lps[i] : rt->lp;
        size_t len = piece(pb, t, id);
        api_buf_init(&e[n].key);
        api_buf_json_str(&e[n].key, pb->s, len);
        if (e[n].key.oom) {
            b->oom = 1;
            api_buf_free(&e[n].key);
            break;
        }
        int j;
        for (j = 0; j < n; j++)
            if (e[j].key.len == e[n].key.len && memcmp(e[j].key.data, e[n].key.data,
                                                       e[n].key.len) == 0)
                break;
        if (j < n) {
            if (lp > e[j].lp)
                e[j].lp = lp;
            api_buf_free(&e[n].key);
            continue;
        }
        e[n++].lp = lp;
    }
    api_buf_puts(b, "{");
    for (int j = 0; j < n; j++) {
        if (j)
            api_buf_puts(b, ",");
        api_buf_append(b, e[j].key.data, e[j].key.len);
        api_buf_puts(b, ":");
        put_lp(b, e[j].lp);
        api_buf_free(&e[j].key);
    }
    api_buf_puts(b, "}");
}

static void completion_logprobs(struct api_buf *b, const struct tok *t,
                                const struct api_choice_out *ch) {
    struct api_lp_state zero = {0, 0, 0};
    struct api_lp_state *st = ch->lps ? ch->lps : &zero;
    struct piece_buf pb;
    piece_init(&pb, t);
    api_buf_puts(b, "{\"tokens\":[");
    for (int32_t i = 0; i < ch->n_toks; i++) {
        size_t len = piece(&pb, t, ch->toks[i].id);
        api_buf_puts(b, i ? "," : "");
        api_buf_json_str(b, pb.s, len);
    }
    api_buf_puts(b, "],\"token_logprobs\":[");
    for (int32_t i = 0; i < ch->n_toks; i++) {
        api_buf_puts(b, i ? "," : "");
        put_lp(b, ch->toks[i].lp);
    }
    api_buf_puts(b, "],\"top_logprobs\":[");
    for (int32_t i = 0; i < ch->n_toks; i++) {
        api_buf_puts(b, i ? "," : "");
        if (isnan(ch->toks[i].lp))
            api_buf_puts(b, "null");
        else
            completion_top(b, t, &pb, &ch->toks[i]);
    }
    api_buf_puts(b, "],\"text_offset\":[");
    for (int32_t i = 0; i < ch->n_toks; i++) {
        size_t len = piece(&pb, t, ch->toks[i].id);
        size_t off;
        if (ch->toks[i].prompt) {
            off = st->prompt_off;
            st->prompt_off += len;
        } else {
            off = st->echo_len + st->gen_off;
            st->gen_off += len;
        }
        api_buf_printf(b, "%s%zu", i ? "," : "", off);
    }
    api_buf_puts(b, "]}");
    piece_free(&pb);
}

/* ---- chat logprobs ---- */

static void chat_token(struct api_buf *b, const char *s, size_t len, float lp) {
    api_buf_puts(b, "{\"token\":");
    api_buf_json_str(b, s, len);
    api_buf_puts(b, ",\"logprob\":");
    put_lp(b, isnan(lp) ? -INFINITY : lp);
    api_buf_puts(b, ",\"bytes\":[");
    for (size_t i = 0; i < len; i++)
        api_buf_printf(b, "%s%u", i ? "," : "", (unsigned)(unsigned char)s[i]);
    api_buf_puts(b, "]");
}

static void chat_logprobs(struct api_buf *b, const struct tok *t, const struct api_choice_out *ch) {
    struct piece_buf pb;
    piece_init(&pb, t);
    api_buf_puts(b, "{\"content\":[");
    int first = 1;
    for (int32_t i = 0; i < ch->n_toks; i++) {
        const struct req_tok *rt = &ch->toks[i];
        if (rt->prompt)
            continue;
        api_buf_puts(b, first ? "" : ",");
        first = 0;
        size_t len = piece(&pb, t, rt->id);
        chat_token(b, pb.s, len, rt->lp);
        api_buf_puts(b, ",\"top_logprobs\":[");
        int n_top = rt->n_top > ch->logprobs ? ch->logprobs : rt->n_top;
        for (int j = 0; j < n_top && j < REQ_MAX_LOGPROBS; j++) {
            api_buf_puts(b, j ? "," : "");
            len = piece(&pb, t, rt->top_ids[j]);
            chat_token(b, pb.s, len, rt->top_lps[j]);
            api_buf_puts(b, "}");
        }
        api_buf_puts(b, "]}");
    }
    api_buf_puts(b, "]}");
    piece_free(&pb);
}

static void put_logprobs(struct api_buf *b, const struct api_completion_meta *m,
                         const struct api_choice_out *ch) {
    api_buf_puts(b, ",\"logprobs\":");
    if (ch->logprobs < 0)
        api_buf_puts(b, "null");
    else if (m->kind == API_KIND_CHAT)
        chat_logprobs(b, m->tok, ch);
    else
        completion_logprobs(b, m->tok, ch);
}

/* ---- objects ---- */

/* {"id":..,"object":..,"created":..,"model":.. */
static void meta_head(struct api_buf *b, const struct api_completion_meta *m, int chunk) {
    const char *object = m->kind == API_KIND_CHAT
                             ? (chunk ? "chat.completion.chunk" : "chat.completion")
                             : "text_completion";
    api_buf_puts(b, "{\"id\":");
    api_buf_json_str(b, m->id, strlen(m->id));
    api_buf_printf(b, ",\"object\":\"%s\",\"created\":%lld,\"model\":", object,
                   (long long)m->created);
    api_buf_json_str(b, m->model, strlen(m->model));
}

static void put_finish(struct api_buf *b, int finish, int tool_calls) {
    const char *fr = api_finish_reason(finish);
    if (tool_calls && finish == REQ_FINISH_STOP)
        fr = "tool_calls";
    api_buf_puts(b, ",\"finish_reason\":");
    if (fr)
        api_buf_printf(b, "\"%s\"", fr);
    else
        api_buf_puts(b, "null");
}

static void put_usage(struct api_buf *b, int32_t n_prompt, int64_t n_gen, int32_t n_cached) {
    api_buf_printf(b,
                   "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%lld,"
                   "\"total_tokens\":%lld,\"prompt_tokens_details\":{\"cached_tokens\":%d}}",
                   (int)n_prompt, (long long)n_gen, (long long)n_prompt + n_gen, (int)n_cached);
}

/* ,"tool_calls":[{"id","type":"function","function":{"name","arguments"}}] */
static void put_calls(struct api_buf *b, const struct api_tool_call *c, int n) {
    api_buf_puts(b, ",\"tool_calls\":[");
    for (int i = 0; i < n; i++) {
        api_buf_puts(b, i ? ",{\"id\":" : "{\"id\":");
        api_buf_json_str(b, c[i].id, strlen(c[i].id));
        api_buf_puts(b, ",\"type\":\"function\",\"function\":{\"name\":");
        api_buf_json_str(b, c[i].name, strlen(c[i].name));
        api_buf_puts(b, ",\"arguments\":");
        api_buf_json_str(b, c[i].args, strlen(c[i].args));
        api_buf_puts(b, "}}");
    }
    api_buf_puts(b, "]");
}

/* One element of "choices": chunk selects delta (chat) shapes. */
static void choice(struct api_buf *b, const struct api_completion_meta *m,
                   const struct api_choice_out *ch, int chunk) {
    const char *text = ch->text ? ch->text : "";
    size_t len = ch->text ? ch->len : 0;
    api_buf_printf(b, "{\"index\":%d,", ch->index);
    if (m->kind == API_KIND_CHAT && !chunk) {
        api_buf_puts(b, "\"message\":{\"role\":\"assistant\",\"content\":");
        if (ch->n_calls > 0 && len == 0)
            api_buf_puts(b, "null");
        else
            api_buf_json_str(b, text, len);
        if (ch->n_calls > 0)
            put_calls(b, ch->calls, ch->n_calls);
        api_buf_puts(b, "}");
    } else if (m->kind == API_KIND_CHAT) {
        api_buf_puts(b, "\"delta\":{");
        if (len || ch->finish == REQ_FINISH_NONE) {
            api_buf_puts(b, "\"content\":");
            api_buf_json_str(b, text, len);
        }
        api_buf_puts(b, "}");
    } else {
        api_buf_puts(b, "\"text\":");
        api_buf_json_str(b, text, len);
    }
    put_logprobs(b, m, ch);
    put_finish(b, ch->finish, ch->n_calls > 0 || ch->tool_finish);
    api_buf_puts(b, "}");
}

int api_response_json(struct api_buf *b, const struct api_completion_meta *m,
                      const struct api_choice_out *ch, int n, int32_t n_prompt, int64_t n_gen) {
    meta_head(b, m, 0);
    api_buf_puts(b, ",\"choices\":[");
    for (int i = 0; i < n; i++) {
        if (i)
            api_buf_puts(b, ",");
        choice(b, m, &ch[i], 0);
    }
    api_buf_puts(b, "],");
    put_usage(b, n_prompt, n_gen, m->n_cached);
    api_buf_puts(b, "}");
    return b->oom ? SS_ENOMEM : 0;
}

int api_sse_chunk(struct api_buf *b, const struct api_completion_meta *m,
                  const struct api_choice_out *ch, int with_usage_null) {
    api_buf_puts(b, "data: ");
    meta_head(b, m, 1);
    api_buf_puts(b, ",\"choices\":[");
    choice(b, m, ch, 1);
    api_buf_puts(b, with_usage_null ? "],\"usage\":null}\n\n" : "]}\n\n");
    return b->oom ? SS_ENOMEM : 0;
}

int api_sse_role(struct api_buf *b, const struct api_completion_meta *m, int index,
                 int with_usage_null) {
    api_buf_puts(b, "data: ");
    meta_head(b, m, 1);
    api_buf_printf(b,
                   ",\"choices\":[{\"index\":%d,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                   "\"logprobs\":null,\"finish_reason\":null}]",
                   index);
    api_buf_puts(b, with_usage_null ? ",\"usage\":null}\n\n" : "}\n\n");
    return b->oom ? SS_ENOMEM : 0;
}

int api_sse_usage(struct api_buf *b, const struct api_completion_meta *m, int32_t n_prompt,
                  int64_t n_gen) {
    api_buf_puts(b, "data: ");
    meta_head(b, m, 1);
    api_buf_puts(b, ",\"choices\":[],");
    put_usage(b, n_prompt, n_gen, m->n_cached);
    api_buf_puts(b, "}\n\n");
    return b->oom ? SS_ENOMEM : 0;
}

int api_sse_tool_call(struct api_buf *b, const struct api_completion_meta *m, int index, int k,
                      const struct api_tool_call *call, int with_usage_null) {
    const char *tail = with_usage_null ? "],\"usage\":null}\n\n" : "]}\n\n";
    api_buf_puts(b, "data: ");
    meta_head(b, m, 1);
    api_buf_printf(b, ",\"choices\":[{\"index\":%d,\"delta\":{\"tool_calls\":[{\"index\":%d,"
                      "\"id\":", index, k);
    api_buf_json_str(b, call->id, strlen(call->id));
    api_buf_puts(b, ",\"type\":\"function\",\"function\":{\"name\":");
    api_buf_json_str(b, call->name, strlen(call->name));
    api_buf_puts(b, ",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}");
    api_buf_puts(b, tail);
    api_buf_puts(b, "data: ");
    meta_head(b, m, 1);
    api_buf_printf(b, ",\"choices\":[{\"index\":%d,\"delta\":{\"tool_calls\":[{\"index\":%d,"
                      "\"function\":{\"arguments\":", index, k);
    api_buf_json_str(b, call->args, strlen(call->args));
    api_buf_puts(b, "}}]},\"logprobs\":null,\"finish_reason\":null}");
    api_buf_puts(b, tail);
    return b->oom ? SS_ENOMEM : 0;
}
