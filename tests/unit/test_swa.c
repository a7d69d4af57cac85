/* test_swa.c - sliding-window KV recycling (issue 12): local layers' pages
 * that no later query reads go back to the pool (scheduler/kv.h).
 *
 *   - kv.c: kv_table_slide frees exactly the local units before the window,
 *     keeps hashed ones cached, and the prefix rule cuts a hit whose window
 *     lost its local units;
 *   - engine: unset entries before a local layer's window give bitwise the
 *     same logits as full tables; a missing entry the step needs is rejected;
 *   - scheduler: greedy tokens and logprobs are bitwise the same with and
 *     without recycling, alone or batched with other lengths and chunked
 *     prefill, while the peak units in use drop; a cached prefix longer than
 *     the window is reused and gives the same output;
 *   - the real Gemma 3 270M (window 512) on a 700-token prompt, when
 *     SLIMSERVE_GEMMA_GGUF (or the package) provides it;
 *   - the KV bytes per sequence at 2k, 8k, 32k tokens for Gemma 3 270M's
 *     shape, with and without recycling, measured on kv.c's tables (printed:
 *     README "Sliding-window KV").
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "kernels/ss_error.h"
#include "scheduler/kv.h"
#include "scheduler/sched.h"
#include "schedtest.h"
#include "testutil.h"
#include "tools/genmodel.h"
#include "tu_check.h"

#define WINDOW 32
static char g_gemma_gen[512];

/* ---- kv.c ---- */

static int32_t count_none(const struct kv_table *t, int row) {
    int32_t n = 0;
    for (int32_t i = 0; i < t->n_pages; i++) n += t->units[row][i] == KV_NONE;
    return n;
}

START_TEST(test_kv_slide) {
    /* 3 rows, the last 2 local (window 40): 7 pages for 100 tokens = 21 units */
    struct kv_pool *p = kv_pool_new(30, 3, 0);
    struct kv_table a;
    kv_table_init_swa(&a, 3, 2, 40);
    ck_assert_int_eq(kv_table_reserve(p, &a, 100), 0);
    ck_assert_int_eq(kv_pool_n_free(p), 9);
    kv_table_slide(p, &a, 55); /* first read 16: page 0 only */
    ck_assert_int_eq(a.n_slid, 1);
    kv_table_slide(p, &a, 100); /* first read 61: pages 0..2 are dead */
    ck_assert_int_eq(a.n_slid, 3);
    ck_assert_int_eq(kv_pool_n_free(p), 9 + 6);
    ck_assert_int_eq(kv_table_n_units(&a), 21 - 6);
    ck_assert_int_eq(count_none(&a, 0), 0); /* the global row keeps every page */
    ck_assert_int_eq(count_none(&a, 1), 3);
    ck_assert_int_eq(count_none(&a, 2), 3);
    ck_assert_int_ne(a.units[1][3], KV_NONE);
    /* the freed units serve another table; nothing is handed out twice */
    struct kv_table b;
    kv_table_init_swa(&b, 3, 2, 40);
    ck_assert_int_eq(kv_table_reserve(p, &b, 80), 0);
    ck_assert_int_eq(kv_pool_n_free(p), 0);
    int seen[30] = {0};
    for (int r = 0; r < 3; r++)
        for (int32_t i = 0; i < 7; i++) {
            if (a.units[r][i] != KV_NONE) seen[a.units[r][i]]++;
            if (i < 5) seen[b.units[r][i]]++;
        }
    for (int i = 0; i < 30; i++) ck_assert_int_eq(seen[i], 1);
    kv_table_trim(p, &a, 20); /* trimming below the slid pages stays consistent */
    ck_assert_int_eq(a.n_slid, 2);
    kv_table_release(p, &a);
    kv_table_release(p, &b);
    ck_assert_int_eq(kv_pool_n_free(p), 30);
    ck_assert_int_eq(kv_pool_n_cached(p), 0);
    kv_table_free(&a);
    kv_table_free(&b);
    kv_pool_free(p);
}
END_TEST

START_TEST(test_kv_slide_prefix_rule) {
    struct kv_pool *p = kv_pool_new(21, 3, 1);
    int32_t tok[100];
    for (int i = 0; i < 100; i++) tok[i] = 500 + i;
    struct kv_table a, b, c, d;
    kv_table_init_swa(&a, 3, 2, 40);
    kv_table_init_swa(&b, 3, 2, 40);
    kv_table_init_swa(&c, 3, 2, 40);
    kv_table_init_swa(&d, 3, 2, 40);
    ck_assert_int_eq(kv_table_reserve(p, &a, 100), 0);
    kv_table_commit(p, &a, tok, 100);
    kv_table_slide(p, &a, 100);
    /* hashed blocks: their slid local parts stay cached, not freed */
    ck_assert_int_eq(kv_pool_n_cached(p), 6);
    ck_assert_int_eq(kv_pool_n_free(p), 6);
    kv_table_release(p, &a);
    ck_assert_int_eq(kv_pool_n_cached(p), 18);
    /* 48 tokens: the next query reads from 9, so pages 0..2 need theirs */
    ck_assert_int_eq(kv_table_match_prefix(p, &b, tok, 60), 48);
    ck_assert_int_eq(b.n_slid, 0);
    kv_table_release(p, &b);
    /* 96 tokens: the next query reads from 57 (page 3), pages 3..5 have theirs */
    ck_assert_int_eq(kv_table_match_prefix(p, &b, tok, 100), 96);
    ck_assert_int_eq(b.n_slid, 3);
    ck_assert_int_eq(count_none(&b, 1), 3);
    ck_assert_int_eq(count_none(&b, 0), 0);
    kv_table_release(p, &b);
    /* a 3-page table evicts the 3 oldest entries: the slid local parts of 0..2 */
    ck_assert_int_eq(kv_table_reserve(p, &d, 48), 0);
    ck_assert_int_eq(kv_pool_n_free(p), 12);
    /* 60 tokens would need local units on pages 0..2: no usable hit at all */
    ck_assert_int_eq(kv_table_match_prefix(p, &c, tok, 60), 0);
    ck_assert_int_eq(c.n_pages, 0);
    /* the longer prefix still works: its window lies in pages 3..5 */
    ck_assert_int_eq(kv_table_match_prefix(p, &c, tok, 100), 96);
    kv_table_release(p, &c);
    kv_table_release(p, &d);
    /* filling the pool evicts everything; counts come back whole */
    ck_assert_int_eq(kv_table_reserve(p, &d, 16 * 7), 0);
    ck_assert_int_eq(kv_pool_n_cached(p), 0);
    kv_table_release(p, &d);
    ck_assert_int_eq(kv_pool_n_free(p), 21);
    ck_assert_int_eq(kv_table_match_prefix(p, &c, tok, 100), 0);
    kv_table_free(&a);
    kv_table_free(&b);
    kv_table_free(&c);
    kv_table_free(&d);
    kv_pool_free(p);
}
END_TEST

/* Cached blocks that lost their local part hold fewer units than a whole
 * block: a reservation may need to evict them for their block ids. */
START_TEST(test_kv_block_ids) {
    struct kv_pool *p = kv_pool_new(8, 2, 1);
    int32_t x[64], y[32];
    for (int i = 0; i < 64; i++) x[i] = 100 + i;
    for (int i = 0; i < 32; i++) y[i] = 900 + i;
    struct kv_table a, c, e;
    kv_table_init_swa(&a, 2, 1, 1); /* window 1: every full page slides */
    kv_table_init_swa(&c, 2, 1, 1);
    kv_table_init_swa(&e, 2, 1, 1);
    ck_assert_int_eq(kv_table_reserve(p, &a, 64), 0);
    kv_table_commit(p, &a, x, 64);
    kv_table_slide(p, &a, 64);
    kv_table_release(p, &a);
    ck_assert_int_eq(kv_pool_n_cached(p), 8);
    ck_assert_int_eq(kv_table_reserve(p, &c, 32), 0); /* evicts a's 4 local parts */
    kv_table_commit(p, &c, y, 32);
    kv_table_slide(p, &c, 32);
    kv_table_release(p, &c);
    /* 6 cached blocks (4 of one unit), 2 free block ids, 8 evictable units */
    ck_assert_int_eq(kv_pool_n_free(p), 8);
    ck_assert_int_eq(kv_table_reserve(p, &e, 48), 0);
    ck_assert_int_eq(e.n_pages, 3);
    kv_table_release(p, &e);
    ck_assert_int_eq(kv_table_match_prefix(p, &c, y, 33), 32); /* the newest entries survived */
    kv_table_release(p, &c);
    ck_assert_int_eq(kv_pool_n_free(p), 8);
    kv_table_free(&a);
    kv_table_free(&c);
    kv_table_free(&e);
    kv_pool_free(p);
}
END_TEST

/* ---- a generated gemma3 model with a 32-token window ---- */

static void make_gemma_gen(void) {
    if (access(g_gemma_gen, R_OK) == 0) return;
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.arch = "gemma3";
    o.dim = 64;
    o.n_layers = 7; /* pattern 6: layers 0-4 and 6 local, 5 global */
    o.n_heads = 4;
    o.n_kv_heads = 2;
    o.head_dim = 16;
    o.ffn_dim = 128;
    o.n_vocab = 300;
    o.n_ctx = 512;
    o.swa_window = WINDOW;
    o.seed = 21;
    char err[256];
    ck_assert_msg(genmodel_write(&o, g_gemma_gen, err, sizeof(err)) == 0, "genmodel: %s", err);
}

static struct eng_model *load_gen(size_t kv_pages) {
    make_gemma_gen();
    struct eng_options eo = {.n_threads = 1, .kv_type = ENG_KV_F32, .max_batch_tokens = 256};
    struct eng_model *m = tu_load(g_gemma_gen, &eo);
    if (kv_pages) { /* the pool in pages */
        eo.kv_bytes = eng_model_kv_bytes_per_token(m) * 16 * kv_pages;
        eng_model_free(m);
        m = tu_load(g_gemma_gen, &eo);
    }
    return m;
}

/* Unsets (-1) local layers' entries before the window of a query at n_past. */
static void unset_dead(const struct eng_model *m, struct eng_kv_tables *t, int n_past) {
    for (int l = 0; l < t->n_layers; l++) {
        int w = eng_model_layer_window(m, l);
        if (w <= 0 || n_past - w + 1 <= 0) continue;
        for (int p = 0; p < (n_past - w + 1) / 16; p++) t->units[l * t->n_pages + p] = -1;
    }
}

START_TEST(test_engine_unset_entries) {
    struct eng_model *m = load_gen(0);
    const int V = eng_model_config(m)->n_vocab, N = 150, P = 10;
    ck_assert_int_eq(eng_model_config(m)->n_swa_layers, 6);
    ck_assert_int_eq(eng_model_layer_window(m, 0), WINDOW);
    ck_assert_int_eq(eng_model_layer_window(m, 5), 0);
    int32_t toks[150], pa[10], pb[10];
    tu_prompt(toks, N, V, 3);
    for (int i = 0; i < P; i++) pa[i] = i, pb[i] = P + i;
    struct eng_kv_tables ta = {0}, tb = {0};
    ck_assert_int_eq(eng_kv_identity_tables(&ta, m, pa, P), 0);
    ck_assert_int_eq(eng_kv_identity_tables(&tb, m, pb, P), 0);
    float *la = malloc(sizeof(float) * (size_t)V), *lb = malloc(sizeof(float) * (size_t)V);
    /* uneven chunks, then single tokens: every step compares the last logits */
    int steps[] = {37, 21, 40, 19, 1, 1, 1, 30};
    int pos = 0;
    for (size_t k = 0; k < sizeof steps / sizeof *steps; k++) {
        int n = steps[k];
        struct eng_seq sa = {.n_tok = n, .n_past = pos, .want_logits = 1, .layer_pages = ta.rows,
                             .layer_n_pages = P};
        struct eng_seq sb = sa;
        sb.layer_pages = tb.rows;
        unset_dead(m, &tb, pos);
        if (pos - WINDOW + 1 >= 16) { /* a needed local entry missing is refused */
            int l0 = 0, p0 = (pos - WINDOW + 1) / 16, keep = tb.units[l0 * P + p0];
            tb.units[l0 * P + p0] = -1;
            struct eng_batch bad = {.tokens = toks + pos, .n_tokens = n, .seqs = &sb, .n_seqs = 1};
            ck_assert_int_eq(eng_forward(m, &bad, lb), SS_EINVAL);
            tb.units[l0 * P + p0] = keep;
            keep = tb.units[5 * P + 0]; /* the global layer needs every page */
            tb.units[5 * P + 0] = -1;
            ck_assert_int_eq(eng_forward(m, &bad, lb), SS_EINVAL);
            tb.units[5 * P + 0] = keep;
        }
        struct eng_batch ba = {.tokens = toks + pos, .n_tokens = n, .seqs = &sa, .n_seqs = 1};
        struct eng_batch bb = {.tokens = toks + pos, .n_tokens = n, .seqs = &sb, .n_seqs = 1};
        ck_assert_int_eq(eng_forward(m, &ba, la), 0);
        ck_assert_int_eq(eng_forward(m, &bb, lb), 0);
        ck_assert_msg(memcmp(la, lb, sizeof(float) * (size_t)V) == 0, "logits differ after %d tokens", pos + n);
        pos += n;
    }
    ck_assert_int_eq(tb.units[0], -1); /* recycling really happened */
    free(la);
    free(lb);
    eng_kv_tables_free(&ta);
    eng_kv_tables_free(&tb);
    eng_model_free(m);
}
END_TEST

/* ---- scheduler ---- */

static struct sched *g_peak_sched;
static int32_t g_peak_units;

static void on_notify_peak(void *ud, struct sched_req *r) {
    struct sched_stats st;
    sched_get_stats(g_peak_sched, &st);
    pthread_mutex_lock(&g_lock);
    if (st.pages_used > g_peak_units) g_peak_units = st.pages_used;
    pthread_mutex_unlock(&g_lock);
    on_notify(ud, r);
}

/* Runs the requests (prompts prompt[i] of n[i] tokens, 24 greedy tokens with
 * 3 logprobs) together on one scheduler; returns the peak units in use. */
static int32_t run_set(struct eng_model *m, const struct sched_options *so, int32_t *const *prompt,
                       const int32_t *n, int cnt, struct client *cs) {
    struct sched *s = sched_new(m, so, on_notify_peak, NULL);
    ck_assert_ptr_nonnull(s);
    g_peak_sched = s;
    g_peak_units = 0;
    ck_assert_int_eq(sched_start(s), 0);
    for (int i = 0; i < cnt; i++) {
        struct sched_req *r = make_req(1, 0, 24);
        free(r->p.prompt);
        r->p.prompt = malloc(sizeof(int32_t) * (size_t)n[i]);
        memcpy(r->p.prompt, prompt[i], sizeof(int32_t) * (size_t)n[i]);
        r->p.n_prompt = n[i];
        r->p.logprobs = 3;
        client_submit(s, &cs[i], r);
    }
    wait_all(cs, cnt, 120);
    sched_free(s);
    return g_peak_units;
}

static void same_output(const struct client *a, const struct client *b) {
    ck_assert_msg(a->last.finish == REQ_FINISH_LENGTH && a->last.n_gen == 24, "finish %d after %d tokens: %s",
                  a->last.finish, a->last.n_gen, a->last.errmsg);
    ck_assert_str_eq(a->text, b->text);
    ck_assert_int_eq(a->n_toks, b->n_toks);
    for (int i = 0; i < a->n_toks; i++) {
        ck_assert_int_eq(a->toks[i].id, b->toks[i].id);
        ck_assert_msg(memcmp(&a->toks[i].lp, &b->toks[i].lp, sizeof(float)) == 0, "logprob %d differs", i);
    }
}

static void pattern(int32_t *t, int n, int salt) {
    for (int i = 0; i < n; i++) t[i] = 3 + (salt * 31 + i * 7 + i * i % 13) % 250;
}

START_TEST(test_sched_recycle_equal) {
    struct eng_model *m = load_gen(0);
    enum { CNT = 3 };
    int32_t n[CNT] = {40, 130, 210};
    int32_t *pr[CNT];
    for (int i = 0; i < CNT; i++) {
        pr[i] = malloc(sizeof(int32_t) * (size_t)n[i]);
        pattern(pr[i], n[i], i + 1);
    }
    struct client keep[CNT], both[CNT];
    struct sched_options off = {.no_swa_recycle = 1, .no_prefix_cache = 1};
    int32_t peak_keep = 0;
    for (int i = 0; i < CNT; i++) { /* each alone, every page kept */
        int32_t pk = run_set(m, &off, &pr[i], &n[i], 1, &keep[i]);
        if (i == CNT - 1) peak_keep = pk;
    }
    /* the longest alone with recycling: same output, fewer units */
    struct client one;
    struct sched_options on = {.no_prefix_cache = 1, .max_batched_tokens = 48};
    int32_t peak_on = run_set(m, &on, &pr[CNT - 1], &n[CNT - 1], 1, &one);
    same_output(&one, &keep[CNT - 1]);
    ck_assert_msg(peak_on > 0 && peak_on * 2 < peak_keep, "peak units: %d recycled vs %d kept", peak_on,
                  peak_keep);
    /* all together, chunked prefill (48 tokens a step), recycling */
    run_set(m, &on, pr, n, CNT, both);
    for (int i = 0; i < CNT; i++) same_output(&both[i], &keep[i]);
    clients_free(keep, CNT);
    clients_free(both, CNT);
    clients_free(&one, 1);
    for (int i = 0; i < CNT; i++) free(pr[i]);
    eng_model_free(m);
}
END_TEST

START_TEST(test_sched_prefix_longer_than_window) {
    struct eng_model *m = load_gen(0);
    int32_t a[200], b[200];
    pattern(a, 200, 5);
    memcpy(b, a, sizeof a);
    for (int i = 100; i < 200; i++) b[i] = 3 + (b[i] + 17) % 250; /* shares 100 tokens */
    int32_t *pr[3] = {a, a, b}, n[3] = {200, 200, 200};
    struct client ref[3], got[3];
    struct sched_options off = {.no_prefix_cache = 1};
    for (int i = 0; i < 3; i += 2) run_set(m, &off, &pr[i], &n[i], 1, &ref[i]);
    /* one scheduler, one after the other: the 2nd and 3rd hit the cache */
    struct sched *s = sched_new(m, NULL, on_notify_peak, NULL);
    g_peak_sched = s;
    ck_assert_int_eq(sched_start(s), 0);
    for (int i = 0; i < 3; i++) {
        struct sched_req *r = make_req(1, 0, 24);
        free(r->p.prompt);
        r->p.prompt = malloc(sizeof a);
        memcpy(r->p.prompt, pr[i], sizeof a);
        r->p.n_prompt = 200;
        r->p.logprobs = 3;
        client_submit(s, &got[i], r);
        wait_all(&got[i], 1, 120);
    }
    struct sched_stats st;
    sched_get_stats(s, &st);
    /* 192 tokens (12 full pages; the window of the next query is in pages
     * 10-11, whose local units were cached), then 96 of the shared 100 */
    ck_assert_uint_eq(st.n_prefix_hits, 192 + 96);
    ck_assert_int_eq(got[0].last.n_cached, 0);
    ck_assert_int_eq(got[1].last.n_cached, 192);
    ck_assert_int_eq(got[2].last.n_cached, 96);
    sched_free(s);
    same_output(&got[0], &ref[0]);
    same_output(&got[1], &ref[0]);
    same_output(&got[2], &ref[2]);
    clients_free(ref, 1);
    clients_free(ref + 2, 1);
    clients_free(got, 3);
    eng_model_free(m);
}
END_TEST

/* ---- the real model ---- */

START_TEST(test_gemma_real_recycle) {
    char path[PATH_MAX], why[512];
    if (getenv("SLIMSERVE_SANITIZED")) { /* 3 x 700 Gemma tokens take minutes under ASan; the
                                          * generated-model tests above run the same paths */
        printf("SKIP test_gemma_real_recycle: sanitizer build (the release pass runs it)\n");
        return;
    }
    if (!tu_gemma_path(path, sizeof path, why, sizeof why)) {
        printf("SKIP test_gemma_real_recycle: %s\n", why);
        return;
    }
    struct eng_options eo = {.n_threads = 0, .n_ctx = 2048, .kv_default_seqs = 1, .max_batch_tokens = 1024};
    struct eng_model *m = tu_load(path, &eo);
    ck_assert_int_eq(eng_model_layer_window(m, 0), 512);
    ck_assert_int_eq(eng_model_layer_window(m, 5), 0);
    int32_t p[700];
    pattern(p, 700, 9);
    int32_t *pr = p, n = 700;
    struct client keep, on, cached;
    /* 700 tokens in one step without recycling, in 256-token chunks with it */
    struct sched_options off = {.no_swa_recycle = 1, .no_prefix_cache = 1, .max_batched_tokens = 1024};
    struct sched_options rec = {.max_batched_tokens = 256};
    int32_t pk = run_set(m, &off, &pr, &n, 1, &keep);
    struct sched *s = sched_new(m, &rec, on_notify_peak, NULL);
    g_peak_sched = s;
    g_peak_units = 0;
    ck_assert_int_eq(sched_start(s), 0);
    struct client *cs[2] = {&on, &cached};
    for (int i = 0; i < 2; i++) {
        struct sched_req *r = make_req(1, 0, 24);
        free(r->p.prompt);
        r->p.prompt = malloc(sizeof p);
        memcpy(r->p.prompt, p, sizeof p);
        r->p.n_prompt = 700;
        r->p.logprobs = 3;
        client_submit(s, cs[i], r);
        wait_all(cs[i], 1, 300);
    }
    int32_t po = g_peak_units;
    sched_free(s);
    same_output(&on, &keep);
    same_output(&cached, &keep);
    ck_assert_int_eq(cached.last.n_cached, 688);
    printf("gemma 270M, 700-token prompt + 24: peak units %d kept, %d recycled\n", pk, po);
    ck_assert_int_lt(po, pk);
    clients_free(&keep, 1);
    clients_free(&on, 1);
    clients_free(&cached, 1);
    eng_model_free(m);
}
END_TEST

/* ---- memory per sequence ---- */

/* Units one sequence holds on kv.c's tables with Gemma 3 270M's shape (18
 * layers, 15 local, window 512): prefill in chunks of 2048 (reserve, step,
 * slide), then one decode step. *peak: the most during the run (a prefill
 * chunk's pages are all reserved before its step); returns what it holds
 * while decoding (after the last slide). */
static int64_t seq_units(int64_t n_tokens, int recycle, int64_t *peak) {
    const int L = 18, n_local = 15;
    struct kv_pool *p = kv_pool_new((int32_t)(L * kv_pages_for(n_tokens + 1)), L, 0);
    ck_assert_ptr_nonnull(p);
    struct kv_table t;
    kv_table_init_swa(&t, L, recycle ? n_local : 0, 512);
    int64_t done = 0;
    *peak = 0;
    while (done <= n_tokens) {
        int64_t chunk = done < n_tokens ? (n_tokens - done < 2048 ? n_tokens - done : 2048) : 1;
        ck_assert_int_eq(kv_table_reserve(p, &t, done + chunk), 0);
        if (kv_table_n_units(&t) > *peak) *peak = kv_table_n_units(&t);
        done += chunk;
        kv_table_slide(p, &t, done);
    }
    int64_t held = kv_table_n_units(&t);
    ck_assert_int_eq(held, (int64_t)kv_pool_n_units(p) - kv_pool_n_free(p));
    kv_table_release(p, &t);
    kv_table_free(&t);
    kv_pool_free(p);
    return held;
}

START_TEST(test_memory_per_sequence) {
    /* unit = 16 slots * (K + V) * kv_dim 256 * fp16 = 16 KiB for Gemma 3 270M */
    const double mib = 16.0 * 2 * 256 * 2 / 1048576.0;
    const int64_t lens[3] = {2048, 8192, 32768};
    for (int i = 0; i < 3; i++) {
        int64_t pk_before, pk_after;
        int64_t before = seq_units(lens[i], 0, &pk_before), after = seq_units(lens[i], 1, &pk_after);
        ck_assert_int_eq(before, 18 * kv_pages_for(lens[i] + 1));
        ck_assert_int_eq(pk_before, before);
        ck_assert_int_lt(after, before);
        printf("KV per sequence at %5lld tokens (Gemma 3 270M, fp16): kept %6.1f MiB; recycled %6.1f MiB "
               "decoding (%3.0f%%), %6.1f MiB peak in 2048-token prefill chunks\n",
               (long long)lens[i], (double)before * mib, (double)after * mib,
               100.0 * (double)after / (double)before, (double)pk_after * mib);
    }
    /* 32k decoding: 3 global layers hold 2049 pages; 15 local ones the pages
     * from (32768 - 511) / 16 = 2016 on: 33 each */
    int64_t pk;
    ck_assert_int_eq(seq_units(32768, 1, &pk), 3 * 2049 + 15 * 33);
    /* peak: the window plus one chunk, ceil((511 + 2048) / 16) + 1 pages at most */
    ck_assert_int_le(pk, 3 * 2049 + 15 * 162);
}
END_TEST

/* The default context: Gemma 3's context_length where the pool holds it,
 * the 8192 cap for models without sliding-window layers. */
START_TEST(test_default_context) {
    struct genmodel_opts o;
    genmodel_opts_default(&o);
    o.arch = "gemma3";
    o.dim = 32;
    o.n_layers = 6;
    o.n_heads = 2;
    o.n_kv_heads = 1;
    o.head_dim = 16;
    o.ffn_dim = 64;
    o.n_vocab = 300;
    o.n_ctx = 32768;
    o.swa_window = 64;
    char path[512], err[256];
    tu_tmp_file(path, sizeof path, "ctx_gemma.gguf");
    ck_assert_msg(genmodel_write(&o, path, err, sizeof err) == 0, "genmodel: %s", err);
    struct eng_options eo = {.n_threads = 1};
    struct eng_model *m = tu_load(path, &eo);
    ck_assert_int_eq(eng_model_n_ctx(m), 32768);
    ck_assert_int_eq(eng_model_n_pages(m), 4 * 8192 / 16); /* the default pool is unchanged */
    size_t per_page = eng_model_kv_bytes_per_token(m) * 16;
    eng_model_free(m);
    eo.kv_bytes = per_page * 1000; /* a pool of 16000 tokens: the context follows it */
    m = tu_load(path, &eo);
    ck_assert_int_eq(eng_model_n_ctx(m), 16000);
    eng_model_free(m);
    eo.kv_bytes = per_page * 100; /* never below the old cap */
    m = tu_load(path, &eo);
    ck_assert_int_eq(eng_model_n_ctx(m), 8192);
    eng_model_free(m);
    eo.kv_bytes = 0;
    eo.n_ctx = 4096; /* an explicit context wins */
    m = tu_load(path, &eo);
    ck_assert_int_eq(eng_model_n_ctx(m), 4096);
    eng_model_free(m);
    remove(path);
    o.arch = "llama"; /* no sliding window: capped at 8192 */
    o.swa_window = 0;
    o.head_dim = 0;
    ck_assert_msg(genmodel_write(&o, path, err, sizeof err) == 0, "genmodel: %s", err);
    eo.n_ctx = 0;
    m = tu_load(path, &eo);
    ck_assert_int_eq(eng_model_n_ctx(m), 8192);
    eng_model_free(m);
    remove(path);
}
END_TEST

int main(void) {
    tu_init("test_swa");
    tu_tmp_file(g_gemma_gen, sizeof g_gemma_gen, "gemma_swa.gguf");
    Suite *su = suite_create("swa");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_kv_slide);
    tcase_add_test(tc, test_kv_slide_prefix_rule);
    tcase_add_test(tc, test_kv_block_ids);
    tcase_add_test(tc, test_engine_unset_entries);
    tcase_add_test(tc, test_sched_recycle_equal);
    tcase_add_test(tc, test_sched_prefix_longer_than_window);
    tcase_add_test(tc, test_gemma_real_recycle);
    tcase_add_test(tc, test_memory_per_sequence);
    tcase_add_test(tc, test_default_context);
    suite_add_tcase(su, tc);
    int nf = tu_check_run(su);
    remove(g_gemma_gen);
    return nf != 0;
}
