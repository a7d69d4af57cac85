/* test_pool.c - the CPU backend's thread pool (kernels/cpu/pool.h): every
 * task once, on distinct concurrent threads; thousands of jobs back to back;
 * workers asleep then woken; nested calls; the barrier; shutdown with
 * sleeping workers; parallel results equal to a serial loop. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/pool.h"
#include "tu_check.h"

static const int sizes[] = {1, 2, 3, 5, 8};
#define N_SIZES ((int)(sizeof sizes / sizeof sizes[0]))

static struct kcpu_pool *make(int n, int spin_us) {
    struct kcpu_pool *p = NULL;
    ck_assert_int_eq(kcpu_pool_init(&p, n, spin_us), 0);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(kcpu_pool_size(p), n);
    return p;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------ every task once */

struct once_job {
    atomic_int calls[KCPU_POOL_MAX_THREADS];
    pthread_t who[KCPU_POOL_MAX_THREADS];
    atomic_int arrived; /* threads inside the job at once */
    int nt_seen, bad_nt;
};

static void once_task(void *arg, int tid, int nt) {
    struct once_job *J = arg;
    if (tid < 0 || tid >= nt || nt != J->nt_seen)
        J->bad_nt = 1;
    else {
        atomic_fetch_add(&J->calls[tid], 1);
        J->who[tid] = pthread_self();
    }
    /* every tid waits here for all the others: only concurrent threads get out */
    atomic_fetch_add(&J->arrived, 1);
    while (atomic_load(&J->arrived) < nt)
        sched_yield();
}

START_TEST(test_every_tid_once) {
    for (int si = 0; si < N_SIZES; si++) {
        const int n = sizes[si];
        for (int spin = 0; spin <= 100; spin += 100) {
            struct kcpu_pool *p = make(n, spin);
            for (int req = -1; req <= n + 2; req++) {
                struct once_job *J = calloc(1, sizeof *J);
                ck_assert_ptr_nonnull(J);
                J->nt_seen = req <= 1 ? 1 : (req < n ? req : n);
                kcpu_pool_run(p, req, once_task, J);
                ck_assert_msg(!J->bad_nt, "pool %d, asked %d: wrong tid/nt", n, req);
                for (int t = 0; t < KCPU_POOL_MAX_THREADS; t++)
                    ck_assert_int_eq(atomic_load(&J->calls[t]), t < J->nt_seen);
                ck_assert(pthread_equal(J->who[0], pthread_self())); /* tid 0 is the caller */
                for (int a = 0; a < J->nt_seen; a++)
                    for (int b = a + 1; b < J->nt_seen; b++)
                        ck_assert(!pthread_equal(J->who[a], J->who[b]));
                free(J);
            }
            kcpu_pool_free(p);
        }
    }
}
END_TEST

/* ---------------------------------------------------- parallel for: pieces */

struct for_job {
    atomic_int *hits;
    atomic_int calls, bad;
    int64_t n, align;
};

static void for_range(void *arg, int64_t i0, int64_t i1) {
    struct for_job *J = arg;
    atomic_fetch_add(&J->calls, 1);
    if (i0 >= i1 || i0 < 0 || i1 > J->n || i0 % J->align != 0)
        atomic_store(&J->bad, 1);
    for (int64_t i = i0; i0 < i1 && i < i1; i++)
        atomic_fetch_add(&J->hits[i], 1);
}

START_TEST(test_for_covers_once) {
    static const int64_t ns[] = {0, 1, 2, 3, 15, 16, 17, 63, 64, 65, 127, 1000, 4097};
    static const int64_t aligns[] = {1, 4, 16, 64};
    atomic_int *hits = calloc(4097, sizeof *hits);
    ck_assert_ptr_nonnull(hits);
    for (int si = 0; si < N_SIZES; si++) {
        struct kcpu_pool *p = make(sizes[si], -1);
        for (size_t a = 0; a < sizeof aligns / sizeof aligns[0]; a++)
            for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++)
                for (int req = 1; req <= sizes[si] + 1; req++) {
                    const int64_t n = ns[k];
                    for (int64_t i = 0; i < n; i++)
                        atomic_store(&hits[i], 0);
                    struct for_job J = {.hits = hits, .n = n, .align = aligns[a]};
                    kcpu_pool_for(p, req, n, aligns[a], for_range, &J);
                    ck_assert_msg(!atomic_load(&J.bad), "n %lld align %lld: a bad piece", (long long)n,
                                  (long long)aligns[a]);
                    ck_assert_int_le(atomic_load(&J.calls), req < sizes[si] ? req : sizes[si]);
                    for (int64_t i = 0; i < n; i++)
                        ck_assert_msg(atomic_load(&hits[i]) == 1, "n %lld align %lld threads %d: index %lld ran %d times",
                                      (long long)n, (long long)aligns[a], req, (long long)i, atomic_load(&hits[i]));
                }
        kcpu_pool_free(p);
    }
    /* the pieces: contiguous, in thread order, cut at multiples of align */
    for (int nt = 1; nt <= 9; nt++)
        for (int64_t n = 0; n < 300; n += 7) {
            int64_t end = 0;
            for (int t = 0; t < nt; t++) {
                int64_t i0, i1;
                kcpu_pool_piece(n, 16, t, nt, &i0, &i1);
                ck_assert(i0 <= i1);
                if (i0 < i1) {
                    ck_assert_int_eq(i0, end);
                    ck_assert_int_eq(i0 % 16, 0);
                    end = i1;
                }
            }
            ck_assert_int_eq(end, n);
        }
    free(hits);
}
END_TEST

/* --------------------------------------------- results equal a serial loop */

struct axpy_job {
    const double *x;
    double *y;
};

static double f(double v) { return v * 1.000001 + 1.0 / (1.0 + v * v); }

static void axpy_range(void *arg, int64_t i0, int64_t i1) {
    struct axpy_job *J = arg;
    for (int64_t i = i0; i < i1; i++)
        J->y[i] = f(J->x[i]);
}

START_TEST(test_equals_serial) {
    const int64_t n = 100003;
    double *x = malloc(sizeof *x * n), *y = malloc(sizeof *y * n), *ref = malloc(sizeof *ref * n);
    ck_assert(x && y && ref);
    for (int64_t i = 0; i < n; i++) {
        x[i] = (double)((i * 7919) % 1000) / 37.0;
        ref[i] = f(x[i]);
    }
    for (int si = 0; si < N_SIZES; si++) {
        struct kcpu_pool *p = make(sizes[si], -1);
        for (int rep = 0; rep < 3; rep++) {
            memset(y, 0, sizeof *y * n);
            struct axpy_job J = {x, y};
            kcpu_pool_for(p, sizes[si], n, 64, axpy_range, &J);
            ck_assert(memcmp(y, ref, sizeof *y * n) == 0);
        }
        kcpu_pool_free(p);
    }
    free(x);
    free(y);
    free(ref);
}
END_TEST

/* ------------------------------------------------------------ back to back */

struct count_job {
    int64_t per_tid[KCPU_POOL_MAX_THREADS]; /* each written by its own thread only */
};

static void count_task(void *arg, int tid, int nt) {
    (void)nt;
    ((struct count_job *)arg)->per_tid[tid]++;
}

START_TEST(test_back_to_back) {
    /* spin 100 us: workers see jobs spinning; spin 0: every job goes through
     * the futex (sleep, wake) */
    const int spins[] = {100, 0};
    for (int s = 0; s < 2; s++)
        for (int n = 2; n <= 3; n++) {
            struct kcpu_pool *p = make(n, spins[s]);
            struct count_job J = {{0}};
            const int jobs = spins[s] ? 10000 : 4000;
            for (int j = 0; j < jobs; j++)
                kcpu_pool_run(p, j % 3 == 2 ? 2 : n, count_task, &J); /* some jobs leave a worker out */
            ck_assert_int_eq(J.per_tid[0], jobs);
            ck_assert_int_eq(J.per_tid[1], jobs);
            if (n == 3)
                ck_assert_int_eq(J.per_tid[2], jobs - jobs / 3);
            kcpu_pool_free(p);
        }
}
END_TEST

/* ------------------------------------------------- sleeping workers wake up */

START_TEST(test_sleep_then_wake) {
    struct kcpu_pool *p = make(3, 200); /* spins 0.2 ms, then sleeps */
    for (int round = 0; round < 4; round++) {
        struct count_job J = {{0}};
        kcpu_pool_run(p, 3, count_task, &J);
        ck_assert(J.per_tid[0] == 1 && J.per_tid[1] == 1 && J.per_tid[2] == 1);
        /* asleep: the idle process uses (almost) no CPU */
        sleep_ms(5); /* well past the spin */
        double c0 = cpu_seconds();
        sleep_ms(100);
        double used = cpu_seconds() - c0;
        ck_assert_msg(used < 0.02, "idle pool used %.3f s of CPU in 0.1 s (workers not asleep?)", used);
    }
    kcpu_pool_free(p);
}
END_TEST

/* ------------------------------------------------------------------ nested */

struct nest_job {
    struct kcpu_pool *p, *other;
    atomic_int inner_calls, inner_bad;
    atomic_int outer_calls;
};

static void inner_task(void *arg, int tid, int nt) {
    struct nest_job *J = arg;
    if (tid != 0 || nt != 1)
        atomic_store(&J->inner_bad, 1);
    atomic_fetch_add(&J->inner_calls, 1);
}

static void outer_task(void *arg, int tid, int nt) {
    (void)tid;
    struct nest_job *J = arg;
    atomic_fetch_add(&J->outer_calls, 1);
    kcpu_pool_run(J->p, nt, inner_task, J);     /* the same pool: runs here, alone */
    kcpu_pool_run(J->other, 4, inner_task, J);  /* another pool: here too */
    kcpu_pool_barrier(J->p, 1);                 /* a team of one: returns at once */
}

START_TEST(test_nested) {
    struct kcpu_pool *p = make(3, -1), *other = make(2, -1);
    struct nest_job J = {.p = p, .other = other};
    for (int r = 0; r < 100; r++)
        kcpu_pool_run(p, 3, outer_task, &J);
    ck_assert_int_eq(atomic_load(&J.outer_calls), 300);
    ck_assert_int_eq(atomic_load(&J.inner_calls), 600);
    ck_assert(!atomic_load(&J.inner_bad));
    kcpu_pool_free(other);
    kcpu_pool_free(p);
    /* a NULL pool runs the job on the caller */
    struct nest_job K = {0};
    kcpu_pool_run(NULL, 8, inner_task, &K);
    ck_assert_int_eq(atomic_load(&K.inner_calls), 1);
    ck_assert(!atomic_load(&K.inner_bad));
    ck_assert_int_eq(kcpu_pool_size(NULL), 1);
}
END_TEST

/* ----------------------------------------------------------------- barrier */

#define PHASES 500

struct bar_job {
    struct kcpu_pool *p;
    int slot[KCPU_POOL_MAX_THREADS]; /* plain ints: the barrier orders them */
    atomic_int bad;
};

static void bar_task(void *arg, int tid, int nt) {
    struct bar_job *J = arg;
    for (int ph = 1; ph <= PHASES; ph++) {
        J->slot[tid] = ph;
        kcpu_pool_barrier(J->p, nt);
        for (int t = 0; t < nt; t++)
            if (J->slot[t] != ph)
                atomic_store(&J->bad, 1);
        kcpu_pool_barrier(J->p, nt); /* nobody writes phase ph+1 before all have read ph */
    }
}

START_TEST(test_barrier) {
    const int spins[] = {100, 0};
    for (int s = 0; s < 2; s++)
        for (int n = 2; n <= 4; n++) {
            struct kcpu_pool *p = make(n, spins[s]);
            for (int req = 2; req <= n; req++) {
                struct bar_job *J = calloc(1, sizeof *J);
                ck_assert_ptr_nonnull(J);
                J->p = p;
                kcpu_pool_run(p, req, bar_task, J);
                ck_assert_msg(!atomic_load(&J->bad), "pool %d, team %d, spin %d: a thread passed the barrier early",
                              n, req, spins[s]);
                free(J);
            }
            kcpu_pool_free(p);
        }
}
END_TEST

/* ---------------------------------------------------------------- shutdown */

START_TEST(test_shutdown) {
    kcpu_pool_free(NULL);
    for (int n = 1; n <= 8; n++) {
        struct kcpu_pool *p = make(n, 0); /* never used */
        kcpu_pool_free(p);
        p = make(n, 0); /* used, then its workers sleep */
        struct count_job J = {{0}};
        kcpu_pool_run(p, n, count_task, &J);
        sleep_ms(2);
        kcpu_pool_free(p);
        p = make(n, 1000); /* freed while its workers still spin */
        kcpu_pool_run(p, n, count_task, &J);
        kcpu_pool_free(p);
        for (int t = 0; t < n; t++)
            ck_assert_int_eq(J.per_tid[t], 2);
    }
    /* n <= 0: one thread per CPU this process may use */
    struct kcpu_pool *p = NULL;
    ck_assert_int_eq(kcpu_pool_init(&p, 0, -1), 0);
    ck_assert_int_eq(kcpu_pool_size(p), kcpu_pool_cpus());
    kcpu_pool_free(p);
}
END_TEST

START_TEST(test_spin_env) {
    static const struct {
        const char *v;
        int want;
    } cases[] = {{"0", 0}, {"250", 250}, {"100000", 100000}, {"100001", KCPU_POOL_SPIN_US_DEFAULT},
                 {"-3", KCPU_POOL_SPIN_US_DEFAULT}, {"12x", KCPU_POOL_SPIN_US_DEFAULT},
                 {"", KCPU_POOL_SPIN_US_DEFAULT}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        setenv("SLIMSERVE_POOL_SPIN_US", cases[i].v, 1);
        ck_assert_int_eq(kcpu_pool_spin_us_env(), cases[i].want);
    }
    unsetenv("SLIMSERVE_POOL_SPIN_US");
    ck_assert_int_eq(kcpu_pool_spin_us_env(), KCPU_POOL_SPIN_US_DEFAULT);
}
END_TEST

static Suite *pool_suite(void) {
    Suite *s = suite_create("pool");
    const struct tu_case tests[] = {
        {"every_tid_once", test_every_tid_once},
        {"for_covers_once", test_for_covers_once},
        {"equals_serial", test_equals_serial},
        {"back_to_back", test_back_to_back},
        {"sleep_then_wake", test_sleep_then_wake},
        {"nested", test_nested},
        {"barrier", test_barrier},
        {"shutdown", test_shutdown},
        {"spin_env", test_spin_env},
    };
    tu_check_add(s, tests, TU_NCASES(tests), 60);
    return s;
}

int main(void) {
    int failed = tu_check_run(pool_suite());
    return failed != 0;
}
