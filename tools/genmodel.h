/* genmodel.h - deterministic synthetic model generator (GGUF v3; llama, qwen2,
 * gemma3 and subllm layouts).
 *
 * Writes a small random-weight model with a real, trained tokenizer so every
 * part of the server can be tested without downloading anything. The same
 * options always give a byte-identical file (no libm, no time, no locale).
 *
 * ---------------------------------------------------------------- the file
 * Keys (arch "llama"; other architectures will reuse the scheme with their own
 * prefix):
 *   general.architecture = "llama"      general.name = "genmodel-<size>"
 *   general.file_type (u32: 0 f32, 1 f16, 2 q4_0, 7 q8_0, 32 bf16)
 *   llama.block_count, llama.context_length, llama.embedding_length,
 *   llama.feed_forward_length, llama.attention.head_count,
 *   llama.attention.head_count_kv, llama.rope.dimension_count (= head_dim),
 *   llama.vocab_size                                   (all u32)
 *   llama.attention.layer_norm_rms_epsilon, llama.rope.freq_base   (f32)
 * Tensors (ne[0] first = input dimension, llama.cpp shapes):
 *   token_embd.weight [dim, n_vocab]      output_norm.weight [dim] (F32)
 *   output.weight [dim, n_vocab]          (absent when tied)
 *   blk.N.attn_norm.weight [dim] (F32)    blk.N.ffn_norm.weight [dim] (F32)
 *   blk.N.attn_q.weight [dim, n_heads*hd]     blk.N.attn_k/attn_v.weight [dim, n_kv_heads*hd]
 *   blk.N.attn_output.weight [n_heads*hd, dim]
 *   blk.N.ffn_gate/ffn_up.weight [dim, ffn]   blk.N.ffn_down.weight [ffn, dim]
 * Matrices use opts.wtype; norms are always F32.
 *
 * Other architectures ("qwen2", "gemma3") use the same keys under their own
 * prefix and the same tensors, plus, per layer after the llama ones:
 *   qwen2:  blk.N.attn_q.bias [n_heads*hd], attn_k.bias, attn_v.bias [n_kv_heads*hd]
 *           (F32, uniform in [-0.5, 0.5))
 *   gemma3: blk.N.attn_q_norm.weight, attn_k_norm.weight [hd],
 *           blk.N.post_attention_norm.weight, post_ffw_norm.weight [dim] (F32 norms)
 *   and keys <arch>.attention.key_length / value_length (= hd; always for gemma3,
 *   for the others only when hd != dim/n_heads), gemma3.attention.sliding_window,
 *   gemma3.attention.sliding_window_pattern (u32), gemma3.rope.freq_base_swa and
 *   gemma3.final_logit_softcapping (f32) when the options set them. hd = opts.head_dim, or dim/n_heads when 0;
 *   rope.dimension_count = hd. Norm weights are stored as llama.cpp's converter
 *   stores Gemma's (already 1 + w), so readers multiply by them directly.
 *
 * subllm (DESIGN.md section 4): the llama keys under "subllm.*", plus
 *   subllm.structure (string; opts.structure, or when NULL "T"*k "(" "T"*(n-2k)
 *   ")" "T"*k with k = max(1, n_layers/4), which needs n_layers >= 3; the
 *   number of T must equal n_layers), the llama tensors, and per subsampler i
 *   (the i-th '(') sub.{i}.score.weight [dim] and sub.{i}.bypass.weight [dim]
 *   (F32). Keep control ("bias along a direction of the residual with a
 *   consistent mean"): R = 1 + n_sub channels are reserved at the top of the
 *   residual stream, A = dim-1 and B_i = dim-2-i. Every token embedding has
 *   x[A] = r and x[B_i] = r * u_i(token), r = sqrt(3) * 2 / sqrt(dim) (the
 *   amplitude of the other embedding channels), u_i(token) uniform in [-1, 1)
 *   from splitmix64 seeded by (seed, token, i); the rows of attn_output and
 *   ffn_down writing channels A and B_* are zero in every layer, so these
 *   channels reach every subsampler unchanged (up to the bypass's rounding).
 *   The score of subsampler i is
 *       s = (alpha/r) x[B_i] + (beta/r) x[A] + sum_{c not reserved} g_c x[c]
 *         = alpha * (u_i + 2*keep - 1) + noise,        alpha = 2
 *   (beta = alpha * (2*keep - 1)), so with no noise a token is kept iff
 *   u_i > 1 - 2*keep: a fraction `keep` at each subsampler, independently.
 *   g_c is uniform with std keep_noise / 2 (noise std ~ keep_noise at the
 *   embedding, growing with the residual deeper in), which makes the decision
 *   depend on context too; the residual's mean direction also turns g . x into
 *   a small bias, so rates drift from `keep`. Measured on the 100M preset with
 *   "TTT(TT(TTTT)TT)TTT", keep 0.64, 1024 tokens: kept fractions at the two
 *   subsamplers 0.62 / 0.69 with noise 0, 0.60 / 0.75 with 0.1 (the default),
 *   0.56 / 0.75 with 0.25. keep 0 and keep 1 are exact: no noise, and beta
 *   moves by 0.05 more so that s <= -0.05 (nothing kept) or s >= 0.05 (all).
 *   Bypass weights are uniform in [0.5, 1.0).
 *
 * LTE (DESIGN.md section 4), any architecture, when lte_expert_size S > 0:
 *   lte.expert_size = S (u32), lte.threshold = tau (f32, only when set), and
 *   after each layer's tensors (unless its bit is set in lte_dense_layers)
 *   blk.N.ffn_router.weight [dim, ffn/S] (F32, std 1/sqrt(dim), so router
 *   logits have std ~1 on the unit-RMS normalised FFN input) and, unless
 *   lte_no_bias, blk.N.ffn_router.bias [ffn/S] (F32) = logit(tau) - q + u,
 *   q = logit(sparsity)/1.702 (the logistic approximation of the normal
 *   quantile) and u uniform in [-0.25, 0.25): about `sparsity` of the experts
 *   are off per token (only approximately: the logits are not exactly
 *   normal). Expert e is neurons [e*S, (e+1)*S) of the random FFN.
 *
 * Weights: uniform noise from splitmix64 seeded by (seed, tensor name), so a
 * tensor does not depend on the others. Standard deviations: token_embd and
 * output 2/sqrt(dim) (logits have std ~2: peaked but not greedy), attn_q/k/v,
 * ffn_gate/up 1/sqrt(fan_in), attn_output/ffn_down 0.5/sqrt(fan_in), norms
 * 1 +- 0.05. Q8_0 blocks: d = max|x|/127 stored as fp16, q = round(x/d).
 * Q4_0 blocks: d = m/-8 stored as fp16 (m: the value of largest magnitude),
 * q = round(x/d) + 8 clamped to [0, 15].
 *
 * ----------------------------------------------------- tokenizer metadata
 * Both vocabularies are learned by byte-pair merging on an embedded English
 * text (genmodel_corpus()): count adjacent symbol pairs within words, weighted
 * by word frequency; merge the most frequent pair (ties: the pair whose left
 * token text is bytewise smallest, then right); stop at the target size or when
 * no pair occurs twice. Merges never cross a word boundary. The total vocab is
 * exactly n_vocab tokens.
 *
 * spm (tokenizer.ggml.model = "llama"):
 *   id 0 "<unk>" type 2, id 1 "<s>" type 3, id 2 "</s>" type 3,
 *   ids 3..258 "<0x00>".."<0xFF>" type 6 (byte fallback),
 *   then the distinct characters of the normalised text in bytewise order,
 *   then one piece per merge in creation order, then padding "▁w<id>"; all type 1.
 *   If n_vocab cannot hold every character, only the most frequent ones are
 *   kept (ties bytewise) and the others are reached by byte fallback only;
 *   n_vocab must be >= 259. The corpus has 60 distinct characters.
 *   Normalisation: "▁" (U+2581) prefixed and every space replaced by "▁"; a word
 *   is "▁" plus the characters up to the next space.
 *   scores: 0 for ids 0..258, -(id) for normal pieces (earlier = higher).
 *   bos_token_id 1, eos_token_id 2, unknown_token_id 0, add_bos_token true,
 *   add_eos_token false, add_space_prefix true.
 * bpe (tokenizer.ggml.model = "gpt2", tokenizer.ggml.pre = "default"):
 *   ids 0..255: GPT-2 bytes_to_unicode of byte i (UTF-8), e.g. ' ' -> "Ġ";
 *   then one token per merge (concatenated text) in rank order; then padding
 *   "<pad<id>>" (never produced by a merge); then "<|begin_of_text|>" (bos,
 *   id n_vocab-2) and "<|end_of_text|>" (eos, id n_vocab-1), type 3; type 1
 *   for everything else. tokenizer.ggml.merges: "left right" (token texts) in
 *   rank order. Training words: the text split GPT-2 style into an optional
 *   leading space plus a run of letters (bytes >= 0x80 count as letters), of
 *   digits, or of other non-space characters. add_bos_token true; no scores.
 *
 * Threading: all functions are reentrant (no global state).
 */
#ifndef SS_GENMODEL_H
#define SS_GENMODEL_H

#include <stddef.h>
#include <stdint.h>

struct genmodel_opts {
    const char *arch;      /* "llama", "qwen2", "gemma3" or "subllm" */
    const char *tokenizer; /* "spm" or "bpe" */
    const char *name;      /* general.name; NULL = "genmodel" */
    int dim;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int ffn_dim;
    int n_vocab;           /* total tokens, control/byte tokens included */
    int n_ctx;
    int wtype;             /* enum be_type: BE_F32, BE_F16, BE_BF16, BE_Q8_0 or BE_Q4_0 */
    uint64_t seed;
    int tied;              /* 1 = no output.weight (output shares token_embd) */
    float rope_theta;
    float norm_eps;
    /* Architecture extras; genmodel_opts_default() leaves them 0 (= absent). */
    int head_dim;          /* 0: dim / n_heads; else any even value <= 1024 (gemma3 style) */
    int swa_window;        /* gemma3 only: attention.sliding_window; 0 = key absent */
    int swa_pattern;       /* gemma3 only: attention.sliding_window_pattern; 0 = key absent
                            * (readers then use 6: every sixth layer global) */
    float rope_theta_swa;  /* gemma3 only: rope.freq_base_swa; 0 = key absent (10000) */
    float logit_softcap;   /* gemma3 only: final_logit_softcapping; 0 = key absent */
    /* subllm only (see above); genmodel_opts_default sets keep 0.5, keep_noise 0.1 */
    const char *structure; /* NULL: the default string for n_layers */
    float keep;            /* fraction of tokens each subsampler keeps, in [0, 1] */
    float keep_noise;      /* std of the context-dependent part of the score (>= 0) */
    /* LTE routers (any arch; see "LTE" above). lte_expert_size 0 = none. */
    int lte_expert_size;   /* S: writes lte.expert_size; ffn_dim must be a multiple */
    float lte_sparsity;    /* target fraction of experts off, in (0, 1) (default 0.5) */
    float lte_threshold;   /* tau written as lte.threshold; 0 = key absent (0.5) */
    uint64_t lte_dense_layers; /* bit l set: layer l gets no router (l < 64) */
    int lte_no_bias;       /* 1: routers without ffn_router.bias */
};

/* Tiny default: llama, spm, dim 64, 2 layers, 4 heads, 2 kv heads, ffn 192,
 * vocab 512, ctx 512, f32, seed 1, untied, theta 10000, eps 1e-5. */
void genmodel_opts_default(struct genmodel_opts *o);
/* Preset shapes by name ("1M", "10M", "100M", "300M"); other fields untouched.
 * Returns 0 or SS_EINVAL. */
int genmodel_opts_preset(struct genmodel_opts *o, const char *size);
/* Parameter count of the model the options describe (0 if invalid). */
int64_t genmodel_n_params(const struct genmodel_opts *o);

/* Writes the model to path (via a temporary file renamed into place).
 * Returns 0 or a negative SS_E* code with a message in err. */
int genmodel_write(const struct genmodel_opts *o, const char *path, char *err, size_t err_len);

/* One Q8_0 block (34 bytes) of 32 floats: d = max|x|/127 stored as fp16, q =
 * round(x/d) half away from zero (also used by lte-calibrate). Reentrant. */
void genmodel_q8_0_block(const float *x, uint8_t *out);
/* One Q4_0 block (18 bytes) of 32 floats (genmodel.c). */
void genmodel_q4_0_block(const float *x, uint8_t *out);

/* CLI: argv[0] = "gen-model". Returns a process exit status (0 ok, 1 error,
 * 2 usage). Prints a one-line summary on success, errors on stderr. */
int tool_genmodel_main(int argc, char **argv);

/* ---- tokenizer training (tools/genmodel_vocab.c), also handy for tests ---- */

/* The embedded training text: NUL-terminated UTF-8 prose, single spaces, no
 * newlines or tabs. */
const char *genmodel_corpus(void);

enum genmodel_tok { GENMODEL_TOK_SPM = 1, GENMODEL_TOK_BPE = 2 };

struct genmodel_vocab {
    int32_t n;          /* == requested n_vocab */
    char **tokens;      /* [n] NUL-terminated UTF-8 */
    float *scores;      /* [n] (spm only, NULL for bpe) */
    int32_t *types;     /* [n] llama.cpp token types */
    int64_t n_merges;
    char **merges;      /* [n_merges] "left right" (bpe only) */
    int64_t n_learned;  /* tokens created by merges (they precede the padding) */
    int32_t bos, eos, unk; /* -1 if none */
};

/* Builds the vocabulary described above. Returns 0, SS_EINVAL (n_vocab too
 * small to hold the fixed tokens, message in err) or SS_ENOMEM. */
int genmodel_vocab_build(struct genmodel_vocab *v, int kind, int32_t n_vocab, char *err, size_t err_len);
void genmodel_vocab_free(struct genmodel_vocab *v); /* zeroes *v; NULL ok */

#endif
