/* ss_error.h - one error table for every module (libuv-style errors as values).
 *
 * Functions across module boundaries return 0 on success or one of the negative
 * SS_E* codes below. Each code carries the HTTP status the server answers with and
 * a short default message. "Not now" (SS_EAGAIN) is a distinct answer, not a
 * failure: the caller retries later.
 *
 * Header-only, no dependencies: every module may include it.
 */
#ifndef SS_ERROR_H
#define SS_ERROR_H

/*        name         code  http  OpenAI error type          message */
#define SS_ERRORS(X)                                                                   \
    X(SS_OK,            0,   200, "ok",                     "ok")                      \
    X(SS_ENOMEM,       -1,   500, "server_error",           "out of memory")           \
    X(SS_EIO,          -2,   500, "server_error",           "input/output error")      \
    X(SS_EBADMODEL,    -3,   500, "server_error",           "invalid model file")      \
    X(SS_EINVAL,       -4,   400, "invalid_request_error",  "invalid argument")        \
    X(SS_ETOOLONG,     -5,   400, "invalid_request_error",  "input too long")          \
    X(SS_EAGAIN,       -6,   503, "server_error",           "resource busy, retry")    \
    X(SS_EUNSUPPORTED, -7,   400, "invalid_request_error",  "unsupported")             \
    X(SS_ECANCELLED,   -8,   499, "server_error",           "cancelled")               \
    X(SS_ENOTFOUND,    -9,   404, "invalid_request_error",  "not found")               \
    X(SS_EINTERNAL,   -10,   500, "server_error",           "internal error")          \
    X(SS_ENODEVICE,   -11,   500, "server_error",           "no such device")

enum ss_err {
#define SS_ERR_ENUM(name, code, http, type, msg) name = code,
    SS_ERRORS(SS_ERR_ENUM)
#undef SS_ERR_ENUM
};

static inline const char *ss_strerror(int code) {
    switch (code) {
#define SS_ERR_STR(name, c, http, type, msg) case c: return msg;
        SS_ERRORS(SS_ERR_STR)
#undef SS_ERR_STR
    }
    return "unknown error";
}

static inline int ss_err_http_status(int code) {
    switch (code) {
#define SS_ERR_HTTP(name, c, http, type, msg) case c: return http;
        SS_ERRORS(SS_ERR_HTTP)
#undef SS_ERR_HTTP
    }
    return 500;
}

static inline const char *ss_err_type(int code) {
    switch (code) {
#define SS_ERR_TYPE(name, c, http, type, msg) case c: return type;
        SS_ERRORS(SS_ERR_TYPE)
#undef SS_ERR_TYPE
    }
    return "server_error";
}

#endif
