/*
 * The streaming-request state machine (src/stub/sreq.c) between a real
 * server and client over loopback: what the handlers of a client or bidi
 * streaming method see and in which order (start, items, the caller's end,
 * cancel, room to send), whose user_data they get, and the ways a call
 * ends: a reply or an error from any callback or from outside them, the
 * server's end before or after the caller's, an item that does not decode,
 * the caller's cancel. Answers the runtime or the engine refuses leave the
 * call as it was. The state's lifetime is checked by AddressSanitizer and
 * LeakSanitizer in the sanitizer build, and by valgrind memcheck
 * (tests/soak) in the normal one: a state freed too early or never shows
 * there.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/qrpc.h"
#include "stub_fixture.h"

#define M_CLIENT 1 /* client streaming */
#define M_BIDI 2   /* bidi streaming */
#define APP_STATUS (QRPC_STATUS_APP_MIN + 5)
#define APP_DETAIL "refused by the handler"
#define BAD_ITEM "an item does not decode as qrpc.test.stub.Text"
#define FLOOD_ITEM 65536

/* Stands for the method's generated _handlers struct. */
typedef struct method_handlers {
  int tag;
} method_handlers;

static const method_handlers the_method = {2};
static int service_data; /* the service's user_data */
static int call_data;    /* what on_start returns */

/* What the test asks the handlers to do, and what they saw. */
typedef struct script {
  int no_on_start;
  int bad_starts;   /* try refused starts first */
  char in_start;    /* 'R' reply, 'X' error, from on_start */
  int error_at;     /* fail the call from this item (1-based) */
  int end_at;       /* bidi: end the server's side at this item */
  int echo;         /* bidi: send each item back */
  int flood;        /* bidi: fill the stream at the first item */
  int reply_on_end; /* client streaming: answer from on_end */
  int end_on_end;   /* bidi: end from on_end */
  int cancel_error; /* on_cancel fails the call itself */

  char events[64]; /* S start, I item, E end, C cancel, W writable */
  size_t nevents;
  int serves, notifies, starts, items, ends, cancels, writables;
  int start_rc;
  int bad_start_rcs; /* refused starts that returned QRPC_EINVAL */
  int last_cancel;
  int64_t sum;
  int flooded; /* items sent before QRPC_EAGAIN */
  int wrong;   /* a callback got the wrong handlers or user_data */
  int answer_errors;
  qrpc_req *req; /* set by on_start, or by the first callback */
} script;

static script sc;
static st_pair pair;

static void event(char e) {
  if (sc.nevents < sizeof(sc.events) - 1) sc.events[sc.nevents++] = e;
}

static void expect_user_data(void *user_data) {
  void *want = sc.no_on_start ? (void *)&service_data : (void *)&call_data;
  if (user_data != want) sc.wrong++;
}

static void answer(int rc) {
  if (rc != 0) sc.answer_errors++;
}

/* The Text of the reply: the sum of the items' n, and NUL bytes. */
static int reply_sum(qrpc_req *req) {
  Text t = st_text(st_nul_data, sizeof(st_nul_data), sc.sum);
  qrpc_msg m;
  int rc = qrpc_stub_msg(&m, &t.base, TEXT_DESC);
  return rc != 0 ? rc : qrpc_stub_sreq_reply(req, &m);
}

static void *on_start(qrpc_req *req, void *user_data) {
  event('S');
  sc.starts++;
  sc.req = req;
  if (user_data != &service_data) sc.wrong++;
  if (sc.in_start == 'R') answer(reply_sum(req));
  if (sc.in_start == 'X')
    answer(qrpc_stub_sreq_error(req, APP_STATUS, APP_DETAIL));
  return &call_data;
}

/* Bidi: sends items of FLOOD_ITEM bytes until the stream is full. */
static void flood(qrpc_req *req) {
  static uint8_t big[FLOOD_ITEM];
  int rc;
  while ((rc = qrpc_req_send(req, big, sizeof(big))) == 0) sc.flooded++;
  if (rc != QRPC_EAGAIN) sc.answer_errors++;
}

static void on_item(qrpc_req *req, const ProtobufCMessage *item,
                    const void *handlers, void *user_data) {
  const Text *t = (const Text *)item;
  event('I');
  sc.items++;
  sc.req = req;
  if (handlers != &the_method || item->descriptor != TEXT_DESC) sc.wrong++;
  expect_user_data(user_data);
  sc.sum += t->n;
  if (sc.echo) {
    qrpc_msg m;
    answer(qrpc_stub_msg(&m, item, TEXT_DESC));
    answer(qrpc_req_send_msg(req, &m));
  }
  if (sc.flood && sc.items == 1) flood(req);
  if (sc.error_at == sc.items)
    answer(qrpc_stub_sreq_error(req, APP_STATUS, APP_DETAIL));
  if (sc.end_at == sc.items) answer(qrpc_stub_sreq_end(req));
}

static void on_end(qrpc_req *req, void *user_data) {
  event('E');
  sc.ends++;
  expect_user_data(user_data);
  if (sc.reply_on_end) answer(reply_sum(req));
  if (sc.end_on_end) answer(qrpc_stub_sreq_end(req));
}

static void on_cancel(qrpc_req *req, int status, void *user_data) {
  event('C');
  sc.cancels++;
  sc.last_cancel = status;
  expect_user_data(user_data);
  if (sc.cancel_error)
    answer(qrpc_stub_sreq_error(req, APP_STATUS, APP_DETAIL));
  sc.req = NULL;
}

static void on_writable(qrpc_req *req, void *user_data) {
  event('W');
  sc.writables++;
  expect_user_data(user_data);
  if (sc.flood && sc.writables == 1) answer(qrpc_stub_sreq_end(req));
}

static void try_bad_starts(qrpc_req *req, const qrpc_stub_stream_handlers *h) {
  int rcs[6];
  rcs[0] = qrpc_stub_sreq_start(NULL, TEXT_DESC, BAD_ITEM, on_item, &the_method,
                                h, &service_data);
  rcs[1] = qrpc_stub_sreq_start(req, NULL, BAD_ITEM, on_item, &the_method, h,
                                &service_data);
  rcs[2] = qrpc_stub_sreq_start(req, TEXT_DESC, NULL, on_item, &the_method, h,
                                &service_data);
  rcs[3] = qrpc_stub_sreq_start(req, TEXT_DESC, BAD_ITEM, NULL, &the_method, h,
                                &service_data);
  rcs[4] = qrpc_stub_sreq_start(req, TEXT_DESC, BAD_ITEM, on_item, NULL, h,
                                &service_data);
  rcs[5] = qrpc_stub_sreq_start(req, TEXT_DESC, BAD_ITEM, on_item, &the_method,
                                NULL, &service_data);
  for (int i = 0; i < 6; i++)
    if (rcs[i] == QRPC_EINVAL) sc.bad_start_rcs++;
}

/* The method's handler, as generated code writes it. */
static void serve(qrpc_req *req, const uint8_t *payload, size_t len,
                  void *user_data) {
  static const qrpc_stub_stream_handlers with_start = {on_start, on_end,
                                                       on_cancel, on_writable};
  static const qrpc_stub_stream_handlers without_start = {
      NULL, on_end, on_cancel, on_writable};
  const qrpc_stub_stream_handlers *h =
      sc.no_on_start ? &without_start : &with_start;
  (void)payload;
  (void)len;
  sc.serves++;
  if (qrpc_req_is_notify(req)) sc.notifies++;
  if (sc.bad_starts) try_bad_starts(req, h);
  sc.start_rc = qrpc_stub_sreq_start(req, TEXT_DESC, BAD_ITEM, on_item,
                                     &the_method, h, user_data);
}

static void start(void) {
  memset(&sc, 0, sizeof(sc));
  sc.start_rc = 1;
  st_pair_start(&pair, NULL);
  ck_assert_int_eq(qrpc_server_register(pair.srv, M_CLIENT,
                                        QRPC_SHAPE_CLIENT_STREAM, serve,
                                        &service_data),
                   0);
  ck_assert_int_eq(qrpc_server_register(pair.srv, M_BIDI,
                                        QRPC_SHAPE_BIDI_STREAM, serve,
                                        &service_data),
                   0);
}

static void finish(void) {
  ck_assert_int_eq(sc.wrong, 0);
  ck_assert_int_eq(sc.answer_errors, 0);
  ck_assert(st_pair_finish(&pair));
}

static void call_start(qt_call_rec *rec, uint32_t method, qrpc_shape shape) {
  qt_call_rec_init(rec, NULL);
  ck_assert_int_eq(qrpc_client_stream(pair.cl.cli, method, shape, NULL, 0, NULL,
                                      &qt_call_rec_cbs, rec, &rec->call),
                   0);
}

static void send_text(qt_call_rec *rec, int64_t n) {
  Text t = st_text(st_nul_data, sizeof(st_nul_data), n);
  uint8_t buf[64];
  size_t len = st_pack(&t.base, buf, sizeof(buf));
  ck_assert_int_eq(qrpc_call_send(rec->call, buf, len), 0);
}

static void wait_done(qt_call_rec *rec) {
  ck_assert_msg(qt_run_until_count(st_loop, &rec->done, 1, QT_WAIT_MS),
                "the call did not end; server events \"%s\"", sc.events);
}

static void assert_events(const char *want) {
  ck_assert_str_eq(sc.events, want);
}

/* 1 if the call was answered with the Text reply_sum() makes for sum. */
static int replied_sum(const qt_call_rec *rec, int64_t sum) {
  ProtobufCMessage *msg = NULL;
  int ok;
  if (rec->status != QRPC_STATUS_OK || rec->reply_overflow) return 0;
  if (qrpc_stub_unpack(TEXT_DESC, rec->reply, rec->reply_len, &msg) != 0)
    return 0;
  ok = st_text_is(msg, st_nul_data, sizeof(st_nul_data), sum);
  qrpc_stub_free(msg);
  return ok;
}

static void assert_app_error(const qt_call_rec *rec) {
  ck_assert_int_eq(rec->status, APP_STATUS);
  ck_assert_msg(st_bytes_are(rec->detail, rec->detail_len, APP_DETAIL),
                "detail of %zu bytes", rec->detail_len);
}

/* ---- Client streaming ------------------------------------------------- */

START_TEST(test_items_end_reply) {
  qt_call_rec rec;
  start();
  sc.reply_on_end = 1;
  call_start(&rec, M_CLIENT, QRPC_SHAPE_CLIENT_STREAM);
  send_text(&rec, 1);
  send_text(&rec, 2);
  send_text(&rec, 3);
  ck_assert_int_eq(qrpc_call_end(rec.call), 0);
  wait_done(&rec);
  ck_assert_msg(replied_sum(&rec, 6), "status %d", rec.status);
  ck_assert_int_eq(sc.start_rc, 0);
  assert_events("SIIIE");
  finish();
}
END_TEST

START_TEST(test_without_on_start_service_user_data) {
  qt_call_rec rec;
  start();
  sc.no_on_start = 1;
  sc.reply_on_end = 1;
  call_start(&rec, M_CLIENT, QRPC_SHAPE_CLIENT_STREAM);
  send_text(&rec, 5);
  ck_assert_int_eq(qrpc_call_end(rec.call), 0);
  wait_done(&rec);
  ck_assert_msg(replied_sum(&rec, 5), "status %d", rec.status);
  assert_events("IE");
  finish();
}
END_TEST

START_TEST(test_reply_inside_on_start) {
  qt_call_rec rec;
  start();
  sc.in_start = 'R';
  call_start(&rec, M_CLIENT, QRPC_SHAPE_CLIENT_STREAM);
  send_text(&rec, 1);
  wait_done(&rec);
  ck_assert_msg(replied_sum(&rec, 0), "status %d", rec.status);
  qt_run_for(st_loop, 100);
  /* Answered: nothing reaches the handlers after the start. */
  assert_events("S");
  finish();
}
END_TEST

START_TEST(test_error_inside_on_start) {
  qt_call_rec rec;
  start();
  sc.in_start = 'X';
  call_start(&rec, M_BIDI, QRPC_SHAPE_BIDI_STREAM);
  send_text(&rec, 1);
  wait_done(&rec);
  assert_app_error(&rec);
  qt_run_for(st_loop, 100);
  assert_events("S");
  finish();
}
END_TEST

START_TEST(test_error_inside_item) {
  qt_call_rec rec;
  start();
  sc.error_at = 2;
  call_start(&rec, M_CLIENT, QRPC_SHAPE_CLIENT_STREAM);
  send_text(&rec, 1);
  send_text(&rec, 1);
  wait_done(&rec);
  assert_app_error(&rec);
  assert_events("SII");
  finish();
}
END_TEST

START_TEST(test_reply_from_outside_callbacks) {
  qt_call_rec rec;
  start();
  call_start(&rec, M_CLIENT, QRPC_SHAPE_CLIENT_STREAM);
  send_text(&rec, 4);
  ck_assert_int_eq(qrpc_call_end(rec.call), 0);
  ck_assert(qt_run_until_count(st_loop, &sc.ends, 1, QT_WAIT_MS));
  ck_assert_ptr_nonnull(sc.req);
  ck_assert_int_eq(reply_sum(sc.req), 0);
  wait_done(&rec);
  ck_assert_msg(replied_sum(&rec, 4), "status %d", rec.status);
  assert_events("SIE");
  finish();
}
END_TEST

/* ---- Items that do not decode ----------------------------------------- */

START_TEST(test_undecodable_item_refused) {
  qt_call_rec rec;
  start();
  call_start(&rec, M_CLIENT, QRPC_SHAPE_CLIENT_STREAM);
  send_text(&rec, 1);
  ck_assert_int_eq(qrpc_call_send(rec.call, st_garbage, sizeof(st_garbage)), 0);
  wait_done(&rec);
  ck_assert_int_eq(rec.status, QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert_msg(st_bytes_are(rec.detail, rec.detail_len, BAD_ITEM),
                "detail of %zu bytes", rec.detail_len);
  ck_assert_int_eq(sc.last_cancel, QRPC_STATUS_INVALID_ARGUMENT);
  assert_events("SIC");
  finish();
}
END_TEST

START_TEST(test_undecodable_item_answered_by_on_cancel) {
  qt_call_rec rec;
  start();
  sc.cancel_error = 1;
  call_start(&rec, M_BIDI, QRPC_SHAPE_BIDI_STREAM);
  ck_assert_int_eq(qrpc_call_send(rec.call, st_garbage, sizeof(st_garbage)), 0);
  wait_done(&rec);
  /* on_cancel's own answer goes out, not the runtime's. */
  assert_app_error(&rec);
  assert_events("SC");
  finish();
}
END_TEST

/* ---- Cancellation ----------------------------------------------------- */

START_TEST(test_caller_cancels) {
  qt_call_rec rec;
  start();
  call_start(&rec, M_CLIENT, QRPC_SHAPE_CLIENT_STREAM);
  send_text(&rec, 1);
  ck_assert(qt_run_until_count(st_loop, &sc.items, 1, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_call_cancel(rec.call), 0);
  ck_assert(qt_run_until_count(st_loop, &sc.cancels, 1, QT_WAIT_MS));
  wait_done(&rec);
  ck_assert_int_eq(rec.status, QRPC_STATUS_CANCELLED);
  ck_assert_int_eq(sc.last_cancel, QRPC_STATUS_CANCELLED);
  ck_assert_ptr_null(sc.req);
  assert_events("SIC");
  finish();
}
END_TEST

/* ---- Bidi: both ends -------------------------------------------------- */

START_TEST(test_bidi_server_ends_first) {
  qt_call_rec rec;
  start();
  sc.echo = 1;
  sc.end_at = 2;
  call_start(&rec, M_BIDI, QRPC_SHAPE_BIDI_STREAM);
  send_text(&rec, 1);
  send_text(&rec, 2);
  ck_assert(qt_run_until_count(st_loop, &rec.items, 2, QT_WAIT_MS));
  /* The server's END is in; the request lives until the caller's. */
  qt_run_for(st_loop, 50);
  ck_assert_int_eq(rec.done, 0);
  ck_assert_int_eq(qrpc_call_end(rec.call), 0);
  wait_done(&rec);
  ck_assert_int_eq(rec.status, QRPC_STATUS_OK);
  ck_assert(qt_run_until_count(st_loop, &sc.ends, 1, QT_WAIT_MS));
  assert_events("SIIE");
  finish();
}
END_TEST

START_TEST(test_bidi_caller_ends_first) {
  qt_call_rec rec;
  start();
  call_start(&rec, M_BIDI, QRPC_SHAPE_BIDI_STREAM);
  send_text(&rec, 1);
  ck_assert_int_eq(qrpc_call_end(rec.call), 0);
  ck_assert(qt_run_until_count(st_loop, &sc.ends, 1, QT_WAIT_MS));
  qt_run_for(st_loop, 50);
  ck_assert_int_eq(rec.done, 0);
  ck_assert_int_eq(qrpc_stub_sreq_end(sc.req), 0);
  wait_done(&rec);
  ck_assert_int_eq(rec.status, QRPC_STATUS_OK);
  assert_events("SIE");
  finish();
}
END_TEST

START_TEST(test_bidi_end_inside_on_end) {
  qt_call_rec rec;
  start();
  sc.end_on_end = 1;
  call_start(&rec, M_BIDI, QRPC_SHAPE_BIDI_STREAM);
  send_text(&rec, 1);
  ck_assert_int_eq(qrpc_call_end(rec.call), 0);
  wait_done(&rec);
  ck_assert_int_eq(rec.status, QRPC_STATUS_OK);
  assert_events("SIE");
  finish();
}
END_TEST

START_TEST(test_bidi_on_writable) {
  qt_call_rec rec;
  start();
  sc.flood = 1;
  call_start(&rec, M_BIDI, QRPC_SHAPE_BIDI_STREAM);
  send_text(&rec, 1);
  ck_assert(qt_run_until_count(st_loop, &sc.writables, 1, QT_WAIT_MS));
  ck_assert_int_gt(sc.flooded, 0);
  ck_assert(qt_run_until_count(st_loop, &rec.items, sc.flooded, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_call_end(rec.call), 0);
  wait_done(&rec);
  ck_assert_int_eq(rec.status, QRPC_STATUS_OK);
  ck_assert_int_eq(rec.items, sc.flooded);
  ck_assert(qt_run_until_count(st_loop, &sc.ends, 1, QT_WAIT_MS));
  assert_events("SIWE");
  finish();
}
END_TEST

/* ---- Refused answers and starts --------------------------------------- */

START_TEST(test_refused_answers_keep_the_call) {
  Text t = st_text(NULL, 0, 1);
  qrpc_msg m;
  qt_call_rec rec;
  start();
  call_start(&rec, M_BIDI, QRPC_SHAPE_BIDI_STREAM);
  send_text(&rec, 1);
  ck_assert(qt_run_until_count(st_loop, &sc.items, 1, QT_WAIT_MS));
  qrpc_req *req = sc.req;
  ck_assert_int_eq(qrpc_stub_msg(&m, &t.base, TEXT_DESC), 0);
  ck_assert_int_eq(qrpc_stub_sreq_error(req, 0, "no"), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_sreq_error(NULL, APP_STATUS, "no"), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_sreq_reply(NULL, &m), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_sreq_reply(req, NULL), QRPC_EINVAL);
  /* A bidi call has no REPLY: the engine refuses it. */
  ck_assert_int_eq(qrpc_stub_sreq_reply(req, &m), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_sreq_end(NULL), QRPC_EINVAL);
  /* The call carries on. */
  send_text(&rec, 2);
  ck_assert(qt_run_until_count(st_loop, &sc.items, 2, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_stub_sreq_end(req), 0);
  ck_assert_int_eq(qrpc_stub_sreq_end(req), QRPC_ECLOSED);
  ck_assert_int_eq(qrpc_call_end(rec.call), 0);
  wait_done(&rec);
  ck_assert_int_eq(rec.status, QRPC_STATUS_OK);
  ck_assert(qt_run_until_count(st_loop, &sc.ends, 1, QT_WAIT_MS));
  assert_events("SIIE");
  finish();
}
END_TEST

START_TEST(test_refused_starts) {
  qt_call_rec rec;
  start();
  sc.bad_starts = 1;
  sc.reply_on_end = 1;
  call_start(&rec, M_CLIENT, QRPC_SHAPE_CLIENT_STREAM);
  send_text(&rec, 3);
  ck_assert_int_eq(qrpc_call_end(rec.call), 0);
  wait_done(&rec);
  ck_assert_int_eq(sc.bad_start_rcs, 6);
  ck_assert_int_eq(sc.start_rc, 0);
  ck_assert_msg(replied_sum(&rec, 3), "status %d", rec.status);
  assert_events("SIE");
  finish();
}
END_TEST

START_TEST(test_notify_gets_nothing) {
  start();
  ck_assert_int_eq(qrpc_client_notify(pair.cl.cli, M_CLIENT, NULL, 0), 0);
  ck_assert(qt_run_until_count(st_loop, &sc.notifies, 1, QT_WAIT_MS));
  ck_assert_int_eq(sc.start_rc, 0);
  assert_events("");
  finish();
}
END_TEST

static Suite *sreq_suite(void) {
  Suite *s = suite_create("stub_sreq");
  TCase *tc = tcase_create("sreq");
  tcase_add_checked_fixture(tc, st_setup, st_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_items_end_reply);
  tcase_add_test(tc, test_without_on_start_service_user_data);
  tcase_add_test(tc, test_reply_inside_on_start);
  tcase_add_test(tc, test_error_inside_on_start);
  tcase_add_test(tc, test_error_inside_item);
  tcase_add_test(tc, test_reply_from_outside_callbacks);
  tcase_add_test(tc, test_undecodable_item_refused);
  tcase_add_test(tc, test_undecodable_item_answered_by_on_cancel);
  tcase_add_test(tc, test_caller_cancels);
  tcase_add_test(tc, test_bidi_server_ends_first);
  tcase_add_test(tc, test_bidi_caller_ends_first);
  tcase_add_test(tc, test_bidi_end_inside_on_end);
  tcase_add_test(tc, test_bidi_on_writable);
  tcase_add_test(tc, test_refused_answers_keep_the_call);
  tcase_add_test(tc, test_refused_starts);
  tcase_add_test(tc, test_notify_gets_nothing);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(sreq_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
