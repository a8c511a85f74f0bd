/*
 * Busy polling (qrpc_loop_set_busy_poll()): a busy-polled loop serves
 * calls over real UDP, keeps its timers, stops when asked from a callback
 * or from another thread through qrpc_loop_post(), returns when nothing is
 * left to wait for, polls (uses its CPU) after traffic and goes back to
 * sleep when its window has passed.
 */
#include <check.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "qrpc/qrpc.h"

#define MS UINT64_C(1000000)

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls, *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

START_TEST(test_busy_poll_errors) {
  ck_assert_int_eq(qrpc_loop_set_busy_poll(NULL, 10), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_loop_set_busy_poll(loop, 1000001), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_loop_set_busy_poll(loop, 1000000), 0);
  ck_assert_int_eq(qrpc_loop_set_busy_poll(loop, 0), 0);
  /* Nothing to wait for: returns at once, busy or not. */
  ck_assert_int_eq(qrpc_loop_set_busy_poll(loop, 50000), 0);
  ck_assert_int_eq(qrpc_loop_run(loop), 0);
}
END_TEST

/* Echoes over a busy-polled loop, one stream at a time. */
START_TEST(test_busy_poll_serves) {
  ck_assert_int_eq(qrpc_loop_set_busy_poll(loop, 200), 0);
  qt_server srv;
  qt_client cl;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  for (int i = 0; i < 50; i++) {
    qt_xfer x;
    memset(&x, 0, sizeof(x));
    ck_assert_int_eq(
        qt_xfer_start(&x, cl.conn, "echo", 1000 + 997 * (uint64_t)i, i, 0,
                      NULL),
        0);
    ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
    ck_assert_msg(x.ok, "echo %d not intact", i);
  }
  ck_assert_int_eq(cl.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

typedef struct stopper {
  int fired;
  uint64_t due, ran;
} stopper;

static void stop_tick(qrpc_timer *t, void *arg) {
  stopper *s = arg;
  s->fired++;
  s->due = qrpc_timer_due_ns(t);
  s->ran = qrpc_loop_now_ns(loop);
  qrpc_loop_stop(loop);
}

/* A timer fires when due, never before, and its qrpc_loop_stop() ends
 * qrpc_loop_run(), though a server keeps the loop busy. */
START_TEST(test_busy_poll_timer_and_stop) {
  ck_assert_int_eq(qrpc_loop_set_busy_poll(loop, 100000), 0);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  stopper s;
  memset(&s, 0, sizeof(s));
  qrpc_timer *t;
  ck_assert_int_eq(qrpc_timer_new(loop, stop_tick, &s, &t), 0);
  uint64_t t0 = qrpc_loop_now_ns(loop);
  ck_assert_int_eq(qrpc_timer_start(t, 30 * MS, 0), 0);
  ck_assert_int_eq(qrpc_loop_run(loop), 0);
  ck_assert_int_eq(s.fired, 1);
  ck_assert_uint_ge(s.ran, s.due);
  ck_assert_uint_ge(s.ran - t0, 30 * MS);
  /* qrpc_loop_run_for() ends at its time. */
  t0 = qrpc_loop_now_ns(loop);
  ck_assert_int_eq(qrpc_loop_run_for(loop, 40), 0);
  ck_assert_uint_ge(qrpc_loop_now_ns(loop) - t0, 40 * MS);
  ck_assert_int_eq(s.fired, 1);
  qrpc_timer_free(t);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

static void post_stop(qrpc_loop *l, void *arg) {
  (*(int *)arg)++;
  qrpc_loop_stop(l);
}

static void *poster(void *arg) {
  struct timespec d = {0, 20 * 1000 * 1000};
  nanosleep(&d, NULL);
  qrpc_loop_post(loop, post_stop, arg);
  return NULL;
}

/* Another thread's post wakes a loop asleep after its window, and its
 * qrpc_loop_stop() ends the run. */
START_TEST(test_busy_poll_post_from_thread) {
  ck_assert_int_eq(qrpc_loop_set_busy_poll(loop, 1000), 0);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  int ran = 0;
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, poster, &ran), 0);
  ck_assert_int_eq(qrpc_loop_run_for(loop, 30000), 0);
  pthread_join(th, NULL);
  ck_assert_int_eq(ran, 1);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* After traffic the loop polls for its window (it uses its CPU), then
 * sleeps: loose bounds, since the machine may be shared. */
START_TEST(test_busy_poll_window) {
  qt_server srv;
  qt_client cl;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  qt_run_for(loop, 100); /* the handshake's last packets settle */
  ck_assert_int_eq(qrpc_loop_set_busy_poll(loop, 100000), 0);
  qt_xfer x;
  memset(&x, 0, sizeof(x));
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", 5000, 7, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  ck_assert(x.ok);
  /* Within the window of the echo's last packets: polling. */
  uint64_t cpu0 = thread_cpu_ns();
  ck_assert_int_eq(qrpc_loop_run_for(loop, 80), 0);
  uint64_t spun = thread_cpu_ns() - cpu0;
  ck_assert_msg(spun >= 16 * MS, "polled only %llu ms of CPU in 80 ms",
                (unsigned long long)(spun / MS));
  /* Quiet now: one window of polling, then sleep. */
  qt_run_for(loop, 200);
  cpu0 = thread_cpu_ns();
  ck_assert_int_eq(qrpc_loop_run_for(loop, 600), 0);
  uint64_t idle = thread_cpu_ns() - cpu0;
  ck_assert_msg(idle <= 400 * MS, "%llu ms of CPU in 600 ms with no traffic",
                (unsigned long long)(idle / MS));
  qrpc_loop_set_busy_poll(loop, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("busy_poll");
  TCase *tc = tcase_create("busy_poll");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_busy_poll_errors);
  tcase_add_test(tc, test_busy_poll_serves);
  tcase_add_test(tc, test_busy_poll_timer_and_stop);
  tcase_add_test(tc, test_busy_poll_post_from_thread);
  tcase_add_test(tc, test_busy_poll_window);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
