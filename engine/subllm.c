/* subllm.c - SUBLLM structure strings, frames and KV views (DESIGN.md
 * sections 4 and 5).
 *
 * Load: the structure string subllm.structure ("TT(TT(T)TT)TT": T a block,
 * '(' a subsampler, ')' its upsampler + bypass) is validated and compiled into
 * a list of steps placed between layers, plus each layer's level. Level k >= 1
 * holds the tokens kept by the k-th '(' (sub.{k-1}); a layer's level is that
 * of the innermost bracket around it (= bracket depth for chained brackets).
 *
 * Forward: rows move between frames (model_internal.h). At the i-th '(' every
 * row of the current frame is scored, s_t = sub.i.score . x_t (raw residual,
 * fp32 inputs, double accumulation rounded to fp32), kept iff s_t > 0 with
 * weight w_t = min(s_t, 1); the kept rows are compacted into a new frame
 * (sequence order kept, sequences with no kept row drop out) and become the
 * residual stream m->s.x. At the matching ')' the parent's rows come back:
 *     u_t   = w_t * y_t + (1 - w_t) * x_t     (kept rows; dropped: u_t = x_t)
 *     out_t = x_t + c * (u_t - x_t)           c = sub.i.bypass, per channel
 * computed in fp32 exactly in that order (a dropped row is left as it is,
 * which is what the formula gives bitwise). Scoring, gathering and the
 * upsample run on the host over rows downloaded from the backend (for the CPU
 * backend, memcpy); each row's arithmetic depends only on that row, so a
 * sequence's results do not depend on the rest of the batch.
 *
 * KV: a row of a level-k frame has KV index level_n_past[k] + (its rank among
 * the sequence's kept rows); each layer's slots and attention views are built
 * from the sequence's layer_pages[l] (eng_layer_view).
 *
 * Thread: the engine thread that owns the model. Nothing here allocates after
 * load.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/model_internal.h"
#include "kernels/ss_error.h"

#define SUB_MAX_STRUCTURE 65536 /* characters of subllm.structure */

/* ------------------------------------------------------------- structure */

/* Walks the string once: checks characters and balance, assigns levels,
 * records the steps and where they sit between layers. */
static int parse_structure(struct eng_model *m, const char *str, size_t len, char *err, size_t err_len) {
    struct eng_subllm *S = &m->sub;
    const int nl = m->cfg.n_layers;
    int stack[ENG_MAX_LEVELS];   /* open subsamplers */
    size_t open_at[ENG_MAX_LEVELS];
    int own[ENG_MAX_LEVELS] = {0}; /* layers directly at each level */
    int depth = 0, n_t = 0, n_steps = 0;
    S->steps = calloc(2 * ENG_MAX_LEVELS, sizeof *S->steps);
    int *step_layer = calloc(2 * ENG_MAX_LEVELS, sizeof *step_layer);
    if (!S->steps || !step_layer) {
        free(step_layer);
        return eng_fail(err, err_len, SS_ENOMEM, "out of memory");
    }
    int rc = 0;
    for (size_t i = 0; i < len && rc == 0; i++) {
        const char ch = str[i];
        const int level = depth ? stack[depth - 1] + 1 : 0;
        if (ch == 'T') {
            if (n_t < nl) S->layer_level[n_t] = level;
            own[level]++;
            n_t++;
        } else if (ch == '(') {
            if (S->n_sub == ENG_MAX_LEVELS - 1) {
                rc = eng_fail(err, err_len, SS_EUNSUPPORTED,
                           "subllm.structure: more than %d subsamplers ('(' at offset %zu)",
                           ENG_MAX_LEVELS - 1, i);
                break;
            }
            S->parent_level[S->n_sub + 1] = level;
            open_at[depth] = i;
            stack[depth++] = S->n_sub;
            if (depth > S->max_depth) S->max_depth = depth;
            step_layer[n_steps] = n_t;
            S->steps[n_steps++] = (struct eng_sub_step){.op = ENG_SUB_DOWN, .sub = S->n_sub};
            S->n_sub++;
        } else if (ch == ')') {
            if (depth == 0) {
                rc = eng_fail(err, err_len, SS_EBADMODEL, "subllm.structure: ')' at offset %zu closes nothing", i);
                break;
            }
            int sub = stack[--depth];
            if (own[sub + 1] == 0) {
                rc = eng_fail(err, err_len, SS_EBADMODEL,
                           "subllm.structure: the bracket at offset %zu holds no block at its own level", open_at[depth]);
                break;
            }
            step_layer[n_steps] = n_t;
            S->steps[n_steps++] = (struct eng_sub_step){.op = ENG_SUB_UP, .sub = sub};
        } else {
            unsigned char u = (unsigned char)ch;
            if (u >= 0x20 && u < 0x7f)
                rc = eng_fail(err, err_len, SS_EBADMODEL,
                           "subllm.structure: invalid character '%c' at offset %zu (only T, ( and ))", ch, i);
            else
                rc = eng_fail(err, err_len, SS_EBADMODEL,
                           "subllm.structure: invalid byte 0x%02x at offset %zu (only T, ( and ))", u, i);
        }
    }
    if (rc == 0 && depth > 0)
        rc = eng_fail(err, err_len, SS_EBADMODEL, "subllm.structure: '(' at offset %zu is never closed",
                   open_at[depth - 1]);
    if (rc == 0 && n_t != nl)
        rc = eng_fail(err, err_len, SS_EBADMODEL, "subllm.structure has %d blocks (T) but subllm.block_count is %d",
                   n_t, nl);
    if (rc == 0) {
        /* step0[l] = number of steps placed before layer l */
        for (int l = 0, j = 0; l <= nl + 1; l++) {
            while (j < n_steps && step_layer[j] < l) j++;
            S->step0[l] = j;
        }
        S->step0[nl + 1] = n_steps;
        m->n_levels = S->n_sub + 1;
    }
    free(step_layer);
    return rc;
}

int eng_subllm_parse(struct eng_model *m, char *err, size_t err_len) {
    struct eng_subllm *S = &m->sub;
    const int nl = m->cfg.n_layers;
    S->layer_level = calloc((size_t)nl, sizeof *S->layer_level);
    S->step0 = calloc((size_t)nl + 2, sizeof *S->step0);
    if (!S->layer_level || !S->step0) return eng_fail(err, err_len, SS_ENOMEM, "out of memory");
    m->n_levels = 1;
    if (m->cfg.arch != ENG_ARCH_SUBLLM) return 0;

    const struct gguf_kv *kv = gguf_find(m->gguf, "subllm.structure");
    struct gguf_str s;
    if (!kv) return eng_fail(err, err_len, SS_EBADMODEL, "missing key subllm.structure");
    if (kv->type != GGUF_T_STRING || gguf_get_str(m->gguf, "subllm.structure", &s) < 0)
        return eng_fail(err, err_len, SS_EBADMODEL, "key subllm.structure is not a string");
    if (s.len == 0 || s.len > SUB_MAX_STRUCTURE)
        return eng_fail(err, err_len, SS_EBADMODEL, "subllm.structure has %llu characters (1..%d)",
                     (unsigned long long)s.len, SUB_MAX_STRUCTURE);
    S->structure = malloc((size_t)s.len + 1);
    if (!S->structure) return eng_fail(err, err_len, SS_ENOMEM, "out of memory");
    memcpy(S->structure, s.s, (size_t)s.len);
    S->structure[s.len] = 0;
    return parse_structure(m, S->structure, (size_t)s.len, err, err_len);
}

int eng_subllm_bind(struct eng_model *m, char *err, size_t err_len) {
    struct eng_subllm *S = &m->sub;
    const int d = m->cfg.dim;
    for (int il = 0; il < m->cfg.n_layers; il++) m->layers[il].level = S->layer_level[il];
    if (S->n_sub == 0) return 0;
    S->score = malloc((size_t)S->n_sub * d * sizeof *S->score);
    S->bypass = malloc((size_t)S->n_sub * d * sizeof *S->bypass);
    if (!S->score || !S->bypass) return eng_fail(err, err_len, SS_ENOMEM, "out of memory");
    char name[64];
    for (int i = 0; i < S->n_sub; i++) {
        int rc;
        snprintf(name, sizeof name, "sub.%d.score.weight", i);
        if ((rc = eng_host_vector(m, name, d, S->score + (size_t)i * d, err, err_len)) < 0) return rc;
        snprintf(name, sizeof name, "sub.%d.bypass.weight", i);
        if ((rc = eng_host_vector(m, name, d, S->bypass + (size_t)i * d, err, err_len)) < 0) return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- frames */

int eng_frames_alloc(struct eng_model *m, char *err, size_t err_len) {
    struct eng_subllm *S = &m->sub;
    const size_t T = (size_t)m->max_batch_tokens, D = (size_t)m->cfg.dim;
    S->frames = calloc((size_t)S->max_depth + 1, sizeof *S->frames);
    if (!S->frames) return eng_fail(err, err_len, SS_ENOMEM, "out of memory");
    int ok = 1;
    for (int k = 0; k <= S->max_depth; k++) {
        struct eng_frame *f = &S->frames[k];
        f->seqs = malloc(T * sizeof *f->seqs);
        f->pos = malloc(T * sizeof *f->pos);
        f->kvi = malloc(T * sizeof *f->kvi);
        ok = ok && f->seqs && f->pos && f->kvi;
        if (k == 0) continue;
        f->src = malloc(T * sizeof *f->src);
        f->w = malloc(T * sizeof *f->w);
        f->xp = malloc(T * D * sizeof *f->xp);
        ok = ok && f->src && f->w && f->xp;
    }
    if (S->n_sub > 0) {
        S->stage = malloc(T * D * sizeof *S->stage);
        ok = ok && S->stage;
    }
    for (int j = 0; j < 2; j++) {
        S->vslots[j] = malloc(T * sizeof *S->vslots[j]);
        S->vaseq[j] = malloc(T * sizeof *S->vaseq[j]);
        ok = ok && S->vslots[j] && S->vaseq[j];
    }
    return ok ? 0 : eng_fail(err, err_len, SS_ENOMEM, "out of memory for the batch index buffers");
}

void eng_subllm_free(struct eng_model *m) {
    struct eng_subllm *S = &m->sub;
    if (S->frames) {
        for (int k = 0; k <= S->max_depth; k++) {
            struct eng_frame *f = &S->frames[k];
            free(f->seqs);
            free(f->pos);
            free(f->kvi);
            free(f->src);
            free(f->w);
            free(f->xp);
        }
    }
    free(S->frames);
    free(S->stage);
    for (int j = 0; j < 2; j++) {
        free(S->vslots[j]);
        free(S->vaseq[j]);
    }
    free(S->structure);
    free(S->score);
    free(S->bypass);
    free(S->steps);
    free(S->step0);
    free(S->layer_level);
    memset(S, 0, sizeof *S);
}

/* KV entries of batch sequence q cached at level k before this step. */
static inline int32_t level_past(const struct eng_seq *q, int k) { return k ? q->level_n_past[k] : q->n_past; }

/* Points the scratch's positions (m->s.pos) at the current frame's. */
static void set_current(struct eng_model *m) { m->s.pos = eng_frame_cur(m)->pos; }

void eng_frames_begin(struct eng_model *m, const struct eng_batch *b) {
    struct eng_subllm *S = &m->sub;
    struct eng_frame *f = &S->frames[0];
    S->depth = 0;
    f->level = 0;
    f->sub = -1;
    f->n = b->n_tokens;
    f->n_seqs = b->n_seqs;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        const struct eng_seq *q = &b->seqs[i];
        f->seqs[i] = (struct eng_fseq){.seq = i, .row0 = q->tok0, .n_tok = q->n_tok, .n_past = q->n_past};
        for (int32_t j = 0; j < q->n_tok; j++) f->pos[q->tok0 + j] = f->kvi[q->tok0 + j] = q->n_past + j;
        if (q->level_kept) {
            q->level_kept[0] = q->n_tok;
            for (int k = 1; k < m->n_levels; k++) q->level_kept[k] = 0;
        }
    }
    S->batch = b;
    set_current(m);
}

void eng_layer_view(struct eng_model *m, int il, int buf, struct eng_kv_view *v) {
    struct eng_subllm *S = &m->sub;
    const struct eng_frame *f = eng_frame_cur(m);
    v->n = f->n;
    v->n_seqs = f->n_seqs;
    int32_t *slots = S->vslots[buf];
    struct be_attn_seq *aseq = S->vaseq[buf];
    for (int32_t j = 0; j < f->n_seqs; j++) {
        const struct eng_fseq *fs = &f->seqs[j];
        const int32_t *tab = S->batch->seqs[fs->seq].layer_pages[il];
        aseq[j] = (struct be_attn_seq){.tok0 = fs->row0, .n_tok = fs->n_tok, .n_past = fs->n_past, .pages = tab};
        for (int32_t r = fs->row0; r < fs->row0 + fs->n_tok; r++)
            slots[r] = tab[f->kvi[r] / BE_PAGE_SLOTS] * BE_PAGE_SLOTS + f->kvi[r] % BE_PAGE_SLOTS;
    }
    v->kv = &m->kv_pool;
    v->slots = slots;
    v->aseq = aseq;
}

/* ------------------------------------------------------- '(' and ')' */

/* s = score . x in double, rounded to fp32. */
static float row_score(const float *w, const float *x, int d) {
    double acc = 0.0;
    for (int c = 0; c < d; c++) acc += (double)w[c] * (double)x[c];
    return (float)acc;
}

/* The i-th '(': scores the current frame's rows and pushes the frame of the
 * kept ones (their residual rows become m->s.x[0, kept)). */
static void subsample(struct eng_model *m, const struct eng_batch *b, int i) {
    struct eng_subllm *S = &m->sub;
    const int d = m->cfg.dim, level = i + 1;
    struct eng_frame *P = &S->frames[S->depth], *C = &S->frames[S->depth + 1];
    S->depth++;
    C->level = level;
    C->sub = i;
    C->n = C->n_seqs = 0;
    if (P->n == 0) return;
    be_download(&m->be, C->xp, m->s.x, (size_t)P->n * d * sizeof(float));
    const float *wsc = S->score + (size_t)i * d;
    for (int32_t j = 0; j < P->n_seqs; j++) {
        const struct eng_fseq *ps = &P->seqs[j];
        const struct eng_seq *q = &b->seqs[ps->seq];
        const int32_t past = level_past(q, level), row0 = C->n;
        for (int32_t r = ps->row0; r < ps->row0 + ps->n_tok; r++) {
            float s = row_score(wsc, C->xp + (size_t)r * d, d);
            if (!(s > 0.0f)) continue;
            C->src[C->n] = r;
            C->pos[C->n] = P->pos[r];
            C->kvi[C->n] = past + (C->n - row0);
            C->w[C->n] = s < 1.0f ? s : 1.0f;
            C->n++;
        }
        if (C->n > row0)
            C->seqs[C->n_seqs++] = (struct eng_fseq){.seq = ps->seq, .row0 = row0, .n_tok = C->n - row0, .n_past = past};
        if (q->level_kept) q->level_kept[level] = C->n - row0;
    }
    if (C->n == 0) return; /* m->s.x keeps the parent's rows, untouched */
    for (int32_t r = 0; r < C->n; r++)
        memcpy(S->stage + (size_t)r * d, C->xp + (size_t)C->src[r] * d, (size_t)d * sizeof(float));
    be_upload(&m->be, m->s.x, S->stage, (size_t)C->n * d * sizeof(float));
}

/* The matching ')': upsample + bypass of the kept rows into the parent's
 * rows, which become m->s.x again; pops the frame. */
static void upsample(struct eng_model *m, int i) {
    struct eng_subllm *S = &m->sub;
    const int d = m->cfg.dim;
    struct eng_frame *C = &S->frames[S->depth], *P = &S->frames[S->depth - 1];
    S->depth--;
    if (C->n == 0) return; /* nothing was kept: m->s.x still holds the parent's rows */
    be_download(&m->be, S->stage, m->s.x, (size_t)C->n * d * sizeof(float));
    const float *c = S->bypass + (size_t)i * d;
    for (int32_t r = 0; r < C->n; r++) {
        float *x = C->xp + (size_t)C->src[r] * d;
        const float *y = S->stage + (size_t)r * d;
        const float w = C->w[r], w1 = 1.0f - w;
        for (int ch = 0; ch < d; ch++) {
            const float xv = x[ch];
            const float u = w * y[ch] + w1 * xv;
            x[ch] = xv + c[ch] * (u - xv);
        }
    }
    be_upload(&m->be, m->s.x, C->xp, (size_t)P->n * d * sizeof(float));
}

void eng_sub_steps(struct eng_model *m, const struct eng_batch *b, int il) {
    struct eng_subllm *S = &m->sub;
    if (S->n_sub == 0) return;
    int32_t j0 = S->step0[il], j1 = S->step0[il + 1];
    if (j0 == j1) return;
    for (int32_t j = j0; j < j1; j++) {
        if (S->steps[j].op == ENG_SUB_DOWN) subsample(m, b, S->steps[j].sub);
        else upsample(m, S->steps[j].sub);
    }
    set_current(m);
}
