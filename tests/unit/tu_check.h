/* tu_check.h - the Check runner boilerplate every unit test shares: a table
 * of named tests becomes one TCase each, and a suite runs to a failure count.
 * No model or engine code: kernel-only tests link it too. */
#ifndef SLIMSERVE_TU_CHECK_H
#define SLIMSERVE_TU_CHECK_H

#include <check.h>
#include <stddef.h>

struct tu_case {
    const char *name;
    const TTest *fn;
};

/* Adds one TCase per entry of c[0..n) to s, each with timeout_s seconds
 * (0: Check's default, CK_DEFAULT_TIMEOUT). */
void tu_check_add(Suite *s, const struct tu_case *c, size_t n, double timeout_s);
/* Runs s (CK_NORMAL output), frees the runner and returns the number of
 * failed tests. */
int tu_check_run(Suite *s);

#define TU_NCASES(a) (sizeof(a) / sizeof((a)[0]))

#endif
