/* test_sched.c - scheduler and KV pool: batching, chunked prefill, preemption,
 * stop strings, cancellation, admission limits, all over a real tiny model.
 *
 * The property behind most cases: a request's greedy (or fixed-seed) output is
 * the same whatever else runs beside it, however its prefill is chunked and
 * whether or not it was preempted and recomputed.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"
#include "scheduler/kv.h"
#include "engine/grammar.h"
#include "scheduler/sched.h"
#include "scheduler/sched_internal.h"
#include "schedtest.h"
#include "tools/genmodel.h"
#include "tu_check.h"

static char g_model_path[512];
static char g_sub_path[512];
static int g_use_sub; /* load_model() loads the SUBLLM model */

/* Generates the model once per run (tests fork; the path is set in main). */
static void make_model(void) {
    FILE *f = fopen(g_model_path, "rb");
    if (f) {
        fclose(f);
        return;
    }
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.dim = 64;
    o.n_layers = 2;
    o.n_heads = 4;
    o.n_kv_heads = 2;
    o.ffn_dim = 128;
    o.n_vocab = 300;
    o.n_ctx = 256;
    o.seed = 7;
    char err[256];
    ck_assert_msg(genmodel_write(&o, g_model_path, err, sizeof(err)) == 0, "genmodel: %s", err);
}

/* A SUBLLM model with two nested levels, keeping about 60% at each. */
static void make_sub_model(void) {
    FILE *f = fopen(g_sub_path, "rb");
    if (f) {
        fclose(f);
        return;
    }
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.arch = "subllm";
    o.structure = "TT(TT(T)TT)TT";
    o.keep = 0.6f;
    o.dim = 64;
    o.n_layers = 9;
    o.n_heads = 4;
    o.n_kv_heads = 2;
    o.ffn_dim = 128;
    o.n_vocab = 300;
    o.n_ctx = 256;
    o.seed = 11;
    char err[256];
    ck_assert_msg(genmodel_write(&o, g_sub_path, err, sizeof(err)) == 0, "genmodel: %s", err);
}

static struct eng_model *load_model(size_t kv_pages) {
    make_model();
    make_sub_model();
    const char *path = g_use_sub ? g_sub_path : g_model_path;
    struct eng_options eo = {0};
    eo.n_threads = 1;
    eo.kv_type = ENG_KV_F32;
    eo.max_batch_tokens = 512;
    if (kv_pages) {
        /* size the pool in pages: bytes per token * 16 * pages */
        eo.kv_bytes = 1; /* placeholder, fixed below once the model tells its size */
    }
    struct eng_model *m = NULL;
    char err[256];
    if (kv_pages) {
        struct eng_options probe = eo;
        probe.kv_bytes = 0;
        ck_assert_msg(eng_model_load(&m, path, &probe, err, sizeof(err)) == 0, "%s", err);
        size_t per_tok = eng_model_kv_bytes_per_token(m);
        eng_model_free(m);
        eo.kv_bytes = per_tok * 16 * kv_pages;
    }
    ck_assert_msg(eng_model_load(&m, path, &eo, err, sizeof(err)) == 0, "%s", err);
    if (kv_pages) ck_assert_int_eq(eng_model_n_pages(m), (int)kv_pages);
    return m;
}

/* ---- the tiny client is in schedtest.c ---- */

/* Runs request i (prompt pattern i) alone and returns its text in out. */
static void run_alone(struct eng_model *m, int32_t n_prompt, int first, int32_t max_tokens, char *out,
                      size_t cap, const struct sched_options *so) {
    struct sched *s = sched_new(m, so, on_notify, NULL);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(sched_start(s), 0);
    struct client c;
    client_submit(s, &c, make_req(n_prompt, first, max_tokens));
    wait_all(&c, 1, 60);
    ck_assert_int_eq(c.last.finish, REQ_FINISH_LENGTH);
    ck_assert_int_eq(c.last.n_gen, max_tokens);
    snprintf(out, cap, "%s", c.text);
    clients_free(&c, 1);
    sched_free(s);
}

/* ---- KV pool ---- */

START_TEST(test_kv_pool) {
    struct kv_pool *p = kv_pool_new(10, 1, 0);
    struct kv_table a, b;
    kv_table_init(&a, 1);
    kv_table_init(&b, 1);
    ck_assert_int_eq(kv_table_reserve(p, &a, 1), 0);
    ck_assert_int_eq(a.n_pages, 1);
    ck_assert_int_eq(kv_table_reserve(p, &a, 16), 0);
    ck_assert_int_eq(a.n_pages, 1);
    ck_assert_int_eq(kv_table_reserve(p, &a, 17), 0);
    ck_assert_int_eq(a.n_pages, 2);
    ck_assert_int_eq(kv_table_reserve(p, &b, 16 * 9), SS_EAGAIN); /* all or nothing */
    ck_assert_int_eq(b.n_pages, 0);
    ck_assert_int_eq(kv_pool_n_free(p), 8);
    ck_assert_int_eq(kv_table_reserve(p, &b, 16 * 8), 0);
    ck_assert_int_eq(kv_pool_n_free(p), 0);
    /* every page id distinct */
    int seen[10] = {0};
    for (int i = 0; i < a.n_pages; i++) seen[a.units[0][i]]++;
    for (int i = 0; i < b.n_pages; i++) seen[b.units[0][i]]++;
    for (int i = 0; i < 10; i++) ck_assert_int_eq(seen[i], 1);
    kv_table_release(p, &a);
    kv_table_release(p, &b);
    ck_assert_int_eq(kv_pool_n_free(p), 10);
    kv_table_free(&a);
    kv_table_free(&b);
    kv_pool_free(p);
}
END_TEST


START_TEST(test_prefix_cache_pool) {
    /* Blocks of 2 units (a 2-layer level): 10 units = 5 blocks. */
    struct kv_pool *p = kv_pool_new(10, 2, 1);
    int32_t tok[80];
    for (int i = 0; i < 80; i++) tok[i] = 1000 + i;
    struct kv_table a, b, c;
    kv_table_init(&a, 2);
    kv_table_init(&b, 2);
    kv_table_init(&c, 2);
    ck_assert_int_eq(kv_table_reserve(p, &a, 50), 0); /* 4 pages: 3 full + 2 tokens */
    kv_table_commit(p, &a, tok, 50);
    ck_assert_int_eq(a.n_committed, 3);
    int32_t first3[3] = {a.blocks[0], a.blocks[1], a.blocks[2]};
    int32_t unit1 = a.units[1][2];
    kv_table_release(p, &a);
    ck_assert_int_eq(kv_pool_n_cached(p), 6);
    ck_assert_int_eq(kv_pool_n_free(p), 10);
    /* Same 49-token prefix: the page holding the last token is never matched. */
    ck_assert_int_eq(kv_table_match_prefix(p, &b, tok, 49), 48);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(b.blocks[i], first3[i]);
    ck_assert_int_eq(b.units[1][2], unit1); /* the same units come back with the block */
    ck_assert_int_eq(kv_pool_n_cached(p), 0);
    kv_table_release(p, &b);
    /* Exactly 48 tokens: only two pages may be matched. */
    ck_assert_int_eq(kv_table_match_prefix(p, &b, tok, 48), 32);
    kv_table_release(p, &b);
    /* A different token in page 1 stops the match after page 0. */
    int32_t other[80];
    memcpy(other, tok, sizeof(tok));
    other[20] = 7;
    ck_assert_int_eq(kv_table_match_prefix(p, &c, other, 60), 16);
    kv_table_release(p, &c);
    /* Filling the pool evicts cached pages (LRU); a stale child is never matched. */
    ck_assert_int_eq(kv_table_reserve(p, &c, 16 * 5), 0);
    ck_assert_int_eq(kv_pool_n_cached(p), 0);
    kv_table_release(p, &c);
    ck_assert_int_eq(kv_table_match_prefix(p, &b, tok, 60), 0);
    kv_table_release(p, &b);
    ck_assert_int_eq(kv_pool_n_free(p), 10);
    /* Trim returns worst-case reservations a level did not use. */
    ck_assert_int_eq(kv_table_reserve(p, &a, 64), 0);
    ck_assert_int_eq(kv_pool_n_free(p), 2);
    kv_table_trim(p, &a, 17);
    ck_assert_int_eq(a.n_pages, 2);
    ck_assert_int_eq(kv_pool_n_free(p), 6);
    kv_table_release(p, &a);
    kv_table_free(&a);
    kv_table_free(&b);
    kv_table_free(&c);
    kv_pool_free(p);
}
END_TEST

START_TEST(test_prefix_cache_reuse) {
    struct eng_model *m = load_model(0);
    char off[4096];
    struct sched_options so = {.no_prefix_cache = 1};
    run_alone(m, 70, 8, 10, off, sizeof(off), &so);
    struct sched *s = sched_new(m, NULL, on_notify, NULL);
    ck_assert_int_eq(sched_start(s), 0);
    for (int round = 0; round < 2; round++) {
        struct client c;
        client_submit(s, &c, make_req(70, 8, 10));
        wait_all(&c, 1, 60);
        ck_assert_str_eq(c.text, off);
        clients_free(&c, 1);
    }
    struct sched_stats st;
    sched_get_stats(s, &st);
    ck_assert_uint_eq(st.n_prefix_queries, 140);
    ck_assert_uint_eq(st.n_prefix_hits, 64); /* 4 full pages of the 70-token prompt */
    ck_assert_int_eq(st.pages_used, 0);
    ck_assert_int_gt(st.pages_cached, 0);
    sched_free(s);
    eng_model_free(m);
}
END_TEST


/* ---- sampling options ---- */

static void run_one(struct eng_model *m, struct sched_req *r, struct client *c) {
    struct sched *s = sched_new(m, NULL, on_notify, NULL);
    ck_assert_int_eq(sched_start(s), 0);
    client_submit(s, c, r);
    wait_all(c, 1, 60);
    sched_free(s);
}

START_TEST(test_logprobs) {
    struct eng_model *m = load_model(0);
    struct sched_req *r = make_req(20, 2, 6);
    r->p.logprobs = 3;
    r->p.prompt_logprobs = 1;
    static struct client c;
    run_one(m, r, &c);
    ck_assert_int_eq(c.n_toks, 20 + 6);
    /* Independent check of the prompt logprobs: one full forward with every
     * row's logits, then log-softmax in double. */
    int32_t V = eng_model_config(m)->n_vocab;
    float *lg = malloc(sizeof(float) * 20 * (size_t)V);
    struct kv_pool *pool = kv_pool_new(eng_model_n_pages(m), 1, 0);
    struct kv_table t;
    kv_table_init(&t, 1);
    ck_assert_int_eq(kv_table_reserve(pool, &t, 20), 0);
    struct eng_kv_tables kt; /* the pool's page ids, one unit per layer */
    ck_assert_int_eq(eng_kv_identity_tables(&kt, m, t.units[0], t.n_pages), 0);
    struct eng_seq es = {.tok0 = 0, .n_tok = 20, .n_past = 0, .layer_pages = kt.rows, .layer_n_pages = kt.n_pages,
                         .want_logits = 1, .all_logits = 1};
    struct eng_batch b = {.tokens = r->p.prompt, .n_tokens = 20, .seqs = &es, .n_seqs = 1};
    ck_assert_int_eq(eng_forward(m, &b, lg), 0);
    ck_assert(c.toks[0].prompt && isnan(c.toks[0].lp));
    for (int i = 1; i < 20; i++) {
        const float *row = lg + (size_t)(i - 1) * (size_t)V;
        double mx = -INFINITY, sum = 0;
        for (int32_t v = 0; v < V; v++) mx = row[v] > mx ? row[v] : mx;
        for (int32_t v = 0; v < V; v++) sum += exp(row[v] - mx);
        double want = row[r->p.prompt[i]] - mx - log(sum);
        ck_assert(c.toks[i].prompt);
        ck_assert_int_eq(c.toks[i].id, r->p.prompt[i]);
        ck_assert_msg(fabs(c.toks[i].lp - want) < 1e-4, "prompt lp %d: %f vs %f", i, c.toks[i].lp, want);
        ck_assert_int_eq(c.toks[i].n_top, 3);
    }
    /* Generated tokens: greedy picks the most likely, so it tops its own list. */
    for (int i = 20; i < 26; i++) {
        ck_assert(!c.toks[i].prompt);
        ck_assert_int_eq(c.toks[i].id, c.toks[i].top_ids[0]);
        ck_assert(fabsf(c.toks[i].lp - c.toks[i].top_lps[0]) < 1e-6f);
        ck_assert(c.toks[i].top_lps[0] >= c.toks[i].top_lps[1] && c.toks[i].top_lps[1] >= c.toks[i].top_lps[2]);
        ck_assert(c.toks[i].lp <= 0);
    }
    eng_kv_tables_free(&kt);
    kv_table_release(pool, &t);
    kv_table_free(&t);
    kv_pool_free(pool);
    free(lg);
    sched_req_unref(c.r);
    eng_model_free(m);
}
END_TEST

START_TEST(test_bias_and_penalties) {
    struct eng_model *m = load_model(0);
    static struct client c;
    /* A +100 bias on one token makes greedy pick it every time. */
    struct sched_req *r = make_req(8, 4, 5);
    r->p.logprobs = 0;
    r->p.bias_ids = malloc(sizeof(int32_t));
    r->p.bias_vals = malloc(sizeof(float));
    r->p.bias_ids[0] = 77;
    r->p.bias_vals[0] = 100;
    r->p.n_bias = 1;
    run_one(m, r, &c);
    ck_assert_int_eq(c.n_toks, 5);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(c.toks[i].id, 77);
    sched_req_unref(c.r);
    /* A large presence penalty forbids repeating any generated token. */
    r = make_req(8, 4, 40);
    r->p.logprobs = 0;
    r->p.presence_penalty = 1000;
    run_one(m, r, &c);
    ck_assert_int_eq(c.n_toks, 40);
    for (int i = 0; i < 40; i++)
        for (int j = 0; j < i; j++) ck_assert_int_ne(c.toks[i].id, c.toks[j].id);
    sched_req_unref(c.r);
    eng_model_free(m);
}
END_TEST

START_TEST(test_min_tokens_delays_stop) {
    struct eng_model *m = load_model(0);
    char full[4096];
    run_alone(m, 9, 6, 24, full, sizeof(full), NULL);
    ck_assert_uint_gt(strlen(full), 4);
    static struct client c;
    struct sched_req *r = make_req(9, 6, 24);
    char stop[2] = {full[0], 0}; /* matches right away without min_tokens */
    const char *stops[1] = {stop};
    size_t stop_len[1] = {strlen(stop)};
    r->p.stops = req_stops_new(stops, stop_len, 1);
    r->p.min_tokens = 24;
    run_one(m, r, &c);
    ck_assert_int_eq(c.last.finish, REQ_FINISH_LENGTH);
    ck_assert_str_eq(c.text, full);
    sched_req_unref(c.r);
    eng_model_free(m);
}
END_TEST


/* ---- SUBLLM levels ---- */

/* Level tables hold exactly the kept tokens: at the first token of a request
 * (seen from the engine thread, in notify), each level k holds
 * ceil(kept_k / 16) blocks of L_k units. */
static struct sched *g_lvl_sched;
static struct sched_stats g_lvl_first;
static int g_lvl_seen;

static void on_notify_levels(void *ud, struct sched_req *r) {
    if (!g_lvl_seen) {
        sched_get_stats(g_lvl_sched, &g_lvl_first);
        g_lvl_seen = 1;
    }
    on_notify(ud, r);
}

START_TEST(test_subllm_level_pages) {
    g_use_sub = 1;
    struct eng_model *m = load_model(0);
    int L = eng_model_config(m)->n_layers, nl = eng_model_n_levels(m);
    ck_assert_int_eq(nl, 3);
    int layers[ENG_MAX_LEVELS] = {0};
    for (int l = 0; l < L; l++) layers[eng_model_layer_level(m, l)]++;
    struct sched *s = sched_new(m, NULL, on_notify_levels, NULL);
    g_lvl_sched = s;
    g_lvl_seen = 0;
    ck_assert_int_eq(sched_start(s), 0);
    struct client c;
    client_submit(s, &c, make_req(150, 3, 4));
    wait_all(&c, 1, 60);
    ck_assert(g_lvl_seen);
    /* one request, prefill only so far: level_tokens are its kept counts */
    ck_assert_uint_eq(g_lvl_first.level_tokens[0], 150);
    for (int k = 0; k < nl; k++) {
        uint64_t kept = g_lvl_first.level_tokens[k];
        if (k > 0) ck_assert_uint_lt(kept, g_lvl_first.level_tokens[k - 1]);
        ck_assert_int_eq(g_lvl_first.level_units[k], kv_pages_for((int64_t)kept) * layers[k]);
    }
    struct sched_stats st;
    sched_get_stats(s, &st);
    ck_assert_int_eq(st.pages_used, 0);
    for (int k = 0; k < nl; k++) ck_assert_int_eq(st.level_units[k], 0);
    clients_free(&c, 1);
    sched_free(s);
    eng_model_free(m);
    g_use_sub = 0;
}
END_TEST

START_TEST(test_subllm_alone_concurrent_preempt) {
    g_use_sub = 1;
    /* 8 pages' worth of units: three 40+24-token requests cannot all fit. */
    struct eng_model *m = load_model(8);
    enum { N = 6 };
    char alone[N][4096];
    for (int i = 0; i < N; i++) run_alone(m, 40, 30 + i, 24, alone[i], sizeof(alone[i]), NULL);
    struct sched *s = sched_new(m, NULL, on_notify, NULL);
    ck_assert_int_eq(sched_start(s), 0);
    struct client cs[N];
    for (int i = 0; i < N; i++) client_submit(s, &cs[i], make_req(40, 30 + i, 24));
    wait_all(cs, N, 120);
    for (int i = 0; i < N; i++) ck_assert_str_eq(cs[i].text, alone[i]);
    struct sched_stats st;
    sched_get_stats(s, &st);
    ck_assert_int_eq(st.pages_used, 0);
    ck_assert_uint_eq(st.n_prefix_hits, 0); /* prefix caching is off with levels */
    ck_assert_uint_gt(st.n_preemptions, 0);
    clients_free(cs, N);
    sched_free(s);
    eng_model_free(m);
    g_use_sub = 0;
}
END_TEST

/* ---- batching ---- */

START_TEST(test_alone_equals_concurrent) {
    struct eng_model *m = load_model(0);
    enum { N = 16 };
    char alone[N][4096];
    for (int i = 0; i < N; i++) run_alone(m, 5 + i * 3, i, 12, alone[i], sizeof(alone[i]), NULL);
    struct sched *s = sched_new(m, NULL, on_notify, NULL);
    ck_assert_int_eq(sched_start(s), 0);
    struct client cs[N];
    for (int i = 0; i < N; i++) client_submit(s, &cs[i], make_req(5 + i * 3, i, 12));
    wait_all(cs, N, 120);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(cs[i].last.finish, REQ_FINISH_LENGTH);
        ck_assert_str_eq(cs[i].text, alone[i]);
    }
    struct sched_stats st;
    sched_get_stats(s, &st);
    ck_assert_int_eq(st.pages_used, 0); /* pool fully free once all end */
    ck_assert_uint_eq(st.n_requests_done, N);
    /* Counters add up: tokens counted = tokens delivered. */
    uint64_t prompt = 0;
    for (int i = 0; i < N; i++) prompt += (uint64_t)(5 + i * 3);
    ck_assert_uint_eq(st.n_prompt_tokens, prompt);
    ck_assert_uint_eq(st.n_gen_tokens, N * 12);
    ck_assert_uint_eq(st.ttft_s.total, N);
    ck_assert_uint_eq(st.itl_s.total, N * 11);
    ck_assert_uint_eq(st.e2e_s.total, N);
    ck_assert_uint_eq(st.queue_s.total, N);
    ck_assert_uint_eq(st.n_finished[REQ_FINISH_LENGTH], N);
    ck_assert_uint_ge(st.batch_tokens.total, 12);
    clients_free(cs, N);
    sched_free(s);
    eng_model_free(m);
}
END_TEST

START_TEST(test_chunked_prefill) {
    struct eng_model *m = load_model(0);
    char big[4096], small[4096];
    run_alone(m, 100, 3, 8, big, sizeof(big), NULL);
    struct sched_options so = {.max_batched_tokens = 7};
    run_alone(m, 100, 3, 8, small, sizeof(small), &so);
    ck_assert_str_eq(big, small);
    eng_model_free(m);
}
END_TEST

/* The end of a run that had to preempt: it did, every page came back; frees
 * the clients, the scheduler and the model. */
static void end_preempted(struct sched *s, struct eng_model *m, struct client *cs, int n) {
    struct sched_stats st;
    sched_get_stats(s, &st);
    ck_assert_uint_gt(st.n_preemptions, 0);
    ck_assert_int_eq(st.pages_used, 0);
    clients_free(cs, n);
    sched_free(s);
    eng_model_free(m);
}

START_TEST(test_preemption_keeps_output) {
    /* 6 pages of 16 slots: two requests of 40+24 tokens cannot both fit. */
    struct eng_model *m = load_model(6);
    enum { N = 4 };
    char alone[N][4096];
    for (int i = 0; i < N; i++) run_alone(m, 40, 10 + i, 24, alone[i], sizeof(alone[i]), NULL);
    struct sched *s = sched_new(m, NULL, on_notify, NULL);
    ck_assert_int_eq(sched_start(s), 0);
    struct client cs[N];
    for (int i = 0; i < N; i++) client_submit(s, &cs[i], make_req(40, 10 + i, 24));
    wait_all(cs, N, 120);
    for (int i = 0; i < N; i++) ck_assert_str_eq(cs[i].text, alone[i]);
    end_preempted(s, m, cs, N);
}
END_TEST

START_TEST(test_stop_string) {
    struct eng_model *m = load_model(0);
    char full[4096];
    run_alone(m, 9, 5, 24, full, sizeof(full), NULL);
    size_t L = strlen(full);
    ck_assert_uint_gt(L, 6);
    /* Pick a 3-byte stop string from the middle, on a UTF-8 boundary. */
    size_t at = L / 2;
    while (at > 0 && ((unsigned char)full[at] & 0xC0) == 0x80) at--;
    char stop[4] = {0};
    memcpy(stop, full + at, 3);
    const char *first = strstr(full, stop);
    size_t expect = (size_t)(first - full);
    struct sched *s = sched_new(m, NULL, on_notify, NULL);
    ck_assert_int_eq(sched_start(s), 0);
    struct client c;
    struct sched_req *r = make_req(9, 5, 24);
    const char *stops[1] = {stop};
    size_t stop_len[1] = {strlen(stop)};
    r->p.stops = req_stops_new(stops, stop_len, 1);
    client_submit(s, &c, r);
    wait_all(&c, 1, 60);
    ck_assert_int_eq(c.last.finish, REQ_FINISH_STOP);
    ck_assert_uint_eq(c.len, expect);
    ck_assert_int_eq(memcmp(c.text, full, expect), 0);
    clients_free(&c, 1);
    sched_free(s);
    eng_model_free(m);
}
END_TEST

/* Two stop strings complete on the same token: the text is cut where the
 * leftmost one starts, whatever their order in the list, so no part of an
 * earlier match reaches the client (found by tests/fuzz/fuzz_stream: stops
 * ["e", "t"] and the token " the" sent " th"). Here the text "a", "b" with
 * stops ["b", "ab"] must give "", not "a". The scheduler is not started: this
 * thread plays the engine thread. */
START_TEST(test_stop_strings_leftmost) {
    struct eng_model *m = load_model(0);
    const struct tok *t = eng_model_tok(m);
    int32_t ids[2] = {tok_find(t, "a"), tok_find(t, "b")};
    ck_assert_int_ge(ids[0], 0);
    ck_assert_int_ge(ids[1], 0);
    struct sched *s = sched_new(m, NULL, on_notify, NULL);
    struct sched_req *r = make_req(4, 1, 8);
    const char *stops[2] = {"b", "ab"};
    size_t stop_len[2] = {1, 2};
    r->p.stops = req_stops_new(stops, stop_len, 2);
    ck_assert_ptr_nonnull(r->p.stops);
    sched_req_ref(r); /* the engine's reference, as sched_submit takes it */
    struct seq *q = seq_new(s, r);
    ck_assert_ptr_nonnull(q);
    q->admit_order = 1;
    int err = 0;
    const char *msg = NULL;
    ck_assert_int_eq(seq_accept_token(s, q, ids[0], &err, &msg), REQ_FINISH_NONE);
    int fin = seq_accept_token(s, q, ids[1], &err, &msg);
    ck_assert_int_eq(fin, REQ_FINISH_STOP);
    sched_finish(s, r, fin, 0, NULL);
    struct req_out out;
    ck_assert_int_eq(sched_req_take(r, &out), 1);
    ck_assert_uint_eq(out.len, 0); /* "ab" starts first: nothing of it is sent */
    free(out.text);
    free(out.toks);
    sched_req_unref(r);
    sched_free(s);
    eng_model_free(m);
}
END_TEST

START_TEST(test_cancel_and_limits) {
    struct eng_model *m = load_model(0);
    struct sched_options so = {.max_queued = 2, .max_num_seqs = 1};
    struct sched *s = sched_new(m, &so, on_notify, NULL);
    /* Not started yet: submissions pile up in the queue. */
    struct client cs[2];
    client_submit(s, &cs[0], make_req(10, 1, 200));
    client_submit(s, &cs[1], make_req(10, 2, 200));
    struct sched_req *third = make_req(10, 3, 5);
    ck_assert_int_eq(sched_submit(s, third), SS_EAGAIN);
    sched_req_unref(third);
    struct sched_req *huge = make_req(250, 4, 100);
    ck_assert_int_eq(sched_submit(s, huge), SS_ETOOLONG);
    ck_assert_ptr_nonnull(strstr(huge->out.errmsg, "n_prompt_tokens=250"));
    sched_req_unref(huge);
    struct sched_req *bad = make_req(4, 4, 5);
    bad->p.prompt[2] = 100000;
    ck_assert_int_eq(sched_submit(s, bad), SS_EINVAL);
    sched_req_unref(bad);
    /* The first is cancelled mid-generation (at its first token), the second
     * while it still waits for a seat. */
    g_cancel_sched = s;
    g_cancel_req = cs[0].r;
    g_cancel_after = 1;
    sched_cancel(s, cs[1].r);
    ck_assert_int_eq(sched_start(s), 0);
    wait_all(cs, 2, 60);
    g_cancel_req = NULL;
    ck_assert_int_eq(cs[0].last.finish, REQ_FINISH_CANCELLED);
    ck_assert_int_eq(cs[1].last.finish, REQ_FINISH_CANCELLED);
    ck_assert_int_ge(cs[0].last.n_gen, 1);
    ck_assert_int_lt(cs[0].last.n_gen, 4);
    ck_assert_int_eq(cs[1].last.n_gen, 0);
    struct sched_stats st;
    sched_get_stats(s, &st);
    ck_assert_int_eq(st.pages_used, 0);
    ck_assert_int_eq(st.n_running + st.n_waiting, 0);
    clients_free(cs, 2);
    sched_free(s);
    eng_model_free(m);
}
END_TEST

/* Every end goes through one finish path: whether the engine thread runs or
 * was never started, sched_stop ends each request once (finish ERROR, the
 * shutdown message), drops the engine's reference, frees its pages and counts
 * it; later submissions are refused. */
static void check_stopped(struct sched *s, struct client *cs, int n, int n_more) {
    for (int i = 0; i < n; i++) {
        client_poll(&cs[i]);
        ck_assert_int_eq(cs[i].done, 1);
        ck_assert_int_eq(cs[i].last.finish, REQ_FINISH_ERROR);
        ck_assert_int_eq(cs[i].last.error, SS_ECANCELLED);
        ck_assert_str_eq(cs[i].last.errmsg, "the server is shutting down");
        pthread_mutex_lock(&cs[i].r->lock);
        ck_assert_int_eq(cs[i].r->refs, 1); /* only the client's */
        pthread_mutex_unlock(&cs[i].r->lock);
    }
    struct sched_stats st;
    sched_get_stats(s, &st);
    ck_assert_uint_eq(st.n_requests_done, (uint64_t)(n + n_more));
    ck_assert_uint_eq(st.n_finished[REQ_FINISH_ERROR], (uint64_t)(n + n_more));
    ck_assert_int_eq(st.pages_used, 0);
    ck_assert_int_eq(st.n_running + st.n_waiting, 0);
    struct sched_req *late = make_req(4, 1, 2);
    ck_assert_int_eq(sched_submit(s, late), SS_EAGAIN);
    sched_req_unref(late);
}

/* Pauses the engine thread in its first notify until released (state 2). */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int state; /* 0 running, 1 paused, 2 released */
} g_pause = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

static void on_notify_pause(void *ud, struct sched_req *r) {
    pthread_mutex_lock(&g_pause.lock);
    if (g_pause.state == 0) {
        g_pause.state = 1;
        pthread_cond_broadcast(&g_pause.cond);
        while (g_pause.state != 2) pthread_cond_wait(&g_pause.cond, &g_pause.lock);
    }
    pthread_mutex_unlock(&g_pause.lock);
    on_notify(ud, r);
}

static void *stop_thread(void *arg) {
    sched_stop(arg);
    return NULL;
}

START_TEST(test_stop_ends_everything) {
    struct eng_model *m = load_model(0);
    /* never started: the requests wait in the submission queue */
    struct sched *s = sched_new(m, NULL, on_notify, NULL);
    struct client cs[2];
    client_submit(s, &cs[0], make_req(10, 1, 50));
    client_submit(s, &cs[1], make_req(10, 2, 50));
    sched_stop(s);
    check_stopped(s, cs, 2, 0);
    sched_stop(s); /* idempotent */
    clients_free(cs, 2);
    sched_free(s);

    /* running: one generating (it holds pages), one waiting for the only seat.
     * The engine pauses in its first notify until the stop is requested, so the
     * first request is mid-generation when the engine sees it. */
    struct sched_options so = {.max_num_seqs = 1};
    s = sched_new(m, &so, on_notify_pause, NULL);
    g_pause.state = 0;
    client_submit(s, &cs[0], make_req(10, 3, 200));
    client_submit(s, &cs[1], make_req(10, 4, 200));
    ck_assert_int_eq(sched_start(s), 0);
    pthread_mutex_lock(&g_pause.lock);
    while (g_pause.state != 1) pthread_cond_wait(&g_pause.cond, &g_pause.lock);
    pthread_mutex_unlock(&g_pause.lock);
    pthread_t stopper;
    ck_assert_int_eq(pthread_create(&stopper, NULL, stop_thread, s), 0);
    /* The stop is requested once submissions are refused with its message;
     * probes accepted before that are ended by the shutdown too. */
    struct sched_req *probes[256]; /* the queue holds at most 256 (max_queued) */
    int n_probes = 0, refused = 0;
    for (int tries = 0; !refused && tries < 5000; tries++) { /* bounded: 5 s at most */
        struct sched_req *pr = make_req(4, 5, 2);
        if (sched_submit(s, pr) == 0) {
            probes[n_probes++] = pr;
        } else {
            refused = strcmp(pr->out.errmsg, "the server is shutting down") == 0;
            sched_req_unref(pr);
        }
        usleep(1000);
    }
    ck_assert(refused);
    pthread_mutex_lock(&g_pause.lock);
    g_pause.state = 2;
    pthread_cond_broadcast(&g_pause.cond);
    pthread_mutex_unlock(&g_pause.lock);
    pthread_join(stopper, NULL);
    ck_assert_int_lt(cs[0].r->out.n_gen, 200);
    for (int i = 0; i < n_probes; i++) {
        ck_assert_int_eq(probes[i]->out.finish, REQ_FINISH_ERROR);
        sched_req_unref(probes[i]);
    }
    check_stopped(s, cs, 2, n_probes);
    clients_free(cs, 2);
    sched_free(s);
    eng_model_free(m);
}
END_TEST

START_TEST(test_seeded_sampling_batch_invariant) {
    struct eng_model *m = load_model(0);
    char alone[4096];
    struct sched *s = sched_new(m, NULL, on_notify, NULL);
    ck_assert_int_eq(sched_start(s), 0);
    struct client c;
    struct sched_req *r = make_req(6, 9, 16);
    r->p.smp.temperature = 1.0f;
    r->p.smp.seed = 1234;
    r->p.smp.has_seed = 1;
    client_submit(s, &c, r);
    wait_all(&c, 1, 60);
    snprintf(alone, sizeof(alone), "%s", c.text);
    clients_free(&c, 1);
    enum { N = 5 };
    struct client cs[N];
    for (int i = 0; i < N; i++) {
        struct sched_req *q = make_req(6 + (i ? i * 5 : 0), i ? 20 + i : 9, 16);
        q->p.smp.temperature = 1.0f;
        q->p.smp.seed = i ? 99 + (uint64_t)i : 1234;
        q->p.smp.has_seed = 1;
        client_submit(s, &cs[i], q);
    }
    wait_all(cs, N, 60);
    ck_assert_str_eq(cs[0].text, alone);
    clients_free(cs, N);
    sched_free(s);
    eng_model_free(m);
}
END_TEST

/* Constrained decoding under continuous batching: constrained and free
 * sequences in the same steps, under preemption (the matcher follows the kept
 * tokens); each constrained output is the one it gets alone, and only uses
 * characters the grammar allows. */
static struct sched_req *constrained_req(int i) {
    struct sched_req *r = make_req(40, 50 + i, 24);
    r->p.smp.temperature = 1.0f;
    r->p.smp.seed = 77 + (uint64_t)i;
    r->p.smp.has_seed = 1;
    if (i % 2 == 0) {
        const char *g = "root ::= [a-z ]{4,} \"!\"";
        char err[128];
        ck_assert_int_eq(gram_compile_gbnf(&r->p.grammar, g, strlen(g), err, sizeof err), 0);
    }
    return r;
}

START_TEST(test_constrained_batch_preempt) {
    struct eng_model *m = load_model(6);
    enum { N = 6 };
    char alone[N][4096];
    int fin[N];
    for (int i = 0; i < N; i++) {
        struct sched *s = sched_new(m, NULL, on_notify, NULL);
        ck_assert_int_eq(sched_start(s), 0);
        struct client c;
        client_submit(s, &c, constrained_req(i));
        wait_all(&c, 1, 60);
        fin[i] = c.last.finish; /* LENGTH, or STOP after the grammar's final "!" */
        ck_assert(fin[i] == REQ_FINISH_LENGTH || (fin[i] == REQ_FINISH_STOP && i % 2 == 0));
        snprintf(alone[i], sizeof(alone[i]), "%s", c.text);
        clients_free(&c, 1);
        sched_free(s);
    }
    struct sched *s = sched_new(m, NULL, on_notify, NULL);
    ck_assert_int_eq(sched_start(s), 0);
    struct client cs[N];
    for (int i = 0; i < N; i++) client_submit(s, &cs[i], constrained_req(i));
    wait_all(cs, N, 120);
    for (int i = 0; i < N; i++) {
        ck_assert_str_eq(cs[i].text, alone[i]);
        ck_assert_int_eq(cs[i].last.finish, fin[i]);
        if (i % 2) continue;
        ck_assert_int_gt(cs[i].len, 0);
        for (size_t k = 0; k < cs[i].len; k++)
            ck_assert_msg((cs[i].text[k] >= 'a' && cs[i].text[k] <= 'z') || cs[i].text[k] == ' ' ||
                              (cs[i].text[k] == '!' && k == cs[i].len - 1),
                          "'%s'", cs[i].text);
    }
    end_preempted(s, m, cs, N);
}
END_TEST

int main(void) {
    const char *tmp = getenv("SLIMSERVE_TEST_TMP");
    snprintf(g_model_path, sizeof(g_model_path), "%s/sched_model_%d.gguf", tmp ? tmp : "/tmp", (int)getpid());
    snprintf(g_sub_path, sizeof(g_sub_path), "%s/sched_subllm_%d.gguf", tmp ? tmp : "/tmp", (int)getpid());
    Suite *su = suite_create("sched");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_kv_pool);
    tcase_add_test(tc, test_prefix_cache_pool);
    tcase_add_test(tc, test_prefix_cache_reuse);
    tcase_add_test(tc, test_alone_equals_concurrent);
    tcase_add_test(tc, test_logprobs);
    tcase_add_test(tc, test_subllm_level_pages);
    tcase_add_test(tc, test_subllm_alone_concurrent_preempt);
    tcase_add_test(tc, test_bias_and_penalties);
    tcase_add_test(tc, test_min_tokens_delays_stop);
    tcase_add_test(tc, test_chunked_prefill);
    tcase_add_test(tc, test_preemption_keeps_output);
    tcase_add_test(tc, test_constrained_batch_preempt);
    tcase_add_test(tc, test_stop_string);
    tcase_add_test(tc, test_stop_strings_leftmost);
    tcase_add_test(tc, test_cancel_and_limits);
    tcase_add_test(tc, test_seeded_sampling_batch_invariant);
    tcase_add_test(tc, test_stop_ends_everything);
    suite_add_tcase(su, tc);
    int nf = tu_check_run(su);
    remove(g_model_path);
    remove(g_sub_path);
    return nf != 0;
}
