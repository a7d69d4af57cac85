/* tu_check.c - see tu_check.h. */
#include "tu_check.h"

void tu_check_add(Suite *s, const struct tu_case *c, size_t n, double timeout_s) {
    for (size_t i = 0; i < n; i++) {
        TCase *tc = tcase_create(c[i].name);
        if (timeout_s > 0)
            tcase_set_timeout(tc, timeout_s);
        tcase_add_test(tc, c[i].fn);
        suite_add_tcase(s, tc);
    }
}

int tu_check_run(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}
