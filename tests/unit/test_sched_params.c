/* test_sched_params.c - the scheduler's pure pieces: request parameter
 * lifecycle, the checks of a request against the model (the one place the
 * api and sched_submit both ask), the ready list's hand-off rules, and the
 * priority policy (waiting order, preemption victim) on hand-made queues.
 * Expected values are written out from the limits, not taken from the code.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ss_error.h"
#include "scheduler/kv.h"
#include "scheduler/sched.h"
#include "scheduler/sched_internal.h"
#include "tu_check.h"

START_TEST(test_params_lifecycle) {
    struct req_params p;
    req_params_init(&p);
    ck_assert_int_eq(p.max_tokens, 16);
    ck_assert_int_eq(p.logprobs, -1);
    ck_assert(p.repetition_penalty == 1.0f);
    ck_assert_ptr_null(p.prompt);
    ck_assert_ptr_null(p.stops);

    p.prompt = malloc(3 * sizeof(int32_t));
    p.prompt[0] = 4, p.prompt[1] = 5, p.prompt[2] = 6;
    p.n_prompt = 3;
    const char *stops[2] = {"END", "\n\n"};
    size_t stop_len[2] = {3, 2};
    p.stops = req_stops_new(stops, stop_len, 2);
    ck_assert_ptr_nonnull(p.stops);
    ck_assert_int_eq((int)p.stops->max_len, 3);
    p.bias_ids = malloc(sizeof(int32_t));
    p.bias_vals = malloc(sizeof(float));
    p.bias_ids[0] = 9;
    p.bias_vals[0] = -3.5f;
    p.n_bias = 1;
    p.max_tokens = 40;

    struct req_params q;
    ck_assert_int_eq(req_params_copy(&q, &p), 0);
    ck_assert_ptr_ne(q.prompt, p.prompt);
    ck_assert_ptr_eq(q.stops, p.stops); /* shared, not copied (issue 14) */
    ck_assert_int_eq(p.stops->refs, 2);
    ck_assert_ptr_ne(q.bias_ids, p.bias_ids);
    ck_assert_int_eq(q.n_prompt, 3);
    ck_assert_int_eq(q.prompt[2], 6);
    ck_assert_int_eq(q.stops->n, 2);
    ck_assert_str_eq(q.stops->s[1], "\n\n");
    ck_assert_uint_eq(q.stops->len[1], 2);
    ck_assert_int_eq(q.n_bias, 1);
    ck_assert(q.bias_vals[0] == -3.5f);
    ck_assert_int_eq(q.max_tokens, 40);

    /* free empties the owned fields, keeps the scalars, and may run twice */
    req_params_free(&p);
    ck_assert_ptr_null(p.prompt);
    ck_assert_ptr_null(p.stops);
    ck_assert_int_eq(q.stops->refs, 1);
    ck_assert_ptr_null(p.bias_ids);
    ck_assert_int_eq(p.n_prompt + p.n_bias, 0);
    ck_assert_int_eq(p.max_tokens, 40);
    req_params_free(&p);
    req_params_free(NULL);
    ck_assert_int_eq(q.prompt[0], 4); /* the copy is independent */
    req_params_free(&q);
}
END_TEST

START_TEST(test_check_prompt) {
    struct sched_limits lim = {.n_ctx = 64, .n_vocab = 100, .n_pages = 0};
    char msg[320];
    int32_t ok[] = {0, 50, 99};
    ck_assert_int_eq(sched_check_prompt(&lim, ok, 3, msg, sizeof(msg)), 0);
    int32_t hi[] = {1, 2, 100};
    ck_assert_int_eq(sched_check_prompt(&lim, hi, 3, msg, sizeof(msg)), SS_EINVAL);
    /* names the id, its index and the vocabulary */
    ck_assert_msg(strstr(msg, "100") && strstr(msg, "index 2") && strstr(msg, "0..99"), "%s", msg);
    int32_t neg[] = {-1};
    ck_assert_int_eq(sched_check_prompt(&lim, neg, 1, msg, sizeof(msg)), SS_EINVAL);
    ck_assert_msg(strstr(msg, "-1"), "%s", msg);
}
END_TEST

START_TEST(test_check_lengths) {
    struct sched_limits lim = {.n_ctx = 64, .n_vocab = 100, .n_pages = 0};
    char msg[320];
    int field = -1;
    /* exactly at the limit fits */
    ck_assert_int_eq(sched_check_lengths(&lim, 60, 4, msg, sizeof(msg), &field), 0);
    ck_assert_int_eq(field, SCHED_FIELD_NONE);
    /* a prompt that fills the context leaves no room: the prompt is at fault */
    ck_assert_int_eq(sched_check_lengths(&lim, 64, 1, msg, sizeof(msg), &field), SS_ETOOLONG);
    ck_assert_int_eq(field, SCHED_FIELD_PROMPT);
    ck_assert_msg(strstr(msg, "64 tokens") && strstr(msg, "context"), "%s", msg);
    /* fits alone, not with max_tokens: max_tokens is at fault */
    ck_assert_int_eq(sched_check_lengths(&lim, 60, 5, msg, sizeof(msg), &field), SS_ETOOLONG);
    ck_assert_int_eq(field, SCHED_FIELD_MAX_TOKENS);
    ck_assert_msg(strstr(msg, "64") && strstr(msg, "65") && strstr(msg, "n_prompt_tokens=60"), "%s",
                  msg);

    /* The pool: 3 pages of 16 hold 48 tokens, whatever the context. */
    lim.n_pages = 3;
    ck_assert_int_eq(sched_check_lengths(&lim, 40, 3 * KV_PAGE_SLOTS - 40, msg, sizeof(msg), &field), 0);
    ck_assert_int_eq(sched_check_lengths(&lim, 40, 3 * KV_PAGE_SLOTS - 39, msg, sizeof(msg), &field),
                     SS_ETOOLONG);
    ck_assert_int_eq(field, SCHED_FIELD_PROMPT);
    ck_assert_msg(strstr(msg, "needs 4 KV pages") && strstr(msg, "only 3 pages"), "%s", msg);
}
END_TEST

START_TEST(test_check_params) {
    struct sched_limits lim = {.n_ctx = 64, .n_vocab = 100, .n_pages = 0};
    char msg[320];
    int field;
    struct req_params p;
    req_params_init(&p);
    ck_assert_int_eq(sched_check_params(&lim, &p, msg, sizeof(msg), &field), SS_EINVAL);
    ck_assert_str_eq(msg, "the prompt is empty");
    int32_t ids[] = {3, 4};
    p.prompt = ids;
    p.n_prompt = 2;
    ck_assert_int_eq(sched_check_params(&lim, &p, msg, sizeof(msg), &field), 0);
    p.max_tokens = 0;
    ck_assert_int_eq(sched_check_params(&lim, &p, msg, sizeof(msg), &field), SS_EINVAL);
    ck_assert_int_eq(field, SCHED_FIELD_MAX_TOKENS);
    p.max_tokens = 16;
    p.logprobs = REQ_MAX_LOGPROBS + 1;
    ck_assert_int_eq(sched_check_params(&lim, &p, msg, sizeof(msg), &field), SS_EINVAL);
    p.logprobs = REQ_MAX_LOGPROBS;
    ids[1] = 100;
    ck_assert_int_eq(sched_check_params(&lim, &p, msg, sizeof(msg), &field), SS_EINVAL);
    ck_assert_int_eq(field, SCHED_FIELD_PROMPT);
    ids[1] = 4;
    p.max_tokens = 63;
    ck_assert_int_eq(sched_check_params(&lim, &p, msg, sizeof(msg), &field), SS_ETOOLONG);
    ck_assert_int_eq(field, SCHED_FIELD_MAX_TOKENS);
}
END_TEST

static int refs_of(struct sched_req *r) {
    pthread_mutex_lock(&r->lock);
    int n = r->refs;
    pthread_mutex_unlock(&r->lock);
    return n;
}

START_TEST(test_ready_list) {
    struct sched_ready rl;
    ck_assert_int_eq(sched_ready_init(&rl), 0);
    struct sched_req *a = sched_req_new(), *b = sched_req_new(), *c = sched_req_new();
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_nonnull(c);
    /* a request is listed once however often it is pushed; the list holds a reference */
    sched_ready_push(&rl, a);
    sched_ready_push(&rl, b);
    sched_ready_push(&rl, a);
    sched_ready_push(&rl, c);
    ck_assert_int_eq(refs_of(a), 2);
    struct sched_req *out[4];
    ck_assert_uint_eq(sched_ready_pop(&rl, out, 2), 2); /* oldest first, at most cap */
    ck_assert_ptr_eq(out[0], a);
    ck_assert_ptr_eq(out[1], b);
    /* once popped it can be listed again, behind what is still there */
    sched_ready_push(&rl, a);
    ck_assert_int_eq(refs_of(a), 3);
    ck_assert_uint_eq(sched_ready_pop(&rl, out + 2, 2), 2);
    ck_assert_ptr_eq(out[2], c);
    ck_assert_ptr_eq(out[3], a);
    ck_assert_uint_eq(sched_ready_pop(&rl, out, 4), 0);
    for (int i = 0; i < 4; i++) sched_req_unref(out[i]);
    ck_assert_int_eq(refs_of(a), 1);
    /* destroy drops the references of whatever is still listed */
    sched_ready_push(&rl, b);
    ck_assert_int_eq(refs_of(b), 2);
    sched_ready_destroy(&rl);
    ck_assert_int_eq(refs_of(b), 1);
    sched_req_unref(a);
    sched_req_unref(b);
    sched_req_unref(c);
}
END_TEST

/* vLLM's "priority": lower values first among waiting requests; within a
 * priority a preempted sequence goes to the front and new arrivals keep
 * submission order; the preemption victim has the largest value (the latest
 * admitted among equals) and is never one already in this step's batch. */
START_TEST(test_priority_policy) {
    struct sched_req r[4];
    struct seq q[4];
    memset(r, 0, sizeof r);
    memset(q, 0, sizeof q);
    for (int i = 0; i < 4; i++) q[i].req = &r[i];
    ck_assert_int_eq(sched_waiting_before(&q[1], &q[0]), 0); /* same priority: arrival order */
    r[1].p.priority = -1;
    ck_assert_int_eq(sched_waiting_before(&q[1], &q[0]), 1);
    ck_assert_int_eq(sched_waiting_before(&q[0], &q[1]), 0);
    r[1].p.priority = 0;
    q[2].admit_order = 7; /* preempted: ahead of new arrivals of its priority... */
    ck_assert_int_eq(sched_waiting_before(&q[2], &q[1]), 1);
    r[1].p.priority = -5; /* ...but not of a lower value */
    ck_assert_int_eq(sched_waiting_before(&q[2], &q[1]), 0);
    r[2].p.priority = 3; /* a preempted sequence of a higher value waits behind new ones */
    ck_assert_int_eq(sched_waiting_before(&q[2], &q[0]), 0);

    struct sched *s = calloc(1, sizeof(*s));
    ck_assert_ptr_nonnull(s);
    struct seq *running[4] = {&q[0], &q[1], &q[2], &q[3]};
    s->running = running;
    s->n_running = 4;
    for (int i = 0; i < 4; i++) r[i].p.priority = 0;
    ck_assert_int_eq(sched_preempt_victim(s, 0), 3); /* equals: the most recently admitted */
    r[1].p.priority = 9;
    ck_assert_int_eq(sched_preempt_victim(s, 0), 1);
    ck_assert_int_eq(sched_preempt_victim(s, 1), 1);
    ck_assert_int_eq(sched_preempt_victim(s, 2), 3); /* index 1 is already in the batch */
    r[2].p.priority = 9;
    ck_assert_int_eq(sched_preempt_victim(s, 0), 2); /* equals: the later admitted */
    r[3].p.priority = -3;
    ck_assert_int_eq(sched_preempt_victim(s, 3), 3); /* only itself left */
    free(s);
}
END_TEST

int main(void) {
    Suite *su = suite_create("sched_params");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_params_lifecycle);
    tcase_add_test(tc, test_check_prompt);
    tcase_add_test(tc, test_check_lengths);
    tcase_add_test(tc, test_check_params);
    tcase_add_test(tc, test_ready_list);
    tcase_add_test(tc, test_priority_policy);
    suite_add_tcase(su, tc);
    int nf = tu_check_run(su);
    return nf != 0;
}
