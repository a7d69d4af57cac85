/* forward.c - the forward pass over a ragged batch (llama, qwen2, gemma3,
 * subllm).
 *
 * Reads like the model (llama2.c's run.c): embed (gemma3: times sqrt(dim)) ->
 * per layer {attention block, FFN block} -> final norm -> output projection of
 * the requested rows (-> final soft-capping if the file asks for it); the
 * normed rows of sequences that want hidden states (embeddings) are handed
 * back before the projection. The
 * architecture differences are data (eng_config, eng_layer, the arch table):
 * optional q/k/v biases (qwen2), per-head q/k norms, post-sub-layer norms,
 * gelu-tanh gating and sliding-window layers with their own RoPE base
 * (gemma3).
 * The layer body is written once: eng_attention_block and eng_ffn_block take
 * their input, buffer set, backend and (FFN) variant as parameters and return
 * their output, which the caller adds to the residual stream; layer
 * parallelism (forward_lp.c) runs the same two for both layers of a pair.
 * SUBLLM structures (subllm.c) move rows between frames at their '(' and ')':
 * each layer runs on the rows of the current frame (every token at level 0,
 * the kept ones deeper), with that level's K/V.
 * Every operation works on all rows at once except attention, which the
 * backend runs per sequence over its paged KV cache (units, see
 * model_internal.h). No operation reduces
 * across rows, and the kernels give per-row bitwise results, so a sequence's
 * logits do not depend on what else is in the batch.
 *
 * Nothing here allocates: all buffers were sized at load for max_batch_tokens.
 * Index arrays (token ids, positions, slots, block tables) are host memory.
 * Thread: the engine thread that owns the model.
 */
#include <math.h>
#include <stddef.h>

#include "engine/forward_lp.h"
#include "engine/model_internal.h"
#include "kernels/ss_error.h"

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

int32_t eng_batch_n_hidden(const struct eng_batch *b) {
    if (!b || !b->seqs || b->n_seqs <= 0) return 0;
    int64_t n = 0;
    for (int32_t i = 0; i < b->n_seqs; i++)
        if (b->seqs[i].want_hidden && b->seqs[i].n_tok > 0) n += b->seqs[i].n_tok;
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

/* KV levels and per-layer block tables of one sequence (engine.h "KV units
 * and levels"). */
static int seq_validate_kv(const struct eng_model *m, const struct eng_seq *s) {
    int32_t past[ENG_MAX_LEVELS];
    past[0] = s->n_past;
    for (int k = 1; k < m->n_levels; k++) {
        past[k] = s->level_n_past[k];
        if (past[k] < 0 || past[k] > past[m->sub.parent_level[k]]) return SS_EINVAL;
    }
    if (!s->layer_pages) return SS_EINVAL;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const int32_t *t = s->layer_pages[l];
        const int32_t n_past = past[m->layers[l].level];
        int32_t need = (n_past + s->n_tok + BE_PAGE_SLOTS - 1) / BE_PAGE_SLOTS;
        if (!t || s->layer_n_pages < need) return SS_EINVAL;
        /* a local layer's first query reads from n_past - window + 1: the pages
         * before that one may be unset (recycled by the caller) */
        int32_t first = 0;
        if (m->layers[l].swa && m->cfg.swa_window > 0 && n_past - m->cfg.swa_window + 1 > 0)
            first = (n_past - m->cfg.swa_window + 1) / BE_PAGE_SLOTS;
        for (int32_t p = 0; p < need; p++)
            if ((p >= first && t[p] < 0) || t[p] >= m->n_units) return SS_EINVAL;
    }
    return 0;
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
        int rc = seq_validate_kv(m, s);
        if (rc < 0) return rc;
    }
    if (next != b->n_tokens) return SS_EINVAL;
    if (eng_batch_n_logits(b) > 0 && !logits) return SS_EINVAL;
    if (eng_batch_n_hidden(b) > 0 && !b->hidden) return SS_EINVAL;
    return 0;
}

const float *eng_post_norm(const struct eng_model *m, struct be *be, const struct eng_bufs *B, const float *y,
                           const float *norm, int n) {
    if (!norm) return y;
    be_rmsnorm(be, B->xb, y, norm, n, m->cfg.dim, m->cfg.norm_eps);
    return B->xb;
}

void eng_add_bias(struct be *be, float *y, const float *bias, int n, int d) {
    if (!bias) return;
    for (int r = 0; r < n; r++) be_add(be, y + (size_t)r * d, bias, d);
}

/* Per-head RMSNorm (gemma3's attn_q_norm / attn_k_norm) of x [n][heads*hd]
 * into out, then RoPE of out. Without a norm weight: RoPE of x in place.
 * Returns the rotated buffer. */
static float *norm_rope(const struct eng_model *m, struct be *be, const struct eng_layer *L, float *out, float *x,
                        const float *norm, int n, int heads) {
    const struct eng_config *c = &m->cfg;
    if (norm) {
        /* n * heads <= max_batch_tokens * n_heads, which load bounds by INT_MAX */
        be_rmsnorm(be, out, x, norm, n * heads, c->head_dim, c->norm_eps);
        x = out;
    }
    /* local (sliding-window) layers: their own base, never position scaling */
    struct be_rope_params rp = {.n_heads = heads, .head_dim = c->head_dim, .n_rot = c->n_rot,
                                .theta_base = L->swa ? c->rope_theta_swa : c->rope_theta,
                                .freq_scale = L->swa ? 1.0f : c->rope_freq_scale,
                                .neox = c->rope_neox, .freq_factors = m->rope_freqs};
    be_rope(be, x, m->s.pos, n, &rp);
    return x;
}

/* B->att = attention(q, k, v) of the projections in B->q, B->k, B->v:
 *   q, k: per-head rmsnorm (gemma3), then RoPE
 * att takes the normed k (stored into the cache at once), then the normed q,
 * then the attention output (out may be q). */
void eng_attention_core(const struct eng_model *m, struct be *be, const struct eng_layer *L,
                        const struct eng_bufs *B, const struct eng_kv_view *kv) {
    const struct eng_config *c = &m->cfg;
    const int n = kv->n, kvdim = eng_kvdim(c);
    const float *k = norm_rope(m, be, L, B->att, B->k, L->k_norm, n, c->n_kv_heads);
    be_kv_store(be, kv->kv, k, B->v, kv->slots, n, kvdim);
    const float *q = norm_rope(m, be, L, B->att, B->q, L->q_norm, n, c->n_heads);
    struct be_attn_params ap = {.n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads,
                                .head_dim = c->head_dim, .scale = c->attn_scale,
                                .window = L->swa ? c->swa_window : 0, .softcap = 0.0f};
    be_attention(be, B->att, q, kv->kv, kv->aseq, kv->n_seqs, &ap);
}

/* post_norm(Wo . attention(q, k, v)) of input x
 *   xn = rmsnorm(x) * attn_norm;  q = Wq xn (+bq), k = Wk xn (+bk), v = Wv xn (+bv)
 *   attention: eng_attention_core
 *   post_norm: rmsnorm * post_attention_norm (gemma3), else identity
 * Buffers: xb = xn; q, k, v; att (eng_attention_core); xb2 = Wo . att; the
 * post-norm goes to xb. */
const float *eng_attention_block(const struct eng_model *m, struct be *be, const struct eng_layer *L,
                                 const struct eng_bufs *B, const float *x, const struct eng_kv_view *kv) {
    const struct eng_config *c = &m->cfg;
    const int n = kv->n, qdim = eng_qdim(c), kvdim = eng_kvdim(c);

    be_rmsnorm(be, B->xb, x, L->attn_norm, n, c->dim, c->norm_eps);
    be_matmul(be, B->q, B->xb, &L->wq, n);
    be_matmul(be, B->k, B->xb, &L->wk, n);
    be_matmul(be, B->v, B->xb, &L->wv, n);
    eng_add_bias(be, B->q, L->bq, n, qdim);
    eng_add_bias(be, B->k, L->bk, n, kvdim);
    eng_add_bias(be, B->v, L->bv, n, kvdim);
    eng_attention_core(m, be, L, B, kv);
    be_matmul(be, B->xb2, B->att, &L->wo, n);
    return eng_post_norm(m, be, B, B->xb2, L->post_attn_norm, n);
}

/* Dense FFN: Wdown . (act(Wgate xn) * Wup xn) into B->xb2, xn = B->xb;
 * act silu (llama, qwen2) or gelu-tanh (gemma3). */
static void ffn_dense(const struct eng_model *m, struct be *be, const struct eng_layer *L, const struct eng_bufs *B,
                      int n) {
    be_matmul(be, B->hb, B->xb, &L->w_gate, n);
    be_matmul(be, B->hb2, B->xb, &L->w_up, n);
    be_glu(be, B->hb, B->hb, B->hb2, (int64_t)n * m->cfg.ffn_dim, m->desc->act);
    be_matmul(be, B->xb2, B->hb, &L->w_down, n);
}

/* post_norm(FFN(xn)) of input x, xn = rmsnorm(x) * ffn_norm; post_norm as
 * above with post_ffw_norm. The variant computes B->xb2 from B->xb. */
const float *eng_ffn_block(const struct eng_model *m, struct be *be, const struct eng_layer *L,
                           const struct eng_bufs *B, const float *x, int n, int ffn) {
    const struct eng_config *c = &m->cfg;
    be_rmsnorm(be, B->xb, x, L->ffn_norm, n, c->dim, c->norm_eps);
    if (m->probe) { /* calibration only; never with layer parallelism */
        be_download(be, m->probe_buf, B->xb, (size_t)n * c->dim * sizeof(float));
        m->probe(m->probe_ctx, (int)(L - m->layers), m->probe_buf, n);
    }
    switch (ffn) {
    /* A variant reads B->xb and writes B->xb2 (plus its own buffers); the
     * norms, the residual and layer parallelism stay as they are. */
    case ENG_FFN_LTE: /* routers, per-row expert masks, sparse FFN (lte.c) */
        eng_lte_ffn(m, be, L, B, n);
        break;
    case ENG_FFN_DENSE:
    default:
        ffn_dense(m, be, L, B, n);
        break;
    }
    return eng_post_norm(m, be, B, B->xb2, L->post_ffn_norm, n);
}

/* Final norm of every token of the want_hidden sequences, gathered into xb
 * in batch order (one rmsnorm call per sequence), then one download into
 * b->hidden. Runs before output_logits, which reuses xb. */
static void output_hidden(struct eng_model *m, const struct eng_batch *b) {
    const struct eng_config *c = &m->cfg;
    struct eng_scratch *s = &m->s;
    size_t n_out = 0;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        const struct eng_seq *q = &b->seqs[i];
        if (!q->want_hidden) continue;
        be_rmsnorm(&m->be, s->b.xb + n_out * (size_t)c->dim, s->x + (size_t)q->tok0 * c->dim,
                   m->output_norm, q->n_tok, c->dim, c->norm_eps);
        n_out += (size_t)q->n_tok;
    }
    if (n_out > 0) be_download(&m->be, b->hidden, s->b.xb, n_out * (size_t)c->dim * sizeof(float));
}

/* Final norm of the requested rows, gathered into xb in logits order (one
 * rmsnorm call per contiguous run), then the output projection in chunks of
 * ENG_LOGIT_CHUNK rows, each downloaded straight into the caller's logits. */
static void output_logits(struct eng_model *m, const struct eng_batch *b, float *logits) {
    const struct eng_config *c = &m->cfg;
    struct eng_scratch *s = &m->s;
    struct be *be = &m->be;
    float *xb = s->b.xb; /* the last layer is done with it */
    int n_out = 0;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        const struct eng_seq *q = &b->seqs[i];
        int r0, nr;
        if (q->all_logits) r0 = q->tok0, nr = q->n_tok;
        else if (q->want_logits) r0 = q->tok0 + q->n_tok - 1, nr = 1;
        else continue;
        be_rmsnorm(be, xb + (size_t)n_out * c->dim, s->x + (size_t)r0 * c->dim, m->output_norm,
                   nr, c->dim, c->norm_eps);
        n_out += nr;
    }
    for (int r = 0; r < n_out; r += ENG_LOGIT_CHUNK) {
        int nr = n_out - r < ENG_LOGIT_CHUNK ? n_out - r : ENG_LOGIT_CHUNK;
        be_matmul(be, s->logits, xb + (size_t)r * c->dim, &m->output, nr);
        be_download(be, logits + (size_t)r * c->n_vocab, s->logits,
                    (size_t)nr * c->n_vocab * sizeof(float));
    }
    if (c->logit_softcap > 0.0f) { /* host memory, after the download */
        const float cap = c->logit_softcap;
        for (size_t i = 0; i < (size_t)n_out * c->n_vocab; i++) logits[i] = cap * tanhf(logits[i] / cap);
    }
}

int eng_forward(struct eng_model *m, const struct eng_batch *b, float *logits) {
    if (!m) return SS_EINVAL;
    int rc = batch_validate(m, b, logits);
    if (rc < 0) return rc;
    const int n = b->n_tokens;
    eng_frames_begin(m, b);

    be_get_rows(&m->be, m->s.x, &m->tok_embd, b->tokens, n);
    if (m->cfg.embd_scale != 1.0f) be_scale(&m->be, m->s.x, m->cfg.embd_scale, (int64_t)n * m->cfg.dim);
    const int64_t dim = m->cfg.dim;
    for (int il = 0; il < m->cfg.n_layers; il++) {
        eng_sub_steps(m, b, il); /* SUBLLM '(' / ')' before layer il: changes the current frame */
        struct eng_kv_view kv;
        eng_layer_view(m, il, 0, &kv);
        if (kv.n == 0) continue; /* every token was dropped before this level */
        if (m->lp && eng_lp_pair(m, il, &kv)) { il++; continue; } /* ran il, il+1 as a pair */
        const struct eng_layer *L = &m->layers[il];
        const float *y = eng_attention_block(m, &m->be, L, &m->s.b, m->s.x, &kv);
        be_add(&m->be, m->s.x, y, kv.n * dim);
        y = eng_ffn_block(m, &m->be, L, &m->s.b, m->s.x, kv.n, L->ffn);
        be_add(&m->be, m->s.x, y, kv.n * dim);
    }
    eng_sub_steps(m, b, m->cfg.n_layers);
    output_hidden(m, b);
    output_logits(m, b, logits);
    return 0;
}
