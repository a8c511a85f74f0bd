/*
 * Timers and signal watches on a qrpc_loop: one-shot and periodic timers
 * fire when due and never before, a periodic timer keeps its schedule and
 * skips what a stalled loop missed, callbacks may stop, restart or free
 * their own timer, timers left on a loop are freed with it, and a watched
 * signal reaches its callback on the loop thread.
 */
#include <check.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#include "qrpc/qrpc.h"

#define MS UINT64_C(1000000)

static qrpc_loop *loop;

static void setup(void) { ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0); }

static void teardown(void) {
  qrpc_loop_free(loop);
  loop = NULL;
}

typedef struct ticks {
  int fired;
  int stop_after;   /* stop the timer on this tick (0: never) */
  int free_after;   /* free the timer on this tick (0: never) */
  int restart_once; /* a one-shot timer restarts itself once */
  uint64_t due[64];
  uint64_t ran[64];
} ticks;

static void on_tick(qrpc_timer *t, void *arg) {
  ticks *k = arg;
  if (k->fired < 64) {
    k->due[k->fired] = qrpc_timer_due_ns(t);
    k->ran[k->fired] = qrpc_loop_now_ns(loop);
  }
  k->fired++;
  if (k->restart_once && k->fired == 1)
    ck_assert_int_eq(qrpc_timer_start(t, 2 * MS, 0), 0);
  if (k->stop_after && k->fired == k->stop_after) qrpc_timer_stop(t);
  if (k->free_after && k->fired == k->free_after) qrpc_timer_free(t);
}

START_TEST(test_one_shot) {
  ticks k = {0};
  qrpc_timer *t;
  ck_assert_int_eq(qrpc_timer_new(loop, on_tick, &k, &t), 0);
  ck_assert_int_eq(qrpc_timer_active(t), 0);
  uint64_t t0 = qrpc_loop_now_ns(loop);
  ck_assert_int_eq(qrpc_timer_start(t, 20 * MS, 0), 0);
  ck_assert_int_eq(qrpc_timer_active(t), 1);
  /* Nothing else is pending: the loop ends once the timer has fired. */
  ck_assert_int_eq(qrpc_loop_run(loop), 0);
  ck_assert_int_eq(k.fired, 1);
  ck_assert_int_eq(qrpc_timer_active(t), 0);
  ck_assert_uint_ge(k.due[0], t0 + 20 * MS);
  ck_assert_uint_ge(k.ran[0], k.due[0]);
  /* Restarted, it fires again. */
  ck_assert_int_eq(qrpc_timer_start(t, 1 * MS, 0), 0);
  ck_assert_int_eq(qrpc_loop_run(loop), 0);
  ck_assert_int_eq(k.fired, 2);
  qrpc_timer_free(t);
}
END_TEST

START_TEST(test_periodic_schedule) {
  ticks k = {.stop_after = 10};
  qrpc_timer *t;
  ck_assert_int_eq(qrpc_timer_new(loop, on_tick, &k, &t), 0);
  uint64_t period = 5 * MS, t0 = qrpc_loop_now_ns(loop);
  ck_assert_int_eq(qrpc_timer_start(t, period, period), 0);
  ck_assert_int_eq(qrpc_loop_run(loop), 0);
  ck_assert_int_eq(k.fired, 10);
  ck_assert_int_eq(qrpc_timer_active(t), 0);
  /* Tick k is due on the fixed schedule, whenever the previous one ran,
   * unless the loop fell whole periods behind and skipped some. */
  uint64_t skipped = qrpc_timer_skipped(t);
  for (int i = 0; i < 10; i++) {
    ck_assert_uint_ge(k.ran[i], k.due[i]);
    if (i > 0) ck_assert_uint_eq((k.due[i] - k.due[i - 1]) % period, 0);
  }
  ck_assert_uint_ge(k.due[0], t0 + period);
  ck_assert_uint_eq(k.due[9], k.due[0] + (9 + skipped) * period);
  qrpc_timer_free(t);
}
END_TEST

static void stall(qrpc_timer *t, void *arg) {
  ticks *k = arg;
  on_tick(t, arg);
  if (k->fired == 1) {
    /* The loop is busy for 3.5 periods: ticks 2 to 4 are overdue. */
    struct timespec ts = {0, 35 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

START_TEST(test_periodic_skips_missed) {
  ticks k = {.stop_after = 3};
  qrpc_timer *t;
  ck_assert_int_eq(qrpc_timer_new(loop, stall, &k, &t), 0);
  ck_assert_int_eq(qrpc_timer_start(t, 10 * MS, 10 * MS), 0);
  ck_assert_int_eq(qrpc_loop_run(loop), 0);
  ck_assert_int_eq(k.fired, 3);
  /* No burst: the tick after the stall is the next one still ahead, and
   * the ones the stall covered are counted as skipped. */
  ck_assert_uint_ge(qrpc_timer_skipped(t), 3);
  ck_assert_uint_eq(k.due[1] - k.due[0], (qrpc_timer_skipped(t) + 1) * 10 * MS);
  ck_assert_uint_ge(k.ran[1], k.due[1]);
  qrpc_timer_free(t);
}
END_TEST

START_TEST(test_callback_restarts_and_frees) {
  ticks k = {.restart_once = 1, .free_after = 2};
  qrpc_timer *t;
  ck_assert_int_eq(qrpc_timer_new(loop, on_tick, &k, &t), 0);
  ck_assert_int_eq(qrpc_timer_start(t, 1 * MS, 0), 0);
  ck_assert_int_eq(qrpc_loop_run(loop), 0);
  /* Restarted by its first callback, freed by its second. */
  ck_assert_int_eq(k.fired, 2);

  ticks p = {.free_after = 4};
  ck_assert_int_eq(qrpc_timer_new(loop, on_tick, &p, &t), 0);
  ck_assert_int_eq(qrpc_timer_start(t, 1 * MS, 1 * MS), 0);
  ck_assert_int_eq(qrpc_loop_run(loop), 0);
  ck_assert_int_eq(p.fired, 4);
}
END_TEST

START_TEST(test_stop_before_due_and_errors) {
  ticks k = {0};
  qrpc_timer *t;
  ck_assert_int_eq(qrpc_timer_new(NULL, on_tick, &k, &t), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_timer_new(loop, NULL, &k, &t), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_timer_new(loop, on_tick, &k, NULL), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_timer_start(NULL, 0, 0), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_timer_new(loop, on_tick, &k, &t), 0);
  ck_assert_int_eq(qrpc_timer_start(t, UINT64_MAX, 0), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_timer_start(t, 5 * MS, 0), 0);
  qrpc_timer_stop(t);
  qrpc_timer_stop(t);
  /* A stopped timer keeps nothing pending: the loop ends at once. */
  ck_assert_int_eq(qrpc_loop_run(loop), 0);
  ck_assert_int_eq(k.fired, 0);
  qrpc_timer_free(NULL);
  qrpc_timer_free(t);
}
END_TEST

START_TEST(test_freed_with_loop) {
  ticks k = {0};
  qrpc_timer *a, *b;
  ck_assert_int_eq(qrpc_timer_new(loop, on_tick, &k, &a), 0);
  ck_assert_int_eq(qrpc_timer_new(loop, on_tick, &k, &b), 0);
  ck_assert_int_eq(qrpc_timer_start(a, 1000 * MS, 0), 0);
  /* Both are released by the loop (ASan reports a leak otherwise), and
   * neither fires. */
  qrpc_loop_free(loop);
  loop = NULL;
  ck_assert_int_eq(k.fired, 0);
}
END_TEST

typedef struct sigs {
  int count;
  int signum;
  qrpc_signal *watch;
} sigs;

static void on_signal(qrpc_loop *l, int signum, void *arg) {
  sigs *s = arg;
  ck_assert_ptr_eq(l, loop);
  s->signum = signum;
  s->count++;
  qrpc_signal_free(s->watch); /* allowed inside its own callback */
  s->watch = NULL;
}

static void raise_usr1(qrpc_timer *t, void *arg) {
  (void)t;
  (void)arg;
  raise(SIGUSR1);
}

START_TEST(test_signal) {
  sigs s = {0};
  qrpc_timer *t;
  ck_assert_int_eq(qrpc_loop_on_signal(loop, 0, on_signal, &s, &s.watch),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_loop_on_signal(loop, SIGKILL, on_signal, &s, &s.watch),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_loop_on_signal(loop, SIGUSR1, on_signal, &s, &s.watch),
                   0);
  /* One watch per signal in the process; other signals may be watched
   * from another loop. */
  qrpc_loop *other;
  qrpc_signal *w;
  ck_assert_int_eq(qrpc_loop_new(NULL, &other), 0);
  ck_assert_int_eq(qrpc_loop_on_signal(other, SIGUSR1, on_signal, &s, &w),
                   QRPC_ESTATE);
  ck_assert_int_eq(qrpc_loop_on_signal(other, SIGUSR2, on_signal, &s, &w), 0);
  ck_assert_int_eq(qrpc_timer_new(loop, raise_usr1, NULL, &t), 0);
  ck_assert_int_eq(qrpc_timer_start(t, 1 * MS, 0), 0);
  /* The watch keeps the loop running until its callback frees it; then
   * nothing is left and the loop ends by itself. */
  ck_assert_int_eq(qrpc_loop_run(loop), 0);
  ck_assert_int_eq(s.count, 1);
  ck_assert_int_eq(s.signum, SIGUSR1);
  ck_assert_ptr_null(s.watch);
  /* Freed, the signal may be watched again. */
  ck_assert_int_eq(qrpc_loop_on_signal(loop, SIGUSR1, on_signal, &s, &s.watch),
                   0);
  qrpc_loop_free(other); /* frees w with it */
  qrpc_timer_free(t);
}
END_TEST

static Suite *timer_suite(void) {
  Suite *s = suite_create("timer");
  TCase *tc = tcase_create("timer");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_one_shot);
  tcase_add_test(tc, test_periodic_schedule);
  tcase_add_test(tc, test_periodic_skips_missed);
  tcase_add_test(tc, test_callback_restarts_and_frees);
  tcase_add_test(tc, test_stop_before_due_and_errors);
  tcase_add_test(tc, test_freed_with_loop);
  tcase_add_test(tc, test_signal);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(timer_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
