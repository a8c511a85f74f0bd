/*
 * Where the stubs' calls and registrations go (src/stub/dispatch.c), over
 * loopback: calls of every shape started on the client or on the server's
 * peer, registrations on the server or on the client (the handlers struct
 * reaching the handler), datagram channels registered with the IDL's
 * options, the refusal of a request that does not decode, and arguments
 * refused before anything is sent.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/qrpc.h"
#include "stub_fixture.h"

#define M_ECHO 1
#define M_ITEMS 2
#define M_COUNT 3
#define M_REFUSE 4
#define CH_STATE 40
#define REFUSAL "the request does not decode as qrpc.test.stub.Text"

static st_pair pair;

/* Stands for a generated handlers struct: only its address matters. */
typedef struct handlers {
  int tag;
} handlers;

static const handlers the_handlers = {1};

/* What the handlers saw. */
typedef struct seen {
  int calls;
  int wrong_user_data; /* user_data was not &the_handlers */
  int items;
  int notifies;
  int refuse_rc;
  int dgrams;
  uint64_t last_seq;
  int bad_dgram;
} seen;

static seen sn;

static void check_user_data(void *user_data) {
  if (user_data != &the_handlers) sn.wrong_user_data++;
}

static void on_echo(qrpc_req *req, const uint8_t *payload, size_t len,
                    void *user_data) {
  check_user_data(user_data);
  sn.calls++;
  qrpc_req_reply(req, payload, len);
}

/* Server streaming: the request back as two items. */
static void on_items(qrpc_req *req, const uint8_t *payload, size_t len,
                     void *user_data) {
  check_user_data(user_data);
  sn.calls++;
  qrpc_req_send(req, payload, len);
  qrpc_req_send(req, payload, len);
  qrpc_req_end(req);
}

/* Client streaming: counts the items and answers with the count. */
static void count_item(qrpc_req *req, const uint8_t *data, size_t len,
                       void *user_data) {
  (void)req;
  (void)data;
  (void)len;
  (void)user_data;
  sn.items++;
}

static void count_end(qrpc_req *req, void *user_data) {
  uint8_t n = (uint8_t)sn.items;
  (void)user_data;
  qrpc_req_reply(req, &n, 1);
}

static void on_count(qrpc_req *req, const uint8_t *payload, size_t len,
                     void *user_data) {
  static const qrpc_req_callbacks cbs = {count_item, count_end, NULL, NULL};
  (void)payload;
  (void)len;
  check_user_data(user_data);
  sn.calls++;
  qrpc_req_set_callbacks(req, &cbs, NULL);
}

static void on_refuse(qrpc_req *req, const uint8_t *payload, size_t len,
                      void *user_data) {
  (void)payload;
  (void)len;
  (void)user_data;
  if (qrpc_req_is_notify(req)) sn.notifies++;
  sn.calls++;
  sn.refuse_rc = qrpc_stub_refuse(req, REFUSAL);
}

static void on_dgram(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                     const uint8_t *payload, size_t len, void *user_data) {
  (void)peer;
  check_user_data(user_data);
  if (channel != CH_STATE || len != 1 || payload[0] != (uint8_t)seq)
    sn.bad_dgram++;
  sn.dgrams++;
  sn.last_seq = seq;
}

static void start(void) {
  memset(&sn, 0, sizeof(sn));
  sn.refuse_rc = 1;
  st_pair_start(&pair, NULL);
}

static void finish(void) {
  ck_assert_int_eq(sn.wrong_user_data, 0);
  ck_assert(st_pair_finish(&pair));
}

/* ---- Calls ----------------------------------------------------------- */

START_TEST(test_unary_on_client_registered_on_server) {
  Text t = st_text(st_nul_data, sizeof(st_nul_data), 4);
  uint8_t want[64];
  size_t n = st_pack(&t.base, want, sizeof(want));
  qrpc_msg m;
  qt_call_rec rec;
  start();
  ck_assert_int_eq(qrpc_stub_register(pair.srv, NULL, M_ECHO, QRPC_SHAPE_UNARY,
                                      0, on_echo, &the_handlers),
                   0);
  ck_assert_int_eq(qrpc_stub_msg(&m, &t.base, TEXT_DESC), 0);
  qt_call_rec_init(&rec, NULL);
  ck_assert_int_eq(qrpc_stub_call_start(pair.cl.cli, NULL, M_ECHO,
                                        QRPC_SHAPE_UNARY, 0, &m, NULL,
                                        &qt_call_rec_cbs, &rec, &rec.call),
                   0);
  ck_assert(qt_run_until_count(st_loop, &rec.done, 1, QT_WAIT_MS));
  ck_assert_msg(qt_call_rec_replied(&rec, want, n), "status %d", rec.status);
  ck_assert_int_eq(sn.calls, 1);
  finish();
}
END_TEST

START_TEST(test_unary_on_peer_registered_on_client) {
  Text t = st_text(NULL, 0, 8);
  uint8_t want[16];
  size_t n = st_pack(&t.base, want, sizeof(want));
  qrpc_msg m;
  qt_call_rec rec;
  start();
  ck_assert_int_eq(qrpc_stub_register(NULL, pair.cl.cli, M_ECHO,
                                      QRPC_SHAPE_UNARY, 0, on_echo,
                                      &the_handlers),
                   0);
  ck_assert_int_eq(qrpc_stub_msg(&m, &t.base, TEXT_DESC), 0);
  qt_call_rec_init(&rec, NULL);
  ck_assert_int_eq(qrpc_stub_call_start(NULL, pair.peers.last, M_ECHO,
                                        QRPC_SHAPE_UNARY, 0, &m, NULL,
                                        &qt_call_rec_cbs, &rec, &rec.call),
                   0);
  ck_assert(qt_run_until_count(st_loop, &rec.done, 1, QT_WAIT_MS));
  ck_assert_msg(qt_call_rec_replied(&rec, want, n), "status %d", rec.status);
  ck_assert_int_eq(sn.calls, 1);
  finish();
}
END_TEST

START_TEST(test_server_stream_carries_request) {
  Text t = st_text(st_nul_data, sizeof(st_nul_data), 2);
  qrpc_msg m;
  qt_call_rec rec;
  start();
  ck_assert_int_eq(qrpc_stub_register(pair.srv, NULL, M_ITEMS,
                                      QRPC_SHAPE_SERVER_STREAM, 0, on_items,
                                      &the_handlers),
                   0);
  ck_assert_int_eq(qrpc_stub_msg(&m, &t.base, TEXT_DESC), 0);
  qt_call_rec_init(&rec, NULL);
  ck_assert_int_eq(qrpc_stub_call_start(pair.cl.cli, NULL, M_ITEMS,
                                        QRPC_SHAPE_SERVER_STREAM, 0, &m, NULL,
                                        &qt_call_rec_cbs, &rec, &rec.call),
                   0);
  ck_assert(qt_run_until_count(st_loop, &rec.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(rec.status, QRPC_STATUS_OK);
  ck_assert_int_eq(rec.items, 2);
  finish();
}
END_TEST

START_TEST(test_client_stream_from_peer_sends_items) {
  static const uint8_t item[] = {0x10, 0x01}; /* Text{n: 1} */
  qt_call_rec rec;
  start();
  ck_assert_int_eq(qrpc_stub_register(NULL, pair.cl.cli, M_COUNT,
                                      QRPC_SHAPE_CLIENT_STREAM, 0, on_count,
                                      &the_handlers),
                   0);
  qt_call_rec_init(&rec, NULL);
  ck_assert_int_eq(qrpc_stub_call_start(NULL, pair.peers.last, M_COUNT,
                                        QRPC_SHAPE_CLIENT_STREAM, 0, NULL, NULL,
                                        &qt_call_rec_cbs, &rec, &rec.call),
                   0);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(qrpc_call_send(rec.call, item, sizeof(item)), 0);
  ck_assert_int_eq(qrpc_call_end(rec.call), 0);
  ck_assert(qt_run_until_count(st_loop, &rec.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(rec.status, QRPC_STATUS_OK);
  ck_assert_uint_eq(rec.reply_len, 1);
  ck_assert_uint_eq(rec.reply[0], 3);
  finish();
}
END_TEST

START_TEST(test_call_start_refuses_bad_arguments) {
  Text t = st_text(NULL, 0, 1);
  qrpc_msg m;
  qt_call_rec rec;
  qrpc_client *cli;
  start();
  cli = pair.cl.cli;
  ck_assert_int_eq(qrpc_stub_register(pair.srv, NULL, M_ECHO, QRPC_SHAPE_UNARY,
                                      0, on_echo, &the_handlers),
                   0);
  ck_assert_int_eq(qrpc_stub_msg(&m, &t.base, TEXT_DESC), 0);
  qt_call_rec_init(&rec, NULL);
  ck_assert_int_eq(qrpc_stub_call_start(NULL, NULL, M_ECHO, QRPC_SHAPE_UNARY, 0,
                                        &m, NULL, &qt_call_rec_cbs, &rec, NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_call_start(cli, NULL, M_ECHO, QRPC_SHAPE_UNARY, 0,
                                        NULL, NULL, &qt_call_rec_cbs, &rec,
                                        NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_call_start(cli, NULL, M_ITEMS,
                                        QRPC_SHAPE_SERVER_STREAM, 0, NULL, NULL,
                                        &qt_call_rec_cbs, &rec, NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_call_start(cli, NULL, M_COUNT,
                                        QRPC_SHAPE_CLIENT_STREAM, 0, &m, NULL,
                                        &qt_call_rec_cbs, &rec, NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_call_start(cli, NULL, M_COUNT,
                                        QRPC_SHAPE_BIDI_STREAM, 0, &m, NULL,
                                        &qt_call_rec_cbs, &rec, NULL),
                   QRPC_EINVAL);
  /* A refused start fires nothing and sends nothing. */
  qt_run_for(st_loop, 100);
  ck_assert_int_eq(rec.done, 0);
  ck_assert_int_eq(sn.calls, 0);
  finish();
}
END_TEST

/* An idempotent method's call keeps the caller's options and adds the
 * mark; options of a size no qrpc version had are refused before anything
 * is sent, as the engine refuses them. (Whether the call may go out in
 * 0-RTT is tested end to end in tests/rpc/test_early.c.) */
START_TEST(test_idempotent_call_keeps_caller_options) {
  Text t = st_text(NULL, 0, 3);
  uint8_t want[16];
  size_t n = st_pack(&t.base, want, sizeof(want));
  qrpc_msg m;
  qrpc_call_opts o;
  qt_call_rec rec;
  start();
  ck_assert_int_eq(qrpc_stub_register(pair.srv, NULL, M_ECHO, QRPC_SHAPE_UNARY,
                                      QRPC_METHOD_IDEMPOTENT, on_echo,
                                      &the_handlers),
                   0);
  ck_assert_int_eq(qrpc_stub_msg(&m, &t.base, TEXT_DESC), 0);
  qrpc_call_opts_default(&o);
  o.size = 1;
  qt_call_rec_init(&rec, NULL);
  ck_assert_int_eq(qrpc_stub_call_start(pair.cl.cli, NULL, M_ECHO,
                                        QRPC_SHAPE_UNARY,
                                        QRPC_METHOD_IDEMPOTENT, &m, &o,
                                        &qt_call_rec_cbs, &rec, &rec.call),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_call_start(pair.cl.cli, NULL, M_ECHO,
                                        QRPC_SHAPE_UNARY, 0, &m, &o,
                                        &qt_call_rec_cbs, &rec, &rec.call),
                   QRPC_EINVAL);
  qrpc_call_opts_default(&o);
  o.timeout_ms = 60000;
  ck_assert_int_eq(qrpc_stub_call_start(pair.cl.cli, NULL, M_ECHO,
                                        QRPC_SHAPE_UNARY,
                                        QRPC_METHOD_IDEMPOTENT, &m, &o,
                                        &qt_call_rec_cbs, &rec, &rec.call),
                   0);
  ck_assert(qt_run_until_count(st_loop, &rec.done, 1, QT_WAIT_MS));
  ck_assert_msg(qt_call_rec_replied(&rec, want, n), "status %d", rec.status);
  ck_assert_int_eq(sn.calls, 1);
  finish();
}
END_TEST

/* Request metadata in the caller's options survives the copy the stub
 * makes to add the IDL's idempotent mark. */
static void on_echo_md(qrpc_req *req, const uint8_t *payload, size_t len,
                       void *user_data) {
  const qrpc_md *md;
  size_t n = qrpc_req_metadata(req, &md);
  const qrpc_md *t = qrpc_md_find(md, n, "tenant");
  if (n == 1 && t && t->value_len == 2 && memcmp(t->value, "t1", 2) == 0)
    sn.items++;
  on_echo(req, payload, len, user_data);
}

START_TEST(test_idempotent_call_keeps_metadata) {
  Text t = st_text(NULL, 0, 3);
  qrpc_msg m;
  qrpc_call_opts o;
  qt_call_rec rec;
  static const qrpc_md md[] = {
      {.key = "tenant", .value = (const uint8_t *)"t1", .value_len = 2}};
  start();
  ck_assert_int_eq(qrpc_stub_register(pair.srv, NULL, M_ECHO, QRPC_SHAPE_UNARY,
                                      QRPC_METHOD_IDEMPOTENT, on_echo_md,
                                      &the_handlers),
                   0);
  ck_assert_int_eq(qrpc_stub_msg(&m, &t.base, TEXT_DESC), 0);
  qrpc_call_opts_default(&o);
  o.metadata = md;
  o.metadata_count = 1;
  qt_call_rec_init(&rec, NULL);
  ck_assert_int_eq(qrpc_stub_call_start(pair.cl.cli, NULL, M_ECHO,
                                        QRPC_SHAPE_UNARY,
                                        QRPC_METHOD_IDEMPOTENT, &m, &o,
                                        &qt_call_rec_cbs, &rec, &rec.call),
                   0);
  ck_assert(qt_run_until_count(st_loop, &rec.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(rec.status, 0);
  ck_assert_int_eq(sn.calls, 1);
  ck_assert_int_eq(sn.items, 1);
  finish();
}
END_TEST

/* ---- Registrations ---------------------------------------------------- */

START_TEST(test_register_needs_a_target) {
  start();
  ck_assert_int_eq(qrpc_stub_register(NULL, NULL, M_ECHO, QRPC_SHAPE_UNARY, 0,
                                      on_echo, &the_handlers),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_register_dgram(NULL, NULL, CH_STATE, 1, 0,
                                            on_dgram, &the_handlers),
                   QRPC_EINVAL);
  finish();
}
END_TEST

/* Flags go to the server's registration, which refuses one it does not
 * know; a client's registration takes none (a server never calls its
 * client in 0-RTT). */
START_TEST(test_register_flags) {
  start();
  ck_assert_int_eq(qrpc_stub_register(pair.srv, NULL, M_ECHO, QRPC_SHAPE_UNARY,
                                      1u << 30, on_echo, &the_handlers),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_register(pair.srv, NULL, M_ECHO, QRPC_SHAPE_UNARY,
                                      QRPC_METHOD_IDEMPOTENT, on_echo,
                                      &the_handlers),
                   0);
  ck_assert_int_eq(qrpc_stub_register(NULL, pair.cl.cli, M_ECHO,
                                      QRPC_SHAPE_UNARY, QRPC_METHOD_IDEMPOTENT,
                                      on_echo, &the_handlers),
                   0);
  finish();
}
END_TEST

/* The server sends Seq 2 and then Seq 1 on CH_STATE to the client, whose
 * channel was registered through the stubs with latest_only. */
static void send_out_of_order(int latest_only, qrpc_dgram_stats *st) {
  qrpc_dgram *d[2];
  start();
  /* On the server: send-only, with no handler. */
  ck_assert_int_eq(
      qrpc_stub_register_dgram(pair.srv, NULL, CH_STATE, 0, 0, NULL, NULL), 0);
  ck_assert_int_eq(qrpc_stub_register_dgram(NULL, pair.cl.cli, CH_STATE,
                                            latest_only, 0, on_dgram,
                                            &the_handlers),
                   0);
  for (int i = 0; i < 2; i++) {
    uint8_t seq = (uint8_t)(i + 1);
    ck_assert_int_eq(
        qrpc_server_dgram_encode(pair.srv, CH_STATE, &seq, 1, &d[i]), 0);
  }
  ck_assert_int_eq(qrpc_peer_send_encoded(pair.peers.last, d[1]), 0);
  ck_assert_int_eq(qrpc_peer_send_encoded(pair.peers.last, d[0]), 0);
  qrpc_dgram_free(d[0]);
  qrpc_dgram_free(d[1]);
  qrpc_peer *cp = qrpc_client_peer(pair.cl.cli);
  uint64_t t0 = qt_now_ms();
  do {
    qt_run_for(st_loop, 10);
    qrpc_peer_dgram_stats(cp, CH_STATE, st);
  } while (st->received < 2 && qt_now_ms() - t0 < (uint64_t)QT_WAIT_MS);
  ck_assert_int_eq(sn.bad_dgram, 0);
}

START_TEST(test_register_dgram_latest_only) {
  qrpc_dgram_stats st;
  send_out_of_order(1, &st);
  ck_assert_uint_eq(st.received, 2);
  ck_assert_uint_eq(st.delivered, 1);
  ck_assert_uint_eq(st.dropped_stale, 1);
  ck_assert_int_eq(sn.dgrams, 1);
  ck_assert_uint_eq(sn.last_seq, 2);
  finish();
}
END_TEST

START_TEST(test_register_dgram_every_datagram) {
  qrpc_dgram_stats st;
  send_out_of_order(0, &st);
  ck_assert_uint_eq(st.received, 2);
  ck_assert_uint_eq(st.delivered, 2);
  ck_assert_int_eq(sn.dgrams, 2);
  ck_assert_uint_eq(sn.last_seq, 1);
  finish();
}
END_TEST

/* ---- Refusals --------------------------------------------------------- */

START_TEST(test_refuse_request) {
  qt_call_rec rec;
  start();
  ck_assert_int_eq(qrpc_server_register(pair.srv, M_REFUSE, QRPC_SHAPE_UNARY,
                                        on_refuse, NULL),
                   0);
  ck_assert_int_eq(qt_call_rec_start(&rec, NULL, pair.cl.cli, M_REFUSE,
                                     st_garbage, sizeof(st_garbage), NULL),
                   0);
  ck_assert(qt_run_until_count(st_loop, &rec.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(sn.refuse_rc, 0);
  ck_assert_int_eq(rec.status, QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert_int_eq(rec.local, 0);
  ck_assert_msg(st_bytes_are(rec.detail, rec.detail_len, REFUSAL),
                "detail of %zu bytes", rec.detail_len);
  ck_assert_int_eq(qrpc_stub_refuse(NULL, REFUSAL), QRPC_EINVAL);
  finish();
}
END_TEST

START_TEST(test_refuse_leaves_notify_alone) {
  qt_call_rec rec;
  start();
  ck_assert_int_eq(qrpc_server_register(pair.srv, M_REFUSE, QRPC_SHAPE_UNARY,
                                        on_refuse, NULL),
                   0);
  ck_assert_int_eq(
      qrpc_client_notify(pair.cl.cli, M_REFUSE, st_garbage, sizeof(st_garbage)),
      0);
  ck_assert(qt_run_until_count(st_loop, &sn.notifies, 1, QT_WAIT_MS));
  ck_assert_int_eq(sn.refuse_rc, 0);
  /* The connection carries on: a call after it is refused as usual. */
  ck_assert_int_eq(qt_call_rec_start(&rec, NULL, pair.cl.cli, M_REFUSE,
                                     st_garbage, sizeof(st_garbage), NULL),
                   0);
  ck_assert(qt_run_until_count(st_loop, &rec.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(rec.status, QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert_int_eq(sn.calls, 2);
  finish();
}
END_TEST

static Suite *dispatch_suite(void) {
  Suite *s = suite_create("stub_dispatch");
  TCase *tc = tcase_create("dispatch");
  tcase_add_checked_fixture(tc, st_setup, st_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_unary_on_client_registered_on_server);
  tcase_add_test(tc, test_unary_on_peer_registered_on_client);
  tcase_add_test(tc, test_server_stream_carries_request);
  tcase_add_test(tc, test_client_stream_from_peer_sends_items);
  tcase_add_test(tc, test_call_start_refuses_bad_arguments);
  tcase_add_test(tc, test_idempotent_call_keeps_caller_options);
  tcase_add_test(tc, test_idempotent_call_keeps_metadata);
  tcase_add_test(tc, test_register_needs_a_target);
  tcase_add_test(tc, test_register_flags);
  tcase_add_test(tc, test_register_dgram_latest_only);
  tcase_add_test(tc, test_register_dgram_every_datagram);
  tcase_add_test(tc, test_refuse_request);
  tcase_add_test(tc, test_refuse_leaves_notify_alone);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(dispatch_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
