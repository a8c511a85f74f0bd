/*
 * Blocking calls (src/stub/sync.c) between a real server and client over
 * loopback: the reply, the status of a failed call, a reply that does not
 * decode, the call's deadline (its own or the client's default), refused
 * arguments, a call made from inside a callback of its loop, and a loop
 * stopped by another callback while the call waits.
 */
#include <check.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/qrpc.h"
#include "stub_fixture.h"

#define M_ECHO 1
#define M_FAIL 2
#define M_GARBAGE 3
#define M_HOLD 4
#define APP_STATUS (QRPC_STATUS_APP_MIN + 3)
#define APP_DETAIL "not today"

static st_pair pair;
static int echoes;
static qt_holder holder;

static void on_fail(qrpc_req *req, const uint8_t *payload, size_t len,
                    void *user_data) {
  (void)payload;
  (void)len;
  (void)user_data;
  qrpc_req_error(req, APP_STATUS, APP_DETAIL);
}

static void on_garbage(qrpc_req *req, const uint8_t *payload, size_t len,
                       void *user_data) {
  (void)payload;
  (void)len;
  (void)user_data;
  qrpc_req_reply(req, st_garbage, sizeof(st_garbage));
}

static void start(const qrpc_client_opts *copts) {
  echoes = 0;
  qt_holder_init(&holder);
  st_pair_start(&pair, copts);
  ck_assert_int_eq(qrpc_server_register(pair.srv, M_ECHO, QRPC_SHAPE_UNARY,
                                        qt_rpc_echo, &echoes),
                   0);
  ck_assert_int_eq(
      qrpc_server_register(pair.srv, M_FAIL, QRPC_SHAPE_UNARY, on_fail, NULL),
      0);
  ck_assert_int_eq(qrpc_server_register(pair.srv, M_GARBAGE, QRPC_SHAPE_UNARY,
                                        on_garbage, NULL),
                   0);
  ck_assert_int_eq(qrpc_server_register(pair.srv, M_HOLD, QRPC_SHAPE_UNARY,
                                        qt_holder_handler, &holder),
                   0);
}

static void finish(void) { ck_assert(st_pair_finish(&pair)); }

/* A blocking call of method with a Text of st_nul_data and n. */
static int call(uint32_t method, int64_t n, uint64_t timeout_ms,
                ProtobufCMessage **reply, int *status) {
  Text t = st_text(st_nul_data, sizeof(st_nul_data), n);
  return qrpc_stub_call_sync(st_loop, pair.cl.cli, method, 0, &t.base,
                             TEXT_DESC, TEXT_DESC, timeout_ms, reply, status);
}

START_TEST(test_returns_reply) {
  ProtobufCMessage *reply = NULL;
  int status = -1;
  start(NULL);
  ck_assert_int_eq(call(M_ECHO, 11, 5000, &reply, &status), 0);
  ck_assert_int_eq(status, QRPC_STATUS_OK);
  ck_assert_msg(st_text_is(reply, st_nul_data, sizeof(st_nul_data), 11),
                "the reply is not the request echoed");
  ck_assert_int_eq(echoes, 1);
  qrpc_stub_free(reply);
  finish();
}
END_TEST

START_TEST(test_reply_and_status_optional) {
  int status = -1;
  start(NULL);
  /* Without reply the message is freed inside (LeakSanitizer watches). */
  ck_assert_int_eq(call(M_ECHO, 1, 5000, NULL, &status), 0);
  ck_assert_int_eq(status, QRPC_STATUS_OK);
  ck_assert_int_eq(call(M_ECHO, 2, 5000, NULL, NULL), 0);
  ck_assert_int_eq(echoes, 2);
  finish();
}
END_TEST

START_TEST(test_returns_error_status) {
  ProtobufCMessage *reply = (ProtobufCMessage *)&reply;
  int status = -1;
  start(NULL);
  ck_assert_int_eq(call(M_FAIL, 0, 5000, &reply, &status), 0);
  ck_assert_int_eq(status, APP_STATUS);
  ck_assert_ptr_null(reply);
  finish();
}
END_TEST

START_TEST(test_undecodable_reply_is_internal) {
  ProtobufCMessage *reply = (ProtobufCMessage *)&reply;
  int status = -1;
  start(NULL);
  ck_assert_int_eq(call(M_GARBAGE, 0, 5000, &reply, &status), 0);
  ck_assert_int_eq(status, QRPC_STATUS_INTERNAL);
  ck_assert_ptr_null(reply);
  finish();
}
END_TEST

START_TEST(test_deadline) {
  ProtobufCMessage *reply = (ProtobufCMessage *)&reply;
  int status = -1;
  start(NULL);
  uint64_t t0 = qt_now_ms();
  ck_assert_int_eq(call(M_HOLD, 0, 200, &reply, &status), 0);
  uint64_t took = qt_now_ms() - t0;
  ck_assert_int_eq(status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_ptr_null(reply);
  ck_assert_int_eq(holder.received, 1);
  ck_assert_uint_ge(took, 200);
  /* The engine's deadline ends it, well before the grace second. */
  ck_assert_uint_lt(took, 1000);
  finish();
}
END_TEST

START_TEST(test_client_default_deadline) {
  qrpc_client_opts o;
  int status = -1;
  qrpc_client_opts_default(&o);
  o.default_timeout_ms = 150;
  start(&o);
  uint64_t t0 = qt_now_ms();
  ck_assert_int_eq(call(M_HOLD, 0, 0, NULL, &status), 0);
  ck_assert_int_eq(status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_uint_ge(qt_now_ms() - t0, 150);
  finish();
}
END_TEST

START_TEST(test_refuses_bad_arguments) {
  Text t = st_text(NULL, 0, 1);
  Other o = QRPC__TEST__STUB__OTHER__INIT;
  ProtobufCMessage *reply = (ProtobufCMessage *)&reply;
  int status = -1;
  start(NULL);
  qrpc_client *cli = pair.cl.cli;
  ck_assert_int_eq(qrpc_stub_call_sync(NULL, cli, M_ECHO, 0, &t.base, TEXT_DESC,
                                       TEXT_DESC, 0, &reply, &status),
                   QRPC_EINVAL);
  ck_assert_int_eq(status, QRPC_STATUS_UNKNOWN);
  ck_assert_ptr_null(reply);
  ck_assert_int_eq(qrpc_stub_call_sync(st_loop, NULL, M_ECHO, 0, &t.base,
                                       TEXT_DESC, TEXT_DESC, 0, &reply,
                                       &status),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_call_sync(st_loop, cli, M_ECHO, 0, NULL, TEXT_DESC,
                                       TEXT_DESC, 0, &reply, &status),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_call_sync(st_loop, cli, M_ECHO, 0, &o.base,
                                       TEXT_DESC, TEXT_DESC, 0, &reply,
                                       &status),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_call_sync(st_loop, cli, M_ECHO, 0, &t.base, NULL,
                                       TEXT_DESC, 0, &reply, &status),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_call_sync(st_loop, cli, M_ECHO, 0, &t.base,
                                       TEXT_DESC, NULL, 0, &reply, &status),
                   QRPC_EINVAL);
  ck_assert_int_eq(status, QRPC_STATUS_UNKNOWN);
  ck_assert_ptr_null(reply);
  qt_run_for(st_loop, 50);
  ck_assert_int_eq(echoes, 0);
  finish();
}
END_TEST

/* ---- From inside a callback of the loop ------------------------------- */

typedef struct inside {
  int runs;
  int rc;
  int status;
  ProtobufCMessage *reply;
} inside;

static void call_inside(qrpc_loop *loop, void *arg) {
  inside *in = arg;
  (void)loop;
  in->runs++;
  in->reply = (ProtobufCMessage *)&in->reply;
  in->rc = call(M_ECHO, 0, 5000, &in->reply, &in->status);
}

START_TEST(test_inside_loop_callback_fails) {
  inside in = {0, 0, -1, NULL};
  start(NULL);
  ck_assert_int_eq(qrpc_loop_post(st_loop, call_inside, &in), 0);
  ck_assert(qt_run_until_count(st_loop, &in.runs, 1, QT_WAIT_MS));
  ck_assert_int_eq(in.rc, QRPC_ESYSTEM);
  ck_assert_int_eq(in.status, QRPC_STATUS_UNKNOWN);
  ck_assert_ptr_null(in.reply);
  /* The abandoned call ends on the loop and frees its state there. */
  qt_run_for(st_loop, 100);
  finish();
}
END_TEST

/* ---- A loop stopped by another callback ------------------------------- */

typedef struct stopper {
  int stops;
  int replies;
} stopper;

static void stop_loop(evutil_socket_t fd, short what, void *arg) {
  stopper *s = arg;
  (void)fd;
  (void)what;
  s->stops++;
  qrpc_loop_stop(st_loop);
}

static void reply_held(evutil_socket_t fd, short what, void *arg) {
  stopper *s = arg;
  (void)fd;
  (void)what;
  s->replies += qt_holder_reply_all(&holder);
}

START_TEST(test_survives_loop_stop) {
  stopper s = {0, 0};
  const struct timeval stop_at = {0, 30 * 1000};
  const struct timeval reply_at = {0, 120 * 1000};
  ProtobufCMessage *reply = NULL;
  int status = -1;
  start(NULL);
  struct event_base *base = qrpc_loop_base(st_loop);
  ck_assert_int_eq(
      event_base_once(base, -1, EV_TIMEOUT, stop_loop, &s, &stop_at), 0);
  ck_assert_int_eq(
      event_base_once(base, -1, EV_TIMEOUT, reply_held, &s, &reply_at), 0);
  ck_assert_int_eq(call(M_HOLD, 9, 5000, &reply, &status), 0);
  ck_assert_int_eq(s.stops, 1);
  ck_assert_int_eq(s.replies, 1);
  ck_assert_int_eq(status, QRPC_STATUS_OK);
  ck_assert_msg(st_text_is(reply, st_nul_data, sizeof(st_nul_data), 9),
                "the reply is not the held request");
  qrpc_stub_free(reply);
  finish();
}
END_TEST

static Suite *sync_suite(void) {
  Suite *s = suite_create("stub_sync");
  TCase *tc = tcase_create("sync");
  tcase_add_checked_fixture(tc, st_setup, st_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_returns_reply);
  tcase_add_test(tc, test_reply_and_status_optional);
  tcase_add_test(tc, test_returns_error_status);
  tcase_add_test(tc, test_undecodable_reply_is_internal);
  tcase_add_test(tc, test_deadline);
  tcase_add_test(tc, test_client_default_deadline);
  tcase_add_test(tc, test_refuses_bad_arguments);
  tcase_add_test(tc, test_inside_loop_callback_fails);
  tcase_add_test(tc, test_survives_loop_stop);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(sync_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
