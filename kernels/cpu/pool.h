/* pool.h - the CPU backend's thread pool: n-1 worker threads plus the
 * calling thread run one job at a time, fork/join (what OpenMP's
 * `parallel` region gave the kernels, without OpenMP).
 *
 * A job is fn(arg, tid, nt) for every tid in [0, nt), each on its own
 * thread at the same time (tid 0 on the caller), so a job may use
 * kcpu_pool_barrier. The caller returns once every tid has returned.
 * How the work is split is up to fn and must depend only on (tid, nt) and
 * the problem: never on timing (the backend's determinism contract,
 * kernels/backend.h). Items claimed dynamically from a shared counter are
 * fine when each item's values do not depend on the thread that runs it.
 *
 * Waiting: a worker with no job spins (pause) on the job counter for at
 * most spin_us (from SLIMSERVE_POOL_SPIN_US, default KCPU_POOL_SPIN_US_DEFAULT),
 * then sleeps on a futex; the caller wakes sleepers only when some are
 * asleep (no system call per job while they all spin). The caller waiting for
 * the workers, and a thread at a barrier, spin and then sleep the same way.
 * Each waiter adapts its spin: doubled (up to spin_us) by a wait that ended
 * while spinning, halved (down to 2 us) by one that had to sleep. So the
 * back-to-back jobs of a forward pass cost no system call on an idle machine,
 * an idle server uses no CPU, and on cores shared with busy processes (where
 * spinning only burns the time slice the awaited thread needs) the spins
 * shrink until the threads mostly sleep and are woken.
 *
 * Nesting: kcpu_pool_run called from inside a job (of any pool) runs
 * fn(arg, 0, 1) on the calling thread: one thread, no deadlock.
 *
 * Threads: one thread at a time may call kcpu_pool_run on a pool (the
 * thread that owns it, e.g. the engine thread); kcpu_pool_barrier only from
 * inside that pool's job. Linux only (futex).
 */
#ifndef SLIMSERVE_KCPU_POOL_H
#define SLIMSERVE_KCPU_POOL_H

#include <stdint.h>

struct kcpu_pool;

typedef void (*kcpu_pool_fn)(void *arg, int tid, int nt);

enum { KCPU_POOL_SPIN_US_DEFAULT = 100, KCPU_POOL_MAX_THREADS = 256 };

/* Makes a pool of n_threads threads in all (the caller plus n_threads-1
 * workers; n_threads <= 0: one per CPU this process may run on, see
 * kcpu_pool_cpus; capped at KCPU_POOL_MAX_THREADS). spin_us < 0: from the
 * environment (SLIMSERVE_POOL_SPIN_US), else that many microseconds (0: sleep
 * at once). If the system refuses a thread the pool is smaller: read
 * kcpu_pool_size. Returns 0 and *out, or SS_ENOMEM. */
int kcpu_pool_init(struct kcpu_pool **out, int n_threads, int spin_us);

/* Stops and joins the workers (sleeping or not); NULL does nothing. Not
 * while a job runs. */
void kcpu_pool_free(struct kcpu_pool *p);

/* Threads in the pool, the caller included (>= 1; 1 for NULL). */
int kcpu_pool_size(const struct kcpu_pool *p);

/* Runs the job on min(nt, kcpu_pool_size(p)) threads (at least one) and
 * returns when it is done. A NULL pool, nt <= 1 or a nested call runs
 * fn(arg, 0, 1) here. */
void kcpu_pool_run(struct kcpu_pool *p, int nt, kcpu_pool_fn fn, void *arg);

/* Parallel for: [0, n) in min(nt, pool size) contiguous pieces, one per
 * thread, cut at multiples of `align` (>= 1): fn(arg, i0, i1) with i0 < i1
 * for each nonempty piece. The pieces depend only on n, align and the thread
 * count. */
typedef void (*kcpu_pool_range_fn)(void *arg, int64_t i0, int64_t i1);
void kcpu_pool_for(struct kcpu_pool *p, int nt, int64_t n, int64_t align, kcpu_pool_range_fn fn, void *arg);

/* [*i0, *i1): piece tid of nt of [0, n) cut at multiples of align, as
 * kcpu_pool_for cuts it (possibly empty). */
void kcpu_pool_piece(int64_t n, int64_t align, int tid, int nt, int64_t *i0, int64_t *i1);

/* Waits until all nt threads of the current job (the nt fn was given)
 * reach it; their writes before it are visible to all after it. nt <= 1
 * returns at once. */
void kcpu_pool_barrier(struct kcpu_pool *p, int nt);

/* CPUs this process may run on (its affinity mask), at least 1. */
int kcpu_pool_cpus(void);

/* The spin time in effect for new pools: SLIMSERVE_POOL_SPIN_US if set to
 * an integer 0..100000, else the default. */
int kcpu_pool_spin_us_env(void);

#endif
