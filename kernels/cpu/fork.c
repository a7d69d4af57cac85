/* fork.c - the CPU backend's fork/join of two tasks (be_ops.fork2), used by
 * layer parallelism to run the two branches of a layer pair at once.
 *
 * Split execution: two threads of the parent's pool, each running one task on
 * its own single-threaded CPU context (its own tile scratch, the parent's
 * instruction set), so a pair's sub-layer costs one fork and one join instead
 * of one per operation. The two contexts are made on the first split and
 * kept until the parent is freed; if they cannot be made, the tasks run one
 * after the other on the parent. Both ways give bitwise the same values (the
 * per-row determinism contract of kcpu.h holds for any thread count).
 *
 * When to split (kcpu_ctx.fork_mode, from SLIMSERVE_LP_EXEC at be_open, a
 * measuring knob): "seq" never, "split" always (two one-thread halves,
 * whatever the backend's thread count), unset/other: iff the backend runs
 * exactly two threads (one task per core). A pool of one thread runs the
 * two halves one after the other.
 * NOTE: with more than two threads the tasks run one after the other, each
 * with every thread: splitting 2k threads into two teams of k would need a
 * pool per half (their workers nested in the parent's).
 *
 * Thread: the thread that owns the parent context; task 1 runs on a worker.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kcpu.h"
#include "kernels/cpu/q8.h"

int kcpu_fork_mode_env(void) {
    const char *env = getenv("SLIMSERVE_LP_EXEC");
    if (env && !strcmp(env, "seq")) return KCPU_FORK_SEQ;
    if (env && !strcmp(env, "split")) return KCPU_FORK_SPLIT;
    return KCPU_FORK_AUTO;
}

/* Makes the two one-thread halves if missing; 0 or a negative SS_E* code. */
static int make_halves(struct kcpu_ctx *c) {
    for (int j = 0; j < 2; j++) {
        if (c->half[j]) continue;
        void *h = NULL;
        int rc = kcpu_ops.init(&h, 1);
        if (rc < 0) return rc;
        c->half[j] = h;
    }
    return 0;
}

struct fork_job {
    be_task_fn fn;
    struct be *half; /* [2] */
    void **arg;      /* [2] */
};

static void fork_task(void *v, int tid, int nt) {
    const struct fork_job *J = v;
    for (int j = tid; j < 2; j += nt) /* a team of one (nested or a one-thread pool) runs both */
        J->fn(&J->half[j], J->arg[j]);
}

void kcpu_fork2(void *ctx, be_task_fn fn, void *a0, void *a1) {
    struct kcpu_ctx *c = ctx;
    int split = c->fork_mode == KCPU_FORK_SPLIT || (c->fork_mode == KCPU_FORK_AUTO && c->n_threads == 2);
    if (!split || make_halves(c) < 0) {
        struct be self = {&kcpu_ops, c};
        fn(&self, a0);
        fn(&self, a1);
        return;
    }
    struct be half[2];
    void *arg[2] = {a0, a1};
    for (int j = 0; j < 2; j++) {
        c->half[j]->isa = c->isa; /* kcpu_ctx_set_isa may have changed the parent's */
        /* the halves compute with the parent's activation precision, so a
         * split pair gives what the parent would (fork2's contract) */
        int prec = kq8_precision(c);
        if (prec != kq8_precision(c->half[j]) && kq8_set_precision(c->half[j], prec) != prec) {
            struct be self = {&kcpu_ops, c}; /* cannot match it: run both here */
            fn(&self, a0);
            fn(&self, a1);
            return;
        }
        half[j] = (struct be){&kcpu_ops, c->half[j]};
    }
    struct fork_job J = {fn, half, arg};
    kcpu_pool_run(c->pool, 2, fork_task, &J);
}

void kcpu_fork_free(struct kcpu_ctx *c) {
    for (int j = 0; j < 2; j++) {
        if (c->half[j]) kcpu_ops.free(c->half[j]);
        c->half[j] = NULL;
    }
}
