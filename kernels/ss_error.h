/* ss_error.h - one error table for every module (libuv-style errors as values).
 *
 * Functions across module boundaries return 0 on success or one of the negative
 * SS_E* codes below, each with a short default message. "Not now" (SS_EAGAIN)
 * is a distinct answer, not a failure: the caller retries later.
 *
 * It sits in kernels/, the bottom of the layer order (server > api > scheduler
 * > engine > kernels), so every module may include it, as ggml keeps its status
 * codes in its base header. What a code means on the wire (HTTP status, OpenAI
 * error type) is the api's business: api/errors.c.
 *
 * Header-only, no dependencies.
 */
#ifndef SS_ERROR_H
#define SS_ERROR_H

/*        name         code  message */
#define SS_ERRORS(X)                                                                   \
    X(SS_OK,            0,   "ok")                      \
    X(SS_ENOMEM,       -1,   "out of memory")           \
    X(SS_EIO,          -2,   "input/output error")      \
    X(SS_EBADMODEL,    -3,   "invalid model file")      \
    X(SS_EINVAL,       -4,   "invalid argument")        \
    X(SS_ETOOLONG,     -5,   "input too long")          \
    X(SS_EAGAIN,       -6,   "resource busy, retry")    \
    X(SS_EUNSUPPORTED, -7,   "unsupported")             \
    X(SS_ECANCELLED,   -8,   "cancelled")               \
    X(SS_ENOTFOUND,    -9,   "not found")               \
    X(SS_EINTERNAL,   -10,   "internal error")          \
    X(SS_ENODEVICE,   -11,   "no such device")

enum ss_err {
#define SS_ERR_ENUM(name, code, msg) name = code,
    SS_ERRORS(SS_ERR_ENUM)
#undef SS_ERR_ENUM
};

static inline const char *ss_strerror(int code) {
    switch (code) {
#define SS_ERR_STR(name, c, msg) case c: return msg;
        SS_ERRORS(SS_ERR_STR)
#undef SS_ERR_STR
    }
    return "unknown error";
}

#endif
