/* embed.c - one POST /v1/embeddings request on the loop thread.
 *
 * A worker parses and tokenises the body (worker.c, api_embed_parse); the
 * parsed inputs come here (embed_submit).
 *
 * It rides the completion lifecycle (completion.c): each input is one choice,
 * i.e. one prefill-only sched_req; the non-streamed wait, wake-ups,
 * disconnects and errors are the completions' own. When every choice has
 * finished, completion_resumed asks embed_body for the 200 body: the vectors
 * the scheduler pooled, in input order.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "server/http_internal.h"

enum MHD_Result embed_submit(struct srv_conn *c, struct api_embed *emp) {
    struct api_embed em = *emp; /* moved: the caller's copy is left empty */
    struct api_error e;
    int rc = 0;
    memset(emp, 0, sizeof(*emp));
    c->ch = calloc((size_t)em.n, sizeof(*c->ch));
    if (!c->ch) {
        api_embed_free(&em);
        api_error_set(&e, SS_ENOMEM, NULL, NULL, NULL);
        return srv_respond_error(c, &e);
    }
    c->n_ch = em.n;
    c->logprobs = -1;
    c->n_prompt = (int32_t)(em.n_prompt > INT32_MAX ? INT32_MAX : em.n_prompt); /* the access log's */
    for (int i = 0; i < em.n && rc == 0; i++)
        rc = completion_submit_choice(c, i, &em.p[i], &e);
    c->embed = em; /* format, dimensions, usage; the params stay with em */
    c->embed.p = NULL;
    api_embed_free(&em); /* what was not moved (a failed submission's params) */
    if (rc < 0) {
        completion_abort(c);
        return srv_respond_error(c, &e);
    }
    completion_wait(c);
    return MHD_YES;
}

int embed_body(struct srv_conn *c, struct api_buf *b) {
    const float **vecs = calloc((size_t)c->n_ch, sizeof(*vecs));
    if (!vecs)
        return SS_ENOMEM;
    int32_t n_embd = c->srv->ec.n_embd;
    int rc = 0;
    for (int i = 0; i < c->n_ch && rc == 0; i++) {
        vecs[i] = c->ch[i].embd;
        if (!vecs[i] || c->ch[i].n_embd != n_embd)
            rc = SS_EINTERNAL; /* a STOP finish always carries the vector */
    }
    c->embed.n = c->n_ch;
    if (rc == 0)
        rc = api_embed_json(b, c->srv->mi.name, &c->embed, vecs, n_embd);
    free(vecs);
    return rc;
}
