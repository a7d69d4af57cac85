/* main.c - the slimserve command line: subcommands, flags, environment.
 *
 *   slimserve serve --model PATH [options]   run the OpenAI-compatible server
 *   slimserve gen-model [options]            write a synthetic test model
 *   slimserve bench [options]                load generator against a server
 *   slimserve perplexity [options]           perplexity of a model over a text file
 *   slimserve --version | help
 *
 * Every serve flag can also come from SLIMSERVE_<FLAG> (upper case, '-' -> '_',
 * e.g. SLIMSERVE_MODEL, SLIMSERVE_PORT, SLIMSERVE_API_KEY); the command line wins.
 * Bad flags or values print one clear line and exit 2; a model that cannot be
 * loaded exits 1. This is the only file that calls exit codes into being.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api/api.h"
#include "config.h"
#include "engine/engine.h"
#include "engine/gguf.h"
#include "kernels/ss_error.h"
#include "engine/tokenizer.h"
#include "server/srv.h"
#include "tools/bench.h"
#include "tools/genmodel.h"
#include "tools/lte_calibrate.h"
#include "tools/perplexity.h"

int srv_log_level = SRV_LOG_INFO;

void srv_log(int level, const char *fmt, ...) { /* the line's format: server/ops.c */
    va_list ap;
    va_start(ap, fmt);
    srv_log_v(level, NULL, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- flags */

enum opt_kind { OPT_STR, OPT_INT, OPT_SIZE, OPT_DOUBLE, OPT_BACKEND, OPT_LOGLEVEL, OPT_BOOL };

struct serve_opts {
    struct srv_config srv;
    struct eng_options eng;
    int port, threads, ctx;
    size_t kv_bytes;
    const char *chat_template;  /* --chat-template: family name, file or template text */
    const char *layer_parallel; /* --layer-parallel START:END or off (eng_lp_parse_flag) */
    const char *lp_exec;        /* --lp-exec auto|branches|merged (eng_lp_exec_parse) */
    const char *lte;            /* --lte on|off */
    double lte_threshold;       /* --lte-threshold T in (0, 1); 0 = the file's */
    const char *act_precision;  /* --activation-precision f32|int8|mixed|bf16|auto (eng_act_parse) */
    const char *pooling;        /* --pooling mean|last|cls (embeddings; default: the model's) */
    const char *speculative;    /* --speculative ngram|off */
};

struct opt {
    const char *name;   /* without "--" */
    int kind;
    long long lo, hi;   /* OPT_INT / OPT_SIZE range */
    size_t off;         /* offset of the destination in struct serve_opts */
    const char *help;
};

#define OFF(f) offsetof(struct serve_opts, f)
static const struct opt serve_flags[] = {
    {"model", OPT_STR, 0, 0, OFF(srv.model_path), "GGUF model file (required)"},
    {"host", OPT_STR, 0, 0, OFF(srv.host), "bind address (default 127.0.0.1)"},
    {"port", OPT_INT, 0, 65535, OFF(port), "TCP port (default 8080; 0 = any free port)"},
    {"threads", OPT_INT, 0, 1024, OFF(threads), "CPU threads for the forward pass (0 = all cores)"},
    {"ctx", OPT_INT, 0, 1 << 24, OFF(ctx), "max tokens per sequence (0 = model default)"},
    {"backend", OPT_BACKEND, 0, 0, OFF(eng.backend),
     "cpu (default), cuda or auto (cuda where a device is found and enabled, else cpu)"},
    {"device", OPT_INT, 0, 1023, OFF(eng.device), "CUDA device number (default 0)"},
    {"api-key", OPT_STR, 0, 0, OFF(srv.api_key), "require 'Authorization: Bearer KEY' on /v1/*"},
    {"max-body", OPT_SIZE, 1, 1LL << 40, OFF(srv.max_body), "request body limit (default 16MiB)"},
    {"max-num-seqs", OPT_INT, 1, 65536, OFF(srv.max_num_seqs), "running sequences (default 64)"},
    {"max-num-batched-tokens", OPT_INT, 1, 1 << 24, OFF(srv.max_batched_tokens),
     "tokens per engine step (default 2048)"},
    {"max-queued-requests", OPT_INT, 1, 1 << 24, OFF(srv.max_queued),
     "waiting requests before 503 (default 256)"},
    {"kv-cache-memory", OPT_SIZE, 1, 1LL << 50, OFF(kv_bytes),
     "KV cache size: BYTES, NNNKiB/MiB/GiB (also K/M/G) or NNNKB/MB/GB"},
    {"served-model-name", OPT_STR, 0, 0, OFF(srv.served_name),
     "model name clients send (default: file name without .gguf)"},
    {"max-connections", OPT_INT, 1, 1 << 20, OFF(srv.max_connections),
     "open HTTP connections (default 1000)"},
    {"timeout", OPT_INT, 1, 86400, OFF(srv.conn_timeout_s),
     "idle connection timeout in seconds (default 60)"},
    /* connection policy (server/policy.c) */
    {"header-timeout", OPT_DOUBLE, 0, 86400, OFF(srv.header_timeout_s),
     "seconds a request head may take from accept (next request on a kept-alive connection: "
     "--timeout + this) before the connection is closed (default 10; 0 = off)"},
    {"body-timeout", OPT_DOUBLE, 0, 86400, OFF(srv.body_timeout_s),
     "longest gap in seconds between two reads of a request body before the connection is "
     "closed (default 30; 0 = off)"},
    {"max-body-total", OPT_SIZE, 1, 1LL << 50, OFF(srv.max_body_total),
     "request bodies buffered at once over all connections; beyond it 503 + Retry-After "
     "(default 256MiB, at least --max-body)"},
    {"max-connections-per-ip", OPT_INT, 0, 1 << 20, OFF(srv.max_conns_per_ip),
     "open connections from one client address; more are closed at accept (default 0 = no limit)"},
    {"shutdown-timeout", OPT_DOUBLE, 0, 3600, OFF(srv.shutdown_grace_s),
     "seconds in-flight requests get to finish on SIGTERM (default 5)"},
    {"max-stream-buffer", OPT_SIZE, 1024, 1LL << 32, OFF(srv.max_stream_buffer),
     "unsent bytes a stream may queue before it is cancelled as too slow (default 4MiB)"},
    {"log-level", OPT_LOGLEVEL, 0, 0, OFF(srv.log_level), "error, warn, info (default), debug"},
    {"no-prefix-cache", OPT_BOOL, 0, 0, OFF(srv.no_prefix_cache),
     "disable prefix caching (a flag; also --no-prefix-cache=true|false)"},
    {"no-swa-recycle", OPT_BOOL, 0, 0, OFF(srv.no_swa_recycle),
     "sliding-window layers keep every KV page instead of recycling those behind the window"},
    {"chat-template", OPT_STR, 0, 0, OFF(chat_template),
     "chat template: chatml, llama3, llama2, mistral, gemma, or a file holding a Jinja "
     "template of one of those families (default: the model's tokenizer.chat_template)"},
    {"layer-parallel", OPT_STR, 0, 0, OFF(layer_parallel),
     "START:END runs layers [START, END) as pairs (layer parallelism), or off "
     "(default: the model file's lp.range key, else off)"},
    {"lp-exec", OPT_STR, 0, 0, OFF(lp_exec),
     "how a layer pair runs: branches (each layer's own projections), merged (both layers' "
     "projections as one wider GEMM, norm weights folded in) or auto (default: as the backend "
     "asks: merged on cuda, branches on cpu)"},
    /* operations and scale-out (server/ops.c; the scheduler's queue timeout) */
    {"api-key-file", OPT_STR, 0, 0, OFF(srv.api_key_file),
     "file of API keys, one per line (# comments); any of them (or --api-key) opens /v1/*"},
    {"cors-allow-origins", OPT_STR, 0, 0, OFF(srv.cors_origins),
     "CORS: '*' or comma-separated origins allowed to call the API from a browser (default: none)"},
    {"log-format", OPT_STR, 0, 0, OFF(srv.log_format),
     "text (default) or json: one JSON object per log line, with request_id"},
    {"max-queue-time", OPT_DOUBLE, 0, 86400, OFF(srv.max_queue_time),
     "seconds a request may wait for its first seat before 503 + Retry-After (default 0 = no limit)"},
    {"sse-keepalive", OPT_DOUBLE, 0, 3600, OFF(srv.sse_keepalive_s),
     "seconds of silence on a stream before an SSE ': keep-alive' comment (default 15; 0 = off)"},
    /* speculative decoding (scheduler/spec.c) */
    {"speculative", OPT_STR, 0, 0, OFF(speculative),
     "ngram (default) or off: n-gram (prompt-lookup) draft tokens verified in the batch; the "
     "output stays the same, only faster where it repeats its context"},
    {"spec-tokens", OPT_INT, 1, 16, OFF(srv.spec_tokens),
     "most draft tokens per sequence and step (default 3, at most 16)"},
    {"spec-ngram-min", OPT_INT, 1, 16, OFF(srv.spec_ngram_min),
     "shortest n-gram looked up for drafts (default 2)"},
    {"spec-ngram-max", OPT_INT, 1, 16, OFF(srv.spec_ngram_max),
     "longest n-gram looked up for drafts (default 5, at least --spec-ngram-min)"},
    {"spec-max-batch-tokens", OPT_INT, 1, SCHED_SPEC_MAX_BATCH_TOKENS, OFF(srv.spec_max_batch_tokens),
     "drafts join a step only while its decode tokens plus drafts stay within this (default 4, at most 64)"},
    /* LTE (engine/lte.c) */
    {"lte", OPT_STR, 0, 0, OFF(lte),
     "on (default) or off: off runs a model with LTE routers densely, every expert on"},
    {"lte-threshold", OPT_DOUBLE, 0, 1, OFF(lte_threshold),
     "LTE: expert i runs iff sigmoid(router logit i) > T, T in (0, 1) (default: the file's "
     "lte.threshold, else 0.5)"},
    {"pooling", OPT_STR, 0, 0, OFF(pooling),
     "mean, last or cls: how /v1/embeddings pools the final hidden states of an input (default: "
     "the model's <arch>.pooling_type key when it names one of those, else mean)"},
    {"activation-precision", OPT_STR, 0, 0, OFF(act_precision),
     "f32, int8, mixed, bf16 or auto: matmul activations in fp32, quantised to int8 (integer dot "
     "products on quantised weights) or rounded to BF16 with the weights (vdpbf16ps); mixed = "
     "int8 for Q4_0/Q5_0/Q8_0 weights, fp32 for the K-quants; auto (the default) = bf16 on "
     "AVX512-BF16 CPUs, mixed where the CPU kernels are AVX2, else f32"},
};
#define N_SERVE_FLAGS (sizeof(serve_flags) / sizeof(serve_flags[0]))

static void usage(FILE *f) {
    fprintf(f, "usage:\n"
               "  slimserve serve --model PATH [options]\n"
               "  slimserve gen-model [options]      (slimserve gen-model --help)\n"
               "  slimserve bench [options]          (slimserve bench --help)\n"
               "  slimserve perplexity [options]     (slimserve perplexity --help)\n"
               "  slimserve lte-calibrate [options]  (slimserve lte-calibrate --help)\n"
               "  slimserve --version\n"
               "  slimserve help\n\nserve options (each also from SLIMSERVE_<NAME>):\n");
    for (size_t i = 0; i < N_SERVE_FLAGS; i++)
        fprintf(f, "  --%-24s %s\n", serve_flags[i].name, serve_flags[i].help);
}

/* Parses "123", "64MiB", "2G", "512KB". Binary units for K/M/G/T, KiB..TiB;
 * decimal for KB, MB, GB, TB. Returns 0 or -1. */
static int parse_size(const char *s, unsigned long long *out) {
    errno = 0;
    char *end;
    if (!*s || *s == '-')
        return -1;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || !(v >= 0)) /* nan, inf: refused (no NaN -> integer) */
        return -1;
    static const struct { const char *suf; double mul; } units[] = {
        {"", 1}, {"b", 1},
        {"k", 1024.0}, {"kib", 1024.0}, {"kb", 1e3},
        {"m", 1048576.0}, {"mib", 1048576.0}, {"mb", 1e6},
        {"g", 1073741824.0}, {"gib", 1073741824.0}, {"gb", 1e9},
        {"t", 1099511627776.0}, {"tib", 1099511627776.0}, {"tb", 1e12},
    };
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(end, units[i].suf) == 0) {
            double b = v * units[i].mul;
            if (b >= 1.8e19)
                return -1;
            *out = (unsigned long long)b;
            return 0;
        }
    }
    return -1;
}

/* Stores value into the field of o described by f. src names where the value
 * came from ("--port" or "SLIMSERVE_PORT") for the message. 0 or -1. */
static int set_opt(struct serve_opts *o, const struct opt *f, const char *value, const char *src) {
    char *dst = (char *)o + f->off;
    switch (f->kind) {
    case OPT_STR:
        *(const char **)dst = value;
        return 0;
    case OPT_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || v < f->lo || v > f->hi) {
            fprintf(stderr, "slimserve: %s: expected an integer in [%lld, %lld], got '%s'\n", src,
                    f->lo, f->hi, value);
            return -1;
        }
        *(int *)dst = (int)v;
        return 0;
    }
    case OPT_DOUBLE: {
        char *end;
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end || !(v >= (double)f->lo && v <= (double)f->hi)) {
            fprintf(stderr, "slimserve: %s: expected a number in [%lld, %lld], got '%s'\n", src,
                    f->lo, f->hi, value);
            return -1;
        }
        *(double *)dst = v;
        return 0;
    }
    case OPT_SIZE: {
        unsigned long long v;
        if (parse_size(value, &v) || v < (unsigned long long)f->lo ||
            v > (unsigned long long)f->hi) {
            fprintf(stderr, "slimserve: %s: expected a size such as 1048576, 512MiB or 2G, got '%s'\n",
                    src, value);
            return -1;
        }
        *(size_t *)dst = (size_t)v;
        return 0;
    }
    case OPT_BACKEND:
        if (strcmp(value, "cpu") && strcmp(value, "cuda") && strcmp(value, "auto")) {
            fprintf(stderr, "slimserve: %s: expected 'cpu', 'cuda' or 'auto', got '%s'\n", src, value);
            return -1;
        }
        *(const char **)dst = value;
        return 0;
    case OPT_BOOL:
        if (!strcmp(value, "1") || !strcasecmp(value, "true") || !strcasecmp(value, "yes") ||
            !strcasecmp(value, "on")) {
            *(int *)dst = 1;
            return 0;
        }
        if (!strcmp(value, "0") || !strcasecmp(value, "false") || !strcasecmp(value, "no") ||
            !strcasecmp(value, "off")) {
            *(int *)dst = 0;
            return 0;
        }
        fprintf(stderr, "slimserve: %s: expected true or false, got '%s'\n", src, value);
        return -1;
    case OPT_LOGLEVEL: {
        static const char *const lv[] = {"error", "warn", "info", "debug"};
        for (int i = 0; i < 4; i++) {
            if (strcasecmp(value, lv[i]) == 0) {
                *(int *)dst = i;
                return 0;
            }
        }
        fprintf(stderr, "slimserve: %s: expected error, warn, info or debug, got '%s'\n", src,
                value);
        return -1;
    }
    }
    return -1;
}

static void opts_default(struct serve_opts *o) {
    memset(o, 0, sizeof(*o));
    o->srv.host = "127.0.0.1";
    o->port = 8080;
    o->eng.backend = "cpu";
    o->srv.max_body = 16u << 20;
    o->srv.max_num_seqs = 64;
    o->srv.max_batched_tokens = 2048;
    o->srv.max_queued = 256;
    o->srv.max_connections = 1000;
    o->srv.conn_timeout_s = 60;
    o->srv.header_timeout_s = 10.0;
    o->srv.body_timeout_s = 30.0;
    /* max_body_total 0: 256 MiB or --max-body, whichever is larger (cmd_serve) */
    o->srv.shutdown_grace_s = 5.0;
    o->srv.max_stream_buffer = 4u << 20;
    o->srv.log_level = SRV_LOG_INFO;
    o->srv.sse_keepalive_s = 15.0;
    o->srv.spec_tokens = SCHED_SPEC_DEF_TOKENS;
    o->srv.spec_ngram_min = SCHED_SPEC_DEF_NGRAM_MIN;
    o->srv.spec_ngram_max = SCHED_SPEC_DEF_NGRAM_MAX;
    o->srv.spec_max_batch_tokens = SCHED_SPEC_DEF_BATCH_TOKENS;
}

/* Environment first, then argv. Returns 0, or 2 on a usage error (message
 * printed), or 3 if help was asked for. */
static int parse_serve_args(struct serve_opts *o, int argc, char **argv) {
    opts_default(o);
    for (size_t i = 0; i < N_SERVE_FLAGS; i++) {
        char env[64] = "SLIMSERVE_";
        size_t n = strlen(env);
        for (const char *p = serve_flags[i].name; *p && n + 1 < sizeof(env); p++)
            env[n++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
        env[n] = '\0';
        const char *v = getenv(env);
        if (v && *v && set_opt(o, &serve_flags[i], v, env))
            return 2;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return 3;
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "slimserve serve: unexpected argument '%s' (see 'slimserve help')\n", a);
            return 2;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt *f = NULL;
        for (size_t k = 0; k < N_SERVE_FLAGS; k++)
            if (strlen(serve_flags[k].name) == nl && !strncmp(serve_flags[k].name, name, nl))
                f = &serve_flags[k];
        if (!f) {
            fprintf(stderr, "slimserve serve: unknown flag '%.*s' (see 'slimserve help')\n",
                    (int)(nl + 2), a);
            return 2;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v && f->kind == OPT_BOOL)
            v = "true"; /* a bare flag */
        if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "slimserve serve: flag '--%s' needs a value\n", f->name);
                return 2;
            }
            v = argv[++i];
        }
        char src[64];
        snprintf(src, sizeof(src), "--%s", f->name);
        if (set_opt(o, f, v, src))
            return 2;
    }
    if (!o->srv.model_path || !*o->srv.model_path) {
        fprintf(stderr, "slimserve serve: --model PATH is required (or SLIMSERVE_MODEL)\n");
        return 2;
    }
    if (o->srv.api_key && !*o->srv.api_key)
        o->srv.api_key = NULL;
    return 0;
}

/* "dir/name.gguf" -> "name" (malloc'd). */
static char *default_served_name(const char *path) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t n = strlen(b);
    if (n > 5 && strcasecmp(b + n - 5, ".gguf") == 0)
        n -= 5;
    if (n == 0)
        return strdup("model");
    return strndup(b, n);
}

/* Reads a whole small file (a Jinja template) into a malloc'd string; NULL if
 * it cannot be read or is over 1 MiB. */
static char *read_small_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc((1u << 20) + 1);
    size_t n = buf ? fread(buf, 1, 1u << 20, f) : 0;
    int big = buf && n == (1u << 20) && fgetc(f) != EOF;
    fclose(f);
    if (!buf || big) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* --chat-template (a family name, a file, or template text), checked before
 * the model loads. Returns 0 (cfg->chat_family stays NONE without an
 * override), or 2 (usage error, message printed) when it is not recognised. */
static int chat_template_override(const char *override, struct srv_config *cfg) {
    cfg->chat_family = API_TMPL_NONE;
    cfg->chat_bos = 0;
    if (!override || !*override)
        return 0;
    int fam = api_tmpl_by_name(override);
    if (fam > 0) {
        cfg->chat_family = fam;
        cfg->chat_bos = api_tmpl_default_bos(fam);
        srv_log(SRV_LOG_INFO, "chat template: %s (--chat-template)", api_tmpl_name(fam));
        return 0;
    }
    size_t len = 0;
    char *text = read_small_file(override, &len);
    const char *src = text ? text : override;
    fam = api_tmpl_detect(src, text ? len : strlen(override), &cfg->chat_bos);
    free(text);
    if (fam == API_TMPL_NONE) {
        fprintf(stderr,
                "slimserve: --chat-template '%.80s': not a family name (chatml, llama3, "
                "llama2, mistral, gemma) nor a template of one of those families\n",
                override);
        return 2;
    }
    cfg->chat_family = fam;
    srv_log(SRV_LOG_INFO, "chat template: %s%s (--chat-template)", api_tmpl_name(fam),
            cfg->chat_bos ? " with BOS" : "");
    return 0;
}

/* Without an override: the loaded model's tokenizer.chat_template, or else
 * the family whose turn markers its vocabulary holds. A model with neither
 * only logs: its chat requests get a 400. */
static void chat_template_from_model(const struct eng_model *m, struct srv_config *cfg) {
    struct gguf_str t = {0, NULL};
    if (gguf_get_str(eng_model_gguf(m), "tokenizer.chat_template", &t) < 0) t.len = 0;
    switch (api_tmpl_for_model(t.s, (size_t)t.len, eng_model_tok(m), &cfg->chat_family, &cfg->chat_bos)) {
    case API_TMPL_SRC_UNKNOWN:
        srv_log(SRV_LOG_WARN,
                "the model's chat template is not one of the known families (chatml, "
                "llama3, llama2, mistral, gemma): /v1/chat/completions answers 400; "
                "choose one with --chat-template");
        return;
    case API_TMPL_SRC_VOCAB:
        srv_log(SRV_LOG_INFO, "the model has no chat template; its vocabulary has the %s turn "
                              "markers, so chat requests use that family",
                api_tmpl_name(cfg->chat_family));
        return;
    case API_TMPL_SRC_NONE:
        srv_log(SRV_LOG_INFO, "the model has no chat template: /v1/chat/completions answers "
                              "400 unless --chat-template is given");
        return;
    default:
        srv_log(SRV_LOG_INFO, "chat template: %s%s (from the model)",
                api_tmpl_name(cfg->chat_family), cfg->chat_bos ? " with BOS" : "");
    }
}

/* --pooling's value -> ENG_POOL_*; -1 if it is none of them. */
static int pooling_by_name(const char *s) {
    if (!strcmp(s, "mean")) return ENG_POOL_MEAN;
    if (!strcmp(s, "last")) return ENG_POOL_LAST;
    if (!strcmp(s, "cls")) return ENG_POOL_CLS;
    return -1;
}

/* Embeddings' pooling: the flag, else the model's pooling_type when it is
 * mean, cls or last, else mean (none and rank have no single vector). */
static void choose_pooling(const char *flag, const struct eng_model *m, struct srv_config *cfg) {
    static const char *names[] = {"none", "mean", "cls", "last", "rank"};
    int pt = eng_model_config(m)->pooling_type;
    const char *why = "the default";
    if (flag) {
        cfg->pooling = pooling_by_name(flag);
        why = "--pooling";
    } else if (pt == ENG_POOL_MEAN || pt == ENG_POOL_CLS || pt == ENG_POOL_LAST) {
        cfg->pooling = pt;
        why = "the model's pooling_type";
    } else {
        cfg->pooling = ENG_POOL_MEAN;
        if (pt != ENG_POOL_UNSET) why = pt == ENG_POOL_NONE ? "the model's pooling_type is none" : "the model's pooling_type is rank";
    }
    srv_log(SRV_LOG_INFO, "embeddings: %s pooling (%s)", names[cfg->pooling], why);
}

static int cmd_serve(int argc, char **argv) {
    struct serve_opts o;
    int rc = parse_serve_args(&o, argc, argv);
    if (rc == 3) {
        usage(stdout);
        return 0;
    }
    if (rc)
        return rc;
    srv_log_level = o.srv.log_level;
    char ops_err[300];
    if (srv_ops_setup(&o.srv, ops_err, sizeof ops_err) != 0) {
        fprintf(stderr, "slimserve serve: %s\n", ops_err);
        return 2; /* what it gathered is freed at exit */
    }
    o.srv.port = o.port;
    if (o.srv.max_body_total == 0)
        o.srv.max_body_total = o.srv.max_body > (256u << 20) ? o.srv.max_body : (256u << 20);
    if (o.srv.max_body_total < o.srv.max_body) {
        fprintf(stderr, "slimserve serve: --max-body-total (%zu bytes) is below --max-body (%zu "
                        "bytes): no request could use the whole body limit\n",
                o.srv.max_body_total, o.srv.max_body);
        return 2;
    }
    o.eng.n_threads = o.threads;
    o.eng.n_ctx = o.ctx;
    o.eng.kv_bytes = o.kv_bytes;
    o.eng.max_batch_tokens = o.srv.max_batched_tokens;
    if (o.lte && strcmp(o.lte, "on") != 0 && strcmp(o.lte, "off") != 0) {
        fprintf(stderr, "slimserve serve: --lte: expected on or off, got '%s'\n", o.lte);
        return 2;
    }
    if (o.lte_threshold >= 1.0 || (o.lte_threshold <= 0.0 && o.lte_threshold != 0.0)) {
        fprintf(stderr, "slimserve serve: --lte-threshold: expected a number in (0, 1)\n");
        return 2;
    }
    o.eng.lte_off = o.lte && strcmp(o.lte, "off") == 0;
    if (o.speculative && strcmp(o.speculative, "ngram") != 0 && strcmp(o.speculative, "off") != 0) {
        fprintf(stderr, "slimserve serve: --speculative: expected ngram or off, got '%s'\n", o.speculative);
        return 2;
    }
    o.srv.spec_ngram = !o.speculative || strcmp(o.speculative, "ngram") == 0;
    if (o.srv.spec_ngram_min > o.srv.spec_ngram_max) {
        fprintf(stderr, "slimserve serve: --spec-ngram-min (%d) is above --spec-ngram-max (%d)\n",
                o.srv.spec_ngram_min, o.srv.spec_ngram_max);
        return 2;
    }
    o.eng.lte_threshold = (float)o.lte_threshold;
    if (eng_act_parse(o.act_precision ? o.act_precision : "auto", &o.eng.act_precision) < 0) {
        fprintf(stderr, "slimserve serve: --activation-precision: '%s': use f32, int8, mixed, bf16 or auto\n",
                o.act_precision);
        return 2;
    }
    if (o.pooling && pooling_by_name(o.pooling) < 0) {
        fprintf(stderr, "slimserve serve: --pooling: '%s': use mean, last or cls\n", o.pooling);
        return 2;
    }
    if (o.lp_exec && eng_lp_exec_parse(o.lp_exec, &o.eng.lp_exec) < 0) {
        fprintf(stderr, "slimserve serve: --lp-exec: '%s': use auto, branches or merged\n", o.lp_exec);
        return 2;
    }
    if (o.layer_parallel) {
        char lperr[200];
        if (eng_lp_parse_flag(o.layer_parallel, &o.eng, lperr, sizeof lperr) < 0) {
            fprintf(stderr, "slimserve serve: --layer-parallel: %s\n", lperr);
            return 2;
        }
    }

    char *name_buf = NULL;
    if (!o.srv.served_name || !*o.srv.served_name) {
        name_buf = default_served_name(o.srv.model_path);
        if (!name_buf) {
            fprintf(stderr, "slimserve: out of memory\n");
            return 1;
        }
        o.srv.served_name = name_buf;
    }

    rc = chat_template_override(o.chat_template, &o.srv);
    if (rc) {
        free(name_buf);
        return rc;
    }
    struct eng_model *m = NULL;
    char err[512] = "";
    if (strcmp(o.eng.backend, "auto") == 0) { /* one line saying which, and why */
        char why[400];
        o.eng.backend = eng_backend_choose(o.eng.backend, o.eng.device, why, sizeof why);
        srv_log(SRV_LOG_INFO, "%s", why);
    }
    srv_log(SRV_LOG_INFO, "loading model %s (backend %s)", o.srv.model_path, o.eng.backend);
    /* A --layer-parallel range is applied after the load, so that a range the
     * model cannot take is told apart (a usage error) from a bad file. */
    struct eng_options load_opts = o.eng;
    if (load_opts.lp_mode == ENG_LP_RANGE) load_opts.lp_mode = ENG_LP_OFF;
    rc = eng_model_load(&m, o.srv.model_path, &load_opts, err, sizeof(err));
    if (rc < 0 || !m) {
        fprintf(stderr, "slimserve: cannot load model '%s': %s\n", o.srv.model_path,
                err[0] ? err : ss_strerror(rc));
        free(name_buf);
        return 1;
    }
    srv_log(SRV_LOG_INFO, "activation precision: %s%s", eng_act_name(eng_model_act_precision(m)),
            o.eng.act_precision == ENG_ACT_AUTO ? " (auto)" : "");
    if (o.eng.lp_mode == ENG_LP_RANGE &&
        (rc = eng_model_apply_layer_parallel(m, &o.eng, err, sizeof(err))) < 0) {
        fprintf(stderr, "slimserve serve: --layer-parallel: %s\n", err[0] ? err : ss_strerror(rc));
        eng_model_free(m);
        free(name_buf);
        return 2;
    }
    if (o.srv.chat_family == API_TMPL_NONE)
        chat_template_from_model(m, &o.srv);
    choose_pooling(o.pooling, m, &o.srv);
    int lp_s, lp_e;
    if (eng_model_layer_parallel(m, &lp_s, &lp_e))
        srv_log(SRV_LOG_INFO, "layer parallelism: layers %d..%d run as %d pairs (%s)", lp_s, lp_e - 1,
                (lp_e - lp_s) / 2, eng_model_lp_merged(m) ? "merged GEMMs" : "branch by branch");
    struct eng_lte_info lte;
    if (eng_model_lte_info(m, &lte))
        srv_log(SRV_LOG_INFO, "LTE: %d routed layers, %d experts of %d neurons, threshold %g%s", lte.n_routed,
                lte.n_experts, lte.expert_size, (double)lte.tau, lte.enabled ? "" : " (off: dense)");
    const struct eng_config *cfg = eng_model_config(m);
    srv_log(SRV_LOG_INFO, "model %s: arch %s, %d layers, dim %d, vocab %d, context %d, %d KV pages",
            o.srv.served_name, cfg->arch_name, cfg->n_layers, cfg->dim, cfg->n_vocab,
            eng_model_n_ctx(m), (int)eng_model_n_pages(m));
    if (cfg->n_swa_layers > 0)
        srv_log(SRV_LOG_INFO, "sliding window: %d of %d layers see the last %d tokens; %s", cfg->n_swa_layers,
                cfg->n_layers, cfg->swa_window,
                o.srv.no_swa_recycle || cfg->n_swa_layers == cfg->n_layers
                    ? "their KV pages are all kept"
                    : "their KV pages behind the window go back to the pool (--no-swa-recycle keeps them)");
    if (o.srv.spec_ngram && eng_model_n_levels(m) > 1)
        srv_log(SRV_LOG_INFO, "speculative decoding: off (not for SUBLLM models)");
    else if (o.srv.spec_ngram)
        srv_log(SRV_LOG_INFO, "speculative decoding: n-gram drafts of up to %d tokens (n-grams of %d..%d), while a "
                "step's decode tokens and drafts stay within %d (--speculative off disables it)",
                o.srv.spec_tokens, o.srv.spec_ngram_min, o.srv.spec_ngram_max, o.srv.spec_max_batch_tokens);
    const struct tok *tk = eng_model_tok(m);
    if (tk && tok_n_vocab(tk) < cfg->n_vocab)
        srv_log(SRV_LOG_INFO, "the embedding has %d rows but the tokenizer %d tokens: ids %d..%d "
                "are padding, never sampled (their logits count as -inf)", cfg->n_vocab,
                (int)tok_n_vocab(tk), (int)tok_n_vocab(tk), cfg->n_vocab - 1);

    rc = srv_run(&o.srv, m);
    eng_model_free(m);
    free(name_buf);
    return rc;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("slimserve %s\n", SLIMSERVE_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "serve"))
        return cmd_serve(argc - 2, argv + 2);
    if (!strcmp(cmd, "gen-model"))
        return tool_genmodel_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench"))
        return tool_bench_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "lte-calibrate"))
        return tool_lte_calibrate_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "perplexity"))
        return tool_perplexity_main(argc - 1, argv + 1);
    fprintf(stderr, "slimserve: unknown command '%s' (see 'slimserve help')\n", cmd);
    return 2;
}
