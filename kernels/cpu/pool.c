/* pool.c - the CPU backend's thread pool (pool.h): fork/join jobs on n-1
 * workers plus the caller, spin-then-sleep waiting on Linux futexes.
 *
 * Three words carry all the waiting, each with the count of threads that
 * may be asleep on it:
 *
 *   gen   job counter     caller ++ after writing fn/arg/nt      workers wait
 *   done  jobs finished   the last worker to finish a job ++     caller waits
 *   bar_gen barriers      the last thread to reach a barrier ++  the others wait
 *
 * NOTE: waking without a lost wake-up and without a system call per job:
 * a waiter adds itself to `sleepers` and then re-reads the word before
 * FUTEX_WAIT (which itself sleeps only if the word still holds the old
 * value); a waker changes the word and then reads `sleepers`, calling
 * FUTEX_WAKE only if it is nonzero. Both pairs are seq_cst, so at least one
 * side sees the other's write (the store-buffering pattern is forbidden).
 *
 * Ordering: the caller writes the job (plain fields) before the seq_cst
 * increment of gen; a worker reads them after its acquire load of gen. A
 * worker's writes in the job reach the caller through the acq_rel countdown
 * of `pending` and the increment of `done` (acquire on the caller's side).
 * The caller waits for every worker to count down before the next job, so
 * no worker can miss a generation or read a job being rewritten.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT (meson defines it everywhere) */
#endif
#include "kernels/cpu/pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kernels/ss_error.h"

struct worker {
    struct kcpu_pool *p;
    int tid; /* 1..n-1 */
    pthread_t th;
    int64_t spin_ns; /* its current spin (wait_change), 0 when spin_ns of the pool is */
};

struct kcpu_pool {
    int n;           /* threads, the caller included */
    int64_t spin_ns;  /* the longest a waiter spins before it sleeps */
    int64_t caller_spin_ns; /* the caller's current spin (wait_change) */
    struct worker *w; /* [n-1] */
    /* the job: written by the caller before gen moves, read by workers after */
    kcpu_pool_fn fn;
    void *arg;
    int nt;
    int stop; /* set with the last increment of gen: workers exit */
    alignas(64) atomic_uint gen;
    atomic_int sleepers;
    alignas(64) atomic_uint pending; /* workers that have not finished the job */
    atomic_uint done;
    atomic_int done_sleepers;
    alignas(64) atomic_uint bar_count;
    atomic_uint bar_gen;
    atomic_int bar_sleepers;
};

/* 1 on a worker thread, and on the caller while it runs its part of a job:
 * a pool call from there runs on that thread alone. */
static _Thread_local int in_job;
/* this thread's current spin at barriers (wait_change); -1: not set yet */
static _Thread_local int64_t bar_spin_ns = -1;

/* ---------------------------------------------------------------- waiting */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void futex_wait(atomic_uint *word, unsigned old) {
    /* returns at once (EAGAIN) if *word != old; EINTR and spurious wake-ups
     * are fine: the caller re-reads the word */
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT_PRIVATE, old, NULL, NULL, 0);
}

static void futex_wake_all(atomic_uint *word) {
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Waits until *word != old; returns the new value, read with acquire.
 * Spins (pause) for up to *spin_ns, then sleeps on the futex. *spin_ns
 * adapts, per waiter: a wait that ends while spinning doubles it (up to
 * max_ns), one that had to sleep halves it (down to SPIN_MIN_NS). On an idle
 * machine the waits inside a forward pass end within microseconds, so it
 * stays at max_ns; when the cores are shared with busy processes a spinning
 * thread mostly burns the time slice the thread it waits for needs, its
 * waits end asleep, and the spin shrinks to almost nothing.
 * NOTE: no sched_yield while spinning: against busy processes that never
 * sleep, each yield handed them a whole time slice (decode fell from 14 to
 * 1.6 tokens/s, see README "Threads"). */
#define SPIN_MIN_NS 2000
static unsigned wait_change(atomic_uint *word, unsigned old, atomic_int *sleepers, int64_t *spin_ns,
                            int64_t max_ns) {
    unsigned v;
    if (*spin_ns > 0) {
        int64_t t0 = now_ns();
        for (unsigned i = 1;; i++) {
            if ((v = atomic_load_explicit(word, memory_order_acquire)) != old) {
                *spin_ns = *spin_ns * 2 < max_ns ? *spin_ns * 2 : max_ns;
                return v;
            }
            cpu_relax();
            if (i % 32 == 0 && now_ns() - t0 >= *spin_ns)
                break;
        }
        *spin_ns = *spin_ns / 2 > SPIN_MIN_NS ? *spin_ns / 2 : SPIN_MIN_NS;
    }
    for (;;) {
        atomic_fetch_add_explicit(sleepers, 1, memory_order_seq_cst);
        if (atomic_load_explicit(word, memory_order_seq_cst) == old)
            futex_wait(word, old);
        atomic_fetch_sub_explicit(sleepers, 1, memory_order_relaxed);
        if ((v = atomic_load_explicit(word, memory_order_acquire)) != old)
            return v;
    }
}

/* Moves *word on by one and wakes whoever sleeps on it (no system call when
 * nobody does). */
static void bump_and_wake(atomic_uint *word, atomic_int *sleepers) {
    atomic_fetch_add_explicit(word, 1, memory_order_seq_cst);
    if (atomic_load_explicit(sleepers, memory_order_seq_cst) > 0)
        futex_wake_all(word);
}

/* ---------------------------------------------------------------- workers */

static void *worker_main(void *v) {
    struct worker *w = v;
    struct kcpu_pool *p = w->p;
    in_job = 1;
    unsigned seen = 0; /* gen is 0 until the first job */
    for (;;) {
        seen = wait_change(&p->gen, seen, &p->sleepers, &w->spin_ns, p->spin_ns);
        if (p->stop)
            return NULL;
        if (w->tid < p->nt)
            p->fn(p->arg, w->tid, p->nt);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1)
            bump_and_wake(&p->done, &p->done_sleepers);
    }
}

void kcpu_pool_run(struct kcpu_pool *p, int nt, kcpu_pool_fn fn, void *arg) {
    if (!p || nt <= 1 || p->n <= 1 || in_job) {
        fn(arg, 0, 1);
        return;
    }
    if (nt > p->n)
        nt = p->n;
    p->fn = fn;
    p->arg = arg;
    p->nt = nt;
    atomic_store_explicit(&p->pending, (unsigned)(p->n - 1), memory_order_relaxed);
    unsigned d0 = atomic_load_explicit(&p->done, memory_order_relaxed);
    bump_and_wake(&p->gen, &p->sleepers);
    in_job = 1;
    fn(arg, 0, nt);
    in_job = 0;
    wait_change(&p->done, d0, &p->done_sleepers, &p->caller_spin_ns, p->spin_ns);
}

void kcpu_pool_barrier(struct kcpu_pool *p, int nt) {
    if (!p || nt <= 1)
        return;
    unsigned g = atomic_load_explicit(&p->bar_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == (unsigned)nt - 1) {
        /* the last to arrive: the others are waiting for bar_gen to move */
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        bump_and_wake(&p->bar_gen, &p->bar_sleepers);
    } else {
        if (bar_spin_ns < 0 || bar_spin_ns > p->spin_ns)
            bar_spin_ns = p->spin_ns;
        wait_change(&p->bar_gen, g, &p->bar_sleepers, &bar_spin_ns, p->spin_ns);
    }
}

void kcpu_pool_piece(int64_t n, int64_t align, int tid, int nt, int64_t *i0, int64_t *i1) {
    if (align < 1)
        align = 1;
    int64_t units = (n + align - 1) / align;
    int64_t u0 = units * tid / nt, u1 = units * (tid + 1) / nt;
    *i0 = u0 * align < n ? u0 * align : n;
    *i1 = u1 * align < n ? u1 * align : n;
}

struct for_job {
    kcpu_pool_range_fn fn;
    void *arg;
    int64_t n, align;
};

static void for_task(void *v, int tid, int nt) {
    const struct for_job *J = v;
    int64_t i0, i1;
    kcpu_pool_piece(J->n, J->align, tid, nt, &i0, &i1);
    if (i0 < i1)
        J->fn(J->arg, i0, i1);
}

void kcpu_pool_for(struct kcpu_pool *p, int nt, int64_t n, int64_t align, kcpu_pool_range_fn fn, void *arg) {
    if (n <= 0)
        return;
    struct for_job J = {fn, arg, n, align};
    kcpu_pool_run(p, nt, for_task, &J);
}

/* ---------------------------------------------------------------- lifecycle */

int kcpu_pool_cpus(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)(n < INT_MAX ? n : INT_MAX) : 1;
}

int kcpu_pool_spin_us_env(void) {
    const char *s = getenv("SLIMSERVE_POOL_SPIN_US");
    if (s && *s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (*end == '\0' && v >= 0 && v <= 100000)
            return (int)v;
    }
    return KCPU_POOL_SPIN_US_DEFAULT;
}

int kcpu_pool_init(struct kcpu_pool **out, int n_threads, int spin_us) {
    if (n_threads <= 0)
        n_threads = kcpu_pool_cpus();
    if (n_threads > KCPU_POOL_MAX_THREADS)
        n_threads = KCPU_POOL_MAX_THREADS;
    struct kcpu_pool *p = calloc(1, sizeof *p);
    if (!p)
        return SS_ENOMEM;
    p->spin_ns = (int64_t)(spin_us < 0 ? kcpu_pool_spin_us_env() : spin_us) * 1000;
    p->caller_spin_ns = p->spin_ns;
    p->n = 1;
    if (n_threads > 1 && !(p->w = calloc((size_t)n_threads - 1, sizeof *p->w))) {
        free(p);
        return SS_ENOMEM;
    }
    /* workers take no asynchronous signals (SIGINT, SIGTERM, ...: they go to
     * the process's other threads); faults still reach their handlers */
    sigset_t all, old;
    sigfillset(&all);
    static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS};
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++)
        sigdelset(&all, faults[i]);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 1; i < n_threads; i++) {
        struct worker *w = &p->w[i - 1];
        w->p = p;
        w->tid = i;
        w->spin_ns = p->spin_ns;
        if (pthread_create(&w->th, NULL, worker_main, w) != 0)
            break; /* NOTE: a smaller pool, not an error (kcpu_pool_size) */
        p->n = i + 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    *out = p;
    return 0;
}

void kcpu_pool_free(struct kcpu_pool *p) {
    if (!p)
        return;
    p->stop = 1;
    bump_and_wake(&p->gen, &p->sleepers);
    for (int i = 0; i < p->n - 1; i++)
        pthread_join(p->w[i].th, NULL);
    free(p->w);
    free(p);
}

int kcpu_pool_size(const struct kcpu_pool *p) {
    return p ? p->n : 1;
}
