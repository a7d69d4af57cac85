/* fuzz_stream.c - libFuzzer target: the streaming path of generated text:
 * the scheduler's per-token text release with stop strings and the finish
 * path (scheduler/seq.c seq_accept_token, sched.c sched_finish), then the SSE
 * chunks the api writes from each piece of released text (api/output.c
 * api_sse_chunk), as a server's stream sees them.
 *
 * No forward pass: the "sampled" tokens come from the input. A scheduler is
 * created over the tiny model but never started, so this thread plays the
 * engine thread (seq_new / seq_accept_token / sched_finish) and the loop
 * thread (sched_req_take) in turn.
 *
 * Input: selector byte (bit 0 tokenizer SPM/BPE, bit 1 chat or completions
 * chunks, bit 2 ignore_eos, bits 3-4 min_tokens), max_tokens byte (+1), stop
 * count byte (% 5), then per stop string a length byte (% 17) and its bytes
 * (cut at a NUL), then token ids (16-bit little endian, mod n_vocab).
 *
 * Oracle (min_tokens 0): the text the client receives equals a reference
 * computed independently from the same tokens: the streamed decoding, cut at
 * the leftmost occurrence of any stop string once one occurs (a stop string
 * is never sent), or the whole text plus the decoder's flush when the request
 * ends by EOS or length. Always: finish reason and n_gen agree with the
 * reference, every chunk is valid UTF-8 when the stop strings are, and every
 * SSE event is one JSON object whose text is the chunk's.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "fuzz_util.h"
#include "kernels/ss_error.h"
#include "scheduler/sched_internal.h"

static struct eng_model *models[2];
static struct sched *scheds[2];

static void on_notify(void *ud, struct sched_req *r) {
    (void)ud;
    (void)r;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    for (int k = 0; k < 2; k++) {
        struct eng_options o;
        memset(&o, 0, sizeof o);
        o.n_threads = 1;
        o.n_ctx = 512;
        o.kv_default_seqs = 1;
        char err[256];
        if (eng_model_load(&models[k], fz_model_path(k), &o, err, sizeof err) != 0)
            fz_fail("eng_model_load: %s", err);
        scheds[k] = sched_new(models[k], NULL, on_notify, NULL);
        if (!scheds[k]) fz_fail("sched_new");
    }
    return 0;
}

struct text {
    char *p;
    size_t n, cap;
};
static void text_add(struct text *t, const char *s, size_t n) {
    if (t->n + n + 1 > t->cap) {
        t->cap = (t->n + n + 1) * 2;
        t->p = realloc(t->p, t->cap);
        if (!t->p) fz_fail("out of memory");
    }
    if (n) memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = 0;
}

/* Leftmost start of any stop string in t, or -1. */
static long leftmost_stop(const struct text *t, char *const *stop, int n_stop) {
    long best = -1;
    for (int i = 0; i < n_stop; i++) {
        size_t L = strlen(stop[i]);
        if (L == 0 || L > t->n) continue;
        const char *m = memmem(t->p, t->n, stop[i], L);
        if (m && (best < 0 || m - t->p < best)) best = m - t->p;
    }
    return best;
}

/* The SSE event for one chunk of text: JSON, and its text is the chunk's. */
static void check_sse(const struct tok *tk, int kind, const char *s, size_t n, int finish, int utf8) {
    struct api_completion_meta meta = {"cmpl-fuzz", 1700000000, "fuzz-model", kind, tk, 0};
    struct api_choice_out ch = {0, s, n, finish, -1, NULL, 0, NULL};
    struct api_buf b;
    api_buf_init(&b);
    if (api_sse_chunk(&b, &meta, &ch, 1) != 0) fz_fail("api_sse_chunk failed");
    if (b.len < 8 || memcmp(b.data, "data: ", 6) != 0 || memcmp(b.data + b.len - 2, "\n\n", 2) != 0)
        fz_fail("SSE framing: %.*s", (int)(b.len > 200 ? 200 : b.len), b.data);
    cJSON *j = cJSON_ParseWithLength(b.data + 6, b.len - 8);
    if (!j) fz_fail("SSE event is not JSON: %s", b.data);
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    const cJSON *txt = kind == API_KIND_CHAT ? cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "delta"), "content")
                                             : cJSON_GetObjectItem(c0, "text");
    if (n > 0 || kind == API_KIND_COMPLETION || finish == REQ_FINISH_NONE) {
        if (!cJSON_IsString(txt)) fz_fail("SSE event without its text: %s", b.data);
        if (utf8 && !memchr(s, 0, n) && (strlen(txt->valuestring) != n || memcmp(txt->valuestring, s, n) != 0))
            fz_fail("SSE text differs from the chunk: %s", b.data);
    }
    cJSON_Delete(j);
    api_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fz_in in = {data, size};
    uint8_t sel = fz_u8(&in);
    int k = sel & 1;
    struct sched *s = scheds[k];
    const struct tok *tk = eng_model_tok(models[k]);
    int kind = sel & 2 ? API_KIND_CHAT : API_KIND_COMPLETION;
    struct sched_req *r = sched_req_new();
    if (!r) return 0;
    r->p.ignore_eos = sel >> 2 & 1;
    r->p.min_tokens = sel >> 3 & 3;
    r->p.max_tokens = 1 + fz_u8(&in);
    int n_in = fz_u8(&in) % 5, n_stop = 0, stops_utf8 = 1;
    char stop_buf[4][17];
    char *stop[4];
    size_t stop_len[4];
    for (int i = 0; i < n_in; i++) {
        size_t L = fz_u8(&in) % 17;
        char *b = stop_buf[n_stop];
        memset(b, 0, sizeof stop_buf[0]);
        for (size_t j = 0; j < L; j++) b[j] = (char)fz_u8(&in);
        if (!b[0]) continue; /* empty (a NUL ends it, as a C string from the API does): the API refuses it */
        stop[n_stop] = b;
        stop_len[n_stop] = strlen(b);
        stops_utf8 &= fz_utf8_ok(b, stop_len[n_stop]);
        n_stop++;
    }
    if (n_stop > 0 && !(r->p.stops = req_stops_new((const char *const *)stop, stop_len, n_stop)))
        fz_fail("req_stops_new");
    r->p.prompt = malloc(sizeof(int32_t));
    r->p.prompt[0] = tok_bos(tk) >= 0 ? tok_bos(tk) : 0;
    r->p.n_prompt = 1;
    sched_req_ref(r); /* the engine's reference, as sched_submit takes it */
    struct seq *q = seq_new(s, r);
    if (!q) fz_fail("seq_new");
    q->admit_order = 1; /* as if admitted (sched_finish then leaves the queue count alone) */

    /* reference: the streamed decoding of the same tokens */
    struct tok_stream ref_ts;
    tok_stream_init(&ref_ts, 0);
    char piece[1024];
    struct text ref = {0}, got = {0};
    text_add(&ref, "", 0);
    text_add(&got, "", 0);
    int finish = REQ_FINISH_NONE, ref_finish = REQ_FINISH_NONE, ref_cut = 0, n_acc = 0;
    int32_t V = tok_n_vocab(tk);
    while (finish == REQ_FINISH_NONE && in.n >= 2) {
        int32_t id = fz_u16(&in) % V;
        int err = 0;
        const char *msg = NULL;
        finish = seq_accept_token(s, q, id, &err, &msg);
        n_acc++;
        if (ref_finish == REQ_FINISH_NONE) {
            if (!r->p.ignore_eos && n_acc >= r->p.min_tokens && tok_is_eog(tk, id)) {
                ref_finish = REQ_FINISH_STOP;
            } else {
                int w = tok_stream_push(tk, &ref_ts, id, piece, sizeof piece);
                if (w < 0) fz_fail("reference decode of %d failed", id);
                text_add(&ref, piece, (size_t)w);
                long cut = r->p.min_tokens == 0 ? leftmost_stop(&ref, stop, n_stop) : -1;
                if (cut >= 0) {
                    ref.n = (size_t)cut;
                    ref_cut = 1;
                    ref_finish = REQ_FINISH_STOP;
                } else if (n_acc >= r->p.max_tokens) {
                    ref_finish = REQ_FINISH_LENGTH;
                }
            }
            if (ref_finish != REQ_FINISH_NONE && !ref_cut) {
                /* EOS and length end with the decoder's flush; a stop string drops it */
                int w = tok_stream_flush(&ref_ts, piece, sizeof piece);
                if (w > 0) text_add(&ref, piece, (size_t)w);
            }
        }
        if (finish == REQ_FINISH_ERROR) fz_fail("seq_accept_token error %d: %s", err, msg ? msg : "");
        if (finish != REQ_FINISH_NONE) sched_finish(s, r, finish, 0, NULL); /* frees q */
        struct req_out out;
        int done = sched_req_take(r, &out);
        if (done != (finish != REQ_FINISH_NONE)) fz_fail("take says done %d, finish %d", done, finish);
        if (out.n_gen != n_acc) fz_fail("n_gen %d after %d tokens", out.n_gen, n_acc);
        if (stops_utf8 && !fz_utf8_ok(out.text ? out.text : "", out.len))
            fz_fail("released chunk is not valid UTF-8");
        check_sse(tk, kind, out.text ? out.text : "", out.len, out.finish, stops_utf8);
        text_add(&got, out.text, out.len);
        free(out.text);
        free(out.toks);
    }
    if (finish == REQ_FINISH_NONE) {
        /* the input ran out first: a cancel ends it (text held back is dropped) */
        sched_finish(s, r, REQ_FINISH_CANCELLED, 0, NULL);
    } else if (r->p.min_tokens == 0) {
        if (finish != ref_finish) fz_fail("finish %d, reference %d after %d tokens", finish, ref_finish, n_acc);
        if (got.n != ref.n || memcmp(got.p, ref.p, ref.n) != 0)
            fz_fail("client got \"%.*s\" (%zu bytes), reference \"%.*s\" (%zu bytes)", (int)got.n, got.p, got.n,
                    (int)ref.n, ref.p, ref.n);
    } else if (got.n > ref.n || memcmp(got.p, ref.p, got.n) != 0) {
        /* min_tokens: stop strings count only later; the text is still a prefix */
        fz_fail("client got \"%.*s\", not a prefix of the decoded \"%.*s\"", (int)got.n, got.p, (int)ref.n, ref.p);
    }
    sched_req_unref(r);
    free(ref.p);
    free(got.p);
    return 0;
}
