/* forward.c - the forward pass over a ragged batch (llama-family models).
 *
 * Reads like the model (llama2.c's run.c): embed -> per layer {attention
 * block, FFN block} -> final norm -> output projection of the requested rows.
 * Every operation works on all batch rows at once except attention, which the
 * backend runs per sequence over its paged KV cache. No operation reduces
 * across rows, and the kernels give per-row bitwise results, so a sequence's
 * logits do not depend on what else is in the batch.
 *
 * Nothing here allocates: all buffers were sized at load for max_batch_tokens.
 * Index arrays (token ids, positions, slots, block tables) are host memory.
 * Thread: the engine thread that owns the model.
 */
#include <math.h>
#include <stddef.h>

#include "engine/model_internal.h"
#include "engine/ss_error.h"

int32_t eng_batch_n_logits(const struct eng_batch *b) {
    if (!b || !b->seqs || b->n_seqs <= 0) return 0;
    int64_t n = 0;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        const struct eng_seq *s = &b->seqs[i];
        if (s->all_logits) n += s->n_tok > 0 ? s->n_tok : 0;
        else if (s->want_logits) n += 1;
    }
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

/* Checks everything the forward pass relies on; touches nothing. */
static int batch_validate(const struct eng_model *m, const struct eng_batch *b, const float *logits) {
    if (!b || !b->tokens || !b->seqs) return SS_EINVAL;
    if (b->n_tokens < 1 || b->n_tokens > m->max_batch_tokens) return SS_EINVAL;
    if (b->n_seqs < 1 || b->n_seqs > b->n_tokens) return SS_EINVAL;
    for (int32_t i = 0; i < b->n_tokens; i++)
        if (b->tokens[i] < 0 || b->tokens[i] >= m->cfg.n_vocab) return SS_EINVAL;
    int32_t next = 0; /* sequences must tile the token array in order */
    for (int32_t i = 0; i < b->n_seqs; i++) {
        const struct eng_seq *s = &b->seqs[i];
        if (s->tok0 != next || s->n_tok < 1 || s->n_tok > b->n_tokens - next) return SS_EINVAL;
        next += s->n_tok;
        if (s->n_past < 0 || s->n_past > m->n_ctx - s->n_tok) return SS_EINVAL;
        int32_t need = (s->n_past + s->n_tok + BE_PAGE_SLOTS - 1) / BE_PAGE_SLOTS;
        if (!s->pages || s->n_pages < need) return SS_EINVAL;
        for (int32_t p = 0; p < need; p++)
            if (s->pages[p] < 0 || s->pages[p] >= m->n_pages) return SS_EINVAL;
    }
    if (next != b->n_tokens) return SS_EINVAL;
    if (eng_batch_n_logits(b) > 0 && !logits) return SS_EINVAL;
    return 0;
}

/* Fills positions, KV slots and the attention view of each sequence.
 *
 *   row r = tok0 + j of sequence s:  pos = n_past + j
 *   slot  = pages[pos / 16] * 16 + pos % 16      (page-major, 16 slots a page)
 */
static void batch_prepare(struct eng_model *m, const struct eng_batch *b) {
    struct eng_scratch *s = &m->s;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        const struct eng_seq *q = &b->seqs[i];
        for (int32_t j = 0; j < q->n_tok; j++) {
            int32_t r = q->tok0 + j, p = q->n_past + j;
            s->pos[r] = p;
            s->slots[r] = q->pages[p / BE_PAGE_SLOTS] * BE_PAGE_SLOTS + p % BE_PAGE_SLOTS;
        }
        s->aseq[i] = (struct be_attn_seq){
            .tok0 = q->tok0, .n_tok = q->n_tok, .n_past = q->n_past, .pages = q->pages};
    }
}

/* y[r] += bias for each of n rows of width d (qwen2's q/k/v biases). */
static void add_bias(struct be *be, float *y, const float *bias, int n, int d) {
    if (!bias) return;
    for (int r = 0; r < n; r++) be_add(be, y + (size_t)r * d, bias, d);
}

/* x += Wo . attention(rope(Wq xn), rope(Wk xn), Wv xn), xn = rmsnorm(x) */
static void attention_block(struct eng_model *m, struct eng_layer *L, int n, int n_seqs) {
    const struct eng_config *c = &m->cfg;
    struct eng_scratch *s = &m->s;
    struct be *be = &m->be;
    const int qdim = eng_qdim(c), kvdim = eng_kvdim(c);

    be_rmsnorm(be, s->xb, s->x, L->attn_norm, n, c->dim, c->norm_eps);
    be_matmul(be, s->q, s->xb, &L->wq, n);
    be_matmul(be, s->k, s->xb, &L->wk, n);
    be_matmul(be, s->v, s->xb, &L->wv, n);
    add_bias(be, s->q, L->bq, n, qdim);
    add_bias(be, s->k, L->bk, n, kvdim);
    add_bias(be, s->v, L->bv, n, kvdim);

    struct be_rope_params rp = {.n_heads = c->n_heads, .head_dim = c->head_dim, .n_rot = c->n_rot,
                                .theta_base = c->rope_theta, .freq_scale = c->rope_freq_scale,
                                .neox = c->rope_neox, .freq_factors = m->rope_freqs};
    be_rope(be, s->q, s->pos, n, &rp);
    rp.n_heads = c->n_kv_heads;
    be_rope(be, s->k, s->pos, n, &rp);

    be_kv_store(be, &L->kv, s->k, s->v, s->slots, n, kvdim);
    struct be_attn_params ap = {.n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads,
                                .head_dim = c->head_dim, .scale = 1.0f / sqrtf((float)c->head_dim),
                                .window = 0, .softcap = 0.0f};
    be_attention(be, s->att, s->q, &L->kv, s->aseq, n_seqs, &ap);

    be_matmul(be, s->xb2, s->att, &L->wo, n);
    be_add(be, s->x, s->xb2, (int64_t)n * c->dim);
}

/* x += Wdown . (act(Wgate xn) * Wup xn), xn = rmsnorm(x) */
static void ffn_block(struct eng_model *m, struct eng_layer *L, int n) {
    const struct eng_config *c = &m->cfg;
    struct eng_scratch *s = &m->s;
    struct be *be = &m->be;

    be_rmsnorm(be, s->xb, s->x, L->ffn_norm, n, c->dim, c->norm_eps);
    be_matmul(be, s->hb, s->xb, &L->w_gate, n);
    be_matmul(be, s->hb2, s->xb, &L->w_up, n);
    be_glu(be, s->hb, s->hb, s->hb2, (int64_t)n * c->ffn_dim, m->desc->act);
    be_matmul(be, s->xb2, s->hb, &L->w_down, n);
    be_add(be, s->x, s->xb2, (int64_t)n * c->dim);
}

/* Final norm of the requested rows, gathered into xb in logits order (one
 * rmsnorm call per contiguous run), then the output projection in chunks of
 * ENG_LOGIT_CHUNK rows, each downloaded straight into the caller's logits. */
static void output_logits(struct eng_model *m, const struct eng_batch *b, float *logits) {
    const struct eng_config *c = &m->cfg;
    struct eng_scratch *s = &m->s;
    struct be *be = &m->be;
    int n_out = 0;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        const struct eng_seq *q = &b->seqs[i];
        int r0, nr;
        if (q->all_logits) r0 = q->tok0, nr = q->n_tok;
        else if (q->want_logits) r0 = q->tok0 + q->n_tok - 1, nr = 1;
        else continue;
        be_rmsnorm(be, s->xb + (size_t)n_out * c->dim, s->x + (size_t)r0 * c->dim, m->output_norm,
                   nr, c->dim, c->norm_eps);
        n_out += nr;
    }
    for (int r = 0; r < n_out; r += ENG_LOGIT_CHUNK) {
        int nr = n_out - r < ENG_LOGIT_CHUNK ? n_out - r : ENG_LOGIT_CHUNK;
        be_matmul(be, s->logits, s->xb + (size_t)r * c->dim, &m->output, nr);
        be_download(be, logits + (size_t)r * c->n_vocab, s->logits,
                    (size_t)nr * c->n_vocab * sizeof(float));
    }
}

int eng_forward(struct eng_model *m, const struct eng_batch *b, float *logits) {
    if (!m) return SS_EINVAL;
    int rc = batch_validate(m, b, logits);
    if (rc < 0) return rc;
    const int n = b->n_tokens;
    batch_prepare(m, b);

    be_get_rows(&m->be, m->s.x, &m->tok_embd, b->tokens, n);
    for (int il = 0; il < m->cfg.n_layers; il++) {
        attention_block(m, &m->layers[il], n, b->n_seqs);
        ffn_block(m, &m->layers[il], n);
    }
    output_logits(m, b, logits);
    return 0;
}
