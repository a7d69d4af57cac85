/* spec.c - speculative decoding without a draft model: n-gram (prompt
 * lookup) drafts, verified inside the normal ragged batch.
 *
 * Proposal: the sequence's last n tokens (n from --spec-ngram-max down to
 * --spec-ngram-min) are looked up among its earlier tokens (prompt and
 * output); the tokens that followed the most recent, longest match are the
 * drafts. An index of the ngram_min-grams (struct spec_seq) makes a lookup
 * cost at most SPEC_CHAIN_STEPS candidate checks, whatever the length.
 *
 * Verification: the step computes the last token and k drafts at positions
 * N .. N+k, with logits for each (row j predicts position N+j+1):
 *
 *     tokens  ... t[N-1] | t[N]  d[0]  d[1] ... d[k-1]
 *     rows                 r0    r1    r2   ... rk
 *     r_j is sampled with the sequence's own sampler; while the sample equals
 *     d[j], d[j] is accepted (its KV entry at N+1+j stays) and r_{j+1} is
 *     sampled; the first sample that differs (or the sample of r_k) is
 *     emitted too and ends the run.
 *
 * Each sample sees exactly the rows and RNG state that plain decoding would
 * (rows are bitwise independent of the batch, engine.h; the sampler's draws
 * are taken in the same order), so greedy and seeded output, logprobs, stop
 * strings and penalties are those of plain decoding. For a drafted token x
 * (a point mass), "accept iff the sample is x, else emit the sample" is the
 * standard rejection rule: x is kept with probability p(x), and the emitted
 * token otherwise follows p restricted to tokens != x.
 *
 * Rollback: KV entries past the accepted run are simply forgotten: the
 * sequence's length (n_computed) stops after it, the pages past it go back
 * (kv_table_trim), the prefix cache only ever names full pages of verified
 * tokens (kv_table_commit after the verification) and the sliding-window
 * layers slide by the verified length only (advance_kv slid by the last
 * token, the lower bound). The stale entries of the last page are
 * overwritten by the next step before anything reads them.
 *
 * Adaptive: each sequence keeps decayed counts of drafts tested and
 * accepted; with p their ratio (a prior of 1 in 2), the step takes the k
 * that maximises the expected tokens per cost,
 *     (1 + p + ... + p^k) / (1 + SPEC_ROW_COST * k),
 * none when k = 0 wins; a sequence told no while drafts were at hand still
 * tests one draft every SPEC_PROBE_EVERY steps, so it notices when its text
 * starts repeating. The step's room for drafts (--spec-max-batch-tokens)
 * keeps bigger decode batches free of them.
 *
 * Engine thread only.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "scheduler/sched_internal.h"

/* Candidates examined per lookup (the index chain is cut there). */
#define SPEC_CHAIN_STEPS 64
/* Cost of one draft row relative to a one-token decode step. Measured with
 * tools/bench_forward on Gemma 3 270M Q4_K_M, 2 cores: 1, 2 and 4 rows per
 * step took 17.6, 20.4 and 27.4 ms (0.16 to 0.19 per extra row). */
#define SPEC_ROW_COST 0.2
/* Weight of the past in the acceptance counts, per verification. */
#define SPEC_DECAY 0.8
/* A sequence the policy keeps off still tests one draft this often. */
#define SPEC_PROBE_EVERY 16

static uint32_t ngram_hash(const int32_t *t, int n) {
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < n; i++) {
        h ^= (uint32_t)t[i];
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 29;
    }
    return (uint32_t)(h ^ (h >> 32));
}

void spec_seq_free(struct spec_seq *sp) {
    free(sp->head);
    free(sp->chain);
    sp->head = sp->chain = NULL;
    sp->n_indexed = 0;
}

/* Allocates the index on first use (buckets: the power of two at or above
 * the sequence's capacity, at most 2^20; chains absorb the collisions). 0 or
 * SS_ENOMEM. */
static int index_init(struct seq *q) {
    struct spec_seq *sp = &q->sp;
    if (sp->head) return 0;
    uint32_t size = 64;
    while (size < (uint32_t)q->cap && size < (1u << 20)) size *= 2;
    sp->head = malloc(sizeof(int32_t) * size);
    sp->chain = malloc(sizeof(int32_t) * (size_t)q->cap);
    if (!sp->head || !sp->chain) {
        spec_seq_free(sp);
        return SS_ENOMEM;
    }
    memset(sp->head, 0xff, sizeof(int32_t) * size); /* -1: empty */
    sp->mask = size - 1;
    sp->n_indexed = 0;
    return 0;
}

/* Indexes every n-gram start that has a token after it. */
static void index_extend(struct seq *q, int n) {
    struct spec_seq *sp = &q->sp;
    const int32_t last = q->n_tokens - 1 - n;
    for (; sp->n_indexed <= last; sp->n_indexed++) {
        int32_t i = sp->n_indexed;
        uint32_t b = ngram_hash(q->tokens + i, n) & sp->mask;
        sp->chain[i] = sp->head[b];
        sp->head[b] = i;
    }
}

/* The drafts: what followed the most recent of the longest earlier matches
 * of the sequence's last n tokens (ngram_min <= n <= ngram_max), at most
 * max_k of them, into out. Returns how many (0: no match). */
static int find_draft(const struct sched *s, const struct seq *q, int max_k, int32_t *out) {
    const int nmin = s->opt.spec_ngram_min, nmax = s->opt.spec_ngram_max;
    const int32_t *t = q->tokens;
    const int32_t n = q->n_tokens;
    if (n <= nmin) return 0;
    const int32_t *suf = t + n - nmin;
    int32_t best = -1;
    int best_len = 0, steps = 0;
    for (int32_t i = q->sp.head[ngram_hash(suf, nmin) & q->sp.mask]; i >= 0 && steps < SPEC_CHAIN_STEPS;
         i = q->sp.chain[i], steps++) {
        if (memcmp(t + i, suf, sizeof(int32_t) * (size_t)nmin) != 0) continue; /* a bucket twin */
        int len = nmin; /* extend the match backwards: t[i - 1 - e] vs t[n - nmin - 1 - e] */
        while (len < nmax && i - (len - nmin) - 1 >= 0 && t[i - (len - nmin) - 1] == t[n - len - 1]) len++;
        if (len > best_len) { /* the chain runs most recent first: ties keep the recent one */
            best = i;
            best_len = len;
            if (len == nmax) break;
        }
    }
    if (best < 0) return 0;
    int32_t from = best + nmin; /* < n: only starts with a token after them are indexed */
    int k = 0;
    while (k < max_k && from + k < n) {
        out[k] = t[from + k];
        k++;
    }
    return k;
}

/* The number of drafts worth verifying at acceptance p (0 .. max_k). */
static int best_k(double p, int max_k) {
    double e = 1.0, pk = 1.0, best = 1.0;
    int k_best = 0;
    for (int k = 1; k <= max_k; k++) {
        pk *= p;
        e += pk;
        double g = e / (1.0 + SPEC_ROW_COST * k);
        if (g > best) {
            best = g;
            k_best = k;
        }
    }
    return k_best;
}

int spec_propose(struct sched *s, struct seq *q, int max_k) {
    const struct req_params *p = &q->req->p;
    if (!s->opt.spec_ngram || s->n_levels != 1 || q->pool || p->spec_max == 0) return 0;
    if (q->n_tokens - q->n_computed != 1 || q->n_gen < 1) return 0; /* decoding only */
    int k = p->spec_max > 0 ? p->spec_max : s->opt.spec_tokens;
    if (k > max_k) k = max_k;
    if (k > p->max_tokens - q->n_gen - 1) k = p->max_tokens - q->n_gen - 1; /* tokens it may still emit */
    if (k > s->n_ctx - q->n_tokens) k = s->n_ctx - q->n_tokens;          /* positions N+1 .. N+k < n_ctx */
    if (k > REQ_SPEC_MAX_TOKENS) k = REQ_SPEC_MAX_TOKENS;
    if (k <= 0 || index_init(q) != 0) return 0;
    index_extend(q, s->opt.spec_ngram_min);
    int32_t draft[REQ_SPEC_MAX_TOKENS];
    int found = find_draft(s, q, k, draft);
    if (found == 0) return 0;
    int want = best_k((q->sp.acc + 1.0) / (q->sp.trials + 2.0), found);
    if (want == 0) {
        if (++q->sp.idle < SPEC_PROBE_EVERY) return 0;
        want = 1; /* probe */
    }
    q->sp.idle = 0;
    memcpy(q->sp.draft, draft, sizeof(int32_t) * (size_t)want);
    return want;
}

/* The acceptance counts and the statistics of one verification. */
static void spec_account(struct sched *s, struct spec_seq *sp, int n_draft, int tested, int accepted) {
    sp->acc = sp->acc * SPEC_DECAY + accepted;
    sp->trials = sp->trials * SPEC_DECAY + tested;
    stats_on_spec(s, n_draft, accepted);
}

void spec_verify(struct sched *s, struct seq *q, float *rows) {
    struct spec_seq *sp = &q->sp;
    const int k = sp->n_draft;
    int32_t draft[REQ_SPEC_MAX_TOKENS];
    memcpy(draft, sp->draft, sizeof(int32_t) * (size_t)k);
    sp->n_draft = 0;
    int accepted = 0, tested = 0;
    for (int j = 0; j <= k; j++) {
        int32_t tok = seq_sample(s, q, rows + (size_t)j * (size_t)s->n_vocab);
        if (tok < 0) {
            spec_account(s, sp, k, tested, accepted);
            sched_finish(s, q->req, REQ_FINISH_ERROR, tok, q->gram_msg);
            return;
        }
        stats_on_token(s, q, sched_now());
        int hit = j < k && tok == draft[j];
        tested += j < k;
        if (hit) { /* the draft's KV entry (position n_computed) was computed with this token */
            accepted++;
            q->n_computed++;
        }
        int err = 0;
        const char *msg = NULL;
        int finish = seq_accept_token(s, q, tok, &err, &msg);
        if (finish != REQ_FINISH_NONE) {
            spec_account(s, sp, k, tested, accepted);
            sched_finish(s, q->req, finish, err, msg);
            return;
        }
        if (!hit) break;
    }
    spec_account(s, sp, k, tested, accepted);
    /* KV: the verified length; pages for the next token stay, the rest go */
    q->level_n_past[0] = q->n_computed;
    kv_table_trim(s->pool, &q->tables[0], (int64_t)q->n_computed + 1);
    kv_table_commit(s->pool, &q->tables[0], q->tokens, q->n_computed);
    kv_table_slide(s->pool, &q->tables[0], q->n_computed);
}
