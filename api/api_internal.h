/* api_internal.h - request-parsing helpers shared by completions.c, chat.c and
 * tokenize.c (params.c). Not a public interface: only api/ includes it.
 *
 * Conventions: field accessors treat an absent field and a JSON null alike
 * ("not given", return 0); they return 1 when a valid value was stored and a
 * negative SS_E* code with *err filled (param = the field name) otherwise.
 */
#ifndef SS_API_INTERNAL_H
#define SS_API_INTERNAL_H

#include <cjson/cJSON.h>

#include "api/api.h"

const cJSON *api_field(const cJSON *obj, const char *name);
int api_get_number(const cJSON *obj, const char *name, double *out, struct api_error *err);
/* Integer in [lo, hi] (as doubles; values beyond 2^53 lose precision). */
int api_get_integer(const cJSON *obj, const char *name, double lo, double hi, int64_t *out,
                    struct api_error *err);
int api_get_bool(const cJSON *obj, const char *name, int *out, struct api_error *err);
/* Always returns SS_EINVAL: "'name' must be RANGE, got X". */
int api_range_error(struct api_error *err, const char *name, const char *range, double got);

/* Parses body as a JSON object. Returns the tree (caller cJSON_Delete()s) or
 * NULL with *err filled (400). A NUL in a string (raw or \u0000) is refused
 * (C strings would cut it silently). max_values > 0 bounds the values the body
 * may hold (counted before parsing, so cJSON's memory stays bounded); above
 * it the error names param and says too_many (NULL: a generic message). */
cJSON *api_parse_object(const char *body, size_t len, size_t max_values, const char *param,
                        const char *too_many, struct api_error *err);
/* Bound on the JSON values of a completions / chat body: the prompt's ids or
 * messages (a few values each) and the other fields. */
#define API_MAX_VALUES(mi) ((size_t)4 * (size_t)((mi)->n_ctx > 0 ? (mi)->n_ctx : 0) + 65536)
/* Shared frame of api_completion_parse / api_chat_parse: defaults, the JSON
 * object, the kind's own field parser, cleanup on error. */
typedef int (*api_fields_fn)(const struct api_model_info *mi, const cJSON *root,
                             struct api_completion *out, struct api_error *err);
int api_request_parse(const struct api_model_info *mi, const char *body, size_t len, int kind,
                      api_fields_fn fields, struct api_completion *out, struct api_error *err);

/* "model": absent or the served name (else 404 model_not_found). */
int api_parse_model(const struct api_model_info *mi, const cJSON *root, struct api_error *err);

/* Fields shared by completions and chat: stream and stream_options, n,
 * temperature/top_p/top_k/min_p/seed, presence/frequency/repetition
 * penalties, logit_bias, ignore_eos, stop, output constraints
 * (api_parse_structured). Fills c (p must be initialised). */
int api_parse_common(const struct api_model_info *mi, const cJSON *root, struct api_completion *c,
                     struct api_error *err);

/* structured.c: response_format / structured_outputs / guided_* / json_schema /
 * grammar -> p->grammar (compiled; at most one constraint). 0 or negative
 * with *err (400 with the compiler's position of the problem). */
int api_parse_structured(const cJSON *root, struct req_params *p, struct api_error *err);

/* Encodes len bytes of text into *ids (malloc'd, replacing what was there)
 * and *n. An empty result is an error (param). max_count > 0: a text of more
 * than max_count tokens is SS_ETOOLONG (context_length_exceeded), found
 * without tokenising all of it (tok_encode_max); 0: no limit. Returns 0 or
 * negative. */
int api_encode_text(const struct api_model_info *mi, const char *s, size_t len, int add_bos,
                    int parse_special, int64_t max_count, const char *param, int32_t **ids,
                    int32_t *n, struct api_error *err);
/* The token limit of a generation prompt: the context (a prompt must leave
 * room for one generated token, so n_ctx tokens are already too many, and
 * sched_check_lengths says so with the exact count). */
#define API_PROMPT_MAX_COUNT(mi) ((int64_t)(mi)->n_ctx)

/* Token ids from a JSON array, used verbatim: integers that fit 32 bits,
 * then the vocabulary check (sched_check_prompt). what names the list in
 * messages ("'prompt'", "input[2]"), param is the field. An empty array is an
 * error. Returns 0 with *ids (malloc'd, replacing what was there) and *n, or
 * negative with *err. */
int api_ids_from_array(const struct api_model_info *mi, const cJSON *arr, const char *param, const char *what,
                       int32_t **ids, int32_t *n, struct api_error *err);

/* The scheduler's limits for this model (its checks: scheduler/params.c). */
struct sched_limits api_limits(const struct api_model_info *mi);
/* Turns a scheduler check's answer rc (0, SS_EINVAL, SS_ETOOLONG; msg set
 * when negative) into *err naming param. Returns rc. */
int api_check_error(struct api_error *err, int rc, const char *param, const char *msg);

/* After the prompt is known: applies max_tokens (read from the field named
 * mt_name, or default_max clamped to the room left), has the scheduler check
 * prompt and max_tokens against the context and the KV pool
 * (sched_check_lengths), and validates min_tokens <= max_tokens. */
int api_parse_lengths(const struct api_model_info *mi, const cJSON *root, const char *mt_name,
                      int default_max, struct api_completion *c, struct api_error *err);

/* chat.c: renders root's "messages" with the model's chat template and
 * encodes them (special tokens parsed, no extra BOS) into p->prompt, with
 * api_encode_text's max_count. Shared by /v1/chat/completions and /tokenize. */
int api_chat_prompt(const struct api_model_info *mi, const cJSON *root,
                    const struct api_tools *tools, int64_t max_count, struct req_params *p,
                    struct api_error *err);

/* tools.c: tools / tool_choice / parallel_tool_calls -> c->tools (NULL when
 * there are none or tool_choice is "none"), and for "required" or a named
 * function the forcing grammar in c->p.grammar (a 400 if another constraint
 * is already there). functions / function_call are a 400. 0 or negative with
 * *err. */
int api_parse_tools(const struct api_model_info *mi, const cJSON *root, struct api_completion *c,
                    struct api_error *err);
/* v as Python's json.dumps writes it: separators ", " and ": " (indent 0), or
 * newlines and indent spaces per level (indent > 0); non-ASCII kept. */
void api_json_py(struct api_buf *b, const cJSON *v, int indent, int level);

#endif
