/* attention.c - causal paged attention over a ragged batch (CPU backend).
 *
 * One work item = (sequence, token, up to KCPU_ATT_NQ query heads of one KV
 * group), so each cached K/V row loaded feeds several heads. Items are
 * independent and run in parallel (the backend's pool, taken one at a time
 * from a shared counter: later tokens see more keys). Each item
 * walks its KV range in chunks of ATT_CHUNK positions (chunk boundaries depend
 * only on the item's own range) with an online softmax in fp32:
 *     s_i = scale * q.k_i  (then softcap * tanh(s_i / softcap) if softcap > 0)
 *     m' = max(m, max_i s_i);  o = o*e^(m-m') + sum_i e^(s_i-m') v_i;  l likewise
 *     out = o / l
 * A head's result depends only on its q row and the cache, never on the batch
 * or on the other heads of its item (per-(head, key) and per-(head, element)
 * fma chains, see kcpu.h).
 *
 *   position P of a sequence -> page = pages[P / 16], slot = P % 16
 *   K row of kv head g: k + ((page*16 + slot) * kv_dim + g*head_dim) elements
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"

#define ATT_CHUNK 32
#define ATT_MAX_HEAD 1024
#define NQ KCPU_ATT_NQ

struct att_job {
    const struct kcpu_isa *isa;
    float *out;
    const float *q;
    const struct be_kv_layer *kv;
    const struct be_attn_params *p;
    int kv_dim, qdim, group, nsub; /* nsub = sub-groups of <= NQ heads per KV head */
    /* the items: (sequence, token, head sub-group), numbered sequence by sequence */
    const struct be_attn_seq *seqs;
    const int64_t *first; /* [n_seqs+1]: first item of each sequence */
    int64_t per_tok, n_items;
    atomic_llong next; /* the next item nobody has taken */
};

/* Heads [h0, h0+nq) of one KV group, token j of sequence s. */
static void att_item(const struct att_job *J, const struct be_attn_seq *s, int j, int h0, int nq) {
    const struct be_attn_params *p = J->p;
    const int D = p->head_dim;
    const size_t row = (size_t)(s->tok0 + j);
    float *o = J->out + row * (size_t)J->qdim + (size_t)h0 * D; /* nq heads, contiguous */
    float qv[NQ * ATT_MAX_HEAD];
    memcpy(qv, J->q + row * (size_t)J->qdim + (size_t)h0 * D, sizeof(float) * (size_t)(nq * D)); /* out may alias q */
    memset(o, 0, sizeof(float) * (size_t)(nq * D));

    const int64_t qpos = (int64_t)s->n_past + j;
    int64_t lo = p->window > 0 ? qpos - p->window + 1 : 0;
    if (lo < 0)
        lo = 0;
    const size_t hoff = (size_t)(h0 / J->group) * (size_t)D;
    const int f16 = J->kv->kv_type == BE_F16;
    const struct kcpu_isa *isa = J->isa;
    float m[NQ], l[NQ], corr[NQ], sc[NQ * ATT_CHUNK];
    size_t off[ATT_CHUNK];
    for (int r = 0; r < nq; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }

    for (int64_t p0 = lo; p0 <= qpos; p0 += ATT_CHUNK) {
        int cnt = qpos - p0 + 1 < ATT_CHUNK ? (int)(qpos - p0 + 1) : ATT_CHUNK;
        for (int i = 0; i < cnt; i++) {
            int64_t P = p0 + i;
            size_t slot = (size_t)s->pages[P / BE_PAGE_SLOTS] * BE_PAGE_SLOTS + (size_t)(P % BE_PAGE_SLOTS);
            off[i] = slot * (size_t)J->kv_dim + hoff;
        }
        isa->attn_scores(qv, nq, D, J->kv->k, off, cnt, D, f16, sc, ATT_CHUNK);
        for (int r = 0; r < nq; r++) {
            float *sr = sc + r * ATT_CHUNK, mx = -INFINITY;
            for (int i = 0; i < cnt; i++) {
                float d = sr[i] * p->scale;
                if (p->softcap > 0.0f)
                    d = p->softcap * tanhf(d / p->softcap);
                sr[i] = d;
                mx = d > mx ? d : mx;
            }
            float mnew = mx > m[r] ? mx : m[r];
            corr[r] = m[r] == -INFINITY ? 0.0f : expf(m[r] - mnew); /* 1 when the max holds */
            for (int i = 0; i < cnt; i++)
                sr[i] -= mnew;
            m[r] = mnew;
        }
        for (int r = 0; r < nq; r++) {
            isa->vexp(sc + r * ATT_CHUNK, cnt);
            l[r] *= corr[r];
            for (int i = 0; i < cnt; i++)
                l[r] += sc[r * ATT_CHUNK + i];
        }
        isa->attn_accum(o, nq, D, corr, sc, ATT_CHUNK, J->kv->v, off, cnt, D, f16);
    }
    for (int r = 0; r < nq; r++) {
        float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        for (int k = 0; k < D; k++)
            o[r * D + k] *= inv;
    }
}

/* Threads take items one at a time from a shared counter (items differ in
 * cost: a causal row attends to as many keys as its position). Which thread
 * runs an item never changes its values: att_item depends on the item only. */
static void att_task(void *arg, int tid, int nt) {
    (void)tid, (void)nt;
    struct att_job *J = arg;
    const int64_t *first = J->first;
    const int64_t per_tok = J->per_tok;
    int s = 0;
    for (;;) {
        int64_t it = atomic_fetch_add_explicit(&J->next, 1, memory_order_relaxed);
        if (it >= J->n_items)
            break;
        while (it >= first[s + 1]) /* a thread's items come in increasing order */
            s++;
        int64_t local = it - first[s];
        int j = (int)(local / per_tok), rest = (int)(local % per_tok);
        int g = rest / J->nsub, sub = rest % J->nsub;
        int h0 = g * J->group + sub * NQ;
        int nq = J->group - sub * NQ < NQ ? J->group - sub * NQ : NQ;
        att_item(J, &J->seqs[s], j, h0, nq);
    }
}

void kcpu_attention(void *vctx, float *out, const float *q, const struct be_kv_layer *kv,
                    const struct be_attn_seq *seqs, int n_seqs, const struct be_attn_params *p) {
    struct kcpu_ctx *ctx = vctx;
    if (n_seqs <= 0 || p->n_heads <= 0 || p->n_kv_heads <= 0 || p->head_dim <= 0 ||
        p->head_dim > ATT_MAX_HEAD || p->n_heads % p->n_kv_heads != 0)
        return; /* nonsense shapes: the engine validated the model at load */
    const int group = p->n_heads / p->n_kv_heads, nsub = (group + NQ - 1) / NQ;
    struct att_job J = {.isa = ctx->isa, .out = out, .q = q, .kv = kv, .p = p,
                        .kv_dim = p->n_kv_heads * p->head_dim,
                        .qdim = p->n_heads * p->head_dim,
                        .group = group, .nsub = nsub};
    const int64_t per_tok = (int64_t)p->n_kv_heads * nsub; /* items per token */
    /* first[s] = index of the first item of sequence s */
    int64_t stack_first[65], *first = stack_first;
    if (n_seqs > 64) {
        first = malloc(sizeof(int64_t) * (size_t)(n_seqs + 1));
        if (!first)
            return;
    }
    first[0] = 0;
    for (int s = 0; s < n_seqs; s++)
        first[s + 1] = first[s] + (int64_t)(seqs[s].n_tok > 0 ? seqs[s].n_tok : 0) * per_tok;
    const int64_t n_items = first[n_seqs];
    int nth = n_items >= 2 ? ctx->n_threads : 1;

    J.seqs = seqs;
    J.first = first;
    J.per_tok = per_tok;
    J.n_items = n_items;
    atomic_init(&J.next, 0);
    kcpu_pool_run(ctx->pool, nth, att_task, &J);
    if (first != stack_first)
        free(first);
}
