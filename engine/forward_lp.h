/* forward_lp.h - layer parallelism (DESIGN.md section 5), engine-private.
 *
 * A model with a paired range [start, end) runs layers (start, start+1),
 * (start+2, start+3), ... as one step each:
 *     h = x + Attn_a(x) + Attn_b(x)          (each sub-layer with its own
 *     y = h + MLP_a(h)  + MLP_b(h)            pre-norm, weights, post-norm, K/V)
 * The state lives in struct eng_lp (forward_lp.c), hung off eng_model.lp;
 * NULL or an empty range means every layer runs in sequence.
 *
 * Thread: the engine thread that owns the model, like eng_forward.
 */
#ifndef SS_ENGINE_FORWARD_LP_H
#define SS_ENGINE_FORWARD_LP_H

#include <stddef.h>

struct eng_model;
struct eng_kv_view;

/* Forward hook, called by eng_forward for each layer il before running it,
 * with layer il's K/V view of the current frame (eng_layer_view buffer 0).
 * Returns 2 when il starts a pair of the range: layers il and il+1 have then
 * run as one step (residual stream m->s.x updated, both layers' K/V written);
 * returns 0 otherwise (the caller runs layer il itself). Never fails: ranges
 * are validated when set. */
int eng_lp_pair(struct eng_model *m, int il, const struct eng_kv_view *kv0);

/* Releases the LP state (the second buffer set) and sets m->lp = NULL.
 * eng_model_free should call it before closing the model's backend. NULL ok. */
void eng_lp_free(struct eng_model *m);

#endif
