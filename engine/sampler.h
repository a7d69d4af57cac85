/* sampler.h - turning a row of logits into the next token.
 *
 * Pure functions over caller-owned state; any thread. A sampler keeps its own
 * RNG (xoshiro256**) seeded per request, so the same seed and the same logits
 * give the same tokens whatever else is batched alongside.
 *
 * Order of operations (as in vLLM/llama.cpp): logit_bias, penalties, then
 * temperature == 0 -> greedy (argmax, lowest id wins ties); otherwise
 * top_k -> divide by temperature -> softmax -> top_p -> min_p -> draw.
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

void smp_params_default(struct smp_params *p);
void smp_init(struct smp_state *st, const struct smp_params *p);

/* Picks a token from logits[n_vocab]. work: scratch of at least
 * n_vocab * (sizeof(float) + sizeof(int32_t)) bytes. logits may be modified.
 * If logprob is non-NULL, stores the log-probability of the chosen token under
 * the unmodified (temperature 1) distribution. */
int32_t smp_sample(struct smp_state *st, const struct smp_params *p, float *logits, int32_t n_vocab,
                   void *work, float *logprob);

#endif
