/* seq.c - one sequence on the engine thread: sampling (penalties, bias,
 * min_tokens, logprobs) and accepting a token: released text, EOS, stop
 * strings, length limits. It never ends a request itself: it answers with a
 * finish reason and sched.c's sched_finish does the rest.
 *
 * Text release rule: decoded text goes into q->hold first; all but the last
 * (longest stop string - 1) bytes are released at each token, cut back to a
 * UTF-8 boundary. Any stop-string match that ends in new text therefore starts
 * inside hold, so searching hold alone finds it, and a matched stop string is
 * never sent to the client.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/grammar.h"
#include "kernels/ss_error.h"
#include "scheduler/sched_internal.h"

struct seq *seq_new(struct sched *s, struct sched_req *r) {
    struct seq *q = calloc(1, sizeof(*q));
    if (!q) return NULL;
    q->cap = r->p.n_prompt + r->p.max_tokens + 1;
    q->tokens = malloc(sizeof(int32_t) * (size_t)q->cap);
    if (!q->tokens) {
        free(q);
        return NULL;
    }
    memcpy(q->tokens, r->p.prompt, sizeof(int32_t) * (size_t)r->p.n_prompt);
    q->n_tokens = q->n_prompt = r->p.n_prompt;
    q->req = r;
    r->eng = q;
    q->plp = r->p.prompt_logprobs && r->p.logprobs >= 0;
    smp_init(&q->rng, &r->p.smp);
    tok_stream_init(&q->ts, 0); /* a continuation keeps its leading space */
    for (int k = 0; k < s->n_levels; k++)
        kv_table_init_swa(&q->tables[k], s->level_layers[k], s->swa_window > 0 ? s->level_local[k] : 0,
                          s->swa_window);
    if (r->p.pooling != ENG_POOL_NONE) { /* the step's hidden rows land in s->hidden */
        if (!s->hidden) s->hidden = malloc(sizeof(float) * (size_t)s->opt.max_batched_tokens * (size_t)s->dim);
        q->pool = calloc((size_t)s->dim, sizeof(double));
        if (!s->hidden || !q->pool) {
            seq_free(s, q);
            return NULL;
        }
    }
    return q;
}

/* NOTE: the sum runs in double, token by token in order, so the vector does
 * not depend on how the prompt was split into chunks: with the engine's
 * per-row bitwise rows, an input embedded alone or in any batch gives the
 * same bits. */
int seq_pool_rows(struct sched *s, struct seq *q, int32_t n_past, int32_t n, const float *rows, float **out) {
    const int d = s->dim;
    double *acc = q->pool;
    if (n_past == 0) memset(acc, 0, sizeof(double) * (size_t)d);
    switch (q->req->p.pooling) {
    case ENG_POOL_MEAN:
        for (int32_t t = 0; t < n; t++)
            for (int j = 0; j < d; j++) acc[j] += rows[(size_t)t * d + j];
        break;
    case ENG_POOL_CLS:
        if (n_past == 0)
            for (int j = 0; j < d; j++) acc[j] = rows[j];
        break;
    default: /* ENG_POOL_LAST */
        if (n_past + n == q->n_tokens)
            for (int j = 0; j < d; j++) acc[j] = rows[(size_t)(n - 1) * d + j];
        break;
    }
    if (n_past + n < q->n_tokens) return 0;
    double den = q->req->p.pooling == ENG_POOL_MEAN ? (double)q->n_tokens : 1.0, ss = 0.0;
    for (int j = 0; j < d; j++) {
        acc[j] /= den;
        ss += acc[j] * acc[j];
    }
    if (!isfinite(ss)) return SS_EINTERNAL; /* a broken model: no vector rather than NaNs */
    float *v = malloc(sizeof(float) * (size_t)d);
    if (!v) return SS_ENOMEM;
    double inv = ss > 0.0 ? 1.0 / sqrt(ss) : 0.0; /* an all-zero state stays zero */
    for (int j = 0; j < d; j++) v[j] = (float)(acc[j] * inv);
    *out = v;
    return 1;
}

int seq_reserve(struct sched *s, struct seq *q, int32_t n) {
    for (int k = 0; k < s->n_levels; k++) {
        int rc = kv_table_reserve(s->pool, &q->tables[k], (int64_t)q->level_n_past[k] + n);
        if (rc != 0) return rc;
    }
    return 0;
}

void seq_release_kv(struct sched *s, struct seq *q) {
    for (int k = 0; k < s->n_levels; k++) {
        kv_table_release(s->pool, &q->tables[k]);
        q->level_n_past[k] = 0;
    }
    q->n_computed = 0;
}

void seq_free(struct sched *s, struct seq *q) {
    seq_release_kv(s, q);
    for (int k = 0; k < s->n_levels; k++) kv_table_free(&q->tables[k]);
    free(q->tokens);
    free(q->hold);
    gram_matcher_free(q->gm);
    free(q->pool);
    spec_seq_free(&q->sp);
    if (q->req) q->req->eng = NULL;
    free(q);
}

static int hold_append(struct seq *q, const char *t, size_t n) {
    if (q->n_hold + n > q->cap_hold) {
        size_t cap = q->cap_hold ? q->cap_hold : 64;
        while (cap < q->n_hold + n) cap *= 2;
        char *nh = realloc(q->hold, cap);
        if (!nh) return SS_ENOMEM;
        q->hold = nh;
        q->cap_hold = cap;
    }
    memcpy(q->hold + q->n_hold, t, n);
    q->n_hold += n;
    return 0;
}

/* Releases hold[0, n) to the client (also publishes n_gen). */
static void hold_release(struct sched *s, struct seq *q, size_t n) {
    req_out_push(s, q->req, q->hold, n, q->n_gen, REQ_FINISH_NONE, 0, NULL);
    if (n > 0) {
        memmove(q->hold, q->hold + n, q->n_hold - n);
        q->n_hold -= n;
    }
}

/* ---------- sampling ---------- */

static void record_logprobs(struct sched_req *r, const float *raw, int32_t n_vocab, float lse, int32_t id,
                            int prompt, float lp_override) {
    struct req_tok t;
    memset(&t, 0, sizeof(t));
    t.id = id;
    t.prompt = prompt;
    t.lp = isnan(lp_override) && raw ? raw[id] - lse : lp_override;
    int n = r->p.logprobs;
    if (raw && n > 0) t.n_top = smp_top_logprobs(raw, n_vocab, n, t.top_ids, t.top_lps);
    req_out_push_tok(r, &t);
}

/* Logprobs of prompt tokens from rows computed for positions [pos0, pos0+n):
 * row j predicts token pos0+j+1. */
void seq_prompt_logprobs(struct sched *s, struct seq *q, const float *rows, int32_t pos0, int32_t n) {
    if (q->plp_next == 0) {
        record_logprobs(q->req, NULL, s->n_sample, 0, q->tokens[0], 1, NAN);
        q->plp_next = 1;
    }
    for (int32_t j = 0; j < n; j++) {
        int32_t next = pos0 + j + 1;
        if (next >= q->n_prompt) break;
        if (next < q->plp_next) continue; /* already reported before a preemption */
        q->plp_next = next + 1;
        const float *row = rows + (size_t)j * (size_t)s->n_vocab;
        float lse = smp_logsumexp(row, s->n_sample); /* padded ids are no tokens */
        record_logprobs(q->req, row, s->n_sample, lse, q->tokens[next], 1, NAN);
    }
}

/* The end-of-generation ids in the gathered candidates (sorted, both): each
 * one in when keep (at its logit), out otherwise; the new count. */
static int32_t cand_set_eog(struct sched *s, int32_t n, const float *logits, int keep) {
    int32_t *ids = s->cand_ids;
    float *vals = s->cand_vals;
    for (int32_t e = 0; e < s->n_eog; e++) {
        int32_t id = s->eog_ids[e], lo = 0, hi = n;
        while (lo < hi) {
            int32_t mid = (lo + hi) / 2;
            if (ids[mid] < id) lo = mid + 1;
            else hi = mid;
        }
        int present = lo < n && ids[lo] == id;
        if (keep && !present && id < s->n_sample) {
            memmove(ids + lo + 1, ids + lo, sizeof(int32_t) * (size_t)(n - lo));
            memmove(vals + lo + 1, vals + lo, sizeof(float) * (size_t)(n - lo));
            ids[lo] = id, vals[lo] = logits[id], n++;
        } else if (!keep && present) {
            memmove(ids + lo, ids + lo + 1, sizeof(int32_t) * (size_t)(n - lo - 1));
            memmove(vals + lo, vals + lo + 1, sizeof(float) * (size_t)(n - lo - 1));
            n--;
        }
    }
    return n;
}

/* The grammar mask over logits (after bias and penalties): rejected tokens
 * get -inf; end-of-generation tokens keep their logits only when the grammar
 * is complete (and min_tokens allows). A narrow mask leaves the row alone:
 * *n_cand > 0 allowed entries are gathered into s->cand_ids / cand_vals
 * instead (masked entries carry no mass: the same distribution, the same
 * greedy pick); else *n_cand = -1 and the row is masked. Which of the two a
 * step takes depends on the mask only, so seeded draws stay reproducible.
 * 0 or a negative code (q->gram_msg). */
static int seq_apply_grammar(struct sched *s, struct seq *q, float *logits, int eog_ok, int32_t *n_cand) {
    const struct req_params *p = &q->req->p;
    int rc = 0;
    *n_cand = -1;
    if (!s->gvocab && ((rc = gram_vocab_new(&s->gvocab, s->tok)) != 0 ||
                       (rc = gram_store_new(&s->gstore, s->n_vocab, SCHED_GRAM_MASKS)) != 0)) {
        gram_vocab_free(s->gvocab);
        s->gvocab = NULL;
        q->gram_msg = "constrained decoding: could not index the vocabulary";
        return rc;
    }
    if (!s->cand_ids) s->cand_ids = malloc(sizeof(int32_t) * (SCHED_GRAM_GATHER + 64));
    if (!s->cand_vals) s->cand_vals = malloc(sizeof(float) * (SCHED_GRAM_GATHER + 64));
    if (!q->gm) {
        rc = gram_matcher_new(&q->gm, p->grammar, s->gvocab, s->gstore);
        for (int32_t i = q->n_prompt; rc == 0 && i < q->n_tokens; i++) /* never needed today: defensive */
            rc = gram_matcher_accept_token(q->gm, q->tokens[i]);
        if (rc) {
            q->gram_msg = "constrained decoding: could not start the grammar matcher";
            return rc;
        }
    }
    const uint32_t *mask = gram_matcher_mask(q->gm, &rc);
    if (!mask) {
        q->gram_msg = rc == SS_ETOOLONG ? "constrained decoding: the grammar exceeded its run-time limits "
                                          "(too ambiguous or nested too deeply)"
                                        : "constrained decoding: out of memory";
        return rc;
    }
    /* ignore_eos: an end token would not end the text, and the grammar cannot
     * take it as text either, so it stays banned */
    int keep_eog = eog_ok && !p->ignore_eos && gram_matcher_is_complete(q->gm);
    if (s->cand_ids && s->cand_vals) {
        int32_t n = gram_mask_gather(mask, s->n_sample, logits, SCHED_GRAM_GATHER, s->cand_ids, s->cand_vals);
        if (n >= 0 && (n = cand_set_eog(s, n, logits, keep_eog)) > 0) {
            *n_cand = n;
            return 0;
        }
    }
    for (int32_t i = 0; i < s->n_eog; i++) s->eog_saved[i] = keep_eog ? logits[s->eog_ids[i]] : -INFINITY;
    gram_apply_mask(logits, s->n_vocab, mask);
    for (int32_t i = 0; i < s->n_eog; i++) logits[s->eog_ids[i]] = s->eog_saved[i];
    return 0;
}

int32_t seq_sample(struct sched *s, struct seq *q, float *logits) {
    const struct req_params *p = &q->req->p;
    int32_t V = s->n_sample; /* the row is n_vocab wide; ids past the tokenizer are never drawn */
    float lse = 0;
    if (p->logprobs >= 0) {
        /* Logprobs describe the raw model distribution: keep a copy. */
        memcpy(s->raw_row, logits, sizeof(float) * (size_t)V);
        lse = smp_logsumexp(s->raw_row, V);
    }
    if (p->n_bias > 0) smp_apply_logit_bias(logits, V, p->bias_ids, p->bias_vals, p->n_bias);
    if (p->repetition_penalty != 1.0f)
        smp_apply_penalties(logits, V, q->tokens, q->n_tokens, 0, 0, p->repetition_penalty, s->smp_work);
    if ((p->presence_penalty != 0 || p->frequency_penalty != 0) && q->n_gen > 0)
        smp_apply_penalties(logits, V, q->tokens + q->n_prompt, q->n_gen, p->presence_penalty,
                            p->frequency_penalty, 1.0f, s->smp_work);
    int eog_ok = !(q->n_gen < p->min_tokens && !p->ignore_eos);
    if (!eog_ok)
        for (int32_t i = 0; i < s->n_eog; i++) logits[s->eog_ids[i]] = -INFINITY;
    int32_t n_cand = -1, tok;
    if (p->grammar) {
        int rc = seq_apply_grammar(s, q, logits, eog_ok, &n_cand);
        if (rc) return rc;
    }
    if (n_cand > 0)
        tok = s->cand_ids[smp_sample(&q->rng, &p->smp, s->cand_vals, n_cand, s->smp_work, NULL)];
    else
        tok = smp_sample(&q->rng, &p->smp, logits, V, s->smp_work, NULL);
    if (p->logprobs >= 0) record_logprobs(q->req, s->raw_row, V, lse, tok, 0, NAN);
    return tok;
}

/* ---------- accepting a token ---------- */

/* Decodes tok into the held text. 0, or the decoder's error / SS_ENOMEM. */
static int hold_decode(struct sched *s, struct seq *q, int32_t tok) {
    int n = tok_stream_push(s->tok, &q->ts, tok, s->piece, s->piece_cap);
    if (n < 0) return n;
    return n > 0 ? hold_append(q, s->piece, (size_t)n) : 0;
}

/* The leftmost match of any stop string in the held text: the hold is cut
 * where it starts (several stop strings can complete on one token; the one
 * that starts first wins, whatever its place in the list, so no stop string
 * reaches the client). Returns 1 on a match. *max_stop receives the longest
 * stop string's length (the lookahead to keep). */
static int hold_find_stop(struct seq *q, int search, size_t *max_stop) {
    const struct req_stops *st = q->req->p.stops;
    int found = 0;
    size_t cut = 0;
    *max_stop = st ? st->max_len : 0;
    for (int i = 0; st && search && i < st->n; i++) {
        size_t L = st->len[i];
        if (L == 0 || L > q->n_hold) continue;
        const char *m = memmem(q->hold, q->n_hold, st->s[i], L);
        if (m && (!found || (size_t)(m - q->hold) < cut)) {
            cut = (size_t)(m - q->hold);
            found = 1;
        }
    }
    if (found) q->n_hold = cut; /* drop the match and what follows */
    return found;
}

/* Advances the matcher by tok: REQ_FINISH_NONE, REQ_FINISH_ERROR (rejected:
 * every allowed token had -inf, e.g. banned by logit_bias), or
 * REQ_FINISH_STOP when the grammar is complete and nothing may follow (the
 * token's text still counts). */
static int seq_grammar_accept(struct seq *q, int32_t tok, int *err, const char **msg) {
    int rc = gram_matcher_accept_token(q->gm, tok);
    if (rc) {
        *err = rc == SS_EINVAL ? SS_EINVAL : rc;
        *msg = rc == SS_EINVAL ? "constrained decoding: no token allowed by the grammar was possible "
                                 "(all were banned, e.g. by logit_bias)"
                               : "constrained decoding: the grammar exceeded its run-time limits";
        return REQ_FINISH_ERROR;
    }
    if (!gram_matcher_is_complete(q->gm)) return REQ_FINISH_NONE;
    /* complete: stop now if no token may follow (an error shows at the next sample) */
    return gram_matcher_can_continue(q->gm) == 0 ? REQ_FINISH_STOP : REQ_FINISH_NONE;
}

int seq_accept_token(struct sched *s, struct seq *q, int32_t tok, int *err, const char **msg) {
    const struct req_params *p = &q->req->p;
    q->tokens[q->n_tokens++] = tok;
    q->n_gen++;
    int finish = REQ_FINISH_NONE, grammar_done = REQ_FINISH_NONE;
    int early = q->n_gen < p->min_tokens;
    if (!p->ignore_eos && !early && tok_is_eog(s->tok, tok)) {
        finish = REQ_FINISH_STOP;
    } else {
        grammar_done = q->gm ? seq_grammar_accept(q, tok, err, msg) : REQ_FINISH_NONE;
        if (grammar_done == REQ_FINISH_ERROR) return grammar_done;
        int rc = hold_decode(s, q, tok);
        if (rc != 0) {
            *err = rc;
            *msg = "failed to decode the generated text";
            return REQ_FINISH_ERROR;
        }
    }
    size_t max_stop;
    int by_string = hold_find_stop(q, !early && finish == REQ_FINISH_NONE, &max_stop);
    if (by_string || grammar_done == REQ_FINISH_STOP) finish = REQ_FINISH_STOP;
    if (finish == REQ_FINISH_NONE && q->n_gen >= p->max_tokens) finish = REQ_FINISH_LENGTH;
    if (finish == REQ_FINISH_NONE && q->n_tokens >= s->n_ctx) finish = REQ_FINISH_LENGTH;
    if (finish != REQ_FINISH_NONE) {
        /* What the decoder still holds ends the text, unless a stop string cut it. */
        char tail[16];
        int n = tok_stream_flush(&q->ts, tail, sizeof(tail));
        if (n > 0 && !by_string) hold_append(q, tail, (size_t)n);
        return finish;
    }
    size_t keep = max_stop ? max_stop - 1 : 0;
    size_t release = q->n_hold > keep ? q->n_hold - keep : 0;
    while (release > 0 && release < q->n_hold && ((unsigned char)q->hold[release] & 0xC0) == 0x80)
        release--;
    hold_release(s, q, release);
    return REQ_FINISH_NONE;
}
