/* sampler.h - turning a row of logits into the next token.
 *
 * Pure functions over caller-owned state; any thread. A sampler keeps its own
 * RNG (xoshiro256**) seeded per request, so the same seed and the same logits
 * give the same tokens whatever else is batched alongside.
 *
 * Order of operations (as in vLLM/llama.cpp): logit_bias, penalties, then
 * temperature == 0 -> greedy (argmax, lowest id wins ties); otherwise
 * top_k -> divide by temperature -> softmax -> top_p -> min_p -> draw.
 *
 * Non-finite logits never crash anything here: NaN counts as -inf, +inf as the
 * largest finite float. A row that is entirely -inf/NaN samples token 0.
 */
#ifndef SS_SAMPLER_H
#define SS_SAMPLER_H

#include <stdint.h>

struct smp_params {
    float temperature;  /* 0 = greedy */
    int32_t top_k;      /* <= 0: off */
    float top_p;        /* 1 = off */
    float min_p;        /* 0 = off */
    uint64_t seed;
    int has_seed;       /* 0: seed from the system clock/entropy */
};

struct smp_state {
    uint64_t s[4];
};

/* temperature 1, top_k off, top_p 1, min_p 0, no seed. */
void smp_params_default(struct smp_params *p);
/* Seeds st from p->seed (splitmix64) when p->has_seed, else from getrandom()
 * (falling back to the clock). Never fails. */
void smp_init(struct smp_state *st, const struct smp_params *p);

/* Picks a token from logits[n_vocab]. work: scratch of at least
 * n_vocab * (sizeof(float) + sizeof(int32_t)) bytes. logits may be modified.
 * If logprob is non-NULL, stores the log-probability of the chosen token under
 * the unmodified (temperature 1) distribution. */
int32_t smp_sample(struct smp_state *st, const struct smp_params *p, float *logits, int32_t n_vocab,
                   void *work, float *logprob);
/* NOTE on smp_sample, in detail:
 * - The only change made to logits is NaN -> -inf and +inf -> FLT_MAX, so the
 *   row can still be passed to smp_top_logprobs afterwards.
 * - Parameters out of range are clamped, never rejected: temperature NaN or
 *   <= 1e-6 is greedy, top_k >= n_vocab is off, top_p <= 0 keeps only the top
 *   token, min_p >= 1 keeps only the top token(s), NaN top_p/min_p are off.
 * - Non-greedy calls take one or more draws from st (top_p may reject and
 *   draw again); the tokens are a pure function of the seed, the parameters
 *   and the logits. Greedy calls take none. NULL st or work: greedy.
 * - Cost for 262144 logits is a few linear passes (no sort): about 0.2-0.5 ms
 *   on an AVX2 core, logprob included.
 * - Always returns an id in [0, n_vocab) (0 when n_vocab <= 0). *logprob is
 *   -inf when the whole row is -inf/NaN. */

/* One uniform double in [0, 1) from the top 53 bits of the next output. */
double smp_uniform(struct smp_state *st);

/* log(sum(exp(logits))) accumulated in double, NaN as -inf, +inf as FLT_MAX.
 * -inf for an empty or all -inf row. logits[i] - smp_logsumexp() is the
 * log-softmax of entry i. */
float smp_logsumexp(const float *logits, int32_t n_vocab);

/* Penalties, in place, with vLLM semantics. prev[n_prev] are the token ids the
 * caller wants counted (ids outside [0, n_vocab) are ignored). For every
 * distinct token t in prev, with c = its number of occurrences:
 *   repetition (1 = off, must be > 0): logits[t] > 0 ? logits[t] / repetition
 *                                                    : logits[t] * repetition
 *   then        logits[t] -= frequency * c + presence.
 * vLLM applies repetition to prompt and output tokens but presence/frequency
 * to output tokens only; to get that, call twice: once with prompt+output and
 * (presence 0, frequency 0, repetition r), once with the output only and
 * (presence, frequency, repetition 1).
 * work: scratch of at least n_vocab * sizeof(int32_t) bytes (the smp_sample
 * buffer will do); need not be zeroed. NULL work or NaN parameters: the
 * corresponding penalty is skipped (NULL work skips all). O(n_prev). */
void smp_apply_penalties(float *logits, int32_t n_vocab, const int32_t *prev, int32_t n_prev,
                         float presence, float frequency, float repetition, void *work);

/* logits[ids[i]] += bias[i] for i < n; ids out of range and NaN biases are
 * skipped (-inf is allowed and bans the token). */
void smp_apply_logit_bias(float *logits, int32_t n_vocab, const int32_t *ids, const float *bias,
                          int n);

/* The n most likely tokens under log-softmax(logits) (temperature 1), best
 * first, ties to the lower id: ids[i] and lps[i] (log-probabilities) for
 * i < returned count = min(n, n_vocab), 0 if n <= 0. Caller owns ids[n] and
 * lps[n]. O(n_vocab log n). lps are -inf for an all -inf row. */
int smp_top_logprobs(const float *logits, int32_t n_vocab, int n, int32_t *ids, float *lps);

#endif
