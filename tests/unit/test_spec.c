/* test_spec.c - speculative decoding without a draft model (scheduler/spec.c).
 *
 *   - the proposer: the longest, then most recent, earlier match of the last
 *     n tokens; the tokens after it; nothing without a match; the caps
 *     (max_k, max_tokens, the request's n_max, off); the index follows
 *     appended tokens; the adaptive policy stops drafting at low acceptance
 *     and still probes one draft every 16 steps;
 *   - the scheduler on a generated Gemma 3 model (sliding window 32, so
 *     rejected drafts are rolled back across recycled pages): greedy tokens
 *     and logprob bits, seeded sampled tokens, stop strings, all the same with
 *     speculation on and off, alone and in a mixed batch, with the prefix
 *     cache reusing pages written next to rejected drafts; drafts were
 *     proposed and accepted; every unit goes back at the end.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "kernels/ss_error.h"
#include "scheduler/sched_internal.h"
#include "schedtest.h"
#include "testutil.h"
#include "tools/genmodel.h"
#include "tu_check.h"

static char g_gen[512];

static void make_gen(void) {
    if (access(g_gen, R_OK) == 0) return;
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.arch = "gemma3";
    o.dim = 64;
    o.n_layers = 7;
    o.n_heads = 4;
    o.n_kv_heads = 2;
    o.head_dim = 16;
    o.ffn_dim = 128;
    o.n_vocab = 300;
    o.n_ctx = 512;
    o.swa_window = 32;
    o.seed = 33;
    char err[256];
    ck_assert_msg(genmodel_write(&o, g_gen, err, sizeof(err)) == 0, "genmodel: %s", err);
}

static struct eng_model *load_gen(void) {
    make_gen();
    struct eng_options eo = {.n_threads = 1, .kv_type = ENG_KV_F32, .max_batch_tokens = 256};
    return tu_load(g_gen, &eo);
}

/* ---- the proposer ---- */

/* A sequence of s (not started) holding toks[n], decoding: the last token
 * not computed, one generated. */
static struct seq *seq_with(struct sched *s, const int32_t *toks, int n, int32_t max_tokens) {
    struct sched_req *r = sched_req_new();
    ck_assert_ptr_nonnull(r);
    r->p.prompt = malloc(sizeof(int32_t) * (size_t)n);
    memcpy(r->p.prompt, toks, sizeof(int32_t) * (size_t)n);
    r->p.n_prompt = n - 1;
    r->p.max_tokens = max_tokens;
    struct seq *q = seq_new(s, r);
    ck_assert_ptr_nonnull(q);
    q->tokens[n - 1] = toks[n - 1];
    q->n_tokens = n;
    q->n_gen = 1;
    q->n_computed = n - 1;
    q->sp.acc = q->sp.trials = 10; /* a sequence whose drafts were accepted: the policy drafts in full */
    return q;
}

static void seq_drop(struct sched *s, struct seq *q) {
    struct sched_req *r = q->req;
    seq_free(s, q);
    sched_req_unref(r);
}

static struct sched *spec_sched(struct eng_model *m) {
    struct sched_options so = {.spec_ngram = 1, .spec_tokens = 3, .spec_ngram_min = 2, .spec_ngram_max = 4};
    struct sched *s = sched_new(m, &so, on_notify, NULL);
    ck_assert_ptr_nonnull(s);
    return s;
}

START_TEST(test_propose_match) {
    struct eng_model *m = load_gen();
    struct sched *s = spec_sched(m);
    /* "2 3" occurs at 1 (after 1: a 3-token match) and at 6 (after 7: 2 tokens) */
    int32_t t1[] = {1, 2, 3, 10, 11, 7, 2, 3, 20, 21, 1, 2, 3};
    struct seq *q = seq_with(s, t1, 13, 100);
    ck_assert_int_eq(spec_propose(s, q, 8), 3);
    ck_assert_int_eq(q->sp.draft[0], 10);
    ck_assert_int_eq(q->sp.draft[1], 11);
    ck_assert_int_eq(q->sp.draft[2], 7);
    ck_assert_int_eq(spec_propose(s, q, 2), 2); /* the step's room caps it */
    seq_drop(s, q);
    /* equal lengths: the most recent wins; drafts stop at the sequence's end */
    int32_t t2[] = {5, 6, 40, 41, 42, 5, 6, 50, 5, 6};
    q = seq_with(s, t2, 10, 100);
    ck_assert_int_eq(spec_propose(s, q, 8), 3);
    ck_assert_int_eq(q->sp.draft[0], 50);
    ck_assert_int_eq(q->sp.draft[1], 5);
    ck_assert_int_eq(q->sp.draft[2], 6);
    /* the index follows appended tokens: "50 5" now ends the sequence, and its
     * only earlier occurrence matches 4 tokens back (6 50 5 after 5) */
    q->tokens[q->n_tokens++] = 50;
    q->tokens[q->n_tokens++] = 5;
    q->n_computed = q->n_tokens - 1;
    ck_assert_int_eq(spec_propose(s, q, 3), 3);
    ck_assert_int_eq(q->sp.draft[0], 6);
    ck_assert_int_eq(q->sp.draft[1], 50);
    ck_assert_int_eq(q->sp.draft[2], 5);
    seq_drop(s, q);
    /* no earlier match: nothing */
    int32_t t3[] = {1, 2, 3, 4, 5, 6, 7, 8};
    q = seq_with(s, t3, 8, 100);
    ck_assert_int_eq(spec_propose(s, q, 3), 0);
    seq_drop(s, q);
    sched_free(s);
    eng_model_free(m);
}
END_TEST

START_TEST(test_propose_caps) {
    struct eng_model *m = load_gen();
    struct sched *s = spec_sched(m);
    int32_t t[] = {9, 8, 7, 6, 5, 4, 9, 8};
    struct seq *q = seq_with(s, t, 8, 3); /* 1 generated, 2 more to emit: 1 draft */
    ck_assert_int_eq(spec_propose(s, q, 3), 1);
    ck_assert_int_eq(q->sp.draft[0], 7);
    seq_drop(s, q);
    q = seq_with(s, t, 8, 2); /* the last token to emit: no draft */
    ck_assert_int_eq(spec_propose(s, q, 3), 0);
    seq_drop(s, q);
    q = seq_with(s, t, 8, 100);
    q->req->p.spec_max = 0; /* "speculative": false */
    ck_assert_int_eq(spec_propose(s, q, 3), 0);
    q->req->p.spec_max = 2; /* {"n_max": 2} */
    ck_assert_int_eq(spec_propose(s, q, 3), 2);
    q->req->p.spec_max = REQ_SPEC_DEFAULT;
    q->n_computed--; /* a prefill chunk, not decoding */
    ck_assert_int_eq(spec_propose(s, q, 3), 0);
    seq_drop(s, q);
    sched_free(s);
    /* off by default */
    s = sched_new(m, NULL, on_notify, NULL);
    q = seq_with(s, t, 8, 100);
    ck_assert_int_eq(spec_propose(s, q, 3), 0);
    seq_drop(s, q);
    sched_free(s);
    eng_model_free(m);
}
END_TEST

START_TEST(test_propose_adaptive) {
    struct eng_model *m = load_gen();
    struct sched *s = spec_sched(m);
    int32_t t[] = {9, 8, 7, 6, 5, 4, 9, 8};
    struct seq *q = seq_with(s, t, 8, 100);
    q->sp.acc = q->sp.trials = 0;
    ck_assert_int_eq(spec_propose(s, q, 3), 1); /* prior 1/2: one draft is worth it */
    q->sp.acc = 9.5, q->sp.trials = 10; /* a sequence that accepts nearly everything */
    ck_assert_int_eq(spec_propose(s, q, 3), 3);
    q->sp.acc = 0, q->sp.trials = 20; /* one that rejects: off, with a probe every 16 */
    int probes = 0, at = -1;
    for (int i = 0; i < 48; i++) {
        int k = spec_propose(s, q, 3);
        ck_assert_int_le(k, 1);
        if (k) probes++, at = i;
    }
    ck_assert_int_eq(probes, 3);
    ck_assert_int_eq(at, 47);
    seq_drop(s, q);
    sched_free(s);
    eng_model_free(m);
}
END_TEST

/* ---- the scheduler: the same output with and without speculation ---- */

/* A prompt that repeats itself (so drafts exist from the first token). */
static void rep_prompt(int32_t *t, int n, int period, int salt) {
    for (int i = 0; i < n; i++) t[i] = 3 + (salt * 37 + (i % period) * 11) % 290;
}

struct job {
    int n_prompt, period, salt, max_tokens;
    float temperature;
    uint64_t seed;
    const char *stop;
};

static struct sched_req *job_req(const struct job *j) {
    struct sched_req *r = sched_req_new();
    ck_assert_ptr_nonnull(r);
    r->p.prompt = malloc(sizeof(int32_t) * (size_t)j->n_prompt);
    rep_prompt(r->p.prompt, j->n_prompt, j->period, j->salt);
    r->p.n_prompt = j->n_prompt;
    r->p.max_tokens = j->max_tokens;
    r->p.ignore_eos = 1;
    r->p.smp.temperature = j->temperature;
    r->p.smp.seed = j->seed;
    r->p.smp.has_seed = 1;
    r->p.logprobs = 2;
    if (j->stop) {
        size_t len = strlen(j->stop);
        r->p.stops = req_stops_new(&j->stop, &len, 1);
    }
    return r;
}

/* Runs jobs[0, n) together (twice when twice: the second round hits the
 * prefix cache) and returns the scheduler's final statistics. */
static void run_jobs(struct eng_model *m, const struct sched_options *so, const struct job *jobs, int n,
                     struct client *cs, struct sched_stats *st) {
    struct sched *s = sched_new(m, so, on_notify, NULL);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(sched_start(s), 0);
    for (int i = 0; i < n; i++) client_submit(s, &cs[i], job_req(&jobs[i]));
    wait_all(cs, n, 300);
    sched_get_stats(s, st);
    ck_assert_int_eq(st->pages_used, 0); /* every unit went back (cached ones are free) */
    sched_free(s);
}

static void same(const struct client *a, const struct client *b, int i) {
    ck_assert_msg(a->last.finish == b->last.finish && a->last.n_gen == b->last.n_gen,
                  "job %d: finish %d/%d after %d/%d tokens (%s)", i, a->last.finish, b->last.finish,
                  a->last.n_gen, b->last.n_gen, a->last.errmsg);
    ck_assert_msg(strcmp(a->text, b->text) == 0, "job %d: text differs", i);
    ck_assert_int_eq(a->n_toks, b->n_toks);
    for (int t = 0; t < a->n_toks; t++) {
        ck_assert_msg(a->toks[t].id == b->toks[t].id, "job %d token %d: %d vs %d", i, t, a->toks[t].id,
                      b->toks[t].id);
        ck_assert_msg(memcmp(&a->toks[t].lp, &b->toks[t].lp, sizeof(float)) == 0, "job %d: logprob %d", i, t);
        ck_assert_int_eq(a->toks[t].n_top, b->toks[t].n_top);
        for (int k = 0; k < a->toks[t].n_top; k++) ck_assert_int_eq(a->toks[t].top_ids[k], b->toks[t].top_ids[k]);
    }
}

static const struct job g_jobs[] = {
    {40, 8, 1, 60, 0.0f, 0, NULL},    /* greedy, repeating prompt */
    {90, 13, 2, 70, 0.0f, 0, NULL},   /* longer: generation crosses the 32-token window */
    {25, 25, 3, 50, 0.0f, 0, NULL},   /* no repetition in the prompt */
    {40, 8, 1, 60, 0.8f, 7, NULL},    /* seeded sampling */
    {60, 6, 4, 80, 1.0f, 99, NULL},   /* seeded sampling, hot */
};
#define N_JOBS ((int)(sizeof(g_jobs) / sizeof(g_jobs[0])))

START_TEST(test_sched_same_output) {
    struct eng_model *m = load_gen();
    struct client off[N_JOBS], on[N_JOBS], mixed[N_JOBS];
    struct sched_stats st;
    struct sched_options so_off = {.max_batched_tokens = 64};
    for (int i = 0; i < N_JOBS; i++) run_jobs(m, &so_off, &g_jobs[i], 1, &off[i], &st);
    ck_assert_uint_eq(st.n_spec_drafts, 0);
    struct sched_options so_on = {.max_batched_tokens = 64, .spec_ngram = 1, .spec_tokens = 4,
                                  .spec_max_batch_tokens = 8};
    uint64_t drafts = 0, accepted = 0;
    for (int i = 0; i < N_JOBS; i++) { /* alone */
        run_jobs(m, &so_on, &g_jobs[i], 1, &on[i], &st);
        same(&on[i], &off[i], i);
        drafts += st.n_spec_draft_tokens;
        accepted += st.n_spec_accepted;
    }
    fprintf(stderr, "test_spec: alone: %llu draft tokens, %llu accepted\n", (unsigned long long)drafts,
            (unsigned long long)accepted);
    ck_assert_uint_gt(drafts, 0);
    ck_assert_uint_gt(accepted, 0);
    ck_assert_uint_lt(accepted, drafts); /* some were rejected: the rollback ran */
    /* all together: plain and speculative sequences share steps, chunked prefill */
    run_jobs(m, &so_on, g_jobs, N_JOBS, mixed, &st);
    for (int i = 0; i < N_JOBS; i++) same(&mixed[i], &off[i], i);
    ck_assert_uint_gt(st.n_spec_accepted, 0);
    clients_free(off, N_JOBS);
    clients_free(on, N_JOBS);
    clients_free(mixed, N_JOBS);
    eng_model_free(m);
}
END_TEST

/* A stop string met inside an accepted run of drafts: the text ends where
 * plain decoding ends it. The stop string is cut from plain decoding's own
 * text (a piece first seen well inside it). */
START_TEST(test_sched_stop_string) {
    struct eng_model *m = load_gen();
    struct job j = g_jobs[0];
    struct client full, off, on;
    struct sched_stats st;
    struct sched_options so_off = {.max_batched_tokens = 64};
    run_jobs(m, &so_off, &j, 1, &full, &st);
    static char stop[8];
    size_t L = full.len;
    ck_assert_uint_gt(L, 8);
    size_t at = L / 2;
    while (at + 3 < L) { /* the first piece that has not occurred before */
        memcpy(stop, full.text + at, 3);
        stop[3] = 0;
        if (!memmem(full.text, at + 2, stop, 3) && !strchr(stop, 0x7f)) break;
        at++;
    }
    ck_assert_msg(at + 3 < L, "no fresh 3-byte piece in the text");
    j.stop = stop;
    run_jobs(m, &so_off, &j, 1, &off, &st);
    struct sched_options so_on = {.max_batched_tokens = 64, .spec_ngram = 1, .spec_tokens = 4};
    run_jobs(m, &so_on, &j, 1, &on, &st);
    ck_assert_int_eq(off.last.finish, REQ_FINISH_STOP);
    ck_assert_uint_eq(off.len, at);
    same(&on, &off, 0);
    clients_free(&full, 1);
    clients_free(&off, 1);
    clients_free(&on, 1);
    eng_model_free(m);
}
END_TEST

/* The same prompts twice on one scheduler with the prefix cache: the second
 * round reuses full pages of the first, which were written next to rejected
 * drafts; outputs stay those of plain decoding. */
START_TEST(test_sched_prefix_cache) {
    struct eng_model *m = load_gen();
    enum { N = 3 };
    struct client off[N], a[N], b[N];
    struct sched_stats st;
    struct sched_options so_off = {.max_batched_tokens = 64};
    for (int i = 0; i < N; i++) run_jobs(m, &so_off, &g_jobs[i], 1, &off[i], &st);
    struct sched_options so_on = {.max_batched_tokens = 64, .spec_ngram = 1, .spec_tokens = 3};
    struct sched *s = sched_new(m, &so_on, on_notify, NULL);
    ck_assert_int_eq(sched_start(s), 0);
    for (int i = 0; i < N; i++) client_submit(s, &a[i], job_req(&g_jobs[i]));
    wait_all(a, N, 300);
    for (int i = 0; i < N; i++) client_submit(s, &b[i], job_req(&g_jobs[i]));
    wait_all(b, N, 300);
    sched_get_stats(s, &st);
    ck_assert_uint_gt(st.n_prefix_hits, 0);
    ck_assert_uint_gt(st.n_spec_accepted, 0);
    ck_assert_int_eq(st.pages_used, 0);
    sched_free(s);
    for (int i = 0; i < N; i++) {
        same(&a[i], &off[i], i);
        same(&b[i], &off[i], i);
    }
    clients_free(off, N);
    clients_free(a, N);
    clients_free(b, N);
    eng_model_free(m);
}
END_TEST

START_TEST(test_params_check) {
    struct sched_limits lim = {.n_ctx = 100, .n_vocab = 50, .n_pages = 0};
    struct req_params p;
    req_params_init(&p);
    ck_assert_int_eq(p.spec_max, REQ_SPEC_DEFAULT);
    int32_t prompt[2] = {1, 2};
    p.prompt = prompt;
    p.n_prompt = 2;
    char msg[128];
    int field;
    ck_assert_int_eq(sched_check_params(&lim, &p, msg, sizeof msg, &field), 0);
    p.spec_max = REQ_SPEC_MAX_TOKENS;
    ck_assert_int_eq(sched_check_params(&lim, &p, msg, sizeof msg, &field), 0);
    p.spec_max = REQ_SPEC_MAX_TOKENS + 1;
    ck_assert_int_eq(sched_check_params(&lim, &p, msg, sizeof msg, &field), SS_EINVAL);
    p.spec_max = -2;
    ck_assert_int_eq(sched_check_params(&lim, &p, msg, sizeof msg, &field), SS_EINVAL);
}
END_TEST

int main(void) {
    tu_init("test_spec");
    tu_tmp_file(g_gen, sizeof g_gen, "gemma_spec.gguf");
    Suite *su = suite_create("spec");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_propose_match);
    tcase_add_test(tc, test_propose_caps);
    tcase_add_test(tc, test_propose_adaptive);
    tcase_add_test(tc, test_params_check);
    tcase_add_test(tc, test_sched_same_output);
    tcase_add_test(tc, test_sched_prefix_cache);
    tcase_add_test(tc, test_sched_stop_string);
    suite_add_tcase(su, tc);
    int nf = tu_check_run(su);
    remove(g_gen);
    return nf != 0;
}
