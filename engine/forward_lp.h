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

/* Merged pairs (lp_merge.c): both layers' projections as one wider GEMM
 * over the shared normalised input, with the norm weights folded in.
 * eng_lp_merge_build makes the merged weights of every pair of [start, end)
 * on the model's backend: 0, or SS_ENOMEM / SS_EUNSUPPORTED (no copy2d) /
 * SS_EBADMODEL with a message. eng_lp_merge_free releases them (NULL ok).
 * eng_lp_merge_sublayer runs sub-layer ffn (0 attention, 1 FFN) of the pair
 * starting at il merged, branch b in buffer set b1, and returns 1; 0 when
 * that sub-layer is not merged (an LTE FFN), which the caller then runs
 * branch by branch. kv: the two layers' K/V views. */
struct eng_lp_merged;
struct eng_bufs;
int eng_lp_merge_build(struct eng_model *m, int start, int end, struct eng_lp_merged **out, char *err,
                       size_t err_len);
void eng_lp_merge_free(struct eng_model *m, struct eng_lp_merged *g);
int eng_lp_merge_sublayer(struct eng_model *m, const struct eng_lp_merged *g, int il, int ffn,
                          const struct eng_bufs *b1, const struct eng_kv_view *kv);

#endif
