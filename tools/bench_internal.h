/* bench_internal.h - private helpers shared by tools/bench.c and
 * tools/bench_parse.c (not part of the bench.h API; include only from tools/bench*.c).
 *
 * Prefix: bench_. No global state; a bench_sbuf is used by one thread at a time.
 */
#ifndef SS_TOOLS_BENCH_INTERNAL_H
#define SS_TOOLS_BENCH_INTERNAL_H

#include <stddef.h>

/* Growable NUL-terminated byte string; p is NULL until the first append.
 * Zero-initialize ({0}) before use; the owner frees p. */
struct bench_sbuf {
    char *p;
    size_t len, cap;
    int oom; /* an append failed (the string is then incomplete) */
};

/* Appends n bytes of s. 0, or SS_ENOMEM (b->oom set, b unchanged). */
int bench_sb_add(struct bench_sbuf *b, const void *s, size_t n);
/* Appends formatted text. 0, SS_ENOMEM (b->oom set) or SS_EINVAL (format error). */
int bench_sb_printf(struct bench_sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
